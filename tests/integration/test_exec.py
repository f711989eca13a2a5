"""`ipoibfs exec`: unmodified scripts with the real /sys paths, ip and ethtool, on lab hosts."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

from .conftest import IPOIBFS, REPO, read, run, wait_for, write
from .test_fabric import partitioned_lab

EXAMPLES = REPO / "examples"


def ex(host: str, *cmd: str, **kw) -> subprocess.CompletedProcess:
    return run(IPOIBFS, "exec", host, "--", *cmd, check=False, **kw)


def sh(host: str, script: str, **kw) -> subprocess.CompletedProcess:
    return ex(host, "sh", "-c", script, **kw)


def test_ifup_ib_creates_a_child_that_carries_traffic_to_a_peer(lab, tmp_path):
    partitioned_lab(lab, tmp_path)
    for i in (1, 2):
        env = (f"DEVICE=ib0.8001 PKEY=yes PKEY_ID=0x8001 CONNECTED_MODE=yes "
               f"IPADDR=198.18.1.{i} PREFIX=24")  # fmt: skip
        result = sh(lab.name(i), f"{env} sh {EXAMPLES / 'ifup-ib.sh'}")
        assert result.returncode == 0, result.stderr
        link = lab.host(i).netns.links()["ib0.8001"]
        assert link["mtu"] == 65520 and "UP" in link["flags"]
        assert lab.host(i).attr("ib0.8001", "mode") == "connected\n"
    lab.host(2).wait_carrier("ib0.8001")
    assert lab.ping(1, "198.18.1.2", "-s", "30000", "-M", "do")


def test_the_first_examples_run_with_the_real_sys_paths(lab):
    lab.up(1)
    h = lab.name(1)
    result = sh(h, f"sh {EXAMPLES / 'create-pkey-child.sh'} ib0 0x7fff connected")
    assert result.stdout == "ib0.7fff: pkey 0xffff mode connected mtu 65520\n", result.stderr
    wait_for(lambda: lab.host(1).attr("ib0.7fff", "carrier") == "1\n", what="child carrier")
    lines = sh(h, f"sh {EXAMPLES / 'ipoib-report.sh'}").stdout.splitlines()
    assert [line.split() for line in lines[1:]] == [
        ["ib0", "datagram", "2044", "0xffff", "up", "-"],
        ["ib0.7fff", "connected", "65520", "0xffff", "up", "ib0"],
    ]  # lo, a real interface, is listed by the glob too but is not type 32
    groups = sh(h, f"sh {EXAMPLES / 'mcast-groups.sh'} ib0").stdout
    assert "ff12:401b:ffff:0:0:0:ffff:ffff           joined" in groups


def test_ip_link_type_ipoib_follows_rtnl_link_ops(lab, tmp_path):
    partitioned_lab(lab, tmp_path)
    for i in (1, 2):
        result = sh(lab.name(i), f"sh {EXAMPLES / 'ip-link-ipoib.sh'} ib0 blue 0x8001 "
                                 f"connected 198.18.1.{i}/24")  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "    ipoib pkey 0x8001 mode connected umcast 0000 " in result.stdout
        assert "blue@ib0: <" in result.stdout
    lab.host(2).wait_carrier("blue")
    assert lab.ping(1, "198.18.1.2", "-s", "30000", "-M", "do")
    h, host = lab.name(1), lab.host(1)
    # No sysfs attributes for an RTNL child; duplicate P_Keys are allowed.
    assert not (host.net("blue") / "pkey").exists()
    assert (host.net("blue") / "mtu").exists()
    assert sh(h, "ip link add link ib0 name blue2 type ipoib pkey 0x8001").returncode == 0
    listed = json.loads(sh(h, "ip -d -j link show blue2").stdout)[0]
    assert listed["link"] == "ib0"
    assert listed["linkinfo"] == {"info_kind": "ipoib", "info_data": {
        "key": "0x8001", "mode": "datagram", "umcast": "0000"}}  # fmt: skip
    # delete_child cannot remove them; ip link del removes both kinds; a parent stays.
    assert write(host.net() / "delete_child", "0x8001") == errno.ENODEV
    assert write(host.net() / "create_child", "0x8001") == 0
    assert sh(h, "ip link del ib0.8001 && ip link del blue2 && ip link del ib0").returncode == 0
    assert sorted(host.netns.links()) == ["blue", "ib0", "lo"]
    # What iproute2 prints for the driver's refusals.
    cases = {
        "ip link add link ib0 name x type ipoib pkey 0x8000": (2, "Invalid argument"),
        "ip link add link blue name x type ipoib": (2, "Invalid argument"),
        "ip link add link nope name x type ipoib": (1, 'Cannot find device "nope"'),
        "ip link add link ib0 name lo type ipoib": (2, "File exists"),
        "ip link add link ib0 name x type ipoib mode fast": (1, 'must be "datagram"or'),
        "ip link add link ib0 name x type ipoib pkey 0x10000": (255, "pkey is invalid"),
        "ip link add link ib0 name x mtu 70000 type ipoib": (2, "greater than device maximum"),
        "ip link set lo type ipoib mode connected": (2, "Operation not supported"),
        "ip link set ib0 mtu 70000": (2, "Error: mtu greater than device maximum."),
        "ip link set blue type ipoib mode sideways": (1, 'must be "datagram"or'),
    }
    for cmd, (status, message) in cases.items():
        result = sh(h, cmd)
        assert (result.returncode, message in result.stderr) == (status, True), cmd
    assert sorted(host.netns.links()) == ["blue", "ib0", "lo"]  # nothing half-made
    assert host.attr("blue", "mtu") == "65520\n"
    # The name may come first, as in ip-link(8); the generic part applies too.
    assert sh(h, "ip link add blue3 link ib0 mtu 2000 type ipoib pkey 0x8003").returncode == 0
    assert host.netns.links()["blue3"]["mtu"] == 2000
    assert sh(h, "ip link del blue3").returncode == 0
    assert sh(h, "ip link set blue type ipoib mode datagram umcast 1").returncode == 0
    shown = sh(h, "ip -d link show blue").stdout
    assert "ipoib pkey 0x8001 mode datagram umcast 0001 " in shown
    # Outside exec, the same operations through ipoibfs link.
    assert run(IPOIBFS, "link", h, "del", "blue").returncode == 0
    assert "blue" not in host.netns.links()


def test_ethtool_answers_as_the_driver(lab):
    lab.up(1)
    h = lab.name(1)
    info = sh(h, "ethtool -i ib0").stdout
    assert "driver: ib_ipoib\n" in info and "firmware-version: 1.0.0\n" in info
    assert "bus-info: 0001:00:00.0\n" in info  # the HCA's PCI function, as ipoib_get_drvinfo
    stats = sh(h, "ethtool -S ib0").stdout.splitlines()
    assert [line.split(":")[0].strip() for line in stats[1:]] == [
        "rx_packets", "tx_packets", "rx_bytes", "tx_bytes", "tx_errors", "rx_dropped",
        "tx_dropped", "multicast"]  # fmt: skip
    plain = sh(h, "ethtool ib0").stdout
    assert "\tSpeed: 100000Mb/s\n" in plain and "\tLink detected: yes\n" in plain
    assert sh(h, "ethtool -C ib0 rx-usecs 65535 rx-frames 16").returncode == 0
    coalesce = sh(h, "ethtool -c ib0").stdout
    assert "rx-usecs: 65535\n" in coalesce and "rx-frames: 16\n" in coalesce
    for bad in ("rx-usecs 65536", "tx-usecs 3"):
        assert sh(h, f"ethtool -C ib0 {bad}").returncode == 1
    assert "rx-usecs: 65535\n" in sh(h, "ethtool -c ib0").stdout  # unchanged
    features = sh(h, "ethtool -k ib0").stdout  # the driver's (test_offloads.py has the rest)
    assert features.startswith("Features for ib0:\nrx-checksumming: on\n")
    assert "\ttx-tcp-segmentation: on\n" in features
    real = sh(h, "ethtool -i lo")  # a real interface: the real ethtool answers
    assert (real.returncode, real.stdout) == (71, "")
    assert "Cannot get driver information: Operation not supported" in real.stderr
    plain_down = sh(h, "ip link set ib0 down && ethtool ib0").stdout
    assert "\tSpeed: Unknown!\n" in plain_down and "\tLink detected: no\n" in plain_down


def test_a_static_binary_sees_the_emulated_sys(lab):
    busybox = shutil.which("busybox")  # busybox-static, from make setup
    assert busybox, "busybox is not installed"
    ldd = run("ldd", busybox, check=False)
    assert "not a dynamic executable" in ldd.stdout + ldd.stderr
    lab.up(1)
    h = lab.name(1)
    assert ex(h, busybox, "cat", "/sys/class/net/ib0/mode").stdout == "datagram\n"
    create = "echo 0x8002 > /sys/class/net/ib0/create_child"
    assert ex(h, busybox, "sh", "-c", create).returncode == 0
    assert "ib0.8002" in lab.host(1).netns.links()
    listing = ex(h, busybox, "ls", "/sys/kernel/debug/ipoib").stdout.split()
    assert "ib0.8002_path" in listing


def test_exec_passes_io_and_status_through_and_leaves_no_trace(lab):
    lab.up(1)
    h = lab.name(1)
    before = Path("/proc/self/mountinfo").read_text()
    result = sh(h, "read line; echo out:$line; echo err >&2; exit 7", input="hello\n")
    assert (result.returncode, result.stdout, result.stderr) == (7, "out:hello\n", "err\n")
    assert Path("/proc/self/mountinfo").read_text() == before
    assert "ipoibfs-exec" not in Path("/proc/mounts").read_text()
    assert ex(h, "ip", "-o", "link", "show", "ib0").returncode == 0  # in the host's namespace
    assert run(IPOIBFS, "exec", "no-such-host", "--", "true", check=False).stderr == (
        "ipoibfs: 'no-such-host' is neither a lab host nor an ipoibfs mountpoint\n")  # fmt: skip
    assert ex(h, "no-such-command").returncode == 127


def test_exec_on_a_mountpoint(host):
    result = run(IPOIBFS, "exec", str(host.mp), "--", "cat", "/sys/class/net/ib0/pkey",
                 check=False)  # fmt: skip
    assert result.stdout == "0xffff\n", result.stderr
    assert read(host.net() / "pkey") == "0xffff\n"


def test_debug_tracing_follows_the_module_parameters(lab):
    lab.up(2)
    h, log = lab.name(1), lambda: lab.host(1).log
    params = "/sys/module/ib_ipoib/parameters"
    listing = sh(h, f"ls -l {params}").stdout
    assert "-rw-r--r--" in next(line for line in listing.splitlines() if "debug_level" in line)
    assert "data_debug_level" not in listing  # no --debug: CONFIG_..._DEBUG_DATA is off
    assert "Start path record lookup" not in log()
    script = (f"echo 1 > {params}/debug_level && echo 1 > {params}/mcast_debug_level && "
              "ip link add link ib0 name c1 type ipoib && ip link set c1 up && "
              "ping -c1 -W2 198.18.0.2 && echo connected > /sys/class/net/ib0/mode && "
              "ping -c1 -W2 198.18.0.2")  # fmt: skip
    assert sh(h, script).returncode == 0
    gid2 = "fe80:0000:0000:0000:0002:c903:0000:0201"
    bcast = "ff12:401b:ffff:0000:0000:0000:ffff:ffff"
    for line in (
        "ib0: no pkey specified, using parent pkey",
        "c1: bringing up interface",
        f"c1: joining MGID {bcast}",
        f"c1: join completion for {bcast} (status 0)",
        "ib0: enabling connected mode will cause multicast packet drops",
        "ib0: path_free",
        f"ib0: Start path record lookup for {gid2}",
        f"ib0: PathRec LID 0x0003 for GID {gid2}",
        "ib0: Request connection 0x",
        "ib0: REP received.",
    ):
        assert f"{lab.name(1)}: {line}" in log(), line
    assert "sending packet" not in log()


def test_debug_adds_data_path_tracing(lab):
    lab.up(2, "--debug")
    h, params = lab.name(1), "/sys/module/ib_ipoib/parameters"
    assert sh(h, f"echo 1 > {params}/data_debug_level && echo 1 > {params}/cm_data_debug_level"
                 " && ping -c1 -W2 198.18.0.2").returncode == 0  # fmt: skip
    wait_for(lambda: f"{h}: ib0: sending packet, length=" in lab.host(1).log, what="UD trace")
    assert f"{lab.name(2)}: ib0: received " not in lab.host(2).log  # h2's level is still 0
    assert sh(h, "echo connected > /sys/class/net/ib0/mode && ping -c1 -W2 -s 5000 "
                 "198.18.0.2").returncode == 0  # fmt: skip
    assert f"{h}: ib0: sending packet: head 0x" in lab.host(1).log


def test_shell_is_a_shell_on_the_host(lab):
    lab.up(1)
    env = {**os.environ, "SHELL": "/bin/sh"}
    result = run(IPOIBFS, "shell", lab.name(1), input="cat /sys/class/net/ib0/mode\nexit 4\n",
                 env=env, check=False)  # fmt: skip
    assert (result.returncode, result.stdout) == (4, "datagram\n"), result.stderr


def test_ip_s_link_shows_the_driver_counters(lab):
    lab.up(2)
    assert lab.ping(1, "198.18.0.2", count=3)
    h, stats = lab.name(1), lab.host(1).net() / "statistics"

    def same() -> bool:
        shown = json.loads(sh(h, "ip -s -j link show ib0").stdout)[0]["stats64"]
        text = sh(h, "ip -s link show ib0").stdout.splitlines()
        rx_line = text[text.index(next(t for t in text if t.strip().startswith("RX:"))) + 1]
        ours = [int(read(stats / n)) for n in ("rx_bytes", "rx_packets", "tx_bytes")]
        return [shown["rx"]["bytes"], shown["rx"]["packets"], shown["tx"]["bytes"]] == ours and (
            rx_line.split()[:2] == [str(ours[0]), str(ours[1])])  # fmt: skip

    wait_for(same, what="ip -s link showing the driver's counters")
