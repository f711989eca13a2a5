"""Unicast IP that reaches a lab host in a steady state is delivered by the port's receive
thread, with no trio hop (issue 14): what a user sees of it is exact counters and the
neighbour confirmations that keep a talking peer REACHABLE."""

from __future__ import annotations

import subprocess
import time

from .conftest import LabHandle, wait_for
from .test_exec import ex

FLOOD = 3000


def rx_packets(lab: LabHandle, i: int) -> int:
    return int(lab.host(i).attr("ib0", "statistics/rx_packets"))


def test_a_flood_is_counted_packet_for_packet(lab: LabHandle) -> None:
    lab.up(2)
    assert lab.ping(1, "198.18.0.2", count=1)  # both neighbours resolved: the steady state
    before = rx_packets(lab, 2), rx_packets(lab, 1)
    flood = lab.host(1).netns.exec("ping", "-q", "-f", "-c", str(FLOOD), "-s", "1200",
                                   "198.18.0.2", check=False)  # fmt: skip
    assert flood.returncode == 0, flood.stdout + flood.stderr
    assert f"{FLOOD} packets transmitted, {FLOOD} received" in flood.stdout
    requests, replies = rx_packets(lab, 2) - before[0], rx_packets(lab, 1) - before[1]
    # Each echo request and reply counted once; a stray IPv6 or ARP packet may be added.
    assert FLOOD <= requests <= FLOOD + 5, requests
    assert FLOOD <= replies <= FLOOD + 5, replies


def neigh_state(lab: LabHandle) -> str:
    """The state `ip neigh` shows for h2 on h1 ("none" without an entry)."""
    out = ex(lab.name(1), "ip", "neigh", "show", "198.18.0.2", "dev", "ib0").stdout.split()
    return out[-1] if out else "none"


def test_a_peer_that_keeps_talking_stays_reachable(lab: LabHandle) -> None:
    """With base_reachable_time 1 s, h1's entry for h2 goes STALE within seconds when
    nothing confirms it; while h2 pings h1 every 0.1 s its echo requests confirm it (on the
    receive thread), so once REACHABLE it stays so instead of going DELAY and PROBE."""
    lab.up(2)
    lab.host(1).netns.exec("sysctl", "-qw", "net.ipv4.neigh.ib0.base_reachable_time_ms=1000",
                           "net.ipv4.neigh.ib0.delay_first_probe_time=1")  # fmt: skip

    def goes_stale() -> bool:
        """Once the daemon has read the sysctls, a fresh entry goes STALE in seconds."""
        ex(lab.name(1), "ip", "neigh", "flush", "dev", "ib0")
        assert lab.ping(1, "198.18.0.2", count=1)
        try:
            wait_for(lambda: neigh_state(lab) == "STALE", timeout=8, what="STALE")
        except AssertionError:
            return False
        return True

    wait_for(goes_stale, timeout=30, what="an entry going STALE in seconds")
    ex(lab.name(1), "ip", "neigh", "flush", "dev", "ib0")
    pinger = subprocess.Popen(["ip", "netns", "exec", lab.name(2), "ping", "-q", "-i", "0.1",
                               "-w", "10", "198.18.0.1"], stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for(lambda: neigh_state(lab) == "REACHABLE", timeout=5, what="REACHABLE")
        states = []
        deadline = time.monotonic() + 3  # two lifetimes of an unconfirmed entry, at least
        while time.monotonic() < deadline:
            states.append(neigh_state(lab))
    finally:
        pinger.terminate()
        pinger.wait(timeout=5)
    assert set(states) == {"REACHABLE"}, states
