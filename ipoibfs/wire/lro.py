"""LRO/GRO of a receive batch: consecutive in-order TCP segments of one flow merged into one
super-packet for the TUN, as the kernel's GRO merges them (sans-IO).

It follows dev_gro_receive (net/core/gro.c), inet_gro_receive and ipv6_gro_receive, and
tcp_gro_receive / tcp_gro_complete (net/ipv4/tcp_offload.c):

- only IPv4 without options (ihl 5, valid header checksum, not a fragment, total length
  that of the packet) or IPv6 with TCP as its next header, carrying TCP with a payload;
- a segment joins the flow held for its addresses and ports when its flags equal the held
  one's but for CWR, FIN and PSH (and it has no CWR), its ACK number, window and options
  (timestamps included) are the held ones, its sequence number follows, its payload is at
  most the first one's (the MSS), TTL/TOS/DF (IPv6: traffic class and hop limit) agree, IPv4
  IDs go up by one (or, with DF, stay fixed), and the merged IP length stays under 64 KiB
  (GRO_LEGACY_MAX_SIZE);
- a held flow is delivered when a segment cannot join it, when a joining segment is short
  of the MSS or carries PSH, FIN, URG, RST or SYN (it joins first; such a segment that
  cannot join is delivered alone), when MAX_GRO_SKBS flows are held and another comes
  (the oldest goes), and at the end of the batch, oldest first (napi_gro_flush);
- the HCA checks checksums first: a segment whose metadata says nothing (no NEEDS_CSUM,
  no DATA_VALID) must have a valid TCP checksum to be merged; one that has not goes up as
  it is, for the stack to drop.

Everything else goes up unchanged when it arrives. One departure keeps a flow in order: a
TCP packet that GRO refuses before the flow checks (IP options, a fragment, a bad
checksum, a super-packet from the wire) first delivers what is held for its own flow.

A merged packet goes to the TUN with a virtio_net_hdr that tun_get_user and
virtio_net_hdr_to_skb accept: GSO_TCPV4/TCPV6 (|ECN when the first segment has CWR,
tcp_gro_complete), gso_size the MSS, NEEDS_CSUM with csum_start at the TCP header and
csum_offset 16, and in the TCP checksum field the pseudo-header sum, as a CHECKSUM_PARTIAL
sender leaves it. A lone held segment goes up as it came.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from .headers import VIRTIO_NET_HDR_GSO_NONE, VNET_HDR_LEN
from .ip import ip_checksum

#: include/uapi/linux/virtio_net.h
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_F_DATA_VALID = 2
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_TCPV6 = 4
VIRTIO_NET_HDR_GSO_ECN = 0x80
#: struct virtio_net_hdr as a TUN reads and writes it (little-endian on x86): flags,
#: gso_type, hdr_len, gso_size, csum_start, csum_offset.
VNET_HDR = struct.Struct("<BBHHHH")

#: GRO_LEGACY_MAX_SIZE: a merged packet's IP length stays below it.
GRO_MAX_SIZE = 65536
#: MAX_GRO_SKBS: flows held at once (one GRO list: IPoIB's skbs carry no RX hash).
MAX_GRO_SKBS = 8

IPPROTO_TCP = 6
IP_DF = 0x4000
TCP_CSUM_OFFSET = 16
# Bits of tcp_flag_word (the word at offset 12: data offset, flags, window).
TCP_FLAG_CWR = 0x00800000
TCP_FLAG_URG = 0x00200000
TCP_FLAG_PSH = 0x00080000
TCP_FLAG_RST = 0x00040000
TCP_FLAG_SYN = 0x00020000
TCP_FLAG_FIN = 0x00010000
_FLUSH_FLAGS = TCP_FLAG_URG | TCP_FLAG_PSH | TCP_FLAG_RST | TCP_FLAG_SYN | TCP_FLAG_FIN
_MERGE_FLAGS = TCP_FLAG_CWR | TCP_FLAG_FIN | TCP_FLAG_PSH

Frame = bytes | bytearray | memoryview
#: What to write to the TUN: a virtio_net_hdr and an IP packet.
Delivery = tuple[bytes, Frame]


@dataclass(slots=True)
class _Segment:
    """A TCP segment GRO can look at, with what the flow checks need."""

    vnet: bytes
    packet: Frame
    key: tuple[object, ...]
    iphlen: int
    thlen: int
    seq: int
    flag_word: int
    ack: int
    options: bytes
    payload: Frame
    ip_match: tuple[int, ...]  # TTL, TOS, DF (IPv4); traffic class, hop limit (IPv6)
    ip_id: int | None  # IPv4 only
    df: bool


@dataclass(slots=True)
class _Flow:
    """A flow held for merging (the skb on the GRO list, NAPI_GRO_CB(p))."""

    first: _Segment
    payloads: list[Frame] = field(default_factory=list)
    flags: int = 0  # FIN and PSH of the segments merged in
    next_seq: int = 0
    length: int = 0  # IP length so far
    fixed_id: bool = False

    @property
    def count(self) -> int:
        return len(self.payloads)

    @property
    def mss(self) -> int:
        return len(self.first.payload)


def _parse(vnet: bytes, packet: Frame) -> _Segment | None:
    """The segment in `packet` if it is TCP over IPv4 or IPv6 (else None); raises
    ValueError when GRO would not touch it (inet_gro_receive's and ipv6_gro_receive's
    checks, the checksum check, a GSO packet)."""
    if len(packet) < 20:
        return None
    if vnet[1] != VIRTIO_NET_HDR_GSO_NONE:
        raise ValueError("a super-packet")  # checked first: the common case with TSO
    version = packet[0] >> 4
    if version == 4:
        ihl = (packet[0] & 0x0F) * 4
        if packet[9] != IPPROTO_TCP or ihl < 20 or len(packet) < ihl + 20:
            return None
        if ihl != 20:
            raise ValueError("IP options")
        tot_len, ip_id, frag = struct.unpack_from("!HHH", packet, 2)
        if frag & ~IP_DF & 0xFFFF or tot_len != len(packet):
            raise ValueError("fragment or length")
        if not _checksum_valid(bytes(packet[:20])):
            raise ValueError("IP header checksum")
        ip_match: tuple[int, ...] = (packet[8], packet[1], frag & IP_DF)
        df = bool(frag & IP_DF)
        id_: int | None = ip_id
        pseudo = bytes(packet[12:20]) + struct.pack("!BBH", 0, IPPROTO_TCP, len(packet) - 20)
    elif version == 6:
        ihl = 40
        if len(packet) < 60 or packet[6] != IPPROTO_TCP:
            return None
        word = int.from_bytes(packet[0:4], "big")
        if int.from_bytes(packet[4:6], "big") != len(packet) - 40:
            raise ValueError("payload length")
        ip_match = ((word >> 20) & 0xFF, packet[7])
        df, id_ = True, None
        pseudo = bytes(packet[8:40]) + struct.pack("!I3xB", len(packet) - 40, IPPROTO_TCP)
    else:
        return None
    doff = (packet[ihl + 12] >> 4) * 4
    if doff < 20 or len(packet) < ihl + doff:
        raise ValueError("TCP header")
    if not vnet[0] & (VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID):
        if not _checksum_valid(pseudo + bytes(packet[ihl:])):
            raise ValueError("TCP checksum")
    seq, ack, flag_word = struct.unpack_from("!III", packet, ihl + 4)
    mv = memoryview(packet)
    return _Segment(vnet, packet, _flow_key(mv), ihl, doff, seq, flag_word, ack,
                    bytes(packet[ihl + 20 : ihl + doff]), mv[ihl + doff :], ip_match, id_,
                    df)  # fmt: skip


def _checksum_valid(data: bytes) -> bool:
    """Whether `data` carries a valid Internet checksum (wire.ip_checksum(data) == 0), at C
    speed: 2**16 is 1 modulo 0xFFFF, so the ones' complement sum of the 16-bit words is the
    number the bytes spell, modulo 0xFFFF; it is valid when that is 0xFFFF, i.e. 0 (data of
    zeros alone, the other way to get 0, never carries a pseudo-header)."""
    if len(data) % 2:
        data += b"\0"
    return int.from_bytes(data, "big") % 0xFFFF == 0


def _joins(flow: _Segment, seg: _Segment, held: _Flow, max_size: int) -> bool:
    """tcp_gro_receive's flush conditions for `seg` against the held flow (and
    gro_receive_network_flush's IP ones); True when it may be merged."""
    if seg.flag_word & TCP_FLAG_CWR:
        return False
    if (seg.flag_word ^ flow.flag_word) & ~_MERGE_FLAGS:
        return False  # other flags, data offset or window differ
    if seg.ack != flow.ack or seg.options != flow.options or seg.ip_match != flow.ip_match:
        return False
    if flow.ip_id is not None and seg.ip_id is not None:
        offset = (seg.ip_id - flow.ip_id) & 0xFFFF
        fixed = held.fixed_id or (held.count == 1 and flow.df and offset == 0)
        if offset != (0 if fixed else held.count):
            return False
    length = len(seg.payload)
    if length == 0 or length > held.mss:
        return False
    if seg.seq != held.next_seq:
        return False
    return held.length + length < max_size


def _start(seg: _Segment) -> _Flow:
    return _Flow(seg, [seg.payload], 0, (seg.seq + len(seg.payload)) & 0xFFFFFFFF,
                 len(seg.packet))  # fmt: skip


def _complete(held: _Flow) -> Delivery:
    """napi_gro_complete / tcp_gro_complete: a lone segment as it came; several as one
    packet with the first one's headers, the merged FIN/PSH, the new length and the
    partial checksum, and the GSO metadata."""
    first = held.first
    if held.count == 1:
        return first.vnet, first.packet
    payload = b"".join(held.payloads)
    ihl, thlen = first.iphlen, first.thlen
    tcp = bytearray(first.packet[ihl : ihl + thlen])
    tcp[13] |= (held.flags >> 16) & 0xFF
    tcp_len = thlen + len(payload)
    if ihl == 20:
        ip = bytearray(first.packet[:20])
        struct.pack_into("!H", ip, 2, 20 + tcp_len)
        ip[10:12] = b"\0\0"
        ip[10:12] = ip_checksum(bytes(ip)).to_bytes(2, "big")
        pseudo = bytes(ip[12:20]) + struct.pack("!BBH", 0, IPPROTO_TCP, tcp_len)
        gso = VIRTIO_NET_HDR_GSO_TCPV4
    else:
        ip = bytearray(first.packet[:40])
        struct.pack_into("!H", ip, 4, tcp_len)
        pseudo = bytes(ip[8:40]) + struct.pack("!I3xB", tcp_len, IPPROTO_TCP)
        gso = VIRTIO_NET_HDR_GSO_TCPV6
    if first.flag_word & TCP_FLAG_CWR:
        gso |= VIRTIO_NET_HDR_GSO_ECN
    tcp[16:18] = (~ip_checksum(pseudo) & 0xFFFF).to_bytes(2, "big")
    vnet = VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, gso, ihl + thlen, held.mss, ihl,
                         TCP_CSUM_OFFSET)  # fmt: skip
    return vnet, bytes(ip) + bytes(tcp) + payload


def gro_receive(frames: Iterable[Frame], max_size: int = GRO_MAX_SIZE,
                max_flows: int = MAX_GRO_SKBS) -> list[Delivery]:  # fmt: skip
    """One receive batch (one NAPI poll) through GRO: each frame is a virtio_net_hdr
    (VNET_HDR_LEN bytes, the wire's offload metadata) and an IP packet; the result is what
    to write to the TUN, in delivery order (see the module docstring)."""
    out: list[Delivery] = []
    held: OrderedDict[tuple[object, ...], _Flow] = OrderedDict()
    for frame in frames:
        mv = memoryview(frame)
        vnet, packet = bytes(mv[:VNET_HDR_LEN]), mv[VNET_HDR_LEN:]
        try:
            seg = _parse(vnet, packet)
        except ValueError:
            seg = None
            refused = held.pop(_flow_key(packet), None)
            if refused is not None:
                out.append(_complete(refused))
        if seg is None:
            out.append((vnet, packet))
            continue
        flow = held.get(seg.key)
        if flow is not None:
            if _joins(flow.first, seg, flow, max_size):
                if flow.count == 1 and flow.first.df and seg.ip_id == flow.first.ip_id:
                    flow.fixed_id = True
                flow.payloads.append(seg.payload)
                flow.flags |= seg.flag_word & (TCP_FLAG_FIN | TCP_FLAG_PSH)
                flow.next_seq = (seg.seq + len(seg.payload)) & 0xFFFFFFFF
                flow.length += len(seg.payload)
                if len(seg.payload) < flow.mss or seg.flag_word & _FLUSH_FLAGS:
                    out.append(_complete(held.pop(seg.key)))
                continue
            out.append(_complete(held.pop(seg.key)))
        if not seg.payload or seg.flag_word & _FLUSH_FLAGS:
            out.append((vnet, packet))
            continue
        if len(held) >= max_flows:
            out.append(_complete(held.popitem(last=False)[1]))
        held[seg.key] = _start(seg)
    out.extend(_complete(flow) for flow in held.values())
    return out


def _flow_key(packet: memoryview) -> tuple[object, ...]:
    """The flow key of a TCP packet GRO refused (as _parse builds it), else ()."""
    if len(packet) >= 20 and packet[0] >> 4 == 4 and packet[9] == IPPROTO_TCP:
        ihl = (packet[0] & 0x0F) * 4
        return (4, bytes(packet[12:20]), bytes(packet[ihl : ihl + 4]))
    if len(packet) >= 44 and packet[0] >> 4 == 6 and packet[6] == IPPROTO_TCP:
        word = int.from_bytes(packet[0:4], "big")
        return (6, bytes(packet[8:40]), bytes(packet[40:44]), word & 0xF00FFFFF)
    return ()


def merge_packets(packets: Iterable[Frame], max_size: int = GRO_MAX_SIZE,
                  max_flows: int = MAX_GRO_SKBS) -> list[Delivery]:  # fmt: skip
    """gro_receive for bare IP packets, taken as fully checksummed (no offload metadata)."""
    return gro_receive((bytes(VNET_HDR_LEN) + bytes(p) for p in packets), max_size, max_flows)
