"""`ipoibfs fabric serve`: the subnet manager as a process that several host daemons join.

Hosts talk to it over a stream socket (a Unix path, or TCP HOST:PORT) in JSON lines: requests
carry an "id" and get a reply with the same id; the SM also pushes the forwarding tables and
P_Key tables it reprograms. Data never passes through here.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import signal
import socket
import stat
import sys
from typing import TextIO

import trio

from ..errors import KernelError, UsageError
from .device import HcaProfile, Port
from .partitions import default_partitions, load_partitions
from .sm import SubnetManager, format_guid2lid, parse_guid2lid

MAX_LINE = 1 << 20


def encode(msg: dict) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


async def read_lines(stream: trio.abc.ReceiveStream):
    """JSON objects, one per line."""
    buf = b""
    while True:
        data = await stream.receive_some(65536)
        if not data:
            return
        buf += data
        if len(buf) > MAX_LINE:
            raise ValueError("line too long")
        *lines, buf = buf.split(b"\n")
        for line in lines:
            if line.strip():
                yield json.loads(line)


def member_dict(member) -> dict:
    fields = ("mlid", "qkey", "mtu", "rate", "sl", "pkey")
    return {"mgid": member.mgid.hex(), **{f: getattr(member, f) for f in fields}}


#: What the SM may hold for one host that does not read (stopped, slow, dead): beyond it,
#: the host is dropped as if it had disconnected.
CONN_QUEUE_BYTES = 4 << 20
#: How long one write to a host may stall before the host is dropped.
CONN_SEND_DEADLINE = 5.0


class Connection:
    """One host's session. What the SM sends it (replies, pushes) goes through a bounded
    queue that the connection's own writer drains, so that a host that stops reading
    delays nobody else: it is dropped once its queue overflows or a write stalls."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._out, self._queue = trio.open_memory_channel[bytes](math.inf)
        self.queued = 0  # bytes in the queue
        self.scope = trio.CancelScope()  # cancelled to drop the connection
        self.dropped: str | None = None
        self.lids: list[int] = []
        self.host = "?"

    def send(self, msg: dict) -> None:
        """Queue `msg`; never waits."""
        if self.dropped is not None:
            return
        data = encode(msg)
        if self.queued + len(data) > CONN_QUEUE_BYTES:
            self.drop(f"{CONN_QUEUE_BYTES >> 20} MiB queued for it")
            return
        self.queued += len(data)
        self._out.send_nowait(data)

    def drop(self, why: str) -> None:
        if self.dropped is None:
            self.dropped = why
            self.scope.cancel()

    async def write(self) -> None:
        """The connection's writer: what is queued, in order, in batches."""
        try:
            async for data in self._queue:
                batch = [data]
                while True:
                    try:
                        batch.append(self._queue.receive_nowait())
                    except trio.WouldBlock:
                        break
                blob = b"".join(batch)
                with trio.move_on_after(CONN_SEND_DEADLINE) as stalled:
                    await self.stream.send_all(blob)
                if stalled.cancelled_caught:
                    self.drop(f"a write stalled for {CONN_SEND_DEADLINE:g} s")
                    return
                self.queued -= len(blob)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.drop("its connection broke")


def tcp_address(address: str) -> tuple[str, int] | None:
    """HOST:PORT for TCP, or None for a Unix socket path."""
    m = re.fullmatch(r"([^/]*):(\d{1,5})", address)
    return (m.group(1), int(m.group(2))) if m else None


def open_listener_socket(address: str) -> tuple[trio.socket.SocketType, object]:
    """The SM's socket: TCP HOST:PORT, or a Unix path (a stale socket file is replaced)."""
    tcp = tcp_address(address)
    if tcp:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        return sock, tcp
    if os.path.lexists(address):
        if not stat.S_ISSOCK(os.lstat(address).st_mode):
            raise UsageError(f"fabric address {address} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(address)
            raise UsageError(f"fabric address {address} is already in use")
        except ConnectionRefusedError:
            os.unlink(address)
        finally:
            probe.close()
    return trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM), address


def load_guid2lid(path: str) -> dict[int, int]:
    """The SM's saved LIDs (OpenSM's guid2lid); none yet if the file does not exist."""
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_LINE).decode(errors="replace")
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise UsageError(f"guid2lid file {path}: {e.strerror}") from None
    return parse_guid2lid(text, f"guid2lid file {path}")


def save_guid2lid(path: str, lids: dict[int, int]) -> None:
    """Replace the file atomically: written under a fresh name (O_EXCL, never through a
    symlink) with mode 0644 whatever the umask, then renamed over the old one."""
    head, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(head, f".{name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o644)
        os.write(fd, format_guid2lid(lids).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


class FabricService:
    def __init__(
        self,
        address: str,
        partitions_file: str | None,
        log: TextIO = sys.stderr,
        *,
        guid2lid_file: str | None = None,
    ):
        self.address = address
        self.partitions_file = partitions_file
        self.guid2lid_file = guid2lid_file
        self.log = log
        parts = load_partitions(partitions_file) if partitions_file else default_partitions()
        lids = load_guid2lid(guid2lid_file) if guid2lid_file else {}
        self.sm = SubnetManager(parts, lids)
        self.conns: set[Connection] = set()

    def _say(self, text: str) -> None:
        print(f"ipoibfs-sm: {text}", file=self.log, flush=True)

    def _save_lids(self) -> None:
        if self.guid2lid_file:
            try:
                save_guid2lid(self.guid2lid_file, self.sm.guid2lid)
            except OSError as e:
                self._say(f"cannot save the LIDs to {self.guid2lid_file}: {e.strerror or e}")

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        sock, target = open_listener_socket(self.address)
        try:
            await sock.bind(target)
        except OSError as e:
            raise UsageError(f"fabric address {self.address}: {e.strerror}") from None
        sock.listen(64)
        listener = trio.SocketListener(sock)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reload_on_sighup)
                nursery.start_soon(trio.serve_listeners, self._handle, [listener])
                self._say(f"subnet manager up at {self.address} (LID 1), "
                          f"{len(self.sm.partitions)} partition(s)")  # fmt: skip
                task_status.started()
        finally:
            if sock.family == socket.AF_UNIX:
                try:
                    os.unlink(self.address)
                except OSError:
                    pass

    # ------------------------------------------------------------- partitions

    async def _reload_on_sighup(self) -> None:
        with trio.open_signal_receiver(signal.SIGHUP) as signals:
            async for _ in signals:
                self.reload()

    def reload(self) -> None:
        """Re-read the partitions file; a bad file changes nothing."""
        if not self.partitions_file:
            return
        try:
            parts = load_partitions(self.partitions_file)
        except UsageError as e:
            self._say(f"reload refused: {e}")
            return
        ports, mgids = self.sm.set_partitions(parts)
        self._say(f"partitions reloaded from {self.partitions_file}")
        for mgid in mgids:
            self._push({"op": "mroute", "mgid": mgid.hex(), "lids": self.sm.mroute(mgid)})
        for port in ports:
            self._push({"op": "pkeys", "lid": port.lid, "pkeys": port.pkeys})

    # ------------------------------------------------------------- connections

    def _push(self, msg: dict) -> None:
        """To every host; never waits (Connection.send)."""
        for conn in list(self.conns):
            conn.send(msg)

    async def _handle(self, stream: trio.abc.Stream) -> None:
        conn = Connection(stream)
        self.conns.add(conn)
        try:
            with conn.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(conn.write)
                    try:
                        await self._serve(conn)
                    finally:
                        nursery.cancel_scope.cancel()
        finally:
            self._forget(conn)
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _serve(self, conn: Connection) -> None:
        """Answer the host's requests in order until it goes away."""
        try:
            async for msg in read_lines(conn.stream):
                reply = self._dispatch(conn, msg)
                reply["id"] = msg.get("id")
                conn.send(reply)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception as e:  # a malformed request ends that connection, not the SM
            self._say(f"dropping {conn.host}: bad request ({e!r})")

    def _forget(self, conn: Connection) -> None:
        """A host went away, or was dropped: its ports leave the subnet."""
        self.conns.discard(conn)
        if conn.dropped is not None and conn.lids:
            self._say(f"dropping {conn.host}: {conn.dropped}")
        changed: set[bytes] = set()
        for lid in conn.lids:
            changed.update(self.sm.detach(lid))
        if conn.lids:
            self._say(f"{conn.host} left (LIDs {', '.join(map(str, conn.lids))})")
            self._push({"op": "routes", "routes": self.sm.routes})
        conn.lids = []
        for mgid in changed:
            self._push({"op": "mroute", "mgid": mgid.hex(), "lids": self.sm.mroute(mgid)})

    def _dispatch(self, conn: Connection, msg: dict) -> dict:
        op = msg.get("op")
        try:
            if op == "hello":
                return self._hello(conn, msg)
            if op == "join":
                mgid = bytes.fromhex(msg["mgid"])
                before = self.sm.mroute(mgid)
                member = self.sm.join(msg["lid"], msg["qpn"], mgid, msg["pkey"],
                                      send_only=msg["send_only"], create=msg["create"])  # fmt: skip
                after = self.sm.mroute(mgid)
                if after != before:
                    self._push({"op": "mroute", "mgid": mgid.hex(), "lids": after})
                return {"member": member_dict(member)}
            if op == "leave":
                mgid = bytes.fromhex(msg["mgid"])
                if self.sm.leave(msg["lid"], msg["qpn"], mgid):
                    self._push({"op": "mroute", "mgid": mgid.hex(),
                                      "lids": self.sm.mroute(mgid)})  # fmt: skip
                return {}
            if op == "path":
                rec = self.sm.path(bytes.fromhex(msg["dgid"]), msg["pkey"])
                return {"path": {"dlid": rec.dlid, "sl": rec.sl, "rate_mbps": rec.rate_mbps,
                                 "mtu": rec.mtu}}  # fmt: skip
        except KernelError as e:
            return {"errno": e.errno, "error": str(e)}
        return {"errno": errno.EOPNOTSUPP, "error": f"unknown op {op!r}"}

    def _hello(self, conn: Connection, msg: dict) -> dict:
        """A host registers its ports: each gets its LID (the one it had, if guid2lid or
        the port's own `lid` hint says so), the SM's LID and its P_Key table."""
        if conn.lids:
            return {"errno": errno.EISCONN, "error": "this connection has registered already"}
        conn.host = str(msg["host"])
        attached = {p.guid for p in self.sm.ports.values()}
        for spec in msg["ports"]:
            if spec["guid"] in attached:
                return {
                    "errno": errno.EEXIST,
                    "error": f"port GUID {spec['guid']:#018x} is "
                    "already on the fabric (two hosts with one name?)",
                }
        known = len(self.sm.guid2lid)
        ports = []
        try:
            for spec in msg["ports"]:
                profile = HcaProfile(speed=spec["speed"], width=spec["width"],
                                     max_mtu=spec["max_mtu"])  # fmt: skip
                port = Port(num=spec["num"], guid=spec["guid"], profile=profile)
                hint = spec.get("lid")
                self.sm.attach(port, spec["address"], hint if isinstance(hint, int) else None)
                conn.lids.append(port.lid)
                ports.append({"lid": port.lid, "sm_lid": port.sm_lid, "pkeys": port.pkeys})
        except KernelError:
            for lid in conn.lids:
                self.sm.detach(lid)
            conn.lids = []
            raise
        finally:
            if len(self.sm.guid2lid) != known:
                self._save_lids()
        self._say(f"{conn.host} joined (LIDs {', '.join(map(str, conn.lids))})")
        self._push({"op": "routes", "routes": self.sm.routes})
        mroutes = {m.hex(): self.sm.mroute(m) for m in self.sm.groups}
        return {"ports": ports, "routes": self.sm.routes, "mroutes": mroutes}
