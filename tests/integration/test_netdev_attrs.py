"""class/net/<if>/: the generic netdev files, read live from a real TUN netdev."""

from __future__ import annotations

import errno
import os
import stat

from .conftest import read, wait_for, write

GENERIC = {
    "uevent", "address", "broadcast", "addr_len", "type", "dev_id", "dev_port", "ifindex",
    "iflink", "link_mode", "addr_assign_type", "name_assign_type", "mtu", "flags",
    "tx_queue_len", "operstate", "carrier", "carrier_changes", "carrier_up_count",
    "carrier_down_count", "dormant", "testing", "speed", "duplex", "ifalias", "netdev_group",
    "proto_down", "statistics", "queues", "device", "subsystem", "gro_flush_timeout",
    "napi_defer_hard_irqs", "threaded",
}  # fmt: skip
STATISTICS = {
    "rx_packets", "tx_packets", "rx_bytes", "tx_bytes", "rx_errors", "tx_errors", "rx_dropped",
    "tx_dropped", "multicast", "collisions", "rx_length_errors", "rx_over_errors",
    "rx_crc_errors", "rx_frame_errors", "rx_fifo_errors", "rx_missed_errors",
    "tx_aborted_errors", "tx_carrier_errors", "tx_fifo_errors", "tx_heartbeat_errors",
    "tx_window_errors", "rx_compressed", "tx_compressed", "rx_nohandler",
}  # fmt: skip


def test_parent_directory_lists_generic_and_ipoib_files(host):
    names = set(os.listdir(host.net()))
    assert names == GENERIC | {"mode", "pkey", "umcast", "create_child", "delete_child"}
    assert set(os.listdir(host.net() / "statistics")) == STATISTICS
    assert os.readlink(host.net() / "device") == "../../../devices/pci0001:00/0001:00:00.0"


def test_hardware_and_broadcast_addresses(host):
    assert host.attr("ib0", "address") == (
        "80:00:00:48:fe:80:00:00:00:00:00:00:00:02:c9:03:00:00:01:01\n"
    )
    assert host.attr("ib0", "broadcast") == (
        "00:ff:ff:ff:ff:12:40:1b:ff:ff:00:00:00:00:00:00:ff:ff:ff:ff\n"
    )
    assert host.attr("ib0", "addr_len") == "20\n"
    assert host.attr("ib0", "type") == "32\n"


def test_identity_files_match_the_live_netdev(host):
    link = host.netns.links()["ib0"]
    assert link["link_type"] == "infiniband"
    assert host.attr("ib0", "ifindex") == f"{link['ifindex']}\n"
    assert host.attr("ib0", "iflink") == f"{link['ifindex']}\n"
    assert host.attr("ib0", "uevent") == f"INTERFACE=ib0\nIFINDEX={link['ifindex']}\n"
    assert host.attr("ib0", "dev_id") == "0x0\n"
    assert host.attr("ib0", "dev_port") == "0\n"
    assert host.attr("ib0", "link_mode") == "0\n"
    assert host.attr("ib0", "addr_assign_type") == "0\n"
    assert host.attr("ib0", "name_assign_type") == errno.EINVAL


def test_down_interface_state(host):
    assert host.attr("ib0", "mtu") == "4092\n"
    assert host.attr("ib0", "tx_queue_len") == "256\n"
    assert host.attr("ib0", "flags") == "0x1002\n"
    assert host.attr("ib0", "operstate") == "down\n"
    for name in ("carrier", "speed", "duplex", "dormant", "testing"):
        assert host.attr("ib0", name) == errno.EINVAL, name
    for name in STATISTICS:
        assert read(host.net() / "statistics" / name) == "0\n"
    link = host.netns.links()["ib0"]
    assert link["mtu"] == 4092 and link["txqlen"] == 256 and "UP" not in link["flags"]


def test_ip_link_up_and_down_show_in_the_mirror(host):
    host.up()
    host.wait_carrier()
    assert host.attr("ib0", "flags") == "0x1003\n"
    assert host.attr("ib0", "operstate") == "up\n"
    assert host.attr("ib0", "speed") == "100000\n"
    assert host.attr("ib0", "duplex") == "full\n"
    assert host.attr("ib0", "dormant") == "0\n"
    assert int(host.attr("ib0", "carrier_up_count")) >= 1
    host.netns.ip("link", "set", "ib0", "down")
    wait_for(lambda: host.attr("ib0", "operstate") == "down\n", what="operstate down")
    assert host.attr("ib0", "carrier") == errno.EINVAL
    assert host.attr("ib0", "flags") == "0x1002\n"


def test_ip_link_mtu_shows_in_the_mirror(host):
    host.netns.ip("link", "set", "ib0", "mtu", "1500")
    assert host.attr("ib0", "mtu") == "1500\n"


def test_ip_link_mtu_outside_the_driver_rules_is_undone(host):
    host.netns.ip("link", "set", "ib0", "mtu", "9000")
    wait_for(lambda: host.attr("ib0", "mtu") == "4092\n", what="mtu restored")
    wait_for(lambda: host.netns.links()["ib0"]["mtu"] == 4092, what="live mtu restored")
    assert "mtu 9000 refused by ib_ipoib, restoring 4092" in host.log


def test_file_modes_and_sizes(host):
    expect = {
        "mtu": 0o644,
        "address": 0o444,
        "carrier": 0o644,
        "flags": 0o644,
        "tx_queue_len": 0o644,
        "operstate": 0o444,
        "ifalias": 0o644,
        "uevent": 0o644,
    }
    for name, mode in expect.items():
        st = os.stat(host.net() / name)
        assert stat.S_IMODE(st.st_mode) == mode, name
        assert st.st_size == 4096 and st.st_uid == 0
    st = os.stat(host.net() / "statistics" / "rx_bytes")
    assert stat.S_IMODE(st.st_mode) == 0o444


def test_mtu_store_parses_like_kstrtoul(host):
    assert write(host.net() / "mtu", "1500\n") == 0
    assert host.netns.links()["ib0"]["mtu"] == 1500
    assert write(host.net() / "mtu", "0x800") == 0
    assert host.attr("ib0", "mtu") == "2048\n"
    assert write(host.net() / "mtu", "+1400\n") == 0
    assert host.attr("ib0", "mtu") == "1400\n"
    for bad in ("abc\n", " 1500\n", "1500 \n", "1500\n\n", "-1"):
        assert write(host.net() / "mtu", bad) == errno.EINVAL, bad
        assert host.attr("ib0", "mtu") == "1400\n"
    assert write(host.net() / "mtu", "99999999999999999999999") == errno.ERANGE


def test_other_netdev_stores(host):
    assert write(host.net() / "tx_queue_len", "512\n") == 0
    assert host.netns.links()["ib0"]["txqlen"] == 512
    assert host.attr("ib0", "tx_queue_len") == "512\n"
    assert write(host.net() / "tx_queue_len", "0x100000000") == errno.ERANGE
    assert host.attr("ib0", "ifalias") == ""
    assert write(host.net() / "ifalias", "fabric uplink\n") == 0
    assert host.attr("ib0", "ifalias") == "fabric uplink\n"
    assert write(host.net() / "ifalias", "x" * 300) == errno.EINVAL
    assert write(host.net() / "netdev_group", "7") == 0
    assert host.attr("ib0", "netdev_group") == "7\n"
    assert write(host.net() / "carrier", "1") == errno.EOPNOTSUPP
    assert write(host.net() / "proto_down", "1") == errno.EOPNOTSUPP
    assert write(host.net() / "uevent", "change") == 0
    assert write(host.net() / "uevent", "bogus") == errno.EINVAL
    assert write(host.net() / "gro_flush_timeout", "20000") == 0
    assert host.attr("ib0", "gro_flush_timeout") == "20000\n"
    assert write(host.net() / "threaded", "2") == errno.EOPNOTSUPP  # modify_napi_threaded
    assert write(host.net() / "flags", "0x1003") == 0
    host.wait_carrier()
    assert "UP" in host.netns.links()["ib0"]["flags"]


def test_read_only_files_refuse_writes_even_for_root(host):
    assert write(host.net() / "address", "x") == errno.EACCES
    assert write(host.net() / "statistics" / "rx_packets", "0") == errno.EACCES
    assert host.attr("ib0", "address").count(":") == 19


def test_ip_link_del_of_a_parent_puts_it_back(host):
    host.up()
    host.wait_carrier()
    host.netns.ip("link", "del", "ib0")
    wait_for(lambda: "ib0" in host.netns.links(), what="ib0 back")
    host.wait_carrier()
    assert host.attr("ib0", "mtu") == "2044\n"
    assert host.interfaces() == ["ib0"]
    ifindex = host.netns.links()["ib0"]["ifindex"]  # a new netdev: the index differs
    assert host.attr("ib0", "ifindex") == f"{ifindex}\n"
    assert host.attr("ib0", "uevent") == f"INTERFACE=ib0\nIFINDEX={ifindex}\n"


def test_ip_link_del_of_a_child_removes_it(host):
    assert write(host.net() / "create_child", "0x8001") == 0
    host.netns.ip("link", "del", "ib0.8001")
    wait_for(lambda: host.interfaces() == ["ib0"], what="child gone from the mirror")
    assert write(host.net() / "create_child", "0x8001") == 0  # and it can be made again
