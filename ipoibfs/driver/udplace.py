"""Direct placement of UD datagrams between hosts of one machine (fabric/placement.py).

An HCA writes a received datagram into the receiving QP's buffers without the receiving
CPU; between two hosts of one machine the emulation does the same. A UD QP whose route to a
peer QP has carried PLACE_AFTER frames, or one LSO super-packet, asks the peer for its
receive queue (PLACE_REQUEST); the peer answers with one, or with none (PLACE_OFFER). From
then on the sender's reader thread writes what it would have sent over UD straight into the
peer's stack, for as long as the offer holds.

The receiver offers a queue only when it would deliver what arrives the same way: its port
is ACTIVE, the interface open, without RX moderation or data debug, and the asking QP's
P_Key matches its own (the Q_Key and P_Key checks, made once here). Whenever one of those
changes, or GRO/LRO, it offers again to every QP that asked: the old queue is revoked (the
sender's next frame goes on the wire, where the receiver's own path takes it), and a new
one or none is sent. What the receiver does per datagram, placement does instead:

- the counters, on the queue's page (Interface.placed);
- GRO/LRO: the sender merges the TCP segments of its reader's batch (FLAG_GRO), as the
  receiver's GRO would have merged those of its receive batch;
- neigh_confirm: the page's stamp of the last placement (`heard`).

What is not placed crosses the wire as before: multicast, ARP and ND, and every frame while
the sender's port is down or impaired (`lab link`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio

from .. import wire
from ..fabric.placement import FLAG_GRO, FLOW_UD, ReceiveQueue, RemoteQueue
from ..fabric.port import FabricPort
from ..fabric.tap import PLACED
from .context import DriverContext
from .ib import NAPI_WEIGHT, VNET, gro_enabled, qp_pkey, rx_counts, tcp_segment, tx_bytes
from .interface import Flows, Interface, lend_to_flows

#: Frames a route carries over the wire before it asks for placement: a ping or an ARP
#: exchange never makes a queue (each costs a page and three fds).
PLACE_AFTER = 64

_Key = tuple[int, int, int, int]  # (port number, our QPN, the peer's LID, the peer's QPN)


class PlaceCell:
    """One QP's placement into one peer QP, shared by the routes (neighbours, IPv4 and IPv6)
    that reach it. The trio thread sets `queue` (and clears `asked` when the peer died); the
    interface's reader thread reads it and owns the rest."""

    __slots__ = ("port", "dlid", "queue", "sent", "asked", "held", "holding", "_ask")

    def __init__(self, port: FabricPort, dlid: int, ask: Callable[[], None],
                 holding: list[PlaceCell]) -> None:  # fmt: skip
        self.port, self.dlid = port, dlid
        self.queue: RemoteQueue | None = None
        self.sent = 0
        self.asked = False
        #: (UD header, frame) waiting for the end of the reader's batch, for GRO.
        self.held: list[tuple[bytes, bytes]] = []
        #: The reader's cells that hold frames (its batch end flushes them).
        self.holding = holding
        self._ask = ask

    def send(self, header: bytes, frame: bytes) -> int:
        """On the reader thread: place the frame (or hold it for GRO), or send it on the
        wire; the bytes to count as sent, 0 if it was lost."""
        queue, port = self.queue, self.port
        if queue is not None and port.impair is None and port.active:
            if queue.gro and tcp_segment(frame):
                held = self.held
                held.append((header, frame))
                if len(held) == 1:
                    self.holding.append(self)
                elif len(held) >= NAPI_WEIGHT:
                    self.flush()
                return tx_bytes(frame)
            if self.held:
                self.flush()
            packets, nbytes = rx_counts(frame)
            if not queue.place(frame, nbytes, packets):
                self._seen(header, frame)
                return tx_bytes(frame)
        elif not self.asked:
            self.sent += 1
            if self.sent >= PLACE_AFTER or frame[1] != wire.VIRTIO_NET_HDR_GSO_NONE:
                self.asked = True
                self._ask()
        if self.held:
            self.flush()
        if port.send(self.dlid, [header, frame]):
            return 0
        return tx_bytes(frame)

    def offer(self, flows: Flows, generation: int, key: bytes, limit: int) -> bool:
        """On the reader thread: lend the queue to the flow table for `key`, while frames
        are placed and nothing is held."""
        queue, port = self.queue, self.port
        unobserved = port.unobserved
        if queue is None or not unobserved or not port.active or self.held:
            return False
        return lend_to_flows(flows, generation, key, queue, FLOW_UD, limit, queue.gro,
                             unobserved)  # fmt: skip

    def flush(self) -> None:
        """The end of the reader's batch (or a full batch): what is held goes through GRO
        into the peer's stack; what cannot be placed any more goes on the wire."""
        held, self.held = self.held, []
        if self in self.holding:
            self.holding.remove(self)
        queue, port = self.queue, self.port
        if queue is None or port.impair is not None or not port.active:
            for header, frame in held:
                port.send(self.dlid, [header, frame])
            return
        headers = {frame[VNET] >> 4: header for header, frame in held}  # by IP version
        merged = wire.gro_receive([frame for _, frame in held]) if len(held) > 1 else None
        frames = [held[0][1]] if merged is None else [vnet + packet for vnet, packet in merged]
        for i, frame in enumerate(frames):
            packets, nbytes = rx_counts(frame)
            if queue.place(frame, nbytes, packets):  # revoked meanwhile: the rest, on the wire
                for rest in frames[i:]:
                    port.send(self.dlid, [headers[rest[VNET] >> 4], rest])
                return
            self._seen(headers[frame[VNET] >> 4], frame)

    def _seen(self, header: bytes, frame: bytes) -> None:
        """A capture of the sending port sees what the wire would have carried."""
        tap = self.port.tap
        if tap is not None:
            tap.record(PLACED, self.port.num, self.dlid, [header, frame])


def flush_held(holding: list[PlaceCell]) -> None:
    """The end of a reader's batch: its cells' held frames go (napi_gro_flush)."""
    while holding:
        holding[-1].flush()


@dataclass
class _Offer:
    """A QP that asked us for placement, and the queue we gave it (None: the wire)."""

    slid: int
    qpn: int
    pkey: int
    queue: ReceiveQueue | None = None
    terms: tuple[bool, int] | None = None  # (a queue, its flags) at the last offer


class UdPlacement:
    def __init__(self, ctx: DriverContext) -> None:
        self.ctx = ctx
        self._cells: dict[_Key, PlaceCell] = {}
        #: By our (port number, QPN): the QPs that asked, by their (LID, QPN).
        self._offers: dict[tuple[int, int], dict[tuple[int, int], _Offer]] = {}

    # ------------------------------------------------------------- the sending side

    def cell(self, iface: Interface, dlid: int, dqpn: int) -> PlaceCell | None:
        """The placement of a new UD route (trio thread); None where the peers cannot
        share a queue (another machine's host)."""
        port = iface.port
        if not port.passes_fds:
            return None
        key = (port.num, iface.qpn, dlid, dqpn)
        cell = self._cells.get(key)
        if cell is None:
            self.prune(iface)
            token = trio.lowlevel.current_trio_token()

            def ask() -> None:  # on the reader thread
                try:
                    token.run_sync_soon(self._ask, iface, key)
                except trio.RunFinishedError:
                    pass  # the daemon is stopping

            cell = self._cells[key] = PlaceCell(port, dlid, ask, iface.placing)
        return cell

    def prune(self, iface: Interface) -> None:
        """Forget the interface's cells that no route uses any more (the peer's path or
        address changed, or the neighbours were reaped or flushed): their queues go back to
        the peers, with the fds they hold."""
        used = {id(getattr(n.ud_route, "cell", None)) for n in iface.neighbours.values()}
        for key, cell in list(self._cells.items()):
            if key[:2] == (iface.port.num, iface.qpn) and id(cell) not in used:
                self._drop_cell(key)

    def _drop_cell(self, key: _Key) -> None:
        cell = self._cells.pop(key)
        if cell.queue is not None:
            cell.queue.release()
            cell.queue = None

    def _ask(self, iface: Interface, key: _Key) -> None:
        """PLACE_REQUEST, on the trio thread (a callback there must never raise)."""
        try:
            if self._cells.get(key) is None or not self.ctx.registered(iface):
                return
            port = iface.port
            msg = wire.PlaceMessage(wire.PLACE_REQUEST, port.lid, iface.qpn, key[3],
                                    qp_pkey(iface))  # fmt: skip
            if port.send_placement(key[2], msg.pack()):
                cell = self._cells[key]
                cell.sent, cell.asked = 0, False  # not sent: asked again after PLACE_AFTER
        except Exception:
            self.ctx.log.exception("asking for a UD placement failed")

    def _on_offer(self, fport: FabricPort, msg: wire.PlaceMessage, fds: Sequence[int]) -> None:
        cell = self._cells.get((fport.num, msg.src_qpn, msg.slid, msg.dst_qpn))
        queue = RemoteQueue.from_fds(fds)
        if queue is not None:
            self.ctx.work.spawn(self._watch, queue)
        if cell is None:
            if queue is not None:
                queue.release()
            return
        old, cell.queue = cell.queue, queue
        if old is not None:
            old.release()

    async def _watch(self, queue: RemoteQueue) -> None:
        """A queue's life; when the receiving process died, its cells go back to the wire."""
        if await queue.watch():
            for cell in self._cells.values():
                if cell.queue is queue:
                    cell.queue = None
                    cell.sent, cell.asked = 0, False  # a restarted peer is asked again

    # ------------------------------------------------------------- the receiving side

    def _on_request(self, fport: FabricPort, msg: wire.PlaceMessage) -> None:
        iface = self.ctx.by_qpn.get((fport.num, msg.dst_qpn))
        tables = fport.pkey_tables
        if iface is None or (tables is not None and msg.pkey not in tables.get(msg.slid, ())):
            return
        offers = self._offers.setdefault((fport.num, iface.qpn), {})
        offer = offers.get((msg.slid, msg.src_qpn))
        if offer is None:
            offer = offers[(msg.slid, msg.src_qpn)] = _Offer(msg.slid, msg.src_qpn, msg.pkey)
        offer.pkey = msg.pkey
        if not self._offer(iface, offer):
            del offers[(msg.slid, msg.src_qpn)]

    def _placeable(self, iface: Interface, pkey: int) -> bool:
        """Whether what the QP sends would reach the stack as the receive thread delivers
        it (ib.UdFastRx): nothing for trio to hold, trace or refuse."""
        fport = iface.port
        return (fport.active and iface.opened and not iface.coalesce_usecs
                and not self.ctx.log.data and fport.pkey_index(pkey) is not None
                and wire.pkeys_match(qp_pkey(iface), pkey))  # fmt: skip

    def _offer(self, iface: Interface, offer: _Offer, *, again: bool = False) -> bool:
        """Offer a queue, or none; False if the asker is gone. `again`: only if what the
        receiver would offer changed."""
        flags = FLAG_GRO if gro_enabled(iface) else 0
        terms = (self._placeable(iface, offer.pkey), flags)
        if again and terms == offer.terms:
            return True
        offer.terms = terms
        self._revoke(iface, offer)
        fds: list[int] = []
        if terms[0]:
            offer.queue = ReceiveQueue(self.ctx.netdevs.sink(iface.link), flags=flags)
            iface.placed.append(offer.queue)
            fds = offer.queue.fds
        port = iface.port
        msg = wire.PlaceMessage(wire.PLACE_OFFER, port.lid, offer.qpn, iface.qpn, offer.pkey)
        if port.send_placement(offer.slid, msg.pack(), fds):
            self._revoke(iface, offer)
            return False
        return True

    @staticmethod
    def _revoke(iface: Interface, offer: _Offer) -> None:
        """The queue's sender stops at its next frame; what it placed stays counted."""
        queue, offer.queue = offer.queue, None
        if queue is not None:
            iface.placed.remove(queue)
            packets, nbytes = queue.close()
            iface.stats["rx_packets"] += packets
            iface.stats["rx_bytes"] += nbytes

    def changed(self, iface: Interface) -> None:
        """Something that decides how the interface receives changed: offer again where
        the offer changes; an asker that is gone is forgotten."""
        offers = self._offers.get((iface.port.num, iface.qpn), {})
        for key, offer in list(offers.items()):
            if not self._offer(iface, offer, again=True):
                del offers[key]

    def port_changed(self, fport: FabricPort) -> None:
        for iface in list(self.ctx.interfaces.values()):
            if iface.port is fport:
                self.changed(iface)

    def heard(self, iface: Interface, dlid: int, qpn: int) -> float:
        """When the QP at (dlid, qpn) last placed into the interface, in trio time."""
        offers = self._offers.get((iface.port.num, iface.qpn))
        offer = offers.get((dlid, qpn)) if offers else None
        if offer is None or offer.queue is None:
            return -math.inf
        return trio.current_time() - (time.monotonic() - offer.queue.placed_at())

    def gone(self, iface: Interface) -> None:
        """The interface is unregistered: its queues are revoked, its cells released."""
        port = iface.port
        for offer in self._offers.pop((port.num, iface.qpn), {}).values():
            self._revoke(iface, offer)  # and the asker hears it: back to the wire, for good
            msg = wire.PlaceMessage(wire.PLACE_OFFER, port.lid, offer.qpn, iface.qpn, offer.pkey)
            port.send_placement(offer.slid, msg.pack())
        for key in [k for k in self._cells if k[:2] == (iface.port.num, iface.qpn)]:
            self._drop_cell(key)

    # ------------------------------------------------------------- messages

    def receive(self, fport: FabricPort, data: memoryview, fds: Sequence[int]) -> None:
        """A placement message that reached the port (trio thread)."""
        msg = wire.PlaceMessage.unpack(data)
        if msg is None:
            return
        if msg.op == wire.PLACE_REQUEST:
            self._on_request(fport, msg)
        else:
            self._on_offer(fport, msg, fds)
