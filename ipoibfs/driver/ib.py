"""ipoib_ib.c: the UD QP (ipoib_send, ipoib_ib_handle_rx_wc) and the port's events.

A frame is what the TUN hands over and takes back: the 10-byte offload metadata
(virtio_net_hdr), then the IP packet, which may be a TCP/IPv4 super-packet for LSO.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import trio

from .. import wire
from ..errors import KernelError
from ..fabric.port import FabricPort
from .context import DriverContext
from .interface import Flows, Interface, McastEntry, is_ipv4_group

VNET = wire.VNET_HDR_LEN
RX_MIN = wire.UD_VNET_OFFSET + VNET
UD_HEADER_SIZE = wire.UdHeader.SIZE

#: NAPI_POLL_WEIGHT: a batch held for GRO is flushed at the latest after this many frames.
NAPI_WEIGHT = 64
GSO_NONE = wire.VIRTIO_NET_HDR_GSO_NONE
IPPROTO_TCP = 6

#: The stack's receive path for a frame of an interface: (iface, EtherType, frame, multicast).
Deliver = Callable[[Interface, int, memoryview, bool], None]


def qp_pkey(iface: Interface) -> int:
    """The P_Key of the interface's UD QP: the port's table entry at its P_Key index.

    A limited member's packets carry the limited P_Key, whatever the interface's pkey file
    says; two limited members therefore cannot talk (IBA 10.9.3)."""
    port = iface.port
    index = port.pkey_index(iface.pkey)
    return port.pkeys[index] if index is not None else 0


def pkey_present(iface: Interface) -> bool:
    """ipoib_pkey_dev_check_presence: the interface's P_Key is in the port's table."""
    return bool(iface.pkey & wire.PKEY_MASK) and iface.port.pkey_index(iface.pkey) is not None


def parent_pkey(fport: FabricPort) -> int:
    """ipoib_add_port / update_parent_pkey: a parent takes the P_Key at index 0."""
    return fport.pkeys[0] or wire.DEFAULT_PKEY


def ud_header(iface: Interface, dlid: int, dqpn: int, dgid: bytes, proto: int) -> bytes:
    """The UD and IPoIB headers of a datagram from the interface's QP."""
    port = iface.port
    header = wire.UdHeader(
        slid=port.lid,
        dlid=dlid,
        src_qpn=iface.qpn,
        dst_qpn=dqpn,
        pkey=qp_pkey(iface),
        qkey=wire.IPOIB_QKEY,
        sgid=port.gid,
        dgid=dgid,
    )
    return header.pack() + wire.ipoib_header(proto)


def tx_bytes(frame: bytes) -> int:
    """What one posted skb adds to tx_bytes: an LSO send counts its payload alone (the
    headers were pulled), any other the packet and the IPoIB header."""
    if frame[1] != wire.VIRTIO_NET_HDR_GSO_NONE:
        return len(frame) - VNET - int.from_bytes(frame[2:4], "little")
    return len(frame) - VNET + wire.IPOIB_ENCAP_LEN


def too_long_for_ud(mcast_mtu: int, frame: bytes) -> bool:
    """Longer than a UD datagram may be (ipoib_send); LSO super-packets are cut by the HCA."""
    return len(frame) - VNET > mcast_mtu and frame[1] == wire.VIRTIO_NET_HDR_GSO_NONE


class Placement(Protocol):
    """A UD route's way into a peer's stack on this machine (udplace.PlaceCell), which
    falls back to the wire itself."""

    def send(self, header: bytes, frame: bytes) -> int:
        """Place or send one frame: the bytes to count as sent, 0 if it was lost."""
        ...

    def offer(self, flows: Flows, generation: int, key: bytes, limit: int) -> bool:
        """Install `key` in the flow table while frames are placed (UdRoute.offer)."""
        ...


class UdRoute:
    """A resolved neighbour over UD, for the reader thread (interface.Route): on the wire,
    or placed into the peer's stack when it is on this machine (udplace.PlaceCell). The
    multicast MTU is taken when it is made: it changes only on a broadcast join, when an
    interface has no neighbours."""

    __slots__ = ("port", "limit", "dlid", "header", "cell", "used", "offered")

    def __init__(self, iface: Interface, dlid: int, header: bytes,
                 cell: Placement | None = None) -> None:  # fmt: skip
        self.port, self.limit, self.dlid, self.header = iface.port, iface.mcast_mtu, dlid, header
        self.cell = cell
        self.used = 0.0
        self.offered = -1

    def offer(self, flows: Flows, generation: int, key: bytes) -> bool:
        cell = self.cell
        return cell is not None and cell.offer(flows, generation, key, self.limit)

    def send(self, frame: bytes) -> int:
        if too_long_for_ud(self.limit, frame):
            return 0  # the full path drops it and reports the PMTU
        if self.cell is not None:
            return self.cell.send(self.header, frame)
        if self.port.send(self.dlid, [self.header, frame]):
            return 0
        return tx_bytes(frame)


class UdQp:
    """The interface's UD QP on the trio thread: posting sends, and the receive completions
    that reach the stack (`deliver`, the stack's own handling, is given by the driver)."""

    def __init__(self, ctx: DriverContext) -> None:
        self.ctx = ctx
        self.deliver: Deliver = lambda iface, proto, frame, multicast: None
        #: The UD header of the datagram being delivered (None while RC delivers): who sent
        #: it, for the neighbour code's reachability confirmations and ARP's pkt_type.
        self.rx: wire.UdHeader | None = None

    # ------------------------------------------------------------- transmit

    def drop(self, iface: Interface) -> None:
        iface.stats["tx_dropped"] += 1

    def count_tx(self, iface: Interface, frame: bytes) -> None:
        iface.stats["tx_packets"] += 1
        iface.stats["tx_bytes"] += tx_bytes(frame)

    def send(self, iface: Interface, dlid: int, header: bytes, frame: bytes) -> None:
        """ipoib_send of a unicast datagram; counted, or dropped if the wire lost it."""
        log = self.ctx.log
        if log.data:
            dqpn = wire.UdHeader.unpack_from(header).dst_qpn
            length = len(frame) - VNET + wire.IPOIB_ENCAP_LEN
            log.dbg_data(iface.name, f"sending packet, length={length} "
                                     f"address={wire.kernel_pointer(header)} "
                                     f"dqpn=0x{dqpn:06x}\n")  # fmt: skip
        if iface.port.send(dlid, [header, frame]):
            self.drop(iface)
        else:
            self.count_tx(iface, frame)

    def send_multicast(self, iface: Interface, entry: McastEntry, proto: int, frame: bytes) -> None:
        """ipoib_send to a joined group: sent once whatever the number of listeners, as
        replication is the switches' work."""
        header = ud_header(iface, entry.mlid, wire.MCAST_QPN, entry.mgid, proto)
        iface.port.send_multicast(entry.mgid, [header, frame])
        self.count_tx(iface, frame)

    def oversize(self, iface: Interface, frame: bytes) -> bool:
        """ipoib_send: a UD packet longer than the multicast MTU is dropped with a warning,
        and in connected mode the local stack is told the multicast MTU (RX emulation of
        ICMP PMTU, ipoib_cm_skb_too_long). LSO super-packets are exempt: the HCA cuts them."""
        if not too_long_for_ud(iface.mcast_mtu, frame):
            return False
        length = len(frame) - VNET
        limit = iface.mcast_mtu + wire.IPOIB_ENCAP_LEN
        self.ctx.log.warn(iface.name, f"packet len {length + wire.IPOIB_ENCAP_LEN} "
                                      f"(> {limit}) too long to send, dropping\n")  # fmt: skip
        iface.stats["tx_dropped"] += 1
        iface.stats["tx_errors"] += 1
        if iface.cm_enabled:
            self.pmtu_report(iface, frame[VNET:])
        return True

    def pmtu_report(self, iface: Interface, packet: bytes) -> None:
        """ipoib_cm_skb_reap: icmp_send refuses multicast and broadcast destinations for
        IPv4; icmpv6_send reports for unicast and multicast alike."""
        if packet[0] >> 4 == 4:
            if is_ipv4_group(iface, packet[16:20]):
                return
            report = wire.icmp_frag_needed(packet, iface.mcast_mtu)
        else:
            report = wire.icmpv6_packet_too_big(packet, iface.mcast_mtu)
        self.ctx.netdevs.write(iface.link, wire.NO_OFFLOAD + report)

    # ------------------------------------------------------------- receive

    def receive(self, fport: FabricPort, data: memoryview) -> None:
        """ipoib_ib_handle_rx_wc for a UD datagram that reached this port: the Q_Key and
        P_Key checks, then the interface its QPN (or multicast group) names."""
        if len(data) < RX_MIN:
            return
        hdr = self.rx = wire.UdHeader.unpack_from(data)
        pkey = hdr.pkey
        if hdr.qkey != wire.IPOIB_QKEY or fport.pkey_index(pkey) is None:
            return
        if hdr.dst_qpn == wire.MCAST_QPN:
            dgid = hdr.dgid
            for iface in list(self.ctx.interfaces.values()):
                if iface.port is not fport:
                    continue
                entry = iface.mcast.get(dgid)
                if entry is None or entry.send_only or not entry.complete:
                    continue
                if hdr.slid == fport.lid and hdr.src_qpn == iface.qpn:
                    continue  # our own multicast looped back
                if wire.pkeys_match(qp_pkey(iface), pkey):
                    self._completion(iface, data, dgid != iface.broadcast_mgid)
            return
        target = self.ctx.by_qpn.get((fport.num, hdr.dst_qpn))
        if target is not None and wire.pkeys_match(qp_pkey(target), pkey):
            self._completion(target, data, False)

    def _completion(self, iface: Interface, data: memoryview, multicast: bool) -> None:
        log = self.ctx.log
        if log.data:
            slid = wire.UdHeader.unpack_from(data).slid
            length = len(data) - wire.UD_VNET_OFFSET - VNET + wire.IPOIB_ENCAP_LEN
            log.dbg_data(iface.name, f"received {length} bytes, SLID 0x{slid:04x}\n")
        proto = int.from_bytes(data[UD_HEADER_SIZE : UD_HEADER_SIZE + 2], "big")
        self.deliver(iface, proto, data[wire.UD_VNET_OFFSET :], multicast)

    def to_stack(self, iface: Interface, frame: bytes | memoryview, multicast: bool) -> None:
        """napi_gro_receive: the frame, counted as the HCA delivered it, enters the
        interface's stack, at once or held.

        With GRO or LRO on, a TCP segment waits for the end of the port's receive batch
        (what one wake of the receive loop drained, at most NAPI_WEIGHT frames), where the
        batch goes through GRO (wire.gro_receive) and consecutive segments of a flow reach
        the TUN as one super-packet; what GRO cannot merge goes up at once while nothing
        is held. With RX moderation (rx-usecs > 0) every frame is held until rx-frames are
        waiting or rx-usecs have passed since the first, whichever comes first."""
        self.count_rx(iface, frame, multicast)
        rx = iface.rx
        usecs = iface.coalesce_usecs
        if not usecs:
            if not rx.frames and not (tcp_segment(frame) and gro_enabled(iface)):
                self._write(iface, frame)
                return
            rx.frames.append(bytes(frame))  # the receive buffer is reused for the next one
            if len(rx.frames) >= NAPI_WEIGHT:
                self.flush(iface)
            elif not rx.at_batch_end:
                rx.at_batch_end = True
                iface.port.at_batch_end(lambda: self._batch_end(iface))
            return
        rx.frames.append(bytes(frame))
        if len(rx.frames) == 1:
            rx.deadline = trio.current_time() + usecs / 1e6
            self._arm(iface)
        frames = iface.coalesce_frames
        if frames and len(rx.frames) >= frames:
            self.flush(iface)

    def _write(self, iface: Interface, frame: bytes | memoryview) -> None:
        """netif_receive_skb; a frame the TUN refuses is counted in rx_dropped."""
        if not self.ctx.netdevs.write(iface.link, frame):
            iface.stats["rx_dropped"] += 1

    def _batch_end(self, iface: Interface) -> None:
        iface.rx.at_batch_end = False
        if not iface.coalesce_usecs:
            self.flush(iface)

    def flush(self, iface: Interface) -> None:
        """napi_gro_flush: what the interface holds goes to its stack, through GRO when
        it is on."""
        rx = iface.rx
        frames, rx.frames = rx.frames, []
        rx.deadline = math.inf
        if rx.timer is not None:
            rx.timer.deadline = math.inf
        if len(frames) > 1 and gro_enabled(iface):
            for vnet, packet in wire.gro_receive(frames):
                self._write(iface, b"".join((vnet, packet)))
        else:
            for frame in frames:
                self._write(iface, frame)

    def _arm(self, iface: Interface) -> None:
        """The first held frame starts the interface's moderation timer (one task per
        interface while moderation is on, never one per packet)."""
        rx = iface.rx
        if rx.timer is not None:
            rx.timer.deadline = rx.deadline
        elif not rx.timing:
            rx.timing = True
            self.ctx.work.spawn(self._moderate, iface)

    async def _moderate(self, iface: Interface) -> None:
        """The moderated CQ's timer: sleeps until the held frames' deadline, delivers
        them, and ends when moderation is turned off with nothing held."""
        rx = iface.rx
        try:
            while True:
                with trio.CancelScope(deadline=rx.deadline) as scope:
                    rx.timer = scope
                    await trio.sleep_forever()
                rx.timer = None
                if not self.ctx.registered(iface):  # unregistered: what it held goes with it
                    rx.frames.clear()
                    return
                usecs = iface.coalesce_usecs
                if rx.frames and (not usecs or trio.current_time() >= rx.deadline):
                    self.flush(iface)
                if not usecs and not rx.frames:
                    return
        finally:
            rx.timer, rx.timing = None, False

    @staticmethod
    def count_rx(iface: Interface, frame: bytes | memoryview, multicast: bool) -> None:
        packets, nbytes = rx_counts(frame)
        stats = iface.stats
        stats["rx_packets"] += packets
        stats["rx_bytes"] += nbytes
        if multicast:
            stats["multicast"] += 1


def rx_counts(frame: bytes | memoryview) -> tuple[int, int]:
    """(packets, bytes) received, as the HCA delivers them: an LSO super-packet arrives as
    segments."""
    length = len(frame) - VNET
    if frame[1] == wire.VIRTIO_NET_HDR_GSO_NONE:
        return 1, length
    hdr_len = int.from_bytes(frame[2:4], "little")
    mss = int.from_bytes(frame[4:6], "little") or 1
    segments = -(-(length - hdr_len) // mss)
    return segments, length + (segments - 1) * hdr_len


_ETH_P_IP = wire.ETH_P_IP.to_bytes(2, "big")
_ETH_P_IPV6 = wire.ETH_P_IPV6.to_bytes(2, "big")
IPPROTO_ICMPV6 = 58
_SLID, _SQPN, _DQPN = slice(2, 4), slice(6, 10), slice(10, 14)
_PKEY, _QKEY = slice(14, 16), slice(18, 22)
_PROTO = slice(UD_HEADER_SIZE, UD_HEADER_SIZE + 2)


class UdFastRx:
    """ipoib_ib_handle_rx_wc's common case on the port's receive thread, with no trio hop
    (README, thread contract): unicast IPv4, or IPv6 other than ICMPv6 (ND is rewritten on
    trio), with the IPoIB Q_Key and a P_Key the QP matches, for an open interface that
    holds nothing on trio (no RX moderation, no frames waiting for a batch end) and
    without data debug. It is counted (`fast_rx`), confirms the neighbour it came from
    (neigh_confirm: the `heard` stamp of the interface's published Hearing, in trio's
    time) and goes to the TUN, TCP segments through GRO at the end of the batch, as on
    trio.

    It writes only what it owns: the interfaces' `fast_rx`, the `heard` stamps and what
    it holds. The
    interfaces it looks up are in use only until its batch ends: an interface going away
    waits for that (FabricPort.quiesce) before its TUN is closed."""

    def __init__(self, ctx: DriverContext, fport: FabricPort) -> None:
        self.ctx, self.fport = ctx, fport
        self._held: dict[int, tuple[Interface, list[bytes]]] = {}  # by QPN
        self._now = trio.lowlevel.current_clock().current_time  # safe from any thread

    def take(self, data: memoryview) -> bool:
        """Whether it took the datagram (False: it goes to UdQp.receive on trio)."""
        if data[0] != wire.KIND_UD or len(data) < RX_MIN or self.ctx.log.data:
            return False
        dqpn = int.from_bytes(data[_DQPN], "big")
        fport = self.fport
        iface = self.ctx.by_qpn.get((fport.num, dqpn))
        if iface is None or not iface.opened or iface.coalesce_usecs or iface.rx.frames:
            return False
        pkey = int.from_bytes(data[_PKEY], "big")
        if (int.from_bytes(data[_QKEY], "big") != wire.IPOIB_QKEY
                or fport.pkey_index(pkey) is None
                or not wire.pkeys_match(qp_pkey(iface), pkey)):  # fmt: skip
            return False
        frame = data[wire.UD_VNET_OFFSET :]
        proto = data[_PROTO]
        if proto == _ETH_P_IP:
            src = bytes(frame[VNET + 12 : VNET + 16])
        elif proto == _ETH_P_IPV6 and frame[VNET + 6] != IPPROTO_ICMPV6:
            src = bytes(frame[VNET + 8 : VNET + 24])
        else:
            return False
        hearing = iface.hearing.get(src)
        if (hearing is not None and hearing.dlid == int.from_bytes(data[_SLID], "big")
                and hearing.qpn == int.from_bytes(data[_SQPN], "big")):  # fmt: skip
            hearing.heard = self._now()
        packets, nbytes = rx_counts(frame)
        iface.fast_rx.count(packets, nbytes)
        held = self._held.get(dqpn)
        if held is not None:
            held[1].append(bytes(frame))
            if len(held[1]) >= NAPI_WEIGHT:
                self._flush(*self._held.pop(dqpn))
        elif tcp_segment(frame) and gro_enabled(iface):
            self._held[dqpn] = (iface, [bytes(frame)])
        else:
            self._write(iface, frame)
        return True

    def flush(self) -> None:
        """The batch's end (napi_gro_flush): what is held goes to the stacks."""
        held, self._held = self._held, {}
        for iface, frames in held.values():
            self._flush(iface, frames)

    def _flush(self, iface: Interface, frames: list[bytes]) -> None:
        if len(frames) > 1 and gro_enabled(iface):
            for vnet, packet in wire.gro_receive(frames):
                self._write(iface, b"".join((vnet, packet)))
        else:
            for frame in frames:
                self._write(iface, frame)

    def _write(self, iface: Interface, frame: bytes | memoryview) -> None:
        if not self.ctx.netdevs.write(iface.link, frame):
            iface.fast_rx.dropped += 1


def gro_enabled(iface: Interface) -> bool:
    """NETIF_F_GRO or NETIF_F_LRO on the interface. Until every Interface carries its
    features, one without them has the kernel's defaults: GRO on, LRO off."""
    features = getattr(iface, "features", None)
    if features is None:
        return True
    return bool(features.on("rx-gro") or features.on("rx-lro"))


def tcp_segment(frame: bytes | memoryview) -> bool:
    """A TCP packet GRO may merge: not a super-packet, TCP over IPv4 or IPv6, with data (a
    pure ACK is never merged, tcp_gro_receive flushes it at once)."""
    if frame[1] != GSO_NONE or len(frame) < VNET + 40:
        return False
    version = frame[VNET] >> 4
    if version == 4:
        tcp = VNET + (frame[VNET] & 0xF) * 4
        if frame[VNET + 9] != IPPROTO_TCP or len(frame) < tcp + 13:
            return False
    elif version == 6 and frame[VNET + 6] == IPPROTO_TCP:
        tcp = VNET + 40
        if len(frame) < tcp + 13:
            return False
    else:
        return False
    return len(frame) > tcp + (frame[tcp + 12] >> 4) * 4


# ----------------------------------------------------------------- port events


class PortReactions(Protocol):
    """What the rest of the driver does when __ipoib_ib_dev_flush runs for an interface."""

    async def carrier_off(self, iface: Interface) -> None: ...
    async def rejoin(self, iface: Interface) -> None: ...
    def flush_paths(self, iface: Interface) -> None: ...
    def reregister(self, iface: Interface) -> None: ...


async def pkey_change(ctx: DriverContext, fport: FabricPort, react: PortReactions) -> None:
    """IB_EVENT_PKEY_CHANGE: a parent follows index 0 (update_parent_pkey); interfaces
    whose P_Key came get carrier, whose P_Key went lose it."""
    async with ctx.rtnl:
        for iface in list(ctx.interfaces.values()):
            if iface.port is not fport:
                continue
            try:
                await _pkey_flush(ctx, iface, react)
            except KernelError as e:
                ctx.log.warn(iface.name, f"P_Key change not applied: {e}\n")


async def _pkey_flush(ctx: DriverContext, iface: Interface, react: PortReactions) -> None:
    if iface.parent is None:
        pkey = parent_pkey(iface.port) | wire.FULL_MEMBER
        if pkey != iface.pkey:
            ctx.log.dbg(iface.name, f"pkey changed from 0x{iface.pkey:x} to 0x{pkey:x}\n")
            if iface.opened:
                await react.carrier_off(iface)
            iface.pkey = pkey
    if not iface.opened:
        return
    present = pkey_present(iface)
    if present and not iface.carrier:
        await react.rejoin(iface)
    elif not present and iface.carrier:
        await react.carrier_off(iface)
    elif present:
        react.flush_paths(iface)  # the P_Key index may have moved


async def port_change(ctx: DriverContext, fport: FabricPort, react: PortReactions) -> None:
    """IB_EVENT_PORT_ERR and IB_EVENT_PORT_ACTIVE: ipoib_flush_normal of every interface of
    the port (parents and children alike). ipoib_ib_dev_down takes the carrier and leaves
    every group (the SM drops the port's memberships with them), and the paths go; an
    interface that is up restarts its join task, which waits while the port is not ACTIVE
    and, once it is, joins the broadcast group again and brings the carrier back."""
    async with ctx.rtnl:
        for iface in list(ctx.interfaces.values()):
            if iface.port is not fport:
                continue
            if not iface.opened:
                ctx.log.dbg(iface.name, "Not flushing - IPOIB_FLAG_ADMIN_UP not set.\n")
                continue
            ctx.log.dbg(iface.name, "downing ib_dev\n")
            await react.carrier_off(iface)
            if pkey_present(iface):
                await react.rejoin(iface)


async def client_reregister(ctx: DriverContext, fport: FabricPort, react: PortReactions) -> None:
    """IB_EVENT_CLIENT_REREGISTER (the subnet manager came back without our memberships):
    ipoib_flush_light, so every open interface of the port forgets its groups, marks its
    paths invalid and joins again; its carrier and neighbours stay as they are."""
    async with ctx.rtnl:
        for iface in list(ctx.interfaces.values()):
            if iface.port is fport and iface.opened and pkey_present(iface):
                ctx.log.dbg(iface.name, "flushing: the subnet manager asked to reregister\n")
                react.reregister(iface)
