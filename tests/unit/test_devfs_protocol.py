"""The FUSE wire layouts of ipoibfs.devfs.protocol against include/uapi/linux/fuse.h and the
ioctl numbers of asm-generic/ioctl.h (checked against the numbers strace shows for sminfo)."""

from __future__ import annotations

import struct

import pytest

from ipoibfs.devfs import protocol as p


def test_struct_sizes_are_the_kernels() -> None:
    sizes = {
        p.IN_HEADER: 40, p.OUT_HEADER: 16, p.INIT_IN: 16, p.INIT_OUT: 64, p.ATTR: 88,
        p.OPEN_IN: 8, p.OPEN_OUT: 16, p.READ_IN: 40, p.WRITE_OUT: 8, p.RELEASE_IN: 24,
        p.IOCTL_IN: 32, p.IOCTL_OUT: 16, p.POLL_IN: 24, p.POLL_OUT: 8, p.KSTATFS: 80,
        p.DIRENT_HEAD: 24, p.FORGET_ONE: 16,
    }  # fmt: skip
    assert [s.size for s in sizes] == list(sizes.values())
    attr = p.Attr(ino=5, mode=0o100600)
    assert len(p.entry_out(5, attr, 1.0)) == 128  # fuse_entry_out
    assert len(p.attr_out(attr, 1.0)) == 104  # fuse_attr_out


def test_ioctl_numbers_and_restricted_sizes() -> None:
    register_agent = p.iowr(0x1B, 1, 28)
    assert register_agent == 0xC01C1B01  # what strace shows sminfo call
    assert p.io(0x1B, 3) == 0x1B03  # IB_USER_MAD_ENABLE_PKEY
    assert p.iow(0x1B, 2, 4) == 0x40041B02  # IB_USER_MAD_UNREGISTER_AGENT
    assert p.restricted_ioctl_sizes(register_agent) == (28, 28)
    assert p.restricted_ioctl_sizes(p.io(0x1B, 3)) == (0, 0)
    assert p.restricted_ioctl_sizes(p.iow(0x1B, 2, 4)) == (4, 0)
    assert p.restricted_ioctl_sizes(p.ior(0x54, 0x13, 8)) == (0, 8)
    assert p.ioc_size(p.iowr(0x1B, 4, 40)) == 40 and p.ioc_dir(p.iowr(0x1B, 4, 40)) == 3


def test_parse_request() -> None:
    body = b"umad0\0"
    raw = p.IN_HEADER.pack(40 + len(body), p.LOOKUP, 42, 1, 0, 0, 1234, 0) + body
    header, rest = p.parse_request(raw)
    assert (header.opcode, header.unique, header.nodeid, header.pid) == (p.LOOKUP, 42, 1, 1234)
    assert rest == body
    with pytest.raises(ValueError, match="shorter than its header"):
        p.parse_request(raw[:20])
    with pytest.raises(ValueError, match="says 46 bytes"):
        p.parse_request(raw[:-1])


def test_replies_and_the_poll_notification() -> None:
    assert p.reply(8, b"abcd") == struct.pack("<IiQ", 20, 0, 8) + b"abcd"
    assert p.reply_error(8, 25) == struct.pack("<IiQ", 16, -25, 8)  # ENOTTY, no body
    with pytest.raises(ValueError):
        p.reply_error(8, 0)
    # unique 0 marks a notification; the code (FUSE_NOTIFY_POLL) rides in the error field
    assert p.notify_poll(0x1234) == struct.pack("<IiQQ", 24, 1, 0, 0x1234)


def test_init_negotiates_the_smaller_minor_and_claims_nothing() -> None:
    major, minor, readahead, flags, _bg, _cong, max_write, gran, *_ = p.INIT_OUT.unpack(
        p.init_out(7, 45, 131072)
    )
    assert (major, minor, readahead, flags, max_write, gran) == (7, 31, 0, 0, 131072, 1)
    assert p.INIT_OUT.unpack(p.init_out(7, 27, 4096))[1] == 27
    with pytest.raises(ValueError, match="older than 7.23"):
        p.init_out(7, 22, 4096)
    with pytest.raises(ValueError, match="major 8"):
        p.init_out(8, 0, 4096)


def test_attr_and_entry_layout() -> None:
    attr = p.Attr(ino=3, mode=0o100600, uid=1, gid=2, size=1000, time_ns=5_250_000_000)
    ino, size, blocks, atime, _m, _c, atimensec, _, _, mode, nlink, uid, gid, _rdev, blksize, _ = (
        p.ATTR.unpack(attr.pack())
    )
    assert (ino, size, blocks, atime, atimensec) == (3, 1000, 2, 5, 250_000_000)
    assert (mode, nlink, uid, gid, blksize) == (0o100600, 1, 1, 2, 4096)
    nodeid, generation, entry_valid, attr_valid, entry_nsec, attr_nsec = p.ENTRY_OUT_HEAD.unpack(
        p.entry_out(3, attr, 1.5)[:40]
    )
    assert (nodeid, generation, entry_valid, attr_valid) == (3, 0, 1, 1)
    assert entry_nsec == attr_nsec == 500_000_000


def test_dirents_are_aligned_and_resume_at_their_offsets() -> None:
    listing = [(1, 4, "."), (1, 4, ".."), (2, 8, "umad0"), (3, 8, "issm0")]
    whole = p.dirents(listing, 0, 4096)
    records, pos = [], 0
    while pos < len(whole):
        ino, off, namelen, dtype = p.DIRENT_HEAD.unpack_from(whole, pos)
        name = whole[pos + 24 : pos + 24 + namelen].decode()
        records.append((ino, off, dtype, name))
        pos += (24 + namelen + 7) // 8 * 8
    assert records == [(1, 1, 4, "."), (1, 2, 4, ".."), (2, 3, 8, "umad0"), (3, 4, 8, "issm0")]
    assert len(whole) % 8 == 0
    # a small buffer takes whole records only; the next READDIR starts at the last `off`
    first = p.dirents(listing, 0, 70)
    assert len(first) == 64  # "." and ".." (32 each); "umad0" needs 32 more
    assert p.dirents(listing, 2, 4096) == whole[64:]
    assert p.dirents(listing, 4, 4096) == b""
