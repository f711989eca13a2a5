"""A port's view of the fabric: the subnet-manager calls (ib_sa_*), the forwarding tables the
SM programmed, and sending on the wire. The driver sees only this.

What a port receives is checked here, before the driver sees it, as an HCA checks a packet
in hardware: its source address must be the route of the LID it names as its source (a
port cannot speak for another), and a UD datagram's P_Key must be in that source port's
P_Key table (the P_Key table the SM programmed, which the SM tells every port). Failures
are dropped and counted (`source_violations`, `pkey_violations`, the HCA's P_Key violation
counter), never delivered.
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import trio

from ..errors import KernelError
from ..wire import KIND_PLACE, KIND_UD
from ..wire.headers import UdHeader
from ..wire.mad import common
from .device import HcaProfile, Port
from .flag import Flag
from .impair import Impairment, Netem
from .sm import McMember, PathRecord
from .sm_agents import Reply
from .tap import RECEIVED, SENT, Tap
from .topology import SM_LID
from .transport import DataPlane

#: What a port's datagrams are delivered to: the datagram, and the fds it carried (open
#: only during the call).
Handler = Callable[[memoryview, Sequence[int]], None]
#: What may take a datagram on the port's receive thread: True if it did.
FastHandler = Callable[[memoryview], bool]
#: The port's MAD layer (umad/layer.py): the UD datagrams to QP0 and QP1 that reach the port.
MadHandler = Callable[[memoryview], None]

#: How long a link change waits for the SM to hear of it.
SM_NOTICE_SECONDS = 0.5
#: PortInfo's PortState and PortPhysicalState (the core's `state` and `phys_state` files).
PORT_DOWN, PORT_ACTIVE = 1, 4
PHYS_POLLING, PHYS_LINK_UP = 2, 5


class SmClient(Protocol):
    """How a port reaches its subnet manager: in-process, or over a socket."""

    async def join(
        self, lid: int, qpn: int, mgid: bytes, pkey: int, *, send_only: bool, create: bool
    ) -> McMember: ...
    async def leave(self, lid: int, qpn: int, mgid: bytes) -> None: ...
    async def path(self, lid: int, dgid: bytes, pkey: int) -> PathRecord: ...
    async def mad(self, lid: int, mad: bytes, dlid: int = SM_LID) -> Reply:
        """The fabric's answer to a MAD that LID `lid` sent to `dlid` (the SM's SMInfo and
        SA, a switch's SMA or PMA) or along a directed route (sm_agents.answer): the answer,
        the host where the route ends (Forward), the host whose counters a switch port
        shows (PeerCounters), or None if nothing answers."""
        ...

    async def port_state(self, lid: int, state: int, phys_state: int) -> None:
        """The port's link went down or came back: the switch port it is cabled to shows
        it (as a switch sees its link), whatever the SM does about it."""
        ...


#: Where the source LID and, in a UD datagram, the P_Key sit in every message on the wire
#: (wire.UD_HEADER, RC_HEADER, CM_MESSAGE all start kind, -, SLID).
_SLID = slice(2, 4)
_UD_PKEY = slice(14, 16)
_UD_MIN = 16
_UD_DQPN = slice(10, 14)
_MAD_QPS = (0, 1)  # the SMI's QP0, the GSI's QP1
_PLACE = bytes([KIND_PLACE])


class FabricPort:
    def __init__(
        self,
        port: Port,
        sm: SmClient,
        plane: DataPlane | None,
        routes: dict[int, str],
        mroutes: dict[bytes, list[int]],
        *,
        sources: dict[object, int] | None = None,
        pkey_tables: dict[int, frozenset[int]] | None = None,
    ) -> None:
        self.port = port
        self.sm = sm
        self.plane = plane
        self.routes = routes  # LID -> data-plane address (the SM's unicast forwarding)
        self.mroutes = mroutes  # MGID -> LIDs with full members (multicast forwarding)
        #: The sender's socket address -> its LID (the routes, reversed), and each LID's
        #: P_Key table: what a received message is checked against. None: not checked
        #: (a port without peers).
        self.sources = sources
        self.pkey_tables = pkey_tables
        #: Messages dropped: their source address is not the route of their SLID (or
        #: unknown); UD datagrams whose P_Key is not in the source port's table.
        self.source_violations = 0
        self.pkey_violations = 0
        self._members: dict[bytes, set[int]] = {}  # our own joins: MGID -> local QPNs
        #: Set while nothing must see what the port sends (no tap, no impairment, and the
        #: link was not pulled): an offload engine may place packets itself only then
        #: (netdev/flows.c).
        self.unobserved = Flag()
        self._pulled = False  # set_link(False)
        self._tap: Tap | None = None
        #: Called when the SM reprograms this port's P_Key table.
        self.on_pkey_change: Callable[[], Awaitable[None]] | None = None
        #: Called when the port has registered again with a subnet manager (one that was
        #: restarted, or that had dropped this host): IB_EVENT_CLIENT_REREGISTER. The SM
        #: may have lost every multicast membership; the port's LID and P_Keys are the
        #: ones it now reads (on_pkey_change, called before, if the table changed).
        self.on_reregister: Callable[[], Awaitable[None]] | None = None
        #: Called when the physical link went down or came back (IB_EVENT_PORT_ERR,
        #: IB_EVENT_PORT_ACTIVE), after `state` changed.
        self.on_port_change: Callable[[], Awaitable[None]] | None = None
        #: `lab link`'s impairments of what the port sends (None: none, nothing checked).
        self.impair: Impairment | None = None
        #: The port's MAD layer, which takes every datagram to QP0 or QP1 (None: dropped).
        self.on_mad: MadHandler | None = None
        #: Faults over the port's life, for its PMA: times the link went down
        #: (LinkDownedCounter), and what impairments cleared since lost.
        self.link_downs = 0
        self._lost_before = 0
        #: Multicast copies held until `release_multicast` (None: sent at once).
        self._held_multicast: list[tuple[tuple[int, ...], list[bytes | memoryview]]] | None = None

    # The HCA port's attributes the driver reads (ib_query_port), so that it need not reach
    # through to the device.

    @property
    def tap(self) -> Tap | None:
        """The capture tap while `ipoibfs capture` records this host (fabric/tap.py): every
        message sent or received, and the SA exchanges, go to it. None otherwise."""
        return self._tap

    @tap.setter
    def tap(self, tap: Tap | None) -> None:
        self._tap = tap
        self._observed()

    @property
    def num(self) -> int:
        return self.port.num

    @property
    def lid(self) -> int:
        return self.port.lid

    @property
    def state(self) -> int:
        return self.port.state

    @property
    def active(self) -> bool:
        """PortState ACTIVE: the link is up and the port may send and receive."""
        return self.port.state == PORT_ACTIVE

    def _observed(self) -> None:
        self.unobserved.set(self._tap is None and self.impair is None and not self._pulled)

    def set_impairment(self, netem: Netem | None) -> None:
        """Impair what the port sends from now on, as `tc qdisc change` (what is held stays
        held, the counts go on); None clears them, and what was still held is lost, as a
        deleted qdisc's queue."""
        if netem is None:
            old, self.impair = self.impair, None
            if old is not None:
                self._lost_before += old.counts.lost
                old.close()
        elif self.impair is not None:
            self.impair.netem = netem
        else:
            self.impair = Impairment(netem)
        self._observed()

    async def set_link(self, up: bool) -> bool:
        """The physical link goes down (a pulled cable: the port polls for a peer) or comes
        back; False if it already was so. The port keeps its LID and P_Keys, as a port the
        SM has configured does over a short outage; while down it sends and receives
        nothing."""
        if up == self.active:
            return False
        if not up:
            self.link_downs += 1
        self.port.state = PORT_ACTIVE if up else PORT_DOWN
        self._pulled = not up
        self._observed()
        self.port.phys_state = PHYS_LINK_UP if up else PHYS_POLLING
        if self.on_port_change is not None:
            await self.on_port_change()
        with trio.move_on_after(SM_NOTICE_SECONDS):  # a stopped SM does not hold the fault up
            try:
                await self.sm.port_state(self.port.lid, self.port.state, self.port.phys_state)
            except KernelError:
                pass  # an SM that is away learns it when the port registers again
        return True

    async def set_links(self, states: list[bool]) -> None:
        """The link goes through these states in turn (a switch port's reset: down, up)."""
        for up in states:
            await self.set_link(bool(up))

    @property
    def link_discards(self) -> int:
        """What the port's impairments lost, over its life (PortXmitDiscards counts it)."""
        impair = self.impair
        return self._lost_before + (impair.counts.lost if impair is not None else 0)

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
        port = self.port
        try:
            member = await self.sm.join(port.lid, qpn, mgid, pkey, send_only=send_only,
                                        create=create)  # fmt: skip
        except KernelError as e:
            if self.tap is not None:
                self.tap.join(port.num, port.lid, port.sm_lid, port.gid, mgid=mgid, pkey=pkey,
                              send_only=send_only, member=None, error=e.errno)  # fmt: skip
            raise
        if self.tap is not None:
            self.tap.join(port.num, port.lid, port.sm_lid, port.gid, mgid=mgid, pkey=pkey,
                          send_only=send_only, member=member, error=None)  # fmt: skip
        self._members.setdefault(mgid, set()).add(qpn)
        return member

    async def leave_multicast(self, qpn: int, mgid: bytes) -> None:
        qpns = self._members.get(mgid, set())
        qpns.discard(qpn)
        if not qpns:
            self._members.pop(mgid, None)
        port = self.port
        error = None
        try:
            await self.sm.leave(port.lid, qpn, mgid)
        except KernelError as e:
            error = e.errno
            raise
        finally:
            if self.tap is not None:  # an IPoIB MGID holds its P_Key in bytes 4-5
                self.tap.leave(port.num, port.lid, port.sm_lid, port.gid, mgid=mgid,
                               pkey=int.from_bytes(mgid[4:6], "big"), error=error)  # fmt: skip

    def has_member(self, mgid: bytes, *, exclude_qpn: int) -> bool:
        """Whether another QP of this port already holds a membership of the group."""
        return bool(self._members.get(mgid, set()) - {exclude_qpn})

    async def query_path(self, dgid: bytes, pkey: int) -> PathRecord:
        port = self.port
        try:
            path = await self.sm.path(port.lid, dgid, pkey)
        except KernelError as e:
            if self.tap is not None:
                self.tap.path(port.num, port.lid, port.sm_lid, port.gid, dgid=dgid, pkey=pkey,
                              path=None, error=e.errno)  # fmt: skip
            raise
        if self.tap is not None:
            self.tap.path(port.num, port.lid, port.sm_lid, port.gid, dgid=dgid, pkey=pkey,
                          path=path, error=None)  # fmt: skip
        return path

    async def sm_mad(self, mad: bytes, dlid: int = SM_LID) -> Reply:
        """A MAD to a switch (the SM's LID among them) or along a directed route, and its
        answer (sm_agents.answer); the switches are reached over the SM's own channel,
        where the fabric has no data-plane route to them."""
        return await self.sm.mad(self.port.lid, mad, dlid)

    def deliver_report(self, mad: bytes) -> None:
        """A Report the SM sends this port (a trap it subscribed to): to the MAD layer, as a
        datagram from the SM's LID to QP1 with the port's first P_Key (ib_mad_recv_done)."""
        if self.on_mad is None:
            return
        pkey = next((k for k in self.port.pkeys if k & 0x7FFF), 0xFFFF)
        header = UdHeader(slid=self.port.sm_lid, dlid=self.port.lid, src_qpn=1, dst_qpn=1,
                          pkey=pkey, qkey=common.IB_QP1_QKEY, sgid=bytes(16),
                          dgid=self.port.gid)  # fmt: skip
        self.on_mad(memoryview(header.pack() + mad))

    def reaches(self, dlid: int) -> bool:
        """Whether a host port has this LID (the fabric has a data-plane route to it)."""
        return dlid in self.routes

    def send(self, dlid: int, parts: list[bytes | memoryview], fds: Sequence[int] = ()) -> int:
        """Put one datagram on the wire towards a LID: 0 once it is on the wire, else why it
        was lost (an errno, as an RC send completion reports it): EHOSTUNREACH without a
        route or a data plane. Safe from any thread (DataPlane.send)."""
        tap = self.tap
        if tap is not None:
            tap.record(SENT, self.port.num, dlid, parts)
        return self._send(dlid, parts, fds)

    def _send(self, dlid: int, parts: list[bytes | memoryview], fds: Sequence[int] = ()) -> int:
        address = self.routes.get(dlid)
        plane = self.plane
        if address is None or plane is None:
            return errno.EHOSTUNREACH
        if self.port.state != PORT_ACTIVE:
            return errno.ENETDOWN
        impair = self.impair
        if impair is not None:
            return impair.send(parts, fds, lambda p, f: plane.send(address, p, f))
        return plane.send(address, parts, fds)

    def send_placement(self, dlid: int, message: bytes, fds: Sequence[int] = ()) -> int:
        """A placement message (wire.PlaceMessage) to a port of this machine: like `send`,
        but no capture sees it and no impairment touches it, as it is the emulation's own
        and no HCA would put it on a link."""
        address = self.routes.get(dlid)
        plane = self.plane
        if address is None or plane is None or not plane.passes_fds:
            return errno.EHOSTUNREACH
        if self.port.state != PORT_ACTIVE:
            return errno.ENETDOWN
        return plane.send(address, [message], fds)

    def send_multicast(self, mgid: bytes, parts: list[bytes | memoryview]) -> int:
        """Replicate to every port with a full member, as switches do; returns the copies sent
        (held: the copies to send). A capture sees the one packet the HCA sends."""
        tap = self.tap
        if tap is not None:
            tap.record(SENT, self.port.num, 0, parts)
        lids = self.mroutes.get(mgid, ())
        held = self._held_multicast
        if held is not None:  # a copy of both: the routes and a buffer may change meanwhile
            held.append((tuple(lids), [bytes(p) for p in parts]))
            return len(lids)
        sent = 0
        for lid in lids:
            if not self._send(lid, parts):
                sent += 1
        return sent

    def hold_multicast(self) -> None:
        """Hold the copies of what is sent to groups until `release_multicast` (on the trio
        thread, for one batch of the netdev's queue: ipoib's send queue drained at once).

        Each copy costs its member a wake-up; a burst of broadcasts (80 first pings that
        ARP at once) would wake each of 255 daemons 80 times. Released member by member,
        each member's copies arrive back to back and are read in one wake (README, Scale).
        Each member still gets them in the order they were sent."""
        if self._held_multicast is None:
            self._held_multicast = []

    def release_multicast(self) -> None:
        """Send what `hold_multicast` held, member by member, and stop holding."""
        held, self._held_multicast = self._held_multicast, None
        if not held:
            return
        by_lid: dict[int, list[list[bytes | memoryview]]] = {}
        for lids, parts in held:
            for lid in lids:
                by_lid.setdefault(lid, []).append(parts)
        for lid, copies in by_lid.items():
            for parts in copies:
                self._send(lid, parts)

    @property
    def auth_failures(self) -> int:
        """Messages whose authenticator did not verify (a UDP wire with a fabric key)."""
        return self.plane.auth_failures if self.plane is not None else 0

    def at_batch_end(self, fn: Callable[[], None]) -> None:
        """Call fn when the receive loop has handled what one wake drained (the end of a
        NAPI poll: GRO flushes there), or now outside a batch (DataPlane.at_batch_end)."""
        if self.plane is None:
            fn()
        else:
            self.plane.at_batch_end(fn)

    async def receive(self, handler: Handler, fast: FastHandler | None = None,
                      fast_end: Callable[[], None] | None = None) -> None:  # fmt: skip
        """Deliver this port's datagrams, forever, once they passed the source and P_Key
        checks (on the port's receive thread): to fast(data) on that thread first, when the
        plane lets it take one (DataPlane.receive), and to handler(data, fds) on the trio
        thread if it did not; fast_end() runs on that thread after each batch. A port
        without a data plane receives nothing and sleeps. An Exception a handler raises is
        printed with its traceback (stderr is the daemon's log) and the next datagram goes
        on."""
        if self.plane is None:
            await trio.sleep_forever()
            return
        sources, tables = self.sources, self.pkey_tables
        port = self.port

        def screen(data: memoryview, sender: object, may_take: bool) -> bool:
            tap = self.tap
            if tap is not None and data[:1] != _PLACE:  # what reaches the port, as a
                tap.record(RECEIVED, port.num, 0, [data])  # capture of its link shows it
            if port.state != PORT_ACTIVE:
                return True  # a link that is down hears nothing
            if sources is not None and tables is not None:
                slid = int.from_bytes(data[_SLID], "big")
                if len(data) < _SLID.stop or sources.get(sender) != slid:
                    self.source_violations += 1
                    return True
                if data[0] == KIND_UD:
                    table = tables.get(slid)
                    if (len(data) < _UD_MIN or table is None
                            or int.from_bytes(data[_UD_PKEY], "big") not in table):  # fmt: skip
                        self.pkey_violations += 1
                        return True
            return may_take and fast is not None and fast(data)

        def deliver(data: memoryview, fds: Sequence[int], sender: object) -> None:
            if (data[0] == KIND_UD and len(data) >= _UD_MIN
                    and int.from_bytes(data[_UD_DQPN], "big") in _MAD_QPS):  # fmt: skip
                if self.on_mad is not None:
                    self.on_mad(data)
                return
            handler(data, fds)

        await self.plane.receive(deliver, screen, fast_end)

    def quiesce(self) -> None:
        """Wait (briefly, on the trio thread) until the receive thread is between batches,
        so that what its fast handler looked up before is no longer in use."""
        if self.plane is not None:
            self.plane.quiesce()
