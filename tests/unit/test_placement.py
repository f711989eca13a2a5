"""Direct placement: what the sender writes lands in the sink and is counted for the receiver."""

from __future__ import annotations

import errno
import os

import trio

from ipoibfs.fabric.placement import ReceiveQueue, RemoteQueue


async def test_placed_frames_reach_the_sink_and_the_receivers_counters():
    read_end, sink = os.pipe()
    receiver = ReceiveQueue(sink)
    sender = RemoteQueue.from_fds(receiver.fds)
    assert sender is not None
    assert sender.place(b"frame-one", 5) == 0
    assert sender.place(b"frame-two", 7) == 0
    assert os.read(read_end, 100) == b"frame-oneframe-two"
    assert receiver.counts() == (2, 12)
    async with trio.open_nursery() as nursery:
        done: list[bool] = []

        async def watch() -> None:
            done.append(await sender.watch())

        nursery.start_soon(watch)
        await trio.sleep(0.01)
        receiver.close()  # the connection is destroyed: the sender stops at its next write
        assert sender.place(b"late", 4) == errno.ECONNRESET
        sender.release()
    assert done == [False]  # released, not broken
    os.close(sink)
    assert os.read(read_end, 100) == b""  # the sender's copy of the sink is closed too
    os.close(read_end)


def test_a_rep_without_a_queue_means_the_wire():
    assert RemoteQueue.from_fds([]) is None
    assert RemoteQueue.from_fds([0, 1]) is None
