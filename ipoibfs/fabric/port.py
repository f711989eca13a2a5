"""A port's view of the fabric: the subnet-manager calls (ib_sa_*), the forwarding tables the
SM programmed, and sending on the wire. The driver sees only this."""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from .device import Port
from .sm import McMember, PathRecord
from .transport import DataPlane


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
        self.last_error = 0  # why the last send was lost (an errno), for RC completions
        #: Called when the SM reprograms this port's P_Key table.
        self.on_pkey_change: Callable[[], Awaitable[None]] | None = None

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

    def send(self, dlid: int, parts: list[bytes | memoryview], fds: Sequence[int] = ()) -> bool:
        """Put one datagram on the wire towards a LID; False if it was lost."""
        address = self.routes.get(dlid)
        if address is None or self.plane is None:
            self.last_error = errno.EHOSTUNREACH
            return False
        if self.plane.send(address, parts, fds):
            return True
        self.last_error = self.plane.last_error
        return False

    def send_multicast(self, mgid: bytes, parts: list[bytes | memoryview]) -> int:
        """Replicate to every port with a full member, as switches do; returns the copies sent."""
        sent = 0
        for lid in self.mroutes.get(mgid, ()):
            sent += self.send(lid, parts)
        return sent
