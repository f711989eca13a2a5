"""wire.capture: IB-framed pcap records of the emulated wire, read back by the real tshark
and tcpdump.

All the ERF records go into one file read by one tshark run (module fixture), the
LINKTYPE_IPOIB records into one file read by tcpdump and tshark once each.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from ipoibfs import wire
from ipoibfs.wire import capture, lro

LID1, LID2, MLID, SM_LID = 1, 2, 0xC000, 3
QPN1, QPN2 = 0x48, 0x49
RC1, RC2 = 0x1A2, 0x1B3
PREFIX = 0xFE80000000000000
GUID1, GUID2 = 0x0002C90300A1B201, 0x0002C90300A1B301
GID1, GID2 = wire.gid_from_guid(PREFIX, GUID1), wire.gid_from_guid(PREFIX, GUID2)
PKEY = 0x8001  # a partition of ours, full member
SRC, DST = bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2])
BCAST = bytes([198, 18, 255, 255])
T0 = 1_700_000_000_123_456_789
MTU = 2048
MSS = 1000

FIELDS = [
    "frame.number", "frame.time_epoch", "infiniband.lrh.vl", "infiniband.lrh.lnh",
    "infiniband.lrh.slid", "infiniband.lrh.dlid", "infiniband.lrh.pktlen", "infiniband.grh.dgid",
    "infiniband.grh.sgid", "infiniband.grh.paylen", "infiniband.grh.nxthdr",
    "infiniband.bth.opcode", "infiniband.bth.p_key", "infiniband.bth.destqp", "infiniband.bth.a",
    "infiniband.bth.psn", "infiniband.bth.padcnt", "infiniband.deth.q_key",
    "infiniband.deth.srcqp", "ipoib.type", "ip.src", "ip.dst", "ip.len", "ip.id",
    "ip.checksum.status", "icmp.type", "icmp.checksum.status", "arp.opcode",
    "arp.src.proto_ipv4", "arp.dst.proto_ipv4", "arp.hw.size", "tcp.seq_raw", "tcp.len",
    "tcp.flags.push", "tcp.flags.fin", "tcp.checksum.status", "infiniband.mad.mgmtclass",
    "infiniband.mad.classversion", "infiniband.mad.method", "infiniband.mad.attributeid",
    "infiniband.mad.transactionid", "infiniband.cm.req.localqpn", "infiniband.cm.req.serviceid",
    "infiniband.cm.req.pkey", "infiniband.cm.req.startpsn", "infiniband.cm.req.prim_locallid",
    "infiniband.cm.req.prim_remotelid", "infiniband.cm.req.prim_remotegid",
    "infiniband.cm.req.private", "infiniband.cm.rep.localqpn", "infiniband.cm.rep.remotecommid",
    "infiniband.cm.rep.private", "infiniband.cm.rtu.localcommid", "infiniband.cm.rej.msgrej",
    "infiniband.cm.rej.reason", "infiniband.cm.dreq.remotecommid",
    "infiniband.aeth.syndrome.opcode", "infiniband.aeth.syndrome.credit_count",
    "infiniband.aeth.msn", "ipv6.plen", "udp.checksum.status", "_ws.expert.message",
    "_ws.malformed", "frame.protocols",
]  # fmt: skip
CHECKSUMS = ["-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE", "-o",
             "udp.check_checksum:TRUE"]  # fmt: skip


# ---------------------------------------------------------------- packets of the emulated wire


def ipv4(proto: int, payload: bytes, src: bytes = SRC, dst: bytes = DST, ip_id: int = 7) -> bytes:
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ip_id, 0x4000, 64,
                               proto, 0, src, dst))  # fmt: skip
    ip[10:12] = wire.ip_checksum(bytes(ip)).to_bytes(2, "big")
    return bytes(ip) + payload


def icmp_echo(payload: bytes = b"x" * 56, dst: bytes = DST, reply: bool = False) -> bytes:
    icmp = bytearray(struct.pack("!BBHHH", 0 if reply else 8, 0, 0, 0x1234, 1) + payload)
    icmp[2:4] = wire.ip_checksum(bytes(icmp)).to_bytes(2, "big")
    return ipv4(wire.IPPROTO_ICMP, bytes(icmp), dst=dst)


def tcp_super_packet(payload: bytes, seq: int = 1000, flags: int = 0x18) -> tuple[bytes, bytes]:
    """What a TSO sender hands the TUN: one TCP/IPv4 packet of several MSS, CHECKSUM_PARTIAL
    (the pseudo-header sum in the checksum field) and the GSO metadata."""
    options = bytes([1, 1, 8, 10]) + struct.pack("!II", 11, 22)
    tcp = bytearray(struct.pack("!HHIIBBHHH", 40000, 5201, seq, 77, 8 << 4, flags, 502, 0, 0)
                    + options + payload)  # fmt: skip
    pseudo = SRC + DST + struct.pack("!BBH", 0, 6, len(tcp))
    tcp[16:18] = (~wire.ip_checksum(pseudo) & 0xFFFF).to_bytes(2, "big")
    packet = ipv4(6, bytes(tcp), ip_id=100)
    vnet = lro.VNET_HDR.pack(lro.VIRTIO_NET_HDR_F_NEEDS_CSUM, lro.VIRTIO_NET_HDR_GSO_TCPV4,
                             20 + 32, MSS, 20, 16)  # fmt: skip
    return vnet, packet


def tcp6_super_packet(payload: bytes, seq: int = 5000) -> tuple[bytes, bytes]:
    """The IPv6 kind (GSO_TCPV6), ACK|PSH, no TCP options."""
    src, dst = bytes.fromhex("fd18" + "00" * 13 + "01"), bytes.fromhex("fd18" + "00" * 13 + "02")
    tcp = bytearray(struct.pack("!HHIIBBHHH", 40002, 5201, seq, 77, 5 << 4, 0x18, 502, 0, 0)
                    + payload)  # fmt: skip
    pseudo = src + dst + struct.pack("!I3xB", len(tcp), 6)
    tcp[16:18] = (~wire.ip_checksum(pseudo) & 0xFFFF).to_bytes(2, "big")
    packet = struct.pack("!IHBB", 6 << 28, len(tcp), 6, 64) + src + dst + bytes(tcp)
    vnet = lro.VNET_HDR.pack(lro.VIRTIO_NET_HDR_F_NEEDS_CSUM, lro.VIRTIO_NET_HDR_GSO_TCPV6,
                             40 + 20, MSS, 40, 16)  # fmt: skip
    return vnet, packet


def udp_partial(payload: bytes) -> tuple[bytes, bytes]:
    """A CHECKSUM_PARTIAL UDP datagram: the HCA fills in the checksum (IB_SEND_IP_CSUM)."""
    udp = bytearray(struct.pack("!HHHH", 40003, 9, 8 + len(payload), 0) + payload)
    pseudo = SRC + DST + struct.pack("!BBH", 0, 17, len(udp))
    udp[6:8] = (~wire.ip_checksum(pseudo) & 0xFFFF).to_bytes(2, "big")
    vnet = lro.VNET_HDR.pack(lro.VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 20, 6)
    return vnet, ipv4(17, bytes(udp))


def ud(dst_qpn: int = QPN2, dlid: int = LID2, dgid: bytes = GID2, src_qpn: int = QPN1) -> bytes:
    return wire.UdHeader(slid=LID1, dlid=dlid, src_qpn=src_qpn, dst_qpn=dst_qpn, pkey=PKEY,
                         qkey=wire.IPOIB_QKEY, sgid=GID1, dgid=dgid).pack()  # fmt: skip


def ud_message(packet: bytes, proto: int = wire.ETH_P_IP, vnet: bytes = wire.NO_OFFLOAD,
               **kw: int | bytes) -> bytes:  # fmt: skip
    return ud(**kw) + wire.ipoib_header(proto) + vnet + packet  # type: ignore[arg-type]


def rc_message(packet: bytes, vnet: bytes = wire.NO_OFFLOAD) -> bytes:
    rc = wire.RcHeader(slid=LID1, dlid=LID2, src_qpn=RC1, dst_qpn=RC2)
    return rc.pack() + wire.ipoib_header(wire.ETH_P_IP) + vnet + packet


def arp_request() -> bytes:
    return wire.ArpPacket(op=wire.ARPOP_REQUEST, sha=wire.hw_addr(wire.IPOIB_FLAGS_RC, QPN1, GID1),
                          spa=SRC, tha=bytes(20), tpa=DST).pack()  # fmt: skip


MGID = wire.broadcast_mgid(PKEY)
ROUTE1 = capture.IbRoute(pkey=PKEY, dlid=LID2, sgid=GID1, dgid=GID2, ca_guid=GUID1 - 1)
ROUTE2 = capture.IbRoute(pkey=PKEY, dlid=LID1, sgid=GID2, dgid=GID1, ca_guid=GUID2 - 1)
REQ = wire.CmReq(slid=LID1, local_comm_id=0x5151, service_id=wire.IPOIB_CM_IETF_ID | QPN2,
                 qpn=RC1, private=wire.CmData(QPN1))  # fmt: skip
REP = wire.CmRep(slid=LID2, local_comm_id=RC2, remote_comm_id=0x5151,
                 service_id=REQ.service_id, qpn=RC2, private=wire.CmData(QPN2))  # fmt: skip
RTU = wire.CmRtu(slid=LID1, local_comm_id=0x5151, remote_comm_id=RC2, qpn=RC1)
REJ = wire.CmRej(slid=LID2, local_comm_id=0, remote_comm_id=0x5252,
                 reason=wire.IB_CM_REJ_INVALID_SERVICE_ID, service_id=REQ.service_id)  # fmt: skip
DREQ = wire.CmDreq(slid=LID1, local_comm_id=0x5151, remote_comm_id=RC2, qpn=RC1)
BIG = bytes(range(256)) * 20  # 5120 bytes: an RC message of three 2048-byte packets
SUPER = bytes(i * 7 % 251 for i in range(3 * MSS + 345))


def _scenarios() -> dict[str, list[bytes]]:
    """The IB packets of each case, in file order; the PSN counter sees the whole story."""
    psns = capture.PsnCounter()
    vnet, packet = tcp_super_packet(SUPER)
    vnet6, packet6 = tcp6_super_packet(SUPER[:2500])
    vnet_udp, packet_udp = udp_partial(b"q" * 33)
    messages: list[tuple[str, bytes, capture.IbRoute]] = [
        ("echo", ud_message(icmp_echo()), ROUTE1),
        ("arp", ud_message(arp_request(), wire.ETH_P_ARP, dst_qpn=wire.MCAST_QPN, dlid=MLID,
                           dgid=MGID), ROUTE1),
        ("mcast_ping", ud_message(icmp_echo(dst=BCAST), dst_qpn=wire.MCAST_QPN, dlid=MLID,
                                  dgid=MGID), ROUTE1),
        ("lso", ud_message(packet, vnet=vnet), ROUTE1),
        ("req", REQ.pack(), ROUTE1),
        ("rep", REP.pack(), ROUTE2),
        ("rtu", RTU.pack(), ROUTE1),
        ("rc", rc_message(ipv4(6, _tcp_segment(BIG))), ROUTE1),
        ("rc_short", rc_message(icmp_echo(b"y" * 61)), ROUTE1),
        ("rej", REJ.pack(), ROUTE2),
        ("dreq", DREQ.pack(), ROUTE1),
        ("lso6", ud_message(packet6, wire.ETH_P_IPV6, vnet=vnet6), ROUTE1),
        ("udp", ud_message(packet_udp, vnet=vnet_udp), ROUTE1),
    ]  # fmt: skip
    out = {name: psns.packets(m, mtu=MTU, route=route) for name, m, route in messages}
    out["ack"] = [capture.rc_ack(slid=LID2, dlid=LID1, dest_qp=RC1, psn=2, msn=1, route=ROUTE2)]
    path_get, node_get = mad(0x03, 0x01, 0x0035), mad(0x01, 0x01, 0x0011)  # SA, SMP
    out["sa"] = [capture.mad_packet(path_get, slid=LID1, dlid=SM_LID, src_qp=1, dest_qp=1, psn=0)]
    out["smp"] = [capture.mad_packet(node_get, slid=SM_LID, dlid=LID1, src_qp=0, dest_qp=0,
                                     psn=0, qkey=0)]  # fmt: skip
    return out


def mad(mgmt_class: int, method: int, attr_id: int) -> bytes:
    """A 256-byte MAD with its common header and zeros after it."""
    header = struct.pack("!BBBBHHQHHI", 1, mgmt_class, 2 if mgmt_class == 3 else 1, method, 0,
                         0, 0x77, attr_id, 0, 0)  # fmt: skip
    return header.ljust(256, b"\0")


def _tcp_segment(payload: bytes) -> bytes:
    """A checksummed TCP segment (no IP header) from SRC to DST."""
    tcp = bytearray(struct.pack("!HHIIBBHHH", 40001, 5201, 9, 77, 5 << 4, 0x10, 502, 0, 0)
                    + payload)  # fmt: skip
    pseudo = SRC + DST + struct.pack("!BBH", 0, 6, len(tcp))
    tcp[16:18] = wire.ip_checksum(pseudo + bytes(tcp)).to_bytes(2, "big")
    return bytes(tcp)


def write_pcap(path: Path, linktype: int, records: list[bytes], nanoseconds: bool = True) -> None:
    out = [capture.pcap_header(linktype, nanoseconds=nanoseconds)]
    for i, data in enumerate(records):
        ts = T0 + i * 1000
        if linktype == capture.LINKTYPE_ERF:
            data = capture.erf_record(data, ts, interface=i % 2)
        out.append(capture.pcap_record(data, ts, nanoseconds=nanoseconds))
    path.write_bytes(b"".join(out))


def tshark(path: Path, fields: list[str], *opts: str) -> list[dict[str, str]]:
    args = ["tshark", "-r", str(path), "-T", "fields", "-E", "separator=/t", "-E",
            "occurrence=a", "-E", "aggregator=|", *opts]  # fmt: skip
    for f in fields:
        args += ["-e", f]
    run = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True)
    return [dict(zip(fields, line.split("\t"), strict=True)) for line in run.stdout.splitlines()]


def num(value: str) -> int:
    return int(value, 0)


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, str]]]:
    """Each case's frames as tshark decoded them, from one ERF file."""
    scenarios = _scenarios()
    path = tmp_path_factory.mktemp("capture") / "ib.pcap"
    write_pcap(path, capture.LINKTYPE_ERF, [p for ps in scenarios.values() for p in ps])
    decoded = tshark(path, FIELDS, *CHECKSUMS)
    assert len(decoded) == sum(len(ps) for ps in scenarios.values())
    out, at = {}, 0
    for name, packets in scenarios.items():
        out[name] = decoded[at : at + len(packets)]
        at += len(packets)
    return out


# ---------------------------------------------------------------- ERF records through tshark


def test_ud_icmp_echo_decodes_lrh_bth_deth_ipoib_ip_icmp(frames: dict) -> None:
    [f] = frames["echo"]
    assert f["frame.protocols"] == "erf:infiniband:ethertype:ip:icmp:data"
    assert f["frame.time_epoch"] == "1700000000.123456789"
    assert (num(f["infiniband.lrh.slid"]), num(f["infiniband.lrh.dlid"])) == (LID1, LID2)
    assert num(f["infiniband.lrh.lnh"]) == capture.LNH_IBA_LOCAL and not f["infiniband.grh.dgid"]
    assert num(f["infiniband.bth.opcode"]) == 0x64  # UD SEND only
    assert num(f["infiniband.bth.p_key"]) == PKEY
    assert num(f["infiniband.bth.destqp"]) == QPN2
    assert num(f["infiniband.deth.q_key"]) == 0x0B1B
    assert num(f["infiniband.deth.srcqp"]) == QPN1
    assert (f["ip.src"], f["ip.dst"]) == ("198.18.0.1", "198.18.0.2")
    assert f["icmp.type"] == "8" and f["icmp.checksum.status"] == "1"
    # LRH to ICRC in words: LRH 8, BTH 12, DETH 8, IPoIB 4 + 84, ICRC 4
    assert num(f["infiniband.lrh.pktlen"]) == (8 + 12 + 8 + 88 + 4) // 4


def test_broadcast_arp_has_a_grh_with_the_broadcast_mgid(frames: dict) -> None:
    [f] = frames["arp"]
    assert num(f["infiniband.lrh.lnh"]) == capture.LNH_IBA_GLOBAL
    assert num(f["infiniband.lrh.dlid"]) == MLID
    assert f["infiniband.grh.dgid"] == "ff12:401b:8001::ffff:ffff"
    assert f["infiniband.grh.sgid"] == "fe80::2:c903:a1:b201"
    assert num(f["infiniband.grh.nxthdr"]) == 0x1B
    assert num(f["infiniband.bth.destqp"]) == 0xFFFFFF
    assert num(f["infiniband.deth.q_key"]) == 0x0B1B
    assert f["arp.opcode"] == "1" and f["arp.hw.size"] == "20"
    assert (f["arp.src.proto_ipv4"], f["arp.dst.proto_ipv4"]) == ("198.18.0.1", "198.18.0.2")
    # IPoIB ARP is 56 bytes, 4-aligned: GRH PayLen = BTH 12 + DETH 8 + 4 + 56 + ICRC 4
    assert num(f["infiniband.grh.paylen"]) == 12 + 8 + 4 + 56 + 4


def test_multicast_ping_is_decoded_through_the_grh(frames: dict) -> None:
    [f] = frames["mcast_ping"]
    assert f["infiniband.grh.dgid"] == "ff12:401b:8001::ffff:ffff"
    assert (f["ip.dst"], f["icmp.type"]) == ("198.18.255.255", "8")


def test_lso_super_packet_goes_out_as_the_mss_segments_lso_makes(frames: dict) -> None:
    segs = frames["lso"]
    assert len(segs) == 4
    assert [num(f["infiniband.bth.psn"]) for f in segs] == [3, 4, 5, 6]  # after echo, arp, ping
    assert [num(f["tcp.seq_raw"]) for f in segs] == [1000, 2000, 3000, 4000]
    assert [num(f["tcp.len"]) for f in segs] == [MSS, MSS, MSS, 345]
    assert [num(f["ip.len"]) for f in segs] == [20 + 32 + n for n in (MSS, MSS, MSS, 345)]
    assert [num(f["ip.id"]) for f in segs] == [100, 101, 102, 103]
    assert [f["tcp.flags.push"] for f in segs] == ["0", "0", "0", "1"]
    assert all(f["ip.checksum.status"] == "1" and f["tcp.checksum.status"] == "1" for f in segs)


def test_ipv6_lso_and_checksum_offload_come_out_complete(frames: dict) -> None:
    segs = frames["lso6"]
    assert [num(f["tcp.seq_raw"]) for f in segs] == [5000, 6000, 7000]
    assert [num(f["ipv6.plen"]) for f in segs] == [20 + MSS, 20 + MSS, 20 + 500]
    assert [f["tcp.flags.push"] for f in segs] == ["0", "0", "1"]
    assert all(f["tcp.checksum.status"] == "1" for f in segs)
    [udp] = frames["udp"]
    assert udp["udp.checksum.status"] == "1"


def test_rc_ack_has_an_aeth(frames: dict) -> None:
    [f] = frames["ack"]
    assert num(f["infiniband.bth.opcode"]) == 0x11 and num(f["infiniband.bth.destqp"]) == RC1
    assert num(f["infiniband.aeth.syndrome.opcode"]) == 0  # ACK
    assert num(f["infiniband.aeth.syndrome.credit_count"]) == 31
    assert num(f["infiniband.aeth.msn"]) == 1 and num(f["infiniband.bth.psn"]) == 2
    assert (num(f["infiniband.lrh.slid"]), num(f["infiniband.lrh.dlid"])) == (LID2, LID1)


def test_lso_segments_carry_the_super_packets_payload() -> None:
    vnet, packet = tcp_super_packet(SUPER, flags=0x19)  # ACK PSH FIN
    segs = capture.offloaded(vnet, packet)
    assert b"".join(s[52:] for s in segs) == SUPER
    assert [s[33] & 0x09 for s in segs] == [0, 0, 0, 0x09]  # FIN and PSH on the last only


def test_rc_message_is_cut_into_send_first_middle_last(frames: dict) -> None:
    first, middle, last = frames["rc"]
    assert [num(f["infiniband.bth.opcode"]) for f in (first, middle, last)] == [0, 1, 2]
    # the REQ named starting PSN 0 for this QP, the REP and RTU went on QP1
    assert [num(f["infiniband.bth.psn"]) for f in (first, middle, last)] == [0, 1, 2]
    assert [f["infiniband.bth.a"] for f in (first, middle, last)] == ["0", "0", "1"]
    assert all(num(f["infiniband.bth.destqp"]) == RC2 for f in (first, middle, last))
    assert all(num(f["infiniband.bth.p_key"]) == PKEY for f in (first, middle, last))
    assert all(not f["infiniband.deth.q_key"] for f in (first, middle, last))
    message = 4 + 20 + 20 + len(BIG)  # IPoIB header, IP, TCP, payload
    pad = -(message - 2 * MTU) % 4
    assert [num(f["infiniband.lrh.pktlen"]) * 4 for f in (first, middle, last)] == [
        8 + 12 + MTU + 4,
        8 + 12 + MTU + 4,
        8 + 12 + message - 2 * MTU + pad + 4,
    ]
    assert num(last["infiniband.bth.padcnt"]) == pad
    assert (first["ip.src"], first["ip.dst"]) == ("198.18.0.1", "198.18.0.2")
    [rc_short] = frames["rc_short"]
    assert num(rc_short["infiniband.bth.opcode"]) == 4 and rc_short["icmp.type"] == "8"
    assert num(rc_short["infiniband.bth.psn"]) == 3 and rc_short["infiniband.bth.a"] == "1"


def test_cm_req_is_a_cm_mad_on_qp1(frames: dict) -> None:
    [f] = frames["req"]
    assert num(f["infiniband.bth.destqp"]) == 1 and num(f["infiniband.deth.srcqp"]) == 1
    assert num(f["infiniband.deth.q_key"]) == 0x80010000
    assert num(f["infiniband.bth.p_key"]) == PKEY
    assert (num(f["infiniband.lrh.slid"]), num(f["infiniband.lrh.dlid"])) == (LID1, LID2)
    assert num(f["infiniband.mad.mgmtclass"]) == 0x07
    assert num(f["infiniband.mad.classversion"]) == 2 and num(f["infiniband.mad.method"]) == 3
    assert num(f["infiniband.mad.attributeid"]) == 0x0010
    assert num(f["infiniband.mad.transactionid"]) == 0x5151
    assert num(f["infiniband.cm.req.localqpn"]) == RC1
    assert num(f["infiniband.cm.req.serviceid"]) == 0x1000000000000049
    assert num(f["infiniband.cm.req.pkey"]) == PKEY
    assert num(f["infiniband.cm.req.startpsn"]) == 0
    assert num(f["infiniband.cm.req.prim_locallid"]) == LID1
    assert num(f["infiniband.cm.req.prim_remotelid"]) == LID2
    assert f["infiniband.cm.req.prim_remotegid"] == "fe80::2:c903:a1:b301"
    # struct ipoib_cm_data: the UD QPN, IPOIB_CM_BUF_SIZE
    assert f["infiniband.cm.req.private"].startswith("00000048" + "0000fff4")


def test_cm_handshake_and_reject_attributes(frames: dict) -> None:
    [rep], [rtu], [rej] = frames["rep"], frames["rtu"], frames["rej"]
    assert [num(f["infiniband.mad.attributeid"]) for f in (rep, rtu, rej)] == [0x13, 0x14, 0x12]
    # the REP and RTU answer in the REQ's transaction
    assert num(rep["infiniband.mad.transactionid"]) == num(rtu["infiniband.mad.transactionid"])
    assert num(rep["infiniband.mad.transactionid"]) == 0x5151
    assert num(rep["infiniband.cm.rep.localqpn"]) == RC2
    assert num(rep["infiniband.cm.rep.remotecommid"]) == 0x5151
    assert rep["infiniband.cm.rep.private"].startswith("00000049")
    assert (num(rep["infiniband.lrh.slid"]), num(rep["infiniband.lrh.dlid"])) == (LID2, LID1)
    assert num(rej["infiniband.cm.rej.reason"]) == wire.IB_CM_REJ_INVALID_SERVICE_ID
    assert num(rej["infiniband.cm.rej.msgrej"]) == 0  # the REQ was rejected
    [dreq] = frames["dreq"]
    assert num(dreq["infiniband.mad.attributeid"]) == 0x15
    assert num(dreq["infiniband.cm.dreq.remotecommid"]) == RC2


def test_management_mads_go_on_qp1_and_on_qp0_over_vl15(frames: dict) -> None:
    [sa], [smp] = frames["sa"], frames["smp"]
    assert num(sa["infiniband.mad.mgmtclass"]) == 0x03 and num(sa["infiniband.lrh.vl"]) == 0
    assert num(sa["infiniband.mad.attributeid"]) == 0x0035
    assert num(sa["infiniband.deth.q_key"]) == 0x80010000
    assert num(smp["infiniband.mad.mgmtclass"]) == 0x01 and num(smp["infiniband.lrh.vl"]) == 15
    assert num(smp["infiniband.bth.destqp"]) == 0 and num(smp["infiniband.deth.srcqp"]) == 0


def test_no_malformed_packet_or_checksum_error(frames: dict) -> None:
    for name, fs in frames.items():
        for f in fs if name != "rc" else fs[1:]:
            assert not f["_ws.malformed"], (name, f["frame.protocols"])
            assert not f["_ws.expert.message"], (name, f["_ws.expert.message"])
    # Wireshark 4.0 does not reassemble RC SENDs: it dissects the IP packet in SEND FIRST
    # alone, cut short, so its length and the TCP checksum over the part look wrong there
    first = frames["rc"][0]
    assert not first["_ws.malformed"]
    assert [m.split(" [")[0] for m in first["_ws.expert.message"].split("|")] == [
        "IPv4 total length exceeds packet length (2044 bytes)",
        "Bad checksum",
    ]


# ---------------------------------------------------------------- pure parts


def test_cm_dreq_names_the_other_ends_qpn_learned_from_the_handshake() -> None:
    psns = capture.PsnCounter()
    for message, route in ((REQ, ROUTE1), (REP, ROUTE2), (RTU, ROUTE1), (DREQ, ROUTE1)):
        [packet] = psns.packets(message.pack(), mtu=MTU, route=route)
    mad = packet[8 + 12 + 8 : -6]
    assert len(mad) == capture.MAD_SIZE
    # DREQ (IBA Table 112): local and remote communication IDs, then the remote QPN
    assert struct.unpack_from("!III", mad, 24) == (0x5151, RC2, RC2 << 8)


def test_psns_count_per_sending_qp_and_restart_with_a_connection() -> None:
    psns = capture.PsnCounter()
    echo = ud_message(icmp_echo())

    def psn(packet: bytes) -> int:
        return int.from_bytes(packet[8 + 9 : 8 + 12], "big")

    assert [psn(psns.packets(echo, mtu=MTU)[0]) for _ in range(3)] == [0, 1, 2]
    other = ud(src_qpn=0x99) + echo[wire.UdHeader.SIZE :]  # another QP
    assert psn(psns.packets(other, mtu=MTU)[0]) == 0
    assert psn(psns.packets(echo, mtu=MTU)[0]) == 3
    rc = rc_message(icmp_echo(BIG))
    assert [psn(p) for p in psns.packets(rc, mtu=MTU)] == [0, 1, 2]
    assert [psn(p) for p in psns.packets(rc, mtu=MTU)] == [3, 4, 5]
    psns.packets(REQ.pack(), mtu=MTU, route=ROUTE1)  # the QPN is used for a new connection
    assert [psn(p) for p in psns.packets(rc, mtu=MTU)] == [0, 1, 2]
    assert psn(capture.ib_packets(echo, psn=0xFFFFFF, mtu=MTU)[0]) == 0xFFFFFF


def test_unknown_or_short_messages_make_no_packets() -> None:
    assert capture.ib_packets(b"", psn=0, mtu=MTU) == []
    assert capture.ib_packets(bytes([9]) + bytes(60), psn=0, mtu=MTU) == []
    assert capture.ib_packets(ud()[:20], psn=0, mtu=MTU) == []
    assert capture.ib_packets(REQ.pack()[:10], psn=0, mtu=MTU) == []
    assert capture.PsnCounter().packets(b"\x02", mtu=MTU) == []
    assert capture.ipoib_records(REQ.pack()) == []


def test_erf_record_header_fields() -> None:
    packet = capture.ib_packets(ud_message(icmp_echo()), psn=0, mtu=MTU)[0]
    record = capture.erf_record(packet, T0, interface=1, lost=70000)
    ts, rtype, flags = struct.unpack_from("<QBB", record)
    rlen, lctr, wlen = struct.unpack_from("!HHH", record, 10)
    assert ts >> 32 == T0 // 10**9 and round((ts & 0xFFFFFFFF) * 1e9 / 2**32) == 123456789
    assert (rtype, flags) == (21, 0x05)
    assert (rlen, lctr, wlen) == (16 + len(packet), 0xFFFF, len(packet))
    assert record[16:] == packet


def test_pcap_records_truncate_to_the_snaplen() -> None:
    header = capture.pcap_header(capture.LINKTYPE_IPOIB, 100, nanoseconds=False)
    assert struct.unpack("<IHHiIII", header) == (0xA1B2C3D4, 2, 4, 0, 0, 100, 242)
    record = capture.pcap_record(bytes(300), T0, snaplen=100, nanoseconds=False)
    assert struct.unpack_from("<IIII", record) == (1_700_000_000, 123456, 100, 300)
    assert len(record) == 16 + 100


def test_crcs_cover_what_the_spec_says() -> None:
    """The ICRC ignores the variant fields (VL; with a GRH the LRH, TClass, FlowLabel and
    HopLmt), the VCRC covers everything."""
    base = dict(slid=LID1, dlid=LID2, opcode=0x64, pkey=PKEY, dest_qp=QPN2, psn=1,
                payload=b"abc", ext=capture.deth(0x0B1B, QPN1))  # fmt: skip
    plain = capture.ib_packet(**base)  # type: ignore[arg-type]
    other_vl = capture.ib_packet(vl=3, **base)  # type: ignore[arg-type]
    other_sl = capture.ib_packet(sl=3, **base)  # type: ignore[arg-type]
    assert plain[-6:-2] == other_vl[-6:-2] != other_sl[-6:-2]
    assert plain[-2:] != other_vl[-2:]
    g = capture.ib_packet(gids=(GID1, MGID), **base)  # type: ignore[arg-type]
    g_routed = capture.ib_packet(
        gids=(GID1, MGID), sl=5, hop_limit=3, tclass=9, flow_label=0x12345, **base
    )  # type: ignore[arg-type]
    assert g[-6:-2] == g_routed[-6:-2]
    # the VCRC against CRC-16 0x100B computed bit by bit, for lengths around its rounds
    for n in [*range(40), 255, 256, 257, 1000, 2110, 4150]:
        data = bytes((i * 37 + n) % 256 for i in range(n))
        assert capture.vcrc(data) == (0xFFFF ^ _crc16_reflected(data)).to_bytes(2, "little"), n
    assert len(plain) == 8 + 12 + 8 + 4 + 4 + 2  # payload padded to 4


def test_icrc_of_a_global_packet_is_rxes_roce_icrc() -> None:
    """rxe_icrc.c's way for a packet that starts with a GRH (RoCE v1): crc32_le seeded with
    0xdebb20e3 (the CRC of the 8 bytes of ones standing for the LRH), the GRH's TClass,
    FlowLabel and HopLmt and the BTH's Resv8a as ones, the result inverted and stored
    little-endian."""
    packet = capture.ib_packet(slid=LID1, dlid=MLID, opcode=0x64, pkey=PKEY, dest_qp=0xFFFFFF,
                               psn=9, payload=b"IPoIB!", ext=capture.deth(0x0B1B, QPN1),
                               gids=(GID1, MGID), tclass=5, flow_label=0xABCDE,
                               hop_limit=7)  # fmt: skip
    body = bytearray(packet[8:-6])
    body[0:4] = (struct.unpack("!I", body[0:4])[0] | 0x0FFFFFFF).to_bytes(4, "big")
    body[7] = 0xFF
    body[40 + 4] = 0xFF
    crc = 0xDEBB20E3
    for byte in bytes(body):
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xEDB88320 if crc & 1 else crc >> 1
    assert packet[-6:-2] == struct.pack("<I", ~crc & 0xFFFFFFFF)


def _crc16_reflected(data: bytes) -> int:
    """CRC-16 0x100B, bit by bit (reflected, seed 0xFFFF), independent of the table."""
    crc = 0xFFFF
    for byte in data:
        for bit in range(8):
            top = (crc ^ (byte >> bit)) & 1
            crc >>= 1
            if top:
                crc ^= 0xD008
    return crc


def test_filter_on_lid_qpn_and_pkey() -> None:
    echo = capture.ib_packets(ud_message(icmp_echo()), psn=0, mtu=MTU)[0]
    [req] = capture.ib_packets(REQ.pack(), psn=0, mtu=MTU, route=ROUTE1)
    rc = capture.ib_packets(rc_message(icmp_echo()), psn=0, mtu=MTU, route=ROUTE1)[0]
    arp = capture.ib_packets(ud_message(arp_request(), wire.ETH_P_ARP, dst_qpn=wire.MCAST_QPN,
                                        dlid=MLID, dgid=MGID), psn=0, mtu=MTU)[0]  # fmt: skip
    fields = capture.IbFields.parse
    assert fields(echo) == capture.IbFields(LID1, LID2, PKEY, QPN2, QPN1)
    assert fields(arp) == capture.IbFields(LID1, MLID, PKEY, 0xFFFFFF, QPN1)  # past the GRH
    assert fields(rc) == capture.IbFields(LID1, LID2, PKEY, RC2, None)
    f = capture.IbFilter
    assert f().matches(echo) and f().matches(b"junk")
    assert f(lid=LID1).matches(echo) and f(lid=LID2).matches(echo) and not f(lid=3).matches(echo)
    assert f(qpn=QPN1).matches(echo) and f(qpn=QPN2).matches(echo)
    assert not f(qpn=1).matches(echo) and f(qpn=1).matches(req)
    assert f(pkey=0x0001).matches(echo)  # the limited member's P_Key, same partition
    assert not f(pkey=0xFFFF).matches(echo)
    assert f(lid=LID2, qpn=QPN1, pkey=PKEY).matches(echo)
    assert not f(lid=LID2, qpn=QPN1, pkey=0x7FFF).matches(echo)
    assert f(qpn=RC2).matches(rc) and not f(qpn=RC1).matches(rc)
    assert f(qpn=RC1).matches(rc, src_qp=RC1)  # the RC message's source, from the caller
    assert not f(lid=LID1).matches(b"\x00" * 30)


def test_a_stream_on_stdin_is_read_as_it_comes() -> None:
    """`capture -w - | tshark -r -`: the file header, then records, nothing to seek."""
    packets = capture.ib_packets(ud_message(icmp_echo()), psn=0, mtu=MTU)
    record = capture.pcap_record(capture.erf_record(packets[0], T0), T0)
    stream = capture.pcap_header(capture.LINKTYPE_ERF) + record
    run = subprocess.run(["tshark", "-r", "-", "-T", "fields", "-e", "infiniband.deth.q_key",
                          "-e", "icmp.type"], input=stream, capture_output=True, timeout=60,
                         check=True)  # fmt: skip
    assert run.stdout.split() == [b"0x0000000000000b1b", b"8"]


# ---------------------------------------------------------------- LINKTYPE_IPOIB


def test_ipoib_records_decode_with_tcpdump_and_tshark(tmp_path: Path) -> None:
    vnet, packet = tcp_super_packet(SUPER)
    messages = [
        ud_message(icmp_echo()),
        ud_message(arp_request(), wire.ETH_P_ARP, dst_qpn=wire.MCAST_QPN, dlid=MLID, dgid=MGID),
        rc_message(icmp_echo(reply=True)),
        ud_message(packet, vnet=vnet),
    ]
    records = [r for m in messages for r in capture.ipoib_records(m)]
    assert len(records) == 3 + 4 and all(len(r) > 44 for r in records)
    path = tmp_path / "ipoib.pcap"
    write_pcap(path, capture.LINKTYPE_IPOIB, records, nanoseconds=False)
    run = subprocess.run(["tcpdump", "-r", str(path), "-n", "-S", "-tt"], capture_output=True,
                         text=True, timeout=60, check=True)  # fmt: skip
    lines = run.stdout.splitlines()
    assert len(lines) == 7
    assert lines[0].startswith("1700000000.123456 ")
    assert "198.18.0.1 > 198.18.0.2: ICMP echo request, id 4660, seq 1, length 64" in lines[0]
    assert "ARP, Request who-has 198.18.0.2 tell 198.18.0.1" in lines[1]
    assert "198.18.0.1 > 198.18.0.2: ICMP echo reply" in lines[2]
    assert [line.split("seq ")[1].split(",")[0] for line in lines[3:]] == [
        "1000:2000",
        "2000:3000",
        "3000:4000",
        "4000:4345",
    ]
    fields = ["ipoib.daddr.qpn", "ipoib.dgid", "ipoib.grh.sqpn", "ipoib.type", "ip.src",
              "arp.opcode", "_ws.expert.message", "_ws.malformed"]  # fmt: skip
    decoded = tshark(path, fields, *CHECKSUMS)
    assert [d["ipoib.type"] for d in decoded[:3]] == ["0x0800", "0x0806", "0x0800"]
    assert num(decoded[0]["ipoib.daddr.qpn"]) == QPN2 and decoded[0]["ipoib.dgid"] == (
        "fe80::2:c903:a1:b301"
    )
    assert num(decoded[1]["ipoib.grh.sqpn"]) == QPN1
    assert decoded[1]["ipoib.dgid"] == "ff12:401b:8001::ffff:ffff"
    assert num(decoded[2]["ipoib.daddr.qpn"]) == RC2
    assert all(not d["_ws.expert.message"] and not d["_ws.malformed"] for d in decoded)
