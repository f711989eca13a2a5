"""The kernel's FUSE protocol (include/uapi/linux/fuse.h): the request and reply layouts this
server speaks on /dev/fuse, and the ioctl number encoding of include/uapi/asm-generic/ioctl.h.

Pure: no I/O. All structures are in the host's byte order (the kernel writes them natively);
the project runs on little-endian x86-64 and the formats say so explicitly.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

FUSE_KERNEL_VERSION = 7
# 7.31: every request and reply layout used here is at its final size (fuse_init_out is 64
# bytes since 7.23, POLL carries `events` since 7.21, BATCH_FORGET exists since 7.16); later
# minors add features this server does not claim (flags2, security contexts, statx, ...).
FUSE_MINOR_SPOKEN = 31
FUSE_MINOR_REQUIRED = 23
FUSE_ROOT_ID = 1
FUSE_MIN_READ_BUFFER = 8192

# enum fuse_opcode
LOOKUP = 1
FORGET = 2
GETATTR = 3
SETATTR = 4
OPEN = 14
READ = 15
WRITE = 16
STATFS = 17
RELEASE = 18
FLUSH = 25
INIT = 26
OPENDIR = 27
READDIR = 28
RELEASEDIR = 29
ACCESS = 34
INTERRUPT = 36
DESTROY = 38
IOCTL = 39
POLL = 40
BATCH_FORGET = 42

# enum fuse_notify_code
NOTIFY_POLL = 1

# open_out.open_flags
FOPEN_DIRECT_IO = 1 << 0
FOPEN_NONSEEKABLE = 1 << 2
FOPEN_STREAM = 1 << 4

# ioctl_in.flags
FUSE_IOCTL_COMPAT = 1 << 0
FUSE_IOCTL_UNRESTRICTED = 1 << 1
FUSE_IOCTL_DIR = 1 << 4

# poll_in.flags
FUSE_POLL_SCHEDULE_NOTIFY = 1 << 0

# the low bit of an INTERRUPT request's unique (FUSE_INT_REQ_BIT in fs/fuse/fuse_i.h)
FUSE_INT_REQ_BIT = 1

IN_HEADER = struct.Struct("<IIQQIIII")  # len opcode unique nodeid uid gid pid padding
OUT_HEADER = struct.Struct("<IiQ")  # len error unique
INIT_IN = struct.Struct("<IIII")  # major minor max_readahead flags (flags2... follow)
INIT_OUT = struct.Struct("<IIIIHHIIHH32x")  # 64 bytes
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")  # 88 bytes
ENTRY_OUT_HEAD = struct.Struct("<QQQQII")  # nodeid generation entry_valid attr_valid nsecs
ATTR_OUT_HEAD = struct.Struct("<QII")  # attr_valid attr_valid_nsec dummy
OPEN_IN = struct.Struct("<II")  # flags open_flags
OPEN_OUT = struct.Struct("<QII")  # fh open_flags padding
READ_IN = struct.Struct("<QQIIQII")  # fh offset size read_flags lock_owner flags padding
WRITE_IN = READ_IN  # fh offset size write_flags lock_owner flags padding
WRITE_OUT = struct.Struct("<II")
RELEASE_IN = struct.Struct("<QIIQ")  # fh flags release_flags lock_owner
FLUSH_IN = struct.Struct("<QIIQ")
ACCESS_IN = struct.Struct("<II")  # mask padding
INTERRUPT_IN = struct.Struct("<Q")
FORGET_IN = struct.Struct("<Q")
BATCH_FORGET_IN = struct.Struct("<II")
FORGET_ONE = struct.Struct("<QQ")
IOCTL_IN = struct.Struct("<QIIQII")  # fh flags cmd arg in_size out_size
IOCTL_OUT = struct.Struct("<iIII")  # result flags in_iovs out_iovs
POLL_IN = struct.Struct("<QQII")  # fh kh flags events
POLL_OUT = struct.Struct("<II")
NOTIFY_POLL_WAKEUP = struct.Struct("<Q")
KSTATFS = struct.Struct("<QQQQQIIII24x")  # 80 bytes
DIRENT_HEAD = struct.Struct("<QQII")  # ino off namelen type

# asm-generic/ioctl.h
_IOC_NRBITS, _IOC_TYPEBITS, _IOC_SIZEBITS = 8, 8, 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
IOC_NONE, IOC_WRITE, IOC_READ = 0, 1, 2


def ioc(direction: int, type_: int, nr: int, size: int) -> int:
    return (
        (direction << _IOC_DIRSHIFT)
        | (type_ << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
        | (size << _IOC_SIZESHIFT)
    )


def io(type_: int, nr: int) -> int:
    return ioc(IOC_NONE, type_, nr, 0)


def iow(type_: int, nr: int, size: int) -> int:
    return ioc(IOC_WRITE, type_, nr, size)


def ior(type_: int, nr: int, size: int) -> int:
    return ioc(IOC_READ, type_, nr, size)


def iowr(type_: int, nr: int, size: int) -> int:
    return ioc(IOC_READ | IOC_WRITE, type_, nr, size)


def ioc_dir(cmd: int) -> int:
    return (cmd >> _IOC_DIRSHIFT) & 3


def ioc_size(cmd: int) -> int:
    return (cmd >> _IOC_SIZESHIFT) & ((1 << _IOC_SIZEBITS) - 1)


def restricted_ioctl_sizes(cmd: int) -> tuple[int, int]:
    """(in_size, out_size) the kernel gives a restricted ioctl (fuse_do_ioctl): _IOC_SIZE of
    data in for _IOW/_IOWR, room for _IOC_SIZE out for _IOR/_IOWR, nothing for _IO."""
    size, direction = ioc_size(cmd), ioc_dir(cmd)
    return (size if direction & IOC_WRITE else 0, size if direction & IOC_READ else 0)


@dataclass(frozen=True)
class InHeader:
    length: int
    opcode: int
    unique: int
    nodeid: int
    uid: int
    gid: int
    pid: int


def parse_request(buf: bytes) -> tuple[InHeader, bytes]:
    """One request as read from /dev/fuse: its header and the bytes after it."""
    if len(buf) < IN_HEADER.size:
        raise ValueError(f"FUSE request of {len(buf)} bytes is shorter than its header")
    length, opcode, unique, nodeid, uid, gid, pid, _ = IN_HEADER.unpack_from(buf)
    if length != len(buf):
        raise ValueError(f"FUSE request says {length} bytes, read gave {len(buf)}")
    return InHeader(length, opcode, unique, nodeid, uid, gid, pid), buf[IN_HEADER.size :]


def reply(unique: int, payload: bytes = b"") -> bytes:
    return OUT_HEADER.pack(OUT_HEADER.size + len(payload), 0, unique) + payload


def reply_error(unique: int, errno: int) -> bytes:
    """An error reply: the header alone, error = -errno (the kernel refuses a body with it)."""
    if not 0 < errno < 1000:
        raise ValueError(f"errno {errno} out of the kernel's range")
    return OUT_HEADER.pack(OUT_HEADER.size, -errno, unique)


def notify_poll(kh: int) -> bytes:
    """FUSE_NOTIFY_POLL: unique 0, the notify code in the error field, then the kh."""
    return OUT_HEADER.pack(OUT_HEADER.size + NOTIFY_POLL_WAKEUP.size, NOTIFY_POLL, 0) + (
        NOTIFY_POLL_WAKEUP.pack(kh)
    )


@dataclass(frozen=True)
class Attr:
    ino: int
    mode: int
    nlink: int = 1
    uid: int = 0
    gid: int = 0
    size: int = 0
    time_ns: int = 0
    blksize: int = 4096

    def pack(self) -> bytes:
        sec, nsec = divmod(self.time_ns, 1_000_000_000)
        blocks = (self.size + 511) // 512
        return ATTR.pack(
            self.ino, self.size, blocks, sec, sec, sec, nsec, nsec, nsec,
            self.mode, self.nlink, self.uid, self.gid, 0, self.blksize, 0,
        )  # fmt: skip


def _split_seconds(seconds: float) -> tuple[int, int]:
    whole = int(seconds)
    return whole, int((seconds - whole) * 1_000_000_000)


def entry_out(nodeid: int, attr: Attr, valid: float) -> bytes:
    sec, nsec = _split_seconds(valid)
    return ENTRY_OUT_HEAD.pack(nodeid, 0, sec, sec, nsec, nsec) + attr.pack()


def attr_out(attr: Attr, valid: float) -> bytes:
    sec, nsec = _split_seconds(valid)
    return ATTR_OUT_HEAD.pack(sec, nsec, 0) + attr.pack()


def init_out(kernel_major: int, kernel_minor: int, max_write: int) -> bytes:
    """The INIT reply: our minor (the smaller of the two), no feature flags, `max_write`."""
    if kernel_major != FUSE_KERNEL_VERSION:
        raise ValueError(f"FUSE major {kernel_major}, this server speaks {FUSE_KERNEL_VERSION}")
    if kernel_minor < FUSE_MINOR_REQUIRED:
        raise ValueError(f"FUSE 7.{kernel_minor} is older than 7.{FUSE_MINOR_REQUIRED}")
    minor = min(kernel_minor, FUSE_MINOR_SPOKEN)
    # max_readahead 0 (no page cache), max_background and congestion_threshold 0 (the
    # kernel's defaults), time_gran 1 ns, max_pages and map_alignment unused (flags 0).
    return INIT_OUT.pack(FUSE_KERNEL_VERSION, minor, 0, 0, 0, 0, max_write, 1, 0, 0)


def statfs_out() -> bytes:
    return KSTATFS.pack(0, 0, 0, 0, 0, 4096, 255, 4096, 0)


def dirents(entries: list[tuple[int, int, str]], offset: int, size: int) -> bytes:
    """READDIR's answer: fuse_dirent records (ino, offset of the next, type, name padded to
    8 bytes) for `entries` [(ino, DT_*, name)] from index `offset`, as many as fit `size`."""
    out = bytearray()
    for index in range(offset, len(entries)):
        ino, dtype, name = entries[index]
        raw = name.encode()
        record = DIRENT_HEAD.pack(ino, index + 1, len(raw), dtype) + raw
        record += b"\0" * (-len(record) % 8)
        if len(out) + len(record) > size:
            break
        out += record
    return bytes(out)
