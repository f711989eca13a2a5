"""The ip and ethtool front ends' parsing and output, without a host behind them."""

from __future__ import annotations

import json

import pytest

from ipoibfs.frontends import (
    Host,
    IpError,
    _ethtool_settings,
    _get_u16,
    _ipoib_options,
    _parse_generic,
    _rewrite_json,
    _rewrite_text,
)

ADDR = "80:00:00:49:fe:80:00:00:00:00:00:00:00:02:c9:03:00:00:01:01"
BRD = "00:ff:ff:ff:ff:12:40:1b:80:01:00:00:00:00:00:00:ff:ff:ff:ff"
STATS = {"rx_bytes": 123456789012, "rx_packets": 89, "rx_errors": 0, "rx_dropped": 2,
         "rx_missed_errors": 0, "multicast": 5, "tx_bytes": 42, "tx_packets": 1, "tx_errors": 3,
         "tx_dropped": 4, "tx_carrier_errors": 0, "collisions": 0, "rx_over_errors": 0}  # fmt: skip
CHILD = {"ifname": "ib0.8001", "parent": "ib0", "pkey": 0x8001, "mode": "connected",
         "umcast": 1, "address": ADDR, "broadcast": BRD, "statistics": STATS, "speed": 100000,
         "carrier": True}  # fmt: skip


class FakeHost(Host):
    def __init__(self, links: dict) -> None:
        super().__init__(mirror=None, real=["false"])
        self._links = links

    @property
    def links(self) -> dict:
        return self._links


HOST = FakeHost({"ib0.8001": CHILD})

TUN_TEXT = "".join(line + "\n" for line in (
    "5: ib0.8001: <POINTOPOINT,MULTICAST,UP,LOWER_UP> mtu 65520 qdisc pfifo_fast state UP mode "
    "DEFAULT group default qlen 256",
    "    link/infiniband  promiscuity 0  allmulti 0 minmtu 68 maxmtu 65535 ",
    "    tun type tun pi off vnet_hdr on persist off addrgenmode eui64 numtxqueues 1 ",
    "    RX:  bytes packets errors dropped  missed   mcast           ",
    "            10       1      0       0       0       0 ",
    "    TX:  bytes packets errors dropped carrier collsns           ",
    "            20       2      0       0       0       0 ",
    "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT group "
    "default qlen 1000",
    "    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00",
))  # fmt: skip


def test_an_ipoib_link_reads_as_iproute2_prints_the_kernel_driver():
    out = _rewrite_text(HOST, TUN_TEXT, brief=False).splitlines()
    # dev->flags of ib_ipoib: BROADCAST, not the TUN's POINTOPOINT (ipoib_setup_common).
    assert out[0].startswith("5: ib0.8001@ib0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 65520 ")
    assert (
        out[1]
        == f"    link/infiniband {ADDR} brd {BRD} promiscuity 0  allmulti 0 minmtu 68 maxmtu 65535 "
    )
    assert out[2] == ("    ipoib pkey 0x8001 mode connected umcast 0001 addrgenmode eui64 "
                      "numtxqueues 1 ")  # fmt: skip
    # -s: the driver's counters, columns widened for the widest number of both blocks.
    assert out[3] == "    RX:    bytes packets errors dropped  missed   mcast           "
    assert out[4] == "    123456789012      89      0       2       0       5 "
    assert out[6] == "              42       1      3       4       0       0 "
    assert out[7:] == TUN_TEXT.splitlines()[7:]  # other links untouched


def test_json_gets_the_ipoib_kind_and_driver_counters():
    tun = [{"ifname": "ib0.8001", "link_type": "infiniband",
            "linkinfo": {"info_kind": "tun", "info_data": {"type": "tun"}},
            "stats64": {"rx": {"bytes": 10, "packets": 1}, "tx": {"bytes": 20}}},
           {"ifname": "lo", "address": "00:00:00:00:00:00"}]  # fmt: skip
    out = json.loads(_rewrite_json(HOST, json.dumps(tun), pretty=False))
    assert out[0]["link"] == "ib0" and out[0]["address"] == ADDR
    assert out[0]["linkinfo"] == {"info_kind": "ipoib", "info_data": {
        "key": "0x8001", "mode": "connected", "umcast": "0001"}}  # fmt: skip
    assert out[0]["stats64"]["rx"]["bytes"] == 123456789012
    assert out[0]["stats64"]["tx"]["dropped"] == 4
    assert out[1] == tun[1]


def test_brief_output_names_the_parent_and_the_address():
    line = "ib0.8001         UP             <POINTOPOINT,MULTICAST,UP,LOWER_UP> \n"
    out = _rewrite_text(HOST, line, brief=True)
    assert out == f"ib0.8001@ib0     UP             {ADDR} <BROADCAST,MULTICAST,UP,LOWER_UP> \n"


def test_ip_link_arguments_are_read_as_iplink_parse_reads_them():
    assert _parse_generic(["ib0.8001", "link", "ib0", "mtu", "2000", "up"]) == (
        {"name": "ib0.8001", "link": "ib0"},
        ["mtu", "2000", "up"],
    )
    assert _parse_generic(["link", "ib0", "name", "x"]) == ({"link": "ib0", "name": "x"}, [])
    with pytest.raises(IpError, match="is a garbage"):
        _parse_generic(["a", "b"])
    with pytest.raises(IpError, match="not complete"):
        _parse_generic(["mtu"])


def test_ipoib_options_follow_ipoib_parse_opt():
    assert _ipoib_options(["pkey", "0x8001", "mode", "connected", "umcast", "1"]) == {
        "pkey": 0x8001, "mode": 1, "umcast": 1}  # fmt: skip
    assert _get_u16("010", "pkey is invalid") == 8  # get_u16 with base 0: octal
    for args, status in ((["pkey", "0x10000"], 255), (["mode", "fast"], 1), (["bogus"], 1)):
        with pytest.raises(IpError) as e:
            _ipoib_options(args)
        assert e.value.status == status


def test_ethtool_without_carrier_reads_the_zeroed_settings():
    down = _ethtool_settings({**CHILD, "speed": None, "carrier": False})
    assert "\tSpeed: Unknown!\n" in down and "\tDuplex: Unknown! (255)\n" in down
    assert "\tPort: Twisted Pair\n" in down and "\tPHYAD: 0\n" in down
    up = _ethtool_settings(CHILD)
    assert "\tSpeed: 100000Mb/s\n" in up and "\tLink detected: yes\n" in up
