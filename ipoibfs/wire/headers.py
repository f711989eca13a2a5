"""The headers of the emulated wire.

Every message on the emulated wire starts with its kind: a UD datagram, a CM MAD (cm.py),
a message on an RC connection, or a placement message (an offer of direct placement between
two ports of one machine: the emulation's own, never on an IB wire). A UD datagram and an
RC message continue with the 4-byte IPoIB header (struct ipoib_header), the 10-byte offload
metadata (a virtio_net_hdr: checksum and LSO state, what an HCA's engines act on; zero for
plain packets) and the IP packet.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

KIND_UD, KIND_CM, KIND_RC, KIND_PLACE = 0, 1, 2, 3

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
#: The Q_Key of every IPoIB UD QP and broadcast group (RFC 4391 §4, 0x0B1B).
IPOIB_QKEY = 0x0B1B
#: sizeof(struct ipoib_header): the EtherType and two reserved bytes.
IPOIB_ENCAP_LEN = 4
VNET_HDR_LEN = 10
VIRTIO_NET_HDR_GSO_NONE = 0
NO_OFFLOAD = bytes(VNET_HDR_LEN)

#: A UD datagram: kind, SLID, DLID, source QPN, destination QPN, P_Key, Q_Key, SGID,
#: DGID (the MGID for multicast).
UD_HEADER = struct.Struct("!BxHHIIHxxI16s16s")
#: A message on an RC connection: kind, SLID, DLID, source and destination RC QPNs.
RC_HEADER = struct.Struct("!BxHHII")
#: A placement message: kind, operation, SLID, the asking and the asked UD QPN, the P_Key
#: the asking QP sends with.
PLACE_MESSAGE = struct.Struct("!BBHIIH")
PLACE_REQUEST, PLACE_OFFER = 0, 1


@dataclass(frozen=True, slots=True)
class UdHeader:
    """The header of a UD datagram between emulated ports (KIND_UD)."""

    slid: int
    dlid: int
    src_qpn: int
    dst_qpn: int
    pkey: int
    qkey: int
    sgid: bytes
    dgid: bytes

    SIZE: ClassVar[int] = UD_HEADER.size

    def pack(self) -> bytes:
        return UD_HEADER.pack(KIND_UD, self.slid, self.dlid, self.src_qpn, self.dst_qpn, self.pkey,
                              self.qkey, self.sgid, self.dgid)  # fmt: skip

    @classmethod
    def unpack_from(cls, buf: bytes | bytearray | memoryview) -> UdHeader:
        """The header at the start of `buf`, which the caller knows to be KIND_UD (the kind
        byte is not checked); struct.error when `buf` is shorter than SIZE."""
        return cls(*UD_HEADER.unpack_from(buf)[1:])


@dataclass(frozen=True, slots=True)
class RcHeader:
    """The header of a message on an RC connection (KIND_RC)."""

    slid: int
    dlid: int
    src_qpn: int
    dst_qpn: int

    SIZE: ClassVar[int] = RC_HEADER.size

    def pack(self) -> bytes:
        return RC_HEADER.pack(KIND_RC, self.slid, self.dlid, self.src_qpn, self.dst_qpn)

    @classmethod
    def unpack_from(cls, buf: bytes | bytearray | memoryview) -> RcHeader:
        """The header at the start of `buf`, which the caller knows to be KIND_RC (the kind
        byte is not checked); struct.error when `buf` is shorter than SIZE."""
        return cls(*RC_HEADER.unpack_from(buf)[1:])


def ipoib_header(proto: int) -> bytes:
    """struct ipoib_header: the EtherType, then two reserved zero bytes."""
    return struct.pack("!HH", proto, 0)


#: Offsets of the offload metadata, which the IP packet follows, in a received datagram
#: and in a received RC message.
UD_VNET_OFFSET = UdHeader.SIZE + IPOIB_ENCAP_LEN
RC_VNET_OFFSET = RcHeader.SIZE + IPOIB_ENCAP_LEN


@dataclass(frozen=True, slots=True)
class PlaceMessage:
    """A UD QP asking a peer QP for direct placement (PLACE_REQUEST), or the peer's answer
    (PLACE_OFFER: its receive queue as fds, or none: keep to the wire)."""

    op: int
    slid: int
    src_qpn: int  # the sending QP (the one that places)
    dst_qpn: int  # the receiving QP
    pkey: int

    def pack(self) -> bytes:
        return PLACE_MESSAGE.pack(KIND_PLACE, self.op, self.slid, self.src_qpn, self.dst_qpn,
                                  self.pkey)  # fmt: skip

    @classmethod
    def unpack(cls, buf: bytes | bytearray | memoryview) -> PlaceMessage | None:
        """The message in `buf`; None if it is short, not KIND_PLACE, or of an unknown op."""
        if len(buf) < PLACE_MESSAGE.size or buf[0] != KIND_PLACE:
            return None
        _, op, slid, src_qpn, dst_qpn, pkey = PLACE_MESSAGE.unpack_from(buf)
        if op not in (PLACE_REQUEST, PLACE_OFFER):
            return None
        return cls(op, slid, src_qpn, dst_qpn, pkey)
