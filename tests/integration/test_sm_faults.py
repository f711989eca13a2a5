"""The subnet manager under faults: a host that stops reading delays nobody else, and a
killed SM is noticed, restarted from its state and rejoined by every host."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .conftest import daemon_pid, read, wait_for, write

#: Holds N IPv4 group memberships on an address until stdin closes (the per-socket
#: limit, igmp_max_memberships, is 20: one socket per 20 groups).
MEMBER = """
import socket, sys
n, addr = int(sys.argv[1]), socket.inet_aton(sys.argv[2])
socks = []
for i in range(n):
    if i % 20 == 0:
        socks.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    group = socket.inet_aton(f"239.1.{i // 200}.{i % 200 + 1}")
    socks[-1].setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, group + addr)
print("joined", flush=True)
sys.stdin.read()
"""


@contextmanager
def stopped(pid: int) -> Iterator[None]:
    """The process is SIGSTOPped for the block, and continued whatever happens."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@contextmanager
def memberships(lab, i: int, count: int) -> Iterator[None]:
    """Host i's ib0 (198.18.0.i) holds `count` IPv4 groups for the block."""
    proc = subprocess.Popen(["ip", "netns", "exec", lab.name(i), "python3", "-c", MEMBER,
                             str(count), f"198.18.0.{i}"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout.readline() == "joined\n"
        yield
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)


def complete_groups(h, ifname: str = "ib0") -> int:
    text = read(h.debugfs(f"{ifname}_mcg"))
    assert isinstance(text, str)
    return text.count("complete:       yes")


def fabric_log(lab) -> str:
    return Path(f"/run/ipoibfs/{lab.prefix}-fabric.log").read_text()


def timed_write(path: Path, data: str) -> tuple[int, float]:
    start = time.monotonic()
    result = write(path, data)
    return result, time.monotonic() - start


def test_a_stopped_host_delays_no_one(lab):
    """h2 stops reading while h1 joins a thousand groups (each one a push to every host):
    h2 is dropped, and h3's rejoin and stores are as fast as ever."""
    lab.up(3)
    h1, h2, h3 = (lab.host(i) for i in (1, 2, 3))
    pid = daemon_pid(h2.mp)
    assert pid is not None
    groups = 1000
    with stopped(pid):
        with memberships(lab, 1, groups):
            wait_for(lambda: complete_groups(h1) >= groups, timeout=30, what="h1's joins")
            wait_for(lambda: re.search(rf"dropping {lab.name(2)}: ", fabric_log(lab)),
                     timeout=15, what="the SM drops the stopped host")  # fmt: skip
            start = time.monotonic()
            h3.netns.ip("link", "set", "ib0", "down")
            h3.up()
            h3.wait_carrier()
            assert time.monotonic() - start < 3
            for path, data in ((h3.net() / "mtu", "1500\n"), (h3.net() / "mode", "connected\n"),
                               (h3.net() / "mode", "datagram\n"),
                               (h3.net() / "create_child", "0x8001\n")):  # fmt: skip
                result, took = timed_write(path, data)
                assert result == 0 and took < 1, (path, data, result, took)
            assert lab.ping(3, "198.18.0.1")
