"""A small FUSE server that speaks the kernel's protocol directly on /dev/fuse, for device-like
files (umadN, issmN) whose opens, reads, writes, ioctls and polls are Python objects.

pyfuse3 has no ioctl handler, so this is a second FUSE mount beside the mirror's. It runs on
the daemon's trio thread: one task reads requests from a non-blocking /dev/fuse and answers
each in turn; a read with nothing to return is parked until its handle calls `wakeup`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import stat
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from ipoibfs.devfs import protocol as p
from ipoibfs.errors import KernelError, report_bug

POLLIN = select.POLLIN
POLLOUT = select.POLLOUT
POLLERR = select.POLLERR
POLLHUP = select.POLLHUP

MAX_WRITE = 128 * 1024  # one write(2) of up to this much reaches the server as one WRITE
READ_BUFFER = MAX_WRITE + 4096  # >= header + write_in + max_write, as fuse_dev_do_read wants

MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MNT_DETACH = 2
FUSECTL = Path("/sys/fs/fuse/connections")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


class DeviceHandle:
    """One open file of a DeviceFile. Every method runs on the server's trio thread and must
    not block; errors are KernelError(errno), which the caller's syscall returns. Anything
    else raised is a bug: logged, and the syscall gets EIO."""

    def read(self, size: int) -> bytes | None:
        """At most `size` bytes, or None for "nothing yet": the server then answers EAGAIN
        to an O_NONBLOCK read and parks a blocking one until `wakeup` is called."""
        raise KernelError(errno.EINVAL)

    def write(self, data: bytes) -> int:
        """Consume one write(2) whole (as a character device does); return bytes taken."""
        raise KernelError(errno.EINVAL)

    def ioctl(self, cmd: int, data: bytes, out_size: int, arg: int) -> tuple[int, bytes]:
        """A restricted ioctl: `data` holds _IOC_SIZE(cmd) bytes for _IOW/_IOWR (empty for
        _IO/_IOR), the answer is (return value, at most `out_size` bytes copied back to the
        caller's buffer); `arg` is the raw argument (the only data an _IO command has)."""
        raise KernelError(errno.ENOTTY)

    def poll(self) -> int:
        """The readiness now, as POLLIN/POLLOUT/POLLERR/POLLHUP bits."""
        return POLLOUT

    def release(self) -> None:
        """The last reference is gone (close, process exit, or the server stopping)."""


Wakeup = Callable[[], None]


class DeviceFile:
    """A file whose opens are DeviceHandles. `open` gets the open(2) flags and the handle's
    `wakeup`: call it (on the trio thread) whenever the handle's readiness may have changed,
    so parked reads are retried and pollers notified."""

    mode = 0o600
    uid = 0
    gid = 0

    def open(self, flags: int, wakeup: Wakeup) -> DeviceHandle:
        raise KernelError(errno.ENODEV)


class Directory:
    """A directory of named DeviceFiles and Directories; entries may change while mounted
    (an entry's name is cached by the kernel for `entry_timeout` seconds)."""

    def __init__(self, entries: dict[str, Node] | None = None, mode: int = 0o755) -> None:
        self.entries: dict[str, Node] = dict(entries or {})
        self.mode = mode
        self.uid = 0
        self.gid = 0


Node = Directory | DeviceFile


@dataclass(eq=False)
class _Open:
    fh: int
    handle: DeviceHandle
    reads: deque[tuple[int, int]] = field(default_factory=deque)  # parked (unique, size)
    kh: int | None = None  # the kernel's poll handle while a poller waits for a notify
    poll_events: int = 0
    released: bool = False


class DevFs:
    """The FUSE server for one mount of `root`. `await serve(mountpoint)` mounts it, answers
    until the mount goes or the task is cancelled, and on the way out unmounts (lazily, so
    open files cannot keep it) and closes /dev/fuse, which aborts the connection."""

    def __init__(
        self, root: Directory, *, source: str = "ipoibfs-dev", entry_timeout: float = 1.0
    ) -> None:
        self.root = root
        self.source = source
        self.entry_timeout = entry_timeout
        self.mountpoint: str | None = None
        self.minor = 0  # the protocol minor negotiated at INIT
        self._fd = -1
        self._nodes: dict[int, Node] = {p.FUSE_ROOT_ID: root}
        self._ino: dict[int, int] = {id(root): p.FUSE_ROOT_ID}
        self._opens: dict[int, _Open] = {}
        self._next_fh = 1
        self._dispatching = False
        self._deferred: dict[int, _Open] = {}
        self._started = time.time_ns()
        self._handlers: dict[int, Callable[[p.InHeader, bytes], bytes | None]] = {
            p.INIT: self._init,
            p.LOOKUP: self._lookup,
            p.FORGET: self._forget,
            p.BATCH_FORGET: self._forget,
            p.GETATTR: self._getattr,
            p.SETATTR: self._setattr,
            p.OPEN: self._open,
            p.READ: self._read,
            p.WRITE: self._write,
            p.IOCTL: self._ioctl,
            p.POLL: self._poll,
            p.FLUSH: self._ok,
            p.RELEASE: self._release,
            p.OPENDIR: self._opendir,
            p.READDIR: self._readdir,
            p.RELEASEDIR: self._ok,
            p.STATFS: self._statfs,
            p.ACCESS: self._access,
            p.INTERRUPT: self._interrupt,
            p.DESTROY: self._ok,
        }

    async def serve(
        self, mountpoint: str | os.PathLike[str], *, task_status=trio.TASK_STATUS_IGNORED
    ) -> None:
        target = os.fspath(mountpoint)
        self._fd = os.open("/dev/fuse", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            root_mode = stat.S_IFDIR | self.root.mode
            options = (
                f"fd={self._fd},rootmode={root_mode:o},user_id={os.geteuid()},"
                f"group_id={os.getegid()},allow_other,default_permissions"
            )
            _mount(self.source, target, "fuse", MS_NOSUID | MS_NODEV | MS_NOEXEC, options)
            self.mountpoint = target
            task_status.started(self)
            await self._loop()
        finally:
            if self.mountpoint is not None:
                _umount(self.mountpoint)
            os.close(self._fd)
            self._fd = -1
            for st in list(self._opens.values()):
                self._drop(st)

    async def _loop(self) -> None:
        while True:
            try:
                buf = os.read(self._fd, READ_BUFFER)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self._fd)
                continue
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno in (errno.ENODEV, errno.ECONNABORTED):
                    return  # unmounted, or aborted through fusectl
                raise
            self._dispatch(buf)
            await trio.lowlevel.checkpoint()

    def _dispatch(self, buf: bytes) -> None:
        try:
            header, body = p.parse_request(buf)
        except ValueError:
            report_bug("devfs: malformed FUSE request")
            return
        handler = self._handlers.get(header.opcode, self._unknown)
        self._dispatching = True
        try:
            answer = handler(header, body)
        except KernelError as e:
            answer = p.reply_error(header.unique, e.errno)
        except Exception:
            report_bug(f"devfs: FUSE opcode {header.opcode} on node {header.nodeid}")
            answer = p.reply_error(header.unique, errno.EIO)
        finally:
            self._dispatching = False
        if answer is not None:
            self._send(answer)
        while self._deferred:
            st = self._deferred.pop(next(iter(self._deferred)))
            self._service(st)

    def _send(self, message: bytes) -> None:
        try:
            os.write(self._fd, message)
        except OSError as e:
            # ENOENT: the request is gone (its caller was killed, or the mount aborted).
            if e.errno not in (errno.ENOENT, errno.ENODEV, errno.EBADF):
                report_bug(f"devfs: the kernel refused a reply ({e.strerror})")

    # --- readiness -------------------------------------------------------------------

    def _wakeup_for(self, st: _Open) -> Wakeup:
        def wakeup() -> None:
            if st.released or self._fd < 0:
                return
            if self._dispatching:
                self._deferred[id(st)] = st
            else:
                self._service(st)

        return wakeup

    def _service(self, st: _Open) -> None:
        """Answer what the handle's new state allows: parked reads in order, then a poller."""
        if st.released:
            return  # released while its wakeup was deferred
        while st.reads:
            unique, size = st.reads[0]
            try:
                answer = self._try_read(st, unique, size)
            except KernelError as e:
                answer = p.reply_error(unique, e.errno)
            except Exception:
                report_bug("devfs: a handle's read")
                answer = p.reply_error(unique, errno.EIO)
            if answer is None:
                break
            st.reads.popleft()
            self._send(answer)
        if st.kh is not None:
            try:
                revents = st.handle.poll()
            except Exception:
                report_bug("devfs: a handle's poll")
                revents = POLLERR
            if revents & (st.poll_events | POLLERR | POLLHUP):
                kh, st.kh = st.kh, None
                self._send(p.notify_poll(kh))

    def _try_read(self, st: _Open, unique: int, size: int) -> bytes | None:
        data = st.handle.read(size)
        if data is None:
            return None
        if len(data) > size:
            report_bug(f"devfs: a handle returned {len(data)} bytes for a read of {size}")
            raise KernelError(errno.EIO)
        return p.reply(unique, bytes(data))

    def _drop(self, st: _Open) -> None:
        self._opens.pop(st.fh, None)
        if st.released:
            return
        st.released = True
        try:
            st.handle.release()
        except Exception:
            report_bug("devfs: a handle's release")

    # --- nodes -----------------------------------------------------------------------

    def _nodeid(self, node: Node) -> int:
        ino = self._ino.get(id(node))
        if ino is None:
            ino = len(self._nodes) + 1
            self._ino[id(node)] = ino
            self._nodes[ino] = node  # kept: the tree's objects are few and live long
        return ino

    def _node(self, nodeid: int) -> Node:
        node = self._nodes.get(nodeid)
        if node is None:
            raise KernelError(errno.ENOENT)
        return node

    def _attr(self, nodeid: int, node: Node) -> p.Attr:
        if isinstance(node, Directory):
            mode, nlink = stat.S_IFDIR | node.mode, 2
        else:
            mode, nlink = stat.S_IFREG | node.mode, 1
        return p.Attr(nodeid, mode, nlink, node.uid, node.gid, time_ns=self._started)

    def _open_of(self, fh: int) -> _Open:
        st = self._opens.get(fh)
        if st is None:
            raise KernelError(errno.EBADF)
        return st

    # --- requests --------------------------------------------------------------------

    def _init(self, h: p.InHeader, body: bytes) -> bytes:
        major, minor, _readahead, _flags = p.INIT_IN.unpack_from(body)
        try:
            out = p.init_out(major, minor, MAX_WRITE)
        except ValueError as e:
            print(f"ipoibfs: devfs: {e}", flush=True)
            raise KernelError(errno.EPROTO) from None
        self.minor = min(minor, p.FUSE_MINOR_SPOKEN)
        return p.reply(h.unique, out)

    def _lookup(self, h: p.InHeader, body: bytes) -> bytes:
        parent = self._node(h.nodeid)
        if not isinstance(parent, Directory):
            raise KernelError(errno.ENOTDIR)
        child = parent.entries.get(body.split(b"\0", 1)[0].decode(errors="replace"))
        if child is None:
            raise KernelError(errno.ENOENT)
        nodeid = self._nodeid(child)
        attr = self._attr(nodeid, child)
        return p.reply(h.unique, p.entry_out(nodeid, attr, self.entry_timeout))

    def _forget(self, h: p.InHeader, body: bytes) -> None:
        return None  # no reply; nodes stay known (see _nodeid)

    def _getattr(self, h: p.InHeader, body: bytes) -> bytes:
        node = self._node(h.nodeid)
        return p.reply(h.unique, p.attr_out(self._attr(h.nodeid, node), self.entry_timeout))

    def _setattr(self, h: p.InHeader, body: bytes) -> bytes:
        raise KernelError(errno.EPERM)

    def _open(self, h: p.InHeader, body: bytes) -> bytes:
        node = self._node(h.nodeid)
        if isinstance(node, Directory):
            raise KernelError(errno.EISDIR)
        flags, _ = p.OPEN_IN.unpack_from(body)
        st = _Open(self._next_fh, DeviceHandle())
        st.handle = node.open(flags, self._wakeup_for(st))
        self._next_fh += 1
        self._opens[st.fh] = st
        open_flags = p.FOPEN_DIRECT_IO | p.FOPEN_NONSEEKABLE | p.FOPEN_STREAM
        return p.reply(h.unique, p.OPEN_OUT.pack(st.fh, open_flags, 0))

    def _read(self, h: p.InHeader, body: bytes) -> bytes | None:
        fh, _offset, size, _read_flags, _owner, flags, _ = p.READ_IN.unpack_from(body)
        st = self._open_of(fh)
        answer = None if st.reads else self._try_read(st, h.unique, size)
        if answer is not None:
            return answer
        if flags & os.O_NONBLOCK:
            raise KernelError(errno.EAGAIN)
        st.reads.append((h.unique, size))
        return None

    def _write(self, h: p.InHeader, body: bytes) -> bytes:
        fh, _offset, size, _write_flags, _owner, _flags, _ = p.WRITE_IN.unpack_from(body)
        data = body[p.WRITE_IN.size : p.WRITE_IN.size + size]
        taken = self._open_of(fh).handle.write(data)
        if not 0 <= taken <= size:
            report_bug(f"devfs: a handle took {taken} bytes of a write of {size}")
            raise KernelError(errno.EIO)
        return p.reply(h.unique, p.WRITE_OUT.pack(taken, 0))

    def _ioctl(self, h: p.InHeader, body: bytes) -> bytes:
        fh, flags, cmd, arg, in_size, out_size = p.IOCTL_IN.unpack_from(body)
        if flags & (p.FUSE_IOCTL_DIR | p.FUSE_IOCTL_UNRESTRICTED):
            raise KernelError(errno.ENOTTY)
        data = body[p.IOCTL_IN.size : p.IOCTL_IN.size + in_size]
        result, out = self._open_of(fh).handle.ioctl(cmd, data, out_size, arg)
        if len(out) > out_size:
            report_bug(f"devfs: ioctl {cmd:#x} answered {len(out)} bytes, room for {out_size}")
            raise KernelError(errno.EIO)
        return p.reply(h.unique, p.IOCTL_OUT.pack(result, 0, 0, 0) + bytes(out))

    def _poll(self, h: p.InHeader, body: bytes) -> bytes:
        fh, kh, flags, events = p.POLL_IN.unpack_from(body)
        st = self._open_of(fh)
        revents = st.handle.poll()
        if flags & p.FUSE_POLL_SCHEDULE_NOTIFY and not revents & (events | POLLERR | POLLHUP):
            st.kh, st.poll_events = kh, events
        return p.reply(h.unique, p.POLL_OUT.pack(revents, 0))

    def _release(self, h: p.InHeader, body: bytes) -> bytes:
        fh, _flags, _release_flags, _owner = p.RELEASE_IN.unpack_from(body)
        st = self._open_of(fh)
        self._drop(st)
        return p.reply(h.unique)

    def _opendir(self, h: p.InHeader, body: bytes) -> bytes:
        if not isinstance(self._node(h.nodeid), Directory):
            raise KernelError(errno.ENOTDIR)
        return p.reply(h.unique, p.OPEN_OUT.pack(0, 0, 0))

    def _readdir(self, h: p.InHeader, body: bytes) -> bytes:
        _fh, offset, size, *_ = p.READ_IN.unpack_from(body)
        node = self._node(h.nodeid)
        if not isinstance(node, Directory):
            raise KernelError(errno.ENOTDIR)
        listing = [(h.nodeid, 4, "."), (h.nodeid, 4, "..")]  # DT_DIR
        for name, child in node.entries.items():
            listing.append((self._nodeid(child), 4 if isinstance(child, Directory) else 8, name))
        return p.reply(h.unique, p.dirents(listing, offset, size))

    def _statfs(self, h: p.InHeader, body: bytes) -> bytes:
        return p.reply(h.unique, p.statfs_out())

    def _access(self, h: p.InHeader, body: bytes) -> bytes:
        # Only sent without default_permissions (this mount has it): answered from the mode.
        mask, _ = p.ACCESS_IN.unpack_from(body)
        node = self._node(h.nodeid)
        if h.uid == node.uid:
            allowed = node.mode >> 6
        elif h.gid == node.gid:
            allowed = node.mode >> 3
        else:
            allowed = node.mode
        if h.uid == 0:
            allowed = 7 if isinstance(node, Directory) or node.mode & 0o111 else 6
        if mask & ~allowed & 7:
            raise KernelError(errno.EACCES)
        return p.reply(h.unique)

    def _interrupt(self, h: p.InHeader, body: bytes) -> None:
        (target,) = p.INTERRUPT_IN.unpack_from(body)
        for st in self._opens.values():
            for parked in st.reads:
                if parked[0] == target:
                    st.reads.remove(parked)
                    self._send(p.reply_error(target, errno.EINTR))
                    return None
        return None  # already answered: nothing to interrupt

    def _ok(self, h: p.InHeader, body: bytes) -> bytes:
        return p.reply(h.unique)

    def _unknown(self, h: p.InHeader, body: bytes) -> bytes:
        raise KernelError(errno.ENOSYS)  # the kernel then stops sending most of these


def _mount(source: str, target: str, fstype: str, flags: int, options: str) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), flags, options.encode()):
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype} on {target}: {os.strerror(err)}")


def _umount(target: str) -> None:
    if _libc.umount2(target.encode(), MNT_DETACH):
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise OSError(err, f"umount {target}: {os.strerror(err)}")


def _mount_device(mountpoint: str) -> tuple[int, int] | None:
    """The (major, minor) of the FUSE mount at `mountpoint`, from /proc/self/mountinfo (a stat
    would hang on a mount whose server is stuck)."""
    # mountinfo escapes space, tab, newline and backslash as octal (\040 ... \134)
    escaped = mountpoint.translate({92: "\\134", 32: "\\040", 9: "\\011", 10: "\\012"})
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == escaped and " - fuse" in line:
                major, minor = fields[2].split(":")
                return int(major), int(minor)
    return None


def connection_dir(mountpoint: str | os.PathLike[str]) -> Path | None:
    """The fusectl directory of the FUSE mount at `mountpoint` (`waiting`, `abort`, ...),
    mounting fusectl on /sys/fs/fuse/connections if nothing has; None if nothing is mounted."""
    device = _mount_device(os.fspath(mountpoint))
    if device is None:
        return None
    if not any(FUSECTL.iterdir()):
        _mount("fusectl", str(FUSECTL), "fusectl", 0, "")
    # named by the kernel's dev_t: MKDEV(major, minor) = major << 20 | minor
    return FUSECTL / str(device[0] << 20 | device[1])


def abort_mount(mountpoint: str | os.PathLike[str]) -> bool:
    """End a mount whose server died or hangs: abort its connection through fusectl (every
    waiting caller gets ECONNABORTED) and detach the mount. Returns whether one was there."""
    conn = connection_dir(mountpoint)
    if conn is None:
        return False
    if (conn / "abort").exists():
        (conn / "abort").write_text("1")
    _umount(os.fspath(mountpoint))
    return True
