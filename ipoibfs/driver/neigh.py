"""ipoib_main.c's transmit side: ipoib_start_xmit, neighbours (struct ipoib_neigh), path
records (path_rec_start, neigh_add_path), ipoib_flush_paths and ipoib_reap_neigh.

The netdev is L3 (a TUN), so address resolution is done here, not by the kernel: ARP
requests and replies are answered and learned by the daemon; IPv6 NS/NA go to the kernel,
with the IPoIB link-layer option added on the way out and learned on the way in.
"""

from __future__ import annotations

import ipaddress

import trio

from .. import wire
from ..errors import KernelError
from .cm import ConnectedMode
from .context import DriverContext
from .ib import VNET, UdQp, UdRoute, is_ipv4_group, ud_header
from .interface import Interface, Neighbour, PathEntry, publish_routes
from .multicast import Multicast

IPOIB_MAX_PATH_REC_QUEUE = 3
ARP_RETRIES = 3
ARP_RETRY_SECONDS = 1.0
REAP_SECONDS = 30.0  # ipoib_reap_neigh: every arp_tbl.gc_interval
#: arp_tbl's gc_thresh3: beyond it the kernel makes no new neighbour and the packet is lost.
NEIGH_TABLE_MAX = 1024


class Neighbours:
    def __init__(self, ctx: DriverContext, ud: UdQp, mcast: Multicast, cm: ConnectedMode) -> None:
        self.ctx = ctx
        self.ud = ud
        self.mcast = mcast
        self.cm = cm

    # ------------------------------------------------------------- transmit

    def xmit_fast(self, iface: Interface, frame: bytes) -> bool:
        """ipoib_start_xmit's common case, on the netdev's reader thread: a unicast IP packet
        to a neighbour in the routes the trio thread published (README, thread contract).
        It writes nothing but what the reader owns (its counters, the routes' use stamps);
        False leaves the packet to `xmit` on the trio thread, which does the rest."""
        log = self.ctx.log
        if not iface.carrier or log.data or log.cm_data:
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
        route = iface.routes.get(dst)
        if route is None:
            return False
        counted = route.send(frame)
        if not counted:
            return False
        route.used = self.ctx.clock.now
        iface.fast_tx.count(counted)
        return True

    def xmit(self, iface: Interface, frame: bytes) -> None:
        """ipoib_start_xmit for one frame from the stack."""
        if not iface.carrier:
            self.ud.drop(iface)
            return
        version = frame[VNET] >> 4
        if version == 4:
            dst, proto = frame[VNET + 16 : VNET + 20], wire.ETH_P_IP
            if is_ipv4_group(iface, dst):
                if 224 <= dst[0] < 240:
                    mgid = wire.ipv4_mc_mgid(ipaddress.IPv4Address(dst), iface.broadcast)
                else:
                    mgid = iface.broadcast_mgid
                self.mcast.send(iface, mgid, proto, frame)
                return
        elif version == 6:
            dst, proto = frame[VNET + 24 : VNET + 40], wire.ETH_P_IPV6
            if frame[VNET + 6] == wire.IPPROTO_ICMPV6:
                frame = frame[:VNET] + wire.nd_add_lladdr(frame[VNET:], iface.hw_addr)
            if dst[0] == 0xFF:
                if dst[1] & 0x0F < 2:
                    self.ud.drop(iface)
                    return
                mgid = wire.ipv6_mc_mgid(ipaddress.IPv6Address(dst), iface.broadcast)
                self.mcast.send(iface, mgid, proto, frame)
                return
        else:
            self.ud.drop(iface)
            return
        now = self.ctx.clock.now
        neigh = iface.neighbours.get(dst)
        if neigh is not None and neigh.ready:
            neigh.used = now
            self._unicast(iface, neigh, frame, proto)
            return
        if neigh is None:
            if len(iface.neighbours) >= NEIGH_TABLE_MAX:
                self.ud.drop(iface)
                return
            neigh = iface.neighbours[dst] = Neighbour(used=now)
        if len(neigh.queue) >= IPOIB_MAX_PATH_REC_QUEUE:
            self.ud.drop(iface)
            return
        neigh.queue.append(frame)
        if not neigh.resolving:
            neigh.resolving = True
            self.ctx.work.spawn(self._resolve, iface, dst, neigh)

    def _unicast(self, iface: Interface, neigh: Neighbour, frame: bytes, proto: int) -> None:
        """To a resolved neighbour: over RC when both ends do connected mode, else UD."""
        if iface.cm_enabled and neigh.rc_capable:
            self.cm.xmit(iface, neigh, frame, proto)
        elif not self.ud.oversize(iface, frame):
            self.ud.send(iface, neigh.dlid, neigh.header, frame)

    # ------------------------------------------------------------- resolution

    async def _resolve(self, iface: Interface, dst: bytes, neigh: Neighbour) -> None:
        """ARP (IPv4) or NS (IPv6), retried as the kernel's neighbour code does."""
        try:
            for _ in range(ARP_RETRIES):
                if len(dst) == 4:
                    self._send_arp_request(iface, dst)
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

    def _send_arp_request(self, iface: Interface, tpa: bytes) -> None:
        arp = wire.ArpPacket(wire.ARPOP_REQUEST, iface.hw_addr, self._source_ipv4(iface, tpa),
                             bytes(wire.INFINIBAND_ALEN), tpa)  # fmt: skip
        frame = wire.NO_OFFLOAD + arp.pack()
        self.mcast.send_joined(iface, iface.broadcast_mgid, wire.ETH_P_ARP, frame)

    def _send_arp_reply(self, iface: Interface, request: wire.ArpPacket, dlid: int) -> None:
        arp = wire.ArpPacket(wire.ARPOP_REPLY, iface.hw_addr, request.tpa, request.sha,
                             request.spa)  # fmt: skip
        frame = wire.NO_OFFLOAD + arp.pack()
        qpn = int.from_bytes(request.sha[1:4], "big")
        header = ud_header(iface, dlid, qpn, bytes(16), wire.ETH_P_ARP)
        self.ud.send(iface, dlid, header, frame)

    def _send_ns(self, iface: Interface, target: bytes) -> None:
        src = wire.link_local_from_guid(iface.port.guid)
        ns = wire.neighbor_solicit(src, target, iface.hw_addr)
        mgid = wire.ipv6_mc_mgid(ipaddress.IPv6Address(ns[24:40]), iface.broadcast)
        self.mcast.send(iface, mgid, wire.ETH_P_IPV6, wire.NO_OFFLOAD + ns)

    async def _path(self, iface: Interface, dgid: bytes) -> PathEntry | None:
        """path_rec_start: a PathRecord query, cached per destination GID."""
        path = iface.paths.get(dgid)
        if path is not None and path.dlid:
            return path
        path = iface.paths.setdefault(dgid, PathEntry(dgid))
        log, gid = self.ctx.log, wire.format_gid_sysfs(dgid)
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
            if len(iface.neighbours) >= NEIGH_TABLE_MAX:
                return None
            neigh = iface.neighbours[addr] = Neighbour(used=self.ctx.clock.now)
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
        neigh.ud_route = UdRoute(iface, path.dlid, neigh.header)
        neigh.resolved.set()
        publish_routes(iface)
        queued, neigh.queue = neigh.queue, []
        for frame in queued:
            self._unicast(iface, neigh, frame, proto)
        return neigh

    def flush(self, iface: Interface) -> None:
        """ipoib_flush_paths and the neighbours that use them, with their connections."""
        self.cm.flush(iface)
        for _ in iface.paths:
            self.ctx.log.dbg(iface.name, "path_free\n")
        iface.paths.clear()
        iface.neighbours.clear()
        publish_routes(iface)

    async def reap(self) -> None:
        """ipoib_reap_neigh: every 30 s, forget neighbours unused for two periods; idle
        connected-mode connections and send-only groups go with the same pass."""
        while True:
            await trio.sleep(REAP_SECONDS)
            try:
                await self._reap_once(trio.current_time())
            except Exception:
                self.ctx.log.exception("the neighbour reaper's pass failed")

    async def _reap_once(self, now: float) -> None:
        self.cm.stale(now)
        cutoff = now - 2 * REAP_SECONDS
        for iface in list(self.ctx.interfaces.values()):
            stale = [a for a, n in iface.neighbours.items()
                     if not n.queue and n.last_used < cutoff]  # fmt: skip
            for addr in stale:
                del iface.neighbours[addr]
            if stale:
                publish_routes(iface)
        self.mcast.age(cutoff)

    # ------------------------------------------------------------- receive

    def deliver(self, iface: Interface, proto: int, frame: memoryview, multicast: bool) -> None:
        """A received frame (offload metadata + packet) on its way into the interface's
        stack: ARP is answered here, ND is learned from and stripped, IP goes on."""
        if not iface.opened:
            return
        if proto == wire.ETH_P_ARP:
            arp = wire.ArpPacket.unpack(frame[VNET:])
            if arp is not None:
                self.ud.count_rx(iface, frame, multicast)
                self.ctx.work.spawn(self._handle_arp, iface, arp)
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
                    self.ctx.work.spawn(self.learn, iface, addr, info[2])
                frame = memoryview(wire.NO_OFFLOAD + wire.nd_strip_lladdr(packet))
        self.ud.to_stack(iface, frame, multicast)

    async def _handle_arp(self, iface: Interface, arp: wire.ArpPacket) -> None:
        """arp_process: answer requests for our addresses, learn senders we talk to."""
        ours = any(arp.tpa == addr for addr, _ in iface.addrs4)
        if arp.op == wire.ARPOP_REQUEST and not ours:
            await self.refresh_addresses()
            ours = any(arp.tpa == addr for addr, _ in iface.addrs4)
        if ours or arp.spa in iface.neighbours:
            neigh = await self.learn(iface, arp.spa, arp.sha)
            if ours and arp.op == wire.ARPOP_REQUEST and neigh is not None:
                self._send_arp_reply(iface, arp, neigh.dlid)

    async def refresh_addresses(self) -> None:
        """The IPv4 addresses of our interfaces, which ARP answers for, and their subnets'
        directed broadcasts."""
        by_index = await self.ctx.netdevs.addresses()
        for iface in list(self.ctx.interfaces.values()):
            addrs = [
                (ipaddress.IPv4Address(a).packed, plen)
                for family, a, plen in by_index.get(iface.link.ifindex, [])
                if family == 2
            ]
            iface.addrs4 = addrs
            iface.broadcasts4 = {
                ipaddress.IPv4Network((a, plen), strict=False).broadcast_address.packed
                for a, plen in addrs
                if plen < 31
            }
