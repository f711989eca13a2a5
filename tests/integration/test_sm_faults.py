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

from .conftest import IPOIBFS, Netns, cleanup_mount, daemon_pid, read, run, wait_for, write

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
    h2 is dropped, and h3's rejoin and stores are as fast as ever. Continued, h2 comes
    back."""
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
    # h2 continues, finds itself dropped, registers again (same LID) and rejoins.
    wait_for(lambda: "registered again with the subnet manager" in h2.log, what="h2 back")
    assert "LIDs 0x3 (kept)" in h2.log
    wait_for(lambda: lab.ping(3, "198.18.0.2", count=1), timeout=20, what="h3 -> h2")


def fabric_process(lab) -> tuple[int, list[str]]:
    """The lab's `fabric serve` (its pid and command line), found by its socket's path."""
    address = f"/run/ipoibfs/{lab.prefix}-fabric.sock"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = [a.decode() for a in (entry / "cmdline").read_bytes().split(b"\0")[:-1]]
        except OSError:
            continue
        if "fabric" in argv and "serve" in argv and address in argv:
            return int(entry.name), argv
    raise AssertionError("the lab's fabric is not running")


def lid(h) -> str:
    value = read(h.hca("ports", "1", "lid"))
    assert isinstance(value, str)
    return value.strip()


def test_a_killed_sm_restarted_from_its_state_is_rejoined_with_the_same_lids(lab, tmp_path):
    lab.up(3)
    hosts = [lab.host(i) for i in (1, 2, 3)]
    lids = [lid(h) for h in hosts]
    assert lids == ["0x2", "0x3", "0x4"]
    assert lab.ping(1, "198.18.0.2")
    pid, argv = fabric_process(lab)
    log = Path(f"/run/ipoibfs/{lab.prefix}-fabric.log")
    newcomer_ns = Netns(f"{lab.prefix}-x")
    newcomer = tmp_path / "x"
    restarted = None
    h1_pid = daemon_pid(hosts[0].mp)
    assert h1_pid is not None
    try:
        with stopped(h1_pid):  # h1 cannot come back before a newcomer asks for a LID
            os.kill(pid, signal.SIGKILL)
            for h in hosts[1:]:
                wait_for(lambda h=h: "lost the subnet manager at" in h.log, what="loss noticed")
            before = len(log.read_text())
            with open(log, "a") as out:
                restarted = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                             stderr=out, start_new_session=True)  # fmt: skip
            wait_for(lambda: "subnet manager up" in log.read_text()[before:], what="SM up")
            run("ip", "netns", "add", newcomer_ns.name)
            newcomer.mkdir()
            result = run(IPOIBFS, "mount", "--netns", newcomer_ns.name, "--fabric",
                         argv[argv.index("serve") + 1], "--name", f"{lab.prefix}-x",
                         str(newcomer), check=False)  # fmt: skip
            assert result.returncode == 0, result.stderr
            assert read(newcomer / "class/infiniband/ipoibfs0/ports/1/lid") == "0x5\n"
        # h1 continues, notices, and gets its LID back: 0x2 was never given away.
        for h in hosts:
            wait_for(lambda h=h: "registered again with the subnet manager" in h.log,
                     timeout=10, what="registered again")  # fmt: skip
        assert "lost the subnet manager at" in hosts[0].log
        assert [lid(h) for h in hosts] == lids
        new_log = log.read_text()[before:]
        for i in (1, 2, 3):
            assert f"{lab.name(i)} joined (LIDs {i + 1})" in new_log
        assert "LIDs 0x2 (kept)" in hosts[0].log
        # Traffic after a path flush (a mode switch flushes h1's paths): the rejoined
        # broadcast groups carry the ARP again.
        assert write(hosts[0].net() / "mode", "connected\n") == 0
        wait_for(lambda: lab.ping(1, "198.18.0.2", count=1), timeout=20, what="h1 -> h2")
        wait_for(lambda: lab.ping(1, "198.18.0.3", count=1), timeout=20, what="h1 -> h3")
        assert write(hosts[0].net() / "mode", "datagram\n") == 0
        wait_for(lambda: lab.ping(3, "198.18.0.1", count=1), timeout=20, what="h3 -> h1")
    finally:
        if newcomer.exists():
            cleanup_mount(newcomer)
        run("ip", "netns", "del", newcomer_ns.name, check=False)
        if restarted is not None:
            restarted.kill()
            restarted.wait()
