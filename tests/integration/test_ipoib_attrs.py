"""The files ib_ipoib adds: mode, pkey, umcast, create_child, delete_child, parent, dev_id."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from .conftest import run, wait_for, write


def test_ipoib_file_modes(host):
    modes = {
        "mode": 0o644,
        "pkey": 0o444,
        "umcast": 0o644,
        "create_child": 0o200,
        "delete_child": 0o200,
        "dev_id": 0o444,
    }
    for name, mode in modes.items():
        assert stat.S_IMODE(os.stat(host.net() / name).st_mode) == mode, name
    assert host.attr("ib0", "create_child") == errno.EACCES  # write-only, even for root
    assert write(host.net() / "pkey", "0x8001\n") == errno.EACCES


def test_defaults(host):
    assert host.attr("ib0", "mode") == "datagram\n"
    assert host.attr("ib0", "pkey") == "0xffff\n"
    assert host.attr("ib0", "umcast") == "0\n"


# ---------------------------------------------------------------- create_child


def test_create_child_makes_the_live_netdev_before_the_write_returns(host):
    assert write(host.net() / "create_child", "0x8001\n") == 0
    assert "ib0.8001" in host.interfaces()  # no waiting: the write has returned
    links = host.netns.links()
    child, parent = links["ib0.8001"], links["ib0"]
    assert child["link_type"] == "infiniband"
    assert "UP" not in child["flags"] and child["mtu"] == 4092 and child["txqlen"] == 256
    assert host.attr("ib0.8001", "pkey") == "0x8001\n"
    assert host.attr("ib0.8001", "parent") == "ib0\n"
    assert host.attr("ib0.8001", "mode") == "datagram\n"
    assert host.attr("ib0.8001", "iflink") == f"{parent['ifindex']}\n"
    assert host.attr("ib0.8001", "ifindex") == f"{child['ifindex']}\n"
    assert host.attr("ib0.8001", "broadcast") == (
        "00:ff:ff:ff:ff:12:40:1b:80:01:00:00:00:00:00:00:ff:ff:ff:ff\n"
    )
    parent_addr = host.attr("ib0", "address")
    child_addr = host.attr("ib0.8001", "address")
    assert child_addr[:12] == "80:00:00:49:" and child_addr[12:] == parent_addr[12:]
    names = set(os.listdir(host.net("ib0.8001")))
    assert {"mode", "pkey", "umcast", "parent"} <= names
    assert not {"create_child", "delete_child"} & names


@pytest.mark.parametrize(
    ("value", "name", "pkey"),
    [
        ("0x8001", "ib0.8001", "0x8001"),
        ("32769", "ib0.8001", "0x8001"),
        ("1", "ib0.0001", "0x8001"),  # named from the raw value, full bit added after
        ("010", "ib0.0008", "0x8008"),  # %i: leading 0 is octal
        ("0x7fff", "ib0.7fff", "0xffff"),  # unique against the raw value only
        ("  0x8002xyz", "ib0.8002", "0x8002"),  # white space skipped, garbage ignored
    ],
)
def test_create_child_parses_like_sscanf_i(host, value, name, pkey):
    assert write(host.net() / "create_child", value) == 0
    assert host.interfaces() == sorted(["ib0", name])
    assert host.attr(name, "pkey") == f"{pkey}\n"
    assert name in host.netns.links()


@pytest.mark.parametrize("value", ["0", "0x8000", "0x10000", "-1", "abc", "+5", "\n"])
def test_create_child_rejects_bad_values_with_einval(host, value):
    assert write(host.net() / "create_child", value) == errno.EINVAL
    assert host.interfaces() == ["ib0"]
    assert set(host.netns.links()) == {"lo", "ib0"}


def test_create_child_duplicates(host):
    cc = host.net() / "create_child"
    assert write(cc, "0xffff") == errno.ENOTUNIQ  # the parent's own P_Key
    assert write(cc, "1") == 0
    assert write(cc, "0x8001") == errno.ENOTUNIQ  # matches ib0.0001's effective 0x8001
    assert write(cc, "1") == errno.EEXIST  # unique raw value, but the name is taken
    assert host.interfaces() == ["ib0", "ib0.0001"]
    assert "ib0.0001: failed to initialize; error -17" in host.log


# ---------------------------------------------------------------- delete_child


def test_delete_child_removes_the_netdev(host):
    assert write(host.net() / "create_child", "0x8001") == 0
    assert write(host.net() / "delete_child", "0x8001") == 0
    wait_for(lambda: "ib0.8001" not in host.interfaces(), what="child directory gone")
    wait_for(lambda: "ib0.8001" not in host.netns.links(), what="child netdev gone")
    assert not (host.debugfs("ib0.8001_mcg")).exists()


def test_delete_child_matches_the_effective_pkey(host):
    assert write(host.net() / "create_child", "1") == 0
    assert write(host.net() / "delete_child", "1") == errno.ENODEV
    assert host.interfaces() == ["ib0", "ib0.0001"]
    assert write(host.net() / "delete_child", "0x8001") == 0
    wait_for(lambda: host.interfaces() == ["ib0"], what="ib0.0001 gone")


@pytest.mark.parametrize(
    ("value", "err"),
    [("0", errno.ENODEV), ("0x8000", errno.ENODEV), ("0x8002", errno.ENODEV),
     ("0xffff", errno.ENODEV), ("0x10000", errno.EINVAL), ("-1", errno.EINVAL),
     ("abc", errno.EINVAL)],
)  # fmt: skip
def test_delete_child_errors(host, value, err):
    assert write(host.net() / "create_child", "0x8001") == 0
    assert write(host.net() / "delete_child", value) == err
    assert host.interfaces() == ["ib0", "ib0.8001"]


# ---------------------------------------------------------------- mode and MTU


def test_connected_mode_sets_65520_and_back(host):
    host.up()
    host.wait_carrier()
    assert host.attr("ib0", "mtu") == "2044\n"
    assert write(host.net() / "mode", "connected\n") == 0
    assert host.attr("ib0", "mode") == "connected\n"
    assert host.attr("ib0", "mtu") == "65520\n"
    assert host.netns.links()["ib0"]["mtu"] == 65520
    assert "ib0: enabling connected mode will cause multicast packet drops" in host.log
    assert "ib0: mtu > 2044 will cause multicast packet drops." in host.log
    assert write(host.net() / "mode", "connected\n") == 0  # no-op
    assert write(host.net() / "mode", "datagram\n") == 0
    assert host.attr("ib0", "mode") == "datagram\n"
    assert host.attr("ib0", "mtu") == "2044\n"


def test_mode_needs_the_exact_strings(host):
    for bad in ("connected", "Connected\n", "datagram", " datagram\n", "cm\n"):
        assert write(host.net() / "mode", bad) == errno.EINVAL, repr(bad)
        assert host.attr("ib0", "mode") == "datagram\n"
        assert host.attr("ib0", "mtu") == "4092\n"


def test_datagram_mtu_rules(host):
    mtu = host.net() / "mtu"
    assert write(mtu, "72") == 0
    assert write(mtu, "71") == errno.EINVAL
    assert write(mtu, "4093") == errno.EINVAL
    assert write(mtu, "65521") == errno.EINVAL
    assert host.attr("ib0", "mtu") == "72\n"
    assert write(mtu, "4092") == 0
    host.up()
    host.wait_carrier()
    assert host.attr("ib0", "mtu") == "2044\n"  # the broadcast group's MTU (2048) - 4
    assert write(mtu, "3000") == 0  # accepted but clamped to the multicast MTU
    assert host.attr("ib0", "mtu") == "2044\n"
    assert write(mtu, "1500") == 0
    assert host.netns.links()["ib0"]["mtu"] == 1500


def test_connected_mtu_rules(host):
    assert write(host.net() / "mode", "connected\n") == 0
    assert write(host.net() / "mtu", "65521") == errno.EINVAL
    assert write(host.net() / "mtu", "9000") == 0
    assert host.netns.links()["ib0"]["mtu"] == 9000
    assert write(host.net() / "mode", "datagram\n") == 0
    assert host.attr("ib0", "mtu") == "4092\n"  # min(mcast_mtu, mtu) before any join


def test_child_mode_is_its_own(host):
    assert write(host.net() / "create_child", "0x8001") == 0
    assert write(host.net("ib0.8001") / "mode", "connected\n") == 0
    assert host.attr("ib0.8001", "mtu") == "65520\n"
    assert host.attr("ib0", "mode") == "datagram\n"
    assert host.attr("ib0", "mtu") == "4092\n"


def test_connected_mode_refused_without_cm(netns, mountpoint):
    from .conftest import mount_host

    h = mount_host(netns, mountpoint, "--no-cm")
    assert h.attr("ib0", "address").startswith("00:00:00:48:")
    assert write(h.net() / "mode", "connected\n") == errno.EINVAL
    assert h.attr("ib0", "mode") == "datagram\n"


# ---------------------------------------------------------------- umcast


@pytest.mark.parametrize(
    ("value", "shown"),
    [("1", "1"), ("7\n", "1"), ("0x1", "1"), ("4294967297", "1"), ("0", "0"), (" 1", "0"),
     ("-1", "0"), ("junk", "0"), ("0x80000000", "0")],
)  # fmt: skip
def test_umcast_parses_like_simple_strtoul(host, value, shown):
    assert write(host.net() / "umcast", "1") == 0
    assert write(host.net() / "umcast", value) == 0  # never fails
    assert host.attr("ib0", "umcast") == f"{shown}\n"


def test_umcast_warns(host):
    assert write(host.net() / "umcast", "1\n") == 0
    assert "ib0: ignoring multicast groups joined directly by userspace" in host.log


# ---------------------------------------------------------------- children follow the parent


def test_parent_up_brings_children_up_and_down(host):
    assert write(host.net() / "create_child", "0x7fff") == 0  # effective 0xffff: in the table
    host.up()
    host.wait_carrier("ib0")
    host.wait_carrier("ib0.7fff")
    assert host.attr("ib0.7fff", "operstate") == "up\n"
    host.netns.ip("link", "set", "ib0", "down")
    wait_for(lambda: "UP" not in host.netns.links()["ib0.7fff"]["flags"], what="child down")
    wait_for(lambda: host.attr("ib0.7fff", "operstate") == "down\n", what="child operstate")


def test_child_without_its_pkey_in_the_table_has_no_carrier(host):
    assert write(host.net() / "create_child", "0x8001") == 0
    host.up()
    host.wait_carrier("ib0")
    wait_for(lambda: "UP" in host.netns.links()["ib0.8001"]["flags"], what="child up")
    wait_for(lambda: "ib0.8001: P_Key 0x8001 is not found" in host.log, what="warning")
    assert host.attr("ib0.8001", "carrier") == "0\n"
    assert host.attr("ib0.8001", "operstate") == "down\n"  # the parent has carrier
    assert read_mcg(host, "ib0.8001") == ""


def test_child_without_carrier_under_a_parent_without_carrier_is_lowerlayerdown(host):
    assert write(host.net() / "create_child", "0x8001") == 0
    host.up("ib0.8001")  # the parent stays down
    wait_for(lambda: host.attr("ib0.8001", "carrier") == "0\n", what="child up")
    assert host.attr("ib0.8001", "operstate") == "lowerlayerdown\n"


def read_mcg(host, ifname: str) -> str:
    return (host.debugfs(f"{ifname}_mcg")).read_text()


def test_dev_id_per_port(netns, mountpoint):
    from .conftest import mount_host

    h = mount_host(netns, mountpoint, "--ports", "2")
    assert h.interfaces() == ["ib0", "ib1"]
    assert h.attr("ib0", "dev_id") == "0x0\n"
    assert h.attr("ib1", "dev_id") == "0x1\n"
    assert run("cat", str(h.net("ib1") / "dev_id")).stdout == "0x1\n"
    assert run("cat", str(h.net("ib0") / "dev_id")).stdout == "0x0\n"
    message = "wants to know my dev_id. Should it look at dev_port instead?"
    assert h.log.count(message) == 1  # netdev_info_once, for port 2 only
    assert '<6> ib1: "' in h.log
    assert h.attr("ib1", "dev_port") == "1\n"
    assert write(h.net("ib1") / "create_child", "0x8001") == 0
    assert h.attr("ib1.8001", "dev_id") == "0x0\n"
    assert h.attr("ib1.8001", "parent") == "ib1\n"
