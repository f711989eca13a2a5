"""Connected mode between lab hosts: RC connections, the 64K MTU, UD fallback with PMTU
emulation towards hosts without CM, mode switches under traffic, dead peers."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

from .conftest import counter, daemon_pid, no_reply, read, tun_fds, wait_for, write
from .test_fabric import tcp_transfer, up_with_children

UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 5002))
print("ready", flush=True)
data, peer = s.recvfrom(65535)
s.sendto(data, peer)
"""
UDP_SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
payload = bytes(range(256)) * 200  # 51200 bytes: one datagram, no fragmentation at 65520
s.sendto(payload, (sys.argv[1], 5002))
print(s.recv(65535) == payload)
"""


def connected(lab, *hosts: int) -> None:
    for i in hosts:
        h = lab.host(i)
        assert write(h.net() / "mode", "connected\n") == 0
        assert h.attr("ib0", "mtu") == "65520\n"


def test_tcp_udp_and_large_pings_between_connected_hosts(lab):
    lab.up(2)
    connected(lab, 1, 2)
    assert lab.ping(1, "198.18.0.2", "-s", "60000", "-M", "do")
    tcp_transfer(lab, 2, 1, "198.18.0.2", 32 << 20)
    server = subprocess.Popen(["ip", "netns", "exec", lab.name(2), "python3", "-c", UDP_ECHO,
                               "198.18.0.2"], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert server.stdout.readline() == "ready\n"
        out = lab.host(1).netns.exec("python3", "-c", UDP_SEND, "198.18.0.2").stdout
        assert out == "True\n"
    finally:
        server.kill()
        server.wait()
    # The big packets went over RC: UD would have dropped them as oversize.
    assert counter(lab.host(1), "tx_errors") == 0
    assert counter(lab.host(2), "rx_bytes") > 32 << 20


def test_multicast_still_flows_in_connected_mode(lab):
    lab.up(3)
    connected(lab, 1, 2, 3)
    # A broadcast ping is multicast on the broadcast group, over UD.
    lab.host(2).netns.exec("sysctl", "-w", "net.ipv4.icmp_echo_ignore_broadcasts=0")
    lab.host(3).netns.exec("sysctl", "-w", "net.ipv4.icmp_echo_ignore_broadcasts=0")
    before = counter(lab.host(2), "rx_packets")
    out = lab.host(1).netns.exec("ping", "-b", "-c", "3", "-W", "2", "198.18.0.255",
                                 check=False)  # fmt: skip
    assert "bytes from 198.18.0.2" in out.stdout and "bytes from 198.18.0.3" in out.stdout
    assert counter(lab.host(2), "rx_packets") > before  # the pings, counted


def test_connected_host_and_host_without_cm_talk_through_pmtu(lab):
    lab.up(2, "--no-cm", lab.name(2))
    h1, h2 = lab.host(1), lab.host(2)
    assert h2.attr("ib0", "address").startswith("00:")  # no RC flag
    assert write(h2.net() / "mode", "connected\n") == 22  # EINVAL
    connected(lab, 1)
    # h1 -> h2: UD, so a 3000-byte DF packet comes back as "frag needed" with the UD MTU.
    ping = h1.netns.exec("ping", "-c", "1", "-W", "2", "-s", "3000", "-M", "do", "198.18.0.2",
                         check=False)  # fmt: skip
    assert "Frag needed and DF set (mtu = 2044)" in ping.stdout
    assert lab.ping(1, "198.18.0.2", "-s", "1900")
    tcp_transfer(lab, 2, 1, "198.18.0.2", 8 << 20)  # h1 sends big: the path MTU shrinks
    tcp_transfer(lab, 1, 2, "198.18.0.1", 8 << 20)  # h2 sends at its own 2044
    assert lab.ping(2, "198.18.0.1", "-s", "2000", "-M", "do")


def test_paths_and_lab_status_show_rc_or_ud_per_peer(lab):
    lab.up(3, "--no-cm", lab.name(3))
    connected(lab, 1, 2)
    h1 = lab.host(1)
    assert lab.ping(1, "198.18.0.2") and lab.ping(1, "198.18.0.3")
    gid = {i: lab.host(i).hca("ports", "1", "gids", "0") for i in (2, 3)}
    entries = {e.split("\n")[0]: e for e in read(h1.debugfs("ib0_path")).split("\n\n") if e}
    for i, rc in ((2, "yes"), (3, "no")):
        groups = read(gid[i]).strip().split(":")
        entry = entries["GID: " + ":".join(f"{int(g, 16):x}" for g in groups)]
        assert entry.endswith(f"\n  RC: {rc:>12}")
    rows = [line.split() for line in lab.ipoibfs("status").stdout.splitlines()]
    row = next(r for r in rows if r[0] == lab.name(1) and r[4] == "ib0")
    assert row[7] == "connected"
    assert " ".join(row[8:]) == f"{lab.name(2)} RC, {lab.name(3)} UD"
    # In datagram mode the entries are the kernel's, byte for byte: no RC line.
    assert write(h1.net() / "mode", "datagram\n") == 0
    assert lab.ping(1, "198.18.0.2")
    assert "RC:" not in read(h1.debugfs("ib0_path"))


def test_mode_switches_during_a_transfer(lab):
    lab.up(2)
    h1, h2 = lab.host(1), lab.host(2)
    size = 200 << 20
    step = 16 << 20  # what each mode carries before the next switch
    done = {"writes": [], "during": []}
    finished = threading.Event()

    def flip() -> None:
        for mode in ("connected\n", "datagram\n", "connected\n", "datagram\n"):
            start = counter(h2, "rx_bytes")
            wait_for(lambda s=start: finished.is_set() or counter(h2, "rx_bytes") >= s + step,
                     timeout=60, what="the transfer moving on")  # fmt: skip
            done["during"].append(not finished.is_set())
            done["writes"].append(write(h1.net() / "mode", mode))

    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        tcp_transfer(lab, 2, 1, "198.18.0.2", size)  # survives every switch, data intact
    finally:
        finished.set()
        flipper.join()
    assert done["during"] == [True] * 4  # every switch came while the data was flowing
    assert done["writes"] == [0, 0, 0, 0]
    assert h1.attr("ib0", "mode") == "datagram\n"
    assert lab.ping(1, "198.18.0.2")


def test_a_dead_peer_tears_the_connection_down(lab):
    lab.up(3)
    connected(lab, 1)
    assert write(lab.host(1).param("debug_level"), "1") == 0
    assert lab.ping(1, "198.18.0.2", "-s", "10000")
    assert lab.ping(1, "198.18.0.3", "-s", "10000")
    pid = daemon_pid(Path("/run/ipoibfs") / lab.name(2))
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), what="h2 killed")
    no_reply(lab, 1, "198.18.0.2", "-s", "10000")
    wait_for(lambda: "failed cm send event" in lab.host(1).log, what="teardown logged")
    assert lab.ping(1, "198.18.0.3", "-s", "10000")  # the other connection is untouched


def test_a_killed_receiver_leaves_no_interface_behind(lab):
    # The sender writes into the receiver's stack directly, holding its queue: that must
    # not keep the receiver's netdev alive once the receiver's daemon is gone.
    lab.up(2)
    connected(lab, 1, 2)
    h1_pid = daemon_pid(Path("/run/ipoibfs") / lab.name(1))
    alone = tun_fds(h1_pid)
    assert lab.ping(1, "198.18.0.2", "-s", "30000")
    assert tun_fds(h1_pid) == alone + 1  # h1 holds h2's queue: the packets were placed directly
    h2 = lab.host(2)
    assert "ib0" in h2.netns.links()
    os.kill(daemon_pid(Path("/run/ipoibfs") / lab.name(2)), signal.SIGKILL)
    wait_for(lambda: "ib0" not in h2.netns.links(), what="h2's ib0 gone")
    wait_for(lambda: tun_fds(h1_pid) == alone, what="h1 let go of h2's queue")


def test_a_receiver_going_down_ends_the_connection_and_a_new_one_follows(lab):
    lab.up(2)
    connected(lab, 1, 2)
    h1, h2 = lab.host(1), lab.host(2)
    assert write(h1.param("debug_level"), "1") == 0
    assert lab.ping(1, "198.18.0.2", "-s", "30000")
    before = counter(h2, "rx_packets")
    h2.netns.ip("link", "set", "ib0", "down")
    wait_for(lambda: "ib0: DREQ received." in h1.log, what="the sender told")
    assert counter(h2, "rx_packets") == before  # counts kept
    h2.netns.ip("link", "set", "ib0", "up")
    h2.wait_carrier()
    assert lab.ping(1, "198.18.0.2", "-s", "30000", "-M", "do")
    assert counter(h2, "rx_packets") >= before + 2
    assert counter(h1, "tx_errors") == 0


def test_a_child_deleted_at_the_receiver_can_be_made_again_at_once(lab, tmp_path):
    up_with_children(lab, tmp_path)
    for i in (1, 2):
        assert write(lab.host(i).net("ib0.8001") / "mode", "connected\n") == 0
    h2 = lab.host(2)
    assert lab.ping(1, "198.18.1.2", "-s", "30000")
    assert write(h2.net() / "delete_child", "0x8001") == 0
    wait_for(lambda: "ib0.8001" not in h2.netns.links(), what="the child gone")
    assert write(h2.net() / "create_child", "0x8001") == 0
    assert "ib0.8001" in h2.netns.links()


def test_too_many_passive_connections_are_rejected_without_srq(lab, tmp_path):
    lab.up(3)
    h3 = lab.host(3)
    # Remount h3 without SRQ and max_nonsrq_conn_qp=1, keeping its fabric identity.
    from .conftest import IPOIBFS, run

    assert run(IPOIBFS, "umount", str(h3.mp)).returncode == 0
    result = run(IPOIBFS, "mount", "--netns", lab.name(3), "--fabric",
                 f"/run/ipoibfs/{lab.prefix}-fabric.sock", "--name", lab.name(3), "--no-srq",
                 "--param", "max_nonsrq_conn_qp=1", str(h3.mp), check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert read(h3.param("max_nonsrq_conn_qp")) == "1\n"
    h3.netns.ip("addr", "add", "198.18.0.3/24", "dev", "ib0")
    h3.up()
    h3.wait_carrier()
    connected(lab, 1, 2)
    assert lab.ping(1, "198.18.0.3", "-s", "10000")  # the one connection h3 accepts
    assert write(lab.host(2).param("debug_level"), "1") == 0
    no_reply(lab, 2, "198.18.0.3", "-s", "10000")  # REJ: no QP
    # The REJ reaches the active side as the CM's IB_CM_REJ_RECEIVED event (11).
    wait_for(lambda: f"{lab.name(2)}: ib0: CM error 11." in lab.host(2).log, what="REJ seen")
