"""ARP over InfiniBand (RFC 4391 §8): hardware type 32, 20-byte hardware addresses."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .addresses import INFINIBAND_ALEN
from .headers import ETH_P_IP
from .netdev import ARPHRD_INFINIBAND

ARP = struct.Struct("!HHBBH20s4s20s4s")
ARPOP_REQUEST = 1
ARPOP_REPLY = 2


@dataclass(frozen=True)
class ArpPacket:
    op: int
    sha: bytes
    spa: bytes
    tha: bytes
    tpa: bytes

    def pack(self) -> bytes:
        return ARP.pack(ARPHRD_INFINIBAND, ETH_P_IP, INFINIBAND_ALEN, 4, self.op, self.sha,
                        self.spa, self.tha, self.tpa)  # fmt: skip

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> ArpPacket | None:
        """None unless it is IPoIB ARP for IPv4 (hardware type 32, 20-byte addresses)."""
        if len(data) < ARP.size:
            return None
        htype, ptype, hlen, plen, op, sha, spa, tha, tpa = ARP.unpack_from(data)
        if (htype, ptype, hlen, plen) != (ARPHRD_INFINIBAND, ETH_P_IP, INFINIBAND_ALEN, 4):
            return None
        return cls(op, sha, spa, tha, tpa)


#: ARP as the kernel builds it for a netdev without a hardware address (a TUN: ar_hln 0).
ARP_NO_HW = struct.Struct("!HHBBH4s4s")


def kernel_arp(data: bytes | memoryview) -> tuple[int, bytes, bytes] | None:
    """(op, spa, tpa) of an ARP packet the kernel sent on an L3 TUN typed InfiniBand
    (arp_create with dev->addr_len 0: no hardware addresses), else None."""
    if len(data) < ARP_NO_HW.size:
        return None
    htype, ptype, hlen, plen, op, spa, tpa = ARP_NO_HW.unpack_from(data)
    if (htype, ptype, hlen, plen) != (ARPHRD_INFINIBAND, ETH_P_IP, 0, 4):
        return None
    return op, spa, tpa
