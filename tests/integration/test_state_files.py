"""Files that cannot be turned against root, pids that are not trusted once their daemon is
gone, what a crash leaves and who removes it, and one clear line for the common mistakes."""

from __future__ import annotations

import errno
import glob
import json
import os
import re
import signal
import stat
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from ipoibfs.state import state_file

from .conftest import (
    IPOIBFS,
    REPO,
    cleanup_mount,
    daemon_pid,
    is_mounted,
    mount_host,
    read,
    run,
    wait_for,
    write,
)

RUN = Path("/run/ipoibfs")
NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")


def one_line(result: subprocess.CompletedProcess, start: str, text: str = "") -> None:
    assert result.returncode != 0, result.stdout
    assert result.stderr.startswith(start), result.stderr
    assert text in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr and "usage:" not in result.stderr


def mode(path: Path | str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def kill9(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), what=f"pid {pid} gone")


@pytest.fixture
def sleeper():
    """An unrelated live process: the one that got a dead daemon's pid."""
    procs: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        procs.append(subprocess.Popen(["sleep", "300"]))
        return procs[-1]

    try:
        yield start
    finally:
        for p in procs:
            p.kill()
            p.wait()


# ---------------------------------------------------------------- pids that were reused


def test_umount_leaves_a_process_that_has_a_dead_daemons_pid(netns, mountpoint, sleeper):
    mount_host(netns, mountpoint)
    kill9(daemon_pid(mountpoint))
    other = sleeper()
    pid_file = Path(state_file(str(mountpoint), "pid"))
    pid_file.write_text(f"{other.pid}\n")  # the SIGKILLed daemon's file, its pid reused
    result = run(IPOIBFS, "umount", str(mountpoint), check=False)
    assert result.returncode == 0, result.stderr
    assert other.poll() is None  # not signalled
    assert not is_mounted(mountpoint)
    assert os.listdir(mountpoint) == []  # the dead mount is gone
    assert not pid_file.exists()
    assert not Path(state_file(str(mountpoint), "netns")).exists()
    # The next mount on it works, and its pid file is trusted again.
    mount_host(netns, mountpoint)
    pid = daemon_pid(mountpoint)
    assert run(IPOIBFS, "umount", str(mountpoint)).returncode == 0
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), what="daemon exit")


def test_umount_cleans_a_dead_daemons_files_without_a_mount(netns, mountpoint, sleeper):
    mount_host(netns, mountpoint)
    kill9(daemon_pid(mountpoint))
    run("fusermount3", "-u", "-z", str(mountpoint))
    other = sleeper()
    Path(state_file(str(mountpoint), "pid")).write_text(f"{other.pid}\n")
    assert run(IPOIBFS, "umount", str(mountpoint), check=False).returncode == 0
    assert other.poll() is None
    assert not Path(state_file(str(mountpoint), "pid")).exists()
    assert not Path(state_file(str(mountpoint), "netns")).exists()
    result = run(IPOIBFS, "umount", str(mountpoint), check=False)
    one_line(result, "ipoibfs: ", "no ipoibfs host is mounted there")


def test_lab_down_leaves_processes_that_have_dead_pids(lab, sleeper):
    lab.up(2)
    registry_path = RUN / f"{lab.prefix}-lab.json"
    registry = json.loads(registry_path.read_text())
    h2 = RUN / lab.name(2)
    kill9(daemon_pid(h2))
    kill9(registry["fabric_pid"])
    host_pid, fabric_pid = sleeper(), sleeper()
    Path(state_file(str(h2), "pid")).write_text(f"{host_pid.pid}\n")
    registry["fabric_pid"] = fabric_pid.pid
    registry_path.write_text(json.dumps(registry))
    h1_pid = daemon_pid(RUN / lab.name(1))
    result = lab.ipoibfs("down", check=False)
    assert result.returncode == 0, result.stderr
    assert host_pid.poll() is None and fabric_pid.poll() is None
    wait_for(lambda: not os.path.exists(f"/proc/{h1_pid}"), what="h1 stopped")
    assert not list(RUN.glob(f"{lab.prefix}-*"))  # data sockets, registry, logs, mounts
    assert not list((RUN / "daemons").glob(f"*{lab.prefix}*"))  # pid, netns, log


# ---------------------------------------------------------------- a killed lab host


def test_lab_status_shows_a_killed_host_dead_and_removes_what_it_left(lab):
    lab.up(2)
    h2 = RUN / lab.name(2)
    address = json.loads((RUN / f"{lab.prefix}-lab.json").read_text())["fabric_address"]
    sockets = glob.glob(glob.escape(f"{address}.{lab.name(2)}.") + "*")
    assert sockets  # so that "gone" below means something
    kill9(daemon_pid(h2))
    status = lab.ipoibfs("status").stdout
    assert re.search(rf"^{lab.name(2)} +- +- +- +- +dead +- +- +\(daemon not running\)$",
                     status, re.M), status  # fmt: skip
    assert re.search(rf"^{lab.name(1)} +1 +0x2 .* ib0 +yes ", status, re.M), status
    assert "1 host(s) dead" in status
    assert not any(os.path.exists(s) for s in sockets)
    assert not is_mounted(h2)
    for kind in ("pid", "netns"):
        assert not os.path.exists(state_file(str(h2), kind))
    assert os.path.exists(state_file(str(h2), "log"))  # kept for reading until lab down
    assert lab.ipoibfs("down").returncode == 0
    assert not os.path.exists(state_file(str(h2), "log"))
    assert not h2.exists()


def test_lab_up_over_a_dead_lab_clears_it_first(lab):
    lab.up(1)
    registry = json.loads((RUN / f"{lab.prefix}-lab.json").read_text())
    kill9(daemon_pid(RUN / lab.name(1)))
    kill9(registry["fabric_pid"])
    lab.up(1)  # not "already up": nothing of it ran
    assert lab.ping(1, "198.18.0.1")


# ---------------------------------------------------------------- modes and symlinks


def test_files_have_fixed_modes_under_umask_000(lab):
    result = run("sh", "-c", f"umask 000 && exec {IPOIBFS} lab up --hosts 1 --prefix "
                 f"{lab.prefix}", check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    files = [RUN / f"{lab.prefix}-{name}" for name in ("lab.json", "partitions.conf",
                                                       "fabric.log")]  # fmt: skip
    files += [state_file(str(RUN / lab.name(1)), kind) for kind in ("pid", "netns", "log")]
    for path in files:
        assert mode(path) == 0o644, path
        assert os.lstat(path).st_uid == 0
    for d in (RUN, RUN / "daemons"):
        assert mode(d) == 0o755, d
        assert os.lstat(d).st_uid == 0


def test_a_single_hosts_files_have_fixed_modes_under_umask_000(netns, mountpoint):
    result = run("sh", "-c", f"umask 000 && exec {IPOIBFS} mount --netns {netns.name} "
                 f"{mountpoint}", check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    for kind in ("pid", "netns", "log"):
        assert mode(state_file(str(mountpoint), kind)) == 0o644


def test_a_writable_state_directory_is_repaired(netns, mountpoint):
    (RUN / "daemons").chmod(0o777)
    mount_host(netns, mountpoint)
    assert mode(RUN / "daemons") == 0o755


def test_planted_symlinks_in_run_ipoibfs_are_not_followed(lab, tmp_path):
    RUN.mkdir(exist_ok=True)
    planted = {
        RUN / f"{lab.prefix}-partitions.conf": tmp_path / "a",
        RUN / f"{lab.prefix}-fabric.log": tmp_path / "b",
        RUN / f"{lab.prefix}-lab.json": tmp_path / "c",
        Path(state_file(str(RUN / lab.name(1)), "log")): tmp_path / "d",
        Path(state_file(str(RUN / lab.name(1)), "pid")): tmp_path / "e",
    }
    for link, target in planted.items():
        target.write_text("precious\n")
        link.unlink(missing_ok=True)
        link.symlink_to(target)
    try:
        lab.up(1)
        for link, target in planted.items():
            assert target.read_text() == "precious\n", link
            assert not link.is_symlink(), link
    finally:
        for link in planted:
            if link.is_symlink():
                link.unlink()


# ---------------------------------------------------------------- names and mountpoints


@pytest.mark.parametrize("prefix", ["../x", "../../tmp/x", "a/b", "-x", "x" * 25])
def test_a_bad_prefix_is_refused_with_one_line(prefix):
    outside = [Path("/run/x-lab.json"), Path("/tmp/x-lab.json"), Path("/run/x-fabric.sock")]
    for command in (["up", "--hosts", "1"], ["status"], ["down"]):
        result = run(IPOIBFS, "lab", *command, f"--prefix={prefix}", check=False)
        one_line(result, "ipoibfs: ", f"invalid --prefix '{prefix}'")
        assert result.returncode == 1
    assert not any(p.exists() for p in outside)


def test_a_bad_host_name_or_mountpoint_is_refused_with_one_line(netns, mountpoint, tmp_path):
    result = run(IPOIBFS, "mount", "--netns", netns.name, "--name", "../h1", str(mountpoint),
                 check=False)  # fmt: skip
    one_line(result, "ipoibfs: ", "invalid host name '../h1'")
    result = run(IPOIBFS, "mount", "--netns", "../../proc/1/ns/net", str(mountpoint),
                 check=False)  # fmt: skip
    one_line(result, "ipoibfs: ", "invalid network namespace name")
    regular = tmp_path / "file"
    regular.write_text("")
    result = run(IPOIBFS, "mount", "--netns", netns.name, str(regular), check=False)
    one_line(result, "ipoibfs: ", f"mount point {regular} is not a directory")
    assert not is_mounted(mountpoint)
    assert set(netns.links()) == {"lo"}


def test_a_mountpoint_through_a_symlink_is_resolved(netns, mountpoint, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(mountpoint)
    mount_host(netns, link)
    assert is_mounted(mountpoint)
    assert daemon_pid(mountpoint) is not None  # state files name the real path
    assert run(IPOIBFS, "umount", str(link)).returncode == 0
    assert not is_mounted(mountpoint)


# ---------------------------------------------------------------- one clear line


@pytest.mark.parametrize("argv", [
    ["umount", "/run/ipoibfs/local"],
    ["lab", "up", "--hosts", "1"],
    ["lab", "status"],
    ["lab", "down", "--prefix", "x"],
    ["lab", "partitions", "/dev/null"],
    ["exec", "h1", "--", "true"],
    ["shell", "h1"],
    ["link", "h1", "show"],
    ["ethtool", "h1", "ib0"],
])  # fmt: skip
def test_commands_that_need_root_say_so_first(argv):
    result = run(*NOBODY, IPOIBFS, *argv, check=False)
    one_line(result, "ipoibfs: must be run as root: ")
    assert result.returncode == 1


def test_hints_name_the_prefix_in_use(lab):
    lab.up(1)
    result = lab.ipoibfs("up", "--hosts", "1", check=False)
    one_line(result, "ipoibfs: ", f"run `ipoibfs lab down --prefix {lab.prefix}` first")
    if not (RUN / "lab.json").exists():  # a default lab a user runs would be up: then not
        result = run(IPOIBFS, "lab", "status", check=False)
        one_line(result, "ipoibfs: no lab is up", f"--prefix {lab.prefix}")


def test_version():
    result = run(IPOIBFS, "--version")
    assert result.stdout == f"ipoibfs {version('ipoibfs')}\n"


def test_mount_helper_errors_are_one_line(netns, mountpoint):
    for options, text in (("ports=x", "invalid port count 'x'"),
                          ("name=../x", "invalid host name '../x'"),
                          ("param=bogus=1", "unknown parameter 'bogus'"),
                          ("colour=blue", "unknown option 'colour=blue'")):  # fmt: skip
        result = run("mount", "-t", "fuse.ipoibfs", netns.name, str(mountpoint), "-o", options,
                     check=False)  # fmt: skip
        one_line(result, "mount.fuse.ipoibfs: ", text)
    assert not is_mounted(mountpoint)


@pytest.mark.parametrize("how", ["mount -o ro", "ipoibfs mount --read-only"])
def test_ro_mounts_a_read_only_mirror(netns, mountpoint, how):
    if how == "mount -o ro":
        cmd = ["mount", "-t", "fuse.ipoibfs", "-o", "ro", netns.name, str(mountpoint)]
    else:
        cmd = [IPOIBFS, "mount", "--read-only", "--netns", netns.name, str(mountpoint)]
    result = run(*cmd, check=False)
    assert result.returncode == 0, result.stderr
    ib0 = mountpoint / "class" / "net" / "ib0"
    assert read(ib0 / "mode") == "datagram\n"
    assert write(ib0 / "mode", "connected\n") == errno.EROFS
    assert write(ib0 / "create_child", "0x8001") == errno.EROFS
    assert read(ib0 / "mode") == "datagram\n"
    assert set(netns.links()) == {"lo", "ib0"}
    with open("/proc/self/mounts") as f:
        options = next(line.split()[3] for line in f if line.split()[1] == str(mountpoint))
    assert options.split(",")[0] == "ro"
    assert run(IPOIBFS, "umount", str(mountpoint)).returncode == 0
    wait_for(lambda: set(netns.links()) == {"lo"}, what="interfaces removed")


def test_the_readme_fstab_line_makes_its_mountpoint(netns, tmp_path):
    """After a reboot /run is empty: the README's line must make its mountpoint."""
    line = re.search(r"^\* fstab: `([^`]+)`", (REPO / "README.md").read_text(), re.M)[1]
    source, mp, fstype, options, *_ = line.split()
    assert (source, mp, fstype) == ("none", "/run/ipoibfs/local", "fuse.ipoibfs")
    assert "X-mount.mkdir" in options.split(",")
    where = RUN / f"fstab-{netns.name}" / "local"  # the same line, somewhere unused
    assert not where.parent.exists()
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{netns.name}  {where}  {fstype}  {options}  0 0\n")
    try:
        result = run("mount", "-T", str(fstab), str(where), check=False)
        assert result.returncode == 0, result.stderr
        assert read(where / "class" / "net" / "ib0" / "mode") == "datagram\n"
        assert run("umount", str(where)).returncode == 0
        wait_for(lambda: set(netns.links()) == {"lo"}, what="interfaces removed")
    finally:
        cleanup_mount(where)
        for d in (where, where.parent):
            if d.exists():
                d.rmdir()


def test_integration_tests_skip_with_a_reason_when_not_root(tmp_path):
    tmp_path.chmod(0o777)
    result = run(*NOBODY, sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                 f"--basetemp={tmp_path}/t", str(REPO / "tests" / "integration" /
                 "test_lifecycle.py"), "tests/unit/test_state.py::test_good_names",
                 check=False, cwd=REPO)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    # The unit test runs; every integration test is skipped, none errors.
    assert re.fullmatch(r"1 passed, \d+ skipped in .*", result.stdout.splitlines()[-1])
    assert "needs root" in result.stdout


def test_exec_without_cap_sys_admin_says_why_in_one_line(host):
    result = run("capsh", "--drop=cap_sys_admin", "--", "-c",
                 f"exec {IPOIBFS} exec {host.mp} -- true", check=False)  # fmt: skip
    assert result.returncode == 126
    assert result.stderr == (
        "ipoibfs exec: unshare(CLONE_NEWNS|CLONE_NEWUTS): Operation not permitted\n"
    )
