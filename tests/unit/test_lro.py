"""wire.lro: GRO of a receive batch (tcp_gro_receive's rules) and the packets it writes."""

from __future__ import annotations

import struct
from typing import Any

from ipoibfs import wire
from ipoibfs.wire import lro

SRC, DST = bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2])
SRC6, DST6 = bytes.fromhex("fd18" + "00" * 13 + "01"), bytes.fromhex("fd18" + "00" * 13 + "02")
ACK, PSH, FIN, SYN, RST, CWR = 0x10, 0x08, 0x01, 0x02, 0x04, 0x80
TIMESTAMPS = bytes([1, 1, 8, 10]) + struct.pack("!II", 1000, 2000)


def tcp4(seq: int, payload: bytes, flags: int = ACK, sport: int = 40000, ip_id: int = 1,
         ttl: int = 64, tos: int = 0, df: bool = True, options: bytes = TIMESTAMPS,
         ack: int = 7, window: int = 502, ip_options: bytes = b"", src: bytes = SRC,
         good_csum: bool = True) -> bytes:  # fmt: skip
    """A fully checksummed TCP/IPv4 segment."""
    tcp = bytearray(struct.pack("!HHIIBBHHH", sport, 5201, seq, ack, (5 + len(options) // 4) << 4,
                                flags, window, 0, 0) + options + payload)  # fmt: skip
    pseudo = src + DST + struct.pack("!BBH", 0, 6, len(tcp))
    csum = wire.ip_checksum(pseudo + bytes(tcp))
    tcp[16:18] = (csum if good_csum else csum ^ 0x5555).to_bytes(2, "big")
    ihl = 5 + len(ip_options) // 4
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, tos, ihl * 4 + len(tcp), ip_id,
                               0x4000 if df else 0, ttl, 6, 0, src, DST) + ip_options)  # fmt: skip
    ip[10:12] = wire.ip_checksum(bytes(ip)).to_bytes(2, "big")
    return bytes(ip) + bytes(tcp)


def tcp6(seq: int, payload: bytes, flags: int = ACK, hop: int = 64, label: int = 0x12345) -> bytes:
    tcp = bytearray(struct.pack("!HHIIBBHHH", 40000, 5201, seq, 7, 8 << 4, flags, 502, 0, 0)
                    + TIMESTAMPS + payload)  # fmt: skip
    pseudo = SRC6 + DST6 + struct.pack("!I3xB", len(tcp), 6)
    tcp[16:18] = wire.ip_checksum(pseudo + bytes(tcp)).to_bytes(2, "big")
    return struct.pack("!IHBB", (6 << 28) | label, len(tcp), 6, hop) + SRC6 + DST6 + bytes(tcp)


def flow(n: int, mss: int = 1000, seq: int = 1, **kw: Any) -> list[bytes]:
    """n consecutive full-sized segments, IP IDs going up."""
    return [tcp4(seq + i * mss, bytes([i % 256]) * mss, ip_id=1 + i, **kw)
            for i in range(n)]  # fmt: skip


def complete_checksum(vnet: bytes, packet: bytes) -> bytes:
    """What a device does with CHECKSUM_PARTIAL (skb_checksum_help): the sum from csum_start,
    stored at csum_offset."""
    flags, _, _, _, start, offset = lro.VNET_HDR.unpack(vnet)
    assert flags == lro.VIRTIO_NET_HDR_F_NEEDS_CSUM
    out = bytearray(packet)
    out[start + offset : start + offset + 2] = wire.ip_checksum(packet[start:]).to_bytes(2, "big")
    return bytes(out)


def tcp_checksum_ok(packet: bytes) -> bool:
    if packet[0] >> 4 == 4:
        pseudo = packet[12:20] + struct.pack("!BBH", 0, 6, len(packet) - 20)
        return wire.ip_checksum(pseudo + packet[20:]) == 0
    pseudo = packet[8:40] + struct.pack("!I3xB", len(packet) - 40, 6)
    return wire.ip_checksum(pseudo + packet[40:]) == 0


def resegment(vnet: bytes, packet: lro.Frame) -> list[bytes]:
    """The payloads a GSO super-packet carries, cut at gso_size."""
    _, _, hdr_len, gso_size, _, _ = lro.VNET_HDR.unpack(vnet)
    payload = bytes(packet)[hdr_len:]
    return [payload[i : i + gso_size] for i in range(0, len(payload), gso_size)]


def payload_of(packet: bytes) -> bytes:
    ihl = (packet[0] & 0x0F) * 4 if packet[0] >> 4 == 4 else 40
    return packet[ihl + (packet[ihl + 12] >> 4) * 4 :]


def test_consecutive_segments_merge_into_one_super_packet() -> None:
    segs = flow(5)
    [(vnet, packet)] = lro.merge_packets(segs)
    packet = bytes(packet)
    flags, gso_type, hdr_len, gso_size, start, offset = lro.VNET_HDR.unpack(vnet)
    assert (flags, gso_type) == (lro.VIRTIO_NET_HDR_F_NEEDS_CSUM, lro.VIRTIO_NET_HDR_GSO_TCPV4)
    assert (hdr_len, gso_size, start, offset) == (20 + 32, 1000, 20, 16)
    assert struct.unpack_from("!H", packet, 2)[0] == len(packet) == 20 + 32 + 5000
    assert wire.ip_checksum(packet[:20]) == 0
    assert packet[4:6] == segs[0][4:6]  # the first segment's IP ID
    assert resegment(vnet, packet) == [payload_of(s) for s in segs]
    assert tcp_checksum_ok(complete_checksum(vnet, packet))
    # the headers are the first segment's but for length, checksums and merged flags
    assert packet[20:36] == segs[0][20:36] and packet[38:52] == segs[0][38:52]


def test_lone_and_unmergeable_packets_pass_through_unchanged_in_order() -> None:
    udp = bytes.fromhex("4500001c0001000040110000") + SRC + DST + bytes(8)
    arp_like = bytes(28)
    one = tcp4(1, b"x" * 100)
    out = lro.merge_packets([udp, arp_like, one])
    assert [bytes(p) for _, p in out] == [udp, arp_like, one]
    assert all(v == wire.NO_OFFLOAD for v, _ in out)


def test_the_wire_metadata_of_a_lone_segment_is_kept() -> None:
    partial = struct.pack("<BBHHHH", 1, 0, 0, 0, 20, 16)
    [(vnet, packet)] = lro.gro_receive([partial + tcp4(1, b"y" * 10)])
    assert vnet == partial and bytes(packet) == tcp4(1, b"y" * 10)


def test_out_of_order_segment_flushes_and_starts_again() -> None:
    a, b, c, d = flow(4)
    out = lro.merge_packets([a, b, d, c])
    # a+b held; d does not follow: a+b go up, d is held; c does not follow d: d goes, c held
    assert [resegment(v, bytes(p)) if v != wire.NO_OFFLOAD else [payload_of(bytes(p))]
            for v, p in out] == [[payload_of(a), payload_of(b)], [payload_of(d)],
                                 [payload_of(c)]]  # fmt: skip


def test_different_flows_are_held_apart() -> None:
    x = flow(3, sport=1111)
    y = flow(3, sport=2222)
    out = lro.merge_packets([x[0], y[0], x[1], y[1], x[2], y[2]])
    assert len(out) == 2
    assert [resegment(v, bytes(p)) for v, p in out] == [[payload_of(s) for s in x],
                                                          [payload_of(s) for s in y]]  # fmt: skip


def test_fin_and_psh_join_as_last_and_end_the_flow() -> None:
    for flag in (FIN, PSH):
        segs = flow(2) + [tcp4(2001, b"z" * 10, flags=ACK | flag, ip_id=3)]
        [(vnet, packet)] = lro.merge_packets(segs)
        assert bytes(packet)[20 + 13] == ACK | flag
        assert resegment(vnet, bytes(packet)) == [payload_of(s) for s in segs]


def test_a_segment_with_psh_or_fin_alone_is_not_held() -> None:
    first = tcp4(1, b"a" * 1000, flags=ACK | PSH)
    out = lro.merge_packets([first, tcp4(1001, b"b" * 1000, ip_id=2)])
    assert [bytes(p) for _, p in out] == [first, tcp4(1001, b"b" * 1000, ip_id=2)]


def test_syn_rst_and_pure_acks_break_the_flow() -> None:
    for breaker in (tcp4(2001, b"r" * 10, flags=ACK | RST, ip_id=3),
                    tcp4(2001, b"s" * 10, flags=SYN, ip_id=3),
                    tcp4(2001, b"", ip_id=3)):  # fmt: skip
        out = lro.merge_packets(flow(2) + [breaker])
        assert len(out) == 2 and bytes(out[1][1]) == breaker and out[1][0] == wire.NO_OFFLOAD
        assert resegment(*out[0]) == [payload_of(s) for s in flow(2)]


def test_a_short_segment_ends_the_flow_and_a_longer_one_does_not_join() -> None:
    segs = flow(2) + [tcp4(2001, b"s" * 500, ip_id=3), tcp4(2501, b"t" * 1000, ip_id=4)]
    out = lro.merge_packets(segs)
    assert len(out) == 2 and resegment(*out[0]) == [payload_of(s) for s in segs[:3]]
    longer = lro.merge_packets([tcp4(1, b"a" * 500), tcp4(501, b"b" * 1000, ip_id=2)])
    assert [len(bytes(p)) for _, p in longer] == [20 + 32 + 500, 20 + 32 + 1000]


def test_headers_must_agree() -> None:
    base = tcp4(1, b"a" * 1000)
    for other in (tcp4(1001, b"b" * 1000, ip_id=2, ttl=63),
                  tcp4(1001, b"b" * 1000, ip_id=2, tos=4),
                  tcp4(1001, b"b" * 1000, ip_id=2, df=False),
                  tcp4(1001, b"b" * 1000, ip_id=2, ack=8),
                  tcp4(1001, b"b" * 1000, ip_id=2, window=600),
                  tcp4(1001, b"b" * 1000, ip_id=2,
                       options=bytes([1, 1, 8, 10]) + struct.pack("!II", 1001, 2000)),
                  tcp4(1001, b"b" * 1000, ip_id=2, options=b""),
                  tcp4(1001, b"b" * 1000, ip_id=2, flags=ACK | CWR),
                  tcp4(1001, b"b" * 1000, ip_id=5)):  # fmt: skip
        assert len(lro.merge_packets([base, other])) == 2


def test_ip_ids_may_stay_fixed_with_df() -> None:
    fixed = [tcp4(1 + i * 1000, b"f" * 1000, ip_id=9) for i in range(3)]
    assert len(lro.merge_packets(fixed)) == 1
    no_df = [tcp4(1 + i * 1000, b"f" * 1000, ip_id=9, df=False) for i in range(2)]
    assert len(lro.merge_packets(no_df)) == 2


def test_ip_options_fragments_and_bad_checksums_are_not_merged() -> None:
    opts = [tcp4(1 + i * 1000, b"o" * 1000, ip_id=1 + i, ip_options=bytes([1, 1, 1, 0]))
            for i in range(2)]  # fmt: skip
    assert len(lro.merge_packets(opts)) == 2
    bad = flow(3)
    bad[1] = tcp4(1001, b"\1" * 1000, ip_id=2, good_csum=False)
    out = lro.merge_packets(bad)
    # up at once, for the stack to drop, after what was held for its flow
    assert [bytes(p) for _, p in out] == bad
    frag = bytearray(flow(1)[0])
    frag[6] |= 0x20  # MF
    frag[10:12] = b"\0\0"
    frag[10:12] = wire.ip_checksum(bytes(frag[:20])).to_bytes(2, "big")
    assert [bytes(p) for _, p in lro.merge_packets([bytes(frag)])] == [bytes(frag)]


def test_a_packet_gro_refuses_first_delivers_its_own_flow() -> None:
    a, b = flow(2)
    opts = tcp4(2001, b"o" * 1000, ip_id=3, ip_options=bytes([1, 1, 1, 0]))
    out = lro.merge_packets([a, b, opts])
    assert len(out) == 2 and bytes(out[1][1]) == opts
    assert resegment(*out[0]) == [payload_of(a), payload_of(b)]


def test_offloaded_checksums_are_trusted() -> None:
    partial = struct.pack("<BBHHHH", lro.VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 20, 16)
    segs = [bytearray(s) for s in flow(3)]
    for s in segs:
        s[36:38] = b"\xab\xcd"  # whatever a CHECKSUM_PARTIAL sender left
    [(vnet, packet)] = lro.gro_receive(partial + bytes(s) for s in segs)
    assert tcp_checksum_ok(complete_checksum(vnet, bytes(packet)))


def test_size_bound_of_64_kib() -> None:
    segs = flow(70, mss=1000)
    out = lro.merge_packets(segs)
    lengths = [len(bytes(p)) for _, p in out]
    assert all(n <= 65535 for n in lengths) and len(out) == 2
    assert lengths[0] == 20 + 32 + 65 * 1000  # one more would reach 65536
    assert sum(len(resegment(*d)) for d in out) == 70
    assert len(lro.merge_packets(flow(5), max_size=3000)) == 3


def test_at_most_max_gro_skbs_flows_are_held() -> None:
    flows = [flow(2, sport=1000 + i) for i in range(lro.MAX_GRO_SKBS + 1)]
    eight = [f[0] for f in flows[:-1]] + [f[1] for f in flows[:-1]]
    assert len(lro.merge_packets(eight)) == lro.MAX_GRO_SKBS
    # a 9th flow pushes the oldest out (gro_flush_oldest), and each later start does again
    nine = [f[0] for f in flows] + [f[1] for f in flows]
    out = lro.merge_packets(nine)
    assert len(out) == 2 * len(flows) and bytes(out[0][1]) == flows[0][0]


def test_ipv6_segments_merge() -> None:
    segs = [tcp6(1 + i * 1000, bytes([i]) * 1000) for i in range(3)]
    [(vnet, packet)] = lro.merge_packets(segs)
    packet = bytes(packet)
    _, gso_type, hdr_len, gso_size, start, _ = lro.VNET_HDR.unpack(vnet)
    assert (gso_type, hdr_len, gso_size, start) == (lro.VIRTIO_NET_HDR_GSO_TCPV6, 72, 1000, 40)
    assert struct.unpack_from("!H", packet, 4)[0] == len(packet) - 40
    assert tcp_checksum_ok(complete_checksum(vnet, packet))
    assert len(lro.merge_packets([tcp6(1, b"a" * 10), tcp6(11, b"b" * 10, hop=63)])) == 2
    assert len(lro.merge_packets([tcp6(1, b"a" * 10), tcp6(11, b"b" * 10, label=1)])) == 2


def test_cwr_on_the_first_segment_marks_ecn() -> None:
    segs = [tcp4(1, b"c" * 1000, flags=ACK | CWR)] + flow(2, seq=1001)[0:1]
    segs[1] = tcp4(1001, b"d" * 1000, flags=ACK | CWR, ip_id=2)
    assert len(lro.merge_packets(segs)) == 2  # CWR on a later segment: no merge
    first = tcp4(1, b"c" * 1000, flags=ACK | CWR)
    later = tcp4(1001, b"d" * 1000, ip_id=2)
    # flags must agree but for CWR, FIN and PSH: CWR only on the first is allowed
    [(vnet, _)] = lro.merge_packets([first, later])
    assert vnet[1] == lro.VIRTIO_NET_HDR_GSO_TCPV4 | lro.VIRTIO_NET_HDR_GSO_ECN


def test_checksum_check_agrees_with_ip_checksum() -> None:
    import random

    rng = random.Random(13)
    for _ in range(500):
        data = bytearray(rng.randbytes(rng.randrange(2, 120)))
        if rng.random() < 0.5:
            data[0:2] = b"\0\0"
            data[0:2] = wire.ip_checksum(bytes(data)).to_bytes(2, "big")
        if any(data):
            assert lro._checksum_valid(bytes(data)) == (wire.ip_checksum(bytes(data)) == 0)
