"""The datagram-mode data path: ipoib_start_xmit, ipoib_ib_handle_rx_wc and what feeds them
(neighbours, RFC 4391 ARP and IPv6 ND, path records, send-only multicast).

The netdev layer is L3 (a TUN), so address resolution is done here, not by the kernel:
ARP requests and replies are answered and learned by the daemon; IPv6 NS/NA go to the
kernel, with the IPoIB link-layer option added on the way out and learned on the way in.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

import trio

from .. import wire
from ..errors import KernelError
from ..fabric import FabricPort
from .interface import Interface, McastEntry, Neighbour, PathEntry

if TYPE_CHECKING:
    from .driver import IPoIBDriver

IPOIB_MAX_PATH_REC_QUEUE = 3
IPOIB_MAX_MCAST_QUEUE = 64
ARP_RETRIES = 3
ARP_RETRY_SECONDS = 1.0
REAP_SECONDS = 30.0  # ipoib_reap_neigh: every arp_tbl.gc_interval
UD_HEADER_SIZE = wire.UD_HEADER.size
UD_UNPACK = wire.UD_HEADER.unpack_from
RX_MIN = wire.UD_VNET_OFFSET + wire.VNET_HDR_LEN
VNET = wire.VNET_HDR_LEN


def qp_pkey(iface: Interface) -> int:
    """The P_Key of the interface's UD QP: the port's table entry at its P_Key index.

    A limited member's packets carry the limited P_Key, whatever the interface's pkey file
    says; two limited members therefore cannot talk (IBA 10.9.3)."""
    port = iface.port.port
    index = port.pkey_index(iface.pkey)
    return port.pkeys[index] if index is not None else 0


def ud_header(iface: Interface, dlid: int, dqpn: int, dgid: bytes, proto: int) -> bytes:
    """The UD and IPoIB headers of a datagram from the interface's QP."""
    port = iface.port.port
    header = wire.UdHeader(port.lid, dlid, iface.qpn, dqpn, qp_pkey(iface), wire.IPOIB_QKEY,
                           port.gid, dgid)  # fmt: skip
    return header.pack() + wire.ipoib_header(proto)


def tx_bytes(frame: bytes) -> int:
    """What one posted skb adds to tx_bytes: an LSO send counts its payload alone (the
    headers were pulled), any other the packet and the IPoIB header."""
    if frame[1] != wire.VIRTIO_NET_HDR_GSO_NONE:
        return len(frame) - VNET - int.from_bytes(frame[2:4], "little")
    return len(frame) - VNET + wire.IPOIB_ENCAP_LEN


def too_long_for_ud(iface: Interface, frame: bytes) -> bool:
    """Longer than a UD datagram may be (ipoib_send); LSO super-packets are cut by the HCA."""
    return len(frame) - VNET > iface.mcast_mtu and frame[1] == wire.VIRTIO_NET_HDR_GSO_NONE


def is_ipv4_group(iface: Interface, dst: bytes) -> bool:
    """Multicast, limited broadcast, or the directed broadcast of one of our subnets."""
    return dst[0] >= 224 or dst == b"\xff\xff\xff\xff" or dst in iface.broadcasts4


class DataPath:
    def __init__(self, driver: IPoIBDriver) -> None:
        self.driver = driver
        self.netdevs = driver.netdevs
        self._by_qpn: dict[tuple[int, int], Interface] = {}  # (port number, QPN)
        self.now = trio.current_time()

    # ------------------------------------------------------------- lifetime

    def attach(self, iface: Interface) -> None:
        """Start moving the interface's packets (its UD QP exists from registration)."""
        self._by_qpn[(iface.port.port.num, iface.qpn)] = iface
        self.netdevs.pump(iface.link, partial(self.xmit_fast, iface), partial(self.xmit, iface))

    def detach(self, iface: Interface) -> None:
        self._by_qpn.pop((iface.port.port.num, iface.qpn), None)
        self.netdevs.stop_pump(iface.link)

    def by_qpn(self, fport: FabricPort, qpn: int) -> Interface | None:
        return self._by_qpn.get((fport.port.num, qpn))

    def flush(self, iface: Interface) -> None:
        """ipoib_flush_paths and the neighbours that use them, with their connections."""
        self.driver.cm.flush(iface)
        for _ in iface.paths:
            self.driver.log.dbg(iface.name, "path_free\n")
        iface.paths.clear()
        iface.neighbours.clear()

    async def reap(self) -> None:
        """ipoib_reap_neigh: every 30 s, forget neighbours unused for two periods.

        Also keeps `now`, the coarse clock the transmit path stamps neighbours with.
        """
        while True:
            for _ in range(int(REAP_SECONDS)):
                await trio.sleep(1)
                self.now = trio.current_time()
            self.driver.cm.stale(self.now)
            cutoff = trio.current_time() - 2 * REAP_SECONDS
            for iface in list(self.driver.interfaces.values()):
                for addr, neigh in list(iface.neighbours.items()):
                    if not neigh.queue and neigh.used < cutoff:
                        del iface.neighbours[addr]
                for mgid, entry in list(iface.mcast.items()):
                    if entry.send_only and entry.complete and entry.used < cutoff:
                        del iface.mcast[mgid]
                        await self.driver.leave(iface, mgid)

    # ------------------------------------------------------------- transmit
    #
    # A frame is what the TUN hands over: the 10-byte offload metadata (virtio_net_hdr),
    # then the IP packet, which may be a TCP/IPv4 super-packet for LSO.

    def _drop(self, iface: Interface) -> None:
        iface.stats["tx_dropped"] += 1

    def xmit_fast(self, iface: Interface, frame: bytes) -> bool:
        """ipoib_start_xmit's common case, on the netdev's reader thread: a unicast IP packet
        to a resolved neighbour, over its RC connection or UD. It changes no driver state but
        its own counters (Interface.fast_tx) and the neighbour's use stamp, so it needs no
        lock; False leaves the packet to `xmit` on the trio thread, which does the rest."""
        if not iface.carrier or self.driver.log.data or self.driver.log.cm_data:
            return False
        version = frame[VNET] >> 4
        if version == 4:
            dst = frame[VNET + 16 : VNET + 20]
            if is_ipv4_group(iface, dst):
                return False
        elif version == 6:
            dst = frame[VNET + 24 : VNET + 40]
            if dst[0] == 0xFF or frame[VNET + 6] == wire.IPPROTO_ICMPV6:
                return False  # multicast, and neighbour discovery, which xmit rewrites
        else:
            return False
        neigh = iface.neighbours.get(dst)
        if neigh is None or not neigh.ready:
            return False
        if iface.cm_enabled and neigh.rc_capable:
            counted = self.driver.cm.place(neigh, frame)
            if not counted:
                return False
        else:
            if too_long_for_ud(iface, frame):
                return False  # xmit drops it and reports the PMTU
            if not iface.port.send(neigh.dlid, [neigh.header, frame]):
                return False
            counted = tx_bytes(frame)
        neigh.used = self.now
        iface.fast_tx.count(counted)
        return True

    def xmit(self, iface: Interface, frame: bytes) -> None:
        """ipoib_start_xmit for one frame from the stack."""
        if not iface.carrier:
            self._drop(iface)
            return
        version = frame[VNET] >> 4
        if version == 4:
            dst, proto = frame[VNET + 16 : VNET + 20], wire.ETH_P_IP
            if is_ipv4_group(iface, dst):
                if 224 <= dst[0] < 240:
                    mgid = wire.ipv4_mc_mgid(ipaddress.IPv4Address(dst), iface.broadcast)
                else:
                    mgid = iface.broadcast_mgid
                self._xmit_multicast(iface, mgid, proto, frame)
                return
        elif version == 6:
            dst, proto = frame[VNET + 24 : VNET + 40], wire.ETH_P_IPV6
            if frame[VNET + 6] == wire.IPPROTO_ICMPV6:
                frame = frame[:VNET] + wire.nd_add_lladdr(frame[VNET:], iface.hw_addr)
            if dst[0] == 0xFF:
                if dst[1] & 0x0F < 2:
                    self._drop(iface)
                    return
                mgid = wire.ipv6_mc_mgid(ipaddress.IPv6Address(dst), iface.broadcast)
                self._xmit_multicast(iface, mgid, proto, frame)
                return
        else:
            self._drop(iface)
            return
        neigh = iface.neighbours.get(dst)
        if neigh is not None and neigh.ready:
            neigh.used = self.now
            self._unicast(iface, neigh, frame, proto)
            return
        if neigh is None:
            neigh = iface.neighbours[dst] = Neighbour(used=self.now)
        if len(neigh.queue) >= IPOIB_MAX_PATH_REC_QUEUE:
            self._drop(iface)
            return
        neigh.queue.append(frame)
        if not neigh.resolving:
            neigh.resolving = True
            self.driver.spawn(self._resolve, iface, dst, neigh)

    def _unicast(self, iface: Interface, neigh: Neighbour, frame: bytes, proto: int) -> None:
        """To a resolved neighbour: over RC when both ends do connected mode, else UD."""
        if iface.cm_enabled and neigh.rc_capable:
            self.driver.cm.xmit(iface, neigh, frame, proto)
        elif not self._oversize(iface, frame):
            self._send(iface, neigh.dlid, [neigh.header, frame], frame)

    def _oversize(self, iface: Interface, frame: bytes) -> bool:
        """ipoib_send: a UD packet longer than the multicast MTU is dropped with a warning,
        and in connected mode the local stack is told the multicast MTU (RX emulation of
        ICMP PMTU, ipoib_cm_skb_too_long). LSO super-packets are exempt: the HCA cuts them."""
        if not too_long_for_ud(iface, frame):
            return False
        length = len(frame) - VNET
        limit = iface.mcast_mtu + wire.IPOIB_ENCAP_LEN
        self.driver.log.warn(iface.name, f"packet len {length + wire.IPOIB_ENCAP_LEN} "
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
        self.netdevs.write(iface.link, wire.NO_OFFLOAD + report)

    def _count_tx(self, iface: Interface, frame: bytes) -> None:
        iface.stats["tx_packets"] += 1
        iface.stats["tx_bytes"] += tx_bytes(frame)

    def _send(self, iface: Interface, dlid: int, parts: list, frame: bytes) -> None:
        if self.driver.log.data:
            dqpn = UD_UNPACK(parts[0])[4]
            self.driver.log.dbg_data(iface.name, f"sending packet, length={len(frame) - VNET + 4} "
                                     f"address={wire.kernel_pointer(parts[0])} "
                                     f"dqpn=0x{dqpn:06x}\n")  # fmt: skip
        if iface.port.send(dlid, parts):
            self._count_tx(iface, frame)
        else:
            self._drop(iface)

    def _mcast_header(self, iface: Interface, entry: McastEntry, proto: int) -> bytes:
        return ud_header(iface, entry.mlid, wire.MCAST_QPN, entry.mgid, proto)

    def _xmit_multicast(self, iface: Interface, mgid: bytes, proto: int, frame: bytes) -> None:
        """ipoib_mcast_send: a group not joined gets a send-only join; frames wait for it."""
        if self._oversize(iface, frame):
            return
        entry = iface.mcast.get(mgid)
        if entry is not None and entry.complete:
            # Sent once whatever the number of listeners: replication is the switches' work.
            entry.used = self.now
            iface.port.send_multicast(mgid, [self._mcast_header(iface, entry, proto), frame])
            self._count_tx(iface, frame)
            return
        if entry is None:
            self.driver.log.dbg_mcast(iface.name, "setting up send only multicast group for "
                                                  f"{wire.format_gid_sysfs(mgid)}\n")  # fmt: skip
            entry = McastEntry(mgid, send_only=True, used=self.now)
            iface.mcast[mgid] = entry
            self.driver.spawn(self._send_only_join, iface, entry)
        if len(entry.queue) >= IPOIB_MAX_MCAST_QUEUE:
            self._drop(iface)
            return
        entry.queue.append((proto, frame))

    async def _send_only_join(self, iface: Interface, entry: McastEntry) -> None:
        member = await self.driver.join_group(iface, entry.mgid, send_only=True)
        if member is None:
            iface.stats["tx_dropped"] += len(entry.queue)
            iface.mcast.pop(entry.mgid, None)
            return
        if iface.mcast.get(entry.mgid) is not entry:
            await self.driver.leave(iface, entry.mgid)  # flushed or promoted meanwhile
            return
        entry.mlid = member.mlid
        entry.complete = True
        queued, entry.queue = entry.queue, []
        for proto, frame in queued:
            self._xmit_multicast(iface, entry.mgid, proto, frame)

    # ------------------------------------------------------------- resolution

    async def _resolve(self, iface: Interface, dst: bytes, neigh: Neighbour) -> None:
        """ARP (IPv4) or NS (IPv6), retried as the kernel's neighbour code does."""
        try:
            for _ in range(ARP_RETRIES):
                if len(dst) == 4:
                    self._send_arp(iface, wire.ARPOP_REQUEST, dst, bytes(20), iface.broadcast_mgid)
                else:
                    self._send_ns(iface, dst)
                with trio.move_on_after(ARP_RETRY_SECONDS):
                    await neigh.resolved.wait()
                if neigh.ready or iface.neighbours.get(dst) is not neigh:
                    return
            iface.stats["tx_dropped"] += len(neigh.queue)
            iface.neighbours.pop(dst, None)
        finally:
            neigh.resolving = False

    def _source_ipv4(self, iface: Interface, dst: bytes) -> bytes:
        target = int.from_bytes(dst, "big")
        for addr, plen in iface.addrs4:
            mask = (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF
            if int.from_bytes(addr, "big") & mask == target & mask:
                return addr
        return iface.addrs4[0][0] if iface.addrs4 else bytes(4)

    def _send_arp(self, iface: Interface, op: int, tpa: bytes, tha: bytes,
                  mgid: bytes | None = None, dlid: int = 0, dqpn: int = 0,
                  spa: bytes | None = None) -> None:  # fmt: skip
        arp = wire.ArpPacket(op, iface.hw_addr, spa or self._source_ipv4(iface, tpa), tha, tpa)
        frame = wire.NO_OFFLOAD + arp.pack()
        if mgid is not None:
            entry = iface.mcast.get(mgid)
            if entry is None or not entry.complete:
                return
            header = self._mcast_header(iface, entry, wire.ETH_P_ARP)
            iface.port.send_multicast(mgid, [header, frame])
            self._count_tx(iface, frame)
            return
        header = ud_header(iface, dlid, dqpn, bytes(16), wire.ETH_P_ARP)
        self._send(iface, dlid, [header, frame], frame)

    def _send_ns(self, iface: Interface, target: bytes) -> None:
        src = wire.link_local_from_guid(iface.port.port.guid)
        ns = wire.neighbor_solicit(src, target, iface.hw_addr)
        mgid = wire.ipv6_mc_mgid(ipaddress.IPv6Address(ns[24:40]), iface.broadcast)
        self._xmit_multicast(iface, mgid, wire.ETH_P_IPV6, wire.NO_OFFLOAD + ns)

    async def _path(self, iface: Interface, dgid: bytes) -> PathEntry | None:
        """path_rec_start: a PathRecord query, cached per destination GID."""
        path = iface.paths.get(dgid)
        if path is not None and path.dlid:
            return path
        path = iface.paths.setdefault(dgid, PathEntry(dgid))
        log, gid = self.driver.log, wire.format_gid_sysfs(dgid)
        log.dbg(iface.name, f"Start path record lookup for {gid}\n")
        try:
            rec = await iface.port.query_path(dgid, iface.pkey)
        except KernelError as e:
            log.dbg(iface.name, f"PathRec status {-e.errno} for GID {gid}\n")
            iface.paths.pop(dgid, None)
            return None
        log.dbg(iface.name, f"PathRec LID 0x{rec.dlid:04x} for GID {gid}\n")
        log.dbg(iface.name, f"created address handle {wire.kernel_pointer(path)} for LID "
                            f"0x{rec.dlid:04x}, SL {rec.sl}\n")  # fmt: skip
        path.dlid, path.sl, path.rate_mbps = rec.dlid, rec.sl, rec.rate_mbps
        return path

    async def learn(self, iface: Interface, addr: bytes, hwaddr: bytes) -> Neighbour | None:
        """An address's hardware address is known: resolve its path, then send what waited."""
        neigh = iface.neighbours.get(addr)
        if neigh is None:
            neigh = iface.neighbours[addr] = Neighbour(used=self.now)
        elif neigh.hwaddr == hwaddr and neigh.ready:
            return neigh
        neigh.hwaddr = hwaddr
        path = await self._path(iface, hwaddr[4:])
        if path is None or iface.neighbours.get(addr) is not neigh:
            return None
        neigh.dlid = path.dlid
        proto = wire.ETH_P_IP if len(addr) == 4 else wire.ETH_P_IPV6
        qpn = int.from_bytes(hwaddr[1:4], "big")
        neigh.header = ud_header(iface, path.dlid, qpn, bytes(16), proto)
        neigh.resolved.set()
        queued, neigh.queue = neigh.queue, []
        for frame in queued:
            self._unicast(iface, neigh, frame, proto)
        return neigh

    # ------------------------------------------------------------- receive

    def receive(self, fport: FabricPort, data: memoryview, fds: Sequence[int]) -> None:
        """ipoib_ib_handle_rx_wc for a datagram that reached this port (a CM REP may carry
        the peer's receive queue as fds)."""
        if data[0] != wire.KIND_UD:
            self.driver.cm.receive(fport, data, fds)
            return
        if len(data) < RX_MIN:
            return
        _, slid, _, src_qpn, dst_qpn, pkey, qkey, _, dgid = UD_UNPACK(data)
        if qkey != wire.IPOIB_QKEY or fport.port.pkey_index(pkey) is None:
            return
        if dst_qpn == wire.MCAST_QPN:
            for iface in list(self.driver.interfaces.values()):
                if iface.port is not fport:
                    continue
                entry = iface.mcast.get(dgid)
                if entry is None or entry.send_only or not entry.complete:
                    continue
                if slid == fport.port.lid and src_qpn == iface.qpn:
                    continue  # our own multicast looped back
                if wire.pkeys_match(qp_pkey(iface), pkey):
                    self._deliver_ud(iface, data, dgid != iface.broadcast_mgid)
            return
        iface = self._by_qpn.get((fport.port.num, dst_qpn))
        if iface is not None and wire.pkeys_match(qp_pkey(iface), pkey):
            self._deliver_ud(iface, data, False)

    def _deliver_ud(self, iface: Interface, data: memoryview, multicast: bool) -> None:
        if self.driver.log.data:
            slid = int.from_bytes(data[2:4], "big")
            length = len(data) - wire.UD_VNET_OFFSET - VNET + wire.IPOIB_ENCAP_LEN
            self.driver.log.dbg_data(iface.name, f"received {length} bytes, SLID 0x{slid:04x}\n")
        proto = int.from_bytes(data[UD_HEADER_SIZE : UD_HEADER_SIZE + 2], "big")
        self.deliver(iface, proto, data[wire.UD_VNET_OFFSET :], multicast)

    def deliver(self, iface: Interface, proto: int, frame: memoryview, multicast: bool) -> None:
        """A received frame (offload metadata + packet) for the interface's stack."""
        if not iface.opened:
            return
        if proto == wire.ETH_P_ARP:
            arp = wire.ArpPacket.unpack(frame[VNET:])
            if arp is not None:
                self._count_rx(iface, frame, multicast)
                self.driver.spawn(self._handle_arp, iface, arp)
            return
        if proto not in (wire.ETH_P_IP, wire.ETH_P_IPV6):
            iface.stats["rx_dropped"] += 1
            return
        if proto == wire.ETH_P_IPV6:
            packet = frame[VNET:]
            info = wire.nd_info(packet)
            if info is not None and info[2] is not None:
                # NS: the sender's own address; NA: the target's.
                addr = bytes(packet[8:24]) if info[0] == wire.ND_NEIGHBOR_SOLICIT else info[1]
                if any(addr):
                    self.driver.spawn(self.learn, iface, addr, info[2])
                frame = wire.NO_OFFLOAD + wire.nd_strip_lladdr(packet)
        if self.netdevs.write(iface.link, frame):
            self._count_rx(iface, frame, multicast)
        else:
            iface.stats["rx_dropped"] += 1

    def _count_rx(self, iface: Interface, frame, multicast: bool) -> None:
        """Received packets as the HCA delivers them: an LSO super-packet arrives as segments."""
        length = len(frame) - VNET
        stats = iface.stats
        if frame[1] != wire.VIRTIO_NET_HDR_GSO_NONE:
            hdr_len = int.from_bytes(frame[2:4], "little")
            mss = int.from_bytes(frame[4:6], "little") or 1
            segments = -(-(length - hdr_len) // mss)
            stats["rx_packets"] += segments
            stats["rx_bytes"] += length + (segments - 1) * hdr_len
        else:
            stats["rx_packets"] += 1
            stats["rx_bytes"] += length
        if multicast:
            stats["multicast"] += 1

    async def _handle_arp(self, iface: Interface, arp: wire.ArpPacket) -> None:
        """arp_process: answer requests for our addresses, learn senders we talk to."""
        ours = any(arp.tpa == addr for addr, _ in iface.addrs4)
        if arp.op == wire.ARPOP_REQUEST and not ours:
            await self.driver.refresh_addresses()
            ours = any(arp.tpa == addr for addr, _ in iface.addrs4)
        if ours or arp.spa in iface.neighbours:
            neigh = await self.learn(iface, arp.spa, arp.sha)
            if ours and arp.op == wire.ARPOP_REQUEST and neigh is not None:
                qpn = int.from_bytes(arp.sha[1:4], "big")
                self._send_arp(iface, wire.ARPOP_REPLY, arp.spa, arp.sha, dlid=neigh.dlid,
                               dqpn=qpn, spa=arp.tpa)  # fmt: skip
