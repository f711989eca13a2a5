"""The kernel's umad ABI (include/uapi/rdma/ib_user_mad.h, drivers/infiniband/core/user_mad.c):
what libibumad writes to and reads from /dev/infiniband/umadN, and its ioctls.

Byte orders are the kernel's: id, status, timeout_ms, retries, length and pkey_index are
host order (little-endian here), qpn, qkey, lid and flow_label network order. The 64-byte
header is the one a file uses after IB_USER_MAD_ENABLE_PKEY (or after REGISTER_AGENT2);
before that, the old 56-byte one without pkey_index.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass, field, replace
from typing import ClassVar, Self

from .common import IB_MGMT_MAD_HDR as _MAD_HDR
from .common import IB_MGMT_RMPP_HDR as _RMPP_HDR_END
from .common import MAD_SIZE as _MAD_SIZE
from .layout import Buffer

IB_USER_MAD_ABI_VERSION = 5
IB_UMAD_MAX_AGENTS = 32
IB_USER_MAD_REG_FLAGS_CAP = 0
IB_IOCTL_MAGIC = 0x1B

# <linux/ioctl.h> (asm-generic): nr 8 bits, type 8, size 14, dir 2
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _ioc(direction: int, kind: int, nr: int, size: int) -> int:
    return direction << 30 | size << 16 | kind << 8 | nr


def _io(kind: int, nr: int) -> int:
    return _ioc(_IOC_NONE, kind, nr, 0)


def _iow(kind: int, nr: int, size: int) -> int:
    return _ioc(_IOC_WRITE, kind, nr, size)


def _iowr(kind: int, nr: int, size: int) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, kind, nr, size)


# struct ib_user_mad_hdr_old: u32 id, status, timeout_ms, retries, length; __be32 qpn,
# qkey; __be16 lid; u8 sl, path_bits, grh_present, gid_index, hop_limit, traffic_class;
# u8 gid[16]; __be32 flow_label. The new one adds u16 pkey_index and 6 reserved bytes.
_HDR_HOST = struct.Struct("<5I")
_HDR_NET = struct.Struct("!IIHBBBBBB16sI")
_PKEY = struct.Struct("<H6x")


@dataclass(frozen=True, slots=True, kw_only=True)
class UserMadHdr:
    """struct ib_user_mad_hdr (64 bytes) or, with `pkey=False`, ib_user_mad_hdr_old (56).

    On a write: `id` is the agent, `lid`/`qpn`/`qkey` the destination, `timeout_ms` and
    `retries` the request's. On a read: `length` is the header plus the (reassembled) MAD,
    `lid`/`qpn` the source, `status` 0 or ETIMEDOUT for a request that got no answer."""

    id: int = 0
    status: int = 0
    timeout_ms: int = 0
    retries: int = 0
    length: int = 0
    qpn: int = 0
    qkey: int = 0
    lid: int = 0
    sl: int = 0
    path_bits: int = 0
    grh_present: int = 0
    gid_index: int = 0
    hop_limit: int = 0
    traffic_class: int = 0
    gid: bytes = bytes(16)
    flow_label: int = 0
    pkey_index: int = 0

    SIZE: ClassVar[int] = 64
    OLD_SIZE: ClassVar[int] = 56

    def pack(self, pkey: bool = True) -> bytes:
        out = _HDR_HOST.pack(self.id, self.status, self.timeout_ms, self.retries, self.length)
        out += _HDR_NET.pack(self.qpn, self.qkey, self.lid, self.sl, self.path_bits,
                             self.grh_present, self.gid_index, self.hop_limit,
                             self.traffic_class, self.gid, self.flow_label)  # fmt: skip
        return out + _PKEY.pack(self.pkey_index) if pkey else out

    @classmethod
    def unpack(cls, data: Buffer, pkey: bool = True) -> Self:
        size = cls.SIZE if pkey else cls.OLD_SIZE
        if len(data) < size:
            raise ValueError(f"a umad header is {size} bytes, got {len(data)}")
        id_, status, timeout_ms, retries, length = _HDR_HOST.unpack_from(data)
        (qpn, qkey, lid, sl, path_bits, grh, gid_index, hop_limit, tclass, gid,
         flow) = _HDR_NET.unpack_from(data, _HDR_HOST.size)  # fmt: skip
        pkey_index = _PKEY.unpack_from(data, cls.OLD_SIZE)[0] if pkey else 0
        return cls(id=id_, status=status, timeout_ms=timeout_ms, retries=retries,
                   length=length, qpn=qpn, qkey=qkey, lid=lid, sl=sl, path_bits=path_bits,
                   grh_present=grh, gid_index=gid_index, hop_limit=hop_limit,
                   traffic_class=tclass, gid=gid, flow_label=flow,
                   pkey_index=pkey_index)  # fmt: skip


def _method_bits(mask: bytes) -> frozenset[int]:
    value = int.from_bytes(mask, "little")
    return frozenset(m for m in range(128) if value >> m & 1)


def _method_mask(methods: frozenset[int]) -> bytes:
    value = 0
    for m in methods:
        if not 0 <= m < 128:
            raise ValueError(f"method {m} is not in 0..127")
        value |= 1 << m
    return value.to_bytes(16, "little")


# struct ib_user_mad_reg_req: u32 id; unsigned long method_mask[2] aligned to 4 (bit n of
# the little-endian 128-bit map = method n on x86-64); u8 qpn, mgmt_class,
# mgmt_class_version, oui[3], rmpp_version; 1 byte of tail padding.
_REG_REQ = struct.Struct("<I16sBBB3sBx")


@dataclass(frozen=True, slots=True, kw_only=True)
class RegReq:
    """struct ib_user_mad_reg_req (28 bytes), the argument of IB_USER_MAD_REGISTER_AGENT.
    `id` is written back by the kernel; `methods` are those of the unsolicited MADs the
    agent wants (with mgmt_class 0 it only sends requests and gets their answers)."""

    id: int = 0
    methods: frozenset[int] = field(default_factory=frozenset)
    qpn: int = 0
    mgmt_class: int = 0
    mgmt_class_version: int = 0
    oui: int = 0
    rmpp_version: int = 0

    SIZE: ClassVar[int] = _REG_REQ.size

    def pack(self) -> bytes:
        return _REG_REQ.pack(self.id, _method_mask(self.methods), self.qpn, self.mgmt_class,
                             self.mgmt_class_version, self.oui.to_bytes(3, "big"),
                             self.rmpp_version)  # fmt: skip

    @classmethod
    def unpack(cls, data: Buffer) -> Self:
        if len(data) < cls.SIZE:
            raise ValueError(f"ib_user_mad_reg_req is {cls.SIZE} bytes, got {len(data)}")
        id_, mask, qpn, mclass, version, oui, rmpp = _REG_REQ.unpack_from(data)
        return cls(id=id_, methods=_method_bits(mask), qpn=qpn, mgmt_class=mclass,
                   mgmt_class_version=version, oui=int.from_bytes(oui, "big"),
                   rmpp_version=rmpp)  # fmt: skip


# struct ib_user_mad_reg_req2: u32 id, qpn; u8 mgmt_class, mgmt_class_version; u16 res;
# u32 flags; u64 method_mask[2]; u32 oui (host order, 24 bits); u8 rmpp_version;
# u8 reserved[3].
_REG_REQ2 = struct.Struct("<IIBBHI16sIB3x")


@dataclass(frozen=True, slots=True, kw_only=True)
class RegReq2:
    """struct ib_user_mad_reg_req2 (40 bytes), for IB_USER_MAD_REGISTER_AGENT2."""

    id: int = 0
    qpn: int = 0
    mgmt_class: int = 0
    mgmt_class_version: int = 0
    flags: int = 0
    methods: frozenset[int] = field(default_factory=frozenset)
    oui: int = 0
    rmpp_version: int = 0

    SIZE: ClassVar[int] = _REG_REQ2.size

    def pack(self) -> bytes:
        return _REG_REQ2.pack(self.id, self.qpn, self.mgmt_class, self.mgmt_class_version, 0,
                              self.flags, _method_mask(self.methods), self.oui,
                              self.rmpp_version)  # fmt: skip

    @classmethod
    def unpack(cls, data: Buffer) -> Self:
        if len(data) < cls.SIZE:
            raise ValueError(f"ib_user_mad_reg_req2 is {cls.SIZE} bytes, got {len(data)}")
        id_, qpn, mclass, version, _res, flags, mask, oui, rmpp = _REG_REQ2.unpack_from(data)
        return cls(id=id_, qpn=qpn, mgmt_class=mclass, mgmt_class_version=version,
                   flags=flags, methods=_method_bits(mask), oui=oui,
                   rmpp_version=rmpp)  # fmt: skip

    def check(self) -> int:
        """ib_umad_reg_agent2's argument checks: 0, or the errno it fails with."""
        if self.qpn not in (0, 1) or self.flags & ~IB_USER_MAD_REG_FLAGS_CAP:
            return errno.EINVAL
        if self.mgmt_class and self.oui & 0xFF000000:
            return errno.EINVAL
        return 0


IB_USER_MAD_REGISTER_AGENT = _iowr(IB_IOCTL_MAGIC, 1, RegReq.SIZE)
IB_USER_MAD_UNREGISTER_AGENT = _iow(IB_IOCTL_MAGIC, 2, 4)  # __u32
IB_USER_MAD_ENABLE_PKEY = _io(IB_IOCTL_MAGIC, 3)
IB_USER_MAD_REGISTER_AGENT2 = _iowr(IB_IOCTL_MAGIC, 4, RegReq2.SIZE)
#: Not the kernel's: the FUSE umad file's own, for `ipoibfs exec`'s read supervisor
#: (umad/supervisor.py). It gives what a read too small for the waiting message copies
#: before it fails with ENOSPC (the header, whose `length` is the whole message's, and the
#: first 256 bytes), without taking the message; EAGAIN when no such message waits.
IPOIBFS_PEEK_SIZE = 64 + 256
IPOIBFS_UMAD_PEEK = _iowr(IB_IOCTL_MAGIC, 0x7F, IPOIBFS_PEEK_SIZE)


def umad_hi_tid(tid: int, hi_tid: int) -> int:
    """ib_umad_write on a request: the TID's high 32 bits become the agent's hi_tid, so
    that answers find their way back to the sender."""
    return (hi_tid & 0xFFFFFFFF) << 32 | tid & 0xFFFFFFFF


def header_size(pkey: bool) -> int:
    """hdr_size() in user_mad.c: 64 bytes after ENABLE_PKEY (or REGISTER_AGENT2), else 56."""
    return UserMadHdr.SIZE if pkey else UserMadHdr.OLD_SIZE


def parse_write(buf: Buffer, *, pkey: bool = True) -> tuple[UserMadHdr, bytes]:
    """What a process writes to umadN, checked as ib_umad_write does: the header and the
    MAD after it (256 bytes, or more for an RMPP message the kernel is to segment).
    Raises OSError(EINVAL) for a write shorter than the header and an RMPP header, or for
    an agent ID beyond the 32 a file can have."""
    size = header_size(pkey)
    if len(buf) < size + _RMPP_HDR_END:
        raise OSError(errno.EINVAL, f"a umad write is at least {size + _RMPP_HDR_END} bytes")
    hdr = UserMadHdr.unpack(buf, pkey)
    if hdr.id >= IB_UMAD_MAX_AGENTS:
        raise OSError(errno.EINVAL, f"agent {hdr.id}: a file has agents 0..31")
    return hdr, bytes(buf[size:])


def recv_header(message_len: int, *, agent_id: int, src_qp: int, slid: int, sl: int = 0,
                path_bits: int = 0, pkey_index: int = 0, pkey: bool = True,
                grh: tuple[int, int, int, bytes, int] | None = None) -> UserMadHdr:  # fmt: skip
    """The header recv_handler puts before a received MAD (or reassembled RMPP message of
    `message_len` bytes): the agent, the length with the header, the source QP and LID.
    `grh` is (gid_index, hop_limit, traffic_class, gid, flow_label) when one came."""
    gid_index, hop_limit, tclass, gid, flow = grh or (0, 0, 0, bytes(16), 0)
    return UserMadHdr(id=agent_id, length=header_size(pkey) + message_len, qpn=src_qp,
                      lid=slid, sl=sl, path_bits=path_bits, grh_present=int(grh is not None),
                      gid_index=gid_index, hop_limit=hop_limit, traffic_class=tclass,
                      gid=gid, flow_label=flow, pkey_index=pkey_index)  # fmt: skip


def copy_recv_mad(hdr: UserMadHdr, message: Buffer, count: int, *, pkey: bool = True,
                  ) -> tuple[bytes, int]:  # fmt: skip
    """copy_recv_mad: what a read of `count` bytes gets for a received message, and the
    errno it fails with (0 for none).

    - EINVAL with nothing: not even the header and the first 256-byte MAD fit;
    - ENOSPC with the header and the first MAD: an RMPP message longer than `count`
      (libibumad then reads the whole length from the header and asks again);
    - else the header and the whole message."""
    size = header_size(pkey)
    length = len(message)
    first = min(length, _MAD_SIZE)
    if count < size + first:
        return b"", errno.EINVAL
    head = hdr.pack(pkey)
    if length > _MAD_SIZE and count < size + length:
        return head + bytes(message[:_MAD_SIZE]), errno.ENOSPC
    return head + bytes(message), 0


def timeout_read(hdr: UserMadHdr, mad: Buffer, *, pkey: bool = True) -> bytes:
    """What a read returns for a request that got no answer in time (send_handler on
    IB_WC_RESP_TIMEOUT_ERR, then copy_send_mad): the request's own header with status
    ETIMEDOUT, and the first 24 bytes of its MAD, which carry its TID."""
    return replace(hdr, status=errno.ETIMEDOUT).pack(pkey) + bytes(mad[:_MAD_HDR])
