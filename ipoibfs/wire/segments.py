"""Messages cut to fit UDP datagrams and put back together, as an HCA cuts messages into
packets: the UDP wire's framing, without its socket.

A UDP datagram holds less than the largest message (an RC message of 65524 bytes, an LSO
send of 64 KiB plus headers). Each datagram starts with SEGMENT_HEADER: the sender's
message number, the segment's index and the message's segment count. A message that lost
a segment is lost.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from typing import cast

#: Over UDP: message number, segment index, segment count.
SEGMENT_HEADER = struct.Struct("!IBB")
UDP_PAYLOAD = 65507
SEGMENT_DATA = UDP_PAYLOAD - SEGMENT_HEADER.size


def segments(number: int, parts: list[bytes | memoryview], size: int = SEGMENT_DATA,
             ) -> list[list[bytes | memoryview]]:  # fmt: skip
    """One message as the datagrams that carry it over UDP, at most `size` bytes of it in
    each (less than SEGMENT_DATA leaves room for a trailer, such as a MAC)."""
    total = sum(len(p) for p in parts)
    if total <= size:
        return [[SEGMENT_HEADER.pack(number, 0, 1), *parts]]
    data = b"".join(parts)
    count = -(-total // size)
    return [[SEGMENT_HEADER.pack(number, i, count), data[i * size : (i + 1) * size]]
            for i in range(count)]  # fmt: skip


class Reassembly:
    """Messages put back together from their segments, per sender."""

    def __init__(self, pending: int = 64) -> None:
        self._partial: OrderedDict[tuple[object, int], list[bytes | None]] = OrderedDict()
        self._pending = pending  # messages in progress; the oldest is given up beyond this

    def add(self, sender: object, datagram: memoryview) -> memoryview | bytes | None:
        """The whole message once its last segment arrived, else None."""
        if len(datagram) < SEGMENT_HEADER.size:
            return None
        number, index, count = SEGMENT_HEADER.unpack_from(datagram)
        body = datagram[SEGMENT_HEADER.size :]
        if count == 1:
            return body
        key = (sender, number)
        parts = self._partial.get(key)
        if parts is None:
            parts = self._partial[key] = [None] * count
            while len(self._partial) > self._pending:
                self._partial.popitem(last=False)
        if index >= len(parts) or count != len(parts):
            return None
        parts[index] = bytes(body)
        if any(p is None for p in parts):
            return None
        del self._partial[key]
        return b"".join(cast(list[bytes], parts))
