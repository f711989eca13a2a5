"""kernel/debug/ipoib, class/infiniband and module/ib_ipoib/parameters."""

from __future__ import annotations

import errno
import os
import re
import stat
import subprocess
import time

from .conftest import mount_host, read, wait_for, write

MCG_ENTRY = re.compile(
    r"GID: (?P<gid>[0-9a-f:]+)\n"
    r"  created: (?P<created>[ \d]{10})\n"
    r"  queuelen: (?P<queuelen>[ \d]{9})\n"
    r"  complete: (?P<complete>[ a-z]{9})\n"
    r"  send_only: (?P<send_only>[ a-z]{8})\n"
    r"\n"
)
BROADCAST = "ff12:401b:ffff:0:0:0:ffff:ffff"
SENT_ONLY = {"ff12:601b:ffff:0:0:0:0:2", "ff12:601b:ffff:0:0:0:0:16"}


def mcg_entries(text: str) -> list[dict]:
    entries = [m.groupdict() for m in MCG_ENTRY.finditer(text)]
    assert "".join(m.group(0) for m in MCG_ENTRY.finditer(text)) == text
    return entries


def test_debugfs_files_exist_per_interface(host):
    assert write(host.net() / "create_child", "0x8001") == 0
    names = sorted(os.listdir(host.mp / "kernel" / "debug" / "ipoib"))
    assert names == ["ib0.8001_mcg", "ib0.8001_path", "ib0_mcg", "ib0_path"]
    st = os.stat(host.debugfs("ib0_mcg"))
    assert stat.S_IMODE(st.st_mode) == 0o444 and st.st_size == 0
    assert read(host.debugfs("ib0_mcg")) == ""
    assert read(host.debugfs("ib0_path")) == ""
    assert write(host.debugfs("ib0_mcg"), "x") == errno.EINVAL  # debugfs: no write op


def test_mcg_after_up_lists_the_joined_groups_in_the_kernel_layout(host):
    before = time.monotonic()
    host.up()
    host.wait_carrier()
    expected = {BROADCAST, "ff12:401b:ffff:0:0:0:0:1", "ff12:601b:ffff:0:0:0:0:1"}
    wait_for(
        lambda: {e["gid"] for e in mcg_entries(read(host.debugfs("ib0_mcg")))} >= expected,
        what="IP-stack groups joined",
    )
    entries = mcg_entries(read(host.debugfs("ib0_mcg")))
    gids = [e["gid"] for e in entries]
    raw = [bytes.fromhex("".join(g.zfill(4) for g in gid.split(":"))) for gid in gids]
    assert raw == sorted(raw)  # ascending raw MGID
    for e in entries:
        # Router solicitations (ff02::2) and MLDv2 reports (ff02::16) are sent without
        # joining: send-only memberships, as on a kernel host. Joined groups are full.
        send_only = "yes" if e["gid"] in SENT_ONLY else "no"
        assert e["complete"].strip() == "yes" and e["send_only"].strip() == send_only, e
        assert e["queuelen"].strip() == "0"
        jiffies = int(e["created"])
        assert 4294892296 + before * 250 - 500 <= jiffies <= 4294892296 + time.monotonic() * 250
    host.netns.ip("link", "set", "ib0", "down")
    wait_for(lambda: read(host.debugfs("ib0_mcg")) == "", what="groups left on down")


def test_mcg_follows_a_socket_membership(host):
    host.up()
    host.wait_carrier()
    host.netns.ip("addr", "add", "198.18.0.1/24", "dev", "ib0")
    p = subprocess.Popen(
        ["ip", "netns", "exec", host.netns.name, "python3", "-c",
         "import socket,struct,sys\n"
         "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
         "m=struct.pack('4s4s',socket.inet_aton('239.1.2.3'),socket.inet_aton('198.18.0.1'))\n"
         "s.setsockopt(socket.IPPROTO_IP,socket.IP_ADD_MEMBERSHIP,m)\n"
         "print('joined',flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert p.stdout.readline() == "joined\n"
        group = "ff12:401b:ffff:0:0:0:f01:203"  # low 28 bits of 239.1.2.3
        wait_for(lambda: group in read(host.debugfs("ib0_mcg")), what="239.1.2.3 joined")
    finally:
        p.stdin.close()
        p.wait(timeout=5)
    wait_for(lambda: group not in read(host.debugfs("ib0_mcg")), what="239.1.2.3 left")


def test_hca_node_attributes(host):
    assert read(host.hca("node_type")) == "1: CA\n"
    assert read(host.hca("node_guid")) == "0002:c903:0000:0100\n"
    assert read(host.hca("sys_image_guid")) == "0002:c903:0000:0100\n"
    assert read(host.hca("fw_ver")) == "1.0.0\n"
    assert read(host.hca("hca_type")) == "ipoibfs\n"
    assert read(host.hca("node_desc")) == "h1 ipoibfs0\n"
    assert stat.S_IMODE(os.stat(host.hca("node_desc")).st_mode) == 0o644
    assert write(host.hca("node_desc"), "renamed") == 0
    assert read(host.hca("node_desc")) == "renamed\n"
    assert write(host.hca("node_guid"), "1") == errno.EACCES


def test_hca_port_attributes(host):
    port = ("ports", "1")
    assert read(host.hca(*port, "lid")) == "0x2\n"
    assert read(host.hca(*port, "sm_lid")) == "0x1\n"
    assert read(host.hca(*port, "lid_mask_count")) == "0\n"
    assert read(host.hca(*port, "sm_sl")) == "0\n"
    assert read(host.hca(*port, "state")) == "4: ACTIVE\n"
    assert read(host.hca(*port, "phys_state")) == "5: LinkUp\n"
    assert read(host.hca(*port, "rate")) == "100 Gb/sec (4X EDR)\n"
    assert read(host.hca(*port, "link_layer")) == "InfiniBand\n"
    assert re.fullmatch(r"0x[0-9a-f]{8}\n", read(host.hca(*port, "cap_mask")))
    gid0 = read(host.hca(*port, "gids", "0"))
    assert gid0 == "fe80:0000:0000:0000:0002:c903:0000:0101\n"
    assert gid0.replace(":", "").strip() == host.attr("ib0", "address").replace(":", "")[8:].strip()
    assert read(host.hca(*port, "gids", "1")) == "0000:0000:0000:0000:0000:0000:0000:0000\n"
    assert len(os.listdir(host.hca(*port, "gids"))) == 128
    assert read(host.hca(*port, "pkeys", "0")) == "0xffff\n"
    assert read(host.hca(*port, "pkeys", "1")) == "0x0000\n"
    assert read(host.hca(*port, "gid_attrs", "types", "0")) == "IB/RoCE v1\n"
    assert read(host.hca(*port, "gid_attrs", "types", "1")) == errno.ENODATA
    assert read(host.hca(*port, "gid_attrs", "ndevs", "0")) == errno.EINVAL  # IB: no netdev
    assert read(host.hca(*port, "gid_attrs", "ndevs", "1")) == errno.ENODATA


def test_two_ports_get_their_own_lids_and_guids(netns, mountpoint):
    h = mount_host(netns, mountpoint, "--ports", "2", "--guid", "0002:c903:00ab:cd00")
    assert sorted(os.listdir(h.hca("ports"))) == ["1", "2"]
    assert read(h.hca("ports", "2", "lid")) == "0x3\n"
    assert read(h.hca("ports", "2", "gids", "0")) == "fe80:0000:0000:0000:0002:c903:00ab:cd02\n"
    assert h.attr("ib1", "address").endswith(":00:02:c9:03:00:ab:cd:02\n")


def test_module_parameters(host):
    params = host.mp / "module" / "ib_ipoib" / "parameters"
    expected = {"send_queue_size": ("128", 0o444), "recv_queue_size": ("256", 0o444),
                "debug_level": ("0", 0o644), "mcast_debug_level": ("0", 0o644),
                "max_nonsrq_conn_qp": ("128", 0o444)}  # fmt: skip
    assert sorted(os.listdir(params)) == sorted(expected)
    for name, (value, mode) in expected.items():
        assert read(params / name) == f"{value}\n"
        assert stat.S_IMODE(os.stat(params / name).st_mode) == mode
    assert write(params / "send_queue_size", "64") == errno.EACCES
    assert write(params / "debug_level", "x") == errno.EINVAL
    assert write(params / "debug_level", "1\n") == 0
    assert read(params / "debug_level") == "1\n"
    assert write(host.net() / "create_child", "0x8001") == 0
    assert write(host.net() / "delete_child", "0x8001") == 0
    wait_for(lambda: "ib0.8001: delete child vlan ib0.8001" in host.log, what="debug message")


def test_module_parameters_at_mount_time(netns, mountpoint):
    h = mount_host(
        netns, mountpoint, "--param", "send_queue_size=1000", "--param", "max_nonsrq_conn_qp=9999"
    )
    assert read(h.param("send_queue_size")) == "1024\n"  # rounded up to a power of two
    assert read(h.param("max_nonsrq_conn_qp")) == "4096\n"  # clamped
    assert h.attr("ib0", "tx_queue_len") == "2048\n"
    assert h.netns.links()["ib0"]["txqlen"] == 2048
