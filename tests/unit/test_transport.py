"""Cutting messages into UDP-sized segments and putting them back together."""

from __future__ import annotations

import os

from ipoibfs.fabric.transport import SEGMENT_DATA, UDP_PAYLOAD, Reassembly, segments


def datagrams(number: int, message: bytes, *parts_at: int) -> list[bytes]:
    cuts = [0, *parts_at, len(message)]
    parts = [message[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]
    return [b"".join(bytes(p) for p in d) for d in segments(number, parts)]


def test_a_small_message_is_one_datagram_and_comes_back_whole():
    sent = datagrams(7, b"hello, world", 5)
    assert len(sent) == 1
    assert bytes(Reassembly().add("a", memoryview(sent[0]))) == b"hello, world"


def test_a_64k_message_is_cut_to_fit_udp_and_rebuilt_in_any_order():
    message = os.urandom(65524 + 60)
    sent = datagrams(1, message, 60)
    assert len(sent) == 2 and all(len(d) <= UDP_PAYLOAD for d in sent)
    r = Reassembly()
    assert r.add("a", memoryview(sent[1])) is None
    assert r.add("a", memoryview(sent[0])) == message


def test_segments_of_different_senders_and_messages_do_not_mix():
    m1, m2 = os.urandom(SEGMENT_DATA + 10), os.urandom(SEGMENT_DATA + 20)
    a1, a2 = datagrams(1, m1), datagrams(1, m2)
    r = Reassembly()
    assert r.add("a", memoryview(a1[0])) is None
    assert r.add("b", memoryview(a2[0])) is None
    assert r.add("b", memoryview(a2[1])) == m2
    assert r.add("a", memoryview(a1[1])) == m1


def test_a_message_that_lost_a_segment_is_given_up_not_kept_forever():
    r = Reassembly(pending=2)
    lost = datagrams(1, os.urandom(SEGMENT_DATA + 1))
    assert r.add("a", memoryview(lost[0])) is None
    for n in (2, 3):
        first = datagrams(n, os.urandom(SEGMENT_DATA + 1))[0]
        assert r.add("a", memoryview(first)) is None
    # Message 1 was dropped to make room: its late second half alone completes nothing.
    assert r.add("a", memoryview(lost[1])) is None


def test_truncated_or_inconsistent_segments_are_dropped():
    r = Reassembly()
    assert r.add("a", memoryview(b"\x00\x01")) is None
    good = datagrams(4, os.urandom(SEGMENT_DATA + 1))
    bad = bytearray(good[1])
    bad[5] = 3  # claims three segments
    assert r.add("a", memoryview(good[0])) is None
    assert r.add("a", memoryview(bytes(bad))) is None
