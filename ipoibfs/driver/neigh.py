"""ipoib_main.c's transmit side (ipoib_start_xmit, struct ipoib_neigh, path_rec_start,
neigh_add_path, ipoib_flush_paths, ipoib_reap_neigh) and the neighbour table the kernel
would keep for the netdev (net/core/neighbour.c with net/ipv4/arp.c and net/ipv6/ndisc.c).

The netdev is L3 (a TUN), so the kernel resolves nothing: its neighbours are NUD_NOARP.
The daemon keeps the table instead, with the kernel's reachability rules: entries go
INCOMPLETE -> REACHABLE -> STALE -> DELAY -> PROBE -> FAILED on the timers of the
interface's /proc/sys/net/ipv{4,6}/neigh/<if>/ (read in the netdevs' namespace). ARP
requests and replies are answered and learned here as arp_process does; IPv6 NS/NA go to
the kernel, with the IPoIB link-layer option added on the way out and learned from (as
ndisc_recv_ns / ndisc_recv_na would) on the way in.

Reachability is confirmed, as neigh_confirm does for TCP, by unicast IP received from the
neighbour's LID and QPN: a peer whose QPN changed confirms nothing until it is re-learned.

Thread contract: every NUD transition runs on the trio thread (the timer task, the slow
path, receive handlers). The reader thread sends only to entries in the published routes
(REACHABLE, DELAY, PROBE) and stamps their `used`; a STALE entry is left out, so its first
packet takes the slow path, which moves it to DELAY as __neigh_event_send does.
"""

from __future__ import annotations

import errno
import ipaddress
import math
import random
import time

import trio

from .. import wire
from ..errors import KernelError
from .cm import ConnectedMode
from .context import DriverContext
from .ib import VNET, UdQp, UdRoute, ud_header
from .interface import (
    NUD_CONNECTED,
    NUD_DELAY,
    NUD_FAILED,
    NUD_IN_TIMER,
    NUD_INCOMPLETE,
    NUD_NOARP,
    NUD_PERMANENT,
    NUD_PROBE,
    NUD_REACHABLE,
    NUD_STALE,
    NUD_VALID,
    ArpSeen,
    Hearing,
    Interface,
    Neighbour,
    NeighParms,
    PathEntry,
    is_ipv4_group,
    publish_routes,
)
from .multicast import Multicast
from .udplace import UdPlacement, flush_held

IPOIB_MAX_PATH_REC_QUEUE = 3
REAP_SECONDS = 30.0  # ipoib_reap_neigh: every arp_tbl.gc_interval
#: arp_tbl's gc_thresh3: beyond it the kernel makes no new neighbour and the packet is lost.
NEIGH_TABLE_MAX = 1024
#: neigh_periodic_work draws reachable_time again every 300 s.
REACHABLE_REDRAW_SECONDS = 300.0
#: How often base_reachable_time_ms is read again (a change redraws reachable_time) ...
SYSCTL_POLL_SECONDS = 1.0
#: ... and the interfaces' other neighbour sysctls, arp_accept and drop_gratuitous_arp.
SYSCTL_SLOW_POLL_SECONDS = 5.0
#: netdev_max_backlog: ARP waiting for the addresses to be read beyond it is dropped.
ARP_BACKLOG_MAX = 1000
#: A request for an address we do not have waits for the addresses to be read again when
#: an address of ours was added or removed since they were read (an RTM_NEWADDR or
#: RTM_DELADDR), or when they are older than this (the bound for an event lost to an
#: overflow; the driver also reads them with each look at the IP multicast list).
ADDRESS_TTL_SECONDS = 1.0

# __neigh_update's flags (include/net/neighbour.h).
NEIGH_UPDATE_F_OVERRIDE = 0x1
NEIGH_UPDATE_F_WEAK_OVERRIDE = 0x2
NEIGH_UPDATE_F_ADMIN = 0x80000000

#: sysctl file -> (NeighParms field, scale to seconds or None for a count).
NEIGH_SYSCTLS = {
    "base_reachable_time_ms": ("base_reachable_time", 0.001),
    "delay_first_probe_time": ("delay_first_probe_time", 1.0),
    "retrans_time_ms": ("retrans_time", 0.001),
    "ucast_solicit": ("ucast_solicit", None),
    "mcast_solicit": ("mcast_solicit", None),
    "app_solicit": ("app_solicit", None),
    "mcast_resolicit": ("mcast_resolicit", None),
    "locktime": ("locktime", 0.01),  # USER_HZ
}


def rand_reach_time(base: float, rng: random.Random) -> float:
    """neigh_rand_reach_time: uniformly in [base/2, 3*base/2)."""
    return base / 2 + rng.random() * base if base else 0.0


class Neighbours:
    def __init__(self, ctx: DriverContext, ud: UdQp, mcast: Multicast, cm: ConnectedMode,
                 placement: UdPlacement) -> None:  # fmt: skip
        self.ctx = ctx
        self.ud = ud
        self.mcast = mcast
        self.cm = cm
        self.placement = placement
        self.rng = random.Random()
        self._wake = trio.Event()
        self._next_timer = math.inf
        self._arp_seq = 0
        self.addresses_at = -math.inf  # trio time of the last address dump
        self._address_changes = 0  # addresses_changed calls, to tell a read that raced one
        self._sysctls_at = -math.inf  # ... and of the last full read of the sysctls

    # ------------------------------------------------------------- transmit

    def xmit_fast(self, iface: Interface, frame: bytes) -> bool:
        """ipoib_start_xmit's common case, on the netdev's reader thread: a unicast IP packet
        to a neighbour in the routes the trio thread published (README, thread contract).
        It writes nothing but what the reader owns (its counters, the routes' use stamps);
        False leaves the packet to `xmit` on the trio thread, which does the rest.

        Every packet the flow table did not send passes here: the routes hold no group
        address (publish_routes), so a lookup is the only test a destination needs. A
        route that placed the packet into a peer on this machine is then installed in the
        flow table (`offered` in its generation), whose C loop sends the next packets to
        it without Python (README, Benchmarks)."""
        flows = iface.flows
        generation = flows.generation if flows is not None else 0  # before the routes
        version = frame[VNET] >> 4
        if version == 4:
            key = frame[VNET + 16 : VNET + 20]
        elif version == 6 and frame[VNET + 6] != wire.IPPROTO_ICMPV6:
            key = frame[VNET + 24 : VNET + 40]  # ND: xmit rewrites it
        else:
            return False
        route = iface.routes.get(key)
        ctx = self.ctx
        if route is None or not iface.carrier or ctx.params.data_debug:
            return False
        counted = route.send(frame)
        if not counted:
            return False
        route.used = ctx.clock.now
        iface.fast_tx.count(counted)
        if flows is not None and route.offered != generation:
            # The flow table sends the next ones itself, if the route places them.
            if route.offer(flows, generation, key):
                route.offered = generation
        return True

    def flows_used(self, now: float) -> None:
        """On the trio thread, each tick of the data path's clock: the routes the flow
        tables sent to since the last tick were used now."""
        for iface in self.ctx.interfaces.values():
            if iface.flows is None:
                continue
            routes = iface.routes
            for key in iface.flows.used():
                route = routes.get(key)
                if route is not None:
                    route.used = now

    @staticmethod
    def xmit_batch_end(iface: Interface) -> None:
        """The reader thread read all there was: the frames its UD placements hold for the
        peers' GRO go (udplace.py)."""
        if iface.placing:
            flush_held(iface.placing)

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
            self._kernel_arp(iface, frame)
            return
        neigh = iface.neighbours.get(dst)
        if neigh is None:
            neigh = self._create(iface, dst)
            if neigh is None:
                self.ud.drop(iface)
                return
        neigh.used = self.ctx.clock.now
        if self._event_send(iface, dst, neigh, frame):
            return
        if neigh.ready or self._rc_up(iface, neigh):
            self._unicast(iface, neigh, frame, proto)
            return
        self._enqueue(iface, neigh, frame)  # valid, its path being looked up
        self._start_path(iface, dst, neigh)

    def _kernel_arp(self, iface: Interface, frame: bytes) -> None:
        """ARP the kernel itself sent on the TUN (inetdev_send_gratuitous_arp, for arp_notify
        at NETDEV_UP or NETDEV_NOTIFY_PEERS): it has no hardware addresses, so it goes out
        as RFC 4391 ARP with ours, to the broadcast group. Anything else is dropped."""
        parsed = wire.kernel_arp(frame[VNET:])
        if parsed is None:
            self.ud.drop(iface)
            return
        op, spa, tpa = parsed
        arp = wire.ArpPacket(op, iface.hw_addr, spa, bytes(wire.INFINIBAND_ALEN), tpa)
        self.send_arp(iface, arp, None)

    @staticmethod
    def _rc_up(iface: Interface, neigh: Neighbour) -> bool:
        """An established connection carries on while the path is looked up again
        (ipoib_start_xmit checks ipoib_cm_up before the address handle)."""
        tx = neigh.cm
        return iface.cm_enabled and neigh.rc_capable and tx is not None and tx.connected

    def _unicast(self, iface: Interface, neigh: Neighbour, frame: bytes, proto: int) -> None:
        """To a resolved neighbour: over RC when both ends do connected mode, else UD."""
        if iface.cm_enabled and neigh.rc_capable:
            self.cm.xmit(iface, neigh, frame, proto)
        elif not self.ud.oversize(iface, frame):
            self.ud.send(iface, neigh.dlid, neigh.header, frame)

    def _enqueue(self, iface: Interface, neigh: Neighbour, frame: bytes) -> None:
        """At most IPOIB_MAX_PATH_REC_QUEUE packets wait for a neighbour; more are dropped."""
        if len(neigh.queue) >= IPOIB_MAX_PATH_REC_QUEUE:
            self.ud.drop(iface)
        else:
            neigh.queue.append(frame)

    def _send_queued(self, iface: Interface, addr: bytes, neigh: Neighbour) -> None:
        proto = wire.ETH_P_IP if len(addr) == 4 else wire.ETH_P_IPV6
        queued, neigh.queue = neigh.queue, []
        for frame in queued:
            self._unicast(iface, neigh, frame, proto)

    # ------------------------------------------------------------- NUD (neighbour.c)

    def parms(self, iface: Interface, addr: bytes) -> NeighParms:
        return iface.arp_parms if len(addr) == 4 else iface.nd_parms

    def _create(self, iface: Interface, addr: bytes) -> Neighbour | None:
        """neigh_create: a NUD_NONE entry, unless the table is full (gc_thresh3)."""
        if len(iface.neighbours) >= NEIGH_TABLE_MAX:
            return None
        now = trio.current_time()
        neigh = iface.neighbours[addr] = Neighbour(used=self.ctx.clock.now, updated=now)
        return neigh

    def _set_timer(self, neigh: Neighbour, when: float) -> None:
        neigh.timer = when
        if when < self._next_timer:
            self._wake.set()

    def _event_send(self, iface: Interface, addr: bytes, neigh: Neighbour, frame: bytes) -> bool:
        """__neigh_event_send: True if the frame was taken (queued while INCOMPLETE, or
        dropped); False to send it now. A STALE entry goes to DELAY."""
        state = neigh.nud
        if state & (NUD_CONNECTED | NUD_DELAY | NUD_PROBE):
            return False
        now = trio.current_time()
        parms = self.parms(iface, addr)
        probe = False
        if not state & (NUD_STALE | NUD_INCOMPLETE):
            if parms.mcast_solicit + parms.app_solicit:
                neigh.probes = parms.ucast_solicit
                neigh.nud, neigh.updated = NUD_INCOMPLETE, now
                self._set_timer(neigh, now + max(parms.retrans_time, 0.01))
                probe = True
            else:
                neigh.nud, neigh.updated = NUD_FAILED, now
                self.ud.drop(iface)
                return True
        elif state & NUD_STALE:
            neigh.nud, neigh.updated = NUD_DELAY, now
            self._set_timer(neigh, now + parms.delay_first_probe_time)
            publish_routes(iface)  # the reader thread may send to it again
        if neigh.nud == NUD_INCOMPLETE:
            self._enqueue(iface, neigh, frame)
            if probe:
                self._probe(iface, addr, neigh)
            return True
        return False

    @staticmethod
    def _max_probes(parms: NeighParms, neigh: Neighbour) -> int:
        """neigh_max_probes."""
        last = parms.mcast_resolicit if neigh.nud & NUD_PROBE else parms.mcast_solicit
        return parms.ucast_solicit + parms.app_solicit + last

    def _timer(self, iface: Interface, addr: bytes, neigh: Neighbour) -> None:
        """neigh_timer_handler."""
        neigh.timer = None
        state = neigh.nud
        if not state & NUD_IN_TIMER:
            return
        now = trio.current_time()
        parms = self.parms(iface, addr)
        retrans = max(parms.retrans_time, 0.01)
        nxt = now + 1.0
        # what it placed into us confirms it too, as what it sent over the wire does
        confirmed = max(neigh.last_confirmed, self.placement.heard(iface, neigh.dlid, neigh.qpn))
        if state & NUD_REACHABLE:
            if now <= confirmed + parms.reachable_time:
                nxt = confirmed + parms.reachable_time
            elif now <= neigh.last_used + parms.delay_first_probe_time:
                neigh.nud, neigh.updated = NUD_DELAY, now
                nxt = now + parms.delay_first_probe_time
            else:
                neigh.nud, neigh.updated = NUD_STALE, now
        elif state & NUD_DELAY:
            if now <= confirmed + parms.delay_first_probe_time:
                neigh.nud, neigh.updated = NUD_REACHABLE, now
                nxt = confirmed + parms.reachable_time
            else:
                neigh.nud, neigh.updated, neigh.probes = NUD_PROBE, now, 0
                nxt = now + retrans
        else:
            nxt = now + retrans
        if neigh.nud & (NUD_INCOMPLETE | NUD_PROBE) and neigh.probes >= self._max_probes(
            parms, neigh
        ):
            neigh.nud = NUD_FAILED
            self._invalidate(iface, neigh)
        elif neigh.nud & NUD_IN_TIMER:
            self._set_timer(neigh, max(nxt, now + 0.01))
            if neigh.nud & (NUD_INCOMPLETE | NUD_PROBE):
                self._probe(iface, addr, neigh)
        if neigh.nud != state:
            publish_routes(iface)

    def _invalidate(self, iface: Interface, neigh: Neighbour) -> None:
        """neigh_invalidate: what waited for resolution is lost."""
        neigh.updated = trio.current_time()
        iface.stats["tx_dropped"] += len(neigh.queue)
        neigh.queue = []

    def _probe(self, iface: Interface, addr: bytes, neigh: Neighbour) -> None:
        """neigh_probe -> arp_solicit / ndisc_solicit: the first ucast_solicit probes go to
        the address we hold, the rest to everyone (app_solicit probes go to no daemon)."""
        parms = self.parms(iface, addr)
        probes = neigh.probes
        neigh.probes += 1
        if probes < parms.ucast_solicit:
            target: Neighbour | None = neigh if neigh.ready else None
        elif probes < parms.ucast_solicit + parms.app_solicit:
            return  # neigh_app_ns: a netlink message for an ARP daemon, which there is not
        else:
            target = None
        if len(addr) == 4:
            self._send_arp_request(iface, addr, target, self._probe_source(neigh))
        else:
            self._send_ns(iface, addr, target)

    @staticmethod
    def _probe_source(neigh: Neighbour) -> bytes | None:
        """arp_solicit with arp_announce 0: the source of the packet that waits, which the
        local stack sent from one of its addresses."""
        if neigh.queue:
            frame = neigh.queue[-1]
            src = frame[VNET + 12 : VNET + 16]
            if frame[VNET] >> 4 == 4 and any(src):
                return src
        return None

    def update(self, iface: Interface, addr: bytes, neigh: Neighbour, lladdr: bytes | None,
               new: int, flags: int) -> None:  # fmt: skip
        """__neigh_update: a new state and perhaps a new hardware address."""
        old = neigh.nud
        if not flags & NEIGH_UPDATE_F_ADMIN and old & (NUD_NOARP | NUD_PERMANENT):
            return
        now = trio.current_time()
        parms = self.parms(iface, addr)
        if not new & NUD_VALID:
            neigh.timer = None
            neigh.nud = new
            if old & (NUD_INCOMPLETE | NUD_PROBE) and new & NUD_FAILED:
                self._invalidate(iface, neigh)
            if old & NUD_VALID:
                publish_routes(iface)
            return
        if lladdr is None:
            if not old & NUD_VALID:
                return
            lladdr = neigh.hwaddr
        if new & NUD_CONNECTED:
            neigh.confirmed = now
        if old & NUD_VALID:
            if lladdr != neigh.hwaddr and not flags & NEIGH_UPDATE_F_OVERRIDE:
                if flags & NEIGH_UPDATE_F_WEAK_OVERRIDE and old & NUD_CONNECTED:
                    lladdr, new = neigh.hwaddr, NUD_STALE
                else:
                    return
            elif lladdr == neigh.hwaddr and new == NUD_STALE and not flags & NEIGH_UPDATE_F_ADMIN:
                new = old
        changed = lladdr != neigh.hwaddr
        if new != old or changed:
            neigh.updated = now
        if new != old:
            neigh.timer = None
            if new & NUD_PROBE:
                neigh.probes = 0
            if new & NUD_IN_TIMER:
                self._set_timer(neigh, now + (parms.reachable_time if new & NUD_REACHABLE else 0))
            neigh.nud = new
        if changed or not old & NUD_VALID:
            if changed:
                self._rebind(iface, neigh, lladdr)
            if not new & NUD_CONNECTED:
                neigh.confirmed = now - 2 * parms.base_reachable_time
                if neigh.hearing is not None:  # what the receive thread heard goes too
                    neigh.hearing = Hearing(neigh.hearing.dlid, neigh.hearing.qpn)
        if new != old or changed:
            publish_routes(iface)
        if not neigh.ready:
            self._start_path(iface, addr, neigh)  # what waits goes once it is bound
        elif not old & NUD_VALID:
            self._send_queued(iface, addr, neigh)

    def _rebind(self, iface: Interface, neigh: Neighbour, lladdr: bytes) -> None:
        """A new hardware address: the old path, header and connection no longer apply
        (ipoib looks up another ipoib_neigh for the new daddr)."""
        if neigh.cm is not None:
            self.cm.destroy_tx(neigh.cm)
        neigh.hwaddr, neigh.qpn = lladdr, int.from_bytes(lladdr[1:4], "big")
        neigh.header, neigh.dlid, neigh.ud_route, neigh.rc_route = b"", 0, None, None
        neigh.hearing = None
        neigh.binding = None

    def _start_path(self, iface: Interface, addr: bytes, neigh: Neighbour) -> None:
        if neigh.binding is None and neigh.hwaddr:
            done = neigh.binding = trio.Event()
            self.ctx.work.spawn(self._bind_path, iface, addr, neigh, neigh.hwaddr, done)

    async def _bind_path(self, iface: Interface, addr: bytes, neigh: Neighbour, hwaddr: bytes,
                         done: trio.Event) -> None:  # fmt: skip
        """neigh_add_path: the PathRecord for the hardware address's GID, then the header."""
        try:
            path = await self._path(iface, hwaddr[4:])
            if iface.neighbours.get(addr) is not neigh or neigh.hwaddr != hwaddr:
                return
            if path is None:
                iface.stats["tx_dropped"] += len(neigh.queue)
                neigh.queue = []
                return
            proto = wire.ETH_P_IP if len(addr) == 4 else wire.ETH_P_IPV6
            neigh.dlid = path.dlid
            neigh.header = ud_header(iface, path.dlid, neigh.qpn, bytes(16), proto)
            cell = self.placement.cell(iface, path.dlid, neigh.qpn)
            neigh.ud_route = UdRoute(iface, path.dlid, neigh.header, cell)
            neigh.hearing = Hearing(path.dlid, neigh.qpn)
            publish_routes(iface)
            if neigh.nud & NUD_VALID:
                self._send_queued(iface, addr, neigh)
        finally:
            if neigh.binding is done:
                neigh.binding = None
            done.set()

    async def run_timers(self) -> None:
        """The neighbours' timers, on the trio thread: one task sleeps until the earliest."""
        while True:
            now = trio.current_time()
            due = []
            nxt = math.inf
            for iface in list(self.ctx.interfaces.values()):
                for addr, neigh in iface.neighbours.items():
                    when = neigh.timer
                    if when is None:
                        continue
                    if when <= now:
                        due.append((iface, addr, neigh))
                    elif when < nxt:
                        nxt = when
            for iface, addr, neigh in due:
                if iface.neighbours.get(addr) is neigh and neigh.timer is not None:
                    try:
                        self._timer(iface, addr, neigh)
                    except Exception:
                        self.ctx.log.exception("a neighbour timer failed")
            if due:
                continue
            self._next_timer = nxt
            self._wake = trio.Event()
            with trio.move_on_at(nxt):
                await self._wake.wait()
            self._next_timer = math.inf

    async def follow_sysctls(self) -> None:
        """neigh_parms, arp_accept and drop_gratuitous_arp of every interface, from the
        namespace's /proc/sys/net (the kernel reads them on every use): base_reachable_time_ms
        every SYSCTL_POLL_SECONDS, everything every SYSCTL_SLOW_POLL_SECONDS. A trio task;
        each read is one job on the namespace worker."""
        while True:
            try:
                await self.read_sysctls()
            except Exception:
                self.ctx.log.exception("the neighbour sysctls were not read")
            await trio.sleep(SYSCTL_POLL_SECONDS)

    async def read_sysctls(self, *, full: bool | None = None) -> None:
        """One read: every sysctl when `full` (by default, when the last full read is
        SYSCTL_SLOW_POLL_SECONDS old), else base_reachable_time_ms alone."""
        now = trio.current_time()
        if full is None:
            full = now - self._sysctls_at >= SYSCTL_SLOW_POLL_SECONDS
        names = list(NEIGH_SYSCTLS) if full else ["base_reachable_time_ms"]
        ifaces = list(self.ctx.interfaces.values())
        paths: list[str] = []
        for iface in ifaces:
            for family in ("ipv4", "ipv6"):
                paths += [f"{family}/neigh/{iface.name}/{name}" for name in names]
            if full:
                paths += [f"ipv4/conf/{iface.name}/arp_accept", "ipv4/conf/all/arp_accept",
                          f"ipv4/conf/{iface.name}/drop_gratuitous_arp",
                          "ipv4/conf/all/drop_gratuitous_arp"]  # fmt: skip
        values = iter(await self.ctx.netdevs.sysctls(paths))
        if full:
            self._sysctls_at = now
        for iface in ifaces:
            for parms in (iface.arp_parms, iface.nd_parms):
                base = parms.base_reachable_time
                for name in names:
                    field, scale = NEIGH_SYSCTLS[name]
                    value = next(values)
                    if value is not None:
                        setattr(parms, field, value * scale if scale is not None else value)
                if base != parms.base_reachable_time or (
                    now - parms.randomised_at >= REACHABLE_REDRAW_SECONDS
                ):
                    parms.reachable_time = rand_reach_time(parms.base_reachable_time, self.rng)
                    parms.randomised_at = now
            if full:
                own, every = next(values), next(values)
                iface.arp_parms.accept = max(own or 0, every or 0)  # IN_DEV_MAXCONF
                own, every = next(values), next(values)
                iface.arp_parms.drop_gratuitous = bool(own or every)  # IN_DEV_ORCONF

    def delete(self, iface: Interface, addr: bytes) -> None:
        """neigh_delete (RTM_DELNEIGH, `ip neigh del`/`flush`): FAILED, then gone."""
        neigh = iface.neighbours.get(addr)
        if neigh is None:
            raise KernelError(errno.ENOENT)
        self.update(iface, addr, neigh, None, NUD_FAILED,
                    NEIGH_UPDATE_F_OVERRIDE | NEIGH_UPDATE_F_ADMIN)  # fmt: skip
        if neigh.cm is not None:
            self.cm.destroy_tx(neigh.cm)
        del iface.neighbours[addr]
        publish_routes(iface)

    # ------------------------------------------------------------- resolution

    def _source_ipv4(self, iface: Interface, dst: bytes) -> bytes:
        target = int.from_bytes(dst, "big")
        for addr, plen in iface.addrs4:
            mask = (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF
            if int.from_bytes(addr, "big") & mask == target & mask:
                return addr
        return iface.addrs4[0][0] if iface.addrs4 else bytes(4)

    def send_arp(self, iface: Interface, arp: wire.ArpPacket, to: Neighbour | None) -> None:
        """An ARP packet to the broadcast group, or unicast to a neighbour's path."""
        frame = wire.NO_OFFLOAD + arp.pack()
        if to is None:
            self.mcast.send_joined(iface, iface.broadcast_mgid, wire.ETH_P_ARP, frame)
            return
        header = ud_header(iface, to.dlid, to.qpn, bytes(16), wire.ETH_P_ARP)
        self.ud.send(iface, to.dlid, header, frame)

    def packet_send(self, iface: Interface, op: int, spa: bytes, tha: bytes, tpa: bytes,
                    dest: bytes) -> None:  # fmt: skip
        """What a packet socket's sendto puts on the link (arping): an ARP packet with our
        hardware address as sender, to the broadcast group when `dest` is the broadcast
        address, else unicast once the path to `dest` is known. While the carrier is off the
        queue discipline is noop's and the packet is lost, as on the kernel."""
        if not iface.opened:
            raise KernelError(errno.ENETDOWN)
        if not iface.carrier:
            self.ud.drop(iface)
            return
        arp = wire.ArpPacket(op, iface.hw_addr, spa, tha, tpa)
        if dest == iface.broadcast:
            self.send_arp(iface, arp, None)
        else:
            self.ctx.work.spawn(self.send_arp_to, iface, arp, dest)

    async def send_arp_to(self, iface: Interface, arp: wire.ArpPacket, dest: bytes) -> None:
        """An ARP packet unicast to a hardware address (its path looked up first)."""
        path = await self._path(iface, dest[4:])
        if path is None:
            self.ud.drop(iface)
            return
        qpn = int.from_bytes(dest[1:4], "big")
        header = ud_header(iface, path.dlid, qpn, bytes(16), wire.ETH_P_ARP)
        self.ud.send(iface, path.dlid, header, wire.NO_OFFLOAD + arp.pack())

    def _send_arp_request(self, iface: Interface, tpa: bytes, to: Neighbour | None,
                          spa: bytes | None = None) -> None:  # fmt: skip
        spa = spa or self._source_ipv4(iface, tpa)  # else inet_select_addr's choice
        arp = wire.ArpPacket(wire.ARPOP_REQUEST, iface.hw_addr, spa,
                             to.hwaddr if to is not None else bytes(wire.INFINIBAND_ALEN),
                             tpa)  # fmt: skip
        self.send_arp(iface, arp, to)

    def _send_ns(self, iface: Interface, target: bytes, to: Neighbour | None) -> None:
        src = wire.link_local_from_guid(iface.port.guid)
        if to is not None:
            ns = wire.neighbor_solicit(src, target, iface.hw_addr, dst=target)
            self.ud.send(iface, to.dlid, to.header, wire.NO_OFFLOAD + ns)
            return
        ns = wire.neighbor_solicit(src, target, iface.hw_addr)
        mgid = wire.ipv6_mc_mgid(ipaddress.IPv6Address(ns[24:40]), iface.broadcast)
        self.mcast.send(iface, mgid, wire.ETH_P_IPV6, wire.NO_OFFLOAD + ns)

    async def _path(self, iface: Interface, dgid: bytes) -> PathEntry | None:
        """path_rec_start: a PathRecord query, cached per destination GID."""
        path = iface.paths.get(dgid)
        if path is not None and path.dlid and path.valid:
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
        path.dlid, path.sl, path.rate_mbps, path.valid = rec.dlid, rec.sl, rec.rate_mbps, True
        return path

    async def learn(self, iface: Interface, addr: bytes, hwaddr: bytes) -> Neighbour | None:
        """An address's hardware address is known for certain (as from a unicast reply):
        the entry is REACHABLE at it, once its path is resolved."""
        neigh = iface.neighbours.get(addr) or self._create(iface, addr)
        if neigh is None:
            return None
        self.update(iface, addr, neigh, hwaddr, NUD_REACHABLE, NEIGH_UPDATE_F_OVERRIDE)
        if neigh.binding is not None:
            await neigh.binding.wait()
        if iface.neighbours.get(addr) is not neigh or not neigh.ready:
            return None
        return neigh

    def mark_paths_invalid(self, iface: Interface) -> None:
        """ipoib_mark_paths_invalid (the light flush of a client reregister): every path's
        address handle stops being valid, so the next UD send to a neighbour looks its path
        up again and waits for it (IPOIB_MAX_PATH_REC_QUEUE packets at most). The neighbour
        table, its hardware addresses and the RC connections stay, as in the kernel."""
        for path in iface.paths.values():
            gid = wire.format_gid_sysfs(path.dgid)
            self.ctx.log.dbg(iface.name, f"mark path LID 0x{path.dlid:08x} GID {gid} invalid\n")
            path.valid = False
        for neigh in iface.neighbours.values():
            neigh.header, neigh.ud_route = b"", None
        publish_routes(iface)

    def flush(self, iface: Interface) -> None:
        """ipoib_flush_paths and the neighbours that use them, with their connections."""
        self.cm.flush(iface)
        for _ in iface.paths:
            self.ctx.log.dbg(iface.name, "path_free\n")
        iface.paths.clear()
        iface.neighbours.clear()
        publish_routes(iface)
        self.placement.prune(iface)

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
            # ipoib_reap_neigh's rule, and neigh_periodic_work's for FAILED entries.
            stale = [a for a, n in iface.neighbours.items()
                     if not n.queue and (n.last_used < cutoff or n.nud == NUD_FAILED)]  # fmt: skip
            for addr in stale:
                del iface.neighbours[addr]
            if stale:
                publish_routes(iface)
                self.placement.prune(iface)
        self.mcast.age(cutoff)

    # ------------------------------------------------------------- receive

    def deliver_rc(self, iface: Interface, proto: int, frame: memoryview, multicast: bool) -> None:
        """What arrives over an RC connection: as over UD, but with no UD header to confirm
        a neighbour by."""
        self.ud.rx = None
        self.deliver(iface, proto, frame, multicast)

    def deliver(self, iface: Interface, proto: int, frame: memoryview, multicast: bool) -> None:
        """A received frame (offload metadata + packet) on its way into the interface's
        stack: ARP is answered here, ND is learned from and stripped, IP goes on."""
        if not iface.opened:
            return
        rx = self.ud.rx
        if proto == wire.ETH_P_ARP:
            arp = wire.ArpPacket.unpack(frame[VNET:])
            if arp is not None:
                self.ud.count_rx(iface, frame, multicast)
                pkttype = self._pkttype(iface, rx)
                self._arp_seq += 1
                iface.arp_seen.append(ArpSeen(self._arp_seq, time.monotonic(), arp.op, arp.sha,
                                              arp.spa, arp.tha, arp.tpa, pkttype))  # fmt: skip
                self._receive_arp(iface, arp, pkttype == "host")
            return
        if proto == wire.ETH_P_IP:
            if rx is not None and rx.dst_qpn != wire.MCAST_QPN:
                self._confirm(iface, bytes(frame[VNET + 12 : VNET + 16]), rx)
        elif proto == wire.ETH_P_IPV6:
            packet = frame[VNET:]
            if rx is not None and rx.dst_qpn != wire.MCAST_QPN:
                self._confirm(iface, bytes(packet[8:24]), rx)
            info = wire.nd_info(packet)
            if info is not None and info[2] is not None:
                self._handle_nd(iface, packet, info[0], info[1], info[2])
                frame = memoryview(wire.NO_OFFLOAD + wire.nd_strip_lladdr(packet))
        else:
            iface.stats["rx_dropped"] += 1
            return
        self.ud.to_stack(iface, frame, multicast)

    @staticmethod
    def _pkttype(iface: Interface, rx: wire.UdHeader | None) -> str:
        """skb->pkt_type as ipoib_ib_handle_rx_wc sets it."""
        if rx is None or rx.dst_qpn != wire.MCAST_QPN:
            return "host"
        return "broadcast" if rx.dgid == iface.broadcast_mgid else "multicast"

    def _confirm(self, iface: Interface, src: bytes, rx: wire.UdHeader) -> None:
        """neigh_confirm: unicast from the neighbour's own LID and QPN proves it reachable."""
        neigh = iface.neighbours.get(src)
        if neigh is not None and neigh.qpn == rx.src_qpn and neigh.dlid == rx.slid:
            neigh.confirmed = trio.current_time()  # not the coarse clock: it is compared exactly

    def _handle_nd(self, iface: Interface, packet: memoryview, kind: int, target: bytes,
                   lladdr: bytes) -> None:  # fmt: skip
        """ndisc_recv_ns / ndisc_recv_na, for the link-layer address they carry."""
        if kind == wire.ND_NEIGHBOR_SOLICIT:
            src = bytes(packet[8:24])
            if not any(src):
                return  # DAD
            neigh = iface.neighbours.get(src) or self._create(iface, src)
            if neigh is not None:
                self.update(iface, src, neigh, lladdr, NUD_STALE,
                            NEIGH_UPDATE_F_WEAK_OVERRIDE | NEIGH_UPDATE_F_OVERRIDE)  # fmt: skip
            return
        neigh = iface.neighbours.get(target)  # an NA makes no entry (accept_untracked_na)
        if neigh is None:
            return
        bits = wire.nd_advert_flags(packet)
        flags = NEIGH_UPDATE_F_WEAK_OVERRIDE
        if bits & wire.ND_NA_OVERRIDE:
            flags |= NEIGH_UPDATE_F_OVERRIDE
        new = NUD_REACHABLE if bits & wire.ND_NA_SOLICITED else NUD_STALE
        self.update(iface, target, neigh, lladdr, new, flags)

    def _receive_arp(self, iface: Interface, arp: wire.ArpPacket, host: bool) -> None:
        """arp_rcv: every ARP packet is processed in arrival order, at once, from the
        addresses read last. A request for an address we do not have, when they are older
        than ADDRESS_TTL_SECONDS, waits for one address dump, and what arrives after it
        waits behind it (at most ARP_BACKLOG_MAX packets, as netdev_max_backlog)."""
        backlog = iface.arp_backlog
        if not backlog and not self._wants_addresses(iface, arp):
            self._process_arp(iface, arp, host)
            return
        if len(backlog) >= ARP_BACKLOG_MAX:
            iface.stats["rx_dropped"] += 1
            return
        backlog.append((arp, host))
        if len(backlog) == 1:
            self.ctx.work.spawn(self._drain_arp, iface)

    def _wants_addresses(self, iface: Interface, arp: wire.ArpPacket) -> bool:
        return (arp.op == wire.ARPOP_REQUEST and not self._ours(iface, arp.tpa)
                and trio.current_time() - self.addresses_at >= ADDRESS_TTL_SECONDS)  # fmt: skip

    async def _drain_arp(self, iface: Interface) -> None:
        """The backlog, in order: the packets stay queued (so later ones queue behind them)
        until they are processed."""
        backlog = iface.arp_backlog
        while backlog:
            arp, host = backlog[0]
            if self._wants_addresses(iface, arp):
                try:
                    await self.refresh_addresses()
                except Exception:
                    self.ctx.log.exception("the addresses were not read for ARP")
            backlog.popleft()
            try:
                self._process_arp(iface, arp, host)
            except Exception:
                self.ctx.log.exception("an ARP packet was not processed")

    @staticmethod
    def _ours(iface: Interface, addr: bytes) -> bool:
        return any(addr == local for local, _ in iface.addrs4)

    def _process_arp(self, iface: Interface, arp: wire.ArpPacket, host: bool) -> None:
        """arp_process: answer requests for our addresses (and DAD probes of them), and
        update the table: an existing entry from any packet (a gratuitous one overriding
        within locktime), new entries only as arp_accept allows."""
        if not iface.opened or arp.op not in (wire.ARPOP_REQUEST, wire.ARPOP_REPLY):
            return
        sip, tip = arp.spa, arp.tpa
        if 224 <= tip[0] < 240 or tip[0] == 127:
            return  # ipv4_is_multicast, ipv4_is_loopback (route_localnet is 0)
        parms = iface.arp_parms
        if sip == tip and parms.drop_gratuitous:
            return
        ours = self._ours(iface, tip)
        if sip == bytes(4):  # RFC 2131 duplicate address detection
            if arp.op == wire.ARPOP_REQUEST and ours:
                reply = wire.ArpPacket(wire.ARPOP_REPLY, iface.hw_addr, tip, arp.sha, sip)
                self.ctx.work.spawn(self.send_arp_to, iface, reply, arp.sha)
            return
        if arp.op == wire.ARPOP_REQUEST and ours:
            neigh = iface.neighbours.get(sip) or self._create(iface, sip)  # neigh_event_ns
            if neigh is not None:
                self.update(iface, sip, neigh, arp.sha, NUD_STALE, NEIGH_UPDATE_F_OVERRIDE)
                reply = wire.ArpPacket(wire.ARPOP_REPLY, iface.hw_addr, tip, arp.sha, sip)
                self.ctx.work.spawn(self.send_arp_to, iface, reply, arp.sha)
            return
        neigh = iface.neighbours.get(sip)
        accept = self._arp_accept(iface, sip)
        is_garp = False
        if neigh is not None or accept:
            is_garp = self._is_garp(iface, arp)
        if (
            accept
            and neigh is None
            and (is_garp or (arp.op == wire.ARPOP_REPLY and self._is_unicast(iface, sip)))
        ):
            neigh = self._create(iface, sip)
        if neigh is None:
            return
        override = trio.current_time() > neigh.updated + parms.locktime or is_garp
        state = NUD_REACHABLE if arp.op == wire.ARPOP_REPLY and host else NUD_STALE
        self.update(iface, sip, neigh, arp.sha, state,
                    NEIGH_UPDATE_F_OVERRIDE if override else 0)  # fmt: skip

    def _arp_accept(self, iface: Interface, sip: bytes) -> bool:
        """arp_accept(): 0 makes no entry, 1 makes them, 2 only for a sender in one of the
        interface's subnets (inet_confirm_addr with RT_SCOPE_LINK)."""
        mode = iface.arp_parms.accept
        if mode == 1:
            return True
        return mode == 2 and self._on_link(iface, sip)

    def _is_garp(self, iface: Interface, arp: wire.ArpPacket) -> bool:
        """arp_is_garp: sender and target IP the same (for a reply, as `arping -A` sends,
        sender and target hardware addresses too), and the sender a unicast address."""
        if arp.spa != arp.tpa:
            return False
        if arp.op == wire.ARPOP_REPLY and arp.tha != arp.sha:
            return False
        return self._is_unicast(iface, arp.spa)

    @staticmethod
    def _is_unicast(iface: Interface, addr: bytes) -> bool:
        """inet_addr_type_dev_table(dev, addr) == RTN_UNICAST: not 0.0.0.0/8, the limited
        broadcast or multicast, nor one of the interface's local or broadcast routes."""
        if addr[0] == 0 or addr == b"\xff\xff\xff\xff" or 224 <= addr[0] < 240:
            return False
        return addr not in iface.broadcasts4 and not Neighbours._ours(iface, addr)

    @staticmethod
    def _on_link(iface: Interface, addr: bytes) -> bool:
        """arp_accept=2: the sender is in one of the interface's subnets."""
        value = int.from_bytes(addr, "big")
        for local, plen in iface.addrs4:
            mask = (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF
            if int.from_bytes(local, "big") & mask == value & mask:
                return True
        return False

    def addresses_changed(self) -> None:
        """An address of ours was added or removed: the next ARP request reads them again
        (and a read under way when it happened is not taken as fresh)."""
        self.addresses_at = -math.inf
        self._address_changes += 1

    async def refresh_addresses(self) -> None:
        """The IPv4 addresses of our interfaces, which ARP answers for, and their subnets'
        directed broadcasts."""
        changes = self._address_changes
        by_index = await self.ctx.netdevs.addresses()
        fresh = changes == self._address_changes
        self.addresses_at = trio.current_time() if fresh else -math.inf
        for iface in list(self.ctx.interfaces.values()):
            addrs = [
                (ipaddress.IPv4Address(a).packed, plen)
                for family, a, plen in by_index.get(iface.link.ifindex, [])
                if family == 2
            ]
            iface.addrs4 = addrs
            broadcasts = {
                ipaddress.IPv4Network((a, plen), strict=False).broadcast_address.packed
                for a, plen in addrs
                if plen < 31
            }
            if broadcasts != iface.broadcasts4:
                iface.broadcasts4 = broadcasts
                publish_routes(iface)  # a neighbour's address may be a broadcast one now
