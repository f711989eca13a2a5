"""A host's HCA on a shared fabric: the client side of `ipoibfs fabric serve`."""

from __future__ import annotations

import contextlib
import errno
import hmac
import itertools
import os
import secrets
import sys
from collections.abc import Awaitable, Callable
from functools import partial

import trio

from ..errors import KernelError, UsageError, report_bug
from .device import HcaDevice
from .port import FabricPort
from .service import (
    data_key,
    default_key_file,
    encode,
    hello_proof,
    read_key,
    read_lines,
    sm_proof,
    tcp_address,
)
from .sm import McMember, PathRecord
from .sm_agents import Forward, Reply
from .sma import node_description, node_info
from .switches import PeerCounters
from .topology import SM_LID
from .transport import DataPlane, parse_address

#: How long a request to the subnet manager may take, reply included: an SA query's
#: timeout and retries, as ib_sa_path_rec_get and ib_sa_mcmember_rec_query are given them.
#: Then the request fails with ETIMEDOUT and a late reply is ignored. While the SM is
#: unreachable, a request waits this long for it to come back.
SM_REQUEST_TIMEOUT = 2.0
#: Requests written to the SM's socket by one task, in order; beyond this many waiting,
#: a request fails at once (ETIMEDOUT), as a full MAD send queue would.
SM_OUTBOX = 256
#: Reconnecting to a lost subnet manager: the first delay, doubled up to the last.
RECONNECT_FIRST = 0.1
RECONNECT_MAX = 2.0
#: How long connecting to the SM's socket may take.
CONNECT_TIMEOUT = 5.0


class _Session:
    """One connection to the subnet manager: its stream, the queue of what to write, and
    the scope that ends it."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.outbox_send, self.outbox = trio.open_memory_channel[tuple[int, bytes]](SM_OUTBOX)
        self.scope = trio.CancelScope()
        self.ended = trio.Event()
        self.challenge: bytes | None = None  # the SM's nonce (a TCP fabric)
        self.proof: str | None = None  # what the SM's hello reply must carry (a TCP fabric)
        self.challenged = trio.Event()  # set with the nonce, or when the session ends
        self.refusal: KernelError | None = None  # why the SM closed it, if it said


class RemoteSm:
    """SmClient over the SM's socket; also applies what the SM pushes.

    Requests never wait on the socket: they are queued for the session's writer task and
    wait for their reply for at most SM_REQUEST_TIMEOUT. A request abandoned before the
    writer reached it is never sent. The SM's tables (routes, mroutes) outlive a session:
    what the SM programmed stays while it is away, as a switch keeps its forwarding tables.
    """

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[trio.Event, list[dict | None], _Session]] = {}
        self._session: _Session | None = None  # the registered one
        self._online = trio.Event()  # set while there is one
        self.routes: dict[int, str] = {}
        self.mroutes: dict[bytes, list[int]] = {}
        self.ports: dict[int, FabricPort] = {}  # by LID
        #: What received messages are checked against (FabricPort.receive): each route's
        #: socket address -> its LID, and each LID's P_Key table.
        self.sources: dict[object, int] = {}
        self.pkey_tables: dict[int, frozenset[int]] = {}

    @property
    def online(self) -> bool:
        return self._session is not None

    # ------------------------------------------------------------- sessions

    def start(self, stream: trio.abc.Stream, nursery: trio.Nursery, *, online: bool = True,
              ) -> _Session:  # fmt: skip
        """Run a session on `stream` (read, write) in `nursery`; `online`: requests use it."""
        session = _Session(stream)
        nursery.start_soon(self._run, session, nursery)
        if online:
            self._go_online(session)
        return session

    async def register(self, stream: trio.abc.Stream, nursery: trio.Nursery, hello: dict,
                       key: bytes | None = None) -> dict:  # fmt: skip
        """A new session on `stream` whose first request is `hello`: the SM's reply once it
        accepted this host (its tables applied), and requests use the session from then
        on. KernelError (the SM's errno, or ETIMEDOUT) if it did not; the session is closed
        then.

        With the fabric's `key` (a TCP fabric), the hello answers the SM's challenge and
        the SM's reply must prove the key back."""
        session = self.start(stream, nursery, online=False)
        try:
            with trio.fail_after(SM_REQUEST_TIMEOUT):
                if key is not None:
                    await session.challenged.wait()
                    if session.challenge is None:
                        raise session.refusal or KernelError(
                            errno.ETIMEDOUT, "the subnet manager is unreachable"
                        )
                    host_nonce = secrets.token_bytes(16)
                    mac = hello_proof(key, session.challenge, host_nonce)
                    hello = {**hello, "auth": {"nonce": host_nonce.hex(), "mac": mac}}
                    session.proof = sm_proof(key, session.challenge, host_nonce)
                reply = await self._exchange(session, "hello", hello)
                if session.proof is not None and "errno" not in reply:
                    if not hmac.compare_digest(session.proof, str(reply.get("auth"))):
                        raise KernelError(errno.EACCES, "the subnet manager did not prove the "
                                                        "fabric key")  # fmt: skip
        except trio.TooSlowError:
            session.scope.cancel()
            raise KernelError(errno.ETIMEDOUT, "the subnet manager did not answer") from None
        except BaseException:
            session.scope.cancel()
            raise
        if "errno" in reply:
            session.scope.cancel()
            raise KernelError(reply["errno"], reply.get("error", ""))
        self._go_online(session)
        return reply

    def _go_online(self, session: _Session) -> None:
        self._session = session
        self._online.set()

    async def lost(self) -> None:
        """Wait until the registered session ends (the SM went away, or dropped us)."""
        session = self._session
        if session is not None:
            await session.ended.wait()

    async def _run(self, session: _Session, nursery: trio.Nursery) -> None:
        """Read replies and pushes, and write requests, until the SM goes away."""
        try:
            with session.scope:
                async with trio.open_nursery() as tasks:
                    tasks.start_soon(self._write, session, tasks.cancel_scope)
                    await self._read(session, nursery)
                    tasks.cancel_scope.cancel()
        finally:
            if self._session is session:
                self._session = None
                self._online = trio.Event()
            for event, box, owner in self._waiting.values():
                if owner is session:
                    box.append(None)
                    event.set()
            session.ended.set()
            session.challenged.set()
            session.outbox_send.close()
            with trio.CancelScope(shield=True):
                await session.stream.aclose()

    async def _write(self, session: _Session, scope: trio.CancelScope) -> None:
        try:
            async for msg_id, data in session.outbox:
                if msg_id in self._waiting:  # else abandoned: the SM never sees it
                    await session.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()  # the connection is broken: stop reading it too

    async def _read(self, session: _Session, nursery: trio.Nursery) -> None:
        try:
            async for msg in read_lines(session.stream):
                if msg.get("id") is not None:
                    waiter = self._waiting.pop(msg["id"], None)
                    if waiter and "routes" in msg and "errno" not in msg:
                        self._accept_tables(session, msg)
                    if waiter:
                        waiter[1].append(msg)
                        waiter[0].set()
                elif "errno" in msg:  # the SM refuses this connection, and closes it
                    session.refusal = KernelError(int(msg["errno"]), str(msg.get("error", "")))
                elif msg.get("op") == "challenge":
                    session.challenge = bytes.fromhex(msg["nonce"])
                    session.challenged.set()
                else:
                    try:
                        self._apply(msg, nursery)
                    except Exception:  # a malformed push must not end the host or the session
                        report_bug(f"a subnet-manager push could not be applied: {msg!r:.200}")
        except (trio.BrokenResourceError, trio.ClosedResourceError, ValueError):
            pass

    def _accept_tables(self, session: _Session, reply: dict) -> None:
        """A registration's tables (routes, P_Keys, mroutes), applied by the reader as it
        reads the reply: the pushes that follow it on the stream are newer, and are applied
        after it. (Applied by register's caller instead, a reply would undo the pushes read
        before that caller ran: a host joining at the same time would be missing.) A TCP
        fabric's reply must prove the key first."""
        proof = str(reply.get("auth"))
        if session.proof is not None and not hmac.compare_digest(session.proof, proof):
            return
        self.set_routes(reply["routes"], reply.get("pkeys"))
        self.set_mroutes(reply["mroutes"])

    # ------------------------------------------------------------- requests

    async def request(self, op: str, **fields) -> dict:
        """One request and its reply; KernelError with the SM's errno, or ETIMEDOUT when no
        reply came within SM_REQUEST_TIMEOUT (the SM is stopped, gone, or overloaded)."""
        box: list[dict] = []
        with trio.move_on_after(SM_REQUEST_TIMEOUT):
            while self._session is None:
                await self._online.wait()
            box.append(await self._exchange(self._session, op, fields))
        if not box:
            raise KernelError(errno.ETIMEDOUT, "the subnet manager did not answer")
        reply = box[0]
        if "errno" in reply:
            raise KernelError(reply["errno"], reply.get("error", ""))
        return reply

    async def _exchange(self, session: _Session, op: str, fields: dict) -> dict:
        msg_id = next(self._ids)
        event, box = trio.Event(), list[dict | None]()
        self._waiting[msg_id] = (event, box, session)
        try:
            try:
                session.outbox_send.send_nowait((msg_id, encode({"op": op, "id": msg_id,
                                                                 **fields})))  # fmt: skip
            except trio.WouldBlock:
                raise KernelError(errno.ETIMEDOUT, "the subnet manager is busy") from None
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise KernelError(errno.ETIMEDOUT, "the subnet manager is unreachable") from None
            await event.wait()
        finally:
            self._waiting.pop(msg_id, None)  # a late reply finds no waiter and is dropped
        reply = box[0]
        if reply is None:
            raise session.refusal or KernelError(errno.ETIMEDOUT, "the subnet manager is "
                                                                  "unreachable")  # fmt: skip
        return reply

    def _apply(self, msg: dict, nursery: trio.Nursery) -> None:
        op = msg.get("op")
        if op == "routes":
            self.set_routes(msg["routes"], msg.get("pkeys"))
        elif op == "route":  # ports joined
            self.add_routes(msg["routes"], msg["pkeys"])
        elif op == "unroute":  # ports left
            self.drop_routes(msg["lids"])
        elif op == "mroute":
            self.mroutes[bytes.fromhex(msg["mgid"])] = list(msg["lids"])
        elif op == "link":  # a switch port was disabled, enabled or reset (ibportstate)
            fport = self.ports.get(msg["lid"])
            if fport is not None:
                nursery.start_soon(_guarded, partial(fport.set_links, list(msg["states"])))
        elif op == "report":  # a trap this host's port subscribed to
            fport = self.ports.get(msg["lid"])
            if fport is not None:
                fport.deliver_report(bytes.fromhex(msg["mad"]))
        elif op == "pkeys":
            self.pkey_tables[int(msg["lid"])] = frozenset(msg["pkeys"])
            fport = self.ports.get(msg["lid"])
            if fport is not None:
                fport.port.set_pkeys(msg["pkeys"])
                if fport.on_pkey_change is not None:
                    nursery.start_soon(_guarded, fport.on_pkey_change)

    def set_routes(self, routes: dict, pkeys: dict | None = None) -> None:
        """The SM's forwarding table, changed in place without ever being empty in between:
        reader threads look LIDs up in it while they send (FabricPort.send). Also the
        checks of what is received (on the ports' receive threads, changed the same way):
        each route's socket address, and each LID's P_Key table."""
        new = {int(lid): addr for lid, addr in routes.items()}
        _replace(self.routes, new)
        sources: dict[object, int] = {}
        for lid, addr in new.items():
            with contextlib.suppress(UsageError, ValueError):
                sources[parse_address(addr)[1]] = lid
        _replace(self.sources, sources)
        if pkeys is not None:
            _replace(self.pkey_tables, {int(lid): frozenset(t) for lid, t in pkeys.items()})

    def add_routes(self, routes: dict, pkeys: dict) -> None:
        """Ports that joined: their routes, sources and P_Key tables, merged in."""
        for lid, addr in routes.items():
            self.routes[int(lid)] = addr
            with contextlib.suppress(UsageError, ValueError):
                self.sources[parse_address(addr)[1]] = int(lid)
        for lid, table in pkeys.items():
            self.pkey_tables[int(lid)] = frozenset(table)

    def drop_routes(self, lids: list[int]) -> None:
        """Ports that left: their routes, sources and P_Key tables go."""
        gone = set(lids)
        for lid in gone:
            self.routes.pop(lid, None)
            self.pkey_tables.pop(lid, None)
        for source in [s for s, lid in self.sources.items() if lid in gone]:
            del self.sources[source]

    def set_mroutes(self, mroutes: dict) -> None:
        """The whole multicast forwarding table (a registration's), changed in place."""
        _replace(self.mroutes, {bytes.fromhex(mgid): list(lids) for mgid, lids in mroutes.items()})

    async def join(
        self, lid: int, qpn: int, mgid: bytes, pkey: int, *, send_only: bool, create: bool
    ) -> McMember:
        reply = await self.request("join", lid=lid, qpn=qpn, mgid=mgid.hex(), pkey=pkey,
                                   send_only=send_only, create=create)  # fmt: skip
        m = reply["member"]
        return McMember(bytes.fromhex(m["mgid"]), m["mlid"], m["qkey"], m["mtu"], m["rate"],
                        m["sl"], m["pkey"])  # fmt: skip

    async def leave(self, lid: int, qpn: int, mgid: bytes) -> None:
        await self.request("leave", lid=lid, qpn=qpn, mgid=mgid.hex())

    async def path(self, lid: int, dgid: bytes, pkey: int) -> PathRecord:
        p = (await self.request("path", lid=lid, dgid=dgid.hex(), pkey=pkey))["path"]
        return PathRecord(dgid, p["dlid"], p["sl"], p["rate_mbps"], p["mtu"])

    async def port_state(self, lid: int, state: int, phys_state: int) -> None:
        await self.request("port_state", lid=lid, state=state, phys_state=phys_state)

    async def mad(self, lid: int, mad: bytes, dlid: int = SM_LID) -> Reply:
        reply = await self.request("mad", lid=lid, dlid=dlid, mad=mad.hex())
        answer, forward, peer = reply.get("mad"), reply.get("forward"), reply.get("peer")
        if isinstance(forward, int):
            return Forward(forward)
        if isinstance(peer, list) and len(peer) == 4 and all(type(v) is int for v in peer):
            return PeerCounters(*peer)
        return bytes.fromhex(answer) if isinstance(answer, str) else None


def _replace(table: dict, new: dict) -> None:
    """`table` becomes `new` in place, never missing a key both have: other threads look
    keys up in it meanwhile."""
    for key in [key for key in table if key not in new]:
        del table[key]
    table.update(new)


async def _guarded(fn: Callable[[], Awaitable[None]]) -> None:
    """A task the SM's pushes start: its Exception is printed with its traceback (stderr is
    the daemon's log), never raised into the host's nursery."""
    try:
        await fn()
    except Exception:
        report_bug(f"a subnet-manager event handler failed ({getattr(fn, '__qualname__', fn)})")


class RemoteFabric:
    """Joins `fabric serve ADDRESS`: the ports get LIDs and P_Keys from it, data goes direct.

    The Fabric lifecycle: `open` connects to the subnet manager, registers the ports, starts
    reading its pushes in the nursery and returns the ports; `close` closes the data planes
    and the SM's socket.

    A lost subnet manager (killed, restarted, or one that dropped this host) is logged and
    reconnected to with back-off; the host registers again with the same port GUIDs, data
    addresses and LIDs (as hints), takes the routes, P_Keys and LIDs it is given, and tells
    each port's driver, as IB_EVENT_CLIENT_REREGISTER does (FabricPort.on_reregister).
    """

    def __init__(self, device: HcaDevice, address: str, *,
                 log: Callable[[str], None] | None = None,
                 key_file: str | None = None) -> None:  # fmt: skip
        self.device = device
        self.address = address
        self.log = log or (lambda text: print(f"ipoibfs: {text}", file=sys.stderr, flush=True))
        self.tcp = tcp_address(address) is not None
        #: The fabric key's file (a TCP fabric): the one given, or where `fabric serve`
        #: keeps its own on this machine. Read at every registration.
        self.key_file = key_file or (default_key_file(address) if self.tcp else None)
        self._explicit_key = key_file is not None
        self.ports: list[FabricPort] = []
        self.planes: list[DataPlane] = []
        self.sm = RemoteSm()
        self._streams: list[trio.SocketStream] = []

    def _key(self) -> bytes | None:
        """The fabric key, for a TCP fabric; None without one (the SM then says it needs
        it). UsageError for a key file that cannot be used (its mode, its owner)."""
        if self.key_file is None:
            return None
        if not self._explicit_key and not os.path.lexists(self.key_file):
            return None
        return read_key(self.key_file)

    async def _connect(self) -> trio.SocketStream:
        """A stream to the SM's socket; OSError (or TimeoutError) if there is none."""
        tcp = tcp_address(self.address)
        with trio.fail_after(CONNECT_TIMEOUT):
            if tcp:
                stream = await trio.open_tcp_stream(*tcp)
            else:
                stream = await trio.open_unix_socket(self.address)
        self._streams = [s for s in self._streams if s.socket.fileno() != -1] + [stream]
        return stream

    def _hello(self) -> dict:
        ports = []
        for p, plane in zip(self.device.ports, self.planes, strict=True):
            spec = {"num": p.num, "guid": p.guid, "address": plane.address,
                    "speed": p.profile.speed, "width": p.profile.width,
                    "max_mtu": p.profile.max_mtu,
                    "node_info": node_info(self.device, p).hex(),
                    "node_desc": node_description(self.device).hex()}  # fmt: skip
            if p.lid:
                spec["lid"] = p.lid  # the LID it has: kept by an SM that lost its state
            ports.append(spec)
        return {"host": self.device.host, "ports": ports}

    async def open(self, nursery: trio.Nursery) -> list[FabricPort]:
        if self._explicit_key and not self.tcp:
            raise UsageError("--key-file is for a HOST:PORT fabric; a Unix one checks who "
                             "connects")  # fmt: skip
        key = self._key()
        try:
            stream = await self._connect()
        except (OSError, trio.TooSlowError) as e:
            why = getattr(e, "strerror", None) or str(e) or "timed out"
            raise UsageError(f"cannot reach the fabric at {self.address}: {why}") from None
        if tcp_address(self.address):
            local_ip = stream.socket.getsockname()[0]
            data_addresses = [f"udp:{local_ip}:0" for _ in self.device.ports]
        else:
            # The pid keeps two daemons that share a host name from taking each other's
            # socket; the subnet manager then refuses the second one's duplicate GUIDs.
            base = f"{os.path.abspath(self.address)}.{self.device.host}.{os.getpid()}"
            data_addresses = [f"unix:{base}.p{p.num}" for p in self.device.ports]
        for a in data_addresses:
            self.planes.append(DataPlane(a, key=data_key(key) if key else None))
        sm = self.sm
        try:
            reply = await sm.register(stream, nursery, self._hello(), key)
        except KernelError as e:
            if e.errno == errno.ETIMEDOUT:
                raise UsageError(f"the fabric at {self.address} did not answer: {e}") from None
            raise UsageError(f"the fabric at {self.address} refused this host: {e}") from None
        self._share(reply)
        for port, plane, info in zip(self.device.ports, self.planes, reply["ports"], strict=True):
            port.lid, port.sm_lid, port.state = info["lid"], info["sm_lid"], 4
            port.set_pkeys(info["pkeys"])
            fport = FabricPort(port, sm, plane, sm.routes, sm.mroutes, sources=sm.sources,
                               pkey_tables=sm.pkey_tables)  # fmt: skip
            sm.ports[port.lid] = fport
            self.ports.append(fport)
        nursery.start_soon(self._stay_registered, nursery)
        return list(self.ports)

    async def _stay_registered(self, nursery: trio.Nursery) -> None:
        """Notice a lost SM, reconnect, register again; forever."""
        while True:
            await self.sm.lost()
            self.log(f"lost the subnet manager at {self.address}; reconnecting")
            reply = await self._reconnect(nursery)
            try:
                self._reregistered(reply, nursery)
            except Exception:  # a malformed reply: drop the session and try again
                report_bug("a subnet-manager registration could not be applied")
                with contextlib.suppress(IndexError):
                    self._streams[-1].socket.close()

    def _share(self, reply: dict) -> None:
        """A fabric with a group: its members may send to the data sockets too."""
        gid = reply.get("group")
        if isinstance(gid, int):
            for plane in self.planes:
                with contextlib.suppress(OSError):
                    plane.share_with_group(gid)

    async def _reconnect(self, nursery: trio.Nursery) -> dict:
        delay = RECONNECT_FIRST
        said = ""
        while True:
            await trio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)
            try:
                key = self._key()  # a restarted SM may have made a new one
                stream = await self._connect()
            except (OSError, trio.TooSlowError, UsageError) as e:
                if isinstance(e, UsageError) and str(e) != said:
                    said = str(e)
                    self.log(str(e))
                continue
            try:
                reply = await self.sm.register(stream, nursery, self._hello(), key)
            except KernelError as e:
                if str(e) != said:  # a refusal is worth saying, once
                    said = str(e)
                    self.log(f"the subnet manager at {self.address} refused this host: {e}")
                continue
            if key is not None:
                for plane in self.planes:
                    plane.set_key(data_key(key))
            return reply

    def _reregistered(self, reply: dict, nursery: trio.Nursery) -> None:
        """Apply a new registration (its tables are in already, _accept_tables): each
        port's LID and P_Keys, then the client-reregister event to every port."""
        sm = self.sm
        self._share(reply)
        notes = []
        for fport, info in zip(self.ports, reply["ports"], strict=True):
            port = fport.port
            if info["lid"] != port.lid:
                notes.append(f"port {port.num} LID 0x{port.lid:x} -> 0x{info['lid']:x}")
                sm.ports.pop(port.lid, None)
                port.lid = info["lid"]
            sm.ports[port.lid] = fport
            port.sm_lid = info["sm_lid"]
            if list(info["pkeys"]) != list(port.pkeys):
                port.set_pkeys(info["pkeys"])
                if fport.on_pkey_change is not None:
                    nursery.start_soon(_guarded, fport.on_pkey_change)
        lids = ", ".join(f"0x{f.lid:x}" for f in self.ports)
        self.log(f"registered again with the subnet manager at {self.address}: LIDs {lids}"
                 + (f" ({'; '.join(notes)})" if notes else " (kept)"))  # fmt: skip
        for fport in self.ports:
            if fport.on_reregister is not None:
                nursery.start_soon(_guarded, fport.on_reregister)

    def close(self) -> None:
        for plane in self.planes:
            plane.close()
        for stream in self._streams:
            stream.socket.close()
        self._streams = []
