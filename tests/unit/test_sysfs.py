"""sysfs/: the attribute tables over the real driver and the shared fakes, and the inode
bookkeeping of SysfsOperations, without FUSE."""

from __future__ import annotations

import errno
import json
import os
from types import SimpleNamespace

import pyfuse3
import pytest
import trio
import trio.testing

from ipoibfs.driver.interface import STAT_NAMES
from ipoibfs.errors import KernelError
from ipoibfs.fabric.device import HcaProfile
from ipoibfs.sysfs import SysfsOperations
from ipoibfs.sysfs.infiniband import HCA, PORT
from ipoibfs.sysfs.net import (
    IPOIB_ATTRS,
    NET_CLASS_ATTRS,
    NETDEV,
    is_legacy_child,
    is_parent,
    not_rtnl_child,
)
from ipoibfs.sysfs.nodes import Caller, Symlink, current, serving

from .conftest import ADMIN, USER, GivenCaller, Host, store

__all__ = ["ADMIN", "USER", "GivenCaller", "Host", "host", "store"]

GENERIC = [
    "uevent", "address", "broadcast", "addr_len", "type", "dev_id", "dev_port", "ifindex",
    "iflink", "link_mode", "addr_assign_type", "name_assign_type", "mtu", "flags",
    "tx_queue_len", "operstate", "carrier", "carrier_changes", "carrier_up_count",
    "carrier_down_count", "dormant", "testing", "speed", "duplex", "ifalias", "netdev_group",
    "proto_down", "gro_flush_timeout", "napi_defer_hard_irqs", "threaded",
    "statistics", "queues", "device", "subsystem",
]  # fmt: skip
ROOT = pyfuse3.ROOT_INODE


@pytest.fixture
async def host(mirror_host) -> Host:
    """The mirror over a two-port host of the default profile."""
    return await mirror_host(HcaProfile(ports=2))


async def make_rtnl_child(host: Host, name: str = "blue", pkey: int = 0x8002) -> None:
    request = {"op": "newlink", "link": "ib0", "name": name, "pkey": pkey}
    assert await host.store(".ipoibfs/links", json.dumps(request).encode()) == 0


# ----------------------------------------------------------------- which device has which file


async def test_a_parent_has_the_generic_files_then_its_ipoib_files(host):
    assert host.names("class/net") == ["ib0", "ib1"]
    assert host.names("class/net/ib0") == [
        *GENERIC, "mode", "pkey", "umcast", "create_child", "delete_child"
    ]  # fmt: skip
    assert host.names("class/net/ib0/statistics") == list(STAT_NAMES)
    with pytest.raises(FileNotFoundError):
        host.node("class/net/ib0/parent")


async def test_a_legacy_child_has_parent_but_no_child_files(host):
    assert await host.store("class/net/ib0/create_child", b"0x8001\n") == 0
    assert host.names("class/net") == ["ib0", "ib1", "ib0.8001"]
    assert host.names("class/net/ib0.8001") == [*GENERIC, "mode", "pkey", "umcast", "parent"]
    for name in ("create_child", "delete_child"):
        with pytest.raises(FileNotFoundError):
            host.node(f"class/net/ib0.8001/{name}")


async def test_an_rtnl_child_has_no_ipoib_files(host):
    await make_rtnl_child(host)
    assert host.names("class/net/blue") == GENERIC
    for name in ("mode", "pkey", "umcast", "parent", "create_child", "delete_child"):
        with pytest.raises(FileNotFoundError):
            host.node(f"class/net/blue/{name}")


async def test_the_predicates(host):
    assert await host.store("class/net/ib0/create_child", b"0x8001") == 0
    await make_rtnl_child(host)
    ifaces = host.driver.interfaces
    parent, legacy, rtnl = ifaces["ib0"], ifaces["ib0.8001"], ifaces["blue"]
    assert [is_parent(i) for i in (parent, legacy, rtnl)] == [True, False, False]
    assert [is_legacy_child(i) for i in (parent, legacy, rtnl)] == [False, True, False]
    assert [not_rtnl_child(i) for i in (parent, legacy, rtnl)] == [True, True, False]
    assert NETDEV.names(rtnl) == [a.name for a in NET_CLASS_ATTRS] + [
        "statistics", "queues", "device", "subsystem"
    ]  # fmt: skip
    assert {a.name: a.present for a in IPOIB_ATTRS} == {
        "mode": not_rtnl_child, "pkey": not_rtnl_child, "umcast": not_rtnl_child,
        "create_child": is_parent, "delete_child": is_parent, "parent": is_legacy_child,
    }  # fmt: skip


async def test_modes_and_sizes(host):
    modes = {
        "mode": 0o644, "pkey": 0o444, "umcast": 0o644, "create_child": 0o200,
        "delete_child": 0o200, "dev_id": 0o444, "mtu": 0o644, "address": 0o444,
        "carrier": 0o644, "flags": 0o644, "tx_queue_len": 0o644, "operstate": 0o444,
        "ifalias": 0o644, "uevent": 0o644, "statistics/rx_bytes": 0o444,
    }  # fmt: skip
    for name, mode in modes.items():
        f = host.node(f"class/net/ib0/{name}")
        assert f.attr.mode == mode and f.attr.size == 4096 and f.attr.sysfs, name
    assert host.node("class/net/ib0/device") == Symlink("../../../devices/pci0001:00/0001:00:00.0")
    assert host.node("class/net/ib0/subsystem") == Symlink("../../net")
    mcg = host.node("kernel/debug/ipoib/ib0_mcg")
    assert (mcg.attr.mode, mcg.attr.size, mcg.attr.sysfs) == (0o444, 0, False)
    assert host.node("kernel/debug").mode == 0o700
    links = host.node(".ipoibfs/links")
    assert (links.attr.mode, links.attr.size, links.attr.sysfs) == (0o600, 0, False)
    assert host.node("module/ib_ipoib/parameters/debug_level").attr.mode == 0o644
    assert host.node("module/ib_ipoib/parameters/send_queue_size").attr.mode == 0o444
    assert host.node("class/infiniband/ipoibfs0/node_desc").attr.mode == 0o644
    assert host.node("class/infiniband/ipoibfs0/ports/1/lid").attr.mode == 0o444


async def test_volatile_directories(host):
    assert host.node("class/net").volatile and host.node("kernel/debug/ipoib").volatile
    assert not host.node("class/net/ib0").volatile
    assert not host.node("class/infiniband/ipoibfs0/ports").volatile
    assert not host.node("class/infiniband/ipoibfs0/ports/1/gids").volatile


# ----------------------------------------------------------------- shows


async def test_netdev_shows(host):
    ib0 = host.driver.interfaces["ib0"]
    ifindex = ib0.link.ifindex
    expect = {
        "uevent": f"INTERFACE=ib0\nIFINDEX={ifindex}\n",
        "address": "80:00:00:48:fe:80:00:00:00:00:00:00:00:02:c9:03:00:00:01:01\n",
        "broadcast": "00:ff:ff:ff:ff:12:40:1b:ff:ff:00:00:00:00:00:00:ff:ff:ff:ff\n",
        "addr_len": "20\n", "type": "32\n", "dev_id": "0x0\n", "dev_port": "0\n",
        "ifindex": f"{ifindex}\n", "iflink": f"{ifindex}\n", "link_mode": "0\n",
        "addr_assign_type": "0\n", "name_assign_type": errno.EINVAL, "mtu": "4092\n",
        "flags": "0x1002\n", "tx_queue_len": "256\n", "operstate": "down\n",
        "carrier": errno.EINVAL, "speed": errno.EINVAL, "duplex": errno.EINVAL,
        "dormant": errno.EINVAL, "testing": errno.EINVAL, "ifalias": "",
        "netdev_group": "0\n", "proto_down": "0\n", "carrier_changes": "0\n",
        "threaded": "0\n", "mode": "datagram\n", "pkey": "0xffff\n", "umcast": "0\n",
        "statistics/rx_packets": "0\n", "statistics/tx_bytes": "0\n",
    }  # fmt: skip
    for name, value in expect.items():
        assert await host.show(f"class/net/ib0/{name}") == value, name


async def test_running_shows(host):
    link = host.netdevs.links["ib0"]
    link.up = True
    assert await host.show("class/net/ib0/flags") == "0x1003\n"
    assert await host.show("class/net/ib0/carrier") == "0\n"
    assert await host.show("class/net/ib0/speed") == "-1\n"
    assert await host.show("class/net/ib0/duplex") == "unknown\n"
    assert await host.show("class/net/ib0/dormant") == "0\n"
    link.carrier = True
    assert await host.show("class/net/ib0/flags") == "0x1003\n"  # no RUNNING, no LOWER_UP
    assert await host.show("class/net/ib0/operstate") == "up\n"
    assert await host.show("class/net/ib0/speed") == "100000\n"
    assert await host.show("class/net/ib0/duplex") == "full\n"


async def test_child_shows(host):
    assert await host.store("class/net/ib0/create_child", b"1") == 0
    parent = host.driver.interfaces["ib0"]
    assert await host.show("class/net/ib0.0001/pkey") == "0x8001\n"
    assert await host.show("class/net/ib0.0001/parent") == "ib0\n"
    assert await host.show("class/net/ib0.0001/iflink") == f"{parent.link.ifindex}\n"
    assert await host.show("class/net/ib0.0001/dev_id") == "0x0\n"
    address = await host.show("class/net/ib0.0001/address")
    assert address[:12] == "80:00:00:4a:"  # its own QPN (ib1 has 0x49), the parent's GID
    assert address[12:] == (await host.show("class/net/ib0/address"))[12:]
    assert await host.show("class/net/ib0.0001/broadcast") == (
        "00:ff:ff:ff:ff:12:40:1b:80:01:00:00:00:00:00:00:ff:ff:ff:ff\n"
    )


async def test_dev_id_of_a_second_port_names_the_reader_once(host):
    assert await host.show("class/net/ib1/dev_id", GivenCaller(0, 1, name="lshw")) == "0x1\n"
    assert await host.show("class/net/ib1/dev_port") == "1\n"
    assert await host.show("class/net/ib1/dev_id", GivenCaller(0, 1, name="other")) == "0x1\n"
    assert [line for line in host.log.lines if "dev_id" in line] == [
        'ib1: "lshw" wants to know my dev_id. Should it look at dev_port instead? '
        "See Documentation/ABI/testing/sysfs-class-net for more info."
    ]


async def test_current_is_set_only_while_serving():
    with pytest.raises(LookupError):
        current()
    with serving(ADMIN):
        assert current() is ADMIN
    with pytest.raises(LookupError):
        current()


async def test_a_file_of_a_gone_interface_refuses_with_einval(host):
    assert await host.store("class/net/ib0/create_child", b"0x8001") == 0
    address = host.node("class/net/ib0.8001/address")
    assert await host.store("class/net/ib0/delete_child", b"0x8001") == 0
    await trio.testing.wait_all_tasks_blocked()
    assert "ib0.8001" not in host.names("class/net")
    with serving(ADMIN), pytest.raises(KernelError) as e:
        address.attr.show(address.ctx, address.dev)
    assert e.value.errno == errno.EINVAL


async def test_hca_and_port_shows(host):
    hca = "class/infiniband/ipoibfs0"
    assert host.names("class/infiniband") == ["ipoibfs0"]
    assert host.names(hca) == [e.name for e in HCA.entries if e.present(host.device)]
    assert host.names(f"{hca}/ports") == ["1", "2"]
    assert host.names(f"{hca}/ports/1") == [e.name for e in PORT.entries]
    expect = {
        "node_type": "1: CA\n", "node_guid": "0002:c903:0000:0100\n",
        "sys_image_guid": "0002:c903:0000:0100\n", "fw_ver": "1.0.0\n",
        "hca_type": "ipoibfs\n", "node_desc": "h1 ipoibfs0\n",
        "ports/1/lid": "0x2\n", "ports/2/lid": "0x3\n", "ports/1/sm_lid": "0x1\n",
        "ports/1/state": "4: ACTIVE\n", "ports/1/phys_state": "5: LinkUp\n",
        "ports/1/rate": "100 Gb/sec (4X EDR)\n", "ports/1/link_layer": "InfiniBand\n",
        "ports/1/cap_mask": "0x2651e848\n", "ports/1/lid_mask_count": "0\n",
        "ports/1/gids/0": "fe80:0000:0000:0000:0002:c903:0000:0101\n",
        "ports/1/gids/1": "0000:0000:0000:0000:0000:0000:0000:0000\n",
        "ports/1/pkeys/0": "0xffff\n", "ports/1/pkeys/1": "0x0000\n",
        "ports/1/gid_attrs/types/0": "IB/RoCE v1\n",
        "ports/1/gid_attrs/types/1": errno.ENODATA,
        "ports/1/gid_attrs/ndevs/0": errno.EINVAL,
    }  # fmt: skip
    for name, value in expect.items():
        assert await host.show(f"{hca}/{name}") == value, name
    assert len(host.names(f"{hca}/ports/1/gids")) == 128
    assert host.names(f"{hca}/ports/1/pkeys")[-1] == "127"
    for bad in ("128", "01", "-1", "+1", "x", "", "٣"):
        with pytest.raises(FileNotFoundError):
            host.node(f"{hca}/ports/1/gids/{bad}")
    with pytest.raises(FileNotFoundError):
        host.node(f"{hca}/ports/3")


async def test_module_parameters(host):
    params = "module/ib_ipoib/parameters"
    assert host.names(params) == [
        "send_queue_size", "recv_queue_size", "debug_level", "mcast_debug_level",
        "max_nonsrq_conn_qp",
    ]  # fmt: skip
    assert await host.show(f"{params}/send_queue_size") == "128\n"
    assert await host.store(f"{params}/debug_level", b"1\n") == 0
    assert await host.show(f"{params}/debug_level") == "1\n"
    assert await host.store(f"{params}/debug_level", b"one") == errno.EINVAL
    assert host.driver.params["debug_level"] == 1
    with pytest.raises(FileNotFoundError):
        host.node(f"{params}/data_debug_level")  # a --debug build's only


async def test_debugfs_files(host):
    assert host.names("kernel/debug/ipoib") == ["ib0_mcg", "ib0_path", "ib1_mcg", "ib1_path"]
    assert await host.show("kernel/debug/ipoib/ib0_mcg") == ""
    assert await host.show("kernel/debug/ipoib/ib0_path") == ""
    for bad in ("ib0_x", "ib9_mcg", "ib0mcg", "_mcg"):
        with pytest.raises(FileNotFoundError):
            host.node(f"kernel/debug/ipoib/{bad}")


# ----------------------------------------------------------------- stores


async def test_create_child_store(host):
    cc = "class/net/ib0/create_child"
    assert await host.store(cc, b"junk", USER) == errno.EINVAL  # the value first
    assert await host.store(cc, b"0x8001", USER) == errno.EPERM
    for bad in (b"0", b"0x8000", b"0x10000", b"-1"):
        assert await host.store(cc, bad) == errno.EINVAL, bad
    assert host.names("class/net") == ["ib0", "ib1"]
    assert await host.store(cc, b"0x8001\n") == 0
    assert await host.store(cc, b"0x8001\n") == errno.ENOTUNIQ
    assert await host.store(cc, b"0xffff") == errno.ENOTUNIQ
    assert "ib0.8001" in host.netdevs.links  # the live netdev exists when the store returns


async def test_delete_child_store(host):
    dc = "class/net/ib0/delete_child"
    assert await host.store("class/net/ib0/create_child", b"1") == 0
    assert await host.store(dc, b"1") == errno.ENODEV  # the effective P_Key is 0x8001
    assert await host.store(dc, b"0x10000") == errno.EINVAL
    assert await host.store(dc, b"0x8001", USER) == errno.EPERM
    await make_rtnl_child(host, pkey=0x8002)
    assert await host.store(dc, b"0x8002") == errno.ENODEV  # never an RTNL child
    assert await host.store(dc, b"0x8001") == 0
    await trio.testing.wait_all_tasks_blocked()
    assert host.names("class/net") == ["ib0", "ib1", "blue"]


async def test_mode_and_umcast_stores(host):
    assert await host.store("class/net/ib0/mode", b"connected", USER) == errno.EINVAL
    assert await host.store("class/net/ib0/mode", b"connected\n", USER) == 0  # no capability
    assert await host.show("class/net/ib0/mode") == "connected\n"
    assert host.netdevs.links["ib0"].mtu == 65520
    assert "ib0: enabling connected mode will cause multicast packet drops" in host.log.lines
    assert await host.store("class/net/ib0/umcast", b"1\n", USER) == 0
    assert await host.show("class/net/ib0/umcast") == "1\n"
    assert host.log.lines[-1] == "ib0: ignoring multicast groups joined directly by userspace"
    assert await host.store("class/net/ib0/umcast", b"garbage") == 0
    assert await host.show("class/net/ib0/umcast") == "0\n"


async def test_generic_netdev_stores(host):
    net = "class/net/ib0"
    assert await host.store(f"{net}/mtu", b"1500\n", USER) == errno.EPERM
    for bad in (b"abc\n", b" 1500\n", b"1500 \n", b"-1"):
        assert await host.store(f"{net}/mtu", bad) == errno.EINVAL, bad
    assert await host.store(f"{net}/mtu", b"99999999999999999999999") == errno.ERANGE
    assert await host.store(f"{net}/mtu", b"1500\n") == 0
    assert await host.show(f"{net}/mtu") == "1500\n"
    assert await host.store(f"{net}/tx_queue_len", b"0x100000000") == errno.ERANGE
    assert await host.store(f"{net}/tx_queue_len", b"512\n") == 0
    assert await host.show(f"{net}/tx_queue_len") == "512\n"
    assert await host.store(f"{net}/ifalias", b"x" * 300) == errno.EINVAL
    assert await host.store(f"{net}/ifalias", b"uplink\n", USER) == errno.EPERM
    assert await host.store(f"{net}/ifalias", b"fabric uplink\n") == 0
    assert await host.show(f"{net}/ifalias") == "fabric uplink\n"
    assert await host.store(f"{net}/netdev_group", b"7") == 0
    assert await host.show(f"{net}/netdev_group") == "7\n"
    assert await host.store(f"{net}/flags", b"0x1003") == 0
    assert host.netdevs.links["ib0"].attrs["flags"] == 0x1001  # only the changeable bits
    assert await host.store(f"{net}/carrier", b"1", USER) == errno.EOPNOTSUPP
    assert await host.store(f"{net}/proto_down", b"1") == errno.EOPNOTSUPP
    assert await host.store(f"{net}/proto_down", b"1", USER) == errno.EPERM
    assert await host.store(f"{net}/uevent", b"change\n", USER) == 0
    assert await host.store(f"{net}/uevent", b"bogus") == errno.EINVAL
    assert await host.store(f"{net}/threaded", b"2") == errno.EOPNOTSUPP
    assert await host.store(f"{net}/threaded", b"1\n") == 0
    assert await host.show(f"{net}/threaded") == "1\n"
    assert await host.store(f"{net}/napi_defer_hard_irqs", b"0x80000000") == errno.ERANGE
    assert await host.store(f"{net}/gro_flush_timeout", b"20000") == 0
    assert await host.show(f"{net}/gro_flush_timeout") == "20000\n"
    assert await host.show("class/net/ib1/gro_flush_timeout") == "0\n"


async def test_node_desc_store(host):
    path = "class/infiniband/ipoibfs0/node_desc"
    assert await host.store(path, b"renamed") == 0
    assert await host.show(path) == "renamed\n"
    assert await host.store(path, b"x" * 100) == 0  # the first 64 bytes, as written
    assert await host.show(path) == "x" * 64 + "\n"


async def test_the_control_file(host):
    links = ".ipoibfs/links"
    shown = json.loads(await host.show(links))
    assert [i["ifname"] for i in shown] == ["ib0", "ib1"]
    assert list(shown[0]) == [
        "ifname", "ifindex", "address", "broadcast", "parent", "child_type", "pkey", "mode",
        "umcast", "carrier", "up", "speed", "driver", "fw_version", "bus_info", "coalesce",
        "features", "stats", "statistics",
    ]  # fmt: skip
    assert shown[0]["bus_info"] == "0001:00:00.0" and shown[0]["child_type"] == "parent"
    assert await host.store(links, b"{") == errno.EINVAL
    assert await host.store(links, b"[]") == errno.EINVAL
    assert await host.store(links, b'{"op": "newlink", "link": "ib0"}', USER) == errno.EPERM
    assert await host.store(links, b'{"op": "bogus"}') == errno.EOPNOTSUPP
    assert await host.store(links, b'{"op": "changelink", "dev": "nope"}') == errno.ENODEV
    request = {"op": "newlink", "link": "ib0", "name": "blue", "mode": 1, "umcast": 1}
    assert await host.store(links, json.dumps(request).encode()) == 0
    blue = json.loads(await host.show(links))[-1]
    assert (blue["ifname"], blue["child_type"], blue["mode"], blue["umcast"], blue["pkey"]) == (
        "blue", "rtnl", "connected", 1, 0xFFFF,
    )  # fmt: skip
    coalesce = {"op": "coalesce", "dev": "blue", "rx_usecs": 10, "rx_frames": 0x10000}
    assert await host.store(links, json.dumps(coalesce).encode()) == errno.EINVAL
    coalesce["rx_frames"] = 5
    assert await host.store(links, json.dumps(coalesce).encode()) == 0
    assert json.loads(await host.show(links))[-1]["coalesce"] == {"rx_usecs": 10, "rx_frames": 5}
    # ethtool -K: the features as ETHTOOL_MSG_FEATURES_GET reports them, and SET
    features = shown[0]["features"]
    assert features["names"][:2] == ["tx-scatter-gather", "tx-checksum-ipv4"]
    assert {"tx-checksum-ipv4", "tx-tcp-segmentation", "rx-checksum"} <= set(features["active"])
    assert "rx-lro" in features["hw"] and "rx-lro" not in features["active"]
    blue = json.loads(await host.show(links))[-1]["features"]  # connected: no IP_CSUM, TSO
    assert "tx-checksum-ipv4" in blue["wanted"] and "tx-checksum-ipv4" not in blue["active"]

    async def features(bits: object) -> int:
        request = {"op": "features", "dev": "blue", "bits": bits}
        return await host.store(links, json.dumps(request).encode())

    for bad in ("rx-lro", [["rx-lro"]], [["rx-lro", 1]], [[1, True]]):
        assert await features(bad) == errno.EINVAL
    assert await features([["rx-lro", True], ["no-such-feature", True]]) == errno.EOPNOTSUPP
    assert await features([["vlan-challenged", False]]) == errno.EINVAL
    assert "rx-lro" not in json.loads(await host.show(links))[-1]["features"]["active"]
    assert await features([["rx-lro", True], ["tx-tcp-segmentation", False]]) == 0
    blue = json.loads(await host.show(links))[-1]["features"]
    assert "rx-lro" in blue["active"] and "tx-tcp-segmentation" not in blue["wanted"]
    assert await host.store(links, b'{"op": "dellink", "dev": "blue"}') == 0
    assert "blue" not in host.names("class/net")


# ----------------------------------------------------------------- inode bookkeeping

REQUEST = SimpleNamespace(uid=0, gid=0, pid=os.getpid(), umask=0o022)


async def lookup(ops: SysfsOperations, path: str) -> int:
    ino = ROOT
    for name in path.split("/"):
        ino = (await ops.lookup(ino, name.encode(), REQUEST)).st_ino
    return ino


def known(ops: SysfsOperations) -> int:
    """How many inode numbers the filesystem holds."""
    assert len(ops._paths) == len(ops._inodes) == len(ops._lookups) + 1  # + the root
    return len(ops._paths)


async def test_lookups_count_and_forget_drops_at_zero(host):
    ops = SysfsOperations(host.root)
    ino = await lookup(ops, "class")
    assert await lookup(ops, "class") == ino  # the same inode while the kernel holds it
    assert known(ops) == 2
    await ops.forget([(ino, 1)])
    assert (await ops.getattr(ino, REQUEST)).st_ino == ino  # one lookup left
    await ops.forget([(ino, 1)])
    assert known(ops) == 1
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.getattr(ino, REQUEST)
    assert e.value.errno == errno.ENOENT
    again = await lookup(ops, "class")
    assert again != ino  # a fresh number: the kernel forgot the old one
    await ops.forget([(again, 5)])  # more than counted: gone all the same
    assert known(ops) == 1


async def test_the_root_and_unknown_inodes_are_never_dropped(host):
    ops = SysfsOperations(host.root)
    await ops.forget([(ROOT, 1), (ROOT, 10), (12345, 1)])
    assert (await ops.getattr(ROOT, REQUEST)).st_ino == ROOT
    assert known(ops) == 1
    with pytest.raises(pyfuse3.FUSEError):
        await ops.lookup(ROOT, b"nothing", REQUEST)
    assert known(ops) == 1  # a failed lookup counts nothing


async def test_children_come_and_go_without_growing_the_maps(host):
    ops = SysfsOperations(host.root)
    for round_ in range(3):
        assert await host.store("class/net/ib0/create_child", b"0x8001") == 0
        inodes = [await lookup(ops, p) for p in ("class", "class/net", "class/net/ib0.8001",
                                                 "class/net/ib0.8001/mode")]  # fmt: skip
        # Each lookup of a path counts once per component it walked.
        counts = {"class": 4, "class/net": 3, "class/net/ib0.8001": 2,
                  "class/net/ib0.8001/mode": 1}  # fmt: skip
        assert known(ops) == 5
        assert await host.store("class/net/ib0/delete_child", b"0x8001") == 0
        await trio.testing.wait_all_tasks_blocked()
        await ops.forget([(ino, n) for ino, n in zip(inodes, counts.values(), strict=True)])
        assert known(ops) == 1, round_


async def test_open_read_write_serve_the_caller(host):
    ops = SysfsOperations(host.root)
    ino = await lookup(ops, "class/net/ib1/dev_id")
    info = await ops.open(ino, os.O_RDONLY, REQUEST)
    assert await ops.read(info.fh, 0, 4096) == b"0x1\n"
    await ops.release(info.fh)
    with open("/proc/self/comm") as f:
        comm = f.read().strip()
    assert any(line.startswith(f'ib1: "{comm}" wants to know my dev_id') for line in host.log.lines)
    with pytest.raises(LookupError):
        current()  # reset after the request
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.open(await lookup(ops, "class/net/ib0/pkey"), os.O_WRONLY, REQUEST)
    assert e.value.errno == errno.EACCES
    ino = await lookup(ops, "class/net/ib0/umcast")
    info = await ops.open(ino, os.O_WRONLY, REQUEST)
    assert await ops.write(info.fh, 0, b"1\n") == 2
    await ops.release(info.fh)
    assert host.driver.interfaces["ib0"].umcast


async def test_readdir_counts_the_entries_the_reply_took(host, monkeypatch):
    ops = SysfsOperations(host.root)
    net = await lookup(ops, "class/net")
    taken: list[tuple[bytes, int, int]] = []

    def reply(token, name, attr, next_id):
        if len(taken) == token:
            return False  # the buffer is full
        taken.append((name, attr.st_ino, next_id))
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    await ops.readdir(await ops.opendir(net, REQUEST), 0, 1)
    assert [(name, next_id) for name, _, next_id in taken] == [(b"ib0", 1)]
    assert known(ops) == 4  # class, net, ib0: ib1 did not fit, so it has no inode
    await ops.readdir(net, 1, 2)  # the listing goes on where the kernel asks
    assert [(name, next_id) for name, _, next_id in taken] == [(b"ib0", 1), (b"ib1", 2)]
    ib0 = taken[0][1]
    assert await lookup(ops, "class/net/ib0") == ib0
    await ops.forget([(ib0, 1)])
    assert (await ops.getattr(ib0, REQUEST)).st_ino == ib0  # the readdir's count is left
    await ops.forget([(ib0, 1), (taken[1][1], 1)])
    assert known(ops) == 3


# ----------------------------------------------------------------- kernfs's rules


async def open_file(ops: SysfsOperations, path: str, flags: int = os.O_RDONLY) -> int:
    return (await ops.open(await lookup(ops, path), flags, REQUEST)).fh


async def test_a_handle_is_bound_to_the_file_it_opened(host):
    ops = SysfsOperations(host.root)
    assert await host.store("class/net/ib0/create_child", b"0x8001") == 0
    mtu = await open_file(ops, "class/net/ib0.8001/mtu", os.O_RDWR)
    mcg = await open_file(ops, "kernel/debug/ipoib/ib0.8001_mcg")
    assert await ops.read(mtu, 0, 4096) == b"4092\n"
    assert await host.store("class/net/ib0/delete_child", b"0x8001") == 0
    await trio.testing.wait_all_tasks_blocked()
    assert await host.store("class/net/ib0/create_child", b"0x8001") == 0  # a new ib0.8001
    for call, err in ((ops.read(mtu, 0, 4096), errno.ENODEV),
                      (ops.write(mtu, 0, b"1500\n"), errno.ENODEV),
                      (ops.read(mcg, 0, 4096), errno.EIO)):  # fmt: skip
        with pytest.raises(pyfuse3.FUSEError) as e:
            await call
        assert e.value.errno == err
    assert host.netdevs.mtu(host.driver.interfaces["ib0.8001"].link) == 4092  # untouched
    fresh = await open_file(ops, "class/net/ib0.8001/mtu")
    assert await ops.read(fresh, 0, 4096) == b"4092\n"


async def test_reads_are_seq_files(host):
    ops = SysfsOperations(host.root)
    fh = await open_file(ops, "class/net/ib0/uevent")
    text = f"INTERFACE=ib0\nIFINDEX={host.driver.interfaces['ib0'].link.ifindex}\n".encode()
    assert await ops.read(fh, 3, 4096) == text[3:]  # a first read at an offset
    assert await ops.read(fh, 0, 5) == text[:5]
    assert await ops.read(fh, 5, 4096) == text[5:]  # goes on in the buffer
    assert await ops.read(fh, len(text), 4096) == b""
    mtu = await open_file(ops, "class/net/ib0/mtu")
    assert await ops.read(mtu, 0, 4096) == b"4092\n"
    assert await host.store("class/net/ib0/mtu", b"1500") == 0
    assert await ops.read(mtu, 5, 4096) == b""  # where it ended: the old buffer, used up
    assert await ops.read(mtu, 0, 4096) == b"1500\n"  # from 0 again: shown afresh


async def test_a_store_gets_a_page_and_a_c_string(host):
    ops = SysfsOperations(host.root)
    umcast = await open_file(ops, "class/net/ib0/umcast", os.O_WRONLY)
    assert await ops.write(umcast, 0, b"1" + b"\n" * 5000) == 4096  # a short write
    assert host.driver.interfaces["ib0"].umcast
    assert await ops.write(umcast, 0, b"") == 0  # no store at all
    assert host.driver.interfaces["ib0"].umcast
    mtu = await open_file(ops, "class/net/ib0/mtu", os.O_WRONLY)
    assert await ops.write(mtu, 0, b"1400\0junk") == 9
    assert await host.show("class/net/ib0/mtu") == "1400\n"
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.write(mtu, 0, b"1" * 5000)  # 4096 digits: ERANGE, as a TUN gives
    assert e.value.errno == errno.ERANGE
    links = await open_file(ops, ".ipoibfs/links", os.O_WRONLY)  # not sysfs: not cut
    request = json.dumps({"op": "dellink", "dev": "nope", "pad": "x" * 5000}).encode()
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.write(links, 0, request)
    assert e.value.errno == errno.ENODEV


async def test_ifalias_and_node_desc_keep_bytes(host):
    net = "class/net/ib0"
    assert await host.store(f"{net}/ifalias", b"\xff\xfe\n") == 0
    assert host.netdevs.links["ib0"].attrs["ifalias"] == b"\xff\xfe"
    assert await host.store(f"{net}/ifalias", b"a" * 255 + b"\n") == 0
    assert await host.store(f"{net}/ifalias", b"a" * 256) == errno.EINVAL
    assert await host.store(f"{net}/ifalias", b"ab\0cd\n") == 0
    assert host.netdevs.links["ib0"].attrs["ifalias"] == b"ab"
    f = host.node("class/infiniband/ipoibfs0/node_desc")
    assert await host.store("class/infiniband/ipoibfs0/node_desc", b"\xe9t\xe9\0x\n") == 0
    assert f.attr.show(f.ctx, f.dev) == b"\xe9t\xe9\n"


async def test_the_writer_is_the_opener_when_pyfuse3_gives_no_request(host, monkeypatch):
    """Outside pyfuse3 (here) the request container cannot be found: the opener counts."""
    from ipoibfs.sysfs import request

    assert request.writer(b"1\n", 1, 0) is None
    seen: list[Caller] = []
    ops = SysfsOperations(host.root)
    fh = await open_file(ops, "class/net/ib0/umcast", os.O_WRONLY)
    monkeypatch.setattr(
        "ipoibfs.sysfs.net.MirrorContext.set_umcast",
        lambda self, iface, buf: seen.append(current()) or _done(),
    )
    assert await ops.write(fh, 0, b"1\n") == 2
    assert seen == [Caller(REQUEST.uid, REQUEST.pid)]
    monkeypatch.setattr("ipoibfs.sysfs.fs.writer", lambda buf, fh, off: (4242, 7))
    assert await ops.write(fh, 0, b"1\n") == 2
    assert seen[-1] == Caller(7, 4242)


async def _done() -> None:
    return None
