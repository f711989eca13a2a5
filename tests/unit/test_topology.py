"""The HCA's PCI function, its driver and module, the queue files and the HCA profiles,
without FUSE: the pure formats (wire/bitmap.py, fabric/device.py) and the tables."""

from __future__ import annotations

import errno
import fnmatch
import os
import re

import pytest

from ipoibfs.errors import KernelError, UsageError
from ipoibfs.fabric.device import HCA_PROFILES, HcaDevice, hca_profile
from ipoibfs.lab import hca_profiles, no_offload_hosts
from ipoibfs.state import REAL_SYS
from ipoibfs.sysfs import queues as q
from ipoibfs.sysfs.nodes import Symlink
from ipoibfs.wire.bitmap import bitmap_list_string, bitmap_parse, bitmap_parselist, bitmap_string

from .test_sysfs import ADMIN, USER, Host, make_rtnl_child

FUNCTION = "devices/pci0001:00/0001:00:00.0"
#: drivers/pci/pci-sysfs.c modalias_show.
MODALIAS = re.compile(r"pci:v[0-9A-F]{8}d[0-9A-F]{8}sv[0-9A-F]{8}sd[0-9A-F]{8}bc[0-9A-F]{2}"
                      r"sc[0-9A-F]{2}i[0-9A-F]{2}")  # fmt: skip


# ----------------------------------------------------------------- %*pb, %*pbl, bitmap_parse


@pytest.mark.parametrize(
    ("mask", "nbits", "text"),
    [
        (0, 2, "0"),
        (3, 2, "3"),
        (1, 8, "01"),
        (0xFF, 8, "ff"),
        (0, 32, "00000000"),
        (1, 33, "0,00000001"),
        (0xF_FFFFFFFF, 36, "f,ffffffff"),
        (1 << 63, 64, "80000000,00000000"),
        (0, 0, ""),
    ],
)
def test_bitmap_string_is_percent_pb(mask, nbits, text):
    assert bitmap_string(mask, nbits) == text


def test_bitmap_list_string_is_percent_pbl():
    assert bitmap_list_string(0b11, 2) == "0-1"
    assert bitmap_list_string(0b1011101, 8) == "0,2-4,6"
    assert bitmap_list_string(0, 8) == ""
    assert bitmap_list_string(0b110, 2) == "1"  # bits from nbits on are not printed


#: What a real TUN's rx-0/rps_cpus did with each input on this 2-CPU machine (the oracle the
#: integration test compares live): the parsed mask, or the errno.
PARSE_2_CPUS = {
    b"2": 2, b"3": 3, b"2\n": 2, b" 1": 1, b"1 ": 1, b"0": 0, b"1\n\n": 1, b",1": 1,
    b"1,": 1, b"": 0, b"\n": 0, b" ": 0, b"1\t": 1, b"2\x00junk": 2, b"1\n2": 1,
    b"f": errno.EOVERFLOW, b"ffff": errno.EOVERFLOW, b"100": errno.EOVERFLOW,
    b"1,0": errno.EOVERFLOW, b"0,1": errno.EOVERFLOW, b"00000000,00000001": errno.EOVERFLOW,
    b"4": errno.EOVERFLOW, b"1,,1": errno.EOVERFLOW, b"fffffffff": errno.EOVERFLOW,
    b"0" * 23 + b"1": errno.EOVERFLOW, b"0,3": errno.EOVERFLOW,
    b"x": errno.EINVAL, b"0x1": errno.EINVAL,
}  # fmt: skip


@pytest.mark.parametrize(("buf", "expected"), PARSE_2_CPUS.items())
def test_bitmap_parse_like_the_kernel(buf, expected):
    try:
        assert bitmap_parse(buf, 2) == expected
    except KernelError as e:
        assert e.errno == expected


@pytest.mark.parametrize(
    ("buf", "nbits", "expected"),
    [
        (b"0-3,8", 16, 0x10F),
        (b"0-1023:2/256", 1024, sum(3 << i for i in range(0, 1024, 256))),
        (b"all", 4, 0xF),
        (b"ALL:1/2", 6, 0b010101),
        (b"N", 8, 0x80),
        (b"2-N", 4, 0b1100),
        (b"", 8, 0),
        (b" , 1 ,\t5\n", 8, 0b100010),
        (b"1\n5", 8, 0b10),  # a region ending at a newline ends the list
        (b"0-3:1/2\n5", 8, 0b100101),  # ... but not one with a group
        (b"0-3:1/2N", 8, 0b10000101),
        (b"0-7\0 4", 8, 0xFF),
        (b"1-0", 8, KernelError(errno.EINVAL)),
        (b"8", 8, KernelError(errno.ERANGE)),
        (b"0-8", 8, KernelError(errno.ERANGE)),
        (b"x", 8, KernelError(errno.EINVAL)),
        (b"-1", 8, KernelError(errno.EINVAL)),
        (b"5:1/2", 8, KernelError(errno.EINVAL)),  # a pattern needs a range
        (b"0-3:3/2", 8, KernelError(errno.EINVAL)),
        (b"0-7:1/0", 8, KernelError(errno.EINVAL)),
        (b"0-7:1", 8, KernelError(errno.EINVAL)),
        (b"4294967296", 8, KernelError(errno.EOVERFLOW)),
    ],
)
def test_bitmap_parselist_like_the_kernel(buf, nbits, expected):
    """lib/bitmap-str.c bitmap_parselist: the mask, or the errno it returns."""
    if isinstance(expected, KernelError):
        with pytest.raises(KernelError) as e:
            bitmap_parselist(buf, nbits)
        assert e.value.errno == expected.errno
    else:
        assert bitmap_parselist(buf, nbits) == expected


def test_bitmap_parse_chunks_and_widths():
    assert bitmap_parse(b"1,00000000", 64) == 1 << 32
    assert bitmap_parse(b"1  ,  0", 64) == 1 << 32  # white space and commas separate chunks
    assert bitmap_parse(b"ffffffff", 32) == 0xFFFFFFFF
    with pytest.raises(KernelError) as e:
        bitmap_parse(b"123456789", 64)  # nine digits in one chunk
    assert e.value.errno == errno.EOVERFLOW
    with pytest.raises(KernelError) as e:
        bitmap_parse(b"1,1", 32)  # two chunks for 32 bits
    assert e.value.errno == errno.EOVERFLOW


# ----------------------------------------------------------------- profiles and PCI ids


def test_the_neutral_profile_is_the_default_and_the_documented_one():
    p = hca_profile("ipoibfs", ports=2)
    assert (p.name, p.hca_type, p.fw_ver, p.board_id, p.speed, p.ports) == (
        "ipoibfs0", "ipoibfs", "1.0.0", "IPOIBFS_0001", "EDR", 2)  # fmt: skip
    assert p.pci.driver == "ipoibfs"
    assert p.pci.modalias == "pci:v00000000d00000000sv00000000sd00000000bc02sc07i00"
    assert list(HCA_PROFILES)[0] == "ipoibfs"


def test_the_connectx_profile_is_a_connectx6_that_rdma_core_and_the_kernel_match():
    p = hca_profile("connectx6", cm=False)
    assert (p.name, p.hca_type, p.board_id, p.speed, p.cm) == (
        "mlx5_0", "MT4123", "MT_0000000223", "HDR", False)  # fmt: skip
    assert re.fullmatch(r"20\.\d+\.\d{4}", p.fw_ver)  # mlx5's "%d.%d.%04d", ConnectX-6: 20
    assert p.pci.driver == "mlx5_core"
    assert MODALIAS.fullmatch(p.pci.modalias)
    # mlx5_core_pci_table: PCI_VDEVICE(MELLANOX, 0x101b); rdma-core providers/mlx5:
    # VERBS_PCI_MATCH(0x15b3, 0x101b): both match any subsystem and class.
    assert fnmatch.fnmatch(p.pci.modalias, "pci:v000015B3d0000101Bsv*sd*bc*sc*i*")
    assert HcaDevice("h1", p).node_desc == b"h1 mlx5_0"


def test_an_unknown_profile_is_one_line():
    with pytest.raises(UsageError, match=r"^unknown HCA profile 'cx9' \(choose from ipoibfs, "):
        hca_profile("cx9")


def test_pci_files_formats():
    pci = hca_profile("connectx6").pci
    assert pci.slot_name == "0001:00:00.0" and pci.root_bus == "pci0001:00"
    lines = pci.resource_text(13).splitlines()
    assert len(lines) == 13
    assert lines[0] == "0x00000000e0000000 0x00000000e1ffffff 0x000000000014220c"
    assert set(lines[1:]) == {"0x0000000000000000 0x0000000000000000 0x0000000000000000"}
    assert pci.uevent_text().splitlines() == [
        "DRIVER=mlx5_core", "PCI_CLASS=20700", "PCI_ID=15B3:101B", "PCI_SUBSYS_ID=15B3:0006",
        "PCI_SLOT_NAME=0001:00:00.0", f"MODALIAS={pci.modalias}",
    ]  # fmt: skip


def test_config_space_is_a_type0_header():
    pci = hca_profile("connectx6").pci
    cfg = pci.config_space()
    assert len(cfg) == 256
    assert cfg[0:4] == bytes.fromhex("b3151b10")  # vendor, device (little-endian)
    assert cfg[0x04:0x06] == bytes.fromhex("0604")  # memory space, bus master, INTx off
    assert cfg[0x08:0x0C] == bytes.fromhex("00000702")  # revision, prog-if, class 0207
    assert cfg[0x0E] == 0  # header type 0
    assert cfg[0x10:0x18] == (0xE000000C).to_bytes(8, "little")  # 64-bit prefetchable BAR 0
    assert cfg[0x2C:0x30] == bytes.fromhex("b3150600")
    assert cfg[0x34] == 0 and not cfg[0x40:].strip(b"\0")


def test_lab_hca_choices():
    names = ["t-h1", "t-h2", "t-h3"]
    assert hca_profiles([], names, "t") == dict.fromkeys(names, "ipoibfs")
    assert hca_profiles(["connectx6"], names, "t") == dict.fromkeys(names, "connectx6")
    assert hca_profiles(["connectx6", "t-h2=ipoibfs", "h3=ipoibfs"], names, "t") == {
        "t-h1": "connectx6", "t-h2": "ipoibfs", "t-h3": "ipoibfs"}  # fmt: skip
    with pytest.raises(UsageError, match="^--hca h9=connectx6: no such lab host"):
        hca_profiles(["h9=connectx6"], names, "t")
    with pytest.raises(UsageError, match="^--hca h1=cx9: unknown HCA profile 'cx9'"):
        hca_profiles(["h1=cx9"], names, "t")


def test_offloads_of_the_profiles_and_no_offload_hosts():
    for kind in ("ipoibfs", "connectx6"):
        p = hca_profile(kind)
        assert (p.ud_ip_csum, p.ud_tso, p.lro) == (True, True, True)
        p = hca_profile(kind, offload=False, ports=2)
        assert (p.ud_ip_csum, p.ud_tso, p.lro, p.ports, p.kind) == (False, False, False, 2, kind)
    names = ["t-h1", "t-h2", "t-h3"]
    assert no_offload_hosts([], names, "t") == set()
    assert no_offload_hosts([""], names, "t") == set(names)  # `--no-offload` alone: all
    assert no_offload_hosts(["h2", "t-h3"], names, "t") == {"t-h2", "t-h3"}
    with pytest.raises(UsageError, match="^--no-offload h9: no such lab host"):
        no_offload_hosts(["h9"], names, "t")


# ----------------------------------------------------------------- the tables


@pytest.fixture
async def cx(mirror_host) -> Host:
    """The mirror over a two-port ConnectX-6."""
    return await mirror_host(hca_profile("connectx6", ports=2))


async def test_both_device_links_name_one_function(cx):
    assert cx.node("class/net/ib0/device") == Symlink(f"../../../{FUNCTION}")
    assert cx.node("class/net/ib1/device") == Symlink(f"../../../{FUNCTION}")
    assert cx.node("class/infiniband/mlx5_0/device") == Symlink(f"../../../{FUNCTION}")
    assert cx.node("class/infiniband/mlx5_0/subsystem") == Symlink("../../infiniband")
    assert await cx.show("class/infiniband/mlx5_0/fw_pages") == "0\n"  # mlx5_ib's own


async def test_the_function_its_driver_and_module(cx):
    assert {"vendor", "device", "subsystem_vendor", "subsystem_device", "class", "modalias",
            "numa_node", "local_cpus", "local_cpulist", "resource", "driver", "subsystem",
            "infiniband", "net"} <= set(cx.names(FUNCTION))  # fmt: skip
    assert await cx.show(f"{FUNCTION}/vendor") == "0x15b3\n"
    assert await cx.show(f"{FUNCTION}/device") == "0x101b\n"
    assert await cx.show(f"{FUNCTION}/class") == "0x020700\n"
    assert await cx.show(f"{FUNCTION}/revision") == "0x00\n"
    assert await cx.show(f"{FUNCTION}/numa_node") == "-1\n"
    cpus = bitmap_string(q.cpu_online_mask(), q.nr_cpu_ids())
    assert await cx.show(f"{FUNCTION}/local_cpus") == cpus + "\n"
    assert cx.node(f"{FUNCTION}/driver") == Symlink("../../../bus/pci/drivers/mlx5_core")
    assert cx.node(f"{FUNCTION}/subsystem") == Symlink("../../../bus/pci")
    assert cx.names(f"{FUNCTION}/infiniband") == ["mlx5_0"]
    assert cx.node(f"{FUNCTION}/infiniband/mlx5_0") == Symlink(
        "../../../../class/infiniband/mlx5_0")  # fmt: skip
    assert cx.names(f"{FUNCTION}/net") == ["ib0", "ib1"]
    assert await cx.store("class/net/ib0/create_child", b"0x8001") == 0
    assert cx.names(f"{FUNCTION}/net") == ["ib0", "ib1", "ib0.8001"]
    assert cx.node(f"{FUNCTION}/net/ib0.8001") == Symlink("../../../../class/net/ib0.8001")
    assert cx.node("bus/pci/devices/0001:00:00.0") == Symlink(f"../../../{FUNCTION}")
    drv = "bus/pci/drivers/mlx5_core"
    assert sorted(cx.names(drv)) == ["0001:00:00.0", "module", "uevent"]
    assert cx.node(f"{drv}/0001:00:00.0") == Symlink(f"../../../../{FUNCTION}")
    assert cx.node(f"{drv}/module") == Symlink("../../../../module/mlx5_core")
    assert cx.node("module/mlx5_core/drivers/pci:mlx5_core") == Symlink(
        "../../../bus/pci/drivers/mlx5_core")  # fmt: skip
    assert await cx.show("module/mlx5_core/initstate") == "live\n"
    assert "ib_ipoib" in cx.names("module")


async def test_config_shows_64_bytes_without_cap_sys_admin(cx, monkeypatch):
    cfg = cx.device.profile.pci.config_space()
    assert await cx.show(f"{FUNCTION}/config", USER) == cfg[:64].decode(errors="surrogateescape")
    assert await cx.show(f"{FUNCTION}/config", ADMIN) == cfg.decode(errors="surrogateescape")
    assert cx.node(f"{FUNCTION}/config").attr.size == 256


ALERT = (
    "mlx5_core 0001:00:00.0: [Firmware Bug]: Overriding NUMA node to {}.  Contact your vendor "
    "for updates."
)


async def test_numa_node_store(cx):
    """numa_node_store: capable(CAP_SYS_ADMIN), kstrtoint (any failure EINVAL), then the
    node's checks; the same node changes nothing, another is taken with pci_alert's line."""
    path = f"{FUNCTION}/numa_node"
    assert await cx.store(path, b"-1", caller=USER) == errno.EPERM
    for bad in (b"-2", b"1024", b"x", b"0x", b"99999999999"):
        assert await cx.store(path, bad) == errno.EINVAL, bad
    assert await cx.store(path, b"-1\n") == 0
    assert await cx.show(path) == "-1\n" and not cx.log.lines  # unchanged: no alert
    if not os.path.isdir("/sys/devices/system/node/node0"):
        assert await cx.store(path, b"0") == errno.EINVAL  # not online
        return
    assert await cx.store(path, b"0") == 0
    assert await cx.show(path) == "0\n" and cx.device.numa_node == 0
    assert cx.log.lines == [ALERT.format(0)]
    with open("/sys/devices/system/node/node0/cpulist") as f:
        node_cpus = bitmap_parselist(f.read(), q.nr_cpu_ids())
    assert await cx.show(f"{FUNCTION}/local_cpulist") == (
        bitmap_list_string(node_cpus, q.nr_cpu_ids()) + "\n"
    )
    assert await cx.store(path, b"0") == 0 and len(cx.log.lines) == 1
    assert await cx.store(path, b"-1") == 0
    assert cx.log.lines[-1] == ALERT.format(-1) and cx.device.numa_node == -1


async def test_the_numa_node_is_set_through_the_context(cx, monkeypatch):
    set_to = []
    monkeypatch.setattr(type(cx.node(f"{FUNCTION}/numa_node").ctx), "set_numa_node",
                        lambda self, node: set_to.append(node))  # fmt: skip
    if os.path.isdir("/sys/devices/system/node/node0"):
        assert await cx.store(f"{FUNCTION}/numa_node", b"0") == 0
        assert set_to == [0] and cx.device.numa_node == -1  # nothing but the context sets it


async def test_one_queue_each_for_parents_and_legacy_children(cx):
    assert cx.names("class/net/ib0/queues") == ["rx-0", "tx-0"]
    assert cx.names("class/net/ib0/queues/rx-0") == ["rps_cpus", "rps_flow_cnt"]
    assert cx.names("class/net/ib0/queues/tx-0") == [
        "tx_timeout", "traffic_class", "xps_cpus", "xps_rxqs", "tx_maxrate",
        "byte_queue_limits"]  # fmt: skip
    assert cx.names("class/net/ib0/queues/tx-0/byte_queue_limits") == [
        "limit", "limit_max", "limit_min", "hold_time", "inflight", "stall_thrs",
        "stall_cnt", "stall_max"]  # fmt: skip
    tx = "class/net/ib0/queues/tx-0"
    assert await cx.show(f"{tx}/traffic_class") == errno.ENOENT  # not multiqueue
    assert await cx.show(f"{tx}/xps_cpus") == errno.ENOENT
    assert await cx.store(f"{tx}/xps_cpus", b"1", caller=USER) == errno.ENOENT  # checked first
    assert await cx.store(f"{tx}/tx_maxrate", b"5") == errno.EOPNOTSUPP
    assert await cx.store(f"{tx}/tx_maxrate", b"5", caller=USER) == errno.EPERM
    assert await cx.show(f"{tx}/byte_queue_limits/limit_max") == f"{q.DQL_MAX_LIMIT}\n"
    assert await cx.show(f"{tx}/byte_queue_limits/hold_time") == "1000\n"
    assert await cx.store(f"{tx}/byte_queue_limits/limit_min", b"max") == 0
    assert await cx.show(f"{tx}/byte_queue_limits/limit_min") == "1879048192\n"
    assert await cx.store(f"{tx}/byte_queue_limits/limit", b"1879048193") == errno.EINVAL
    assert await cx.store(f"{tx}/byte_queue_limits/stall_thrs", b"1") == errno.ERANGE
    assert await cx.store(f"{tx}/byte_queue_limits/stall_thrs", b"100") == 0
    assert await cx.show(f"{tx}/byte_queue_limits/stall_thrs") == "100\n"


async def test_rps_files_keep_what_is_written(cx):
    rx = "class/net/ib0/queues/rx-0"
    assert await cx.show(f"{rx}/rps_cpus") == bitmap_string(0, q.nr_cpu_ids()) + "\n"
    assert await cx.store(f"{rx}/rps_cpus", b"1\n") == 0
    assert await cx.show(f"{rx}/rps_cpus") == bitmap_string(1, q.nr_cpu_ids()) + "\n"
    assert await cx.store(f"{rx}/rps_cpus", b"x") == errno.EINVAL
    assert await cx.store(f"{rx}/rps_cpus", b"1", caller=USER) == errno.EPERM
    assert await cx.show(f"{rx}/rps_cpus") == bitmap_string(1, q.nr_cpu_ids()) + "\n"
    assert await cx.store(f"{rx}/rps_flow_cnt", b"100") == 0
    assert await cx.show(f"{rx}/rps_flow_cnt") == "128\n"
    assert await cx.store(f"{rx}/rps_flow_cnt", b"0x10") == 0
    assert await cx.show(f"{rx}/rps_flow_cnt") == "16\n"
    assert await cx.store(f"{rx}/rps_flow_cnt", b"4294967297") == errno.EINVAL
    assert await cx.store(f"{rx}/rps_flow_cnt", b" 5") == errno.EINVAL
    assert await cx.store(f"{rx}/rps_flow_cnt", b"0") == 0
    assert await cx.show(f"{rx}/rps_flow_cnt") == "0\n"
    # Each interface has its own queues.
    assert await cx.show("class/net/ib1/queues/rx-0/rps_cpus") == bitmap_string(
        0, q.nr_cpu_ids()) + "\n"  # fmt: skip


async def test_an_rtnl_child_has_a_queue_per_cpu_and_one_tx_queue_in_connected_mode(cx):
    await make_rtnl_child(cx)
    n = min(q.num_possible_cpus(), q.MAX_QUEUES)
    rx = [f"rx-{i}" for i in range(n)]
    assert cx.names("class/net/blue/queues") == rx + [f"tx-{i}" for i in range(n)]
    if n > 1:
        tx = "class/net/blue/queues/tx-0"
        assert await cx.show(f"{tx}/traffic_class") == "0\n"
        assert await cx.store(f"{tx}/xps_cpus", b"1") == 0
        assert await cx.show(f"{tx}/xps_cpus") == bitmap_string(1, q.nr_cpu_ids()) + "\n"
    cx.driver.interfaces["blue"].admin_cm = True  # as ipoib_set_mode leaves it
    assert cx.names("class/net/blue/queues") == [*rx, "tx-0"]
    if n > 1:
        with pytest.raises(FileNotFoundError):
            cx.node("class/net/blue/queues/tx-1")


async def test_queue_state_is_the_interfaces_and_stores_go_through_the_context(cx, monkeypatch):
    ib0 = cx.driver.interfaces["ib0"]
    calls = []
    kind = type(cx.node("class/net/ib0/queues/rx-0/rps_cpus").ctx)
    original = kind.set_rx_queue

    def spy(self, *args, **fields):
        calls.append(fields)
        original(self, *args, **fields)

    monkeypatch.setattr(kind, "set_rx_queue", spy)
    assert await cx.store("class/net/ib0/queues/rx-0/rps_cpus", b"1") == 0
    assert calls == [{"rps_cpus": 1}] and ib0.queues.rx[0].rps_cpus == 1
    assert await cx.store("class/net/ib0/queues/tx-0/byte_queue_limits/limit", b"77") == 0
    assert ib0.queues.tx[0].limit == 77
    assert not hasattr(q, "_QUEUES") and not hasattr(q, "queues_of")


async def test_connected_mode_resets_the_xps_maps_of_the_queues_it_drops(cx):
    """ipoib_set_mode -> netif_set_real_num_tx_queues(dev, 1) -> netif_reset_xps_queues_gt:
    tx-1 and up lose xps_cpus and xps_rxqs; tx-0 keeps them, as the other queue state."""
    await make_rtnl_child(cx)
    blue = cx.driver.interfaces["blue"]
    if len(blue.queues.tx) < 2:
        pytest.skip("one possible CPU: one queue")
    base = "class/net/blue/queues"
    for i in (0, 1):
        assert await cx.store(f"{base}/tx-{i}/xps_cpus", b"1") == 0
        assert await cx.store(f"{base}/tx-{i}/xps_rxqs", b"2") == 0
        assert await cx.store(f"{base}/tx-{i}/byte_queue_limits/limit_min", b"9") == 0
    await cx.driver.main.set_mode(blue, b"connected\n")
    assert cx.names(base)[-1] == "tx-0"
    await cx.driver.main.set_mode(blue, b"datagram\n")
    nbits = q.nr_cpu_ids()
    assert await cx.show(f"{base}/tx-0/xps_cpus") == bitmap_string(1, nbits) + "\n"
    assert await cx.show(f"{base}/tx-0/xps_rxqs") == bitmap_string(2, len(blue.queues.rx)) + "\n"
    assert await cx.show(f"{base}/tx-1/xps_cpus") == bitmap_string(0, nbits) + "\n"
    assert await cx.show(f"{base}/tx-1/xps_rxqs") == bitmap_string(0, len(blue.queues.rx)) + "\n"
    assert await cx.show(f"{base}/tx-1/byte_queue_limits/limit_min") == "9\n"


async def test_exec_views_merge_the_function_into_the_real_devices_and_bus(cx):
    """What exec mounts over /sys/devices and /sys/bus: the emulated entries among the real
    ones at every level down to bus/pci/drivers; a real entry is a link into REAL_SYS."""
    views = ".ipoibfs/sys"
    devices = cx.names(f"{views}/devices")
    assert devices[0] == "pci0001:00"
    real = sorted(os.listdir("/sys/devices"))
    assert devices[1:] == [n for n in real if n != "pci0001:00"]
    if real:
        assert cx.node(f"{views}/devices/{real[0]}") == Symlink(f"{REAL_SYS}/devices/{real[0]}")
    assert "pci" in cx.names(f"{views}/bus")
    assert cx.names(f"{views}/bus/pci/drivers")[0] == "mlx5_core"
    if os.path.isdir("/sys/bus/pci/drivers"):
        for name in os.listdir("/sys/bus/pci/drivers"):
            if name != "mlx5_core":
                assert cx.node(f"{views}/bus/pci/drivers/{name}") == Symlink(
                    f"{REAL_SYS}/bus/pci/drivers/{name}")  # fmt: skip
    assert cx.names(f"{views}/bus/pci/devices")[0] == "0001:00:00.0"
    assert "mlx5_core" in cx.names(f"{views}/module") and "ib_ipoib" in cx.names(
        f"{views}/module")  # fmt: skip
