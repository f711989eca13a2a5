"""Several hosts on one emulated fabric: real IP traffic in datagram mode, partitions,
multicast, paths, and the lab's lifetime."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
from pathlib import Path

from .conftest import (
    GUID,
    IPOIBFS,
    counter,
    daemon_pid,
    is_mounted,
    no_reply,
    read,
    run,
    wait_for,
    write,
)

PARTITIONS = """\
# two IPoIB partitions besides the default one
Default=0x7fff, ipoib : ALL=full ;
blue=0x0001, ipoib : ALL=full ;
"""


RECEIVER = """
import hashlib, socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
srv = socket.socket(family, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], 5001)); srv.listen(1)
print("listening", flush=True)
conn, _ = srv.accept(); h = hashlib.sha256(); n = 0
while data := conn.recv(1 << 16):
    h.update(data); n += len(data)
print(n, h.hexdigest(), flush=True)
"""
SENDER = """
import hashlib, os, socket, sys
data = os.urandom(int(sys.argv[2]))
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
with socket.create_connection((sys.argv[1], 5001), timeout=20) as s:
    s.sendall(data)
print(len(data), hashlib.sha256(data).hexdigest(), flush=True)
"""


def tcp_transfer(lab, server: int, client: int, address: str, size: int = 8 << 20) -> None:
    """Send `size` random bytes over TCP; both ends must agree on length and SHA-256."""
    srv = subprocess.Popen(["ip", "netns", "exec", lab.name(server), "python3", "-c", RECEIVER,
                            address], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert srv.stdout.readline() == "listening\n"
        sent = lab.host(client).netns.exec("python3", "-c", SENDER, address, str(size)).stdout
        assert srv.stdout.readline() == sent
        assert sent.split()[0] == str(size)
    finally:
        srv.kill()
        srv.wait()


def assert_counts_arp(lab) -> None:
    """The ARP exchange goes through the driver's counters, as through ipoib_start_xmit."""
    h3 = lab.host(3)
    before = counter(h3, "rx_packets")
    h3.netns.ip("addr", "add", "198.18.0.99/24", "dev", "ib0")
    assert lab.ping(1, "198.18.0.99", count=1)
    assert counter(h3, "rx_packets") >= before + 2  # ARP + echo


def test_ipv4_and_ipv6_ping_and_tcp_between_hosts(lab):
    lab.up(3)
    assert lab.ping(1, "198.18.0.2")
    assert lab.ping(1, "fd18::2")
    tcp_transfer(lab, 2, 1, "198.18.0.2")
    tcp_transfer(lab, 1, 2, "fd18::1")
    h1, h2 = lab.host(1), lab.host(2)
    path = read(h1.debugfs("ib0_path"))
    assert path == (
        "GID: fe80:0:0:0:2:c903:0:201\n"
        "  complete:    yes\n"
        "  DLID:     0x0003\n"
        "  SL:            0\n"
        "  rate:      100.0 Gb/sec\n"
        "\n"
    )
    assert_counts_arp(lab)
    stats = {n: counter(h2, n) for n in ("rx_packets", "rx_bytes")}
    assert stats["rx_packets"] > 1000 and stats["rx_bytes"] > 8 << 20
    assert counter(h1, "tx_packets") > 100


def partitioned_lab(lab, tmp_path: Path, hosts: int = 2) -> None:
    """A lab with the partitions of PARTITIONS."""
    conf = tmp_path / "partitions.conf"
    conf.write_text(PARTITIONS)
    lab.up(hosts, "--partitions", str(conf))


def up_with_children(lab, tmp_path: Path) -> None:
    """Two hosts, each with ib0.8001 up as 198.18.1.<i>/24 and fd18:1::<i>/64."""
    partitioned_lab(lab, tmp_path)
    for i in (1, 2):
        h = lab.host(i)
        assert write(h.net() / "create_child", "0x8001") == 0
        h.netns.ip("addr", "add", f"198.18.1.{i}/24", "dev", "ib0.8001")
        h.netns.ip("addr", "add", f"fd18:1::{i}/64", "dev", "ib0.8001", "nodad")
        h.up("ib0.8001")
        h.wait_carrier("ib0.8001")


def test_pkey_children_carry_traffic(lab, tmp_path):
    up_with_children(lab, tmp_path)
    assert lab.ping(1, "198.18.1.2")
    assert lab.ping(1, "fd18:1::2")
    tcp_transfer(lab, 2, 1, "198.18.1.2")
    tcp_transfer(lab, 1, 2, "fd18:1::1")
    mcg = read(lab.host(2).debugfs("ib0.8001_mcg"))
    assert "GID: ff12:401b:8001:0:0:0:ffff:ffff\n" in mcg


def test_partitions_isolate_and_limited_members_cannot_talk(lab, tmp_path):
    conf = tmp_path / "partitions.conf"
    conf.write_text(
        "Default=0x7fff, ipoib : ALL=full ;\n"
        f"red=0x0002, ipoib : {GUID.format(1)}=full, {GUID.format(3)}=full ;\n"
        f"green=0x0003, ipoib, defmember=limited : ALL, {GUID.format(3)}=full ;\n"
    )
    lab.up(3, "--partitions", str(conf))
    for i in (1, 2, 3):
        h = lab.host(i)
        for k, pkey in ((2, "0x8002"), (3, "0x8003")):
            assert write(h.net() / "create_child", pkey) == 0
            h.netns.ip("addr", "add", f"198.18.{k}.{i}/24", "dev", f"ib0.{k + 0x8000:04x}")
            h.up(f"ib0.{k + 0x8000:04x}")
    assert read(lab.host(2).hca("ports", "1", "pkeys", "1")) == "0x0003\n"  # limited, no red
    wait_for(lambda: read(lab.host(1).net("ib0.8002") / "carrier") == "1\n", what="red up")
    wait_for(lambda: read(lab.host(3).net("ib0.8002") / "carrier") == "1\n", what="red up")
    # h2's driver has opened ib0.8002 and found no P_Key for it: no join, so no carrier.
    refused = f"{lab.name(2)}: ib0.8002: P_Key 0x8002 is not found"
    wait_for(lambda: refused in lab.host(2).log, what="h2 finds no red P_Key")
    assert read(lab.host(2).net("ib0.8002") / "carrier") == "0\n"  # not in red
    assert lab.ping(1, "198.18.2.3")
    no_reply(lab, 1, "198.18.2.2")
    for i in (1, 2, 3):
        lab.host(i).wait_carrier("ib0.8003")
    assert lab.ping(1, "198.18.3.3")  # limited to full
    assert lab.ping(2, "198.18.3.3")
    no_reply(lab, 1, "198.18.3.2")  # limited to limited


def test_partition_file_changes_carrier_live(lab, tmp_path):
    conf = tmp_path / "partitions.conf"
    lab.up(1)  # OpenSM's default partition; the file comes later
    h = lab.host(1)
    assert write(h.net() / "create_child", "0x8005") == 0
    h.up("ib0.8005")
    wait_for(lambda: "UP" in h.netns.links()["ib0.8005"]["flags"], what="child up")
    # UP is the kernel's flag, set at once: the driver's verdict on the open is this line.
    refused = f"{lab.name(1)}: ib0.8005: P_Key 0x8005 is not found"
    wait_for(lambda: refused in h.log, what="the driver finds no P_Key 0x8005")
    assert read(h.net("ib0.8005") / "carrier") == "0\n"
    conf.write_text("Default=0x7fff, ipoib : ALL=full ;\nnew=0x0005, ipoib : ALL=full ;\n")
    lab.ipoibfs("partitions", str(conf))
    h.wait_carrier("ib0.8005")
    assert read(h.hca("ports", "1", "pkeys", "1")) == "0x8005\n"
    conf.write_text("Default=0x7fff, ipoib : ALL=full ;\n")
    lab.ipoibfs("partitions", str(conf))
    wait_for(lambda: read(h.net("ib0.8005") / "carrier") == "0\n", what="carrier lost")
    assert read(h.hca("ports", "1", "pkeys", "1")) == "0x0000\n"
    assert h.attr("ib0", "carrier") == "1\n"


def test_bad_partition_files_change_nothing(lab, tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text("Default=0x7fff, ipoib : ALL=full ;\n\nblue=0x0001, ipoib, colour=5 : ALL ;\n")
    result = lab.ipoibfs("up", "--hosts", "1", "--partitions", str(bad), check=False)
    assert result.returncode == 1
    assert result.stderr == f"ipoibfs: {bad}:3: unknown partition flag 'colour=5'\n"
    assert not Path(f"/run/ipoibfs/{lab.name(1)}").exists()
    assert lab.name(1) not in run("ip", "netns", "list").stdout
    good = tmp_path / "good.conf"
    good.write_text("Default=0x7fff, ipoib : ALL=full ;\n")
    lab.up(1, "--partitions", str(good))
    bad.write_text("Default=0x7fff, ipoib : ALL=full\n")  # no ';'
    result = lab.ipoibfs("partitions", str(bad), check=False)
    assert result.returncode == 1
    assert result.stderr == f"ipoibfs: {bad}:1: partition definition not terminated by ';'\n"
    # The fabric's file is still the good one, so no reload can pick the bad one up.
    assert Path(f"/run/ipoibfs/{lab.prefix}-partitions.conf").read_text() == good.read_text()
    assert lab.host(1).attr("ib0", "carrier") == "1\n"


def test_multicast_reaches_joined_hosts_only(lab):
    lab.up(3)
    listener = subprocess.Popen(
        ["ip", "netns", "exec", lab.name(2), "python3", "-c",
         "import socket,struct,sys\n"
         "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
         "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
         "s.bind(('239.1.2.3',5000))\n"
         "m=struct.pack('4s4s',socket.inet_aton('239.1.2.3'),socket.inet_aton('198.18.0.2'))\n"
         "s.setsockopt(socket.IPPROTO_IP,socket.IP_ADD_MEMBERSHIP,m)\n"
         "print('joined',flush=True)\n"
         "s.settimeout(10); print(s.recv(100).decode(),flush=True)"],
        stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert listener.stdout.readline() == "joined\n"
        mgid = "ff12:401b:ffff:0:0:0:f01:203"
        wait_for(lambda: mgid in read(lab.host(2).debugfs("ib0_mcg")), what="h2 joined")
        send = ("import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                "s.setsockopt(socket.IPPROTO_IP,socket.IP_MULTICAST_IF,"
                "socket.inet_aton('198.18.0.1'))\n"
                "for _ in range(3): s.sendto(b'hello group',('239.1.2.3',5000))")  # fmt: skip
        lab.host(1).netns.exec("python3", "-c", send)
        assert listener.stdout.readline() == "hello group\n"
        assert listener.wait(timeout=5) == 0
    finally:
        listener.kill()
        listener.wait()
    mcg1 = read(lab.host(1).debugfs("ib0_mcg"))
    entry = mcg1[mcg1.index(f"GID: {mgid}") :].split("\n\n")[0]
    assert entry.endswith("send_only:      yes")  # h1 only sent to the group
    assert mgid not in read(lab.host(3).debugfs("ib0_mcg"))
    # h1 reaches h3 on the same path its copies of the group's packets would have taken,
    # so any copy sent to h3 has arrived by now. (The ARP this takes is broadcast, which
    # the multicast counter does not count.)
    assert lab.ping(1, "198.18.0.3", count=1)
    assert counter(lab.host(2), "multicast") >= 1
    assert counter(lab.host(3), "multicast") == 0


def test_oversize_ud_packets_are_dropped_and_counted(lab):
    lab.up(2, "--no-cm", lab.name(2))  # h2 has no RC: h1's packets to it go over UD
    h1 = lab.host(1)
    assert lab.ping(1, "198.18.0.2")
    assert write(h1.net() / "mode", "connected\n") == 0  # MTU 65520
    before = {n: counter(h1, n) for n in ("tx_dropped", "tx_errors")}
    ping = h1.netns.exec("ping", "-c", "1", "-W", "2", "-s", "3000", "-M", "do", "198.18.0.2",
                         check=False)  # fmt: skip
    assert ping.returncode != 0
    # The emulated ICMP PMTU: the local stack hears of the multicast MTU...
    assert "Frag needed and DF set (mtu = 2044)" in ping.stdout
    # ...and the next attempt fails locally, as on a kernel host.
    again = h1.netns.exec("ping", "-c", "1", "-s", "3000", "-M", "do", "198.18.0.2",
                          check=False)  # fmt: skip
    assert "mtu=2044" in again.stdout + again.stderr
    ping6 = h1.netns.exec("ping", "-6", "-c", "1", "-W", "2", "-s", "3000", "-M", "do",
                          "fd18::2", check=False)  # fmt: skip
    assert "Packet too big: mtu=2044" in ping6.stdout
    tcp_transfer(lab, 2, 1, "198.18.0.2")  # TCP still flows through the lowered path MTU
    after = {n: counter(h1, n) for n in ("tx_dropped", "tx_errors")}
    assert after["tx_dropped"] > before["tx_dropped"]
    assert after["tx_errors"] > before["tx_errors"]
    # Lab hosts share the kernel log, so each line names its host.
    line = f"{lab.name(1)}: ib0: packet len 3032 (> 2048) too long to send, dropping"
    assert line in h1.log


def test_a_killed_host_leaves_the_others_working(lab):
    lab.up(3)
    assert lab.ping(1, "198.18.0.2")
    assert lab.ping(1, "198.18.0.3")
    h3 = lab.host(3)
    before = counter(h3, "rx_packets")
    flood = subprocess.Popen(["ip", "netns", "exec", lab.name(1), "ping", "-i", "0.01",
                              "198.18.0.3"], stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        # h3 is killed with the flood reaching it, not before it starts.
        wait_for(lambda: counter(h3, "rx_packets") >= before + 20, what="the flood at h3")
        pid = daemon_pid(Path("/run/ipoibfs") / lab.name(3))
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), what="h3 daemon gone")
        assert lab.ping(1, "198.18.0.2")
        assert lab.ping(2, "198.18.0.1")
    finally:
        flood.kill()
        flood.wait()
    status = lab.ipoibfs("status").stdout
    assert re.search(rf"^{lab.name(3)} .*\(daemon not running\)", status, re.M)
    assert re.search(rf"^{lab.name(1)} +1 +0x2 +fe80:.*:0101 +ib0 +yes +0xffff +datagram "
                     rf"+{lab.name(2)} UD", status, re.M)  # fmt: skip


def test_lab_status_lists_hosts_and_interfaces(lab):
    lab.up(2)
    assert write(lab.host(2).net() / "create_child", "0x8001") == 0
    lines = lab.ipoibfs("status").stdout.splitlines()
    assert lines[0].split() == ["HOST", "PORT", "LID", "GID", "IFACE", "CARRIER", "PKEY", "MODE",
                                "PEERS"]  # fmt: skip
    rows = [line.split() for line in lines[1:]]
    assert rows == [
        [lab.name(1), "1", "0x2", "fe80:0000:0000:0000:0002:c903:0000:0101", "ib0", "yes",
         "0xffff", "datagram", "-"],
        [lab.name(2), "1", "0x3", "fe80:0000:0000:0000:0002:c903:0000:0201", "ib0", "yes",
         "0xffff", "datagram", "-"],
        [lab.name(2), "1", "0x3", "fe80:0000:0000:0000:0002:c903:0000:0201", "ib0.8001",
         "down", "0x8001", "datagram", "-"],
    ]  # fmt: skip


def test_lab_down_leaves_nothing(lab):
    lab.up(2)
    pids = [daemon_pid(Path("/run/ipoibfs") / lab.name(i)) for i in (1, 2)]
    os.kill(pids[1], signal.SIGKILL)  # a crashed host is cleaned up too
    wait_for(lambda: not os.path.exists(f"/proc/{pids[1]}"), what="h2 killed")
    registry = json.loads(Path(f"/run/ipoibfs/{lab.prefix}-lab.json").read_text())
    down = lab.ipoibfs("down").stdout
    assert re.fullmatch(r"lab down: removed 2 host\(s\) and the fabric in \d+\.\d s\n", down)
    for pid in [*pids, registry["fabric_pid"]]:
        wait_for(lambda p=pid: not os.path.exists(f"/proc/{p}"), what=f"pid {pid} exit")
    names = run("ip", "netns", "list").stdout
    for i in (1, 2):
        assert lab.name(i) not in names
        assert not is_mounted(Path("/run/ipoibfs") / lab.name(i))
        assert not Path(f"/run/ipoibfs/{lab.name(i)}").exists()
    assert not Path(registry["fabric_address"]).exists()
    assert not Path(f"/run/ipoibfs/{lab.prefix}-lab.json").exists()
    assert not list(Path("/run/ipoibfs").glob(f"{lab.prefix}-*"))
    assert not list(Path("/run/ipoibfs/daemons").glob(f"*{lab.prefix}*"))


def test_lab_errors_are_clear(lab, tmp_path):
    result = lab.ipoibfs("down", check=False)
    # Other labs (other tests') may be up: the line names them after this.
    assert result.stderr.startswith(f"ipoibfs: no lab with prefix '{lab.prefix}' is up")
    assert result.stderr.count("\n") == 1
    result = lab.ipoibfs("up", "--hosts", "2", "--no-cm", "h7", check=False)
    assert "--no-cm h7: no such lab host" in result.stderr
    lab.up(1)
    result = lab.ipoibfs("up", "--hosts", "1", check=False)
    assert result.returncode == 1
    assert f"is already up: run `ipoibfs lab down --prefix {lab.prefix}` first" in result.stderr
    assert "Traceback" not in result.stderr


def test_fabric_address_in_use(tmp_path):
    address = str(tmp_path / "fabric.sock")
    first = subprocess.Popen([IPOIBFS, "fabric", "serve", address], stderr=subprocess.PIPE,
                             text=True)  # fmt: skip
    try:
        assert "subnet manager up" in first.stderr.readline()
        second = run(IPOIBFS, "fabric", "serve", address, check=False)
        assert second.returncode == 1
        assert second.stderr == f"ipoibfs: fabric address {address} is already in use\n"
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=5) == 0
    assert not os.path.exists(address)


def test_hosts_join_a_fabric_over_tcp_with_udp_data(tmp_path):
    """`fabric serve HOST:PORT` (loopback here): the SM over TCP, data host to host over UDP."""
    import socket
    import uuid

    from .conftest import Netns, mount_host

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"127.0.0.1:{port}"
    fabric = subprocess.Popen([IPOIBFS, "fabric", "serve", address], stderr=subprocess.PIPE,
                              text=True)  # fmt: skip
    tag = uuid.uuid4().hex[:6]
    spaces = [Netns(f"ipt-{tag}-{i}") for i in (1, 2)]
    mounts = [tmp_path / f"m{i}" for i in (1, 2)]
    try:
        assert "subnet manager up" in fabric.stderr.readline()
        for i, (ns, mp) in enumerate(zip(spaces, mounts, strict=True), 1):
            run("ip", "netns", "add", ns.name)
            mp.mkdir()
            h = mount_host(ns, mp, "--fabric", address, "--name", f"h{i}")
            ns.ip("addr", "add", f"198.18.0.{i}/24", "dev", "ib0")
            h.up()
            h.wait_carrier()
            assert read(h.hca("ports", "1", "lid")) == f"0x{i + 1:x}\n"
        ping = spaces[0].exec("ping", "-c", "2", "-W", "2", "198.18.0.2", check=False)
        assert ping.returncode == 0, ping.stdout
    finally:
        for mp in mounts:
            if is_mounted(mp):
                run(IPOIBFS, "umount", str(mp), check=False)
        for ns in spaces:
            run("ip", "netns", "del", ns.name, check=False)
        fabric.send_signal(signal.SIGTERM)
        fabric.wait(timeout=5)


def test_fabric_serve_keeps_files_and_survives_bad_clients(tmp_path):
    import socket

    regular = tmp_path / "partitions.conf"
    regular.write_text("precious\n")
    result = run(IPOIBFS, "fabric", "serve", str(regular), check=False)
    assert result.stderr == f"ipoibfs: fabric address {regular} exists and is not a socket\n"
    assert regular.read_text() == "precious\n"
    address = str(tmp_path / "fabric.sock")
    fabric = subprocess.Popen([IPOIBFS, "fabric", "serve", address], stderr=subprocess.PIPE,
                              text=True)  # fmt: skip
    try:
        assert "subnet manager up" in fabric.stderr.readline()
        for junk in (b"[]\n", b"{not json\n", b'{"op": "join"}\n'):
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(10)
                s.connect(address)
                s.sendall(junk)
                s.recv(100)  # the fabric has dealt with it: an answer, or the end
        # A well-formed query after them is still answered: a PathRecord for no port.
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(address)
            s.sendall(b'{"op": "path", "dgid": "' + b"fe" * 16 + b'", "pkey": 65535, "id": 7}\n')
            reply = json.loads(s.makefile("rb").readline())
        assert reply["id"] == 7 and reply["errno"] == errno.EHOSTUNREACH, reply
        assert fabric.poll() is None  # still serving
    finally:
        fabric.send_signal(signal.SIGTERM)
        fabric.wait(timeout=5)


def test_two_hosts_with_one_name_are_refused(lab, tmp_path):
    from .conftest import Netns

    lab.up(2)
    ns = Netns(f"{lab.prefix}-x")
    run("ip", "netns", "add", ns.name)
    mp = tmp_path / "mnt"
    mp.mkdir()
    try:
        result = run(IPOIBFS, "mount", "--netns", ns.name, "--fabric",
                     f"/run/ipoibfs/{lab.prefix}-fabric.sock", "--name", lab.name(1), str(mp),
                     check=False)  # fmt: skip
        assert result.returncode == 1
        assert "is already on the fabric (two hosts with one name?)" in result.stderr
        assert lab.ping(2, "198.18.0.1")  # the first host is untouched (h1 -> h1 is loopback)
        assert read(lab.host(1).hca("ports", "1", "lid")) == "0x2\n"
    finally:
        run("ip", "netns", "del", ns.name, check=False)
