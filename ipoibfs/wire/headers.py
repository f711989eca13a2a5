"""The headers of the emulated wire.

Every message on the emulated wire starts with its kind: a UD datagram, a CM MAD (cm.py),
or a message on an RC connection. A UD datagram and an RC message continue with the
4-byte IPoIB header (struct ipoib_header), the 10-byte offload metadata (a virtio_net_hdr:
checksum and LSO state, what an HCA's engines act on; zero for plain packets) and the IP
packet.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

KIND_UD, KIND_CM, KIND_RC = 0, 1, 2

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
