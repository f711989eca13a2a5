"""RMPP, the reliable multi-packet protocol of the SA and the other RMPP classes (IBA 13.6,
the kernel's mad_rmpp.c), as pure logic.

The RMPP header (struct ib_rmpp_hdr) is bytes 24-35 of an RMPP-class MAD: version, type
(DATA, ACK, STOP, ABORT), response time (5 bits) and flags (ACTIVE, FIRST, LAST), status,
then the segment number and, on DATA, the payload length (on the first segment the whole
message's, on the last that segment's) or, on ACK, the new window's last segment.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, Self

from .layout import Buffer

IB_MGMT_RMPP_VERSION = 1

IB_MGMT_RMPP_TYPE_DATA = 1
IB_MGMT_RMPP_TYPE_ACK = 2
IB_MGMT_RMPP_TYPE_STOP = 3
IB_MGMT_RMPP_TYPE_ABORT = 4

IB_MGMT_RMPP_FLAG_ACTIVE = 1
IB_MGMT_RMPP_FLAG_FIRST = 2
IB_MGMT_RMPP_FLAG_LAST = 4

IB_MGMT_RMPP_NO_RESPTIME = 0x1F

IB_MGMT_RMPP_STATUS_SUCCESS = 0
IB_MGMT_RMPP_STATUS_RESX = 1
IB_MGMT_RMPP_STATUS_ABORT_MIN = 118
IB_MGMT_RMPP_STATUS_T2L = 118
IB_MGMT_RMPP_STATUS_BAD_LEN = 119
IB_MGMT_RMPP_STATUS_BAD_SEG = 120
IB_MGMT_RMPP_STATUS_BADT = 121
IB_MGMT_RMPP_STATUS_W2S = 122
IB_MGMT_RMPP_STATUS_S2B = 123
IB_MGMT_RMPP_STATUS_BAD_STATUS = 124
IB_MGMT_RMPP_STATUS_UNV = 125
IB_MGMT_RMPP_STATUS_TMR = 126
IB_MGMT_RMPP_STATUS_UNSPEC = 127
IB_MGMT_RMPP_STATUS_ABORT_MAX = 127

_RMPP = struct.Struct("!BBBBII")


@dataclass(frozen=True, slots=True, kw_only=True)
class RmppHdr:
    """struct ib_rmpp_hdr. An all-zero header (the default) is "RMPP not active"."""

    version: int = 0
    type: int = 0
    resp_time: int = 0
    flags: int = 0
    status: int = 0
    seg_num: int = 0
    paylen_newwin: int = 0

    SIZE: ClassVar[int] = _RMPP.size

    @property
    def active(self) -> bool:
        return bool(self.flags & IB_MGMT_RMPP_FLAG_ACTIVE)

    def pack(self) -> bytes:
        if not 0 <= self.resp_time < 32 or not 0 <= self.flags < 8:
            raise ValueError(f"RMPP response time {self.resp_time} (5 bits), flags "
                             f"{self.flags} (3 bits)")  # fmt: skip
        try:
            return _RMPP.pack(self.version, self.type, self.resp_time << 3 | self.flags,
                              self.status, self.seg_num, self.paylen_newwin)  # fmt: skip
        except struct.error as e:
            raise ValueError(f"RMPP header: {e}") from None

    @classmethod
    def unpack(cls, data: Buffer, offset: int = 24) -> Self:
        version, kind, rtime_flags, status, seg, paylen = _RMPP.unpack_from(data, offset)
        return cls(version=version, type=kind, resp_time=rtime_flags >> 3,
                   flags=rtime_flags & 7, status=status, seg_num=seg,
                   paylen_newwin=paylen)  # fmt: skip
