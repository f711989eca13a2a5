"""UD datagrams placed straight into a peer's stack (driver/udplace.py) between lab hosts of
one machine: once a TCP stream has made h1 place into h2 (and h2's ACKs into h1), what the
receiver decides still applies at once: its RX moderation, its port going down, the sender's
impairments, and a capture of the receiver still shows the stream."""

from __future__ import annotations

from pathlib import Path

from .conftest import IPOIBFS, LabHandle, counter, daemon_pid, no_reply, run, tun_fds, wait_for
from .test_capture import Capture, fields, written
from .test_gro_moderation import DST, coalesce, iperf, ping_rtts, tun_rx_packets


def placed_stream(lab: LabHandle) -> None:
    """Two hosts, and a TCP stream h1 -> h2 long enough for both to ask for placement (LSO
    super-packets one way, more than 64 ACKs the other)."""
    lab.up(2)
    assert lab.ping(1, DST)
    iperf(lab, 1)


def test_the_receivers_rx_moderation_applies_to_a_placed_stream(lab):
    placed_stream(lab)
    coalesce(lab, 2, 20000, 0)
    rtts = ping_rtts(lab, "-c", "3", "-i", "0.2")
    assert len(rtts) == 3 and min(rtts) >= 15.0, rtts  # h2 holds each request 20 ms
    coalesce(lab, 2, 0, 0)
    rtts = ping_rtts(lab, "-c", "3", "-i", "0.2")
    assert len(rtts) == 3 and max(rtts) < 15.0, rtts
    received = counter(lab.host(2), "rx_packets")
    iperf(lab, 1)  # placed again, and counted
    assert counter(lab.host(2), "rx_packets") - received > 1000


def test_a_placed_stream_stops_with_the_receivers_port_and_the_senders_loss(lab):
    placed_stream(lab)
    assert lab.ipoibfs("port", "h2", "down").returncode == 0
    no_reply(lab, 1, DST)
    assert lab.ipoibfs("port", "h2", "up").returncode == 0
    lab.host(2).wait_carrier()
    wait_for(lambda: lab.ping(1, DST, count=1), timeout=5, what="ping after up")
    iperf(lab, 1)
    assert lab.ipoibfs("link", "h1", "loss", "100%").returncode == 0
    no_reply(lab, 1, DST)
    assert lab.ipoibfs("link", "h1", "clear").returncode == 0
    wait_for(lambda: lab.ping(1, DST, count=1), timeout=5, what="ping after clear")


def test_a_capture_of_the_receiver_shows_what_was_placed_into_it(lab, tmp_path: Path):
    placed_stream(lab)
    out = tmp_path / "h2.pcap"
    cap = Capture(lab, "h2", "-w", str(out))
    try:
        iperf(lab, 1)
    finally:
        err = cap.stop()
    assert "packets captured" in err, err
    data = fields(out, "ip.src", "tcp.len", where="tcp.len > 1000")
    # the data segments h1 placed, shown as h2 received them (the MSS-sized segments an
    # HCA would cut from each super-packet)
    assert len(data) > 100 and {src for src, _ in data} == {"198.18.0.1"}, data[:5]


def test_gro_off_at_the_receiver_stops_the_senders_merging(lab):
    """A sender without TSO: while h2 has GRO on, h1 merges its placed segments as h2's GRO
    would; turned off at h2, each segment reaches h2's stack as it came."""
    lab.up(2)
    lab.host(1).netns.exec("ethtool", "-K", "ib0", "tso", "off")
    assert lab.ping(1, DST)
    iperf(lab, 1)

    def writes_per_segment() -> float:
        drv, tun = counter(lab.host(2), "rx_packets"), tun_rx_packets(lab, 2)
        iperf(lab, 1)
        return (tun_rx_packets(lab, 2) - tun) / (counter(lab.host(2), "rx_packets") - drv)

    assert writes_per_segment() < 0.5
    run(IPOIBFS, "exec", lab.name(2), "--", "ethtool", "-K", "ib0", "gro", "off", "lro", "off")
    assert writes_per_segment() > 0.95


def test_a_capture_of_the_sender_started_mid_stream_shows_every_packet_after(lab, tmp_path):
    """Once placed, h1's reader sends on its own (netdev/flows.c); a capture that attaches
    then stops that at once: each request is seen as it was placed."""
    placed_stream(lab)
    assert lab.ping(1, DST, count=3)
    out = tmp_path / "h1.pcap"
    cap = Capture(lab, "h1", "-w", str(out))
    try:
        assert lab.ping(1, DST, "-i", "0.01", count=20)
        written(out, 40)
    finally:
        err = cap.stop()
    assert "packets captured" in err, err
    requests = fields(out, "ip.dst", where="icmp.type == 8")
    assert requests == [[DST]] * 20, requests


def test_what_the_placed_path_sends_is_counted_packet_by_packet(lab):
    """A flood ping between placed hosts: h1's tx_packets and h2's rx_packets each grow by
    the requests sent (and the few packets the stacks send meanwhile), and none is lost."""
    placed_stream(lab)
    h1, h2 = lab.host(1), lab.host(2)
    sent, received = counter(h1, "tx_packets"), counter(h2, "rx_packets")
    sent_bytes = counter(h1, "tx_bytes")
    out = h1.netns.exec("ping", "-f", "-c", "2000", "-s", "100", "-q", DST).stdout
    assert " 0% packet loss" in out, out
    assert 2000 <= counter(h1, "tx_packets") - sent <= 2010
    assert 2000 <= counter(h2, "rx_packets") - received <= 2010
    # each request: 128 bytes of IP (ICMP 8 + 100, IP 20), and the 4-byte IPoIB header
    assert 2000 * 132 <= counter(h1, "tx_bytes") - sent_bytes <= 2010 * 1500


def test_a_flushed_neighbours_queue_goes_back_to_its_peer(lab):
    """Placing into h2 holds h2's TUN in h1's daemon; once h1's neighbours are gone
    (ipoib_flush_paths at ifdown, as after a reap), so is that hold."""
    placed_stream(lab)
    pid = daemon_pid(Path("/run/ipoibfs") / lab.name(1))
    held = tun_fds(pid)
    assert held >= 2  # h1's own TUN, and h2's that it places into
    lab.host(1).netns.exec("ip", "link", "set", "ib0", "down")
    wait_for(lambda: tun_fds(pid) == held - 1, what="h1 let go of h2's queue")
    lab.host(1).netns.exec("ip", "link", "set", "ib0", "up")
    lab.host(1).wait_carrier()
    wait_for(lambda: lab.ping(1, DST, count=1), timeout=5, what="ping after up")
    iperf(lab, 1)
    assert tun_fds(pid) == held  # placed again
