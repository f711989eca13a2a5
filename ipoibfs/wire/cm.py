"""Connected-mode CM messages (RFC 4755, ipoib_cm.c over ib_cm) as they cross the emulated wire.

Every CM message has one layout, CM_MESSAGE: the kind (KIND_CM), the message type, the
sender's LID, the local and remote communication IDs, the service ID, the sender's RC
QPN, a reject reason and the 8-byte private data (struct ipoib_cm_data). Each message type
below carries the fields it uses; the others are sent as zero and ignored on receipt.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, TypeAlias

from .headers import KIND_CM
from .netdev import IPOIB_CM_BUF_SIZE

#: The IETF's service ID space for IPoIB CM; the low 24 bits are the listener's UD QPN.
IPOIB_CM_IETF_ID = 0x1000000000000000
CM_MESSAGE = struct.Struct("!BBHIIQIH8s")
CM_REQ, CM_REP, CM_REJ, CM_RTU, CM_DREQ, CM_DREP = 1, 2, 3, 4, 5, 6
#: Reject reasons (enum ib_cm_rej_reason).
IB_CM_REJ_NO_QP = 1
IB_CM_REJ_INVALID_SERVICE_ID = 8
IB_CM_REJ_CONSUMER_DEFINED = 28

_CM_DATA = struct.Struct("!II")
_NO_DATA = bytes(_CM_DATA.size)


@dataclass(frozen=True, slots=True)
class CmData:
    """struct ipoib_cm_data, the private data of a REQ and a REP: the sender's UD QPN and
    the size of its receive buffers, both big-endian."""

    qpn: int
    mtu: int = IPOIB_CM_BUF_SIZE

    SIZE: ClassVar[int] = _CM_DATA.size

    def pack(self) -> bytes:
        return _CM_DATA.pack(self.qpn & 0xFFFFFF, self.mtu)

    @classmethod
    def unpack(cls, data: bytes | bytearray | memoryview) -> CmData:
        qpn, mtu = _CM_DATA.unpack_from(data)
        return cls(qpn & 0xFFFFFF, mtu)  # "High byte MUST be ignored on receive"


def _pack(kind: int, slid: int, local_comm_id: int = 0, remote_comm_id: int = 0,
          service_id: int = 0, qpn: int = 0, reason: int = 0, private: bytes = _NO_DATA,
          ) -> bytes:  # fmt: skip
    return CM_MESSAGE.pack(KIND_CM, kind, slid, local_comm_id, remote_comm_id, service_id, qpn,
                           reason, private)  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class CmReq:
    """A connection request (ipoib_cm_send_req): the service ID is IPOIB_CM_IETF_ID | the
    peer's UD QPN, `qpn` the requester's RC QPN."""

    slid: int
    local_comm_id: int
    service_id: int
    qpn: int
    private: CmData

    TYPE: ClassVar[int] = CM_REQ

    def pack(self) -> bytes:
        return _pack(CM_REQ, self.slid, self.local_comm_id, service_id=self.service_id,
                     qpn=self.qpn, private=self.private.pack())  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class CmRep:
    """The reply of a listener that accepts (ipoib_cm_send_rep): its RC QPN, and the
    requester's communication ID and service ID echoed."""

    slid: int
    local_comm_id: int
    remote_comm_id: int
    service_id: int
    qpn: int
    private: CmData

    TYPE: ClassVar[int] = CM_REP

    def pack(self) -> bytes:
        return _pack(CM_REP, self.slid, self.local_comm_id, self.remote_comm_id, self.service_id,
                     self.qpn, private=self.private.pack())  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class CmRej:
    """A refused REQ or REP, with the reason (IB_CM_REJ_*)."""

    slid: int
    local_comm_id: int
    remote_comm_id: int
    reason: int
    service_id: int = 0
    qpn: int = 0

    TYPE: ClassVar[int] = CM_REJ

    def pack(self) -> bytes:
        return _pack(CM_REJ, self.slid, self.local_comm_id, self.remote_comm_id, self.service_id,
                     self.qpn, self.reason)  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class CmRtu:
    """Ready to use: the requester's answer to the REP."""

    slid: int
    local_comm_id: int
    remote_comm_id: int
    qpn: int

    TYPE: ClassVar[int] = CM_RTU

    def pack(self) -> bytes:
        return _pack(CM_RTU, self.slid, self.local_comm_id, self.remote_comm_id, qpn=self.qpn)


@dataclass(frozen=True, slots=True, kw_only=True)
class CmDreq:
    """A disconnect request from either side; `qpn` is the sender's RC QPN."""

    slid: int
    local_comm_id: int
    remote_comm_id: int
    qpn: int

    TYPE: ClassVar[int] = CM_DREQ

    def pack(self) -> bytes:
        return _pack(CM_DREQ, self.slid, self.local_comm_id, self.remote_comm_id, qpn=self.qpn)


@dataclass(frozen=True, slots=True, kw_only=True)
class CmDrep:
    """The answer to a DREQ (ib_cm sends it when the DREQ's receiver destroys its cm_id)."""

    slid: int
    local_comm_id: int
    remote_comm_id: int

    TYPE: ClassVar[int] = CM_DREP

    def pack(self) -> bytes:
        return _pack(CM_DREP, self.slid, self.local_comm_id, self.remote_comm_id)


CmMessage: TypeAlias = CmReq | CmRep | CmRej | CmRtu | CmDreq | CmDrep


def unpack_cm(data: bytes | bytearray | memoryview) -> CmMessage | None:
    """The CM message at the start of `data`; None if it is short, not KIND_CM, or of an
    unknown type."""
    if len(data) < CM_MESSAGE.size:
        return None
    kind, type_, slid, local, remote, service_id, qpn, reason, private = (
        CM_MESSAGE.unpack_from(data))  # fmt: skip
    if kind != KIND_CM:
        return None
    if type_ == CM_REQ:
        return CmReq(slid=slid, local_comm_id=local, service_id=service_id, qpn=qpn,
                     private=CmData.unpack(private))  # fmt: skip
    if type_ == CM_REP:
        return CmRep(slid=slid, local_comm_id=local, remote_comm_id=remote,
                     service_id=service_id, qpn=qpn, private=CmData.unpack(private))  # fmt: skip
    if type_ == CM_REJ:
        return CmRej(slid=slid, local_comm_id=local, remote_comm_id=remote, reason=reason,
                     service_id=service_id, qpn=qpn)  # fmt: skip
    if type_ == CM_RTU:
        return CmRtu(slid=slid, local_comm_id=local, remote_comm_id=remote, qpn=qpn)
    if type_ == CM_DREQ:
        return CmDreq(slid=slid, local_comm_id=local, remote_comm_id=remote, qpn=qpn)
    if type_ == CM_DREP:
        return CmDrep(slid=slid, local_comm_id=local, remote_comm_id=remote)
    return None
