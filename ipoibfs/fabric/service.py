"""`ipoibfs fabric serve`: the subnet manager as a process that several host daemons join.

Hosts talk to it over a stream socket (a Unix path, or TCP HOST:PORT) in JSON lines: requests
carry an "id" and get a reply with the same id; the SM also pushes the forwarding tables and
P_Key tables it reprograms. Data never passes through here.

Who may talk to it, in the spirit of IBA's M_Key: on a Unix socket, root (and an optional
group), checked with SO_PEERCRED when the connection is accepted, on a socket file of mode
0600 (0660 with the group) whatever the umask. Over TCP, a host proves that it holds the
fabric's key: the SM opens with a challenge (a nonce), the host's hello carries an HMAC of
both nonces, and the SM's reply proves the key back; the key itself never crosses the
wire. The data the hosts then exchange over UDP carries a MAC under a key derived from it
(transport.DataPlane). A port's LID belongs to the connection that registered it: nobody
else can join, leave or query paths in its name.
"""

from __future__ import annotations

import errno
import grp
import hashlib
import hmac
import json
import math
import os
import re
import secrets
import signal
import socket
import stat
import struct
import sys
from pathlib import Path
from typing import TextIO

import trio

from ..errors import KernelError, UsageError
from ..state import PRIVATE_MODE, RUN_DIR, read_private_file, unix_socket_path, write_file
from ..wire.mad import sa, smp
from . import sm_agents, subnet_admin
from .device import HcaProfile, Port
from .partitions import default_partitions, load_partitions
from .sm import Change, NodeData, SubnetManager, format_guid2lid, parse_guid2lid
from .switches import PeerCounters
from .topology import SM_LID, Topology, parse_ibnetdiscover

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


# ------------------------------------------------------------------ the fabric key

#: The shortest key accepted, in bytes (a generated one has 32 random bytes, as hex).
MIN_KEY = 16


def default_key_file(address: str) -> str:
    """Where `fabric serve HOST:PORT` keeps its key, and where a host on the same machine
    looks for it, unless --key-file names another."""
    host, port = tcp_address(address) or ("", 0)
    return f"{RUN_DIR}/fabric-{host or 'any'}-{port}.key"


def read_key(path: str) -> bytes:
    """A fabric key file: mode 0600, owned by root (state.read_private_file); its text
    without surrounding whitespace is the key."""
    key = read_private_file(path).strip()
    if len(key) < MIN_KEY:
        raise UsageError(f"key file {path}: shorter than {MIN_KEY} bytes")
    return key


def create_or_read_key(path: str) -> tuple[bytes, bool]:
    """The key in `path`, made (32 random bytes as hex, mode 0600, never through a symlink)
    if there is none; and whether it was made now."""
    try:
        return read_key(path), False
    except UsageError:
        if os.path.lexists(path):
            raise
    try:
        write_file(path, secrets.token_hex(32) + "\n", PRIVATE_MODE)
    except OSError as e:
        raise UsageError(f"cannot make the key file {path}: {e.strerror or e}") from None
    return read_key(path), True


def hello_proof(key: bytes, sm_nonce: bytes, host_nonce: bytes) -> str:
    """What a host's hello carries: HMAC-SHA256 of both nonces."""
    return hmac.new(key, b"ipoibfs hello\0" + sm_nonce + host_nonce, hashlib.sha256).hexdigest()


def sm_proof(key: bytes, sm_nonce: bytes, host_nonce: bytes) -> str:
    """What the SM's reply carries back, so that a host knows it is the fabric's SM."""
    return hmac.new(key, b"ipoibfs sm\0" + host_nonce + sm_nonce, hashlib.sha256).hexdigest()


def data_key(key: bytes) -> bytes:
    """The key of the data messages' MAC (transport.DataPlane), derived from the fabric's."""
    return hmac.new(key, b"ipoibfs data", hashlib.sha256).digest()


def peer_credentials(sock: socket.socket | trio.socket.SocketType) -> tuple[int, int, int]:
    """(pid, uid, gid) of a Unix socket's peer, as the kernel recorded them at connect."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return pid, uid, gid


SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)


def peer_groups(sock: socket.socket | trio.socket.SocketType) -> set[int]:
    """The supplementary groups of a Unix socket's peer (SO_PEERGROUPS: the first 256,
    which is as many as Python's getsockopt can take)."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 1024)
    except OSError:
        return set()
    return set(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))


#: What the SM may hold for one host that does not read (stopped, slow, dead): beyond it,
#: the host is dropped as if it had disconnected.
CONN_QUEUE_BYTES = 4 << 20
#: How long one write to a host may stall before the host is dropped.
CONN_SEND_DEADLINE = 5.0
#: How long a TCP connection may take to prove the key before it is dropped.
HELLO_DEADLINE = 10.0


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
        self.finishing = False  # ends once what is queued is written (finish)
        self.lids: list[int] = []
        self.host = "?"
        self.peer = "?"  # who connected: a uid, or an address
        self.trusted = False  # may make requests (credentials checked, key proved)
        self.nonce = b""  # the challenge sent (TCP)

    def send(self, msg: dict) -> None:
        """Queue `msg`; never waits."""
        if self.dropped is not None:
            return
        self.send_encoded(encode(msg))

    def send_encoded(self, data: bytes) -> None:
        """`send`, of a message already encoded (a push, encoded once for every host)."""
        if self.dropped is not None:
            return
        if self.queued + len(data) > CONN_QUEUE_BYTES:
            self.drop(f"{CONN_QUEUE_BYTES >> 20} MiB queued for it")
            return
        self.queued += len(data)
        self._out.send_nowait(data)

    def drop(self, why: str) -> None:
        if self.dropped is None:
            self.dropped = why
            self.scope.cancel()

    def finish(self, why: str) -> None:
        """End the connection once what is queued (a refusal) has been written."""
        if self.dropped is None:
            self.dropped = why
            self.finishing = True
            self._out.send_nowait(b"")

    async def write(self) -> None:
        """The connection's writer: what is queued, in order, in batches."""
        try:
            async for data in self._queue:
                batch = [data]
                while data:
                    try:
                        data = self._queue.receive_nowait()
                    except trio.WouldBlock:
                        break
                    batch.append(data)
                blob = b"".join(batch)
                with trio.move_on_after(CONN_SEND_DEADLINE) as stalled:
                    await self.stream.send_all(blob)
                if stalled.cancelled_caught:
                    self.drop(f"a write stalled for {CONN_SEND_DEADLINE:g} s")
                    return
                self.queued -= len(blob)
                if not batch[-1]:  # finish(): all written, end it
                    self.scope.cancel()
                    return
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


def _node_data(spec: dict) -> NodeData | None:
    """The NodeInfo (40 bytes) and NodeDescription (64) a host's hello says, if well formed."""
    try:
        info, desc = bytes.fromhex(spec["node_info"]), bytes.fromhex(spec["node_desc"])
    except (KeyError, TypeError, ValueError):
        return None
    if len(info) != smp.NodeInfo.SIZE or len(desc) != 64:
        return None
    return NodeData(info, desc)


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


def load_topology(path: str) -> Topology:
    """An ibnetdiscover topology file: the fabric's switches and cables."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as e:
        raise UsageError(f"topology file {path}: {e.strerror}") from None
    return parse_ibnetdiscover(text, f"topology file {path}")


def save_guid2lid(path: str, lids: dict[int, int]) -> None:
    """Replace the file atomically, mode 0644 whatever the umask, never through a symlink
    (state.write_file)."""
    write_file(path, format_guid2lid(lids), 0o644)


class FabricService:
    """The subnet manager's service. `key` (required for a TCP address) is the fabric's
    key that hosts must prove; `group` (Unix addresses) a group allowed besides root."""

    def __init__(
        self,
        address: str,
        partitions_file: str | None,
        log: TextIO = sys.stderr,
        *,
        guid2lid_file: str | None = None,
        topology_file: str | None = None,
        key: bytes | None = None,
        key_file: str | None = None,
        group: str | None = None,
    ):
        self.address = address
        self.tcp = tcp_address(address) is not None
        if self.tcp and key is None:
            raise UsageError("a TCP fabric needs a key (--key-file)")
        if group is not None and self.tcp:
            raise UsageError("--group is for a Unix-socket fabric; a TCP one checks its key")
        self.key = key
        self.key_file = key_file  # where the key is, for the log
        self.group = group
        self.gid: int | None = None
        if group is not None:
            try:
                self.gid = grp.getgrnam(group).gr_gid
            except KeyError:
                raise UsageError(f"--group {group}: no such group") from None
        self.partitions_file = partitions_file
        self.guid2lid_file = guid2lid_file
        self.log = log
        parts = load_partitions(partitions_file) if partitions_file else default_partitions()
        lids = load_guid2lid(guid2lid_file) if guid2lid_file else {}
        topo = load_topology(topology_file) if topology_file else None
        if topo is not None:  # the file's hosts get the LIDs it gives them
            for ca in topo.cas:
                for n, lid in enumerate(ca.lids, 1):
                    lids.setdefault(ca.guid + n, lid)
        self.sm = SubnetManager(parts, lids, topo)
        self.conns: set[Connection] = set()
        self.sockname: object = None

    def _say(self, text: str) -> None:
        print(f"ipoibfs-sm: {text}", file=self.log, flush=True)

    def _save_lids(self) -> None:
        if self.guid2lid_file:
            try:
                save_guid2lid(self.guid2lid_file, self.sm.guid2lid)
            except (OSError, UsageError) as e:
                why = getattr(e, "strerror", None) or e
                self._say(f"cannot save the LIDs to {self.guid2lid_file}: {why}")

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        sock, target = open_listener_socket(self.address)
        try:
            if isinstance(target, str):  # the socket file: 0600 (0660 with a group)
                mode = 0o660 if self.gid is not None else 0o600
                with unix_socket_path(sock, target, mode, self.gid) as path:
                    await sock.bind(path)
            else:
                await sock.bind(target)
        except OSError as e:
            sock.close()
            raise UsageError(f"fabric address {self.address}: {e.strerror}") from None
        except BaseException:
            sock.close()
            raise
        sock.listen(64)
        self.sockname = sock.getsockname()  # where it listens (a port 0 made real)
        listener = trio.SocketListener(sock)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reload_on_sighup)
                nursery.start_soon(trio.serve_listeners, self._handle, [listener])
                who = (
                    f"hosts prove the key in {self.key_file or 'its key file'}"
                    if self.tcp
                    else "root" + (f" and group {self.group}" if self.group else "") + " only"
                )
                self._say(f"subnet manager up at {self.address} (LID 1), "
                          f"{len(self.sm.partitions)} partition(s); {who}")  # fmt: skip
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

    def _routes(self) -> dict:
        """The unicast forwarding table, and each LID's P_Key table: a receiving port checks
        a datagram's source and P_Key against them (FabricPort)."""
        return {"routes": self.sm.routes,
                "pkeys": {lid: port.pkeys for lid, port in self.sm.ports.items()}}  # fmt: skip

    # ------------------------------------------------------------- connections

    def _push(self, msg: dict) -> None:
        """To every host that proved who it is (the routes name every host's data address);
        never waits (Connection.send). Encoded once: a lab of n hosts pushes to n."""
        data = encode(msg)
        for conn in list(self.conns):
            if conn.trusted:
                conn.send_encoded(data)

    def _trap(self, trap: int, lid: int, gid: bytes) -> None:
        """The SM's trap 64 or 65 about a port: a Report to each subscriber that takes it
        (SubnAdmSet(InformInfo)), from the SM's LID, over the subscriber's own channel."""
        for subscriber, mad in subnet_admin.reports(self.sm, trap, lid, gid):
            self._send_to(subscriber, {"op": "report", "lid": subscriber, "mad": mad.hex()})

    def _send_to(self, lid: int, msg: dict) -> None:
        """To the host whose port has this LID (never waits: Connection.send)."""
        for conn in self.conns:
            if conn.trusted and lid in conn.lids:
                conn.send(msg)

    def _carry_out(self, change: Change) -> None:
        """What a MAD changed: a host's link (a switch port's Set), which that host's port
        does (its daemon owns the port and the driver that reacts, as for `lab port`); a
        group's members (an SA join or leave), whose forwarding entry every host gets."""
        if change.states:
            self._send_to(change.lid, {"op": "link", "lid": change.lid,
                                       "states": list(change.states)})  # fmt: skip
        if change.mgid is not None:
            self._push({"op": "mroute", "mgid": change.mgid.hex(),
                        "lids": self.sm.mroute(change.mgid)})  # fmt: skip

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = Connection(stream)
        self.conns.add(conn)
        try:
            with conn.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(conn.write)
                    nursery.start_soon(self._hello_deadline, conn)
                    try:
                        if self._admit(conn, stream.socket):
                            await self._serve(conn)
                        if conn.finishing:
                            await trio.sleep_forever()  # until the refusal is written
                    finally:
                        nursery.cancel_scope.cancel()
        finally:
            self._forget(conn)
            with trio.CancelScope(shield=True):
                await stream.aclose()

    @staticmethod
    async def _hello_deadline(conn: Connection) -> None:
        """A connection that has not proved who it is in time goes (no stranger holds one)."""
        await trio.sleep(HELLO_DEADLINE)
        if not conn.trusted:
            conn.drop(f"no hello within {HELLO_DEADLINE:g} s")

    def _admit(self, conn: Connection, sock: trio.socket.SocketType) -> bool:
        """Who is calling. A Unix peer must be root or in the group (SO_PEERCRED); a TCP
        peer is challenged, and trusted once its hello proves the key."""
        if not self.tcp:
            pid, uid, gid = peer_credentials(sock)
            conn.peer = f"uid {uid} (pid {pid})"
            member = self.gid is not None and (gid == self.gid or self.gid in peer_groups(sock))
            allowed = uid == 0 or member
            if not allowed:
                who = "root" + (f" and group {self.group}" if self.group else "")
                self._say(f"refused {conn.peer}: only {who} may use this fabric")
                conn.send({"id": None, "errno": errno.EACCES,
                           "error": f"uid {uid} may not use this fabric (only {who})"})  # fmt: skip
                conn.finish("not allowed")
                return False
            conn.trusted = True
            return True
        try:
            host, port = sock.getpeername()[:2]
            conn.peer = f"{host}:{port}"
        except OSError:
            pass
        conn.nonce = secrets.token_bytes(16)
        conn.send({"op": "challenge", "nonce": conn.nonce.hex()})
        return True

    async def _serve(self, conn: Connection) -> None:
        """Answer the host's requests in order until it goes away."""
        try:
            async for msg in read_lines(conn.stream):
                if not conn.trusted and msg.get("op") != "hello":
                    conn.send({"id": msg.get("id"), "errno": errno.EACCES,
                               "error": "prove the fabric key first (hello)"})  # fmt: skip
                    conn.finish("no key")
                    return
                reply = self._dispatch(conn, msg)
                reply["id"] = msg.get("id")
                conn.send(reply)
                if not conn.trusted:  # a hello that did not prove the key
                    self._say(f"refused {conn.peer}: {reply.get('error')}")
                    conn.finish("no key")
                    return
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
            port = self.sm.ports.get(lid)
            changed.update(self.sm.detach(lid))
            if port is not None:
                self._trap(sa.TRAP_GID_OUT_OF_SERVICE, lid, port.gid)
        if conn.lids:
            self._say(f"{conn.host} left (LIDs {', '.join(map(str, conn.lids))})")
            # what changed only: a whole table to every host would be O(n^2) per host
            self._push({"op": "unroute", "lids": conn.lids})
        conn.lids = []
        for mgid in changed:
            self._push({"op": "mroute", "mgid": mgid.hex(), "lids": self.sm.mroute(mgid)})

    def _dispatch(self, conn: Connection, msg: dict) -> dict:
        op = msg.get("op")
        try:
            if op == "hello":
                return self._hello(conn, msg)
            if op in ("join", "leave", "mad", "port_state") or (op == "path" and "lid" in msg):
                lid = msg["lid"]
                if lid not in conn.lids:
                    raise KernelError(errno.EPERM, f"LID {lid!r} is not this host's")
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
            if op == "port_state":
                port = self.sm.ports.get(msg["lid"])
                state, phys = msg["state"], msg["phys_state"]
                if port is None or not (isinstance(state, int) and isinstance(phys, int)):
                    raise KernelError(errno.EINVAL, "no such port, or a state that is not one")
                was_up = port.state >= smp.PortState.ACTIVE
                port.state, port.phys_state = state, phys
                if was_up != (state >= smp.PortState.ACTIVE):
                    trap = sa.TRAP_GID_IN_SERVICE if not was_up else sa.TRAP_GID_OUT_OF_SERVICE
                    self._trap(trap, port.lid, port.gid)
                return {}
            if op == "mad":
                try:
                    answer = sm_agents.answer(self.sm, msg["lid"], bytes.fromhex(msg["mad"]),
                                              msg.get("dlid", SM_LID))  # fmt: skip
                except (ValueError, struct.error, TypeError):
                    answer = None  # a MAD the agents cannot take: dropped, as OpenSM drops it
                if isinstance(answer, sm_agents.Forward):
                    return {"forward": answer.lid}
                if isinstance(answer, PeerCounters):
                    return {"peer": [answer.lid, answer.port, answer.switch_lid,
                                     answer.switch_port]}  # fmt: skip
                if isinstance(answer, Change):
                    self._carry_out(answer)
                    answer = answer.answer
                return {} if answer is None else {"mad": answer.hex()}
            if op == "path":
                rec = self.sm.path(bytes.fromhex(msg["dgid"]), msg["pkey"], msg.get("lid"))
                return {"path": {"dlid": rec.dlid, "sl": rec.sl, "rate_mbps": rec.rate_mbps,
                                 "mtu": rec.mtu}}  # fmt: skip
        except KernelError as e:
            return {"errno": e.errno, "error": str(e)}
        return {"errno": errno.EOPNOTSUPP, "error": f"unknown op {op!r}"}

    def _hello(self, conn: Connection, msg: dict) -> dict:
        """A host registers its ports: each gets its LID (the one it had, if guid2lid or
        the port's own `lid` hint says so), the SM's LID and its P_Key table. Over TCP the
        hello must prove the fabric key, and the reply proves it back."""
        if conn.lids:
            return {"errno": errno.EISCONN, "error": "this connection has registered already"}
        proof = {}
        if not conn.trusted:
            auth = msg.get("auth")
            if not isinstance(auth, dict):
                return {"errno": errno.EACCES,
                        "error": "this fabric needs its key (mount --key-file FILE)"}  # fmt: skip
            assert self.key is not None
            host_nonce = bytes.fromhex(auth["nonce"])
            want = hello_proof(self.key, conn.nonce, host_nonce)
            if len(host_nonce) < 16 or not hmac.compare_digest(want, str(auth["mac"])):
                return {"errno": errno.EACCES, "error": "wrong fabric key"}
            conn.trusted = True
            proof = {"auth": sm_proof(self.key, conn.nonce, host_nonce)}
        conn.host = str(msg["host"])
        for spec in msg["ports"]:
            if self.sm.attached(spec["guid"]) is not None:
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
                node = _node_data(spec)
                self.sm.attach(port, spec["address"], hint if isinstance(hint, int) else None, node)
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
        for lid in conn.lids:
            self._trap(sa.TRAP_GID_IN_SERVICE, lid, self.sm.ports[lid].gid)
        self._push({"op": "route", "routes": {lid: self.sm.routes[lid] for lid in conn.lids},
                    "pkeys": {lid: self.sm.ports[lid].pkeys for lid in conn.lids}})  # fmt: skip
        mroutes = {m.hex(): self.sm.mroute(m) for m in self.sm.groups}
        return {"ports": ports, **self._routes(), "mroutes": mroutes, "group": self.gid,
                **proof}  # fmt: skip
