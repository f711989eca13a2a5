"""The emulated wire: one datagram socket per HCA port, addressed as `unix:PATH` or `udp:HOST:PORT`.

Unix datagram sockets carry data between hosts of one machine, UDP between machines. Data
never goes through the subnet manager. A UDP datagram holds less than the largest message
(an RC message of 65524 bytes, an LSO send of 64 KiB plus headers), so over UDP every
message is cut into segments, as an HCA cuts messages into packets, and put back together
at the receiver; a message that lost a segment is lost.

Who may send to a port: a Unix socket file has mode 0600 (root's only; 0660 with the
fabric's group), whatever the umask. A UDP port has no such guard, so on a fabric with a key
every UDP datagram ends with a MAC that the receiver verifies before anything else; a
datagram that fails is dropped and counted (`auth_failures`). The MAC is HMAC-SHA256, cut to
MAC_SIZE bytes, under a key derived from the fabric's: with the CPU's SHA extensions it
costs about 2.5 us for a small datagram and 41 us for 64 KiB, a quarter of keyed BLAKE2s.
It does not stop a replay of a captured datagram.
"""

from __future__ import annotations

import array
import errno
import hashlib
import hmac
import itertools
import os
import random
import socket
import threading
from collections.abc import Callable, Sequence

import trio

from ..errors import UsageError, report_bug
from ..namespaces import CLONE_NEWNET, unshare
from ..state import PRIVATE_MODE, bind_unix
from ..wire import SEGMENT_DATA, Reassembly, segments

SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
BUFFER_BYTES = 8 << 20
#: Receive queue of a Unix datagram socket, in datagrams (like a receive ring of WQEs).
UNIX_QUEUE = 4096
MAX_DATAGRAM = 1 << 17
MAX_FDS = 4
CMSG_CLOEXEC = socket.MSG_CMSG_CLOEXEC
NO_FDS: tuple[int, ...] = ()
#: The authenticator at the end of every UDP datagram on a keyed fabric, in bytes.
MAC_SIZE = 16
#: What a port's datagrams are handed to: the datagram, the fds it carried (open only
#: during the call) and the sender's socket address.
PlaneHandler = Callable[[memoryview, Sequence[int], object], None]


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

    def __init__(self, address: str, *, key: bytes | None = None) -> None:
        family, sockaddr = parse_address(address)
        self._path: str | None = None
        if isinstance(sockaddr, str):
            self.sock = _unix_socket_with_deep_queue()
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, BUFFER_BYTES)
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, BUFFER_BYTES)
            if isinstance(sockaddr, str):
                bind_unix(self.sock, sockaddr, PRIVATE_MODE)  # root's only, whatever the umask
                self._path = sockaddr
            else:
                self.sock.bind(sockaddr)
        except BaseException:
            self.sock.close()
            raise
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
        self._mac: hmac.HMAC | None = None
        #: Datagrams dropped because their MAC did not verify (or they had none).
        self.auth_failures = 0
        #: What runs when the datagrams of the current wake of `receive` are all handled
        #: (at_batch_end), and whether such a batch is being handled now.
        self._batch_end: list[Callable[[], None]] = []
        self._in_batch = False
        if key is not None:
            self.set_key(key)

    def set_key(self, key: bytes) -> None:
        """Authenticate UDP datagrams with `key` (32 bytes at most) from now on."""
        if self._numbers is not None:
            self._mac = hmac.new(key, digestmod=hashlib.sha256)

    def share_with_group(self, gid: int) -> None:
        """Let the fabric's group send here too (a Unix socket file: 0660, that group)."""
        if self._path is not None:
            os.chown(self._path, -1, gid, follow_symlinks=False)
            os.chmod(self._path, 0o660)

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
            mac = self._mac
            size = SEGMENT_DATA if mac is None else SEGMENT_DATA - MAC_SIZE
            datagrams = segments(number & 0xFFFFFFFF, parts, size)
            if mac is not None:
                for datagram in datagrams:
                    h = mac.copy()
                    for part in datagram:
                        h.update(part)
                    datagram.append(h.digest()[:MAC_SIZE])
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

    def at_batch_end(self, fn: Callable[[], None]) -> None:
        """Call fn once the datagrams this wake of `receive` drained are all handled (the
        end of a NAPI poll), or now if no batch is being handled (a handler called by
        other means). On the trio thread; an Exception fn raises is printed and the next
        one goes on."""
        if self._in_batch:
            self._batch_end.append(fn)
        else:
            fn()

    def _end_batch(self) -> None:
        self._in_batch = False
        pending, self._batch_end = self._batch_end, []
        for fn in pending:
            try:
                fn()
            except Exception:
                report_bug("a receive batch's end failed")

    async def receive(self, handler: PlaneHandler) -> None:
        """Call handler(data, fds, sender) for every datagram, draining the socket each time
        it wakes; on a keyed UDP wire, only for those whose MAC verifies.

        The fds a datagram carried are open only during the call: a handler that keeps one
        duplicates it. An Exception the handler raises is printed with its traceback and
        the next datagram goes on: nothing a handler does ends the receive loop. What
        one wake drained is one batch: `at_batch_end` callbacks run after it."""
        buf = bytearray(MAX_DATAGRAM)
        view = memoryview(buf)
        recvmsg_into = self.sock.recvmsg_into
        ancillary_size = socket.CMSG_SPACE(MAX_FDS * 4)
        reassembly = Reassembly() if self._numbers is not None else None
        while True:
            await trio.lowlevel.wait_readable(self.sock)
            self._in_batch = True
            while True:
                try:
                    n, ancillary, _, sender = recvmsg_into([buf], ancillary_size, CMSG_CLOEXEC)
                except BlockingIOError:
                    self._end_batch()
                    break
                try:
                    if reassembly is not None:
                        mac = self._mac
                        if mac is not None:
                            n -= MAC_SIZE
                            h = mac.copy()
                            h.update(view[: max(n, 0)])
                            tag = view[n : n + MAC_SIZE]
                            if n < 0 or not hmac.compare_digest(h.digest()[:MAC_SIZE], tag):
                                self.auth_failures += 1
                                continue
                        message = reassembly.add(sender, view[:n])
                        if message is not None:
                            handler(memoryview(message), NO_FDS, sender)
                    elif not ancillary:
                        handler(view[:n], NO_FDS, sender)
                    else:
                        fds = _fds(ancillary)
                        try:
                            handler(view[:n], fds, sender)
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
