"""The IP packets ipoibfs reads or writes itself: IPv6 neighbour discovery with the IPoIB
link-layer option (RFC 4391 §9.1), and the ICMP/ICMPv6 reports of connected mode's PMTU
emulation (ipoib_cm_skb_reap); with the Internet checksum they need."""

from __future__ import annotations

import struct

IPPROTO_ICMP = 1
IPPROTO_ICMPV6 = 58
ND_NEIGHBOR_SOLICIT = 135
ND_NEIGHBOR_ADVERT = 136
ND_OPT_SOURCE_LL = 1
ND_OPT_TARGET_LL = 2


def ip_checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of `data`: 0 over data that carries its own."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def icmpv6_checksum(src: bytes, dst: bytes, message: bytes) -> int:
    pseudo = src + dst + struct.pack("!I3xB", len(message), IPPROTO_ICMPV6)
    return ip_checksum(pseudo + message)


# ---------------------------------------------------------------- IPv6 neighbour discovery


def nd_lladdr_option(kind: int, addr: bytes) -> bytes:
    """RFC 4391 §9.1: type, length 3 (24 bytes), two reserved bytes, the 20-byte address."""
    return bytes([kind, 3, 0, 0]) + addr


def nd_info(packet: bytes | memoryview) -> tuple[int, bytes, bytes | None] | None:
    """For an IPv6 NS or NA: (type, target address, IPoIB link-layer option address or None)."""
    if len(packet) < 64 or packet[6] != IPPROTO_ICMPV6 or packet[40] not in (135, 136):
        return None
    kind = packet[40]
    target = bytes(packet[48:64])
    want = ND_OPT_SOURCE_LL if kind == ND_NEIGHBOR_SOLICIT else ND_OPT_TARGET_LL
    off = 64
    while off + 2 <= len(packet):
        opt_type, opt_len = packet[off], packet[off + 1] * 8
        if opt_len == 0:
            break
        if opt_type == want and opt_len >= 24:
            return kind, target, bytes(packet[off + 4 : off + 24])
        off += opt_len
    return kind, target, None


def nd_add_lladdr(packet: bytes, addr: bytes) -> bytes:
    """Add our link-layer option to an NS/NA the kernel sent without one (a TUN has no address)."""
    info = nd_info(packet)
    if info is None or info[2] is not None:
        return packet
    kind = ND_OPT_SOURCE_LL if info[0] == ND_NEIGHBOR_SOLICIT else ND_OPT_TARGET_LL
    if info[0] == ND_NEIGHBOR_SOLICIT and packet[8:24] == bytes(16):
        return packet  # DAD probes carry no source link-layer option
    message = bytearray(packet[40:] + nd_lladdr_option(kind, addr))
    message[2:4] = b"\0\0"
    src, dst = bytes(packet[8:24]), bytes(packet[24:40])
    message[2:4] = icmpv6_checksum(src, dst, bytes(message)).to_bytes(2, "big")
    header = bytearray(packet[:40])
    header[4:6] = len(message).to_bytes(2, "big")
    return bytes(header) + bytes(message)


def nd_strip_lladdr(packet: bytes | memoryview) -> bytes:
    """Remove link-layer options before an NS/NA reaches the kernel.

    The kernel drops ND messages whose link-layer option does not match the device's
    address length, and a TUN's is 0 (ndisc_opt_addr_data).
    """
    packet = bytes(packet)
    options, off = b"", 64
    while off + 2 <= len(packet):
        opt_type, opt_len = packet[off], packet[off + 1] * 8
        if opt_len == 0:
            break
        if opt_type not in (ND_OPT_SOURCE_LL, ND_OPT_TARGET_LL):
            options += packet[off : off + opt_len]
        off += opt_len
    message = bytearray(packet[40:64] + options)
    message[2:4] = b"\0\0"
    src, dst = packet[8:24], packet[24:40]
    message[2:4] = icmpv6_checksum(src, dst, bytes(message)).to_bytes(2, "big")
    header = bytearray(packet[:40])
    header[4:6] = len(message).to_bytes(2, "big")
    return bytes(header) + bytes(message)


ND_NA_ROUTER = 0x80
ND_NA_SOLICITED = 0x40
ND_NA_OVERRIDE = 0x20


def nd_advert_flags(packet: bytes | memoryview) -> int:
    """The R, S and O bits of an NA (ND_NA_ROUTER, ND_NA_SOLICITED, ND_NA_OVERRIDE)."""
    return packet[44] & (ND_NA_ROUTER | ND_NA_SOLICITED | ND_NA_OVERRIDE)


def neighbor_solicit(src: bytes, target: bytes, lladdr: bytes, hop_limit: int = 255,
                     dst: bytes | None = None) -> bytes:  # fmt: skip
    """An NS for `target` with our source link-layer option: to its solicited-node group,
    or to `dst` (the target itself, for a unicast probe of a known neighbour)."""
    if dst is None:
        dst = bytes.fromhex("ff0200000000000000000001ff") + target[13:16]
    message = bytearray(struct.pack("!BBHI", ND_NEIGHBOR_SOLICIT, 0, 0, 0) + target
                        + nd_lladdr_option(ND_OPT_SOURCE_LL, lladdr))  # fmt: skip
    message[2:4] = icmpv6_checksum(src, dst, bytes(message)).to_bytes(2, "big")
    header = struct.pack("!IHBB", 6 << 28, len(message), IPPROTO_ICMPV6, hop_limit) + src + dst
    return header + bytes(message)


# ---------------------------------------------------------------- PMTU reports (cm_skb_reap)


def icmp_frag_needed(packet: bytes, mtu: int) -> bytes:
    """ICMP "fragmentation needed" for a packet that did not fit, carrying `mtu`.

    It comes from the packet's destination (a local source would be a martian on a
    non-loopback device) to its source, quoting the header and 8 bytes as RFC 792 asks.
    """
    ihl = (packet[0] & 0x0F) * 4
    quote = bytes(packet[: ihl + 8])
    icmp = bytearray(struct.pack("!BBHHH", 3, 4, 0, 0, mtu) + quote)
    icmp[2:4] = ip_checksum(bytes(icmp)).to_bytes(2, "big")
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0, 64,
                                   IPPROTO_ICMP, 0, packet[16:20], packet[12:16]))  # fmt: skip
    header[10:12] = ip_checksum(bytes(header)).to_bytes(2, "big")
    return bytes(header) + bytes(icmp)


def icmpv6_packet_too_big(packet: bytes, mtu: int) -> bytes:
    """ICMPv6 "packet too big" carrying `mtu`, quoting what fits in the minimum MTU (1280)."""
    src, dst = bytes(packet[24:40]), bytes(packet[8:24])
    if src[0] == 0xFF:  # sent to a group: the report comes from the sender's own address
        src = dst
    quote = bytes(packet[: 1280 - 40 - 8])
    message = bytearray(struct.pack("!BBHI", 2, 0, 0, mtu) + quote)
    message[2:4] = icmpv6_checksum(src, dst, bytes(message)).to_bytes(2, "big")
    header = struct.pack("!IHBB", 6 << 28, len(message), IPPROTO_ICMPV6, 64) + src + dst
    return header + bytes(message)
