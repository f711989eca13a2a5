"""Captures with InfiniBand framing: the bytes of a pcap file of the emulated fabric (sans-IO).

A message on the emulated wire (headers.py, cm.py) becomes the packets a real HCA would put
on the link, and each packet one pcap record. Two link types:

- LINKTYPE_ERF (197), one ERF record of type 21 (InfiniBand) per IB packet. It is the only
  full-IB framing Wireshark reads from a pcap file (LINKTYPE 247 is refused as unknown), and
  its dissector then shows LRH, GRH, BTH, DETH, the MAD classes and, through its heuristic
  for EtherType-tagged payloads, IPoIB's header and the IP packet. The ERF header
  (wiretap's pcap_read_erf_pseudoheader, packet-erf.c) is 16 bytes: a little-endian 32.32
  fixed-point timestamp, the type, flags (capture interface in bits 0-1, which Wireshark
  shows as the direction; varying length), rlen (the record, header included), a loss
  counter (Wireshark flags any non-zero value as packet loss) and wlen, the packet's length
  on the link. tcpdump does not decode ERF records.
- LINKTYPE_IPOIB (242), one record per IP packet: a 40-byte pseudo-header, then the 4-byte
  IPoIB header (RFC 4391) and the packet, for tools that need IPoIB only (tcpdump decodes
  it; without the pseudo-header neither tool does). The pseudo-header is GRH-shaped for
  multicast (with the source QPN where Wireshark looks for it), else 20 zero bytes and
  the destination's 20-byte hardware address.

An IB packet here is what the IBA (vol. 1, ch. 5 to 9) puts between the start and end
delimiters, as Wireshark's packet-infiniband.c parses it:

- LRH (8 bytes): VL and LVer, SL and LNH (2 = BTH follows, 3 = GRH follows), DLID, PktLen
  (4-byte words from the LRH to the ICRC: Wireshark checks the payload against it), SLID;
- GRH (40 bytes) for multicast, as IB requires: IPVer 6, TClass and FlowLabel, PayLen (BTH to
  ICRC), NxtHdr 0x1B (IBA transport), HopLmt, SGID, DGID (the MGID);
- BTH (12 bytes): opcode, SE, MigReq, PadCnt, TVer, P_Key, DestQP, AckReq, PSN;
- DETH (8 bytes) on UD: Q_Key (0x0B1B for IPoIB, 0x80010000 on QP1) and the source QPN;
- the payload, padded to 4 bytes (PadCnt says how much);
- ICRC (CRC-32 over the invariant fields: VL, Resv8a and, with a GRH, the LRH, TClass,
  FlowLabel and HopLmt count as ones) and VCRC (CRC-16, polynomial 0x100B, over the rest).
  Wireshark shows both without checking them; they are computed as the spec says anyway.

The messages become:

- a UD datagram: UD SEND ONLY with DETH, one per IP packet. The 10-byte offload metadata is
  what the HCA's engines act on: an LSO super-packet (gso_type != 0) goes out as the
  MSS-sized segments the LSO engine cuts (IP lengths, IDs and checksums, TCP sequence
  numbers, flags and checksums per segment, as tcp_gso_segment makes them), a
  CHECKSUM_PARTIAL packet with its checksum completed;
- an RC message (up to 65520 bytes in connected mode): RC SEND ONLY, or SEND FIRST, MIDDLE...
  and LAST cut at the path MTU, PSNs counting up, AckReq on the last packet;
- a CM message: a 256-byte CM MAD (class 0x07, version 2, method Send, the IBA's attribute
  layout for REQ, REP, REJ, RTU, DREQ and DREP with ipoib_cm.c's values), in a UD SEND ONLY
  from QP1 to QP1 with the GSI Q_Key 0x80010000.

What the emulated messages leave to the fabric (an RC or CM message's P_Key, a CM MAD's
destination, the ports' GIDs and GUIDs) comes in an IbRoute; PsnCounter keeps each QP's send
PSN. IbFilter selects packets by LID, QPN and P_Key. A tap of the wire writes, per message:

    for packet in psns.packets(message, mtu=mtu, route=route):
        if ib_filter.matches(packet, src_qp=sending_qp(message)[1]):
            out.write(pcap_record(erf_record(packet, ts_ns), ts_ns))

after pcap_header(LINKTYPE_ERF); or, for --ipoib, pcap_record(r, ts_ns) for each of
ipoib_records(message) after pcap_header(LINKTYPE_IPOIB).
"""

from __future__ import annotations

import functools
import struct
import zlib
from dataclasses import dataclass, replace

from .addresses import DEFAULT_PKEY, MCAST_QPN, PKEY_MASK, hw_addr
from .cm import CM_MESSAGE, CmDreq, CmMessage, CmRej, CmRep, CmReq, CmRtu, unpack_cm
from .headers import IPOIB_ENCAP_LEN, KIND_CM, KIND_RC, KIND_UD, VNET_HDR_LEN, RcHeader, UdHeader
from .ip import ip_checksum
from .lro import (
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VNET_HDR,
)
from .netdev import IB_MTU_ENUM

# ---------------------------------------------------------------- pcap

#: Link types (pcap-linktype(7)).
LINKTYPE_ERF = 197
LINKTYPE_IPOIB = 242
#: The magic numbers of a pcap file with microsecond and nanosecond timestamps.
PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
DEFAULT_SNAPLEN = 262144
_PCAP_HEADER = struct.Struct("<IHHiIII")
_PCAP_RECORD = struct.Struct("<IIII")


def pcap_header(linktype: int, snaplen: int = DEFAULT_SNAPLEN, *, nanoseconds: bool = True,
                ) -> bytes:  # fmt: skip
    """The 24-byte header of a pcap file (version 2.4, little-endian)."""
    magic = PCAP_MAGIC_NS if nanoseconds else PCAP_MAGIC_US
    return _PCAP_HEADER.pack(magic, 2, 4, 0, 0, snaplen, linktype)


def pcap_record(data: bytes, ts_ns: int, *, snaplen: int = DEFAULT_SNAPLEN,
                nanoseconds: bool = True) -> bytes:  # fmt: skip
    """One record: its 16-byte header (time, captured and original length), then `data`
    cut to `snaplen`. `ts_ns` is the time in nanoseconds since the epoch; a file of
    microseconds (nanoseconds=False) gets it rounded down."""
    secs, ns = divmod(ts_ns, 1_000_000_000)
    frac = ns if nanoseconds else ns // 1000
    captured = data[:snaplen]
    return _PCAP_RECORD.pack(secs, frac, len(captured), len(data)) + captured


# ---------------------------------------------------------------- ERF

ERF_TYPE_INFINIBAND = 21
#: ERF flags: the capture interface (bits 0-1; Wireshark reads bit 0 as received, clear as
#: sent) and varying-length records.
ERF_FLAG_VLEN = 0x04
_ERF_HEADER = struct.Struct("<QBB")
_ERF_LENGTHS = struct.Struct("!HHH")
ERF_HEADER_LEN = _ERF_HEADER.size + _ERF_LENGTHS.size  # 16


def erf_timestamp(ts_ns: int) -> int:
    """ERF's 32.32 fixed-point time (seconds, binary fraction) for nanoseconds since the
    epoch, rounded to the nearest fraction: Wireshark reads back the same nanoseconds."""
    secs, ns = divmod(ts_ns, 1_000_000_000)
    return secs << 32 | ((ns << 32) + 500_000_000) // 1_000_000_000


def erf_record(packet: bytes, ts_ns: int, *, interface: int = 0, lost: int = 0) -> bytes:
    """The data of one LINKTYPE_ERF record: the ERF header of an InfiniBand record, then
    the IB packet. `interface` (0-3) is the capture port, `lost` the packets dropped since
    the previous record (the loss counter saturates at 65535)."""
    header = _ERF_HEADER.pack(erf_timestamp(ts_ns), ERF_TYPE_INFINIBAND,
                              ERF_FLAG_VLEN | (interface & 0x03))  # fmt: skip
    lengths = _ERF_LENGTHS.pack(ERF_HEADER_LEN + len(packet), min(lost, 0xFFFF), len(packet))
    return header + lengths + packet


# ---------------------------------------------------------------- IB headers

#: LRH Link Next Header (IBA 7.7.7).
LNH_IBA_LOCAL = 2
LNH_IBA_GLOBAL = 3
LRH_LEN, GRH_LEN, BTH_LEN, DETH_LEN, AETH_LEN = 8, 40, 12, 8, 4
ICRC_LEN, VCRC_LEN = 4, 2
#: GRH Next Header for an IBA transport header.
NXTHDR_IBA = 0x1B
#: BTH opcodes (IBA 9.2.1): RC sends and ACK, UD SEND ONLY.
RC_SEND_FIRST, RC_SEND_MIDDLE, RC_SEND_LAST, RC_SEND_ONLY = 0x00, 0x01, 0x02, 0x04
RC_ACKNOWLEDGE = 0x11
UD_SEND_ONLY = 0x64
PSN_MASK = 0xFFFFFF
#: The management QPs and the GSI's well-known Q_Key (IBA 13.4.5 / ib_mad.h IB_QP1_QKEY).
QP0, QP1 = 0, 1
GSI_QKEY = 0x80010000
#: VL15 carries QP0's subnet management packets, never flow-controlled.
VL15 = 15
_LRH = struct.Struct("!BBHHH")
_GRH = struct.Struct("!IHBB16s16s")
_BTH = struct.Struct("!BBHII")
_DETH = struct.Struct("!II")
#: IPoIB's QPs never load an alternate path: they stay in the Migrated state, in which
#: the BTH's MigReq bit is set.
MIGREQ = True


def lrh(*, vl: int, sl: int, lnh: int, dlid: int, slid: int, words: int) -> bytes:
    """The Local Route Header; LVer 0; `words` is PktLen, LRH to ICRC in 4-byte words."""
    return _LRH.pack((vl & 0x0F) << 4, (sl & 0x0F) << 4 | (lnh & 0x03), dlid, words & 0x07FF, slid)


def grh(*, sgid: bytes, dgid: bytes, paylen: int, tclass: int = 0, flow_label: int = 0,
        hop_limit: int = 0) -> bytes:  # fmt: skip
    """The Global Route Header before a BTH; `paylen` counts the bytes from the BTH to the
    ICRC."""
    word = 6 << 28 | (tclass & 0xFF) << 20 | (flow_label & 0xFFFFF)
    return _GRH.pack(word, paylen, NXTHDR_IBA, hop_limit, bytes(sgid), bytes(dgid))


def bth(*, opcode: int, pkey: int, dest_qp: int, psn: int, pad: int = 0, se: bool = False,
        ackreq: bool = False) -> bytes:  # fmt: skip
    """The Base Transport Header; TVer 0, Resv8a 0."""
    flags = se << 7 | MIGREQ << 6 | (pad & 0x03) << 4
    return _BTH.pack(opcode, flags, pkey, dest_qp & 0xFFFFFF,
                     ackreq << 31 | (psn & PSN_MASK))  # fmt: skip


def deth(qkey: int, src_qp: int) -> bytes:
    """The Datagram Extended Transport Header."""
    return _DETH.pack(qkey, src_qp & 0xFFFFFF)


def icrc(packet: bytes, *, global_route: bool) -> bytes:
    """The Invariant CRC of a packet (LRH to the end of the padded payload), IBA 7.8.1: the
    Ethernet CRC-32 with the variant fields taken as ones: VL and BTH Resv8a; with a GRH,
    the whole LRH, TClass, FlowLabel and HopLmt. Sent least significant byte first, as
    rxe_icrc.c stores it."""
    masked = bytearray(packet)
    if global_route:
        masked[0:LRH_LEN] = b"\xff" * LRH_LEN
        masked[8] |= 0x0F
        masked[9:12] = b"\xff\xff\xff"
        masked[15] = 0xFF
        resv8a = LRH_LEN + GRH_LEN + 4
    else:
        masked[0] |= 0xF0
        resv8a = LRH_LEN + 4
    masked[resv8a] = 0xFF
    return struct.pack("<I", zlib.crc32(masked))


#: x^16 + x^12 + x^3 + x + 1 (IBA 7.8.2), with its x^16 term.
_VCRC_POLY = 0x1100B
_BIT_REVERSED = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def _vcrc_mod(a: int) -> int:
    """a(x) mod the VCRC polynomial, bit by bit: for an a of a few dozen bits."""
    while (n := a.bit_length()) > 16:
        a ^= _VCRC_POLY << (n - 17)
    return a


@functools.lru_cache(maxsize=4096)
def _x_pow(k: int) -> tuple[int, ...]:
    """The terms (exponents) of x^k mod the VCRC polynomial."""
    if k < 16:
        return (k,)
    square = 0
    for i in _x_pow(k // 2):
        for j in _x_pow(k // 2):
            square ^= 1 << (i + j)
    r = _vcrc_mod(square << (k & 1))
    return tuple(j for j in range(16) if r >> j & 1)


def vcrc(data: bytes) -> bytes:
    """The Variant CRC (IBA 7.8.2) over LRH to ICRC: CRC-16 with polynomial 0x100B, seed and
    final XOR 0xFFFF, bits in wire order (each byte least significant bit first), sent
    least significant byte first.

    Computed as the remainder of the message polynomial in big integers, halving it each
    round (the high half times x^k mod P: a few shifts and XORs, in C): 23 us for 2 KiB
    where a table-driven byte loop in Python takes 173."""
    n = len(data) * 8
    # M(x) x^16, plus the seed's ones carried through the n bits of the message
    a = int.from_bytes(data.translate(_BIT_REVERSED), "big") << 16 ^ 0xFFFF << n
    bits = n + 16
    while bits > 48:
        k = bits // 2
        high, a = a >> k, a & ((1 << k) - 1)
        for j in _x_pow(k):
            a ^= high << j
        bits = max(k, bits - k + 16)
    r = _vcrc_mod(a)
    reflected = _BIT_REVERSED[r >> 8] | _BIT_REVERSED[r & 0xFF] << 8
    return struct.pack("<H", reflected ^ 0xFFFF)


def ib_packet(*, slid: int, dlid: int, opcode: int, pkey: int, dest_qp: int, psn: int,
              payload: bytes, ext: bytes = b"", gids: tuple[bytes, bytes] | None = None,
              vl: int = 0, sl: int = 0, ackreq: bool = False, tclass: int = 0,
              flow_label: int = 0, hop_limit: int = 0) -> bytes:  # fmt: skip
    """One IB packet: LRH, a GRH when `gids` (SGID, DGID) are given, BTH, the extended
    transport headers `ext` (DETH, AETH), the payload padded to 4 bytes, ICRC, VCRC."""
    pad = -len(payload) % 4
    transport = len(ext) + len(payload) + pad + ICRC_LEN
    words = (LRH_LEN + BTH_LEN + transport + (GRH_LEN if gids else 0)) // 4
    head = lrh(vl=vl, sl=sl, lnh=LNH_IBA_GLOBAL if gids else LNH_IBA_LOCAL, dlid=dlid,
               slid=slid, words=words)  # fmt: skip
    if gids is not None:
        head += grh(sgid=gids[0], dgid=gids[1], paylen=BTH_LEN + transport, tclass=tclass,
                    flow_label=flow_label, hop_limit=hop_limit)  # fmt: skip
    body = (head + bth(opcode=opcode, pkey=pkey, dest_qp=dest_qp, psn=psn, pad=pad,
                       ackreq=ackreq) + ext + payload + bytes(pad))  # fmt: skip
    body += icrc(body, global_route=gids is not None)
    return body + vcrc(body)


def is_multicast(dlid: int, dest_qp: int) -> bool:
    """Multicast LIDs are 0xC000-0xFFFE; a multicast datagram goes to QPN 0xFFFFFF."""
    return dest_qp == MCAST_QPN or 0xC000 <= dlid < 0xFFFF


# ---------------------------------------------------------------- the HCA's offloads

_IPPROTO_TCP = 6
_TCP_FIN, _TCP_PSH, _TCP_CWR = 0x01, 0x08, 0x80
_UDP_CSUM_OFFSET = 6


def offloaded(vnet: bytes | bytearray | memoryview, packet: bytes) -> list[bytes]:
    """The IP packets the HCA puts on the wire for one posted send with offload metadata
    `vnet` (a virtio_net_hdr): an LSO super-packet cut into MSS-sized TCP segments, a
    CHECKSUM_PARTIAL packet with its checksum completed (skb_checksum_help), anything
    else as it is."""
    flags, gso_type, _, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(vnet)
    gso = gso_type & ~0x80  # VIRTIO_NET_HDR_GSO_ECN
    if gso in (VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6) and gso_size:
        segments = _tcp_segments(packet, gso_size)
        if segments is not None:
            return segments
    if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM and csum_start + csum_offset + 2 <= len(packet):
        out = bytearray(packet)
        csum = ip_checksum(packet[csum_start:])
        if csum == 0 and csum_offset == _UDP_CSUM_OFFSET:
            csum = 0xFFFF  # CSUM_MANGLED_0: zero means "no checksum" to UDP
        out[csum_start + csum_offset : csum_start + csum_offset + 2] = csum.to_bytes(2, "big")
        return [bytes(out)]
    return [packet]


def _tcp_segments(packet: bytes, mss: int) -> list[bytes] | None:
    """tcp_gso_segment over inet_gso_segment / ipv6_gso_segment, as an LSO engine applies
    them: each segment gets the headers with its IP length, the next IPv4 ID and a new
    header checksum, its sequence number, CWR on the first segment only, FIN and PSH on
    the last only, and its TCP checksum. None when the packet is not TCP over IPv4, or
    over IPv6 without extension headers."""
    version = packet[0] >> 4 if packet else 0
    if version == 4 and len(packet) >= 40 and packet[9] == _IPPROTO_TCP:
        ihl = (packet[0] & 0x0F) * 4
    elif version == 6 and len(packet) >= 60 and packet[6] == _IPPROTO_TCP:
        ihl = 40
    else:
        return None
    thlen = (packet[ihl + 12] >> 4) * 4
    if thlen < 20 or len(packet) < ihl + thlen:
        return None
    ip, tcp, data = packet[:ihl], packet[ihl : ihl + thlen], packet[ihl + thlen :]
    seq = int.from_bytes(tcp[4:8], "big")
    ip_id = int.from_bytes(ip[4:6], "big")
    count = max(1, -(-len(data) // mss))
    out = []
    for i in range(count):
        chunk = data[i * mss : (i + 1) * mss]
        seg_ip, seg_tcp = bytearray(ip), bytearray(tcp)
        tcp_len = thlen + len(chunk)
        if version == 4:
            struct.pack_into("!HH", seg_ip, 2, ihl + tcp_len, (ip_id + i) & 0xFFFF)
            seg_ip[10:12] = b"\0\0"
            seg_ip[10:12] = ip_checksum(bytes(seg_ip)).to_bytes(2, "big")
            pseudo = bytes(seg_ip[12:20]) + struct.pack("!BBH", 0, _IPPROTO_TCP, tcp_len)
        else:
            struct.pack_into("!H", seg_ip, 4, tcp_len)
            pseudo = bytes(seg_ip[8:40]) + struct.pack("!I3xB", tcp_len, _IPPROTO_TCP)
        struct.pack_into("!I", seg_tcp, 4, (seq + i * mss) & 0xFFFFFFFF)
        if i:
            seg_tcp[13] &= ~_TCP_CWR & 0xFF
        if i < count - 1:
            seg_tcp[13] &= ~(_TCP_FIN | _TCP_PSH) & 0xFF
        seg_tcp[16:18] = b"\0\0"
        seg_tcp[16:18] = ip_checksum(pseudo + bytes(seg_tcp) + chunk).to_bytes(2, "big")
        out.append(bytes(seg_ip) + bytes(seg_tcp) + chunk)
    return out


# ---------------------------------------------------------------- messages to packets


@dataclass(frozen=True, slots=True, kw_only=True)
class IbRoute:
    """What a real packet carries and the emulated message leaves to the fabric.

    `pkey` is the P_Key of an RC connection's or a CM MAD's interface (the RC header and CM
    messages have none); `dlid` the LID a CM MAD goes to (the fabric's send() has it, the
    message names only its sender); `sgid`, `dgid` and `ca_guid` the ports' GIDs and the
    sender's node GUID that a CM REQ's primary path and a REP name; `peer_qpn` the QPN a
    DREQ goes to (the IBA's DREQ names the recipient's QPN, the emulated one its
    sender's: PsnCounter finds it from the handshake); `sl` the path's service level;
    `tclass`, `flow_label` and `hop_limit` a multicast group's GRH values (a link-local
    IPoIB group of OpenSM's has zeros).
    """

    pkey: int = DEFAULT_PKEY
    dlid: int = 0
    sgid: bytes = bytes(16)
    dgid: bytes = bytes(16)
    ca_guid: int = 0
    peer_qpn: int = 0
    sl: int = 0
    tclass: int = 0
    flow_label: int = 0
    hop_limit: int = 0


NO_IB_ROUTE = IbRoute()


def ud_packets(header: UdHeader, frame: bytes, *, psn: int, route: IbRoute = NO_IB_ROUTE,
               ) -> list[bytes]:  # fmt: skip
    """A UD datagram's packets: `frame` is what follows the UD header (the IPoIB header,
    the offload metadata, the IP packet); one UD SEND ONLY per packet the HCA sends, PSNs
    from `psn`. Multicast gets a GRH with the MGID."""
    encap, vnet = frame[:IPOIB_ENCAP_LEN], frame[IPOIB_ENCAP_LEN : IPOIB_ENCAP_LEN + VNET_HDR_LEN]
    packets = offloaded(vnet, frame[IPOIB_ENCAP_LEN + VNET_HDR_LEN :])
    gids = (header.sgid, header.dgid) if is_multicast(header.dlid, header.dst_qpn) else None
    ext = deth(header.qkey, header.src_qpn)
    return [ib_packet(slid=header.slid, dlid=header.dlid, opcode=UD_SEND_ONLY,
                      pkey=header.pkey, dest_qp=header.dst_qpn, psn=psn + i, payload=encap + p,
                      ext=ext, gids=gids, sl=route.sl, tclass=route.tclass,
                      flow_label=route.flow_label, hop_limit=route.hop_limit)
            for i, p in enumerate(packets)]  # fmt: skip


def rc_packets(header: RcHeader, frame: bytes, *, psn: int, mtu: int,
               route: IbRoute = NO_IB_ROUTE) -> list[bytes]:  # fmt: skip
    """An RC message's packets: SEND ONLY, or SEND FIRST, MIDDLE... LAST of `mtu` payload
    bytes each but the last, PSNs from `psn`, AckReq on the last. `frame` is what follows
    the RC header; an LSO super-packet is several messages, one per segment."""
    encap, vnet = frame[:IPOIB_ENCAP_LEN], frame[IPOIB_ENCAP_LEN : IPOIB_ENCAP_LEN + VNET_HDR_LEN]
    out: list[bytes] = []
    for packet in offloaded(vnet, frame[IPOIB_ENCAP_LEN + VNET_HDR_LEN :]):
        message = encap + packet
        count = max(1, -(-len(message) // mtu))
        for i in range(count):
            if count == 1:
                opcode = RC_SEND_ONLY
            else:
                opcode = RC_SEND_FIRST if i == 0 else RC_SEND_LAST if i == count - 1 else (
                    RC_SEND_MIDDLE)  # fmt: skip
            out.append(ib_packet(slid=header.slid, dlid=header.dlid, opcode=opcode,
                                 pkey=route.pkey, dest_qp=header.dst_qpn, psn=psn + len(out),
                                 payload=message[i * mtu : (i + 1) * mtu], sl=route.sl,
                                 ackreq=i == count - 1))  # fmt: skip
    return out


def rc_ack(*, slid: int, dlid: int, dest_qp: int, psn: int, msn: int,
           route: IbRoute = NO_IB_ROUTE) -> bytes:  # fmt: skip
    """The responder's ACKNOWLEDGE of the packets up to `psn`: AETH with the ACK syndrome
    (credits field 0x1F: end-to-end credits not used with an SRQ) and the message
    sequence number."""
    aeth = struct.pack("!I", 0x1F << 24 | (msn & 0xFFFFFF))
    return ib_packet(slid=slid, dlid=dlid, opcode=RC_ACKNOWLEDGE, pkey=route.pkey,
                     dest_qp=dest_qp, psn=psn, payload=b"", ext=aeth, sl=route.sl)  # fmt: skip


def mad_packet(mad: bytes, *, slid: int, dlid: int, src_qp: int, dest_qp: int, psn: int,
               pkey: int = DEFAULT_PKEY, qkey: int = GSI_QKEY, sl: int = 0) -> bytes:  # fmt: skip
    """A MAD in a UD SEND ONLY (GSI on QP1, or an SMP on QP0, which travels on VL15)."""
    vl = VL15 if QP0 in (src_qp, dest_qp) else 0
    return ib_packet(slid=slid, dlid=dlid, opcode=UD_SEND_ONLY, pkey=pkey, dest_qp=dest_qp,
                     psn=psn, payload=mad, ext=deth(qkey, src_qp), vl=vl, sl=sl)  # fmt: skip


# ---------------------------------------------------------------- CM MADs

#: The common MAD header (IBA 13.4.3): base version, class, class version, method, status,
#: class-specific, transaction ID, attribute ID, reserved, attribute modifier.
_MAD_HEADER = struct.Struct("!BBBBHHQHHI")
MAD_SIZE = 256
MGMT_CLASS_CM = 0x07
CM_CLASS_VERSION = 2
MAD_METHOD_SEND = 0x03
#: CM attribute IDs (IBA 16.7.1, cm_msgs.h).
CM_REQ_ATTR_ID, CM_REJ_ATTR_ID, CM_REP_ATTR_ID = 0x0010, 0x0012, 0x0013
CM_RTU_ATTR_ID, CM_DREQ_ATTR_ID, CM_DREP_ATTR_ID = 0x0014, 0x0015, 0x0016
#: ipoib_cm_send_req's choices: RC, no end-to-end flow control, starting PSN 0, responder
#: resources 4, CM response timeouts 20, no retries, 15 CM retries, an SRQ.
_REQ_RESPONDER_RESOURCES = 4
_CM_RESPONSE_TIMEOUT = 20
_MAX_CM_RETRIES = 15
#: REJ's "message rejected" (IBA 12.6.7): the REQ, or the REP.
_REJ_REQ, _REJ_REP = 0, 1


def _cm_mad(attr_id: int, tid: int, data: bytes | bytearray) -> bytes:
    header = _MAD_HEADER.pack(1, MGMT_CLASS_CM, CM_CLASS_VERSION, MAD_METHOD_SEND, 0, 0, tid,
                              attr_id, 0, 0)  # fmt: skip
    return (header + bytes(data)).ljust(MAD_SIZE, b"\0")


def cm_mad(message: CmMessage, *, mtu: int = 2048, route: IbRoute = NO_IB_ROUTE) -> bytes:
    """The 256-byte CM MAD of an emulated CM message, with the IBA's field layout (the
    offsets of ibta_vol1_c12.h) and ib_cm's values: the transaction ID is the active
    side's communication ID (cm_form_tid's low word; a REP, RTU or REJ answers in the
    REQ's transaction), a REQ's primary path is the sender's route (LIDs, GIDs, P_Key,
    path MTU, SL; no packet rate or ACK timeout: the emulated path has neither), the
    private data is struct ipoib_cm_data."""
    if isinstance(message, CmReq):
        body = bytearray(232)
        struct.pack_into("!IxxxxQQxxxxI", body, 0, message.local_comm_id, message.service_id,
                         route.ca_guid, 0)  # fmt: skip
        struct.pack_into("!I", body, 32, (message.qpn & 0xFFFFFF) << 8 | _REQ_RESPONDER_RESOURCES)
        body[43] = _CM_RESPONSE_TIMEOUT << 3  # transport service type 0: RC; no flow control
        body[47] = _CM_RESPONSE_TIMEOUT << 3  # after starting PSN 0; retry count 0
        mtu_enum = IB_MTU_ENUM.get(mtu, IB_MTU_ENUM[2048])
        struct.pack_into("!HBB", body, 48, route.pkey, mtu_enum << 4, _MAX_CM_RETRIES << 4 | 1 << 3)
        struct.pack_into("!HH16s16s", body, 52, message.slid, route.dlid, bytes(route.sgid),
                         bytes(route.dgid))  # fmt: skip
        body[94] = (route.sl & 0x0F) << 4 | 1 << 3  # subnet local
        body[140:148] = message.private.pack()
        return _cm_mad(CM_REQ_ATTR_ID, message.local_comm_id, body)
    if isinstance(message, CmRep):
        body = bytearray(232)
        struct.pack_into("!III", body, 0, message.local_comm_id, message.remote_comm_id, 0)
        struct.pack_into("!I", body, 12, (message.qpn & 0xFFFFFF) << 8)
        body[27] = 1 << 4  # RNR retry count 0 (the REQ's), SRQ
        struct.pack_into("!Q", body, 28, route.ca_guid)
        body[36:44] = message.private.pack()
        return _cm_mad(CM_REP_ATTR_ID, message.remote_comm_id, body)
    if isinstance(message, CmRej):
        rejected, tid = ((_REJ_REQ, message.remote_comm_id) if message.local_comm_id == 0
                         else (_REJ_REP, message.local_comm_id))  # fmt: skip
        data = struct.pack("!IIBxH", message.local_comm_id, message.remote_comm_id,
                           rejected << 6, message.reason)  # fmt: skip
        return _cm_mad(CM_REJ_ATTR_ID, tid, data)
    if isinstance(message, CmRtu):
        data = struct.pack("!II", message.local_comm_id, message.remote_comm_id)
        return _cm_mad(CM_RTU_ATTR_ID, message.local_comm_id, data)
    if isinstance(message, CmDreq):
        data = struct.pack("!III", message.local_comm_id, message.remote_comm_id,
                           (route.peer_qpn & 0xFFFFFF) << 8)  # fmt: skip
        return _cm_mad(CM_DREQ_ATTR_ID, message.local_comm_id, data)
    data = struct.pack("!II", message.local_comm_id, message.remote_comm_id)
    return _cm_mad(CM_DREP_ATTR_ID, message.remote_comm_id, data)


def cm_packet(message: CmMessage, *, psn: int, mtu: int = 2048, route: IbRoute = NO_IB_ROUTE,
              ) -> bytes:  # fmt: skip
    """A CM message as the GSI sends it: its MAD in a UD SEND ONLY from QP1 to QP1 of
    route.dlid, with the GSI Q_Key and the route's P_Key."""
    return mad_packet(cm_mad(message, mtu=mtu, route=route), slid=message.slid, dlid=route.dlid,
                      src_qp=QP1, dest_qp=QP1, psn=psn, pkey=route.pkey, sl=route.sl)  # fmt: skip


def ib_packets(message: bytes, *, psn: int, mtu: int, route: IbRoute = NO_IB_ROUTE) -> list[bytes]:
    """The IB packets of one message of the emulated wire (UD datagram, RC message or CM
    MAD), PSNs counting from `psn`; `mtu` is the path MTU in bytes. [] for a message that
    is short or of an unknown kind."""
    kind = message[0] if message else -1
    try:
        if kind == KIND_UD:
            header = UdHeader.unpack_from(message)
            if header.dst_qpn in (QP0, QP1):  # a MAD between ports' MAD layers
                return [mad_packet(bytes(message[UdHeader.SIZE :]), slid=header.slid,
                                   dlid=header.dlid, src_qp=header.src_qpn,
                                   dest_qp=header.dst_qpn, psn=psn, pkey=header.pkey,
                                   qkey=header.qkey, sl=route.sl)]  # fmt: skip
            return ud_packets(header, message[UdHeader.SIZE :], psn=psn, route=route)
        if kind == KIND_RC:
            rc = RcHeader.unpack_from(message)
            return rc_packets(rc, message[RcHeader.SIZE :], psn=psn, mtu=mtu, route=route)
    except struct.error:
        return []
    if kind == KIND_CM:
        cm = unpack_cm(message)
        return [] if cm is None else [cm_packet(cm, psn=psn, mtu=mtu, route=route)]
    return []


def sending_qp(message: bytes) -> tuple[int, int] | None:
    """(SLID, source QPN) of a message: the QP whose send PSNs it uses (QP1 for CM)."""
    if len(message) >= UdHeader.SIZE and message[0] == KIND_UD:
        header = UdHeader.unpack_from(message)
        return header.slid, header.src_qpn
    if len(message) >= RcHeader.SIZE and message[0] == KIND_RC:
        rc = RcHeader.unpack_from(message)
        return rc.slid, rc.src_qpn
    if len(message) >= CM_MESSAGE.size and message[0] == KIND_CM:
        return int.from_bytes(message[2:4], "big"), QP1
    return None


class PsnCounter:
    """Each QP's next send PSN, as the HCA keeps it, for the packets the capture builds;
    and the connections CM set up, for what a DREQ names.

    A QP starts at PSN 0, which is what ipoib_cm_send_req puts in a REQ as the starting
    PSN; a REQ or REP restarts the QP it names there (a QPN used again is a new
    connection). A REP pairs the REQ's QP with the replier's; a DREQ then names the
    other end's QPN, and ends both. CM messages need their route's `dlid`."""

    def __init__(self) -> None:
        self._next: dict[tuple[int, int], int] = {}
        self._requests: dict[tuple[int, int], int] = {}  # (LID, comm ID) -> REQ's QPN
        self._peers: dict[tuple[int, int], int] = {}  # (LID, QPN) -> the other end's QPN

    def packets(self, message: bytes, *, mtu: int, route: IbRoute = NO_IB_ROUTE) -> list[bytes]:
        """ib_packets for `message` at its QP's next PSN, which then moves past them."""
        qp = sending_qp(message)
        if qp is None:
            return []
        if message[0] == KIND_CM:
            route = self._cm(message, route)
        psn = self._next.get(qp, 0)
        packets = ib_packets(message, psn=psn, mtu=mtu, route=route)
        self._next[qp] = (psn + len(packets)) & PSN_MASK
        return packets

    def _cm(self, message: bytes, route: IbRoute) -> IbRoute:
        cm = unpack_cm(message)
        if isinstance(cm, CmReq):
            self._next[(cm.slid, cm.qpn)] = 0
            self._requests[(cm.slid, cm.local_comm_id)] = cm.qpn
        elif isinstance(cm, CmRep):
            self._next[(cm.slid, cm.qpn)] = 0
            active = self._requests.pop((route.dlid, cm.remote_comm_id), None)
            if active is not None:
                self._peers[(cm.slid, cm.qpn)] = active
                self._peers[(route.dlid, active)] = cm.qpn
        elif isinstance(cm, CmRej) and cm.local_comm_id == 0:  # a REQ refused
            self._requests.pop((route.dlid, cm.remote_comm_id), None)
        elif isinstance(cm, CmDreq):
            self._next.pop((cm.slid, cm.qpn), None)
            peer = self._peers.pop((cm.slid, cm.qpn), None)
            if peer is not None:
                self._peers.pop((route.dlid, peer), None)
                self._next.pop((route.dlid, peer), None)
                return replace(route, peer_qpn=peer)
        return route


# ---------------------------------------------------------------- LINKTYPE_IPOIB


def ipoib_pseudo_header(*, dest_qp: int, dgid: bytes, multicast: bool = False,
                        src_qp: int = 0, sgid: bytes = bytes(16)) -> bytes:  # fmt: skip
    """The 40 bytes before the IPoIB header in a LINKTYPE_IPOIB record, as Wireshark's
    packet-ipoib.c reads them: for unicast 20 zero bytes, then the destination hardware
    address (flags, QPN, GID); for multicast a GRH's first word (IPVer 6, no class or
    flow), a zero byte, the source QPN where a GRH has PayLen, NxtHdr and HopLmt, the
    SGID and the DGID (the MGID)."""
    if multicast:
        return struct.pack("!IB3s16s16s", 6 << 28, 0, (src_qp & 0xFFFFFF).to_bytes(3, "big"),
                           bytes(sgid), bytes(dgid))  # fmt: skip
    return bytes(20) + hw_addr(0, dest_qp, dgid)


def ipoib_records(message: bytes) -> list[bytes]:
    """The LINKTYPE_IPOIB record data of a UD datagram or RC message: per IP packet the
    HCA sends, the pseudo-header (an RC message names no GID), the IPoIB header and the
    packet. [] for anything else (CM MADs carry no IP)."""
    if len(message) >= UdHeader.SIZE and message[0] == KIND_UD:
        ud = UdHeader.unpack_from(message)
        frame = message[UdHeader.SIZE :]
        multicast = is_multicast(ud.dlid, ud.dst_qpn)
        pseudo = ipoib_pseudo_header(dest_qp=ud.dst_qpn, dgid=ud.dgid, multicast=multicast,
                                     src_qp=ud.src_qpn, sgid=ud.sgid)  # fmt: skip
    elif len(message) >= RcHeader.SIZE and message[0] == KIND_RC:
        rc = RcHeader.unpack_from(message)
        frame = message[RcHeader.SIZE :]
        pseudo = ipoib_pseudo_header(dest_qp=rc.dst_qpn, dgid=bytes(16))
    else:
        return []
    encap, vnet = frame[:IPOIB_ENCAP_LEN], frame[IPOIB_ENCAP_LEN : IPOIB_ENCAP_LEN + VNET_HDR_LEN]
    return [pseudo + encap + p for p in offloaded(vnet, frame[IPOIB_ENCAP_LEN + VNET_HDR_LEN :])]


# ---------------------------------------------------------------- filter


@dataclass(frozen=True, slots=True)
class IbFields:
    """What a filter looks at in an IB packet; `src_qp` is None without a DETH (RC)."""

    slid: int
    dlid: int
    pkey: int
    dest_qp: int
    src_qp: int | None

    @classmethod
    def parse(cls, packet: bytes) -> IbFields | None:
        """The fields of a packet starting with its LRH; None if it is not an IBA packet."""
        if len(packet) < LRH_LEN + BTH_LEN:
            return None
        lnh = packet[1] & 0x03
        if lnh not in (LNH_IBA_LOCAL, LNH_IBA_GLOBAL):
            return None
        dlid, slid = struct.unpack_from("!H2xH", packet, 2)
        at = LRH_LEN + (GRH_LEN if lnh == LNH_IBA_GLOBAL else 0)
        if len(packet) < at + BTH_LEN:
            return None
        opcode, _, pkey, dqp, _ = _BTH.unpack_from(packet, at)
        src: int | None = None
        if opcode >> 5 == 3 and len(packet) >= at + BTH_LEN + DETH_LEN:  # UD: DETH follows
            src = int.from_bytes(packet[at + BTH_LEN + 5 : at + BTH_LEN + 8], "big")
        return cls(slid, dlid, pkey, dqp & 0xFFFFFF, src)


@dataclass(frozen=True, slots=True, kw_only=True)
class IbFilter:
    """`capture --lid/--qpn/--pkey`: the packets whose SLID or DLID is `lid`, whose source
    or destination QPN is `qpn`, whose BTH P_Key is `pkey` compared as the kernel compares
    P_Keys (the low 15 bits: full and limited members of a partition alike); the given
    conditions all hold. An RC packet carries no source QPN: the caller who built it
    from a message passes the message's."""

    lid: int | None = None
    qpn: int | None = None
    pkey: int | None = None

    def matches(self, packet: bytes, *, src_qp: int | None = None) -> bool:
        if self.lid is None and self.qpn is None and self.pkey is None:
            return True
        fields = IbFields.parse(packet)
        if fields is None:
            return False
        if self.lid is not None and self.lid not in (fields.slid, fields.dlid):
            return False
        if self.qpn is not None:
            source = fields.src_qp if fields.src_qp is not None else src_qp
            if self.qpn not in (fields.dest_qp, source):
                return False
        return self.pkey is None or (fields.pkey & PKEY_MASK) == (self.pkey & PKEY_MASK)
