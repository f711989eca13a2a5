"""Direct placement: what the sender writes lands in the sink and is counted for the receiver."""

from __future__ import annotations

import errno
import math
import os
import time

import trio

from ipoibfs import wire
from ipoibfs.fabric.placement import FLAG_GRO, ReceiveQueue, RemoteQueue


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


def test_the_receivers_wish_and_the_senders_stamp_cross_the_page():
    """FLAG_GRO set by the receiver reaches the sender; a placement counts as many packets as
    the frame holds segments, and stamps the time the receiver confirms the sender by."""
    read_end, sink = os.pipe()
    plain, merging = ReceiveQueue(sink), ReceiveQueue(sink, flags=FLAG_GRO)
    senders = [RemoteQueue.from_fds(q.fds) for q in (plain, merging)]
    assert [s.gro for s in senders if s is not None] == [False, True]
    assert plain.placed_at() == -math.inf
    before = time.monotonic()
    assert senders[0] is not None and senders[0].place(b"super", 3000, packets=3) == 0
    assert plain.counts() == (3, 3000)
    assert before <= plain.placed_at() <= time.monotonic()
    assert merging.placed_at() == -math.inf
    for queue in (plain, merging):
        queue.close()
    os.close(sink)
    os.close(read_end)


def test_a_placement_message_round_trips_and_junk_is_refused():
    msg = wire.PlaceMessage(wire.PLACE_OFFER, 0x12, 0x48, 0x4A, 0x8001)
    data = msg.pack()
    assert data[0] == wire.KIND_PLACE and int.from_bytes(data[2:4], "big") == 0x12  # SLID
    assert wire.PlaceMessage.unpack(data) == msg
    assert wire.PlaceMessage.unpack(data[:-1]) is None
    assert wire.PlaceMessage.unpack(bytes([wire.KIND_UD]) + data[1:]) is None
    assert wire.PlaceMessage.unpack(data[:1] + b"\x07" + data[2:]) is None
