"""IPoIB protocol values and the kernel's text formats: pure functions, no I/O.

Everything here is byte-exact with the Linux driver and core (RFC 4391, ipoib_main.c,
include/net/ip.h, drivers/infiniband/core/sysfs.c, lib/vsprintf.c number parsing).
"""

from __future__ import annotations

import errno
import ipaddress
import struct
from dataclasses import dataclass

from .errors import KernelError

INFINIBAND_ALEN = 20
ARPHRD_INFINIBAND = 32
IPOIB_ENCAP_LEN = 4
IPOIB_FLAGS_RC = 0x80
IPOIB_CM_MTU = 0x10000 - 0x10  # 65520
IPOIB_MODE_DATAGRAM, IPOIB_MODE_CONNECTED = 0, 1  # IFLA_IPOIB_MODE
IFNAMSIZ = 16
IPOIB_CM_BUF_SIZE = IPOIB_CM_MTU + IPOIB_ENCAP_LEN
ETH_MIN_MTU = 68
IPOIB_MIN_MTU = ETH_MIN_MTU + IPOIB_ENCAP_LEN  # 72
MCAST_QPN = 0xFFFFFF
DEFAULT_PKEY = 0xFFFF
FULL_MEMBER = 0x8000

#: HZ and INITIAL_JIFFIES of a 64-bit distribution kernel.
HZ = 250
INITIAL_JIFFIES = (-300 * HZ) & 0xFFFFFFFF


def ud_mtu(ib_mtu: int) -> int:
    """IPOIB_UD_MTU: the IP MTU that fits an IB MTU after the 4-byte header."""
    return ib_mtu - IPOIB_ENCAP_LEN


def jiffies(monotonic_seconds: float) -> int:
    return INITIAL_JIFFIES + int(monotonic_seconds * HZ)


# ---------------------------------------------------------------- addresses


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


# ---------------------------------------------------------------- netdev flags (uapi/linux/if.h)

IFF_UP = 0x1
IFF_BROADCAST = 0x2
IFF_POINTOPOINT = 0x10
IFF_RUNNING = 0x40
IFF_NOARP = 0x80
#: The bits dev_change_flags lets a caller change.
IFF_CHANGEABLE = 0x1 | 0x4 | 0x20 | 0x100 | 0x200 | 0x1000 | 0x2000 | 0x4000 | 0x8000


def ipoib_flags(live: int) -> int:
    """dev->flags of an IPoIB netdev from the TUN's: no POINTOPOINT or NOARP, BROADCAST set.

    The live value comes from netlink (dev_get_flags), which adds RUNNING and LOWER_UP;
    sysfs `flags` shows dev->flags, which has neither.
    """
    flags = live & 0xFFFF & ~(IFF_POINTOPOINT | IFF_NOARP | IFF_RUNNING)
    return flags | IFF_BROADCAST


# ---------------------------------------------------------------- text formats


def format_lladdr(addr: bytes) -> str:
    """ "%*phC": colon-separated lowercase hex bytes, as in sysfs `address`."""
    return ":".join(f"{b:02x}" for b in addr)


def format_gid_sysfs(gid: bytes) -> str:
    """ "%pI6": 8 groups of 4 hex digits, never compressed (class/infiniband gids/N)."""
    return ":".join(gid[i : i + 2].hex() for i in range(0, 16, 2))


def format_gid_debugfs(gid: bytes) -> str:
    """ipoib_fs.c format_gid: 8 "%x" groups, no leading zeros, no "::"."""
    return ":".join(f"{int.from_bytes(gid[i : i + 2], 'big'):x}" for i in range(0, 16, 2))


def kernel_pointer(obj: object) -> str:
    """How "%p" prints a pointer: hashed, 16 hex digits (the object's identity stands in)."""
    return f"{id(obj) & 0xFFFFFFFF:016x}"


def format_guid(guid: int) -> str:
    """node_guid / sys_image_guid: "%04x:%04x:%04x:%04x"."""
    raw = guid.to_bytes(8, "big")
    return ":".join(raw[i : i + 2].hex() for i in range(0, 8, 2))


def format_path_rate(mbps: int) -> str:
    """The `_path` rate, "%8d.%d": the fraction without zero padding (2500 -> 2.500,
    10000 -> 10.0, 14062 -> 14.62), as ipoib_path_seq_show prints it."""
    return f"{mbps // 1000:8d}.{mbps % 1000}"


# ---------------------------------------------------------------- kernel number parsing


def _digits(text: bytes, base: int) -> tuple[int, int]:
    """Accumulate digits of `base` from the start of `text`: (value mod 2**64, count)."""
    value = 0
    count = 0
    for ch in text:
        c = chr(ch).lower()
        if c.isdigit():
            d = ord(c) - 48
        elif "a" <= c <= "f":
            d = ord(c) - 87
        else:
            break
        if d >= base:
            break
        value = (value * base + d) & 0xFFFFFFFFFFFFFFFF
        count += 1
    return value, count


def _fixup_radix(text: bytes, base: int) -> tuple[bytes, int]:
    """_parse_integer_fixup_radix from lib/kstrtox.c."""
    if base == 0:
        if text[:1] == b"0":
            if text[1:2].lower() == b"x" and _is_xdigit(text[2:3]):
                return text[2:], 16
            return text, 8
        return text, 10
    if base == 16 and text[:2].lower() == b"0x":
        return text[2:], 16
    return text, base


def _is_xdigit(c: bytes) -> bool:
    return len(c) == 1 and c in b"0123456789abcdefABCDEF"


def _to_int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def sscanf_int(buf: bytes) -> int | None:
    """The kernel's `sscanf(buf, "%i", &int)`: None when nothing converts.

    Leading white space is skipped, a '-' sign is allowed ('+' is not), the base comes
    from the prefix (0x hex, 0 octal), trailing garbage is ignored and the result is
    truncated to a C int.
    """
    text = buf.lstrip(b" \t\n\v\f\r")
    negative = text[:1] == b"-"
    body = text[1:] if negative else text
    if not body[:1].isdigit():
        return None
    digits, base = _fixup_radix(body, 0)
    value, _ = _digits(digits, base)
    if negative:
        value = -value
    return _to_int32(value)


def simple_strtoul(buf: bytes) -> int:
    """simple_strtoul(buf, NULL, 0): no white space, no sign, 0 when nothing parses."""
    digits, base = _fixup_radix(buf, 0)
    value, _ = _digits(digits, base)
    return value


def c_int(value: int) -> int:
    """Truncate to a C int, as an implicit conversion of unsigned long does."""
    return _to_int32(value)


def kstrtoul(buf: bytes) -> int:
    """kstrtoul(buf, 0, &val): one optional '+', the number, one optional newline, nothing else.

    Raises KernelError(EINVAL) or KernelError(ERANGE) as the kernel returns them.
    """
    text = buf[1:] if buf[:1] == b"+" else buf
    digits, base = _fixup_radix(text, 0)
    value = 0
    count = 0
    for ch in digits:
        c = chr(ch).lower()
        d = ord(c) - 48 if c.isdigit() else ord(c) - 87 if "a" <= c <= "f" else 99
        if d >= base:
            break
        value = value * base + d
        count += 1
    if count == 0:
        raise KernelError(errno.EINVAL)
    if value > 0xFFFFFFFFFFFFFFFF:
        raise KernelError(errno.ERANGE)
    rest = digits[count:]
    if rest[:1] == b"\n":
        rest = rest[1:]
    if rest:
        raise KernelError(errno.EINVAL)
    return value


# ---------------------------------------------------------------- the emulated wire

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
IPOIB_QKEY = 0x0B1B

#: A UD datagram between emulated ports: SLID, DLID, source QPN, destination QPN, P_Key,
#: Q_Key, SGID, DGID (the MGID for multicast); then the 4-byte IPoIB header, the 10-byte
#: offload metadata (a virtio_net_hdr: checksum and LSO state, what an HCA's engines act
#: on; zero for plain packets) and the IP packet.
#: Every message on the emulated wire starts with its kind: a UD datagram, a CM MAD, or a
#: message on an RC connection.
KIND_UD, KIND_CM, KIND_RC = 0, 1, 2
UD_HEADER = struct.Struct("!BxHHIIHxxI16s16s")
VNET_HDR_LEN = 10
VIRTIO_NET_HDR_GSO_NONE = 0
NO_OFFLOAD = bytes(VNET_HDR_LEN)
#: Offset of the offload metadata, which the IP packet follows, in a received datagram.
UD_VNET_OFFSET = UD_HEADER.size + IPOIB_ENCAP_LEN


@dataclass(frozen=True)
class UdHeader:
    slid: int
    dlid: int
    src_qpn: int
    dst_qpn: int
    pkey: int
    qkey: int
    sgid: bytes
    dgid: bytes

    def pack(self) -> bytes:
        return UD_HEADER.pack(KIND_UD, self.slid, self.dlid, self.src_qpn, self.dst_qpn, self.pkey,
                              self.qkey, self.sgid, self.dgid)  # fmt: skip


def ipoib_header(proto: int) -> bytes:
    """struct ipoib_header: the EtherType, then two reserved zero bytes."""
    return struct.pack("!HH", proto, 0)


def pkeys_match(a: int, b: int) -> bool:
    """Same partition, and not both limited members (IBA 10.9.3)."""
    return (a & 0x7FFF) == (b & 0x7FFF) and bool((a | b) & 0x8000)


# ---------------------------------------------------------------- RFC 4391 ARP

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


# ---------------------------------------------------------------- IPv6 neighbour discovery

ND_NEIGHBOR_SOLICIT = 135
ND_NEIGHBOR_ADVERT = 136
ND_OPT_SOURCE_LL = 1
ND_OPT_TARGET_LL = 2
IPPROTO_ICMPV6 = 58


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def icmpv6_checksum(src: bytes, dst: bytes, message: bytes) -> int:
    pseudo = src + dst + struct.pack("!I3xB", len(message), IPPROTO_ICMPV6)
    return _csum(pseudo + message)


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


def neighbor_solicit(src: bytes, target: bytes, lladdr: bytes, hop_limit: int = 255) -> bytes:
    """An NS for `target` to its solicited-node group, with our source link-layer option."""
    dst = bytes.fromhex("ff0200000000000000000001ff") + target[13:16]
    message = bytearray(struct.pack("!BBHI", ND_NEIGHBOR_SOLICIT, 0, 0, 0) + target
                        + nd_lladdr_option(ND_OPT_SOURCE_LL, lladdr))  # fmt: skip
    message[2:4] = icmpv6_checksum(src, dst, bytes(message)).to_bytes(2, "big")
    header = struct.pack("!IHBB", 6 << 28, len(message), IPPROTO_ICMPV6, hop_limit) + src + dst
    return header + bytes(message)


def link_local_from_guid(guid: int) -> bytes:
    """addrconf_ifid_infiniband: fe80:: + the port GUID with the universal/local bit flipped."""
    ifid = bytearray(guid.to_bytes(8, "big"))
    ifid[0] ^= 0x02
    return bytes.fromhex("fe80000000000000") + bytes(ifid)


def kstrtoint(buf: bytes) -> int:
    """kstrtoint(buf, 0, ...) as param_set_int uses it: a sign allowed, ERANGE outside an int."""
    negative = buf[:1] == b"-"
    value = kstrtoul(buf[1:] if negative else buf)
    value = -value if negative else value
    if not -(1 << 31) <= value < (1 << 31):
        raise KernelError(errno.ERANGE)
    return value


# ---------------------------------------------------------------- PMTU emulation (cm_skb_reap)

IPPROTO_ICMP = 1


def icmp_frag_needed(packet: bytes, mtu: int) -> bytes:
    """ICMP "fragmentation needed" for a packet that did not fit, carrying `mtu`.

    It comes from the packet's destination (a local source would be a martian on a
    non-loopback device) to its source, quoting the header and 8 bytes as RFC 792 asks.
    """
    ihl = (packet[0] & 0x0F) * 4
    quote = bytes(packet[: ihl + 8])
    icmp = bytearray(struct.pack("!BBHHH", 3, 4, 0, 0, mtu) + quote)
    icmp[2:4] = _csum(bytes(icmp)).to_bytes(2, "big")
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0, 64,
                                   IPPROTO_ICMP, 0, packet[16:20], packet[12:16]))  # fmt: skip
    header[10:12] = _csum(bytes(header)).to_bytes(2, "big")
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


# ---------------------------------------------------------------- connected mode (RFC 4755)

IPOIB_CM_IETF_ID = 0x1000000000000000
#: A CM message: kind, type, SLID, local and remote communication IDs, service ID, the
#: sender's RC QPN, a reject reason, and the 8-byte private data (struct ipoib_cm_data).
CM_MESSAGE = struct.Struct("!BBHIIQIH8s")
CM_REQ, CM_REP, CM_REJ, CM_RTU, CM_DREQ = 1, 2, 3, 4, 5
IB_CM_REJ_NO_QP = 1
IB_CM_REJ_INVALID_SERVICE_ID = 8
IB_CM_REJ_CONSUMER_DEFINED = 28
#: A message on an RC connection: kind, SLID, DLID, source and destination RC QPNs; then
#: the IPoIB header, the offload metadata and the packet, as in a UD datagram.
RC_HEADER = struct.Struct("!BxHHII")
RC_VNET_OFFSET = RC_HEADER.size + IPOIB_ENCAP_LEN


def cm_data(ud_qpn: int, mtu: int = IPOIB_CM_BUF_SIZE) -> bytes:
    """struct ipoib_cm_data: our UD QPN and the receive size, both big-endian."""
    return struct.pack("!II", ud_qpn & 0xFFFFFF, mtu)


def parse_cm_data(data: bytes) -> tuple[int, int]:
    qpn, mtu = struct.unpack("!II", data)
    return qpn & 0xFFFFFF, mtu  # "High byte MUST be ignored on receive"
