"""Device topology under `ipoibfs exec`: the HCA's PCI function that both device links reach,
its driver and module, the queue files against a real TUN's, and the HCA profiles."""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import subprocess
import sys
from pathlib import Path

from ipoibfs.sysfs.queues import nr_cpu_ids, num_possible_cpus
from ipoibfs.wire.bitmap import bitmap_string

from .conftest import IPOIBFS, REPO, Host, read, run, wait_for, write

FUNCTION = "/sys/devices/pci0001:00/0001:00:00.0"

#: A script in the style of those that map netdevs to HCAs: the netdevs whose `device`
#: resolves to the HCA's, compared by basename.
PICK_BY_DEVICE = r"""
hca=$(basename "$(readlink -f /sys/class/infiniband/*/device)")
for n in /sys/class/net/*; do
    [ -e "$n/device" ] || continue
    [ "$(basename "$(readlink -f "$n/device")")" = "$hca" ] && basename "$n"
done
exit 0
"""

#: Modelled on ibdev2netdev: every Mellanox HCA (device/vendor), every netdev under its
#: device, the port from dev_id/dev_port, the state from carrier.
IBDEV2NETDEV = r"""
for hca in /sys/class/infiniband/*; do
    [ "$(cat "$hca/device/vendor")" = 0x15b3 ] || continue
    ibdev=$(basename "$hca")
    for netdir in "$hca"/device/net/*; do
        eth=$(basename "$netdir")
        port=$(printf "%d" "$(cat "$netdir/dev_id")")
        port1=$(printf "%d" "$(cat "$netdir/dev_port" 2>/dev/null || echo 0)")
        [ "$port1" -gt "$port" ] && port=$port1
        port=$((port + 1))
        if [ "$(cat "$netdir/carrier" 2>/dev/null)" = 1 ]; then state=Up; else state=Down; fi
        echo "$ibdev port $port ==> $eth ($state)"
    done
done
"""

#: Writes the same inputs to a queue file of ib0 and of a real TUN made in the same
#: namespace, and prints what each did (errno or byte count, then the file's text).
ORACLE = r"""
import os, sys
tun, ib = sys.argv[1], sys.argv[2]
cases = {
    "rx-0/rps_cpus": [b"1", b"3", b"2\n", b"f", b"ffff", b"1,0", b"0,1", b"x", b"", b" 1",
                      b"0x1", b"1,,1", b",1", b"1,", b"fffffffff", b"2\x00junk", b"\n", b"0"],
    "rx-0/rps_flow_cnt": [b"100", b"4294967297", b"-1", b"abc", b"0x10", b" 5", b"5\n",
                          b"+5", b"0"],
    "tx-0/tx_maxrate": [b"0", b"100", b"x"],
    "tx-0/xps_rxqs": [b"1", b"3", b"x", b"0"],
    "tx-0/xps_cpus": [b"1"],
    "tx-0/tx_timeout": [],
    "tx-0/traffic_class": [],
}
def result(path, data):
    out = []
    if data is not None:
        try:
            fd = os.open(path, os.O_WRONLY)
            try:
                out.append(f"wrote {os.write(fd, data)}")
            finally:
                os.close(fd)
        except OSError as e:
            out.append(f"errno {e.errno}")
    try:
        with open(path, "rb") as f:
            out.append(repr(f.read()))
    except OSError as e:
        out.append(f"read errno {e.errno}")
    return " ".join(out)
for name, inputs in cases.items():
    for data in [None, *inputs]:
        a = result(f"/sys/class/net/{tun}/queues/{name}", data)
        b = result(f"/sys/class/net/{ib}/queues/{name}", data)
        print(f"{name} {data!r}: tun {a} | ib {b}")
"""


def rtnl_link(host: Host, **request: object) -> int:
    """What `ip link add/set … type ipoib` asks the driver (the front end's control file),
    without depending on the front end."""
    return write(host.mp / ".ipoibfs" / "links", json.dumps(request))


def ex(host: str, *cmd: str, **kw) -> subprocess.CompletedProcess:
    return run(IPOIBFS, "exec", host, "--", *cmd, check=False, **kw)


def sh(host: str, script: str) -> subprocess.CompletedProcess:
    return ex(host, "sh", "-c", script)


def test_both_device_links_resolve_to_one_function_and_a_script_picks_ib0(lab):
    lab.up(1)
    h = lab.name(1)
    result = sh(h, "readlink -f /sys/class/net/ib0/device /sys/class/infiniband/ipoibfs0/device")
    assert result.stdout == f"{FUNCTION}\n{FUNCTION}\n", result.stderr
    result = sh(h, PICK_BY_DEVICE)
    assert result.stdout == "ib0\n", result.stderr  # lo has no device; nothing else matches
    # The function's files, its driver and the driver's module, as scripts reach them.
    script = (
        "cd /sys/class/net/ib0/device && cat vendor device subsystem_vendor "
        "subsystem_device class modalias numa_node && ls infiniband && ls net && "
        "readlink -f driver driver/module subsystem && ls /sys/module/ipoibfs/drivers && "
        "ls /sys/bus/pci/devices | grep 0001: && ls /sys/module | grep -x -e ib_ipoib "
        "-e ipoibfs && wc -l < resource && cat local_cpulist"
    )
    result = sh(h, script)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:7] == [
        "0x0000", "0x0000", "0x0000", "0x0000", "0x020700",
        "pci:v00000000d00000000sv00000000sd00000000bc02sc07i00", "-1",
    ]  # fmt: skip
    assert lines[7:9] == ["ipoibfs0", "ib0"]
    assert lines[9:12] == [
        "/sys/bus/pci/drivers/ipoibfs", "/sys/module/ipoibfs", "/sys/bus/pci"]  # fmt: skip
    assert lines[12:16] == ["pci:ipoibfs", "0001:00:00.0", "ib_ipoib", "ipoibfs"]
    real = Path("/sys/bus/pci/devices")
    endpoints = [d for d in real.iterdir() if read(d / "class") != "0x060400\n"]
    if endpoints:  # as many resource lines as this kernel's own devices show
        assert int(lines[16]) == len(read(endpoints[0] / "resource").splitlines())
    assert lines[17] == read("/sys/devices/system/cpu/online").strip()
    # Real entries are still there, next to the emulated ones.
    assert sh(h, "cat /sys/devices/system/cpu/online").stdout == read(
        "/sys/devices/system/cpu/online")  # fmt: skip


def test_with_the_connectx_profile_ibdev2netdev_finds_the_ipoib_netdevs(lab):
    lab.up(2, "--hca", "connectx6", "--hca", "h2=ipoibfs")
    h = lab.name(1)
    assert read(lab.host(1).mp / "class/infiniband/mlx5_0/hca_type") == "MT4123\n"
    assert (lab.host(2).mp / "class/infiniband/ipoibfs0").is_dir()  # the per-host choice
    result = sh(h, IBDEV2NETDEV)
    assert result.stdout == "mlx5_0 port 1 ==> ib0 (Up)\n", result.stderr
    # Children of both kinds are netdevs of the same function.
    assert write(lab.host(1).net() / "create_child", "0x8001") == 0
    assert rtnl_link(lab.host(1), op="newlink", link="ib0", name="blue", pkey=0x8002) == 0
    result = sh(h, "ls /sys/class/infiniband/mlx5_0/device/net")
    assert result.stdout == "blue\nib0\nib0.8001\n", result.stderr
    assert sh(h, IBDEV2NETDEV).stdout == (
        "mlx5_0 port 1 ==> blue (Down)\n"
        "mlx5_0 port 1 ==> ib0 (Up)\n"
        "mlx5_0 port 1 ==> ib0.8001 (Down)\n"
    )
    # The identity rdma-core's mlx5 provider and the kernel's mlx5_core table match.
    result = sh(
        h,
        "cd /sys/class/infiniband/mlx5_0 && cat device/modalias fw_ver board_id "
        "node_desc && readlink -f device/driver/module && ls /sys/module/mlx5_core",
    )
    lines = result.stdout.splitlines()
    assert fnmatch.fnmatch(lines[0], "pci:v000015B3d0000101Bsv*sd*bc*sc*i*"), lines
    assert lines[1:5] == ["20.31.1014", "MT_0000000223", f"{h} mlx5_0", "/sys/module/mlx5_core"]
    assert "drivers" in lines[5:] and "initstate" in lines[5:]
    example = str(REPO / "examples" / "ibdev2netdev.sh")
    assert ex(h, "sh", example).stdout == sh(h, IBDEV2NETDEV).stdout
    on_mount = lab.host(1).netns.exec("env", f"SYSFS={lab.host(1).mp}", "sh", example)
    assert on_mount.stdout == sh(h, IBDEV2NETDEV).stdout
    result = sh(h, "lspci -k -d 15b3:")  # pciutils (make setup): the function is on its bus
    assert result.stdout.startswith("0001:00:00.0 Infiniband controller: Mellanox"), result
    assert "\tKernel driver in use: mlx5_core\n" in result.stdout
    # lab status reads the HCA under its own name.
    status = lab.ipoibfs("status").stdout
    assert f"{h}  " in status and "0xffff" in status and f"{lab.name(2)}  " in status


def test_queue_files_read_and_write_like_a_real_tuns(lab, tmp_path):
    lab.up(1)
    h = lab.name(1)
    oracle = tmp_path / "oracle.py"
    oracle.write_text(ORACLE)
    lab.host(1).netns.ip("tuntap", "add", "dev", "oracle0", "mode", "tun")
    result = ex(h, sys.executable, str(oracle), "oracle0", "ib0")
    assert result.returncode == 0, result.stderr
    rows = result.stdout.splitlines()
    assert len(rows) == 42
    for row in rows:
        _, _, outcome = row.partition(": tun ")
        tun, _, ib = outcome.partition(" | ib ")
        assert tun == ib, row
    assert "rx-0/rps_cpus b'1': tun wrote 1 b'1\\n'" in result.stdout
    # What is not in a TUN: IPoIB has a qdisc and BQL.
    bql = sh(h, "cd /sys/class/net/ib0/queues/tx-0/byte_queue_limits && cat limit_max hold_time")
    assert bql.stdout == "1879048192\n1000\n", bql.stderr


def test_an_rtnl_child_gets_a_queue_per_cpu_and_connected_mode_one_tx_queue(lab):
    lab.up(1)
    n = min(num_possible_cpus(), 128)  # ipoib_get_max_num_queues
    assert rtnl_link(lab.host(1), op="newlink", link="ib0", name="blue", pkey=0x8002) == 0
    queues = lab.host(1).net("blue") / "queues"
    expected = [f"rx-{i}" for i in range(n)] + [f"tx-{i}" for i in range(n)]
    assert sorted(p.name for p in queues.iterdir()) == sorted(expected)
    assert rtnl_link(lab.host(1), op="changelink", dev="blue", mode=1) == 0
    wait_for(lambda: sorted(p.name for p in queues.iterdir()) == sorted(
        [f"rx-{i}" for i in range(n)] + ["tx-0"]), what="one TX queue")  # fmt: skip


def test_the_profile_is_a_mount_option(netns, mountpoint):
    result = run("mount", "-t", "fuse.ipoibfs", netns.name, str(mountpoint), "-o",
                 "hca=connectx6,name=h7", check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    host = Host(netns, mountpoint)
    assert sorted(p.name for p in (mountpoint / "class" / "infiniband").iterdir()) == ["mlx5_0"]
    assert read(mountpoint / "class/infiniband/mlx5_0/node_desc") == "h7 mlx5_0\n"
    assert read(host.net() / "device" / "vendor") == "0x15b3\n"
    bad = run(IPOIBFS, "mount", "--hca", "cx9", str(mountpoint), check=False)
    assert bad.returncode == 2 and "invalid choice: 'cx9'" in bad.stderr


def test_lab_up_refuses_an_unknown_host_or_profile_in_one_line(lab):
    for spec, message in (
        ("h9=connectx6", "--hca h9=connectx6: no such lab host"),
        ("cx9", "--hca cx9: unknown HCA profile 'cx9' (ipoibfs, connectx6)"),
    ):
        result = lab.ipoibfs("up", "--hosts", "1", "--hca", spec, check=False)
        assert result.returncode == 1
        assert result.stderr == f"ipoibfs: {message}\n" or result.stderr.startswith(
            f"ipoibfs: {message}"), result.stderr  # fmt: skip


def test_a_queue_file_belongs_to_its_interface(host):
    """An open queue file of a deleted child fails with ENODEV, and reaches nothing of a new
    child of the same name (kernfs_get_active)."""
    assert write(host.net() / "create_child", "0x8001") == 0
    path = host.net("ib0.8001") / "queues" / "rx-0" / "rps_cpus"
    fd = os.open(path, os.O_RDWR)
    try:
        assert os.write(fd, b"1") == 1
        assert write(host.net() / "delete_child", "0x8001") == 0
        wait_for(lambda: not host.net("ib0.8001").exists(), what="the child to go")
        assert write(host.net() / "create_child", "0x8001") == 0
        for call in (lambda: os.write(fd, b"1"), lambda: os.pread(fd, 100, 0)):
            try:
                call()
                raise AssertionError("the old handle still works")
            except OSError as e:
                assert e.errno == errno.ENODEV
        zero = bitmap_string(0, nr_cpu_ids()) + "\n"
        assert read(path) == zero  # the new child's own queue, untouched
    finally:
        os.close(fd)
