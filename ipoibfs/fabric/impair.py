"""Impairments of what leaves a port, as netem impairs a device's egress (decision 29).

`lab link HOST loss P% | delay MS [JITTER] | reorder P% | corrupt P% | clear` sets them on a
host's port. UD datagrams and CM MADs are lost, corrupted, delayed and reordered as they
are. RC messages are never lost: the HCA retransmits them, so a lost RC message arrives one
retransmission timeout late, and every later message of the port's RC traffic waits behind
it, so that RC stays reliable and ordered, only slower. A message that carries file
descriptors (a REP handing over a receive queue) leaves at once, untouched.

Sending may happen on any thread; delayed messages wait in one queue per port, which one
thread sends when they are due.
"""

from __future__ import annotations

import heapq
import itertools
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..wire import KIND_RC

#: How late a lost RC message arrives: the HCA's retransmission after its ACK timeout.
RC_RETRANSMIT_S = 0.01
#: A reordered message without a delay set is held this long, so that the next overtakes it.
REORDER_HOLD_S = 0.001
#: Where corruption flips a bit: past the emulated header, in the payload.
CORRUPT_FROM = 64

Sender = Callable[[list[bytes | memoryview], Sequence[int]], int]


@dataclass
class Netem:
    """What is set on a port: percentages 0-100 and milliseconds."""

    loss: float = 0.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    reorder: float = 0.0
    corrupt: float = 0.0

    def describe(self) -> str:
        """As `tc qdisc show` puts a netem qdisc's parameters."""
        parts = []
        if self.delay_ms:
            jitter = f"  {self.jitter_ms:g}ms" if self.jitter_ms else ""
            parts.append(f"delay {self.delay_ms:g}ms{jitter}")
        for name in ("loss", "reorder", "corrupt"):
            value = getattr(self, name)
            if value:
                parts.append(f"{name} {value:g}%")
        return " ".join(parts) or "none"


@dataclass
class Counts:
    """What the impairments did (`lab status`, `.ipoibfs/ports`)."""

    lost: int = 0
    delayed: int = 0
    reordered: int = 0
    corrupted: int = 0
    retransmitted: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(order=True)
class _Held:
    due: float
    seq: int
    send: Sender = field(compare=False)
    data: bytes = field(compare=False)


class Impairment:
    """The impairments of one port's egress, and the queue of what they delay."""

    def __init__(self, netem: Netem) -> None:
        self.netem = netem
        self.counts = Counts()
        self._rng = random.Random()
        self._heap: list[_Held] = []
        self._seq = itertools.count()
        self._rc_last = 0.0  # when the latest RC message is due: later ones never overtake it
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="ipoibfs-netem", daemon=True)
        self._thread.start()

    def _chance(self, percent: float) -> bool:
        return percent > 0 and self._rng.random() * 100 < percent

    def send(self, parts: list[bytes | memoryview], fds: Sequence[int], send: Sender) -> int:
        """One message through the impairments; 0 as the wire says for a message it took
        (netem's losses are silent), else what `send` returned for one sent at once."""
        if fds:
            return send(parts, fds)
        netem, counts = self.netem, self.counts
        rc = bool(parts) and len(parts[0]) > 0 and parts[0][0] == KIND_RC
        now = time.monotonic()
        delay = netem.delay_ms / 1000
        if netem.jitter_ms:
            delay = max(0.0, delay + self._rng.uniform(-1, 1) * netem.jitter_ms / 1000)
        if self._chance(netem.loss):
            if not rc:
                counts.lost += 1
                return 0
            counts.retransmitted += 1
            delay += RC_RETRANSMIT_S
        if self._chance(netem.reorder) and not rc:
            counts.reordered += 1
            delay = 0.0 if netem.delay_ms else REORDER_HOLD_S
        data: bytes | None = None
        if self._chance(netem.corrupt) and not rc:
            counts.corrupted += 1
            buf = bytearray(b"".join(parts))
            if len(buf) > CORRUPT_FROM:
                buf[self._rng.randrange(CORRUPT_FROM, len(buf))] ^= 1 << self._rng.randrange(8)
            data = bytes(buf)
        due = now + delay
        with self._cond:
            if rc:
                due = max(due, self._rc_last)
                self._rc_last = due
            if due <= now and not self._heap:
                pass  # nothing waits: it leaves now, below
            else:
                counts.delayed += 1
                held = _Held(due, next(self._seq), send, data or b"".join(parts))
                heapq.heappush(self._heap, held)
                self._cond.notify()
                return 0
        return send([data] if data is not None else parts, ())

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                if not self._heap:
                    self._cond.wait()
                    continue
                wait = self._heap[0].due - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                held = heapq.heappop(self._heap)
                self._cond.release()
                try:
                    held.send([held.data], ())
                finally:
                    self._cond.acquire()

    def close(self) -> None:
        """What is still held is lost, as a qdisc's queue is when it is deleted."""
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify()
