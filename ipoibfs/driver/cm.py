"""Connected mode (ipoib_cm.c, RFC 4755): RC connections set up with the CM's REQ/REP/RTU.

Each direction of traffic has its own connection, as in the driver: the sender is the active
side (a TX connection per neighbour), the receiver the passive side (an RX connection). Every
interface listens on service ID 0x1000000000000000 | its UD QPN, whatever its own mode.

Between hosts of one machine the REP also hands over the receiver's queue, and the sender
places IP packets into the receiver's stack directly (fabric/placement.py), as an HCA writes
into receive buffers; the rest (ARP, neighbour discovery) still crosses the wire as messages
for the receiver to handle.
"""

from __future__ import annotations

import errno
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from .. import wire
from ..fabric.placement import FLOW_RC, ReceiveQueue, RemoteQueue
from ..fabric.port import FabricPort
from .context import DriverContext
from .ib import VNET, Deliver, UdQp
from .interface import Flows, Interface, Neighbour, lend_to_flows, publish_routes

#: How long an active side waits for a REP (the CM's retries, shortened).
REQ_TIMEOUT = 5.0
#: IPOIB_CM_RX_TIMEOUT: an RX connection idle this long is dropped by the stale task.
RX_TIMEOUT = 2 * 256.0
#: A TX connection waits with at most this many packets (the neighbour's queue).
MAX_QUEUE = 3
IB_WC_RETRY_EXC_ERR = 12  # the completion status of a send to a peer that is gone
IB_CM_REQ_ERROR, IB_CM_REJ_RECEIVED = 0, 11  # enum ib_cm_event_type
#: Send errors that mean the peer's side of the connection is gone (a failed completion):
#: its socket or process, its netdev (EBADFD), its interface down (EIO), the connection
#: destroyed (ECONNRESET).
PEER_GONE = (errno.ENOENT, errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.EBADFD, errno.EIO,
             errno.ECONNRESET)  # fmt: skip


class RcRoute:
    """An established TX connection, for the reader thread (interface.Route): into the
    peer's queue when it is on this machine, else as RC messages on the wire."""

    __slots__ = ("port", "dlid", "header", "mtu", "placement", "used", "offered")

    def __init__(self, port: FabricPort, dlid: int, header: bytes, mtu: int,
                 placement: RemoteQueue | None) -> None:  # fmt: skip
        self.port, self.dlid, self.header, self.mtu = port, dlid, header, mtu
        self.placement = placement
        self.used = 0.0
        self.offered = -1

    def offer(self, flows: Flows, generation: int, key: bytes) -> bool:
        placement, unobserved = self.placement, self.port.unobserved
        if placement is None or not unobserved:
            return False
        return lend_to_flows(flows, generation, key, placement, FLOW_RC, self.mtu, False,
                             unobserved)  # fmt: skip

    def send(self, frame: bytes) -> int:
        length = len(frame) - VNET
        if length > self.mtu:
            return 0  # the full path drops it and reports the PMTU
        placement = self.placement
        if placement is not None and self.port.impair is None:  # an impaired link: the wire
            error = placement.place(frame, length)
        else:
            error = self.port.send(self.dlid, [self.header, frame])
        return 0 if error else length + wire.IPOIB_ENCAP_LEN


@dataclass
class CmTx:
    """struct ipoib_cm_tx: our active connection to one neighbour."""

    iface: Interface
    neigh: Neighbour
    comm_id: int
    qpn: int  # our RC QPN
    dlid: int
    proto: int
    remote_qpn: int = 0
    mtu: int = 0
    connected: bool = False
    header: bytes = b""
    queue: list[bytes] = field(default_factory=list)
    settled: trio.Event = field(default_factory=trio.Event)  # connected, or given up
    placement: RemoteQueue | None = None  # the peer's receive queue, if on this machine
    sent: int = 0  # sends posted (tx_head)

    def route(self) -> RcRoute:
        return RcRoute(self.iface.port, self.dlid, self.header, self.mtu, self.placement)


@dataclass
class CmRx:
    """struct ipoib_cm_rx: a passive connection a peer made to us."""

    iface: Interface
    qpn: int  # our RC QPN
    slid: int
    remote_qpn: int
    remote_comm: int  # the active side's communication ID
    last_rx: float = 0.0
    queue: ReceiveQueue | None = None  # handed to the active side for direct placement
    placed: int = 0  # packets placed at the last look (activity for the stale task)


class ConnectedMode:
    def __init__(self, ctx: DriverContext, ud: UdQp) -> None:
        self.ctx = ctx
        self.ud = ud
        #: The stack's receive path for what arrives over RC (given by the driver).
        self.deliver: Deliver = lambda iface, proto, frame, multicast: None
        self._comm_ids = itertools.count(1)
        self._tx: dict[int, CmTx] = {}  # by comm ID
        self._rx: dict[int, CmRx] = {}  # by our RC QPN

    def connections(self) -> list[tuple[int, Interface]]:
        """(our RC QPN, interface) of every connection, active and passive (for a capture)."""
        active = [(tx.qpn, tx.iface) for tx in self._tx.values()]
        return active + [(rx.qpn, rx.iface) for rx in self._rx.values()]

    # ------------------------------------------------------------- active side

    def xmit(self, iface: Interface, neigh: Neighbour, frame: bytes, proto: int) -> None:
        """ipoib_cm_send, or start the connection and queue (ipoib_cm_create_tx)."""
        tx = neigh.cm
        if tx is not None and tx.connected:
            self._send(tx, frame)
            return
        if tx is None:
            tx = neigh.cm = CmTx(iface, neigh, next(self._comm_ids),
                                 self.ctx.device.alloc_qpn(), neigh.dlid, proto)  # fmt: skip
            self._tx[tx.comm_id] = tx
            self.ctx.work.spawn(self._connect, tx)
        if len(tx.queue) >= MAX_QUEUE:
            iface.stats["tx_dropped"] += 1
            return
        tx.queue.append(frame)

    def _send(self, tx: CmTx, frame: bytes) -> None:
        iface = tx.iface
        log = self.ctx.log
        length = len(frame) - VNET
        if length > tx.mtu:
            # Same warning and accounting as UD, then the local ICMP (ipoib_cm_skb_too_long).
            iface.stats["tx_dropped"] += 1
            iface.stats["tx_errors"] += 1
            log.warn(iface.name, f"packet len {length + wire.IPOIB_ENCAP_LEN} "
                                 f"(> {tx.mtu}) too long to send, dropping\n")  # fmt: skip
            self.ud.pmtu_report(iface, frame[VNET:])
            return
        if log.cm_data:
            size = length + wire.IPOIB_ENCAP_LEN
            log.dbg_data(iface.name, f"sending packet: head 0x{tx.sent:x} length {size} "
                                     f"connection 0x{tx.qpn:x}\n")  # fmt: skip
        tx.sent += 1
        if tx.placement is not None and iface.port.impair is None and self._placeable(tx, frame):
            error = tx.placement.place(frame, length)
        else:
            error = iface.port.send(tx.dlid, [tx.header, frame])
        if not error:
            iface.stats["tx_packets"] += 1
            iface.stats["tx_bytes"] += length + wire.IPOIB_ENCAP_LEN
            return
        iface.stats["tx_dropped"] += 1
        if error in PEER_GONE:
            # A failed RC send completion: the peer is gone (ipoib_cm_handle_tx_wc).
            status = f"status={IB_WC_RETRY_EXC_ERR}, wrid={tx.sent} vend_err 0"
            log.dbg(iface.name, f"ipoib_cm_handle_tx_wc: failed cm send event ({status})\n")
            self.destroy_tx(tx)
            for addr, neigh in list(iface.neighbours.items()):
                if neigh is tx.neigh:
                    del iface.neighbours[addr]
            publish_routes(iface)

    @staticmethod
    def _placeable(tx: CmTx, frame: bytes) -> bool:
        """IP packets the receiving driver would only count and hand to its stack; not
        neighbour discovery, which it rewrites and learns from."""
        return tx.proto == wire.ETH_P_IP or wire.nd_info(frame[VNET:]) is None

    async def _watch(self, tx: CmTx, placement: RemoteQueue) -> None:
        """Let go of the peer's queue as soon as its process dies, so that its netdev goes;
        the next send then fails as towards any dead peer."""
        if await placement.watch() and tx.placement is placement:
            tx.placement = None
            if tx.neigh.cm is tx:
                tx.neigh.rc_route = tx.route()
                publish_routes(tx.iface)

    async def _connect(self, tx: CmTx) -> None:
        """ipoib_cm_tx_init + ipoib_cm_send_req, then wait for the REP."""
        iface = tx.iface
        peer_qpn = int.from_bytes(tx.neigh.hwaddr[1:4], "big")
        gid = wire.format_gid_sysfs(tx.neigh.hwaddr[4:])
        self.ctx.log.dbg(iface.name, f"Request connection 0x{tx.qpn:x} for gid {gid} "
                                     f"qpn 0x{peer_qpn:x}\n")  # fmt: skip
        port = iface.port
        self._send_cm(
            port,
            tx.dlid,
            wire.CmReq(
                slid=port.lid,
                local_comm_id=tx.comm_id,
                service_id=wire.IPOIB_CM_IETF_ID | peer_qpn,
                qpn=tx.qpn,
                private=wire.CmData(iface.qpn),
            ),
        )
        with trio.move_on_after(REQ_TIMEOUT):
            await tx.settled.wait()
        if not tx.settled.is_set():
            self.ctx.log.dbg(iface.name, f"CM error {IB_CM_REQ_ERROR}.\n")
            self._fail(tx)

    def _fail(self, tx: CmTx) -> None:
        tx.iface.stats["tx_dropped"] += len(tx.queue)
        tx.queue.clear()
        self.destroy_tx(tx)

    def destroy_tx(self, tx: CmTx, *, notify: bool = False) -> None:
        """ipoib_cm_destroy_tx: the neighbour goes back to resolving its connection."""
        self._tx.pop(tx.comm_id, None)
        tx.settled.set()
        if tx.neigh.cm is tx:
            tx.neigh.cm = None
            tx.neigh.rc_route = None
            publish_routes(tx.iface)
        if tx.placement is not None:
            tx.placement.release()
            tx.placement = None
        if notify and tx.connected:
            port = tx.iface.port
            self._send_cm(port, tx.dlid, wire.CmDreq(
                slid=port.lid, local_comm_id=tx.comm_id, remote_comm_id=tx.remote_qpn,
                qpn=tx.qpn))  # fmt: skip

    def _destroy_rx(self, rx: CmRx, *, notify: bool = True) -> None:
        """Destroying the passive cm_id sends the DREQ; what was placed stays counted."""
        del self._rx[rx.qpn]
        iface = rx.iface
        if rx.queue is not None:
            iface.placed.remove(rx.queue)
            packets, nbytes = rx.queue.close()
            iface.stats["rx_packets"] += packets
            iface.stats["rx_bytes"] += nbytes
        if notify:
            port = iface.port
            self._send_cm(port, rx.slid, wire.CmDreq(
                slid=port.lid, local_comm_id=rx.qpn, remote_comm_id=rx.remote_comm,
                qpn=rx.qpn))  # fmt: skip

    def flush(self, iface: Interface) -> None:
        """Paths flushed (mode change, down): every connection of the interface goes."""
        for tx in [t for t in self._tx.values() if t.iface is iface]:
            tx.iface.stats["tx_dropped"] += len(tx.queue)
            self.destroy_tx(tx, notify=True)
        for rx in [rx for rx in self._rx.values() if rx.iface is iface]:
            self._destroy_rx(rx)

    def stale(self, now: float) -> None:
        """ipoib_cm_stale_task: RX connections idle for IPOIB_CM_RX_TIMEOUT are dropped."""
        for rx in list(self._rx.values()):
            if rx.queue is not None and rx.queue.counts()[0] != rx.placed:
                rx.placed = rx.queue.counts()[0]
                rx.last_rx = now
            if now - rx.last_rx > RX_TIMEOUT:
                self._destroy_rx(rx)

    # ------------------------------------------------------------- messages

    @staticmethod
    def _send_cm(fport: FabricPort, dlid: int, message: wire.CmMessage,
                 fds: Sequence[int] = ()) -> None:  # fmt: skip
        fport.send(dlid, [message.pack()], fds)

    def receive(self, fport: FabricPort, data: memoryview, fds: Sequence[int]) -> None:
        """A CM MAD or an RC message that reached this port."""
        if data[0] == wire.KIND_RC:
            self._receive_rc(data)
            return
        message = wire.unpack_cm(data)
        if isinstance(message, wire.CmReq):
            self._on_req(fport, message)
        elif isinstance(message, wire.CmRep):
            self._on_rep(fport, message, fds)
        elif isinstance(message, wire.CmRej):
            tx = self._tx.get(message.remote_comm_id)
            if tx is not None:
                self.ctx.log.dbg(tx.iface.name, f"CM error {IB_CM_REJ_RECEIVED}.\n")
                self._fail(tx)
        elif isinstance(message, wire.CmDreq):
            self._on_dreq(message)

    def _on_dreq(self, dreq: wire.CmDreq) -> None:
        """A DREQ for one of our RX connections (the active side went) or TX connections
        (the passive side went: ipoib_cm_tx_handler, the connection is reaped)."""
        rx = self._rx.get(dreq.remote_comm_id)
        if rx is not None and rx.slid == dreq.slid and rx.remote_qpn == dreq.qpn:
            self._destroy_rx(rx, notify=False)
            return
        tx = self._tx.get(dreq.remote_comm_id)
        if tx is not None and tx.dlid == dreq.slid and tx.remote_qpn == dreq.qpn:
            self.ctx.log.dbg(tx.iface.name, "DREQ received.\n")
            self.destroy_tx(tx)

    def _reject(self, fport: FabricPort, req: wire.CmReq, reason: int) -> None:
        self._send_cm(
            fport,
            req.slid,
            wire.CmRej(
                slid=fport.lid,
                local_comm_id=0,
                remote_comm_id=req.local_comm_id,
                service_id=req.service_id,
                qpn=0,
                reason=reason,
            ),
        )

    def _on_req(self, fport: FabricPort, req: wire.CmReq) -> None:
        """ipoib_cm_req_handler: the listener of the service ID accepts, if it can."""
        iface = self.ctx.by_qpn.get((fport.num, req.service_id & 0xFFFFFF))
        if (iface is None or not iface.cm_supported
                or req.service_id >> 24 != wire.IPOIB_CM_IETF_ID >> 24):  # fmt: skip
            self._reject(fport, req, wire.IB_CM_REJ_INVALID_SERVICE_ID)
            return
        self.ctx.log.dbg(iface.name, "REQ arrived\n")
        if not iface.port.profile.srq:
            passive = sum(1 for rx in self._rx.values() if rx.iface is iface)
            if passive >= self.ctx.params["max_nonsrq_conn_qp"]:
                self._reject(fport, req, wire.IB_CM_REJ_NO_QP)
                return
        rx = CmRx(iface, self.ctx.device.alloc_qpn(), req.slid, req.qpn, req.local_comm_id,
                  self.ctx.clock.now)  # fmt: skip
        self._rx[rx.qpn] = rx
        if fport.passes_fds:
            rx.queue = ReceiveQueue(self.ctx.netdevs.sink(iface.link))
            iface.placed.append(rx.queue)
        rep = wire.CmRep(
            slid=fport.lid,
            local_comm_id=rx.qpn,
            remote_comm_id=req.local_comm_id,
            service_id=req.service_id,
            qpn=rx.qpn,
            private=wire.CmData(iface.qpn),
        )
        self._send_cm(fport, req.slid, rep, rx.queue.fds if rx.queue else [])

    def _on_rep(self, fport: FabricPort, rep: wire.CmRep, fds: Sequence[int]) -> None:
        """ipoib_cm_rep_handler: check the peer's receive size, send RTU, flush the queue."""
        tx = self._tx.get(rep.remote_comm_id)
        if tx is None or tx.connected:
            return
        log = self.ctx.log
        log.dbg(tx.iface.name, "REP received.\n")
        mtu = rep.private.mtu
        lid = fport.lid
        if mtu <= wire.IPOIB_ENCAP_LEN:
            log.warn(tx.iface.name, f"Rejecting connection: mtu {mtu} <= "
                                    f"{wire.IPOIB_ENCAP_LEN}\n")  # fmt: skip
            self._send_cm(
                fport,
                rep.slid,
                wire.CmRej(
                    slid=lid,
                    local_comm_id=tx.comm_id,
                    remote_comm_id=rep.local_comm_id,
                    service_id=0,
                    qpn=tx.qpn,
                    reason=wire.IB_CM_REJ_CONSUMER_DEFINED,
                ),
            )
            self._fail(tx)
            return
        tx.remote_qpn = rep.qpn
        tx.mtu = mtu - wire.IPOIB_ENCAP_LEN
        rc = wire.RcHeader(slid=lid, dlid=tx.dlid, src_qpn=tx.qpn, dst_qpn=rep.qpn)
        tx.header = rc.pack() + wire.ipoib_header(tx.proto)
        tx.connected = True
        tx.settled.set()
        tx.placement = RemoteQueue.from_fds(fds, port=fport, header=tx.header)
        if tx.placement is not None:
            self.ctx.work.spawn(self._watch, tx, tx.placement)
        if tx.neigh.cm is tx:
            tx.neigh.rc_route = tx.route()
            publish_routes(tx.iface)
        self._send_cm(
            fport,
            rep.slid,
            wire.CmRtu(
                slid=lid, local_comm_id=tx.comm_id, remote_comm_id=rep.local_comm_id, qpn=tx.qpn
            ),
        )
        queued, tx.queue = tx.queue, []
        for frame in queued:
            self._send(tx, frame)

    def _receive_rc(self, data: memoryview) -> None:
        if len(data) < wire.RC_VNET_OFFSET + VNET:
            return
        hdr = wire.RcHeader.unpack_from(data)
        rx = self._rx.get(hdr.dst_qpn)
        if rx is None or rx.slid != hdr.slid or rx.remote_qpn != hdr.src_qpn:
            return
        rx.last_rx = self.ctx.clock.now
        off = wire.RcHeader.SIZE
        proto = int.from_bytes(data[off : off + 2], "big")
        self.deliver(rx.iface, proto, data[wire.RC_VNET_OFFSET :], False)
