"""A host's HCA on a shared fabric: the client side of `ipoibfs fabric serve`."""

from __future__ import annotations

import errno
import itertools
import os
from collections.abc import Awaitable, Callable

import trio

from ..errors import KernelError, UsageError, report_bug
from .device import HcaDevice
from .port import FabricPort
from .service import encode, read_lines, tcp_address
from .sm import McMember, PathRecord
from .transport import DataPlane

#: How long a request to the subnet manager may take, reply included: an SA query's
#: timeout and retries, as ib_sa_path_rec_get and ib_sa_mcmember_rec_query are given them.
#: Then the request fails with ETIMEDOUT and a late reply is ignored.
SM_REQUEST_TIMEOUT = 2.0
#: Requests written to the SM's socket by one task, in order; beyond this many waiting,
#: a request fails at once (ETIMEDOUT), as a full MAD send queue would.
SM_OUTBOX = 256


class _Session:
    """One connection to the subnet manager: its stream and the queue of what to write."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.outbox_send, self.outbox = trio.open_memory_channel[tuple[int, bytes]](SM_OUTBOX)


class RemoteSm:
    """SmClient over the SM's socket; also applies what the SM pushes.

    Requests never wait on the socket: they are queued for the session's writer task and
    wait for their reply for at most SM_REQUEST_TIMEOUT. A request abandoned before the
    writer reached it is never sent.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._session = _Session(stream)
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[trio.Event, list[dict | None]]] = {}
        self.routes: dict[int, str] = {}
        self.mroutes: dict[bytes, list[int]] = {}
        self.ports: dict[int, FabricPort] = {}  # by LID
        self.connected = True

    async def request(self, op: str, **fields) -> dict:
        """One request and its reply; KernelError with the SM's errno, or ETIMEDOUT when no
        reply came within SM_REQUEST_TIMEOUT (the SM is stopped, gone, or overloaded)."""
        if not self.connected:
            raise KernelError(errno.ETIMEDOUT, "subnet manager unreachable")
        msg_id = next(self._ids)
        event, box = trio.Event(), list[dict | None]()
        self._waiting[msg_id] = (event, box)
        try:
            with trio.move_on_after(SM_REQUEST_TIMEOUT):
                try:
                    self._session.outbox_send.send_nowait(
                        (msg_id, encode({"op": op, "id": msg_id, **fields}))
                    )
                except trio.WouldBlock:
                    raise KernelError(errno.ETIMEDOUT, "subnet manager busy") from None
                await event.wait()
        finally:
            self._waiting.pop(msg_id, None)  # a late reply finds no waiter and is dropped
        if not box:
            raise KernelError(errno.ETIMEDOUT, "subnet manager did not answer")
        reply = box[0]
        if reply is None:
            raise KernelError(errno.ETIMEDOUT, "subnet manager unreachable")
        if "errno" in reply:
            raise KernelError(reply["errno"], reply.get("error", ""))
        return reply

    async def run(self, nursery: trio.Nursery) -> None:
        """Read replies and pushes, and write requests, until the SM goes away."""
        session = self._session
        try:
            async with trio.open_nursery() as tasks:
                tasks.start_soon(self._write, session, tasks.cancel_scope)
                await self._read(session, nursery)
                tasks.cancel_scope.cancel()
        finally:
            self.connected = False
            for event, box in self._waiting.values():
                box.append(None)
                event.set()
            self._waiting.clear()

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
                    if waiter:
                        waiter[1].append(msg)
                        waiter[0].set()
                else:
                    try:
                        self._apply(msg, nursery)
                    except Exception:  # a malformed push must not end the host or the session
                        report_bug(f"a subnet-manager push could not be applied: {msg!r:.200}")
        except (trio.BrokenResourceError, trio.ClosedResourceError, ValueError):
            pass

    def _apply(self, msg: dict, nursery: trio.Nursery) -> None:
        op = msg.get("op")
        if op == "routes":
            self.set_routes(msg["routes"])
        elif op == "mroute":
            self.mroutes[bytes.fromhex(msg["mgid"])] = list(msg["lids"])
        elif op == "pkeys":
            fport = self.ports.get(msg["lid"])
            if fport is not None:
                fport.port.set_pkeys(msg["pkeys"])
                if fport.on_pkey_change is not None:
                    nursery.start_soon(_guarded, fport.on_pkey_change)

    def set_routes(self, routes: dict) -> None:
        """The SM's forwarding table, changed in place without ever being empty in between:
        reader threads look LIDs up in it while they send (FabricPort.send)."""
        new = {int(lid): addr for lid, addr in routes.items()}
        for lid in [lid for lid in self.routes if lid not in new]:
            del self.routes[lid]
        self.routes.update(new)

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

    async def path(self, dgid: bytes, pkey: int) -> PathRecord:
        p = (await self.request("path", dgid=dgid.hex(), pkey=pkey))["path"]
        return PathRecord(dgid, p["dlid"], p["sl"], p["rate_mbps"], p["mtu"])


async def _guarded(fn: Callable[[], Awaitable[None]]) -> None:
    """A task the SM's pushes start: its Exception is printed with its traceback (stderr is
    the daemon's log), never raised into the host's nursery."""
    try:
        await fn()
    except Exception:
        report_bug(f"a subnet-manager event handler failed ({getattr(fn, '__qualname__', fn)})")


class RemoteFabric:
    """Joins `fabric serve ADDRESS`: the ports get LIDs and P_Keys from it, data goes direct.

    The Fabric lifecycle: `open` connects to the subnet manager, starts reading its pushes
    in the nursery and returns the ports; `close` closes the data planes and the SM's socket.
    """

    def __init__(self, device: HcaDevice, address: str) -> None:
        self.device = device
        self.address = address
        self.ports: list[FabricPort] = []
        self.planes: list[DataPlane] = []
        self._stream: trio.SocketStream | None = None

    async def open(self, nursery: trio.Nursery) -> list[FabricPort]:
        stream: trio.SocketStream
        try:
            tcp = tcp_address(self.address)
            if tcp:
                stream = await trio.open_tcp_stream(*tcp)
                local_ip = stream.socket.getsockname()[0]
                data_addresses = [f"udp:{local_ip}:0" for _ in self.device.ports]
            else:
                stream = await trio.open_unix_socket(self.address)
                # The pid keeps two daemons that share a host name from taking each other's
                # socket; the subnet manager then refuses the second one's duplicate GUIDs.
                base = f"{os.path.abspath(self.address)}.{self.device.host}.{os.getpid()}"
                data_addresses = [f"unix:{base}.p{p.num}" for p in self.device.ports]
        except OSError as e:
            raise UsageError(f"cannot reach the fabric at {self.address}: "
                             f"{e.strerror or e}") from None  # fmt: skip
        self._stream = stream
        for a in data_addresses:
            self.planes.append(DataPlane(a))
        sm = RemoteSm(stream)
        nursery.start_soon(sm.run, nursery)
        hello = [{"num": p.num, "guid": p.guid, "address": plane.address, "speed": p.profile.speed,
                  "width": p.profile.width, "max_mtu": p.profile.max_mtu}
                 for p, plane in zip(self.device.ports, self.planes, strict=True)]  # fmt: skip
        try:
            reply = await sm.request("hello", host=self.device.host, ports=hello)
        except KernelError as e:
            raise UsageError(f"the fabric at {self.address} refused this host: {e}") from None
        sm.set_routes(reply["routes"])
        sm.mroutes.update({bytes.fromhex(m): lids for m, lids in reply["mroutes"].items()})
        for port, plane, info in zip(self.device.ports, self.planes, reply["ports"], strict=True):
            port.lid, port.sm_lid, port.state = info["lid"], info["sm_lid"], 4
            port.set_pkeys(info["pkeys"])
            fport = FabricPort(port, sm, plane, sm.routes, sm.mroutes)
            sm.ports[port.lid] = fport
            self.ports.append(fport)
        return list(self.ports)

    def close(self) -> None:
        for plane in self.planes:
            plane.close()
        if self._stream is not None:
            self._stream.socket.close()
