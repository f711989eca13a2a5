"""Faults on a running lab: a host port's link going down, coming back, flapping."""

from __future__ import annotations

import json
import re
import subprocess
import time

from .conftest import IPOIBFS, daemon_pid, no_reply, read, run, wait_for, write
from .test_fast_receive import neigh_state
from .test_sm_faults import stopped


def _mcg_groups(h) -> list[str]:
    text = read(h.debugfs("ib0_mcg"))
    assert isinstance(text, str)
    return [line.split()[1] for line in text.splitlines() if line.startswith("GID:")]


def test_a_port_down_drops_carrier_and_joins_and_up_restores_them(lab):
    lab.up(2)
    h2 = lab.host(2)
    write(h2.param("debug_level"), "1")
    assert lab.ping(1, "198.18.0.2")
    assert _mcg_groups(h2)

    down = lab.ipoibfs("port", "h2", "down", check=False)
    assert down.returncode == 0, down.stderr
    assert down.stdout == f"lab port: {lab.name(2)}:1 down\n"
    assert h2.attr("ib0", "carrier") == "0\n"
    assert read(h2.hca("ports", "1", "state")) == "1: DOWN\n"
    assert read(h2.hca("ports", "1", "phys_state")) == "2: Polling\n"
    assert _mcg_groups(h2) == []
    lid = read(h2.hca("ports", "1", "lid"))
    no_reply(lab, 1, "198.18.0.2")
    assert "ib0: port state is not ACTIVE (state = 1) suspending join task" in h2.log

    started = time.monotonic()
    up = lab.ipoibfs("port", f"{lab.name(2)}:1", "up", check=False)
    assert up.returncode == 0, up.stderr
    h2.wait_carrier()
    assert read(h2.hca("ports", "1", "state")) == "4: ACTIVE\n"
    assert read(h2.hca("ports", "1", "phys_state")) == "5: LinkUp\n"
    assert read(h2.hca("ports", "1", "lid")) == lid  # the SM kept its LID
    wait_for(lambda: lab.ping(1, "198.18.0.2", count=1), timeout=5, what="ping after up")
    assert time.monotonic() - started < 5
    assert "ff12:401b:ffff:0:0:0:ffff:ffff" in _mcg_groups(h2)
    ports = json.loads(read(h2.mp / ".ipoibfs" / "ports"))  # type: ignore[arg-type]
    assert ports == [{"port": 1, "lid": int(str(lid), 16), "state": 4, "phys_state": 5,
                      "netem": None, "netem_counts": None}]  # fmt: skip


def test_a_flap_ends_up_and_bad_targets_change_nothing(lab):
    lab.up(2)
    flap = lab.ipoibfs("port", "h2", "flap", "--period", "0.4", "--count", "2", check=False)
    assert flap.returncode == 0, flap.stderr
    assert "flapped 2 time(s)" in flap.stdout
    lab.host(2).wait_carrier()
    wait_for(lambda: lab.ping(1, "198.18.0.2", count=1), timeout=5, what="ping after flap")
    for args, message in (
        (("h9", "down"), "no lab host 'h9'"),
        (("h2:3", "down"), f"{lab.name(2)} has no port 3"),
        (("h2:x", "down"), "the port is a number from 1"),
        (("h2", "flap", "--count", "0"), "flap needs --period above 0 and --count of 1 or more"),
    ):
        result = lab.ipoibfs("port", *args, check=False)
        assert result.returncode == 1, result
        assert message in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr
    assert lab.host(2).attr("ib0", "carrier") == "1\n"
    bad = run(IPOIBFS, "lab", "port", "h2", "sideways", "--prefix", lab.prefix, check=False)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def _ping_stats(lab, count: int, interval: str) -> tuple[int, float]:
    """(packets lost, average RTT in ms) of h1 pinging h2."""
    cmd = ["ping", "-q", "-c", str(count), "-i", interval, "-W", "1", "198.18.0.2"]
    out = lab.host(1).netns.exec(*cmd, check=False).stdout
    sent, received = map(int, re.search(r"(\d+) packets transmitted, (\d+) received", out).groups())
    rtt = re.search(r"= [\d.]+/([\d.]+)/", out)
    return sent - received, float(rtt.group(1)) if rtt else float("nan")


def _netem(lab) -> dict | None:
    (port,) = json.loads(read(lab.host(2).mp / ".ipoibfs" / "ports"))  # type: ignore[arg-type]
    return port["netem"]


def test_lab_link_loses_delays_and_clears_what_a_port_sends(lab):
    lab.up(2)
    assert lab.ping(1, "198.18.0.2")
    base_lost, base_rtt = _ping_stats(lab, 20, "0.01")
    assert base_lost == 0

    set_loss = lab.ipoibfs("link", "h2", "loss", "10%", check=False)
    assert set_loss.stdout == f"lab link: {lab.name(2)}:1 loss 10%\n", set_loss.stderr
    lost, _ = _ping_stats(lab, 300, "0.005")
    assert 8 <= lost <= 60, f"{lost} of 300 pings lost at 10% loss"  # 30 expected
    server = subprocess.Popen(["ip", "netns", "exec", lab.name(2), "iperf3", "-s", "-1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for(lambda: "5201" in lab.host(2).netns.exec("ss", "-ltn").stdout, what="iperf3")
        tcp = lab.host(1).netns.exec("iperf3", "-c", "198.18.0.2", "-n", "1M", check=False)
        assert tcp.returncode == 0, tcp.stdout + tcp.stderr  # TCP gets through the losses
    finally:
        server.kill()
        server.wait()
    counts = json.loads(read(lab.host(2).mp / ".ipoibfs" / "ports"))[0]["netem_counts"]  # type: ignore[arg-type]
    assert counts["lost"] >= lost

    lab.ipoibfs("link", "h2", "loss", "0%")
    delay = lab.ipoibfs("link", "h2", "delay", "50", check=False)
    assert delay.stdout == f"lab link: {lab.name(2)}:1 delay 50ms\n", delay.stderr
    _, rtt = _ping_stats(lab, 5, "0.2")
    # each reply waits 50 ms (the base went over the wire both ways; h1 now places its requests)
    assert rtt >= 50 and 45 <= rtt - base_rtt <= 80, f"RTT {rtt} ms, 50 ms delay (base {base_rtt})"

    for args, message in (
        (("loss", "150%"), "loss 150%: a percentage is from 0 to 100"),
        (("loss", "lots"), "loss lots: not a percentage"),
        (("delay",), "delay takes MS and an optional JITTER"),
        (("h9",), None),
    ):
        target = "h9" if args == ("h9",) else "h2"
        kind = ("loss", "5%") if target == "h9" else args
        result = lab.ipoibfs("link", target, *kind, check=False)
        assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result.stderr
        assert message is None or message in result.stderr, result.stderr
    assert _netem(lab)["delay_ms"] == 50 and _netem(lab)["loss"] == 0  # nothing half-applied

    cleared = lab.ipoibfs("link", "h2", "clear", check=False)
    assert cleared.stdout == f"lab link: {lab.name(2)}:1 cleared\n"
    assert _netem(lab) is None
    lost, rtt = _ping_stats(lab, 50, "0.01")
    assert lost == 0 and rtt < 50


def _complete_groups(h) -> list[str] | None:
    """The groups ib0_mcg shows joined as a full member, once every entry is complete (None
    before). Send-only ones come back only with the next packet sent to them."""
    text = read(h.debugfs("ib0_mcg"))
    if not isinstance(text, str):
        return None
    entries = text.strip().split("\n\n")
    if any("complete:       yes" not in entry for entry in entries):
        return None
    return sorted(e.split()[1] for e in entries if "send_only:       no" in e)


class _PingLoop:
    """`ping -D -i 0.1` from h1 to h2: the wall-clock time of each reply."""

    def __init__(self, lab) -> None:
        cmd = ["ip", "netns", "exec", lab.name(1), "ping", "-n", "-D", "-i", "0.1", "198.18.0.2"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)

    def replies(self) -> list[float]:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=5)
        return [float(m) for m in re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from", out, re.M)]


def test_sm_restart_during_a_ping_loop_ends_rejoined_and_loses_no_ping(lab):
    lab.up(2)
    hosts = [lab.host(1), lab.host(2)]
    groups = [_complete_groups(h) for h in hosts]
    assert all(groups), groups
    assert lab.ping(1, "198.18.0.2")
    loop = _PingLoop(lab)
    try:
        time.sleep(0.5)  # a few replies before
        started = time.time()
        restart = lab.ipoibfs("sm", "restart", check=False)
        took = time.time() - started
        assert restart.returncode == 0, restart.stderr
        assert re.fullmatch(r"lab sm: restarted \(pid \d+\)\n", restart.stdout), restart.stdout
        for h in hosts:  # every host registers again, with its LID, and rejoins every group
            wait_for(lambda h=h: "registered again with the subnet manager" in h.log,
                     timeout=10, what="registered again")  # fmt: skip
        for h, before in zip(hosts, groups, strict=True):
            # a superset: IPv6 may still be adding a solicited-node group when `before` is read
            wait_for(lambda h=h, before=before: set(before) <= set(_complete_groups(h) or ()),
                     timeout=10, what="every group joined again")  # fmt: skip
        assert "(kept)" in hosts[0].log
        time.sleep(0.5)  # and a few after
    finally:
        replies = loop.replies()
    assert replies and replies[0] < started and replies[-1] > started + took
    gaps = [b - a for a, b in zip(replies, replies[1:], strict=False)]
    assert max(gaps) <= took + 0.5, (max(gaps), took)


def test_a_reregister_keeps_the_neighbours_so_a_late_peer_needs_no_arp(lab):
    """The light flush marks paths invalid and keeps the neighbour table: h1, back before
    h2, still knows h2's hardware address, and reaches h2 with a new PathRecord once h2 is
    back (no ARP to a broadcast group h2 has not joined again yet)."""
    lab.up(2)
    h1, h2 = lab.host(1), lab.host(2)
    assert write(h1.param("debug_level"), "1") == 0
    assert lab.ping(1, "198.18.0.2")
    assert neigh_state(lab) == "REACHABLE"
    pid = daemon_pid(h2.mp)
    assert pid is not None
    invalid = r"ib0: mark path LID 0x00000003 GID fe80:0000:0000:0000:\S+ invalid"
    with stopped(pid):  # h2 registers again only after h1 has
        assert lab.ipoibfs("sm", "restart", check=False).returncode == 0
        wait_for(lambda: re.search(invalid, h1.log), timeout=10, what="h1's paths invalid")
        assert neigh_state(lab) == "REACHABLE"
    wait_for(lambda: "registered again with the subnet manager" in h2.log, timeout=10,
             what="h2 registered again")  # fmt: skip
    wait_for(lambda: lab.ping(1, "198.18.0.2", count=1), timeout=10, what="h1 -> h2")
    assert "Start path record lookup" in h1.log.split("mark path LID 0x00000003")[-1]


def test_sm_stop_and_start_say_what_they_did_and_refuse_twice(lab):
    lab.up(2)
    assert lab.ping(1, "198.18.0.2")  # the path resolved: it needs the SA
    stop = lab.ipoibfs("sm", "stop", check=False)
    assert stop.returncode == 0 and stop.stdout.startswith("lab sm: stopped (pid "), stop
    assert "the fabric (pid" in lab.ipoibfs("status").stdout
    assert lab.ping(1, "198.18.0.2")  # the data paths need no SM
    again = lab.ipoibfs("sm", "stop", check=False)
    assert again.returncode == 1 and again.stderr == (
        "ipoibfs: the lab's subnet manager is not running\n")  # fmt: skip
    start = lab.ipoibfs("sm", "start", check=False)
    assert start.returncode == 0 and start.stdout.startswith("lab sm: started (pid "), start
    twice = lab.ipoibfs("sm", "start", check=False)
    assert twice.returncode == 1 and "already running" in twice.stderr
    assert len(twice.stderr.splitlines()) == 1
    assert "not running" not in lab.ipoibfs("status").stdout


def test_a_killed_host_is_dead_and_starts_again_with_its_guids_and_lids(lab):
    lab.up(2)
    h2 = lab.host(2)
    guid, lid = read(h2.hca("node_guid")), read(h2.hca("ports", "1", "lid"))
    assert lab.ping(1, "198.18.0.2")
    kill = lab.ipoibfs("kill", "h2", check=False)
    assert kill.returncode == 0, kill.stderr
    assert re.fullmatch(rf"lab kill: {lab.name(2)} \(pid \d+\) killed\n", kill.stdout)
    status = lab.ipoibfs("status").stdout
    assert re.search(rf"^{lab.name(2)} .* dead .*\(daemon not running\)$", status, re.M), status
    no_reply(lab, 1, "198.18.0.2")
    for args, message in ((("kill", "h2"), "is not running"), (("start", "h1"), "is running"),
                          (("kill", "h9"), "no lab host 'h9'")):  # fmt: skip
        result = lab.ipoibfs(*args, check=False)
        assert result.returncode == 1 and message in result.stderr, result
        assert len(result.stderr.splitlines()) == 1
    start = lab.ipoibfs("start", "h2", check=False)
    assert start.returncode == 0 and start.stdout == f"lab start: {lab.name(2)} up\n", start
    h2.wait_carrier()
    assert read(h2.hca("node_guid")) == guid and read(h2.hca("ports", "1", "lid")) == lid
    wait_for(lambda: lab.ping(1, "198.18.0.2", count=1), timeout=10, what="ping after start")


def _perfquery(lab, i: int) -> dict[str, int]:
    out = run(IPOIBFS, "exec", lab.name(i), "--", "perfquery").stdout
    return {k: int(v) for k, v in re.findall(r"^(\w+):\.*(\d+)$", out, re.M)}


def test_faults_are_counted_in_lab_status_and_the_pma(lab):
    lab.up(2)
    assert lab.ping(1, "198.18.0.2")
    before = _perfquery(lab, 2)
    lab.ipoibfs("link", "h2", "loss", "50%")
    _ping_stats(lab, 60, "0.01")
    (port,) = json.loads(read(lab.host(2).mp / ".ipoibfs" / "ports"))  # type: ignore[arg-type]
    lost = port["netem_counts"]["lost"]
    assert lost > 5, port
    status = lab.ipoibfs("status").stdout
    assert f"({lab.name(2)}:1 link loss 50%: {lost} lost, 0 delayed," in status, status
    after = _perfquery(lab, 2)
    assert after["PortXmitDiscards"] - before["PortXmitDiscards"] == lost, (before, after)
    lab.ipoibfs("link", "h2", "clear")
    assert _perfquery(lab, 2)["PortXmitDiscards"] == after["PortXmitDiscards"]  # counters stay
    lab.ipoibfs("port", "h2", "down")
    assert f"({lab.name(2)}:1 link down)" in lab.ipoibfs("status").stdout
    lab.ipoibfs("port", "h2", "up")
    lab.host(2).wait_carrier()
    assert _perfquery(lab, 2)["LinkDownedCounter"] == before["LinkDownedCounter"] + 1
    assert "link down" not in lab.ipoibfs("status").stdout
