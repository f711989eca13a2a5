"""The emulated wire: one datagram socket per HCA port, addressed as `unix:PATH` or `udp:HOST:PORT`.

Unix datagram sockets carry data between hosts of one machine, UDP between machines. Data
never goes through the subnet manager. A UDP datagram holds less than the largest message
(an RC message of 65524 bytes, an LSO send of 64 KiB plus headers), so over UDP every
message is cut into segments, as an HCA cuts messages into packets, and put back together
at the receiver; a message that lost a segment is lost.
"""

from __future__ import annotations

import array
import errno
import itertools
import os
import random
import socket
import threading
from collections.abc import Callable, Sequence

import trio

from ..errors import UsageError, report_bug
from ..namespaces import CLONE_NEWNET, unshare
from ..wire import Reassembly, segments

SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
BUFFER_BYTES = 8 << 20
#: Receive queue of a Unix datagram socket, in datagrams (like a receive ring of WQEs).
UNIX_QUEUE = 4096
MAX_DATAGRAM = 1 << 17
MAX_FDS = 4
CMSG_CLOEXEC = socket.MSG_CMSG_CLOEXEC
NO_FDS: tuple[int, ...] = ()


def _unix_socket_with_deep_queue() -> socket.socket:
    """A Unix datagram socket whose queue holds UNIX_QUEUE datagrams, not the system's 10.

    net.unix.max_dgram_qlen is per network namespace and read when a socket is created, so
    the socket is made in a private namespace of a short-lived thread: nothing on the system
    changes, and path-bound Unix sockets are reachable from every namespace.
    """
    box: list = []

    def make() -> None:
        try:
            unshare(CLONE_NEWNET, "CLONE_NEWNET")
            with open("/proc/sys/net/unix/max_dgram_qlen", "w") as f:
                f.write(str(UNIX_QUEUE))
            box.append(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
        except OSError as e:
            box.append(e)

    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
    if isinstance(box[0], OSError):
        raise box[0]
    return box[0]


def _fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


def parse_address(address: str) -> tuple[int, str | tuple[str, int]]:
    """`unix:PATH` or `udp:HOST:PORT` -> (family, sockaddr)."""
    kind, _, rest = address.partition(":")
    if kind == "unix":
        return socket.AF_UNIX, rest
    if kind == "udp":
        host, _, port = rest.rpartition(":")
        return socket.AF_INET, (host, int(port))
    raise UsageError(f"bad data-plane address '{address}'")


class DataPlane:
    """A port's attachment to the wire: sends datagrams to other ports, receives its own.

    `send` may be called from several threads at once (the netdevs' reader threads and the
    trio thread): it keeps no per-send state, the peer cache only ever gains entries (one
    dict lookup on a hit; a miss fills it under a lock), and each UDP message takes its
    number under a lock, so that no two messages of this sender share one. `receive` runs
    in one trio task.
    """

    def __init__(self, address: str) -> None:
        family, sockaddr = parse_address(address)
        self._path: str | None = None
        if isinstance(sockaddr, str):
            self.sock = _unix_socket_with_deep_queue()
            self._path = sockaddr
            try:
                os.unlink(sockaddr)
            except FileNotFoundError:
                pass
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, BUFFER_BYTES)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, BUFFER_BYTES)
        self.sock.bind(sockaddr)
        if family == socket.AF_INET:
            host, port = self.sock.getsockname()
            address = f"udp:{host}:{port}"
        self.sock.setblocking(False)
        self.address = address
        #: Whether datagrams can carry file descriptors (hosts on one machine).
        self.passes_fds = family == socket.AF_UNIX
        self._peers: dict[str, str | tuple[str, int]] = {}
        self._lock = threading.Lock()
        # Numbered from a random start, so that a restarted sender's messages never meet
        # the partial ones of its previous life at a receiver.
        start = random.getrandbits(32)
        self._numbers = itertools.count(start) if family == socket.AF_INET else None

    def _peer(self, address: str) -> str | tuple[str, int]:
        with self._lock:
            peer = self._peers.get(address)
            if peer is None:
                peer = self._peers[address] = parse_address(address)[1]
            return peer

    def send(self, address: str, parts: list[bytes | memoryview], fds: Sequence[int] = ()) -> int:
        """One datagram, with fds if the plane passes them: 0 once it is on the wire, else the
        errno of its loss (the peer is gone, its queue is full, no route). Thread-safe."""
        peer = self._peers.get(address) or self._peer(address)
        ancillary = []
        if self._numbers is not None:
            with self._lock:
                number = next(self._numbers)
            datagrams = segments(number & 0xFFFFFFFF, parts)
        else:
            datagrams = [parts]
            if fds:
                ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        try:
            for datagram in datagrams:
                self.sock.sendmsg(datagram, ancillary, 0, peer)
        except OSError as e:  # full queue, peer gone, no route: the wire lost it
            return e.errno or errno.EIO
        return 0

    async def receive(self, handler: Callable[[memoryview, Sequence[int]], None]) -> None:
        """Call handler for every datagram, draining the socket each time it wakes.

        The fds a datagram carried are open only during the call: a handler that keeps one
        duplicates it. An Exception the handler raises is printed with its traceback and
        the next datagram goes on: nothing a handler does ends the receive loop."""
        buf = bytearray(MAX_DATAGRAM)
        view = memoryview(buf)
        recvmsg_into = self.sock.recvmsg_into
        ancillary_size = socket.CMSG_SPACE(MAX_FDS * 4)
        reassembly = Reassembly() if self._numbers is not None else None
        while True:
            await trio.lowlevel.wait_readable(self.sock)
            while True:
                try:
                    n, ancillary, _, sender = recvmsg_into([buf], ancillary_size, CMSG_CLOEXEC)
                except BlockingIOError:
                    break
                try:
                    if reassembly is not None:
                        message = reassembly.add(sender, view[:n])
                        if message is not None:
                            handler(memoryview(message), NO_FDS)
                    elif not ancillary:
                        handler(view[:n], NO_FDS)
                    else:
                        fds = _fds(ancillary)
                        try:
                            handler(view[:n], fds)
                        finally:
                            for fd in fds:
                                os.close(fd)
                except Exception:  # a handler's bug must not silence the port
                    report_bug("a datagram's handler failed")

    def close(self) -> None:
        """Idempotent."""
        self.sock.close()
        if self._path:
            try:
                os.unlink(self._path)
            except OSError:
                pass
