"""Fixtures for tests against real daemons: a network namespace per test, a real FUSE mount,
real TUN netdevs. Everything is removed after the test, whatever its outcome."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ipoibfs.state import state_file

REPO = Path(__file__).resolve().parents[2]
IPOIBFS = str(REPO / ".venv" / "bin" / "ipoibfs")
MOUNT_BASE = Path("/tmp/ipoibfs-tests")
HERE = Path(__file__).resolve().parent
NEEDS_ROOT = "needs root: real FUSE mounts, netdevs and network namespaces (CI runs these as root)"


def pytest_collection_modifyitems(config, items) -> None:
    """Not root: every integration test is skipped with the reason, none errors."""
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason=NEEDS_ROOT)
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(skip)


def run(*cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, **kw)


def wait_for(predicate, timeout: float = 5.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def write(path: Path | str, data: bytes | str) -> int:
    """One open(O_WRONLY|O_TRUNC) + one write(), as `echo` does. Returns 0 or the errno."""
    if isinstance(data, str):
        data = data.encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    except OSError as e:
        return e.errno
    try:
        os.write(fd, data)
    except OSError as e:
        return e.errno
    finally:
        os.close(fd)
    return 0


def read(path: Path | str) -> str | int:
    """The file's text, or the errno that reading it gave."""
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        return e.errno


def daemon_pid(mountpoint: Path) -> int | None:
    try:
        return int(Path(state_file(str(mountpoint), "pid")).read_text())
    except (OSError, ValueError):
        return None


def tun_fds(pid: int | None) -> int:
    """The TUN fds a process holds (one may close while they are counted)."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd) == "/dev/net/tun"
        except FileNotFoundError:
            pass
    return count


def is_mounted(path: Path) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == str(path) for line in f)


def cleanup_mount(mountpoint: Path) -> None:
    """Stop whatever daemon serves `mountpoint` and remove the mount, politely then firmly."""
    pid = daemon_pid(mountpoint)
    if is_mounted(mountpoint):
        run(IPOIBFS, "umount", str(mountpoint), check=False, timeout=30)
    if pid and Path(f"/proc/{pid}").exists():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if is_mounted(mountpoint):
        run("fusermount3", "-u", "-z", str(mountpoint), check=False)
    for kind in ("pid", "log", "log.1", "netns"):
        Path(state_file(str(mountpoint), kind)).unlink(missing_ok=True)


class Netns:
    def __init__(self, name: str) -> None:
        self.name = name

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run("ip", "-n", self.name, *args, check=check)

    def exec(self, *cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return run("ip", "netns", "exec", self.name, *cmd, check=check, **kw)

    def links(self) -> dict[str, dict]:
        out = self.ip("-j", "-d", "link", "show").stdout
        return {link["ifname"]: link for link in json.loads(out)}


@pytest.fixture
def netns() -> Iterator[Netns]:
    name = f"ipt-{uuid.uuid4().hex[:8]}"
    run("ip", "netns", "add", name)
    try:
        yield Netns(name)
    finally:
        run("ip", "netns", "del", name, check=False)


@pytest.fixture
def mountpoint(netns: Netns) -> Iterator[Path]:
    """An empty directory others can reach (for the non-root tests), cleaned up after."""
    MOUNT_BASE.mkdir(mode=0o755, exist_ok=True)
    MOUNT_BASE.chmod(0o755)
    path = MOUNT_BASE / netns.name
    path.mkdir(mode=0o755)
    try:
        yield path
    finally:
        cleanup_mount(path)
        path.rmdir()


class Host:
    """A mounted ipoibfs host whose interfaces live in `netns`."""

    def __init__(self, netns: Netns, mountpoint: Path) -> None:
        self.netns = netns
        self.mp = mountpoint

    def net(self, ifname: str = "ib0") -> Path:
        return self.mp / "class" / "net" / ifname

    def attr(self, ifname: str, name: str) -> str | int:
        return read(self.net(ifname) / name)

    def debugfs(self, name: str) -> Path:
        return self.mp / "kernel" / "debug" / "ipoib" / name

    def hca(self, *parts: str) -> Path:
        return self.mp.joinpath("class", "infiniband", "ipoibfs0", *parts)

    def param(self, name: str) -> Path:
        return self.mp / "module" / "ib_ipoib" / "parameters" / name

    def interfaces(self) -> list[str]:
        return sorted(os.listdir(self.mp / "class" / "net"))

    def up(self, ifname: str = "ib0") -> None:
        self.netns.ip("link", "set", ifname, "up")

    def wait_carrier(self, ifname: str = "ib0") -> None:
        """The port goes ACTIVE once the SM has swept it: seconds on a loaded machine."""
        wait_for(lambda: self.attr(ifname, "carrier") == "1\n", timeout=15.0,
                 what=f"{ifname} carrier")  # fmt: skip

    @property
    def log(self) -> str:
        return Path(state_file(str(self.mp), "log")).read_text()


def mount_host(netns: Netns, mountpoint: Path, *args: str) -> Host:
    result = run(IPOIBFS, "mount", "--netns", netns.name, *args, str(mountpoint), check=False)
    assert result.returncode == 0, result.stderr
    return Host(netns, mountpoint)


@pytest.fixture
def host(netns: Netns, mountpoint: Path) -> Host:
    return mount_host(netns, mountpoint, "--name", "h1")


# ---------------------------------------------------------------- labs

GUID = "0x0002c9030000{:02x}01"  # port 1 of lab host hN (node GUID ...N00, port GUID +1)


class LabHandle:
    """A lab started with its own prefix, so it never touches a lab a user runs."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def name(self, i: int) -> str:
        return f"{self.prefix}-h{i}"

    def host(self, i: int) -> Host:
        return Host(Netns(self.name(i)), Path("/run/ipoibfs") / self.name(i))

    def ipoibfs(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run(IPOIBFS, "lab", *args, "--prefix", self.prefix, check=check)

    def up(self, hosts: int, *args: str) -> None:
        result = self.ipoibfs("up", "--hosts", str(hosts), *args, check=False)
        assert result.returncode == 0, result.stderr
        for i in range(1, hosts + 1):
            self.host(i).wait_carrier()

    def ping(self, src: int, dst: str, *args: str, count: int = 2) -> bool:
        cmd = ["ping", "-c", str(count), "-W", "2", "-i", "0.2", *args, dst]
        return self.host(src).netns.exec(*cmd, check=False).returncode == 0


@contextlib.contextmanager
def lab_handle(letter: str = "t") -> Iterator[LabHandle]:
    """A lab with a fresh prefix (`letter` and 6 hex digits), brought down with its
    namespaces at the end, whatever happened."""
    handle = LabHandle(f"{letter}{uuid.uuid4().hex[:6]}")
    try:
        yield handle
    finally:
        handle.ipoibfs("down", check=False)
        for line in run("ip", "netns", "list").stdout.splitlines():
            if line.startswith(f"{handle.prefix}-"):
                run("ip", "netns", "del", line.split()[0], check=False)


@pytest.fixture
def lab() -> Iterator[LabHandle]:
    with lab_handle() as handle:
        yield handle


# ---------------------------------------------------------------- checks that can fail


def counter(h: Host, name: str, ifname: str = "ib0") -> int:
    """statistics/<name> of `ifname`. read() gives the errno when reading fails, and
    int() of an errno is a plausible count: here a failed read fails the test."""
    value = read(h.net(ifname) / "statistics" / name)
    assert isinstance(value, str), f"{ifname} statistics/{name}: {os.strerror(value)}"
    return int(value)


def no_reply(lab: LabHandle, src: int, dst: str, *args: str, count: int = 1) -> None:
    """Host `src` pinged `dst` and heard nothing back. Unlike `not lab.ping(...)`, a ping
    that could not run (bad arguments, no namespace, no route) does not pass."""
    import re

    cmd = ["ping", "-c", str(count), "-W", "2", "-i", "0.2", *args, dst]
    result = lab.host(src).netns.exec(*cmd, check=False)
    sent_unanswered = re.search(r"\b[1-9]\d* packets transmitted, 0 received", result.stdout)
    assert result.returncode == 1 and sent_unanswered, result.stdout + result.stderr


# ---------------------------------------------------------------- a HOST:PORT fabric

CARRIER_IP = "198.18.0.254"


class TcpFabric:
    """Hosts on a HOST:PORT fabric: the SM and the mounts run in a carrier namespace that
    holds CARRIER_IP, each host's interfaces in a namespace of its own."""

    def __init__(self, prefix: str, tmp: Path, port: int, key: Path | None = None) -> None:
        self.prefix = prefix
        self.tmp = tmp
        self.carrier = Netns(f"{prefix}-c")
        self.address = f"{CARRIER_IP}:{port}"
        self.key = key

    def name(self, i: int) -> str:
        return f"{self.prefix}-h{i}"

    def host(self, i: int) -> Host:
        return Host(Netns(self.name(i)), self.tmp / self.name(i))

    def in_carrier(self, *cmd: str) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.carrier.name}", *cmd]

    def mount(self, i: int, *args: str) -> subprocess.CompletedProcess:
        h = self.host(i)
        run("ip", "netns", "add", h.netns.name, check=False)
        h.mp.mkdir(exist_ok=True)
        return run(*self.in_carrier(IPOIBFS, "mount", "--netns", h.netns.name, "--name",
                                    f"h{i}", "--fabric", self.address, *args, str(h.mp)),
                   check=False)  # fmt: skip

    def ping(self, src: int, dst: str, *args: str) -> bool:
        cmd = ["ping", "-c", "2", "-W", "2", "-i", "0.2", *args, dst]
        return self.host(src).netns.exec(*cmd, check=False).returncode == 0


@contextmanager
def tcp_fabric(prefix: str, tmp: Path, port: int, key: Path | None = None,
               hosts: int = 2) -> Iterator[TcpFabric]:  # fmt: skip
    """`fabric serve` on CARRIER_IP:port (with `key` as its --key-file, if given) and
    `hosts` hosts joined to it, ib0 up as 198.18.0.<i>/24; everything removed afterwards."""
    fabric = TcpFabric(prefix, tmp, port, key)
    key_args = ("--key-file", str(key)) if key is not None else ()
    sm = None
    try:
        run("ip", "netns", "add", fabric.carrier.name)
        fabric.carrier.ip("link", "set", "lo", "up")
        fabric.carrier.ip("addr", "add", f"{CARRIER_IP}/32", "dev", "lo")
        sm = subprocess.Popen(fabric.in_carrier(IPOIBFS, "fabric", "serve", fabric.address,
                                                *key_args),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        wait_for(lambda: f":{port} " in fabric.carrier.exec("ss", "-ltn").stdout, what="SM up")
        for i in range(1, hosts + 1):
            result = fabric.mount(i, *key_args)
            assert result.returncode == 0, result.stderr
            h = fabric.host(i)
            h.netns.ip("link", "set", "lo", "up")
            h.netns.ip("addr", "add", f"198.18.0.{i}/24", "dev", "ib0")
            h.up()
            h.wait_carrier()
        yield fabric
    finally:
        for i in range(1, hosts + 2):  # and the one a test may have added
            h = fabric.host(i)
            if h.mp.exists():
                cleanup_mount(h.mp)
            run("ip", "netns", "del", h.netns.name, check=False)
        if sm is not None:
            sm.terminate()  # a clean stop also removes a key it made itself
            try:
                sm.wait(timeout=10)
            except subprocess.TimeoutExpired:
                sm.kill()
                sm.wait()
        run("ip", "netns", "del", fabric.carrier.name, check=False)
