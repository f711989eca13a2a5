"""`ipoibfs exec`'s read supervisor: the one umad behaviour a FUSE file cannot give alone.

A read of umadN whose buffer is too small for the waiting message (an RMPP answer longer than
one MAD) fails with ENOSPC after the kernel copied the header and the first MAD into the
buffer; libibumad takes the message's length from that header and reads again with a buffer
that fits (umad_recv, then saquery's realloc). A FUSE read reply is data or an error, never
both, so the FUSE file alone fails such a read with nothing copied.

exec's programs therefore run under a seccomp filter that hands read(2) calls of libibumad's
first size (the 64- or 56-byte header and 256 bytes) to the `ipoibfs exec` process, which
answers as the kernel would: for a umad file of this host (its device number is the devfs
mount's) whose waiting message does not fit, it writes what the kernel copies into the
reader's buffer and fails the call with ENOSPC (IPOIBFS_UMAD_PEEK says what, and leaves the
message queued); every other call runs untouched (SECCOMP_USER_NOTIF_FLAG_CONTINUE). Root
installs the filter without no_new_privs, so setuid programs keep working. When the program
exits and others it started still run (a daemon it left behind), a process of its own goes on
answering for them until none is left (the listener's POLLHUP).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import platform
import select
import struct

from ..errors import report_bug
from ..wire.mad import umad

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_SECCOMP, _SYS_PIDFD_GETFD = 317, 438  # x86_64
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_USER_NOTIF = 0x7FC00000
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1
AUDIT_ARCH_X86_64 = 0xC000003E
_NR_READ = 0
#: libibumad's first read: umad_size() + 256, with and without ENABLE_PKEY's header.
READ_SIZES = (64 + 256, 56 + 256)
#: struct seccomp_notif (id, pid, flags, seccomp_data: nr, arch, ip, args[6]) and
#: struct seccomp_notif_resp (id, val, error, flags).
_NOTIF = struct.Struct("=QIIiIQ6Q")
_RESP = struct.Struct("=QqiI")
SECCOMP_IOCTL_NOTIF_RECV = 3 << 30 | _NOTIF.size << 16 | 0x21 << 8 | 0
SECCOMP_IOCTL_NOTIF_SEND = 3 << 30 | _RESP.size << 16 | 0x21 << 8 | 1
SECCOMP_IOCTL_NOTIF_ID_VALID = 1 << 30 | 8 << 16 | 0x21 << 8 | 2
_INSN = struct.Struct("=HBBI")  # struct sock_filter
_LD_ABS, _JEQ, _RET = 0x20, 0x15, 0x06


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _program() -> bytes:
    """read(fd, buf, N) with N one of READ_SIZES goes to the supervisor; all else runs."""
    a, b = READ_SIZES
    insns = [
        (_LD_ABS, 0, 0, 4),  # arch
        (_JEQ, 0, 8, AUDIT_ARCH_X86_64),
        (_LD_ABS, 0, 0, 0),  # nr
        (_JEQ, 0, 6, _NR_READ),
        (_LD_ABS, 0, 0, 36),  # args[2], high word: 0
        (_JEQ, 0, 4, 0),
        (_LD_ABS, 0, 0, 32),  # args[2], low word
        (_JEQ, 1, 0, a),
        (_JEQ, 0, 1, b),
        (_RET, 0, 0, SECCOMP_RET_USER_NOTIF),
        (_RET, 0, 0, SECCOMP_RET_ALLOW),
    ]
    return b"".join(_INSN.pack(*insn) for insn in insns)


def install() -> int | None:
    """In exec's child, before it runs the program: the filter, and its listener fd (None
    where the kernel or the machine cannot: the program then runs without it)."""
    if platform.machine() != "x86_64":
        return None
    code = ctypes.create_string_buffer(_program())
    prog = _SockFprog(len(code.raw) // _INSN.size, ctypes.addressof(code))
    fd = _libc.syscall(_SYS_SECCOMP, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER,
                       ctypes.byref(prog))  # fmt: skip
    return fd if fd >= 0 else None


class Supervisor:
    """The exec process's side: answers what the filter hands it, one call at a time."""

    def __init__(self, listener: int, dev_dir: str) -> None:
        self.listener = listener
        try:
            self.device: int | None = os.stat(dev_dir).st_dev
        except OSError:
            self.device = None  # no umad files: every call runs as it is

    def handle(self) -> None:
        """One notification (the listener is readable): answered, never left waiting."""
        buf = bytearray(_NOTIF.size)
        try:
            fcntl.ioctl(self.listener, SECCOMP_IOCTL_NOTIF_RECV, buf)
        except OSError:
            return  # the caller died meanwhile
        notif_id, tid, _flags, _nr, _arch, _ip, fd, addr, count, *_ = _NOTIF.unpack(buf)
        error, flags = 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE
        try:
            copied = self._enospc(tid, fd, count)
            if copied is not None and self._write(notif_id, tid, addr, copied):
                error, flags = -errno.ENOSPC, 0
        except Exception:  # whatever went wrong, the call runs as it is
            report_bug("the umad read supervisor failed; the read goes on unchanged")
        try:
            fcntl.ioctl(self.listener, SECCOMP_IOCTL_NOTIF_SEND,
                        bytearray(_RESP.pack(notif_id, 0, error, flags)))  # fmt: skip
        except OSError:
            pass  # it died meanwhile, or was interrupted: the kernel restarts its call

    def _enospc(self, tid: int, fd: int, count: int) -> bytes | None:
        """What a read of `count` bytes of the caller's fd copies before it fails with
        ENOSPC, if the fd is one of our umad files and the waiting message does not fit.
        `tid` is the calling thread; its process's fd table is the one to look in."""
        try:
            if self.device is None or os.stat(f"/proc/{tid}/fd/{fd}").st_dev != self.device:
                return None
            pidfd = os.pidfd_open(_tgid(tid))
        except OSError:
            return None
        try:
            dup = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
        finally:
            os.close(pidfd)
        if dup < 0:
            return None
        try:
            arg = bytearray(count.to_bytes(4, "little").ljust(umad.IPOIBFS_PEEK_SIZE, b"\0"))
            fcntl.ioctl(dup, umad.IPOIBFS_UMAD_PEEK, arg)
        except OSError:
            return None  # nothing waits, or it fits: the read itself will do
        finally:
            os.close(dup)
        return bytes(arg[:count])

    def _write(self, notif_id: int, tid: int, addr: int, data: bytes) -> bool:
        """Into the caller's buffer, once its memory is open and the notification is known
        to be still the caller's (a reused pid is never written to)."""
        try:
            fd = os.open(f"/proc/{tid}/mem", os.O_WRONLY)
        except OSError:
            return False
        try:
            fcntl.ioctl(self.listener, SECCOMP_IOCTL_NOTIF_ID_VALID, struct.pack("=Q", notif_id))
            return os.pwrite(fd, data, addr) == len(data)
        except OSError:
            return False
        finally:
            os.close(fd)

    def serve_until_unused(self) -> None:
        """Answer until no process is left under the filter (POLLHUP)."""
        poller = select.poll()
        poller.register(self.listener, select.POLLIN)
        while True:
            for _, events in poller.poll():
                if events & select.POLLIN:
                    self.handle()
                elif events & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                    return


def _tgid(tid: int) -> int:
    """The process of a thread (pidfd_open takes a process)."""
    with open(f"/proc/{tid}/status") as f:
        for line in f:
            if line.startswith("Tgid:"):
                return int(line.split()[1])
    return tid
