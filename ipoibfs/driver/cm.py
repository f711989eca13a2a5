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
from typing import TYPE_CHECKING

import trio

from .. import wire
from ..fabric import FabricPort
from ..fabric.placement import ReceiveQueue, RemoteQueue
from .interface import Interface, Neighbour

if TYPE_CHECKING:
    from .driver import IPoIBDriver

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
    def __init__(self, driver: IPoIBDriver) -> None:
        self.driver = driver
        self._comm_ids = itertools.count(1)
        self._tx: dict[int, CmTx] = {}  # by comm ID
        self._rx: dict[int, CmRx] = {}  # by our RC QPN

    # ------------------------------------------------------------- active side

    def xmit(self, iface: Interface, neigh: Neighbour, frame: bytes, proto: int) -> None:
        """ipoib_cm_send, or start the connection and queue (ipoib_cm_create_tx)."""
        tx = neigh.cm
        if tx is not None and tx.connected:
            self._send(tx, frame)
            return
        if tx is None:
            tx = neigh.cm = CmTx(iface, neigh, next(self._comm_ids),
                                 self.driver.device.alloc_qpn(), neigh.dlid, proto)  # fmt: skip
            self._tx[tx.comm_id] = tx
            self.driver.spawn(self._connect, tx)
        if len(tx.queue) >= MAX_QUEUE:
            iface.stats["tx_dropped"] += 1
            return
        tx.queue.append(frame)

    def _send(self, tx: CmTx, frame: bytes) -> None:
        iface = tx.iface
        length = len(frame) - wire.VNET_HDR_LEN
        if length > tx.mtu:
            # Same warning and accounting as UD, then the local ICMP (ipoib_cm_skb_too_long).
            iface.stats["tx_dropped"] += 1
            iface.stats["tx_errors"] += 1
            self.driver.log.warn(
                iface.name,
                f"packet len {length + wire.IPOIB_ENCAP_LEN} "
                f"(> {tx.mtu}) too long to send, dropping\n",
            )
            self.driver.datapath.pmtu_report(iface, frame[wire.VNET_HDR_LEN :])
            return
        log = self.driver.log
        if log.cm_data:
            size = length + wire.IPOIB_ENCAP_LEN
            log.dbg_data(iface.name, f"sending packet: head 0x{tx.sent:x} length {size} "
                                     f"connection 0x{tx.qpn:x}\n")  # fmt: skip
        tx.sent += 1
        if tx.placement is not None and self._placeable(tx, frame):
            error = tx.placement.place(frame, length)
        elif iface.port.send(tx.dlid, [tx.header, frame]):
            error = 0
        else:
            error = iface.port.last_error
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

    @staticmethod
    def place(neigh: Neighbour, frame: bytes) -> int:
        """ipoib_cm_send's common case, from the netdev's reader thread (DataPath.xmit_fast):
        into the peer's queue over an established connection. The bytes to count, or 0 if
        the packet must take the full path (`xmit`) instead."""
        tx = neigh.cm
        length = len(frame) - wire.VNET_HDR_LEN
        if tx is None or not tx.connected or length > tx.mtu:
            return 0
        placement = tx.placement
        if placement is None or not ConnectedMode._placeable(tx, frame):
            return 0
        if placement.place(frame, length):
            return 0
        return length + wire.IPOIB_ENCAP_LEN

    @staticmethod
    def _placeable(tx: CmTx, frame: bytes) -> bool:
        """IP packets the receiving driver would only count and hand to its stack; not
        neighbour discovery, which it rewrites and learns from."""
        return tx.proto == wire.ETH_P_IP or wire.nd_info(frame[wire.VNET_HDR_LEN :]) is None

    async def _watch(self, tx: CmTx, placement: RemoteQueue) -> None:
        """Let go of the peer's queue as soon as its process dies, so that its netdev goes;
        the next send then fails as towards any dead peer."""
        if await placement.watch() and tx.placement is placement:
            tx.placement = None

    async def _connect(self, tx: CmTx) -> None:
        """ipoib_cm_tx_init + ipoib_cm_send_req, then wait for the REP."""
        iface = tx.iface
        peer_qpn = int.from_bytes(tx.neigh.hwaddr[1:4], "big")
        gid = wire.format_gid_sysfs(tx.neigh.hwaddr[4:])
        self.driver.log.dbg(iface.name, f"Request connection 0x{tx.qpn:x} for gid {gid} "
                                        f"qpn 0x{peer_qpn:x}\n")  # fmt: skip
        self._send_cm(
            iface.port,
            tx.dlid,
            wire.CM_REQ,
            tx.comm_id,
            0,
            wire.IPOIB_CM_IETF_ID | peer_qpn,
            tx.qpn,
            0,
            wire.cm_data(iface.qpn),
        )
        with trio.move_on_after(REQ_TIMEOUT):
            await tx.settled.wait()
        if not tx.settled.is_set():
            self.driver.log.dbg(iface.name, f"CM error {IB_CM_REQ_ERROR}.\n")
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
        if tx.placement is not None:
            tx.placement.release()
            tx.placement = None
        if notify and tx.connected:
            self._send_cm(tx.iface.port, tx.dlid, wire.CM_DREQ, tx.comm_id, tx.remote_qpn, 0,
                          tx.qpn, 0, bytes(8))  # fmt: skip

    def _destroy_rx(self, rx: CmRx, *, notify: bool = True) -> None:
        """Destroying the passive cm_id sends the DREQ; what was placed stays counted."""
        del self._rx[rx.qpn]
        if rx.queue is not None:
            iface = rx.iface
            iface.placed.remove(rx.queue)
            packets, nbytes = rx.queue.counts()
            iface.stats["rx_packets"] += packets
            iface.stats["rx_bytes"] += nbytes
            rx.queue.close()
        if notify:
            self._send_cm(rx.iface.port, rx.slid, wire.CM_DREQ, rx.qpn, rx.remote_comm, 0,
                          rx.qpn, 0, bytes(8))  # fmt: skip

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

    def _send_cm(self, fport: FabricPort, dlid: int, kind: int, local_id: int, remote_id: int,
                 service_id: int, qpn: int, reason: int, private: bytes,
                 fds: list[int] = ()) -> None:  # fmt: skip
        message = wire.CM_MESSAGE.pack(wire.KIND_CM, kind, fport.port.lid, local_id, remote_id,
                                       service_id, qpn, reason, private)  # fmt: skip
        fport.send(dlid, [message], fds)

    def receive(self, fport: FabricPort, data: memoryview, fds: Sequence[int]) -> None:
        if data[0] == wire.KIND_RC:
            self._receive_rc(data)
        elif data[0] == wire.KIND_CM and len(data) >= wire.CM_MESSAGE.size:
            _, kind, slid, local_id, remote_id, service_id, qpn, reason, private = (
                wire.CM_MESSAGE.unpack_from(data))  # fmt: skip
            if kind == wire.CM_REQ:
                self._on_req(fport, slid, local_id, service_id, qpn, bytes(private))
            elif kind == wire.CM_REP:
                self._on_rep(fport, slid, remote_id, local_id, qpn, bytes(private), fds)
            elif kind == wire.CM_REJ:
                tx = self._tx.get(remote_id)
                if tx is not None:
                    self.driver.log.dbg(tx.iface.name, f"CM error {IB_CM_REJ_RECEIVED}.\n")
                    self._fail(tx)
            elif kind == wire.CM_DREQ:
                self._on_dreq(slid, remote_id, qpn)

    def _on_dreq(self, slid: int, remote_id: int, remote_qpn: int) -> None:
        """A DREQ for one of our RX connections (the active side went) or TX connections
        (the passive side went: ipoib_cm_tx_handler, the connection is reaped)."""
        rx = self._rx.get(remote_id)
        if rx is not None and rx.slid == slid and rx.remote_qpn == remote_qpn:
            self._destroy_rx(rx, notify=False)
            return
        tx = self._tx.get(remote_id)
        if tx is not None and tx.dlid == slid and tx.remote_qpn == remote_qpn:
            self.driver.log.dbg(tx.iface.name, "DREQ received.\n")
            self.destroy_tx(tx)

    def _on_req(self, fport: FabricPort, slid: int, comm_id: int, service_id: int,
                remote_qpn: int, private: bytes) -> None:  # fmt: skip
        """ipoib_cm_req_handler: the listener of the service ID accepts, if it can."""
        ud_qpn = service_id & 0xFFFFFF
        iface = self.driver.datapath.by_qpn(fport, ud_qpn)
        listening = (
            iface is not None
            and iface.cm_supported
            and service_id >> 24 == (wire.IPOIB_CM_IETF_ID >> 24)
        )
        if not listening:
            self._send_cm(fport, slid, wire.CM_REJ, 0, comm_id, service_id, 0,
                          wire.IB_CM_REJ_INVALID_SERVICE_ID, bytes(8))  # fmt: skip
            return
        self.driver.log.dbg(iface.name, "REQ arrived\n")
        if not iface.port.port.profile.srq:
            passive = sum(1 for rx in self._rx.values() if rx.iface is iface)
            if passive >= self.driver.params["max_nonsrq_conn_qp"]:
                self._send_cm(fport, slid, wire.CM_REJ, 0, comm_id, service_id, 0,
                              wire.IB_CM_REJ_NO_QP, bytes(8))  # fmt: skip
                return
        rx = CmRx(iface, self.driver.device.alloc_qpn(), slid, remote_qpn, comm_id,
                  self.driver.datapath.now)  # fmt: skip
        self._rx[rx.qpn] = rx
        if fport.passes_fds:
            rx.queue = ReceiveQueue(self.driver.netdevs.sink(iface.link))
            iface.placed.append(rx.queue)
        self._send_cm(fport, slid, wire.CM_REP, rx.qpn, comm_id, service_id, rx.qpn, 0,
                      wire.cm_data(iface.qpn), rx.queue.fds if rx.queue else [])  # fmt: skip

    def _on_rep(self, fport: FabricPort, slid: int, comm_id: int, remote_comm: int,
                remote_qpn: int, private: bytes, fds: Sequence[int]) -> None:  # fmt: skip
        """ipoib_cm_rep_handler: check the peer's receive size, send RTU, flush the queue."""
        tx = self._tx.get(comm_id)
        if tx is None or tx.connected:
            return
        self.driver.log.dbg(tx.iface.name, "REP received.\n")
        _, mtu = wire.parse_cm_data(private)
        if mtu <= wire.IPOIB_ENCAP_LEN:
            self.driver.log.warn(tx.iface.name, f"Rejecting connection: mtu {mtu} <= "
                                                f"{wire.IPOIB_ENCAP_LEN}\n")  # fmt: skip
            self._send_cm(fport, slid, wire.CM_REJ, comm_id, remote_comm, 0, tx.qpn,
                          wire.IB_CM_REJ_CONSUMER_DEFINED, bytes(8))  # fmt: skip
            self._fail(tx)
            return
        tx.remote_qpn = remote_qpn
        tx.mtu = mtu - wire.IPOIB_ENCAP_LEN
        tx.header = wire.RC_HEADER.pack(wire.KIND_RC, fport.port.lid, tx.dlid, tx.qpn,
                                        remote_qpn) + wire.ipoib_header(tx.proto)  # fmt: skip
        tx.connected = True
        tx.settled.set()
        tx.placement = RemoteQueue.from_fds(fds)
        if tx.placement is not None:
            self.driver.spawn(self._watch, tx, tx.placement)
        self._send_cm(fport, slid, wire.CM_RTU, comm_id, remote_comm, 0, tx.qpn, 0, bytes(8))
        queued, tx.queue = tx.queue, []
        for frame in queued:
            self._send(tx, frame)

    def _receive_rc(self, data: memoryview) -> None:
        if len(data) < wire.RC_VNET_OFFSET + wire.VNET_HDR_LEN:
            return
        _, slid, _, src_qpn, dst_qpn = wire.RC_HEADER.unpack_from(data)
        rx = self._rx.get(dst_qpn)
        if rx is None or rx.slid != slid or rx.remote_qpn != src_qpn:
            return
        rx.last_rx = self.driver.datapath.now
        off = wire.RC_HEADER.size
        proto = int.from_bytes(data[off : off + 2], "big")
        self.driver.datapath.deliver(rx.iface, proto, data[wire.RC_VNET_OFFSET :], False)
