"""state.py: files with fixed modes that never follow a symlink, checked directories, pid files
trusted only while their daemon holds them, names that cannot escape their directory."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ipoibfs import state
from ipoibfs.errors import UsageError


@pytest.fixture
def umask0():
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# ---------------------------------------------------------------- files


def test_files_have_fixed_modes_under_umask_000(tmp_path, umask0):
    state.write_file(str(tmp_path / "registry.json"), "{}\n")
    state.write_private_file(str(tmp_path / "fabric.key"), b"secret")
    os.close(state.open_append(str(tmp_path / "fabric.log")))
    assert mode(tmp_path / "registry.json") == 0o644
    assert mode(tmp_path / "fabric.key") == 0o600
    assert mode(tmp_path / "fabric.log") == 0o644
    assert (tmp_path / "registry.json").read_text() == "{}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fabric.key", "fabric.log",
                                                          "registry.json"]  # fmt: skip


def test_an_existing_file_gets_the_fixed_mode(tmp_path, umask0):
    log = tmp_path / "daemon.log"
    log.write_text("old\n")
    log.chmod(0o666)
    os.close(state.open_append(str(log)))
    assert mode(log) == 0o644
    assert log.read_text() == "old\n"  # appended to, not replaced


def test_a_planted_symlink_is_replaced_not_followed(tmp_path):
    target = tmp_path / "precious"
    target.write_text("keep\n")
    for name in ("P-partitions.conf", "P-fabric.log", "P-lab.json"):
        (tmp_path / name).symlink_to(target)
    state.write_file(str(tmp_path / "P-partitions.conf"), "Default=0x7fff, ipoib : ALL=full ;\n")
    fd = state.open_append(str(tmp_path / "P-fabric.log"))
    os.write(fd, b"log line\n")
    os.close(fd)
    with state.open_log(str(tmp_path / "P-lab.json")) as log:
        print("more", file=log)
    assert target.read_text() == "keep\n"
    for name in ("P-partitions.conf", "P-fabric.log", "P-lab.json"):
        assert not (tmp_path / name).is_symlink()
    assert (tmp_path / "P-fabric.log").read_text() == "log line\n"


def test_a_planted_fifo_or_hard_link_is_replaced(tmp_path):
    os.mkfifo(tmp_path / "fifo.log")
    fd = state.open_append(str(tmp_path / "fifo.log"))  # would block on a FIFO
    os.close(fd)
    assert stat.S_ISREG(os.lstat(tmp_path / "fifo.log").st_mode)
    other = tmp_path / "other"
    other.write_text("keep\n")
    os.link(other, tmp_path / "linked.log")
    os.close(state.open_append(str(tmp_path / "linked.log")))
    assert other.read_text() == "keep\n"
    assert os.lstat(tmp_path / "linked.log").st_ino != os.lstat(other).st_ino


def test_read_file_does_not_follow_symlinks(tmp_path):
    (tmp_path / "real").write_text("1234\n")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert state.read_file(str(tmp_path / "real")) == "1234\n"
    assert state.read_file(str(tmp_path / "link")) is None
    assert state.read_file(str(tmp_path / "missing")) is None


def test_remove_file_removes_a_symlink_not_its_target(tmp_path):
    (tmp_path / "real").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert state.remove_file(str(tmp_path / "link"))
    assert (tmp_path / "real").exists()
    assert not state.remove_file(str(tmp_path / "link"))


def test_private_files_must_be_private(tmp_path):
    key = tmp_path / "key"
    key.write_bytes(b"k")
    key.chmod(0o644)
    with pytest.raises(UsageError, match=r"readable by its owner only .*mode 0644; chmod 600"):
        state.read_private_file(str(key))
    key.chmod(0o600)
    assert state.read_private_file(str(key)) == b"k"
    (tmp_path / "link").symlink_to(key)
    with pytest.raises(UsageError):
        state.read_private_file(str(tmp_path / "link"))


def test_unix_sockets_have_the_mode_asked_for_under_umask_000(tmp_path, umask0):
    path = tmp_path / "fabric.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        state.bind_unix(s, str(path))
        assert mode(path) == 0o600
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        state.bind_unix(s, str(path), 0o660)  # a stale socket is replaced
        assert mode(path) == 0o660
    regular = tmp_path / "regular"
    regular.write_text("keep")
    with socket.socket(socket.AF_UNIX) as s, pytest.raises(UsageError, match="not a socket"):
        state.bind_unix(s, str(regular))
    assert regular.read_text() == "keep"


# ---------------------------------------------------------------- directories


def test_managed_directories_are_made_0755_under_umask_000(tmp_path, umask0):
    run = tmp_path / "run"
    fd = state.open_dir(str(run / "ipoibfs" / "daemons"), managed=str(run))
    os.close(fd)
    for d in (run, run / "ipoibfs", run / "ipoibfs" / "daemons"):
        assert mode(d) == 0o755


def test_a_writable_managed_directory_is_repaired(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o777)
    os.close(state.open_dir(str(run), managed=str(run)))
    assert mode(run) == 0o755


def test_a_writable_directory_of_someone_else_is_refused_not_changed(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(UsageError, match="is writable by others: refusing"):
        state.write_file(str(shared / "f"), "x")
    assert mode(shared) == 0o777
    assert not (shared / "f").exists()
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)  # as /tmp: accepted
    state.write_file(str(sticky / "f"), "x")
    assert mode(sticky) == 0o1777


def test_a_symlinked_directory_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "run").symlink_to(real)
    with pytest.raises(UsageError, match="is not a directory"):
        state.write_file(str(tmp_path / "run" / "lab.json"), "{}")
    assert list(real.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown)")
def test_a_directory_not_owned_by_root_is_refused(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o755)
    os.chown(foreign, 65534, 65534)
    with pytest.raises(UsageError, match="is owned by uid 65534, not root"):
        state.open_dir(str(foreign), managed=str(foreign))


# ---------------------------------------------------------------- names


@pytest.mark.parametrize("bad", ["../x", "../../x", "a/b", "-x", "", ".", "x" * 25, "a b",
                                 "é", "a\0b"])  # fmt: skip
def test_bad_prefixes_are_refused(bad):
    if bad == "":
        assert state.check_prefix(bad) == ""  # the default lab
        return
    with pytest.raises(UsageError, match="invalid --prefix"):
        state.check_prefix(bad)


def test_good_names():
    assert state.check_prefix("t1a2b3") == "t1a2b3"
    assert state.check_prefix("lab_2-x") == "lab_2-x"
    assert state.check_host_name("node1.example.com") == "node1.example.com"
    with pytest.raises(UsageError, match="invalid host name '../h1'"):
        state.check_host_name("../h1")
    assert state.check_netns_name("ipt-1234") == "ipt-1234"
    for bad in ("..", "a/b", ""):
        with pytest.raises(UsageError, match="invalid network namespace name"):
            state.check_netns_name(bad)


# ---------------------------------------------------------------- pid files and processes

DAEMON = """\
import sys
sys.path.insert(0, {root!r})
from ipoibfs.state import PidFile
PidFile.create({path!r})
print("ready", flush=True)
sys.stdin.read()
"""


def start_fake_daemon(tmp_path: Path, pid_file: Path) -> subprocess.Popen:
    """A process whose command line is ipoibfs's (`python .../ipoibfs mount`) holding the
    lock of `pid_file`, as a daemon does."""
    script = tmp_path / "bin" / "ipoibfs"
    script.parent.mkdir(exist_ok=True)
    root = str(Path(__file__).resolve().parents[2])
    script.write_text(DAEMON.format(root=root, path=str(pid_file)))
    proc = subprocess.Popen([sys.executable, str(script), "mount"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline() == "ready\n"
    return proc


def test_a_pid_file_is_trusted_while_its_daemon_holds_it(tmp_path):
    pid_file = tmp_path / "mp.pid"
    proc = start_fake_daemon(tmp_path, pid_file)
    try:
        assert pid_file.read_text() == f"{proc.pid}\n"
        assert mode(pid_file) == 0o644
        assert state.lock_holder(str(pid_file)) == proc.pid
        with state.daemon_from_pid_file(str(pid_file)) as daemon:
            assert daemon.pid == proc.pid
            assert not daemon.wait(0)
    finally:
        proc.kill()
        proc.wait()
    # SIGKILLed: the file stays, the lock has gone with the process.
    assert pid_file.exists()
    assert state.lock_holder(str(pid_file)) is None
    assert state.daemon_from_pid_file(str(pid_file)) is None


def test_a_stale_pid_naming_a_live_process_is_not_trusted(tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        pid_file = tmp_path / "mp.pid"
        pid_file.write_text(f"{sleeper.pid}\n")  # as a SIGKILLed daemon left it, pid reused
        assert state.daemon_from_pid_file(str(pid_file)) is None
        assert sleeper.poll() is None
        # A process that looks like ipoibfs but does not hold the lock is not trusted either.
        other = start_fake_daemon(tmp_path, tmp_path / "other.pid")
        try:
            pid_file.write_text(f"{other.pid}\n")
            assert state.daemon_from_pid_file(str(pid_file)) is None
        finally:
            other.kill()
            other.wait()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_find_process_checks_start_time_and_command_line(tmp_path):
    proc = start_fake_daemon(tmp_path, tmp_path / "d.pid")
    try:
        start = state.process_start_time(proc.pid)
        assert start is not None
        assert state.find_process(proc.pid, start + 1, ("mount",)) is None
        assert state.find_process(proc.pid, start, ("fabric",)) is None
        daemon = state.find_process(proc.pid, start, ("mount",))
        assert daemon is not None
        with daemon:
            assert daemon.signal(signal.SIGTERM)
            assert daemon.wait(10)
    finally:
        proc.kill()
        proc.wait()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        assert state.find_process(sleeper.pid, state.process_start_time(sleeper.pid)) is None
    finally:
        sleeper.kill()
        sleeper.wait()
    assert state.find_process(None) is None


def test_process_stop_escalates_to_sigkill(tmp_path):
    script = tmp_path / "ipoibfs"
    script.write_text("import signal, sys\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                      "print('ready', flush=True)\nsys.stdin.read()\n")  # fmt: skip
    proc = subprocess.Popen([sys.executable, str(script), "mount"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout.readline() == "ready\n"
        with state.find_process(proc.pid, None, ("mount",)) as daemon:
            assert daemon.stop(timeout=0.2, kill_after=10)
        assert proc.wait(5) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------- logs


def test_logs_rotate_at_their_limit(tmp_path):
    path = tmp_path / "d.log"
    with state.open_log(str(path), limit=1000) as log:
        for i in range(90):  # 50 bytes a line: rotated after lines 19, 39, 59 and 79
            print(f"line {i:03} " + "x" * 40, file=log)
    assert path.stat().st_size < 1000
    old = tmp_path / "d.log.1"
    assert old.stat().st_size == 1000
    assert old.read_text().startswith("line 060 ")
    assert path.read_text().startswith("line 080 ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.log", "d.log.1"]


def test_a_log_over_its_limit_is_rotated_at_start(tmp_path):
    path = tmp_path / "d.log"
    path.write_text("x" * 2000)
    with state.open_log(str(path), limit=1000) as log:
        print("new run", file=log)
    assert path.read_text() == "new run\n"
    assert (tmp_path / "d.log.1").stat().st_size == 2000


def test_rotation_moves_stdout_and_stderr_with_the_log(tmp_path):
    code = f"""
import os, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from ipoibfs.state import open_log
log = open_log({str(tmp_path / "d.log")!r}, limit=200)
os.dup2(log.fileno(), 1)
os.dup2(log.fileno(), 2)
for i in range(10):
    print("through the log", i, "." * 30, file=log)
os.write(2, b"straight to fd 2\\n")
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "d.log").read_text().endswith("straight to fd 2\n")
    assert (tmp_path / "d.log").stat().st_size < 200
