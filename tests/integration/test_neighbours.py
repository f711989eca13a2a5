"""Neighbours with the kernel's reachability rules on lab hosts: a peer re-created with a new
QPN is found again while it is pinged, `ip neigh` shows the daemon's table as iproute2 does,
and the timers are the namespace's /proc/sys/net/ipv4/neigh/<if>/ ones."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time

from .conftest import IPOIBFS, wait_for, write
from .test_exec import ex
from .test_fabric import up_with_children

LLADDR = r"80:00:00:[0-9a-f]{2}:fe:80(?::[0-9a-f]{2}){14}"


class Pinger:
    """`ping -i 0.2 -D` running on a host; each reply is an event with its arrival time."""

    def __init__(self, lab, i: int, dst: str) -> None:
        self.replies: list[float] = []
        self.got = threading.Condition()
        cmd = ["ip", "netns", "exec", lab.name(i), "ping", "-n", "-D", "-i", "0.2", dst]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            stamp = re.match(r"\[(\d+\.\d+)\] \d+ bytes from", line)
            if stamp:
                with self.got:
                    self.replies.append(float(stamp.group(1)))
                    self.got.notify_all()

    def reply_after(self, since: float, timeout: float) -> float | None:
        """The wall-clock time of the first reply after `since`, waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        with self.got:
            while True:
                later = [t for t in self.replies if t > since]
                if later:
                    return later[0]
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.got.wait(left)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=5)


def recreate_child(lab) -> str:
    """h1's ib0.8001 deleted and made again with its address: a new QPN. Its new address."""
    h1 = lab.host(1)
    before = h1.attr("ib0.8001", "address")
    assert write(h1.net() / "delete_child", "0x8001") == 0
    wait_for(lambda: not h1.net("ib0.8001").exists(), what="child gone")
    assert write(h1.net() / "create_child", "0x8001") == 0
    h1.netns.ip("addr", "add", "198.18.1.1/24", "dev", "ib0.8001")
    h1.up("ib0.8001")
    h1.wait_carrier("ib0.8001")
    after = h1.attr("ib0.8001", "address")
    assert isinstance(after, str) and after != before  # the QPN changed
    return after.strip()


def test_a_recreated_child_that_announces_itself_is_reached_within_2_s(lab, tmp_path):
    up_with_children(lab, tmp_path)
    pinger = Pinger(lab, 2, "198.18.1.1")
    try:
        assert pinger.reply_after(0, 10) is not None
        # At once: a gratuitous ARP overrides the entry even within locktime (arp_process).
        recreate_child(lab)
        announced = time.time()
        arping = subprocess.Popen(
            [IPOIBFS, "exec", lab.name(1), "--", "arping", "-U",
             "-c", "2", "-I", "ib0.8001", "198.18.1.1"], stdout=subprocess.DEVNULL)  # fmt: skip
        reply = pinger.reply_after(announced, 10)
        assert arping.wait(timeout=10) == 0
        assert reply is not None and reply - announced < 2.0, reply and reply - announced
        print(f"reached again {reply - announced:.2f} s after the announcement")
    finally:
        pinger.stop()


def test_without_an_announcement_the_nud_timers_find_it_within_60_s(lab, tmp_path):
    up_with_children(lab, tmp_path)
    pinger = Pinger(lab, 2, "198.18.1.1")
    try:
        assert pinger.reply_after(0, 10) is not None
        deleted = time.time()
        recreate_child(lab)
        reply = pinger.reply_after(deleted, 60)
        assert reply is not None, "not reached again within 60 s"
        print(f"reached again {reply - deleted:.1f} s after the child was deleted")
        line = ex(lab.name(2), "ip", "neigh", "show", "dev", "ib0.8001").stdout
        assert lab.host(1).attr("ib0.8001", "address").strip() in line
    finally:
        pinger.stop()


def test_ip_neigh_shows_the_table_as_iproute2_prints_it(lab):
    lab.up(2)
    assert lab.ping(1, "198.18.0.2")
    peer = lab.host(2).attr("ib0", "address").strip()
    show = ex(lab.name(1), "ip", "neigh", "show", "dev", "ib0")
    assert show.returncode == 0, show.stderr
    assert re.fullmatch(rf"198\.18\.0\.2 lladdr {peer} (REACHABLE|DELAY) \n", show.stdout)
    every = ex(lab.name(1), "ip", "neigh").stdout
    assert re.search(rf"^198\.18\.0\.2 dev ib0 lladdr {LLADDR} (REACHABLE|DELAY) $", every, re.M)
    (entry,) = [e for e in json.loads(ex(lab.name(1), "ip", "-j", "neigh").stdout)
                if e.get("dev") == "ib0"]  # fmt: skip
    assert entry["dst"] == "198.18.0.2" and entry["lladdr"] == peer
    assert entry["state"] in (["REACHABLE"], ["DELAY"])
    stats = ex(lab.name(1), "ip", "-s", "neigh", "show", "dev", "ib0").stdout
    assert re.fullmatch(rf"198\.18\.0\.2 lladdr {peer}  used \d+/\d+/\d+probes \d+ \w+ \n", stats)
    assert ex(lab.name(1), "ip", "neigh", "flush", "dev", "ib0").returncode == 0
    assert ex(lab.name(1), "ip", "neigh", "show", "dev", "ib0").stdout == ""
    assert lab.ping(1, "198.18.0.2")  # resolved again


def test_the_timers_are_the_namespaces_sysctls(lab):
    """base_reachable_time_ms and delay_first_probe_time lowered in h1's namespace: an
    entry left unused goes STALE in seconds, not after 15-45 s."""
    lab.up(2)
    h1 = lab.host(1)
    h1.netns.exec("sysctl", "-qw", "net.ipv4.neigh.ib0.base_reachable_time_ms=1000",
                  "net.ipv4.neigh.ib0.delay_first_probe_time=1")  # fmt: skip

    def state() -> str:
        return ex(lab.name(1), "ip", "neigh", "show", "dev", "ib0").stdout

    def goes_stale() -> bool:
        """A fresh entry goes STALE within seconds, once the daemon has read the sysctls
        (base_reachable_time_ms within a second, the others within five): an entry made
        before keeps its 15-45 s timer, so each try starts from a flushed table."""
        ex(lab.name(1), "ip", "neigh", "flush", "dev", "ib0")  # an empty table is fine too
        assert lab.ping(1, "198.18.0.2", count=1)
        try:
            wait_for(lambda: state().endswith(" STALE \n"), timeout=8, what="STALE")
        except AssertionError:
            return False
        return True

    wait_for(goes_stale, timeout=30, what="an entry going STALE in seconds")
