"""InfiniBand addresses as IPoIB uses them (RFC 4391, ipoib_main.c, include/net/ip.h,
include/net/addrconf.h): the 20-byte hardware address, P_Keys, and the multicast GIDs."""

from __future__ import annotations

import ipaddress

INFINIBAND_ALEN = 20
#: The flags byte of a hardware address: the sender accepts connected mode (RFC 4755).
IPOIB_FLAGS_RC = 0x80
#: The destination QPN of every multicast datagram.
MCAST_QPN = 0xFFFFFF
#: P_Keys (include/rdma/ib_mad.h): the default one, the partition-number bits, and the
#: full-membership bit (clear for a limited member).
DEFAULT_PKEY = 0xFFFF
PKEY_MASK = 0x7FFF
FULL_MEMBER = 0x8000


def hw_addr(flags: int, qpn: int, gid: bytes) -> bytes:
    """The 20-byte IPoIB hardware address: flags, 24-bit QPN, 16-byte port GID."""
    return bytes([flags & 0xFF]) + (qpn & 0xFFFFFF).to_bytes(3, "big") + bytes(gid)


def broadcast_addr(pkey: int) -> bytes:
    """ipv4_bcast_addr with the P_Key patched in (ipoib_ndo_init): QPN 0xffffff, scope 2."""
    mgid = broadcast_mgid(pkey)
    return bytes([0x00]) + MCAST_QPN.to_bytes(3, "big") + mgid


def broadcast_mgid(pkey: int) -> bytes:
    """ff12:401b:PKEY::ffff:ffff, the IPv4 broadcast group of a partition."""
    return (
        bytes([0xFF, 0x12, 0x40, 0x1B, pkey >> 8 & 0xFF, pkey & 0xFF])
        + bytes(6)
        + b"\xff\xff\xff\xff"
    )


def ipv4_mc_mgid(group: str | ipaddress.IPv4Address, broadcast: bytes) -> bytes:
    """ip_ib_mc_map: the MGID part (bytes 4..19) for an IPv4 multicast group."""
    addr = int(ipaddress.IPv4Address(group))
    scope = broadcast[5] & 0x0F
    head = bytes([0xFF, 0x10 | scope, 0x40, 0x1B, broadcast[8], broadcast[9]]) + bytes(6)
    return head + ((addr & 0x0FFFFFFF).to_bytes(4, "big"))


def ipv6_mc_mgid(group: str | ipaddress.IPv6Address, broadcast: bytes) -> bytes:
    """ipv6_ib_mc_map: the MGID for an IPv6 multicast group (scope from the broadcast)."""
    raw = ipaddress.IPv6Address(group).packed
    scope = broadcast[5] & 0x0F
    return bytes([0xFF, 0x10 | scope, 0x60, 0x1B, broadcast[8], broadcast[9]]) + raw[6:16]


def gid_from_guid(prefix: int, guid: int) -> bytes:
    return prefix.to_bytes(8, "big") + guid.to_bytes(8, "big")


def link_local_from_guid(guid: int) -> bytes:
    """addrconf_ifid_infiniband: fe80:: + the port GUID with the universal/local bit flipped."""
    ifid = bytearray(guid.to_bytes(8, "big"))
    ifid[0] ^= 0x02
    return bytes.fromhex("fe80000000000000") + bytes(ifid)


def pkeys_match(a: int, b: int) -> bool:
    """Same partition, and not both limited members (IBA 10.9.3)."""
    return (a & PKEY_MASK) == (b & PKEY_MASK) and bool((a | b) & FULL_MEMBER)
