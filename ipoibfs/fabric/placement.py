"""Direct placement of RC messages and UD datagrams between hosts of one machine.

An HCA writes an RC message into the receiver's buffers without the receiving CPU. The
emulation does the same: when a connection is accepted over a data plane that passes file
descriptors, the passive side hands the active side, in the REP (for UD, in the placement
offer a busy sender asks for: driver/udplace.py),

- its receive sink: the fd whose writes enter the receiving netdev's stack (the TUN);
- a shared page on which the sender counts what it placed, as the receiver's completion
  handler would have counted it;
- a lifeline: the read end of a pipe only the receiving process writes to, which reaches
  end-of-file when that process dies, so that the sender lets go of the sink at once.

The receiver revokes a sink when it destroys the connection (a word on the shared page, read
before each write) and when it deletes its netdev (later writes fail with EBADFD).

A placed message never crosses the wire, so the sender's port tap records it (as PLACED,
with the RC or UD header it would have carried) for `ipoibfs capture`.

The page also carries what the receiver tells the sender (GRO: merge TCP segments before
placing them, as the receiver's GRO would) and what the sender tells the receiver besides the
counts: when it last placed (CLOCK_MONOTONIC), which confirms the sender as a neighbour, as
received unicast IP does.
"""

from __future__ import annotations

import ctypes
import errno
import math
import mmap
import os
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import trio

from .tap import PLACED

if TYPE_CHECKING:
    from .port import FabricPort

COUNTERS = struct.Struct("=QQ")  # packets, bytes
#: ... and time.monotonic() of the last placement (0.0 before any): one write a placement.
COUNTS_STAMP = struct.Struct("=QQd")
STAMP = struct.Struct("=d")
STAMP_AT = COUNTERS.size
REVOKED_AT = COUNTS_STAMP.size  # a byte, 1 once the receiver destroyed the connection
FLAGS = struct.Struct("=Q")  # the receiver's wishes, set before the queue is handed out
FLAGS_AT = REVOKED_AT + 8  # the revocation byte, padded so that FLAGS stays aligned
FLAG_GRO = 1
#: How an offload engine counts what it places (RemoteQueue.lend): a UD datagram (an LSO
#: super-packet as the segments the HCA cuts) or an RC message.
FLOW_UD, FLOW_RC = 1, 2
#: The same counts and stamp again, for what the reader thread's C loop placed
#: (netdev/flows.c): each writer has its own, and the receiver adds them up.
OFFLOAD_AT = FLAGS_AT + FLAGS.size
_lifeline: tuple[int, int] | None = None


def _lifeline_read_end() -> int:
    """The read end of this process's lifeline pipe; its write end is never written."""
    global _lifeline
    if _lifeline is None:
        _lifeline = os.pipe()
    return _lifeline[0]


class ReceiveQueue:
    """The passive side: what it hands out in the REP, and the counts placed into it."""

    def __init__(self, sink: int, *, flags: int = 0) -> None:
        self._sink = sink
        self._page_fd = os.memfd_create("ipoibfs-placement", os.MFD_CLOEXEC)
        os.ftruncate(self._page_fd, mmap.PAGESIZE)
        self._page = mmap.mmap(self._page_fd, mmap.PAGESIZE)
        FLAGS.pack_into(self._page, FLAGS_AT, flags)

    @property
    def fds(self) -> list[int]:
        return [self._sink, self._page_fd, _lifeline_read_end()]

    def counts(self) -> tuple[int, int]:
        """(packets, bytes) placed so far."""
        packets, nbytes = COUNTERS.unpack_from(self._page)
        more_packets, more_bytes = COUNTERS.unpack_from(self._page, OFFLOAD_AT)
        return packets + more_packets, nbytes + more_bytes

    def placed_at(self) -> float:
        """time.monotonic() of the last placement; -inf before any."""
        page = self._page
        stamp = max(STAMP.unpack_from(page, STAMP_AT)[0],
                    STAMP.unpack_from(page, OFFLOAD_AT + STAMP_AT)[0])  # fmt: skip
        return stamp if stamp else -math.inf

    def close(self) -> tuple[int, int]:
        """Revoke the queue (the sender stops at its next write) and give the (packets,
        bytes) placed, read once the revocation is on the page."""
        self._page[REVOKED_AT] = 1
        counts = self.counts()
        self._page.close()
        os.close(self._page_fd)
        return counts


class RemoteQueue:
    """The active side: a peer's receive sink that frames are written into directly."""

    def __init__(self, fds: Sequence[int], *, port: FabricPort | None = None,
                 header: bytes = b"") -> None:  # fmt: skip
        sink, page_fd, lifeline = fds
        #: The sending port, whose capture tap sees what is placed, and the RC header (and
        #: IPoIB header) the frames would have had on the wire.
        self._port, self._header = port, header
        self._page = mmap.mmap(page_fd, mmap.PAGESIZE)
        # Its address for an offload engine (`lend`); the export is dropped at once, so that
        # the page can be closed.
        view = ctypes.c_char.from_buffer(self._page)
        self._address = ctypes.addressof(view)
        del view
        #: What `lend` registered: called, under the lock, before the fds are closed.
        self._lent: list[Callable[[int], None]] = []
        self._sink = os.dup(sink)
        self._lifeline = os.dup(lifeline)
        self._packets = self._bytes = 0
        self.gro = bool(FLAGS.unpack_from(self._page, FLAGS_AT)[0] & FLAG_GRO)
        self._scope = trio.CancelScope()
        # The netdev's reader thread places too: the fds are closed under this lock.
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def from_fds(cls, fds: Sequence[int], *, port: FabricPort | None = None,
                 header: bytes = b"") -> RemoteQueue | None:  # fmt: skip
        """The queue a REP carried, or None if it carried none (another machine's host)."""
        if len(fds) != 3:
            return None
        try:
            return cls(fds, port=port, header=header)
        except (OSError, ValueError):
            return None

    def place(self, frame: bytes | memoryview, length: int, packets: int = 1) -> int:
        """Write one frame into the peer's stack and count `packets` packets of `length`
        bytes in all; 0 or an errno (ECONNRESET once the receiver revoked the queue). The
        sending port's capture sees the frame with the header it was made with (RC; a UD
        placement records its own frames: driver/udplace.py)."""
        with self._lock:
            page = self._page
            if self._closed or page[REVOKED_AT]:
                return errno.ECONNRESET
            try:
                os.write(self._sink, frame)
            except OSError as e:
                return e.errno or 0
            self._packets += packets
            self._bytes += length
            COUNTS_STAMP.pack_into(page, 0, self._packets, self._bytes, time.monotonic())
        port = self._port
        if port is not None:
            tap = port.tap
            if tap is not None:
                tap.record(PLACED, port.num, 0, [self._header, frame])
        return 0

    def lend(self, install: Callable[[int, int], bool], forget: Callable[[int], None]) -> bool:
        """Let an offload engine (netdev/flows.c) place into this queue itself: while the
        queue is open, `install(sink fd, page address)`; `forget(page address)` is called
        before the queue closes, and the engine must not write after it returns. The
        engine counts on the page's OFFLOAD_AT slot; the tap sees nothing it places, so it
        is lent only while the sending port has none. False if nothing was installed."""
        with self._lock:
            if self._closed or self._page[REVOKED_AT]:
                return False
            if forget not in self._lent:
                self._lent.append(forget)
            return install(self._sink, self._address)

    async def watch(self) -> bool:
        """The queue's life: True when the receiving process died, False when `release`d.
        Its fds are closed here, and only here, so that nothing waits on a closed fd."""
        try:
            with self._scope:
                await trio.lowlevel.wait_readable(self._lifeline)
                return True
            return False
        finally:
            with self._lock:
                self._closed = True
                for forget in self._lent:
                    forget(self._address)
                os.close(self._lifeline)
                os.close(self._sink)
                self._page.close()

    def release(self) -> None:
        """No more writes: `watch` returns and closes the fds."""
        self._scope.cancel()
