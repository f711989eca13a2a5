"""`ipoibfs mount` / `umount`: readiness, signals, crashes, and one-line errors."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from .conftest import IPOIBFS, daemon_pid, is_mounted, mount_host, run, wait_for, write


def assert_clean_error(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode != 0
    assert result.stderr.startswith("ipoibfs: "), result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


def assert_gone(netns, mountpoint, pid: int) -> None:
    assert not is_mounted(mountpoint)
    assert set(netns.links()) == {"lo"}
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), what="daemon exit")


def test_mount_returns_when_ready_and_umount_removes_everything(netns, mountpoint):
    h = mount_host(netns, mountpoint)
    # No waiting: the command returned, so the mount and the interface exist.
    assert is_mounted(mountpoint)
    assert h.interfaces() == ["ib0"]
    assert "ib0" in netns.links()
    pid = daemon_pid(mountpoint)
    h.up()
    assert run(IPOIBFS, "umount", str(mountpoint)).returncode == 0
    assert_gone(netns, mountpoint, pid)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_the_daemon_cleanly(netns, mountpoint, sig):
    h = mount_host(netns, mountpoint, "--ports", "2")
    assert h.interfaces() == ["ib0", "ib1"]
    pid = daemon_pid(mountpoint)
    os.kill(pid, sig)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), what="daemon exit")
    assert_gone(netns, mountpoint, pid)


def test_foreground_prints_what_to_try_and_stops_on_ctrl_c(netns, mountpoint):
    proc = subprocess.Popen(
        [IPOIBFS, "mount", "--foreground", "--netns", netns.name, str(mountpoint)],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        banner = ""
        while "Stop with Ctrl-C" not in banner:
            line = proc.stderr.readline()
            assert line, banner
            banner += line
        assert f"cat {mountpoint}/class/net/ib0/" in banner
        assert "ib0" in netns.links()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    assert_gone(netns, mountpoint, proc.pid)


def test_umount_stops_a_foreground_host(netns, mountpoint):
    proc = subprocess.Popen(
        [IPOIBFS, "mount", "--foreground", "--netns", netns.name, str(mountpoint)],
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: daemon_pid(mountpoint) == proc.pid, what="foreground host ready")
        assert run(IPOIBFS, "umount", str(mountpoint)).returncode == 0
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()
    assert_gone(netns, mountpoint, proc.pid)


def test_sigkill_leaves_no_interface_and_the_next_mount_recovers(netns, mountpoint):
    h = mount_host(netns, mountpoint)
    assert write(h.net() / "create_child", "0x8001") == 0
    assert "ib0.8001" in netns.links()  # so "interfaces gone" covers the child too
    pid = daemon_pid(mountpoint)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), what="daemon killed")
    wait_for(lambda: set(netns.links()) == {"lo"}, what="interfaces gone")
    with pytest.raises(OSError):
        os.listdir(mountpoint)  # the stale mount: "Transport endpoint is not connected"
    h = mount_host(netns, mountpoint)
    assert h.interfaces() == ["ib0"]
    assert h.attr("ib0", "mode") == "datagram\n"


def test_umount_of_nothing_is_a_clear_error(mountpoint):
    assert_clean_error(
        run(IPOIBFS, "umount", str(mountpoint), check=False), "no ipoibfs host is mounted there"
    )


def test_mountpoint_missing(netns, tmp_path):
    missing = tmp_path / "nope"
    result = run(IPOIBFS, "mount", "--netns", netns.name, str(missing), check=False)
    assert_clean_error(result, f"mount point {missing} does not exist")
    assert set(netns.links()) == {"lo"}


def test_already_mounted(netns, mountpoint):
    mount_host(netns, mountpoint)
    result = run(IPOIBFS, "mount", "--netns", netns.name, str(mountpoint), check=False)
    assert_clean_error(result, "is already mounted")


def test_name_clash_with_an_existing_ib0(netns, mountpoint):
    netns.ip("link", "add", "ib0", "type", "veth", "peer", "name", "other0")
    result = run(IPOIBFS, "mount", "--netns", netns.name, str(mountpoint), check=False)
    assert_clean_error(result, "ib0 already exists")
    assert not is_mounted(mountpoint)
    assert netns.links()["ib0"]["link_type"] == "ether"  # untouched


def test_unknown_netns(mountpoint):
    result = run(IPOIBFS, "mount", "--netns", "no-such-ns", str(mountpoint), check=False)
    assert_clean_error(result, 'network namespace "no-such-ns" does not exist')


def test_not_root(netns, mountpoint):
    result = run("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", IPOIBFS,
                 "mount", "--netns", netns.name, str(mountpoint), check=False)  # fmt: skip
    assert_clean_error(result, "must be run as root")


def test_no_dev_fuse(netns, mountpoint):
    script = f"mount -t tmpfs tmpfs /dev && exec {IPOIBFS} mount --netns {netns.name} {mountpoint}"
    result = run("unshare", "-m", "--propagation", "private", "sh", "-c", script, check=False)
    assert_clean_error(result, "/dev/fuse does not exist")


def test_bad_module_parameter(netns, mountpoint):
    result = run(IPOIBFS, "mount", "--netns", netns.name, "--param", "bogus=1",
                 str(mountpoint), check=False)  # fmt: skip
    assert_clean_error(result, "ib_ipoib: unknown parameter 'bogus'")
    assert not is_mounted(mountpoint)


def test_bad_arguments_get_usage(mountpoint):
    result = run(IPOIBFS, "mount", "--ports", "0", str(mountpoint), check=False)
    assert result.returncode == 2
    assert "invalid port count '0'" in result.stderr
    assert "Traceback" not in result.stderr
    assert "--foreground" in run(IPOIBFS, "mount", "--help").stdout


def test_umount_works_while_a_file_is_held_open(netns, mountpoint):
    h = mount_host(netns, mountpoint)
    fd = os.open(h.net() / "mtu", os.O_RDONLY)
    try:
        assert os.read(fd, 100) == b"4092\n"
        pid = daemon_pid(mountpoint)
        assert run(IPOIBFS, "umount", str(mountpoint)).returncode == 0
        assert_gone(netns, mountpoint, pid)
    finally:
        try:
            os.close(fd)
        except OSError:
            pass  # the mount is gone: closing reports ENOTCONN
