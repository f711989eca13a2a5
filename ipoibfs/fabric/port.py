"""A port's view of the fabric: the subnet-manager calls (ib_sa_*), the forwarding tables the
SM programmed, and sending on the wire. The driver sees only this."""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import trio

from .device import HcaProfile, Port
from .sm import McMember, PathRecord
from .transport import DataPlane

#: What a port's datagrams are delivered to: the datagram, and the fds it carried (open
#: only during the call).
Handler = Callable[[memoryview, Sequence[int]], None]


class SmClient(Protocol):
    """How a port reaches its subnet manager: in-process, or over a socket."""

    async def join(
        self, lid: int, qpn: int, mgid: bytes, pkey: int, *, send_only: bool, create: bool
    ) -> McMember: ...
    async def leave(self, lid: int, qpn: int, mgid: bytes) -> None: ...
    async def path(self, dgid: bytes, pkey: int) -> PathRecord: ...


class FabricPort:
    def __init__(
        self,
        port: Port,
        sm: SmClient,
        plane: DataPlane | None,
        routes: dict[int, str],
        mroutes: dict[bytes, list[int]],
    ) -> None:
        self.port = port
        self.sm = sm
        self.plane = plane
        self.routes = routes  # LID -> data-plane address (the SM's unicast forwarding)
        self.mroutes = mroutes  # MGID -> LIDs with full members (multicast forwarding)
        self._members: dict[bytes, set[int]] = {}  # our own joins: MGID -> local QPNs
        #: Called when the SM reprograms this port's P_Key table.
        self.on_pkey_change: Callable[[], Awaitable[None]] | None = None
        #: Called when the port has registered again with a subnet manager (one that was
        #: restarted, or that had dropped this host): IB_EVENT_CLIENT_REREGISTER. The SM
        #: may have lost every multicast membership; the port's LID and P_Keys are the
        #: ones it now reads (on_pkey_change, called before, if the table changed).
        self.on_reregister: Callable[[], Awaitable[None]] | None = None

    # The HCA port's attributes the driver reads (ib_query_port), so that it need not reach
    # through to the device.

    @property
    def num(self) -> int:
        return self.port.num

    @property
    def lid(self) -> int:
        return self.port.lid

    @property
    def gid(self) -> bytes:
        return self.port.gid

    @property
    def guid(self) -> int:
        return self.port.guid

    @property
    def profile(self) -> HcaProfile:
        return self.port.profile

    @property
    def pkeys(self) -> list[int]:
        return self.port.pkeys

    @property
    def speed_mbps(self) -> int:
        return self.port.speed_mbps

    def pkey_index(self, pkey: int) -> int | None:
        return self.port.pkey_index(pkey)

    @property
    def passes_fds(self) -> bool:
        """Whether messages can carry file descriptors (the peers share this machine)."""
        return self.plane is not None and self.plane.passes_fds

    async def join_multicast(
        self, qpn: int, mgid: bytes, pkey: int, *, send_only: bool = False, create: bool = True
    ) -> McMember:
        member = await self.sm.join(self.port.lid, qpn, mgid, pkey, send_only=send_only,
                                    create=create)  # fmt: skip
        self._members.setdefault(mgid, set()).add(qpn)
        return member

    async def leave_multicast(self, qpn: int, mgid: bytes) -> None:
        qpns = self._members.get(mgid, set())
        qpns.discard(qpn)
        if not qpns:
            self._members.pop(mgid, None)
        await self.sm.leave(self.port.lid, qpn, mgid)

    def has_member(self, mgid: bytes, *, exclude_qpn: int) -> bool:
        """Whether another QP of this port already holds a membership of the group."""
        return bool(self._members.get(mgid, set()) - {exclude_qpn})

    async def query_path(self, dgid: bytes, pkey: int) -> PathRecord:
        return await self.sm.path(dgid, pkey)

    def send(self, dlid: int, parts: list[bytes | memoryview], fds: Sequence[int] = ()) -> int:
        """Put one datagram on the wire towards a LID: 0 once it is on the wire, else why it
        was lost (an errno, as an RC send completion reports it): EHOSTUNREACH without a
        route or a data plane. Safe from any thread (DataPlane.send)."""
        address = self.routes.get(dlid)
        plane = self.plane
        if address is None or plane is None:
            return errno.EHOSTUNREACH
        return plane.send(address, parts, fds)

    def send_multicast(self, mgid: bytes, parts: list[bytes | memoryview]) -> int:
        """Replicate to every port with a full member, as switches do; returns the copies sent."""
        sent = 0
        for lid in self.mroutes.get(mgid, ()):
            if not self.send(lid, parts):
                sent += 1
        return sent

    async def receive(self, handler: Handler) -> None:
        """Deliver this port's datagrams to handler(data, fds), forever; a port without a
        data plane receives nothing and sleeps. An Exception the handler raises is printed
        with its traceback (stderr is the daemon's log) and the next datagram goes on."""
        if self.plane is None:
            await trio.sleep_forever()
        else:
            await self.plane.receive(handler)
