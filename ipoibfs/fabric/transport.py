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
import select
import socket
import threading
from collections import deque
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
#: What sees every datagram first, on the receive thread: (datagram, sender's address,
#: whether it may be taken there) -> whether it was consumed there (DataPlane.receive).
Screen = Callable[[memoryview, object, bool], bool]
#: Datagrams the receive thread handles per wake before it lets `quiesce` in.
RX_BATCH = 64
#: Datagrams waiting for the trio thread at most; more are dropped (`overruns`).
RX_BACKLOG = 4096


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


def _close(fds: Sequence[int]) -> None:
    for fd in fds:
        os.close(fd)


def _guarded(fn: Callable[[], None], what: str) -> None:
    try:
        fn()
    except Exception:
        report_bug(what)


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
    a thread of its own, which owns the socket's reads, the reassembly and `auth_failures`
    and `overruns`.
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
        #: The receive thread (`receive`) and what it hands the trio thread: datagrams
        #: waiting, in order, and whether a drain of them is scheduled or running.
        self._thread: threading.Thread | None = None
        self._stop_r = self._stop_w = -1
        self._handler: PlaneHandler = lambda data, fds, sender: None
        self._token: trio.lowlevel.TrioToken | None = None
        self._waiting: deque[tuple[bytes, Sequence[int], object]] = deque()
        self._scheduled = False
        #: Held by the receive thread while it handles a wake's datagrams (quiesce).
        self._rx_lock = threading.Lock()
        #: Datagrams dropped because RX_BACKLOG of them already waited for the trio thread.
        self.overruns = 0
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

    async def receive(self, handler: PlaneHandler, screen: Screen | None = None,
                      batch_end: Callable[[], None] | None = None) -> None:  # fmt: skip
        """Receive forever, on a thread of the plane's own (the port's completion handler:
        no trio wake-up for what the thread takes), until cancelled.

        Every datagram goes first to screen(data, sender, may_take) on that thread (on a
        keyed UDP wire, once its MAC verified); True means it was consumed there (taken,
        or dropped). The rest, copied, go to handler(data, fds, sender) on the trio
        thread, in order. `may_take` is False for a datagram with fds and while anything
        waits for the trio thread or is being handled there, so that nothing the thread
        takes overtakes what went to trio. batch_end() runs on the thread after each
        wake's datagrams, and before one goes to trio (what the thread holds goes first).

        The fds a datagram carried are open only during the handler's call: a handler that
        keeps one duplicates it. An Exception a callback raises is printed with its
        traceback and the next datagram goes on. What one trio drain handles is one
        batch: `at_batch_end` callbacks run after it."""
        self._handler, self._token = handler, trio.lowlevel.current_trio_token()
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._serve, args=(screen, batch_end),
                                        daemon=True, name="ipoibfs-rx")  # fmt: skip
        self._thread.start()
        try:
            await trio.sleep_forever()
        finally:
            self._stop()

    def _stop(self) -> None:
        """Stop the receive thread (before the socket closes) and drop what waits."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        os.write(self._stop_w, b"x")
        thread.join(timeout=5)
        os.close(self._stop_r)
        os.close(self._stop_w)
        while self._waiting:
            for fd in self._waiting.popleft()[1]:
                os.close(fd)

    def quiesce(self) -> None:
        """Wait until the receive thread is between batches (on the trio thread): what it
        looked up before is no longer in use (an interface going away, its TUN closing)."""
        with self._rx_lock:
            pass

    def _serve(self, screen: Screen | None, batch_end: Callable[[], None] | None) -> None:
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        buf = bytearray(MAX_DATAGRAM)
        view = memoryview(buf)
        recvmsg_into = self.sock.recvmsg_into
        ancillary_size = socket.CMSG_SPACE(MAX_FDS * 4)
        reassembly = Reassembly() if self._numbers is not None else None
        stop = self._stop_r
        try:
            while True:
                for fd, events in poller.poll():
                    if fd == stop or events & (select.POLLERR | select.POLLNVAL):
                        return
                with self._rx_lock:
                    for _ in range(RX_BATCH):
                        try:
                            n, ancillary, _, sender = recvmsg_into([buf], ancillary_size,
                                                                   CMSG_CLOEXEC)  # fmt: skip
                        except BlockingIOError:
                            break
                        fds = _fds(ancillary) if ancillary else NO_FDS
                        data = view[:n] if reassembly is None else self._unwrap(
                            view, n, sender, reassembly)  # fmt: skip
                        if data is not None:
                            self._screen(screen, batch_end, data, fds, sender)
                        elif fds:
                            _close(fds)
                    if batch_end is not None:
                        _guarded(batch_end, "a receive batch's end failed")
        except (OSError, trio.RunFinishedError):
            return  # the plane or the daemon is going away

    def _unwrap(self, view: memoryview, n: int, sender: object,
                reassembly: Reassembly) -> memoryview | None:  # fmt: skip
        """A UDP datagram's message: its MAC verified on a keyed wire, its segments put
        back together; None for a forgery or a message still partial."""
        mac = self._mac
        if mac is not None:
            n -= MAC_SIZE
            h = mac.copy()
            h.update(view[: max(n, 0)])
            if n < 0 or not hmac.compare_digest(h.digest()[:MAC_SIZE], view[n : n + MAC_SIZE]):
                self.auth_failures += 1
                return None
        message = reassembly.add(sender, view[:n])
        return memoryview(message) if message is not None else None

    def _screen(self, screen: Screen | None, batch_end: Callable[[], None] | None,
                data: memoryview, fds: Sequence[int], sender: object) -> None:  # fmt: skip
        """One datagram on the receive thread: consumed there, or handed to trio."""
        if screen is not None:
            try:
                if screen(data, sender, not fds and not self._scheduled):
                    _close(fds)
                    return
            except Exception:  # a bug must not silence the port: the slow way
                report_bug("a datagram's screen failed; it goes to the trio thread")
        if batch_end is not None:
            _guarded(batch_end, "a receive batch's end failed")
        waiting = self._waiting
        if len(waiting) >= RX_BACKLOG:  # the trio thread is behind: a full receive queue
            self.overruns += 1
            _close(fds)
            return
        waiting.append((bytes(data), fds, sender))
        if not self._scheduled:
            self._scheduled = True
            assert self._token is not None
            self._token.run_sync_soon(self._drain)

    def _drain(self) -> None:
        """On the trio thread: the handler for what waits, as one batch. `_scheduled` stays
        set until it is all handled (the receive thread takes nothing meanwhile), and is
        looked at again once cleared, so that nothing the thread adds is stranded."""
        waiting, handler = self._waiting, self._handler
        self._in_batch = True
        for _ in range(len(waiting)):
            data, fds, sender = waiting.popleft()
            try:
                handler(memoryview(data), fds, sender)
            except Exception:  # a handler's bug must not silence the port
                report_bug("a datagram's handler failed")
            finally:
                _close(fds)
        self._end_batch()
        assert self._token is not None
        if waiting:  # more came meanwhile: it stays scheduled
            self._token.run_sync_soon(self._drain)
            return
        self._scheduled = False
        if waiting and not self._scheduled:  # came between the look and the clear
            self._scheduled = True
            self._token.run_sync_soon(self._drain)

    def close(self) -> None:
        """Idempotent."""
        self._stop()
        self.sock.close()
        if self._path:
            try:
                os.unlink(self._path)
            except OSError:
                pass
