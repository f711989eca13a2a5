"""wire: addresses, MGID mapping, the kernel's text formats and number parsing."""

from __future__ import annotations

import errno

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
    assert wire._csum(icmp[:20]) == 0  # header checksum
    body = icmp[20:]
    assert body[:2] == b"\x03\x04" and int.from_bytes(body[6:8], "big") == 2044
    assert body[8:] == ip[:28] and wire._csum(body) == 0


def test_icmpv6_packet_too_big():
    src, dst = bytes.fromhex("fd18" + "0" * 26 + "01"), bytes.fromhex("fd18" + "0" * 26 + "02")
    ip6 = (6 << 28).to_bytes(4, "big") + (3000).to_bytes(2, "big") + b"\x11\x40" + src + dst
    ip6 += bytes(3000)
    ptb = wire.icmpv6_packet_too_big(ip6, 2044)
    assert ptb[8:24] == dst and ptb[24:40] == src and ptb[40] == 2
    assert int.from_bytes(ptb[44:48], "big") == 2044
    assert len(ptb) == 1280
    assert wire.icmpv6_checksum(ptb[8:24], ptb[24:40], ptb[40:]) == 0
