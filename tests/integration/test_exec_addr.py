"""`ip addr`, `ip maddr`, `ifconfig` and `hostname` under `ipoibfs exec`, as on a kernel
IPoIB host. The expected lines are derived from iproute2 (ip/ipaddress.c print_linkinfo,
print_addrinfo; ip/ipmaddr.c; ip/iplink_ipoib.c), net-tools (lib/interface.c ife_print_long,
lib/ib.c pr_ib) and the kernel's dev_mc list (ip_ib_mc_map, ipv6_ib_mc_map)."""

from __future__ import annotations

import json
import os
import socket
import sys

from .conftest import IPOIBFS, run, wait_for, write
from .test_exec import ex, sh

ADDR = "80:00:00:48:fe:80:00:00:00:00:00:00:00:02:c9:03:00:00:01:01"  # RC, QPN 0x48, GID
BRD = "00:ff:ff:ff:ff:12:40:1b:ff:ff:00:00:00:00:00:00:ff:ff:ff:ff"  # P_Key 0xffff
CHILD_ADDR = "80:00:00:49:fe:80:00:00:00:00:00:00:00:02:c9:03:00:00:01:01"
CHILD_BRD = "00:ff:ff:ff:ff:12:40:1b:80:01:00:00:00:00:00:00:ff:ff:ff:ff"


def qdisc(lab, ifname: str = "ib0") -> str:
    """The queueing discipline the kernel gave the netdev (the system's default_qdisc)."""
    return lab.host(1).netns.links()[ifname]["qdisc"]


def test_ip_addr_shows_the_ipoib_link_as_iproute2_prints_it(lab):
    lab.up(1)
    h = lab.name(1)
    real = lab.host(1).netns.ip("addr", "show", "ib0").stdout.splitlines()
    result = ex(h, "ip", "addr", "show", "ib0")
    assert result.returncode == 0, result.stderr
    ours = result.stdout.splitlines()
    assert ours[0] == (f"2: ib0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 2044 qdisc {qdisc(lab)} "
                       "state UP group default qlen 256")  # fmt: skip
    assert ours[1] == f"    link/infiniband {ADDR} brd {BRD}"
    assert ours[2:] == real[2:]  # the addresses are the kernel's own
    assert ours[2:4] == ["    inet 198.18.0.1/24 scope global ib0",
                         "       valid_lft forever preferred_lft forever"]  # fmt: skip
    # `ip a`, `ip -4 a` and `ip addr show dev ib0` are the same command.
    assert ex(h, "ip", "a").stdout.count(f"    link/infiniband {ADDR} brd {BRD}\n") == 1
    assert ex(h, "ip", "addr", "show", "dev", "ib0").stdout == result.stdout
    four = ex(h, "ip", "-4", "addr", "show", "ib0").stdout.splitlines()
    assert four[0] == ours[0] and four[1] == "    inet 198.18.0.1/24 scope global ib0"
    # -d: ipoib_print_opt's line where the TUN's `tun type tun …` was.
    details = ex(h, "ip", "-d", "addr", "show", "ib0").stdout.splitlines()
    assert details[1].startswith(f"    link/infiniband {ADDR} brd {BRD} promiscuity 0  "
                                 "allmulti 0 minmtu 0 maxmtu 65520 ")  # fmt: skip
    assert details[2].startswith("    ipoib pkey 0xffff mode datagram umcast 0000 numtxqueues ")
    # -o: one line per address, named by ll_index_to_name; -o link keeps the address.
    oneline = ex(h, "ip", "-o", "addr", "show", "ib0").stdout.splitlines()
    assert oneline[0] == ("2: ib0    inet 198.18.0.1/24 scope global ib0\\       valid_lft "
                          "forever preferred_lft forever")  # fmt: skip
    link = ex(h, "ip", "-o", "link", "show", "ib0").stdout
    assert link.startswith("2: ib0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 2044 ")
    assert f"\\    link/infiniband {ADDR} brd {BRD}\n" in link
    # -br: the name column, then the addresses.
    brief = ex(h, "ip", "-br", "addr", "show", "ib0").stdout
    assert brief.startswith("ib0              UP             198.18.0.1/24 fd18::1/64 ")


def test_a_child_is_named_after_its_parent_and_shows_m_down(lab):
    lab.up(1)
    h, host = lab.name(1), lab.host(1)
    assert write(host.net() / "create_child", "0x8001") == 0
    line = ex(h, "ip", "addr", "show", "ib0.8001").stdout.splitlines()
    assert line[0] == (f"3: ib0.8001@ib0: <BROADCAST,MULTICAST> mtu 4092 qdisc "
                       f"{qdisc(lab, 'ib0.8001')} state DOWN group default qlen 256")  # fmt: skip
    assert line[1] == f"    link/infiniband {CHILD_ADDR} brd {CHILD_BRD}"
    listed = json.loads(ex(h, "ip", "-j", "addr", "show", "ib0.8001").stdout)[0]
    assert list(listed)[:3] == ["ifindex", "link", "ifname"]  # print_name_and_link's order
    assert listed["link"] == "ib0" and listed["broadcast"] == CHILD_BRD
    # The parent down: print_link_flags adds M-DOWN to the child's flags.
    host.netns.ip("link", "set", "ib0", "down")
    shown = ex(h, "ip", "link", "show", "ib0.8001").stdout
    assert shown.startswith("3: ib0.8001@ib0: <BROADCAST,MULTICAST,M-DOWN> mtu 4092 ")
    flags = json.loads(ex(h, "ip", "-j", "link", "show", "ib0.8001").stdout)[0]["flags"]
    assert flags == ["BROADCAST", "MULTICAST", "M-DOWN"]


def test_ip_j_addr_is_iproute2s_json(lab):
    lab.up(1)
    h, netns = lab.name(1), lab.host(1).netns
    text = ex(h, "ip", "-j", "addr").stdout
    real = json.loads(netns.ip("-j", "addr").stdout)
    ours = json.loads(text)
    assert text.startswith('[{"ifindex":1,"ifname":"lo",') and text.endswith("}]\n")
    assert ours[0] == real[0]  # lo is untouched
    ib0 = ours[1]
    assert list(ib0) == ["ifindex", "ifname", "flags", "mtu", "qdisc", "operstate", "group",
                         "txqlen", "link_type", "address", "broadcast", "addr_info"]  # fmt: skip
    assert ib0["flags"] == ["BROADCAST", "MULTICAST", "UP", "LOWER_UP"]
    assert (ib0["link_type"], ib0["address"], ib0["broadcast"]) == ("infiniband", ADDR, BRD)
    assert ib0["addr_info"] == real[1]["addr_info"]
    # -p: json_writer's pretty layout, as for every other link.
    pretty = ex(h, "ip", "-j", "-p", "addr", "show", "ib0").stdout
    assert pretty.startswith('[ {\n        "ifindex": 2,\n        "ifname": "ib0",\n        '
                             '"flags": [ "BROADCAST","MULTICAST","UP","LOWER_UP" ],\n')  # fmt: skip
    assert f'        "address": "{ADDR}",\n        "broadcast": "{BRD}",\n' in pretty
    assert pretty.endswith("    } ]\n")
    details = json.loads(ex(h, "ip", "-d", "-j", "addr", "show", "ib0").stdout)[0]
    assert (details["min_mtu"], details["max_mtu"]) == (0, 65520)
    assert details["linkinfo"] == {"info_kind": "ipoib", "info_data": {
        "key": "0xffff", "mode": "datagram", "umcast": "0000"}}  # fmt: skip


#: ib0's dev_mc list on a lab host: ff02::1 (loaded when the netdev registered), the
#: solicited-node group of fd18::1 (added while down), 224.0.0.1 (ip_mc_up), then the
#: solicited-node group of the link-local address (made with carrier); ff01::1 is below
#: link-local scope and never reaches the device.
MC_LINKS = [
    "00:ff:ff:ff:ff:12:60:1b:ff:ff:00:00:00:00:00:00:00:00:00:01",
    "00:ff:ff:ff:ff:12:60:1b:ff:ff:00:00:00:00:00:01:ff:00:00:01",
    "00:ff:ff:ff:ff:12:40:1b:ff:ff:00:00:00:00:00:00:00:00:00:01",
    "00:ff:ff:ff:ff:12:60:1b:ff:ff:00:00:00:00:00:01:ff:00:01:01",
]


def test_ip_maddr_lists_the_ib_multicast_addresses(lab):
    lab.up(1)
    h = lab.name(1)
    result = ex(h, "ip", "maddr", "show", "dev", "ib0")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "".join(
        ["2:\tib0\n"] + [f"\tlink  {a}\n" for a in MC_LINKS]
        + ["\tinet  224.0.0.1\n", "\tinet6 ff02::1:ff00:101\n", "\tinet6 ff02::1:ff00:1\n",
           "\tinet6 ff02::1\n", "\tinet6 ff01::1\n"])  # fmt: skip
    assert ex(h, "ip", "maddr", "show", "ib0").stdout == result.stdout
    listed = json.loads(ex(h, "ip", "-j", "maddr", "show", "dev", "ib0").stdout)
    assert listed[0]["ifname"] == "ib0"
    assert listed[0]["maddr"][:5] == [{"link": a} for a in MC_LINKS] + [
        {"family": "inet", "address": "224.0.0.1"}]  # fmt: skip
    assert ex(h, "ip", "-0", "maddr", "show", "ib0").stdout == "".join(
        ["2:\tib0\n"] + [f"\tlink  {a}\n" for a in MC_LINKS])  # fmt: skip
    # A group a socket joins is loaded too, mapped with ip_ib_mc_map (the low 28 bits).
    join = ("import socket, subprocess\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,"
            " socket.inet_aton('239.1.2.3') + socket.inet_aton('198.18.0.1'))\n"
            "print(subprocess.run(['ip', 'maddr', 'show', 'ib0'], capture_output=True,"
            " text=True).stdout, end='')\n")  # fmt: skip
    joined = ex(h, sys.executable, "-c", join)
    assert "\tlink  00:ff:ff:ff:ff:12:40:1b:ff:ff:00:00:00:00:00:00:0f:01:02:03\n" in (
        joined.stdout), joined.stderr  # fmt: skip
    assert "\tinet  239.1.2.3\n" in joined.stdout


def test_ifconfig_shows_infiniband_and_the_driver_refuses_a_large_mtu(lab):
    lab.up(1)
    h, host = lab.name(1), lab.host(1)
    result = ex(h, "ifconfig", "ib0")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "ib0: flags=4163<UP,BROADCAST,RUNNING,MULTICAST>  mtu 2044"
    assert lines[1] == "        inet 198.18.0.1  netmask 255.255.255.0  broadcast 0.0.0.0"
    hw = ("        infiniband 80:00:00:48:FE:80:00:00:00:00:00:00:00:00:00:00:00:00:00:00  "
          "txqueuelen 256  (InfiniBand)")  # fmt: skip
    assert hw in lines
    assert lines[lines.index(hw) + 1].startswith("        RX packets ")
    assert result.stderr == ("Infiniband hardware address can be incorrect! Please read BUGS "
                             "section in ifconfig(8).\n")  # fmt: skip
    # SIOCSIFMTU through the driver: 9000 is above what datagram mode allows.
    refused = ex(h, "ifconfig", "ib0", "mtu", "9000")
    assert (refused.returncode, refused.stdout, refused.stderr) == (
        1, "", "SIOCSIFMTU: Invalid argument\n")  # fmt: skip
    assert host.attr("ib0", "mtu") == "2044\n"
    assert ex(h, "ifconfig", "ib0", "mtu", "1500").returncode == 0
    wait_for(lambda: host.attr("ib0", "mtu") == "1500\n", what="mtu 1500")
    short = ex(h, "ifconfig", "-s", "ib0").stdout.splitlines()
    assert short[0].startswith("Iface      MTU    RX-OK RX-ERR RX-DRP RX-OVR    TX-OK ")
    assert short[1].startswith("ib0              1500 ") and short[1].endswith(" BMRU")
    assert ex(h, "ifconfig", "lo").stdout.startswith("lo: flags=73<UP,LOOPBACK,RUNNING>  ")


def test_the_host_has_its_own_name(lab, host):
    lab.up(1)
    h = lab.name(1)
    mine = socket.gethostname()
    assert ex(h, "hostname").stdout == f"{h}\n"
    assert sh(h, "cat /proc/sys/kernel/hostname").stdout == f"{h}\n"
    renamed = run(IPOIBFS, "exec", "--name", "node7", h, "--", "hostname", check=False)
    assert renamed.stdout == "node7\n", renamed.stderr
    bad = run(IPOIBFS, "exec", "--name", "a/b", h, "--", "hostname", check=False)
    assert bad.returncode == 1 and "host name" in bad.stderr
    # A mountpoint is named as it was mounted (`--name h1`).
    on_mount = run(IPOIBFS, "exec", str(host.mp), "--", "hostname", check=False)
    assert on_mount.stdout == "h1\n", on_mount.stderr
    assert socket.gethostname() == mine  # nothing changed outside
    env = {**os.environ, "SHELL": "/bin/sh"}
    shell = run(IPOIBFS, "shell", h, input='echo "$PS1"; hostname\n', env=env, check=False)
    assert shell.stdout == f"({h}) # \n{h}\n", shell.stderr


def test_a_caller_with_other_capabilities_gets_a_front_end_of_its_own(lab):
    """The front-end server runs a call only for a caller like itself: without
    CAP_NET_ADMIN the front end runs in the caller's process, and the driver refuses the
    MTU as the kernel would refuse that caller's RTM_NEWLINK."""
    lab.up(1)
    h = lab.name(1)
    result = sh(h, "capsh --drop=cap_net_admin -- -c 'ip link set ib0 mtu 1500'; echo $?; "
                   "capsh --drop=cap_net_admin -- -c 'ip addr show ib0' | head -2")  # fmt: skip
    assert result.stdout.splitlines() == [
        "2", "2: ib0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 2044 qdisc "
        f"{qdisc(lab)} state UP group default qlen 256",
        f"    link/infiniband {ADDR} brd {BRD}"]  # fmt: skip
    assert result.stderr == "RTNETLINK answers: Operation not permitted\n"
    assert lab.host(1).attr("ib0", "mtu") == "2044\n"


def test_a_caller_that_is_not_root_is_refused_as_the_kernel_refuses_it(lab):
    lab.up(1)
    h = lab.name(1)
    nobody = "setpriv --reuid=65534 --regid=65534 --clear-groups"
    result = sh(h, f"{nobody} ip link set ib0 mtu 1500; echo $?; {nobody} ifconfig ib0 "
                   f"mtu 1500; echo $?; {nobody} ip addr show lo")  # fmt: skip
    assert result.stdout.splitlines()[:2] == ["2", "1"]
    assert result.stdout.splitlines()[2].startswith("1: lo: <LOOPBACK")  # shows still work
    assert result.stderr == ("RTNETLINK answers: Operation not permitted\n"
                             "SIOCSIFMTU: Operation not permitted\n")  # fmt: skip
    assert lab.host(1).attr("ib0", "mtu") == "2044\n"
