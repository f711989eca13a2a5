"""The /dev/infiniband FUSE server (ipoibfs.devfs) against the real kernel: real mounts, real
open/ioctl/read/write/poll from other threads and processes, signals, process exit, and the
stock `sminfo` talking the umad ABI to a recording umad0.

Run as a script (`python test_devfs.py umad-env`), this file is the helper the sminfo test
starts under `unshare -m`: a private /sys/class and /dev with the server on /dev/infiniband.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import select
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import time
from collections import deque
from pathlib import Path

import pyfuse3
import pytest
import trio

from ipoibfs.devfs import (
    POLLIN,
    POLLOUT,
    DevFs,
    DeviceFile,
    DeviceHandle,
    Directory,
    Wakeup,
    abort_mount,
)
from ipoibfs.devfs import protocol as p
from ipoibfs.devfs.server import connection_dir
from ipoibfs.errors import KernelError

REPO = Path(__file__).resolve().parents[2]
PYTHON = str(REPO / ".venv" / "bin" / "python")

# include/uapi/rdma/ib_user_mad.h
IB_IOCTL_MAGIC = 0x1B
REG_REQ = struct.Struct("<I16sBBB3sBx")  # id, method_mask, qpn, mgmt_class, version, oui, rmpp
REG_REQ2 = struct.Struct("<IIBBHI16sIB3x")
REGISTER_AGENT = p.iowr(IB_IOCTL_MAGIC, 1, REG_REQ.size)
UNREGISTER_AGENT = p.iow(IB_IOCTL_MAGIC, 2, 4)
ENABLE_PKEY = p.io(IB_IOCTL_MAGIC, 3)
REGISTER_AGENT2 = p.iowr(IB_IOCTL_MAGIC, 4, REG_REQ2.size)
UMAD_HDR = struct.Struct("<IIIII4s4s2sBBBBBB16s4sH6x")  # struct ib_user_mad_hdr, 64 bytes
MAD_SIZE = 256
O_LARGEFILE = 0o100000  # the kernel sets it on every open of a 64-bit process (x86-64 value)
SMINFO_ATTR = 0x0020
SM_GUID = 0x0002C90300001001


# --- a device that records what reaches it ----------------------------------------------


class Loopback(DeviceHandle):
    """Writes come back as reads (one message per read, cut to the read's size); `feed` adds
    a message from the trio side. Every call is logged in the file's `log`."""

    def __init__(self, dev: LoopbackFile, flags: int, wakeup: Wakeup) -> None:
        self.dev, self.flags, self.wakeup = dev, flags, wakeup
        self.queue: deque[bytes] = deque()
        self.agents: list[int] = []

    def feed(self, data: bytes) -> None:
        self.queue.append(data)
        self.wakeup()

    def read(self, size: int) -> bytes | None:
        self.dev.log.append(("read", size, bool(self.queue)))
        self.dev.changed()
        return self.queue.popleft()[:size] if self.queue else None

    def write(self, data: bytes) -> int:
        self.dev.log.append(("write", len(data)))
        self.feed(bytes(data))
        return len(data)

    def ioctl(self, cmd: int, data: bytes, out_size: int, arg: int) -> tuple[int, bytes]:
        self.dev.log.append(("ioctl", cmd, bytes(data), out_size, arg))
        if cmd == REGISTER_AGENT:
            self.agents.append(len(self.agents))
            return 0, struct.pack("<I", self.agents[-1]) + data[4:]
        if cmd == ENABLE_PKEY:
            return 0, b""
        raise KernelError(errno.ENOTTY)

    def poll(self) -> int:
        self.dev.log.append(("poll",))
        self.dev.changed()
        return POLLOUT | (POLLIN if self.queue else 0)

    def release(self) -> None:
        self.dev.log.append(("release",))
        self.dev.handles.remove(self)
        self.dev.changed()


class LoopbackFile(DeviceFile):
    mode = 0o666

    def __init__(self) -> None:
        self.log: list[tuple] = []
        self.handles: list[Loopback] = []
        self._changed = trio.Event()

    def open(self, flags: int, wakeup: Wakeup) -> DeviceHandle:
        handle = Loopback(self, flags, wakeup)
        self.handles.append(handle)
        self.log.append(("open", flags))
        self.changed()
        return handle

    def changed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def until(self, predicate, what: str, timeout: float = 5.0):
        """Wait (on events, no polling) for `predicate()` to hold."""
        with trio.fail_after(timeout):
            while not (value := predicate()):
                await self._changed.wait()
        assert value, what
        return value


class Mounted:
    def __init__(self, path: Path, server: DevFs, dev: LoopbackFile) -> None:
        self.path, self.server, self.dev = path, server, dev
        self.file = str(path / "umad0")


def mounted_paths() -> set[str]:
    with open("/proc/self/mounts") as f:
        return {line.split()[1] for line in f}


# --- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture
async def mnt(tmp_path: Path):
    path = tmp_path / "infiniband"
    path.mkdir()
    dev = LoopbackFile()
    server = DevFs(Directory({"umad0": dev, "sub": Directory()}))
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, path)
            try:
                yield Mounted(path, server, dev)
            finally:
                nursery.cancel_scope.cancel()
    finally:
        if str(path) in mounted_paths():
            abort_mount(path)


async def in_thread(fn, *args):
    """`fn` in a worker thread (never on the trio thread: the server answers there).
    Abandoned on cancel, so a timeout fails the test; the unmount then frees the thread."""
    return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)


class Child:
    """A Python program on the mount, in its own process, that reports in lines."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self._buf = b""

    @classmethod
    async def start(cls, code: str, *args: str) -> Child:
        proc = await trio.lowlevel.open_process(
            [PYTHON, "-c", textwrap.dedent(code), *args], stdout=subprocess.PIPE
        )
        return cls(proc)

    async def line(self, timeout: float = 5.0) -> str:
        assert self.proc.stdout is not None
        with trio.fail_after(timeout):
            while b"\n" not in self._buf:
                chunk = await self.proc.stdout.receive_some()
                assert chunk, f"child ended early (buffer {self._buf!r})"
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    async def wait(self, timeout: float = 5.0) -> int:
        with trio.fail_after(timeout):
            return await self.proc.wait()


async def wait_until(predicate, what: str, timeout: float = 5.0) -> None:
    """For state only the kernel shows (fusectl's counters): look again every 10 ms."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


def parked(dev: LoopbackFile) -> int:
    """How many reads found nothing and were parked (the Loopback logs each read)."""
    return sum(1 for entry in dev.log if entry[0] == "read" and not entry[2])


# --- the tests ---------------------------------------------------------------------------


async def test_tree_ioctls_and_exact_round_trips(mnt: Mounted) -> None:
    def client() -> dict:
        seen: dict = {"ls": sorted(os.listdir(mnt.path)), "mode": os.stat(mnt.file).st_mode}
        fd = os.open(mnt.file, os.O_RDWR | os.O_NONBLOCK)
        try:
            req = bytearray(REG_REQ.pack(0xFFFFFFFF, b"\x01" * 16, 0, 0x81, 1, b"\0\x14\x05", 0))
            seen["reg"] = fcntl.ioctl(fd, REGISTER_AGENT, req), bytes(req)
            fcntl.ioctl(fd, REGISTER_AGENT, req)
            seen["reg2"] = bytes(req[:4])
            seen["pkey"] = fcntl.ioctl(fd, ENABLE_PKEY, 1234)
            for cmd in (p.iowr(IB_IOCTL_MAGIC, 9, 8), p.io(0x42, 1), p.ior(IB_IOCTL_MAGIC, 7, 4)):
                try:
                    fcntl.ioctl(fd, cmd, bytearray(8) if p.ioc_size(cmd) else 0)
                except OSError as e:
                    seen.setdefault("unknown", []).append(e.errno)
            try:
                os.read(fd, 64)
            except OSError as e:
                seen["empty"] = e.errno
            seen["w1"] = os.write(fd, bytes(range(256)) + b"\xaa" * 64)
            seen["r1"] = os.read(fd, 1024)
            big = os.urandom(100_000)
            seen["w2"] = os.write(fd, big)
            seen["r2"] = os.read(fd, 100_000) == big
            try:
                os.chmod(mnt.file, 0o600)
            except OSError as e:
                seen["chmod"] = e.errno
        finally:
            os.close(fd)
        return seen

    seen = await in_thread(client)
    assert seen["ls"] == ["sub", "umad0"] and seen["mode"] == 0o100666
    # _IOWR: the server got the caller's 28 bytes and room for 28; the caller got the answer
    assert seen["reg"][0] == 0 and seen["reg"][1][:4] == b"\0\0\0\0"
    assert seen["reg"][1][4:] == b"\x01" * 16 + bytes([0, 0x81, 1, 0, 0x14, 5, 0, 0])
    assert seen["reg2"] == b"\x01\0\0\0"
    ioctls = [e for e in mnt.dev.log if e[0] == "ioctl"]
    assert ioctls[0][1:4] == (REGISTER_AGENT, REG_REQ.pack(0xFFFFFFFF, b"\x01" * 16, 0, 0x81,
                              1, b"\0\x14\x05", 0), 28)  # fmt: skip
    # _IO: no data either way, the raw argument passed through
    assert seen["pkey"] == 0 and ioctls[2][1:] == (ENABLE_PKEY, b"", 0, 1234)
    assert seen["unknown"] == [errno.ENOTTY] * 3
    assert seen["empty"] == errno.EAGAIN
    # one write(2) is one WRITE of its size; each read reaches the handle with its size
    assert seen["w1"] == 320 and seen["r1"] == bytes(range(256)) + b"\xaa" * 64
    assert seen["w2"] == 100_000 and seen["r2"]
    sizes = [e[1] for e in mnt.dev.log if e[0] in ("read", "write")]
    assert sizes == [64, 320, 1024, 100_000, 100_000]
    assert seen["chmod"] == errno.EPERM
    assert ("release",) in mnt.dev.log


async def test_poll_wakes_on_notify(mnt: Mounted) -> None:
    result: dict = {}

    def poller() -> None:
        fd = os.open(mnt.file, os.O_RDWR | os.O_NONBLOCK)
        try:
            poll = select.poll()
            poll.register(fd, select.POLLIN)
            result["now"] = poll.poll(0)
            result["started"] = time.monotonic()
            result["events"] = poll.poll(10_000)
            result["woke"] = time.monotonic()
            result["data"] = os.read(fd, 100)
        finally:
            os.close(fd)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(in_thread, poller)
        # the second POLL is the sleeping one (poll(0) asked without a waiter)
        await mnt.dev.until(lambda: sum(e == ("poll",) for e in mnt.dev.log) >= 2, "a poll")
        fed = time.monotonic()
        mnt.dev.handles[0].feed(b"ready")
    assert result["now"] == []
    assert [(ev & select.POLLIN) for _, ev in result["events"]] == [select.POLLIN]
    assert result["data"] == b"ready"
    assert result["woke"] - fed < 2.0


async def test_blocking_read_woken_by_a_write_through_the_same_fd(mnt: Mounted) -> None:
    """A blocking read parks in the server; a write from another thread on the same file
    (FOPEN_STREAM: no f_pos lock between them) supplies the data that wakes it."""
    fd = await in_thread(os.open, mnt.file, os.O_RDWR)  # blocking reads
    got: dict = {}
    try:
        async with trio.open_nursery() as nursery:

            async def reader() -> None:
                got["data"] = await in_thread(os.read, fd, 1000)

            nursery.start_soon(reader)
            await mnt.dev.until(lambda: parked(mnt.dev) == 1, "a parked read")
            with trio.fail_after(5):
                assert await in_thread(os.write, fd, b"y" * 77) == 77
    finally:
        await in_thread(os.close, fd)
    assert got["data"] == b"y" * 77


async def test_blocking_read_interrupted_by_a_signal(mnt: Mounted) -> None:
    child = await Child.start(
        """
        import ctypes, errno, os, signal, sys
        libc = ctypes.CDLL(None, use_errno=True)
        signal.signal(signal.SIGUSR1, lambda *_: None)
        fd = os.open(sys.argv[1], os.O_RDWR)
        buf = ctypes.create_string_buffer(512)
        print("open", flush=True)
        n = libc.read(fd, buf, 512)
        print(n, errno.errorcode.get(ctypes.get_errno()), flush=True)
        print(len(os.read(fd, 512)), flush=True)
        """,
        mnt.file,
    )
    assert await child.line() == "open"
    await mnt.dev.until(lambda: parked(mnt.dev) == 1, "the first read parked")
    child.proc.send_signal(signal.SIGUSR1)
    assert await child.line() == "-1 EINTR"
    # the interrupted read is gone from the server: the next one gets the data
    await mnt.dev.until(lambda: parked(mnt.dev) == 2, "the second read parked")
    mnt.dev.handles[0].feed(b"z" * 100)
    assert await child.line() == "100"
    assert await child.wait() == 0
    await mnt.dev.until(lambda: not mnt.dev.handles, "the release")


async def test_two_handles_are_independent(mnt: Mounted) -> None:
    def client() -> dict:
        a = os.open(mnt.file, os.O_RDWR | os.O_NONBLOCK)
        b = os.open(mnt.file, os.O_RDWR | os.O_NONBLOCK)
        seen: dict = {}
        try:
            req = bytearray(REG_REQ.size)
            fcntl.ioctl(a, REGISTER_AGENT, req)
            fcntl.ioctl(a, REGISTER_AGENT, req)
            fcntl.ioctl(b, REGISTER_AGENT, req)
            seen["agent_b"] = bytes(req[:4])
            os.write(a, b"for a")
            try:
                os.read(b, 100)
            except OSError as e:
                seen["b"] = e.errno
            seen["a"] = os.read(a, 100)
            os.close(a)
            os.write(b, b"for b")
            seen["b2"] = os.read(b, 100)
        finally:
            os.close(b)
        return seen

    seen = await in_thread(client)
    assert seen == {"agent_b": b"\0\0\0\0", "b": errno.EAGAIN, "a": b"for a", "b2": b"for b"}
    assert [e for e in mnt.dev.log if e[0] in ("open", "release")] == [
        ("open", os.O_RDWR | os.O_NONBLOCK | O_LARGEFILE)] * 2 + [("release",)] * 2  # fmt: skip


async def test_release_when_a_blocked_process_is_killed(mnt: Mounted) -> None:
    child = await Child.start(
        """
        import os, sys
        fd = os.open(sys.argv[1], os.O_RDWR)
        print("open", flush=True)
        os.read(fd, 64)
        """,
        mnt.file,
    )
    assert await child.line() == "open"
    await mnt.dev.until(lambda: parked(mnt.dev) == 1, "a parked read")
    child.proc.kill()  # the kernel interrupts the parked READ, then releases the file
    assert await child.wait() == -signal.SIGKILL
    await mnt.dev.until(lambda: ("release",) in mnt.dev.log, "the release")


async def test_stopping_unmounts_under_open_files(tmp_path: Path) -> None:
    path = tmp_path / "infiniband"
    path.mkdir()
    dev = LoopbackFile()
    server = DevFs(Directory({"umad0": dev}))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, path)
        assert str(path) in mounted_paths()
        child = await Child.start(
            """
            import errno, os, sys
            fd = os.open(sys.argv[1], os.O_RDWR)
            print("open", flush=True)
            try:
                os.read(fd, 64)
            except OSError as e:
                print(errno.errorcode[e.errno], flush=True)
            """,
            str(path / "umad0"),
        )
        assert await child.line() == "open"
        await dev.until(lambda: parked(dev) == 1, "a parked read")
        nursery.cancel_scope.cancel()
    assert str(path) not in mounted_paths()
    assert dev.log[-1] == ("release",)  # the server let go of what the kernel still held
    assert await child.line() in ("ECONNABORTED", "ENOTCONN")
    assert await child.wait() == 0


async def test_abort_mount_ends_a_hung_server(tmp_path: Path) -> None:
    """A server that stops answering (here SIGSTOPped) would hang every caller: abort_mount
    ends its connection through fusectl and removes the mount."""
    path = tmp_path / "infiniband"
    path.mkdir()
    server = await Child.start(
        """
        import sys, trio
        sys.path.insert(0, sys.argv[2])
        from ipoibfs.devfs import DevFs, DeviceFile, Directory

        async def main():
            async with trio.open_nursery() as nursery:
                await nursery.start(DevFs(Directory({"umad0": DeviceFile()})).serve, sys.argv[1])
                print("ready", flush=True)

        trio.run(main)
        """,
        str(path),
        str(REPO),
    )
    try:
        assert await server.line() == "ready"
        server.proc.send_signal(signal.SIGSTOP)
        async with trio.open_nursery() as nursery:
            result: dict = {}

            def stuck_stat() -> None:
                try:
                    os.stat(path / "umad0")
                except OSError as e:
                    result["errno"] = e.errno

            nursery.start_soon(in_thread, stuck_stat)
            conn = connection_dir(path)
            assert conn is not None
            await wait_until(lambda: int((conn / "waiting").read_text()) > 0, "a stuck stat")
            assert "errno" not in result
            assert await in_thread(abort_mount, path)
        assert result["errno"] in (errno.ECONNABORTED, errno.ENOTCONN)
        assert str(path) not in mounted_paths()
    finally:
        server.proc.kill()
        server.proc.send_signal(signal.SIGCONT)
        await server.wait()


class _EmptyMirror(pyfuse3.Operations):
    async def getattr(self, inode, ctx=None):
        attr = pyfuse3.EntryAttributes()
        attr.st_ino, attr.st_mode, attr.st_nlink = inode, stat.S_IFDIR | 0o755, 2
        return attr


async def test_beside_pyfuse3_in_one_process(tmp_path: Path) -> None:
    """The daemon's mirror is pyfuse3 on the same trio thread: both mounts answer at once."""
    mirror, devdir = tmp_path / "mirror", tmp_path / "infiniband"
    mirror.mkdir()
    devdir.mkdir()
    dev = LoopbackFile()
    pyfuse3.init(_EmptyMirror(), str(mirror), ["fsname=ipoibfs-test"])
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pyfuse3.main)
            await nursery.start(DevFs(Directory({"umad0": dev})).serve, devdir)

            def client() -> tuple[bool, int, bytes]:
                fd = os.open(devdir / "umad0", os.O_RDWR)
                try:
                    is_dir = stat.S_ISDIR(os.stat(mirror).st_mode)
                    pkey = fcntl.ioctl(fd, ENABLE_PKEY, 0)
                    os.write(fd, b"both")
                    return is_dir, pkey, os.read(fd, 10)
                finally:
                    os.close(fd)

            assert await in_thread(client) == (True, 0, b"both")
            nursery.cancel_scope.cancel()
    finally:
        pyfuse3.close(unmount=True)
    assert not {str(mirror), str(devdir)} & mounted_paths()


def umad_run(answer: str, *cmd: str) -> dict:
    done = subprocess.run(
        ["unshare", "-m", PYTHON, __file__, "umad-env", answer, *cmd],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_stock_sminfo_through_umad0() -> None:
    result = umad_run("answer", "sminfo", "-t", "100")
    log = result["log"]
    assert log[0] == {"op": "open", "flags": os.O_RDWR | os.O_NONBLOCK | O_LARGEFILE}
    ioctls = [e for e in log if e["op"] == "ioctl"]
    assert ioctls[0] == {"op": "ioctl", "cmd": ENABLE_PKEY, "in": 0, "out_size": 0}
    agents = [e for e in ioctls if e["cmd"] == REGISTER_AGENT]
    assert all(e["in"] == e["out_size"] == REG_REQ.size for e in agents)
    smi = {(e["mgmt_class"], e["version"], e["qpn"]) for e in agents}
    assert {(0x01, 1, 0), (0x81, 1, 0)} <= smi
    writes = [e for e in log if e["op"] == "write"]
    assert writes == [
        {"op": "write", "size": UMAD_HDR.size + MAD_SIZE, "agent": 0, "class": 0x01,
         "method": 0x01, "attr": SMINFO_ATTR, "timeout_ms": 100, "retries": 0}
    ]  # fmt: skip
    assert {"op": "read", "size": UMAD_HDR.size + MAD_SIZE} in log
    assert log[-1] == {"op": "release"}
    assert result["rc"] == 0, result
    assert result["stdout"] == (
        f"sminfo: sm lid 1 sm guid {SM_GUID:#x}, activity count 7 priority 0 state 3 "
        "SMINFO_MASTER\n"
    )


def test_stock_sminfo_sees_the_timeout_status() -> None:
    result = umad_run("timeout", "sminfo", "-t", "100")
    writes = [e for e in result["log"] if e["op"] == "write"]
    assert len(writes) == 3 and {e["attr"] for e in writes} == {SMINFO_ATTR}  # its 3 retries
    assert result["rc"] == 255 and "query" in result["stdout"]
    assert "_do_madrpc failed; dport (Lid 1)" in result["stderr"]


# --- the umad helper (run under `unshare -m`) -------------------------------------------

SYSFS = {
    "infiniband_mad/abi_version": "5",
    "infiniband_mad/umad0/ibdev": "mlx4_0",
    "infiniband_mad/umad0/port": "1",
    "infiniband/mlx4_0/node_type": "1: CA",
    "infiniband/mlx4_0/fw_ver": "2.42.5000",
    "infiniband/mlx4_0/hw_rev": "0",
    "infiniband/mlx4_0/hca_type": "MT4099",
    "infiniband/mlx4_0/node_guid": "0002:c903:0000:1001",
    "infiniband/mlx4_0/sys_image_guid": "0002:c903:0000:1003",
    "infiniband/mlx4_0/ports/1/lid_mask_count": "0",
    "infiniband/mlx4_0/ports/1/sm_lid": "0x1",
    "infiniband/mlx4_0/ports/1/sm_sl": "0",
    "infiniband/mlx4_0/ports/1/lid": "0x2",
    "infiniband/mlx4_0/ports/1/state": "4: ACTIVE",
    "infiniband/mlx4_0/ports/1/phys_state": "5: LinkUp",
    "infiniband/mlx4_0/ports/1/rate": "40 Gb/sec (4X QDR)",
    "infiniband/mlx4_0/ports/1/cap_mask": "0x02510868",
    "infiniband/mlx4_0/ports/1/link_layer": "InfiniBand",
    "infiniband/mlx4_0/ports/1/gids/0": "fe80:0000:0000:0000:0002:c903:0000:1001",
    "infiniband/mlx4_0/ports/1/pkeys/0": "0xffff",
}
DEV_NODES = {"null": (1, 3), "zero": (1, 5), "random": (1, 8), "urandom": (1, 9), "fuse": (10, 229)}


class UmadHandle(DeviceHandle):
    """Just enough of ib_umad for one SMP: agents, ENABLE_PKEY, and a write answered with an
    SMInfo GetResp of the same TID (or, with `answer` off, returned with status ETIMEDOUT as
    the kernel does when no response comes)."""

    def __init__(self, log: list[dict], wakeup: Wakeup, answer: bool) -> None:
        self.log, self.wakeup, self.answer = log, wakeup, answer
        self.queue: deque[bytes] = deque()
        self.agents = 0

    def ioctl(self, cmd: int, data: bytes, out_size: int, arg: int) -> tuple[int, bytes]:
        entry: dict = {"op": "ioctl", "cmd": cmd, "in": len(data), "out_size": out_size}
        self.log.append(entry)
        if cmd == ENABLE_PKEY:
            return 0, b""
        if cmd == REGISTER_AGENT:
            _, _, qpn, mgmt_class, version, _, rmpp = REG_REQ.unpack(data)
            entry.update(qpn=qpn, mgmt_class=mgmt_class, version=version, rmpp=rmpp)
            self.agents += 1
            return 0, struct.pack("<I", self.agents - 1) + data[4:]
        raise KernelError(errno.EINVAL)

    def write(self, data: bytes) -> int:
        hdr, mad = data[: UMAD_HDR.size], data[UMAD_HDR.size :]
        agent, _status, timeout_ms, retries, *_ = UMAD_HDR.unpack(hdr)
        mgmt_class, method = mad[1], mad[3]
        (attr_id,) = struct.unpack_from(">H", mad, 16)
        self.log.append({"op": "write", "size": len(data), "agent": agent, "class": mgmt_class,
                         "method": method, "attr": attr_id, "timeout_ms": timeout_ms,
                         "retries": retries})  # fmt: skip
        if self.answer and method == 0x01 and attr_id == SMINFO_ATTR:
            resp = bytearray(mad)
            resp[3] = 0x81  # GetResp
            # SMInfo at the SMP's data (offset 64): GUID, SM_Key, ActCount, Priority|SMState
            struct.pack_into(">QQIB", resp, 64, SM_GUID, 0, 7, 0x03)  # priority 0, MASTER
            answer_hdr = bytearray(hdr)
            struct.pack_into("<II", answer_hdr, 0, agent, 0)
            struct.pack_into("<I", answer_hdr, 16, len(data))
            self.queue.append(bytes(answer_hdr) + bytes(resp))
        else:
            timed_out = bytearray(hdr)
            struct.pack_into("<II", timed_out, 0, agent, errno.ETIMEDOUT)
            self.queue.append(bytes(timed_out) + mad)
        self.wakeup()
        return len(data)

    def read(self, size: int) -> bytes | None:
        self.log.append({"op": "read", "size": size})
        return self.queue.popleft()[:size] if self.queue else None

    def poll(self) -> int:
        return POLLOUT | (POLLIN if self.queue else 0)

    def release(self) -> None:
        self.log.append({"op": "release"})


class UmadFile(DeviceFile):
    mode = 0o600

    def __init__(self, log: list[dict], answer: bool) -> None:
        self.log, self.answer = log, answer

    def open(self, flags: int, wakeup: Wakeup) -> DeviceHandle:
        self.log.append({"op": "open", "flags": flags})
        return UmadHandle(self.log, wakeup, self.answer)


def _mount_tmpfs(path: str) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "ipoibfs-test", path], check=True)


async def umad_env(answer: bool, *cmd: str) -> dict:
    """In this (private) mount namespace: /sys/class with one umad0, a /dev with the few
    nodes programs need, the server on /dev/infiniband; run `cmd` and report."""
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    _mount_tmpfs("/sys/class")
    for rel, text in SYSFS.items():
        path = Path("/sys/class", rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    _mount_tmpfs("/dev")
    for name, (major, minor) in DEV_NODES.items():
        os.mknod(f"/dev/{name}", 0o20666, os.makedev(major, minor))
    os.mkdir("/dev/infiniband")
    log: list[dict] = []
    server = DevFs(Directory({"umad0": UmadFile(log, answer)}))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, "/dev/infiniband")
        with trio.fail_after(20):
            done = await trio.run_process(list(cmd), capture_stdout=True, capture_stderr=True,
                                          check=False)  # fmt: skip
        nursery.cancel_scope.cancel()
    return {"log": log, "rc": done.returncode, "stdout": done.stdout.decode(),
            "stderr": done.stderr.decode()}  # fmt: skip


if __name__ == "__main__" and sys.argv[1] == "umad-env":
    result = trio.run(umad_env, sys.argv[2] == "answer", *sys.argv[3:])
    print(json.dumps(result))
