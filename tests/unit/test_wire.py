"""wire: addresses, MGID mapping, the kernel's text formats and number parsing, the headers
and CM messages of the emulated wire, and its UDP segmentation."""

from __future__ import annotations

import errno
import os
import struct

import pytest

from ipoibfs import wire
from ipoibfs.errors import KernelError

GID = bytes.fromhex("fe800000000000000002c90300000101")


def test_hw_addr_layout():
    addr = wire.hw_addr(0x80, 0x48, GID)
    assert len(addr) == wire.INFINIBAND_ALEN
    assert wire.format_lladdr(addr) == (
        "80:00:00:48:fe:80:00:00:00:00:00:00:00:02:c9:03:00:00:01:01"
    )
    assert wire.hw_addr(0, 0x123456, GID)[:4] == b"\x00\x12\x34\x56"


def test_broadcast_address_carries_the_pkey():
    assert wire.format_lladdr(wire.broadcast_addr(0xFFFF)) == (
        "00:ff:ff:ff:ff:12:40:1b:ff:ff:00:00:00:00:00:00:ff:ff:ff:ff"
    )
    assert wire.broadcast_addr(0x8001)[8:10] == b"\x80\x01"
    assert wire.broadcast_mgid(0x8001) == wire.broadcast_addr(0x8001)[4:]


@pytest.mark.parametrize(
    ("group", "mgid"),
    [
        ("224.0.0.1", "ff12:401b:ffff:0:0:0:0:1"),
        ("239.1.2.3", "ff12:401b:ffff:0:0:0:f01:203"),  # only the low 28 bits
        ("224.0.0.251", "ff12:401b:ffff:0:0:0:0:fb"),
    ],
)
def test_ipv4_multicast_mapping(group, mgid):
    bcast = wire.broadcast_addr(0xFFFF)
    assert wire.format_gid_debugfs(wire.ipv4_mc_mgid(group, bcast)) == mgid


@pytest.mark.parametrize(
    ("group", "mgid"),
    [
        ("ff02::1", "ff12:601b:ffff:0:0:0:0:1"),
        ("ff02::1:ffaa:bbcc", "ff12:601b:ffff:0:0:1:ffaa:bbcc"),
        ("ff05::2", "ff12:601b:ffff:0:0:0:0:2"),  # scope comes from the broadcast address
    ],
)
def test_ipv6_multicast_mapping(group, mgid):
    bcast = wire.broadcast_addr(0xFFFF)
    assert wire.format_gid_debugfs(wire.ipv6_mc_mgid(group, bcast)) == mgid


def test_multicast_mapping_uses_the_partition():
    bcast = wire.broadcast_addr(0x8001)
    assert wire.format_gid_debugfs(wire.ipv4_mc_mgid("224.0.0.1", bcast)) == (
        "ff12:401b:8001:0:0:0:0:1"
    )


def test_gid_formats():
    assert wire.format_gid_sysfs(GID) == "fe80:0000:0000:0000:0002:c903:0000:0101"
    assert wire.format_gid_debugfs(GID) == "fe80:0:0:0:2:c903:0:101"
    assert wire.format_guid(0x0002C90300000100) == "0002:c903:0000:0100"


@pytest.mark.parametrize(
    ("mbps", "text"), [(2500, "2.500"), (10000, "10.0"), (14062, "14.62"), (100000, "100.0")]
)
def test_path_rate_keeps_the_kernel_quirk(mbps, text):
    assert wire.format_path_rate(mbps) == text.rjust(len(text.split(".")[1]) + 9)


@pytest.mark.parametrize(
    ("buf", "value"),
    [
        (b"0x8001\n", 0x8001),
        (b"32769", 32769),
        (b"010", 8),
        (b"  \t0x7fff", 0x7FFF),
        (b"0x8002xyz", 0x8002),
        (b"-1", -1),
        (b"0x", 0),
        (b"4294967297", 1),  # truncated to a C int
        (b"0xffffffff", -1),
        (b"abc", None),
        (b"+5", None),
        (b"", None),
        (b"\n", None),
        (b"-", None),
    ],
)
def test_sscanf_int(buf, value):
    assert wire.sscanf_int(buf) == value


@pytest.mark.parametrize(
    ("buf", "value"),
    [(b"1", 1), (b"0x10", 16), (b"010", 8), (b" 1", 0), (b"-1", 0), (b"junk", 0), (b"7\n", 7)],
)
def test_simple_strtoul(buf, value):
    assert wire.simple_strtoul(buf) == value


def test_c_int_truncation():
    assert wire.c_int(0x80000000) == -(1 << 31)
    assert wire.c_int(4294967297) == 1


@pytest.mark.parametrize(
    ("buf", "value"), [(b"1500", 1500), (b"1500\n", 1500), (b"+1500", 1500), (b"0x800", 2048)]
)
def test_kstrtoul_accepts(buf, value):
    assert wire.kstrtoul(buf) == value


@pytest.mark.parametrize(
    ("buf", "err"),
    [
        (b"", errno.EINVAL),
        (b"abc", errno.EINVAL),
        (b" 1500", errno.EINVAL),
        (b"1500 ", errno.EINVAL),
        (b"1500\n\n", errno.EINVAL),
        (b"-1", errno.EINVAL),
        (b"99999999999999999999999", errno.ERANGE),
    ],
)
def test_kstrtoul_refuses(buf, err):
    with pytest.raises(KernelError) as e:
        wire.kstrtoul(buf)
    assert e.value.errno == err


def test_jiffies_start_near_the_wrap():
    assert wire.INITIAL_JIFFIES == 4294892296
    assert wire.jiffies(2.0) == 4294892296 + 500


def test_icmp_frag_needed_quotes_the_packet_and_carries_the_mtu():
    ip = bytes.fromhex("4500") + (3028).to_bytes(2, "big") + bytes.fromhex("00004000400100")
    ip = ip[:10] + b"\0\0" + bytes([198, 18, 0, 1, 198, 18, 0, 2]) + b"\x08\0" + bytes(3006)
    icmp = wire.icmp_frag_needed(ip, 2044)
    assert icmp[12:16] == bytes([198, 18, 0, 2]) and icmp[16:20] == bytes([198, 18, 0, 1])
    assert wire.ip_checksum(icmp[:20]) == 0  # header checksum
    body = icmp[20:]
    assert body[:2] == b"\x03\x04" and int.from_bytes(body[6:8], "big") == 2044
    assert body[8:] == ip[:28] and wire.ip_checksum(body) == 0


def test_icmpv6_packet_too_big():
    src, dst = bytes.fromhex("fd18" + "0" * 26 + "01"), bytes.fromhex("fd18" + "0" * 26 + "02")
    ip6 = (6 << 28).to_bytes(4, "big") + (3000).to_bytes(2, "big") + b"\x11\x40" + src + dst
    ip6 += bytes(3000)
    ptb = wire.icmpv6_packet_too_big(ip6, 2044)
    assert ptb[8:24] == dst and ptb[24:40] == src and ptb[40] == 2
    assert int.from_bytes(ptb[44:48], "big") == 2044
    assert len(ptb) == 1280
    assert wire.icmpv6_checksum(ptb[8:24], ptb[24:40], ptb[40:]) == 0


# ---------------------------------------------------------------- headers


def test_ud_header_layout_and_round_trip():
    mgid = wire.broadcast_mgid(0xFFFF)
    header = wire.UdHeader(slid=0x0102, dlid=0xC000, src_qpn=0x48, dst_qpn=wire.MCAST_QPN,
                           pkey=0xFFFF, qkey=wire.IPOIB_QKEY, sgid=GID, dgid=mgid)  # fmt: skip
    packed = header.pack()
    assert len(packed) == wire.UdHeader.SIZE == 54
    # kind, pad, SLID, DLID, source QPN, destination QPN, P_Key, pad, Q_Key, SGID, DGID
    fields = "00 00 0102 c000 00000048 00ffffff ffff 0000 00000b1b"
    assert packed == bytes.fromhex(fields) + GID + mgid
    assert wire.UdHeader.unpack_from(packed) == header
    assert wire.UdHeader.unpack_from(memoryview(packed + b"payload")) == header
    assert wire.UD_VNET_OFFSET == 54 + wire.IPOIB_ENCAP_LEN


def test_rc_header_layout_and_round_trip():
    header = wire.RcHeader(slid=3, dlid=4, src_qpn=0x4A, dst_qpn=0x123456)
    packed = header.pack()
    assert len(packed) == wire.RcHeader.SIZE == 14
    assert packed == bytes.fromhex("02 00 0003 0004 0000004a 00123456")
    assert wire.RcHeader.unpack_from(bytearray(packed) + b"\0" * 14) == header
    assert wire.RC_VNET_OFFSET == 14 + wire.IPOIB_ENCAP_LEN


def test_a_short_header_does_not_unpack():
    with pytest.raises(struct.error):
        wire.UdHeader.unpack_from(bytes(wire.UdHeader.SIZE - 1))
    with pytest.raises(struct.error):
        wire.RcHeader.unpack_from(b"\x02")


def test_ipoib_header():
    assert wire.ipoib_header(wire.ETH_P_IPV6) == b"\x86\xdd\0\0"
    assert len(wire.ipoib_header(wire.ETH_P_ARP)) == wire.IPOIB_ENCAP_LEN
    assert wire.NO_OFFLOAD == bytes(wire.VNET_HDR_LEN)


def test_arp_layout_and_round_trip():
    hw = wire.hw_addr(wire.IPOIB_FLAGS_RC, 0x48, GID)
    arp = wire.ArpPacket(wire.ARPOP_REQUEST, hw, bytes([198, 18, 0, 1]), bytes(20),
                         bytes([198, 18, 0, 2]))  # fmt: skip
    packed = arp.pack()
    assert packed[:8] == bytes.fromhex("0020 0800 14 04 0001")
    assert wire.ArpPacket.unpack(packed) == arp
    assert wire.ArpPacket.unpack(packed[:-1]) is None
    assert wire.ArpPacket.unpack(b"\x00\x01" + packed[2:]) is None  # Ethernet's hardware type


# ---------------------------------------------------------------- connected mode

SERVICE_ID = wire.IPOIB_CM_IETF_ID | 0x48
CM_MESSAGES = [
    wire.CmReq(slid=2, local_comm_id=0x4A, service_id=SERVICE_ID, qpn=0x4A,
               private=wire.CmData(0x48)),
    wire.CmRep(slid=3, local_comm_id=0x51, remote_comm_id=0x4A, service_id=SERVICE_ID,
               qpn=0x51, private=wire.CmData(0x48, 2048)),
    wire.CmRej(slid=3, local_comm_id=0, remote_comm_id=0x4A, service_id=SERVICE_ID,
               reason=wire.IB_CM_REJ_INVALID_SERVICE_ID),
    wire.CmRej(slid=2, local_comm_id=0x4A, remote_comm_id=0x51, qpn=0x4A,
               reason=wire.IB_CM_REJ_CONSUMER_DEFINED),
    wire.CmRtu(slid=2, local_comm_id=0x4A, remote_comm_id=0x51, qpn=0x4A),
    wire.CmDreq(slid=3, local_comm_id=0x51, remote_comm_id=0x4A, qpn=0x51),
    wire.CmDrep(slid=2, local_comm_id=0x4A, remote_comm_id=0x51),
]  # fmt: skip


@pytest.mark.parametrize("message", CM_MESSAGES, ids=lambda m: type(m).__name__)
def test_cm_messages_round_trip(message):
    packed = message.pack()
    assert len(packed) == wire.cm.CM_MESSAGE.size == 34
    assert packed[:2] == bytes([wire.KIND_CM, message.TYPE])
    assert wire.unpack_cm(packed) == message
    assert wire.unpack_cm(memoryview(packed + b"trailer")) == message


def test_cm_req_layout():
    # kind, type, SLID, local and remote comm IDs, service ID, QPN, reason, private data
    # (struct ipoib_cm_data: the UD QPN, IPOIB_CM_BUF_SIZE)
    fields = "01 01 0002 0000004a 00000000 1000000000000048 0000004a 0000 00000048 0000fff4"
    assert CM_MESSAGES[0].pack() == bytes.fromhex(fields)


def test_cm_messages_pack_the_fields_they_do_not_carry_as_zero():
    fields = "01 03 0002 0000004a 00000051 0000000000000000 0000004a 001c 0000000000000000"
    assert CM_MESSAGES[3].pack() == bytes.fromhex(fields)
    fields = "01 06 0002 0000004a 00000051 0000000000000000 00000000 0000 0000000000000000"
    assert CM_MESSAGES[6].pack() == bytes.fromhex(fields)


def test_cm_fields_a_type_does_not_carry_are_ignored_on_receipt():
    raw = wire.cm.CM_MESSAGE.pack(wire.KIND_CM, wire.cm.CM_DREP, 2, 0x4A, 0x51, 7, 8, 9, b"x" * 8)
    assert wire.unpack_cm(raw) == CM_MESSAGES[6]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        CM_MESSAGES[0].pack()[:-1],  # short
        b"\x00" + CM_MESSAGES[0].pack()[1:],  # a UD datagram's kind
        b"\x02" + CM_MESSAGES[0].pack()[1:],  # an RC message's kind
        b"\x01\x00" + CM_MESSAGES[0].pack()[2:],  # unknown types
        b"\x01\x07" + CM_MESSAGES[0].pack()[2:],
        b"\x01\xff" + CM_MESSAGES[0].pack()[2:],
    ],
)
def test_unpack_cm_refuses(data):
    assert wire.unpack_cm(data) is None


def test_cm_data_ignores_the_high_byte_of_the_qpn():
    data = wire.CmData(0x48)
    assert data.pack() == bytes.fromhex("000000480000fff4") and data.mtu == wire.IPOIB_CM_BUF_SIZE
    assert wire.CmData.unpack(data.pack()) == data
    assert wire.CmData.unpack(bytes.fromhex("ab0000480000fff4")) == data
    assert wire.CmData(0x7F000048).pack() == data.pack()
    assert wire.CmData.unpack(bytes.fromhex("ab00004800000800")) == wire.CmData(0x48, 2048)


def test_cm_messages_are_values():
    req = CM_MESSAGES[0]
    with pytest.raises(AttributeError):
        req.qpn = 1
    with pytest.raises(TypeError):
        wire.CmRtu(2, 0x4A, 0x51, 0x4A)  # fields by name only


# ---------------------------------------------------------------- UDP segmentation


def datagrams(number: int, message: bytes, *parts_at: int) -> list[bytes]:
    cuts = [0, *parts_at, len(message)]
    parts: list[bytes | memoryview] = [message[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]
    return [b"".join(bytes(p) for p in d) for d in wire.segments(number, parts)]


def test_segment_header_layout():
    sent = datagrams(0x01020304, b"hello")
    assert sent == [bytes.fromhex("01020304 00 01") + b"hello"]
    assert wire.SEGMENT_DATA == wire.UDP_PAYLOAD - wire.SEGMENT_HEADER.size


def test_a_small_message_is_one_datagram_and_comes_back_whole():
    sent = datagrams(7, b"hello, world", 5)
    assert len(sent) == 1
    assert bytes(wire.Reassembly().add("a", memoryview(sent[0]))) == b"hello, world"


def test_a_64k_message_is_cut_to_fit_udp_and_rebuilt_in_any_order():
    message = os.urandom(65524 + 60)
    sent = datagrams(1, message, 60)
    assert len(sent) == 2 and all(len(d) <= wire.UDP_PAYLOAD for d in sent)
    r = wire.Reassembly()
    assert r.add("a", memoryview(sent[1])) is None
    assert r.add("a", memoryview(sent[0])) == message


def test_segments_of_different_senders_and_messages_do_not_mix():
    m1, m2 = os.urandom(wire.SEGMENT_DATA + 10), os.urandom(wire.SEGMENT_DATA + 20)
    a1, a2 = datagrams(1, m1), datagrams(1, m2)
    r = wire.Reassembly()
    assert r.add("a", memoryview(a1[0])) is None
    assert r.add("b", memoryview(a2[0])) is None
    assert r.add("b", memoryview(a2[1])) == m2
    assert r.add("a", memoryview(a1[1])) == m1


def test_a_message_that_lost_a_segment_is_given_up_not_kept_forever():
    r = wire.Reassembly(pending=2)
    lost = datagrams(1, os.urandom(wire.SEGMENT_DATA + 1))
    assert r.add("a", memoryview(lost[0])) is None
    for n in (2, 3):
        first = datagrams(n, os.urandom(wire.SEGMENT_DATA + 1))[0]
        assert r.add("a", memoryview(first)) is None
    # Message 1 was dropped to make room: its late second half alone completes nothing.
    assert r.add("a", memoryview(lost[1])) is None


def test_truncated_or_inconsistent_segments_are_dropped():
    r = wire.Reassembly()
    assert r.add("a", memoryview(b"\x00\x01")) is None
    good = datagrams(4, os.urandom(wire.SEGMENT_DATA + 1))
    bad = bytearray(good[1])
    bad[5] = 3  # claims three segments
    assert r.add("a", memoryview(good[0])) is None
    assert r.add("a", memoryview(bytes(bad))) is None
