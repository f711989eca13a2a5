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
    # ipoib_ndo_init: max_mtu IPOIB_CM_MTU, min_mtu left 0 (the TUN's are 68 and 65535).
    assert out[1] == (f"    link/infiniband {ADDR} brd {BRD} promiscuity 0  allmulti 0 minmtu 0 "
                      "maxmtu 65520 ")  # fmt: skip
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


# ---------------------------------------------------------------- ip addr, maddr, JSON


def test_flags_follow_dev_flags_of_ib_ipoib():
    from ipoibfs.frontends import _ipoib_flags

    assert _ipoib_flags(["POINTOPOINT", "MULTICAST", "NOARP", "UP", "LOWER_UP"], False) == [
        "BROADCAST", "MULTICAST", "UP", "LOWER_UP"]  # fmt: skip
    # NO-CARRIER is printed first, M-DOWN last (print_link_flags).
    assert _ipoib_flags(["NO-CARRIER", "POINTOPOINT", "MULTICAST", "UP"], True) == [
        "NO-CARRIER", "BROADCAST", "MULTICAST", "UP", "M-DOWN"]  # fmt: skip


def test_oneline_link_keeps_the_address():
    line = ("5: ib0.8001: <POINTOPOINT,MULTICAST,UP,LOWER_UP> mtu 65520 qdisc pfifo_fast state "
            "UP mode DEFAULT group default qlen 256\\    link/infiniband \n")  # fmt: skip
    out = _rewrite_text(HOST, line, brief=False, oneline=True)
    assert out == ("5: ib0.8001@ib0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 65520 qdisc pfifo_fast "
                   f"state UP mode DEFAULT group default qlen 256\\    link/infiniband {ADDR} brd "
                   f"{BRD}\n")  # fmt: skip


def test_json_is_written_as_iproute2s_json_writer_does():
    from ipoibfs.fronthost import dumps, loads

    value = [{"ifindex": 1, "flags": ["UP", "LOWER_UP"], "empty": [], "info": {"a": None},
              "alias": 'tab\there "q" \\ é'}]  # fmt: skip
    assert dumps(value) == ('[{"ifindex":1,"flags":["UP","LOWER_UP"],"empty":[],"info":{"a":null},'
                            '"alias":"tab\\there \\"q\\" \\\\ é"}]\n')  # fmt: skip
    assert dumps(value, pretty=True) == (
        '[ {\n        "ifindex": 1,\n        "flags": [ "UP","LOWER_UP" ],\n'
        '        "empty": [ ],\n        "info": {\n            "a": null\n        },\n'
        '        "alias": "tab\\there \\"q\\" \\\\ é"\n    } ]\n')  # fmt: skip
    assert loads(dumps(value)) == value
    with pytest.raises(ValueError):
        loads("[1] x")


def test_ip_groups_map_to_the_dev_mc_list_of_an_ipoib_device():
    import ipaddress

    from ipoibfs.frontends import _dev_mc, _mc_map

    brd = bytes.fromhex(BRD.replace(":", ""))
    assert _mc_map(ipaddress.ip_address("224.0.0.1").packed, brd).hex(":") == (
        "00:ff:ff:ff:ff:12:40:1b:80:01:00:00:00:00:00:00:00:00:00:01")  # fmt: skip
    assert _mc_map(ipaddress.ip_address("239.1.2.3").packed, brd).hex(":")[-11:] == (
        "0f:01:02:03")  # the low 28 bits  # fmt: skip
    assert _mc_map(ipaddress.ip_address("ff02::1:ff00:101").packed, brd).hex(":") == (
        "00:ff:ff:ff:ff:12:60:1b:80:01:00:00:00:00:00:01:ff:00:01:01")  # fmt: skip
    v6 = [ipaddress.ip_address(a).packed for a in
          ("ff02::1:ff00:101", "ff02::1:ff00:1", "ff02::1", "ff01::1")]  # /proc order  # fmt: skip
    v4 = [ipaddress.ip_address("224.0.0.1").packed]
    # ff01::1 is below link-local scope; 224.0.0.1 came with ip_mc_up, before the link-local.
    assert [a.hex(":") for a, _ in _dev_mc(CHILD, v4, v6)] == [
        "00:ff:ff:ff:ff:12:60:1b:80:01:00:00:00:00:00:00:00:00:00:01",
        "00:ff:ff:ff:ff:12:60:1b:80:01:00:00:00:00:00:01:ff:00:00:01",
        "00:ff:ff:ff:ff:12:40:1b:80:01:00:00:00:00:00:00:00:00:00:01",
        "00:ff:ff:ff:ff:12:60:1b:80:01:00:00:00:00:00:01:ff:00:01:01"]  # fmt: skip
    # Two groups that map alike are one entry with two users (ff02::1 and ff05::1).
    both = _dev_mc(CHILD, [], [ipaddress.ip_address(a).packed for a in ("ff05::1", "ff02::1")])
    assert [n for _, n in both] == [2]


def test_ip_options_are_matched_as_ip_c_matches_them():
    from ipoibfs.frontends import _ip_command, _ip_options

    assert _ip_options(["-d", "-j", "-p", "-s", "-o", "addr"]) == (
        {"details", "json", "pretty", "stats", "oneline"}, 5)  # fmt: skip
    assert _ip_options(["-br", "-4", "-f", "inet", "link"]) == ({"brief", "family"}, 4)
    assert _ip_options(["-b", "file"]) is None  # -b is -batch: the real ip's
    assert _ip_options(["-n", "other", "link"]) is None  # another namespace
    assert _ip_options(["-zzz"]) is None  # the real ip says it is unknown
    assert [_ip_command(w) for w in ("a", "addrl", "m", "l", "n", "r")] == [
        "address", "addrlabel", "maddress", "link", "neighbor", "route"]  # fmt: skip


def test_ifconfig_formats_follow_net_tools():
    from ipoibfs.frontends import _atoi, _ifconfig_flags, _ipoib_iff, _pr_ib, _size

    assert _ifconfig_flags(_ipoib_iff(4177)) == "flags=4163<UP,BROADCAST,RUNNING,MULTICAST>"
    assert _pr_ib(CHILD) == "80:00:00:49:FE:80:00:00:00:00:00:00:00:00:00:00:00:00:00:00"
    assert [_size(n) for n in (0, 1024, 1025, 123456789, 2**61)] == [
        "0.0 B", "1024.0 B", "1.0 KiB", "117.7 MiB", "2.0 EiB"]  # fmt: skip
    assert [_atoi(v) for v in ("9000", " 42x", "-5", "x", "+7", "")] == [9000, 42, -5, 0, 7, 0]


class RecordingHost(FakeHost):
    """A host whose driver takes every request (0) and records it."""

    def __init__(self, links: dict) -> None:
        super().__init__(links)
        self.requests: list[dict] = []

    def request(self, **request: object) -> int:
        self.requests.append(request)
        return 0


def _features_link(connected: bool = False) -> dict:
    from ipoibfs.driver import features as F

    from .fakes import FEATURE_NAMES

    f = F.ipoib_features()
    info = {k: sorted(getattr(f, k)) for k in ("hw", "wanted", "active", "nochange")}
    return {**CHILD, "ifname": "ib0", "mode": "connected" if connected else "datagram",
            "features": {"names": FEATURE_NAMES, **info}}  # fmt: skip


def test_ethtool_k_and_K_go_through_the_feature_model(capsys):
    from ipoibfs.driver import features as F
    from ipoibfs.frontends import ethtool_main

    host = RecordingHost({"ib0": _features_link()})
    assert ethtool_main(host, ["-k", "ib0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Features for ib0:\nrx-checksumming: on\ntx-checksumming: on\n")
    assert ethtool_main(host, ["-K", "ib0", "lro", "on"]) == 0  # sent, nothing printed
    assert host.requests == [{"op": "features", "dev": "ib0", "bits": [["rx-lro", True]]}]
    assert capsys.readouterr() == ("", "")
    # refused before sending: bad arguments, a name the kernel does not know, --json -K
    for argv in (["-K", "ib0", "lro"], ["-K", "ib0", "bogus", "on"],
                 ["--json", "-K", "ib0", "lro", "on"]):  # fmt: skip
        assert ethtool_main(host, argv) in (1, F.EXIT_NETLINK)
    assert len(host.requests) == 1 and capsys.readouterr().out == ""
    # in connected mode the request is sent and ethtool says what the mode forbids
    host = RecordingHost({"ib0": _features_link(connected=True)})
    assert ethtool_main(host, ["-K", "ib0", "tx", "on"]) == 1
    out, err = capsys.readouterr()
    assert out.startswith("Actual changes:\ntx-checksum-ipv4: off [requested on]\n")
    assert err == "Could not change any device features\n" and len(host.requests) == 1


def test_the_feature_model_loads_without_the_driver_package():
    """The front ends run without site-packages (no trio): features.py must load alone."""
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[2])
    code = (f"import sys; sys.path.insert(0, {root!r}); import ipoibfs.frontends as f; "
            "m = f._features_model(); assert 'ipoibfs.driver' not in sys.modules; "
            "assert 'trio' not in sys.modules; print(m.ipoib_features().on(m.TSO))")  # fmt: skip
    result = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                            text=True, check=False)  # fmt: skip
    assert (result.returncode, result.stdout, result.stderr) == (0, "True\n", "")
