"""The netdev layer's packet pump (LiveNetdevs.pump), without root: one end of a datagram
socket pair stands in for the TUN fd, each write to the other end is one packet the stack
sends, and the test runs under a real trio run."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing

import pytest
import trio

from ipoibfs.netdev import LiveLink, LiveNetdevs, NetnsWorker, PumpStats
from ipoibfs.netdev.links import BATCH


@pytest.fixture
def netdevs() -> Iterator[LiveNetdevs]:
    with closing(NetnsWorker(None)) as worker, closing(LiveNetdevs(worker)) as netdevs:
        yield netdevs


@pytest.fixture
def tun() -> Iterator[tuple[LiveLink, socket.socket]]:
    """A link whose fd reads what the stack "sends": the returned socket's writes."""
    reader, stack = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    reader.setblocking(False)
    with reader, stack:
        yield LiveLink(ifindex=99, name="ib0", fd=reader.fileno()), stack


def delete(netdevs: LiveNetdevs, link: LiveLink) -> None:
    """The netdev goes (LiveNetdevs.destroy): the kernel ends the reader's blocked read, as
    shutting the socket down ends it here; then the reader is stopped."""
    socket.socket(fileno=os.dup(link.fd)).shutdown(socket.SHUT_RD)
    netdevs._stop_pump(link)


def packet(n: int) -> bytes:
    return bytes([n]) * 20


async def until(condition: Callable[[], bool], seconds: float = 5) -> None:
    with trio.fail_after(seconds):
        while not condition():
            await trio.sleep(0.005)


def block_until(condition: Callable[[], bool], seconds: float = 5) -> None:
    """Wait on the trio thread without yielding to trio: nothing it schedules runs."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


async def test_fast_runs_on_the_reader_thread_the_rest_go_to_trio_in_order(netdevs, tun):
    link, stack = tun
    trio_thread = threading.get_ident()
    fast_seen: list[tuple[int, int]] = []
    slow_seen: list[tuple[int, int]] = []

    def fast(p: bytes) -> bool:
        fast_seen.append((p[0], threading.get_ident()))
        return p[0] % 3 == 0  # the fast path takes every third packet

    def slow(p: bytes) -> None:
        slow_seen.append((p[0], threading.get_ident()))

    stats = netdevs.pump(link, fast, slow, limit=1000)
    try:
        for n in range(200):
            stack.send(packet(n))
        await until(lambda: len(fast_seen) == 200)
        await until(lambda: len(slow_seen) == 200 - 67)
    finally:
        delete(netdevs, link)
    assert [n for n, _ in fast_seen] == list(range(200))
    assert all(thread != trio_thread for _, thread in fast_seen)
    assert [n for n, _ in slow_seen] == [n for n in range(200) if n % 3]
    assert all(thread == trio_thread for _, thread in slow_seen)
    assert stats == PumpStats(dropped=0)


async def test_at_most_limit_packets_wait_for_trio_and_the_rest_are_counted(netdevs, tun):
    link, stack = tun
    handled: list[int] = []
    stats = netdevs.pump(link, lambda p: False, lambda p: handled.append(p[0]), limit=3)
    try:
        for n in range(5):
            stack.send(packet(n))
        # The trio thread is busy: three packets wait, the reader drops the fourth and fifth.
        block_until(lambda: stats.dropped == 2)
        await until(lambda: len(handled) == 3)
        await trio.sleep(0.05)
        assert handled == [0, 1, 2] and stats.dropped == 2
        # Once drained, the queue takes packets again.
        for n in range(5, 8):
            stack.send(packet(n))
        await until(lambda: len(handled) == 6)
    finally:
        delete(netdevs, link)
    assert handled == [0, 1, 2, 5, 6, 7]
    assert stats.dropped == 2


async def test_a_raising_handler_is_printed_and_the_next_packet_goes_on(netdevs, tun, capsys):
    link, stack = tun
    handled: list[int] = []

    def fast(p: bytes) -> bool:
        if p[0] == 3:
            raise RuntimeError("fast path bug")
        return False

    def slow(p: bytes) -> None:
        handled.append(p[0])
        if p[0] == 1:
            raise ValueError("slow path bug")

    netdevs.pump(link, fast, slow, limit=100)
    try:
        for n in range(5):
            stack.send(packet(n))
        await until(lambda: len(handled) == 5)
    finally:
        delete(netdevs, link)
    assert handled == [0, 1, 2, 3, 4]  # 3 went the slow way after fast raised
    err = capsys.readouterr().err
    assert err.count("Traceback (most recent call last)") == 2
    assert "ValueError: slow path bug" in err and "RuntimeError: fast path bug" in err
    assert "in slow" in err  # the handler's own frame is in the traceback


async def test_the_reader_ends_with_the_netdev_before_the_fd_closes(netdevs, tun):
    link, stack = tun
    netdevs.pump(link, lambda p: False, lambda p: None, limit=10)
    (reader,) = netdevs._readers.values()
    delete(netdevs, link)
    assert not reader._thread.is_alive()
    assert netdevs._readers == {}


def test_worker_and_netdevs_close_on_exit():
    with closing(NetnsWorker(None)) as worker:
        with closing(LiveNetdevs(worker)) as netdevs:
            ctl = netdevs._ctl
        assert ctl.fileno() == -1
    assert not worker._thread.is_alive()


async def test_what_fast_holds_goes_when_nothing_more_waits_or_after_a_batch(netdevs, tun):
    """GRO's batch (udplace.PlaceCell): held packets go at the end of a NAPI-like poll, when
    the link has nothing more to read, and at most BATCH of them at a time."""
    link, stack = tun
    held: list[bytes] = []
    flushed: list[int] = []

    def fast(p: bytes) -> bool:
        held.append(p)
        return True

    def fast_end() -> None:
        flushed.append(len(held))
        held.clear()

    for n in range(200):  # waiting before the reader starts: one burst
        stack.send(packet(n))
    netdevs.pump(link, fast, lambda p: None, limit=10, held=held, fast_end=fast_end)
    try:
        await until(lambda: sum(flushed) == 200)
        assert flushed[:3] == [BATCH] * 3 and flushed[3] == 200 - 3 * BATCH
        stack.send(packet(0))  # alone: it goes as soon as it was read
        await until(lambda: sum(flushed) == 201)
        assert flushed[4:] == [1]
    finally:
        delete(netdevs, link)


async def test_slow_end_runs_after_the_packets_that_waited_together(netdevs, tun):
    """What the trio thread takes in one callback ends with `slow_end` (the driver releases
    the batch's multicast copies there): after each batch's last packet, never before."""
    link, stack = tun
    events: list[object] = []
    for n in range(5):  # waiting before the reader starts: one burst
        stack.send(packet(n))
    netdevs.pump(link, lambda p: False, lambda p: events.append(p[0]), limit=100,
                 slow_end=lambda: events.append("end"))  # fmt: skip
    try:
        await until(lambda: [e for e in events if e != "end"] == [0, 1, 2, 3, 4])
        await until(lambda: events[-1] == "end")
        assert events[0] == 0 and events.count("end") >= 1
        for i, event in enumerate(events):  # each batch: its packets, then one end
            if event == "end":
                assert i > 0 and events[i - 1] != "end"
    finally:
        delete(netdevs, link)
