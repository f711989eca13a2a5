"""The receive side with real traffic between lab hosts: GRO/LRO merges the MTU-sized
segments of a sender without TSO into super-packets for the receiver's TUN (off, each
segment goes up as it came), and RX moderation (ethtool -C rx-usecs/rx-frames) holds what
arrives as a moderated CQ does."""

from __future__ import annotations

import json
import re
import subprocess

from .conftest import IPOIBFS, LabHandle, counter, run, wait_for

DST = "198.18.0.2"


def tun_rx_packets(lab: LabHandle, i: int) -> int:
    """What the receiver's stack saw: the TUN's own count of packets written to it (the
    namespace's sysfs, not the mirror's driver counters)."""
    out = lab.host(i).netns.exec("cat", "/sys/class/net/ib0/statistics/rx_packets").stdout
    return int(out)


def iperf(lab: LabHandle, seconds: int = 2) -> None:
    """An iperf3 run h1 -> h2 (the data, and so the segments, go to h2)."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", lab.name(2), "iperf3", "-s", "-1", "-B", DST],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        ns = lab.host(2).netns
        wait_for(lambda: ":5201" in ns.exec("ss", "-Hltn").stdout, what="iperf3 listening")
        client = lab.host(1).netns.exec("iperf3", "-c", DST, "-t", str(seconds), "-J",
                                        timeout=60)  # fmt: skip
        assert json.loads(client.stdout)["end"]["sum_received"]["bytes"] > 0
    finally:
        server.kill()
        server.wait()


def tso_off(lab: LabHandle, i: int) -> None:
    """The sender's stack cuts its segments itself (the TUN's own TSO off): MTU-sized
    packets, checksummed or left for the HCA as its TX checksum says."""
    lab.host(i).netns.exec("ethtool", "-K", "ib0", "tso", "off")


def segments_and_writes(lab: LabHandle) -> tuple[int, int]:
    """(segments the receiver's driver counted, packets its TUN took) for one iperf3 run."""
    h2 = lab.host(2)
    drv, tun = counter(h2, "rx_packets"), tun_rx_packets(lab, 2)
    iperf(lab)
    return counter(h2, "rx_packets") - drv, tun_rx_packets(lab, 2) - tun


def set_features(lab: LabHandle, i: int, *args: str) -> None:
    run(IPOIBFS, "exec", lab.name(i), "--", "ethtool", "-K", "ib0", *args)


def ping_rtts(lab: LabHandle, *args: str) -> list[float]:
    out = lab.host(1).netns.exec("ping", "-W", "2", *args, DST, check=False).stdout
    return [float(x) for x in re.findall(r"time=([\d.]+) ms", out)]


def coalesce(lab: LabHandle, i: int, usecs: int, frames: int) -> None:
    run(IPOIBFS, "ethtool", lab.name(i), "-C", "ib0", "rx-usecs", str(usecs), "rx-frames",
        str(frames))  # fmt: skip


def test_gro_merges_the_segments_of_a_sender_without_tso(lab):
    lab.up(2)
    tso_off(lab, 1)
    assert lab.ping(1, DST)
    segments, writes = segments_and_writes(lab)
    # The driver counts every MTU-sized segment the HCA delivered; the stack saw far
    # fewer, larger packets (super-packets above the MTU, as the byte counts say).
    assert segments > 1000
    assert writes < segments / 2
    mtu = int(lab.host(2).attr("ib0", "mtu"))
    assert counter(lab.host(2), "rx_bytes") / writes > mtu


def test_gro_and_lro_off_deliver_every_segment_as_it_came(lab):
    lab.up(2)
    tso_off(lab, 1)
    set_features(lab, 2, "gro", "off", "lro", "off")
    assert lab.ping(1, DST)
    segments, writes = segments_and_writes(lab)
    assert segments > 1000
    assert writes >= segments * 0.99  # ARP and the like are the driver's own


def test_rx_usecs_raises_ping_rtt_and_zero_restores_it(lab):
    lab.up(2)
    assert lab.ping(1, DST)  # resolved both ways
    coalesce(lab, 2, 20000, 0)
    rtts = ping_rtts(lab, "-c", "3", "-i", "0.2")
    assert len(rtts) == 3 and min(rtts) >= 15.0, rtts  # each request held 20 ms at h2
    coalesce(lab, 2, 0, 0)
    rtts = ping_rtts(lab, "-c", "3", "-i", "0.2")
    assert len(rtts) == 3 and max(rtts) < 15.0, rtts


def test_rx_frames_delivers_a_batch_once_that_many_wait(lab):
    lab.up(2)
    assert lab.ping(1, DST)
    coalesce(lab, 2, 60000, 4)
    # Four requests sent at once: the fourth completes the batch, long before 60 ms.
    rtts = ping_rtts(lab, "-c", "4", "-l", "4")
    assert len(rtts) == 4 and max(rtts) < 40.0, rtts
    # One alone waits for rx-usecs.
    rtts = ping_rtts(lab, "-c", "1")
    assert len(rtts) == 1 and rtts[0] >= 45.0, rtts
    out = run(IPOIBFS, "ethtool", lab.name(2), "-c", "ib0").stdout
    assert "rx-usecs: 60000\n" in out and "rx-frames: 4\n" in out
