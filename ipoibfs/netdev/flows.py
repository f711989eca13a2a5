"""The netdev's flow offload (netdev/flows.c): a table of destinations that the reader
thread's C loop sends to on its own, placing each packet straight into the peer's stack.

A Python reader pays 60-odd bytecodes a packet, on a CPU that is cold after idle; that was
most of a ping's time and a tenth of a bulk transfer's (README, Benchmarks). The driver keeps
its rules: it installs a destination only after its own fast path sent a packet there
(Neighbours.xmit_fast), and clears or forgets entries whenever what it published changes.
What the loop does not send itself comes back to Python whole, in order. For a peer that
wants GRO, the loop merges the TCP segments of a batch as PlaceCell.flush would (gro.c holds
it to wire/lro.py's rules); what it held and could not deliver comes back to Python too,
ahead of the packet that follows it.

The library is built by `make setup` (next to the launcher, in the venv).
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

from ..fabric.flag import Flag

LIBRARY = Path(sys.prefix) / "lib" / "ipoibfs-flows.so"
_KEY = 17  # a used key as the loop reports it: its length, then 16 bytes
USED_MAX = 1024  # more than the table holds (MAX_ENTRIES in flows.c)
TAKE_BACK = -(1 << 20)  # run(): no packet, only frames to take back (flows.c)

_lib: ctypes.CDLL | None = None


def library() -> ctypes.CDLL:
    """The loaded library, with its functions' signatures."""
    global _lib
    if _lib is None:
        lib = ctypes.CDLL(str(LIBRARY))
        p, u8p, u64 = ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint8), ctypes.c_uint64
        lib.ipoibfs_flows_new.argtypes = [ctypes.c_int, p]
        lib.ipoibfs_flows_new.restype = p
        lib.ipoibfs_flows_free.argtypes = [p]
        lib.ipoibfs_flows_buffer.argtypes = [p]
        lib.ipoibfs_flows_buffer.restype = u8p
        lib.ipoibfs_flows_run.argtypes = [p]
        lib.ipoibfs_flows_run.restype = ctypes.c_long
        lib.ipoibfs_flows_install.argtypes = [p, u64, ctypes.c_char_p, ctypes.c_int,
                                                ctypes.c_int, ctypes.c_uint32, ctypes.c_int,
                                                ctypes.c_int, p, p]  # fmt: skip
        lib.ipoibfs_flows_install.restype = ctypes.c_int
        lib.ipoibfs_flows_forget.argtypes = [p, p]
        lib.ipoibfs_flows_counts.argtypes = [p, ctypes.POINTER(u64)]
        lib.ipoibfs_flows_used.argtypes = [p, ctypes.c_char_p, ctypes.c_int]
        lib.ipoibfs_flows_used.restype = ctypes.c_int
        lib.ipoibfs_flows_take.argtypes = [p, ctypes.POINTER(p)]
        lib.ipoibfs_flows_take.restype = ctypes.c_int
        lib.ipoibfs_flows_pending.argtypes = [p]
        lib.ipoibfs_flows_pending.restype = p
        _lib = lib
    return _lib


class FlowTable:
    """One link's table, read by the loop on its reader thread (`run`) and programmed from
    any thread. `generation` changes with every `clear` and `forget`: an `install` made with
    an older one is refused, so that nothing decided before a change outlives it."""

    def __init__(self, fd: int, host_ok: Flag) -> None:
        self._lib = lib = library()
        self._host_ok = host_ok  # kept alive while the loop reads it
        self._flags: set[Flag] = set()  # the port flags the entries point at, kept alive
        self._table = lib.ipoibfs_flows_new(fd, host_ok.address)
        if not self._table:
            raise MemoryError("the flow offload table")
        self._buffer = lib.ipoibfs_flows_buffer(self._table)
        self._used = ctypes.create_string_buffer(USED_MAX * _KEY)  # used()'s, made once
        self._pending = ctypes.c_int.from_address(lib.ipoibfs_flows_pending(self._table))
        self.generation = 0

    def __del__(self) -> None:
        table, self._table = getattr(self, "_table", None), None
        if table:
            self._lib.ipoibfs_flows_free(table)

    def run(self) -> list[bytes]:
        """On the reader thread: read and send until a packet is Python's, and return it (b""
        at end of file), after any frames GRO held and handed back. The GIL is released
        meanwhile. OSError when the read fails."""
        n = self._lib.ipoibfs_flows_run(self._table)
        if n == TAKE_BACK:
            return self._take_back()
        if n < 0:
            raise OSError(-n, "read")
        packet = ctypes.string_at(self._buffer, n)
        return self._take_back() + [packet] if self._pending.value else [packet]

    def _take_back(self) -> list[bytes]:
        frames, where, take = [], ctypes.c_void_p(), self._lib.ipoibfs_flows_take
        while n := take(self._table, ctypes.byref(where)):
            frames.append(ctypes.string_at(where, n))
        return frames

    def install(self, generation: int, key: bytes, kind: int, limit: int, gro: bool,
                sink: int, page: int, port_ok: Flag) -> bool:  # fmt: skip
        """Send packets to `key` (an IPv4 or IPv6 address) into `sink`, counting them on the
        placement page at address `page`, while `port_ok` is set."""
        self._flags.add(port_ok)
        return bool(self._lib.ipoibfs_flows_install(self._table, generation, key, len(key),
                                                      kind, limit, gro, sink, page,
                                                      port_ok.address))  # fmt: skip

    def clear(self) -> None:
        """Forget every destination."""
        self.generation += 1
        self._lib.ipoibfs_flows_forget(self._table, None)

    def forget(self, page: int) -> None:
        """Forget the destinations counted on `page`; once this returns, none is written."""
        self.generation += 1
        self._lib.ipoibfs_flows_forget(self._table, page)

    def counts(self) -> tuple[int, int]:
        """(packets, bytes) the loop sent, counted as tx_packets and tx_bytes count them."""
        out = (ctypes.c_uint64 * 2)()
        self._lib.ipoibfs_flows_counts(self._table, out)
        return out[0], out[1]

    def used(self) -> list[bytes]:
        """The destinations sent to since the last call."""
        n = self._lib.ipoibfs_flows_used(self._table, self._used, USED_MAX)
        raw = self._used.raw
        return [raw[i * _KEY + 1 : i * _KEY + 1 + raw[i * _KEY]] for i in range(n)]
