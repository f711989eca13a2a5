"""ipoib_main.c's netdev side: registration (ipoib_add_port, ipoib_ndo_init), ndo_open and
ndo_stop, the MTU rules (ipoib_change_mtu), the mode (ipoib_set_mode), umcast, and the
netdev events the driver follows (link changes, the IP stack's multicast list).

Every entry point that the kernel runs under RTNL takes `ctx.rtnl`; every refusal raises
a KernelError with the errno ib_ipoib returns. Section numbers refer to
shared/reference/linux-ipoib-driver.md.
"""

from __future__ import annotations

import errno
import functools
from collections.abc import Awaitable, Callable, Sequence

import trio

from .. import wire
from ..errors import KernelError
from ..fabric.port import FabricPort
from . import features as feat
from . import ib
from .cm import ConnectedMode
from .context import DriverContext
from .interface import ChildType, Interface, publish_routes
from .multicast import Multicast
from .neigh import Neighbours
from .udplace import UdPlacement

#: How often the IP stack's multicast memberships are read (ndo_set_rx_mode, polled).
IP_GROUP_POLL_SECONDS = 0.5
#: ... doubled while nothing changes, up to this: an idle host's polling is most of its CPU,
#: which hundreds of lab hosts on two cores feel. A link event or a carrier on looks at once.
IP_GROUP_POLL_MAX = 2.0


class IPoIBMain:
    def __init__(self, ctx: DriverContext) -> None:
        self.ctx = ctx
        self.ud = ib.UdQp(ctx)
        self.cm = ConnectedMode(ctx, self.ud)
        self.mcast = Multicast(ctx, self.ud, self.dev_set_mtu)
        self.placement = UdPlacement(ctx)
        self.neigh = Neighbours(ctx, self.ud, self.mcast, self.cm, self.placement)
        self.ud.deliver = self.neigh.deliver
        self.cm.deliver = self.neigh.deliver_rc
        #: Called (on the trio thread) after an interface is registered or unregistered:
        #: the mirror drops the names the kernel caches (sysfs/fs.py, tree_changed).
        self.watchers: list[Callable[[], None]] = []

    # ------------------------------------------------------------- lifetime

    def start(self, nursery: trio.Nursery) -> None:
        """Give the driver its work queue and start receiving and following events."""
        ctx = self.ctx
        ctx.work.start(nursery)
        for fport in ctx.ports:
            fport.on_pkey_change = lambda f=fport: self._port_event(ib.pkey_change, f)
            fport.on_reregister = lambda f=fport: ib.client_reregister(ctx, f, self)
            fport.on_port_change = lambda f=fport: self._port_event(ib.port_change, f)
            handler = lambda data, fds, f=fport: self._receive(f, data, fds)  # noqa: E731
            fast = ib.UdFastRx(ctx, fport)
            nursery.start_soon(fport.receive, handler, fast.take, fast.flush)
        ctx.clock.ticks.append(self.neigh.flows_used)
        nursery.start_soon(ctx.clock.run)
        nursery.start_soon(self.neigh.reap)
        nursery.start_soon(self.neigh.run_timers)
        nursery.start_soon(self.neigh.follow_sysctls)
        nursery.start_soon(self._follow_links)
        nursery.start_soon(self._follow_ip_groups)

    async def _port_event(self, handle: Callable[..., Awaitable[None]], fport: FabricPort) -> None:
        """A port event (ib.py), after which the port's UD placements are offered again."""
        await handle(self.ctx, fport, self)
        self.placement.port_changed(fport)

    def _receive(self, fport: FabricPort, data: memoryview, fds: Sequence[int]) -> None:
        """A completion on the port: a UD datagram, or a CM or RC message (the REP of a
        peer on this machine carries its receive queue as fds), or a peer's placement
        message (udplace.py)."""
        kind = data[0]
        if kind == wire.KIND_UD:
            self.ud.receive(fport, data)
        elif kind == wire.KIND_PLACE:
            self.placement.receive(fport, data, fds)
        else:
            self.cm.receive(fport, data, fds)

    async def add_ports(self) -> list[Interface]:
        """ipoib_add_one: one parent interface `ib<N>` per port, DOWN, datagram mode."""
        parents = []
        async with self.ctx.rtnl:
            for index, fport in enumerate(self.ctx.ports):
                pkey = ib.parent_pkey(fport)
                parents.append(await self.register(f"ib{index}", fport, pkey, ChildType.PARENT))
        return parents

    async def shutdown(self) -> None:
        """Module unload: every interface goes, children first."""
        ctx = self.ctx
        async with ctx.rtnl:
            for iface in sorted(ctx.interfaces.values(), key=lambda i: not i.is_child):
                ctx.interfaces.pop(iface.name)
                await self._detach(iface)

    # ------------------------------------------------------------- registration

    async def register(self, name: str, fport: FabricPort, pkey: int, kind: ChildType,
                       parent: Interface | None = None) -> Interface:  # fmt: skip
        """register_netdevice + ipoib_ndo_init, under RTNL: the full-membership bit is set
        here."""
        ctx = self.ctx
        max_ib_mtu = fport.profile.max_mtu
        features = feat.ipoib_features(self.offloads(fport))  # ipoib_set_dev_features
        link = await ctx.netdevs.create(name, mtu=wire.ud_mtu(max_ib_mtu), txqlen=ctx.txqlen,
                                        offload=feat.tun_offload_flags(features))  # fmt: skip
        iface = Interface(
            name=name,
            port=fport,
            qpn=ctx.device.alloc_qpn(),
            pkey=pkey | wire.FULL_MEMBER,
            child_type=kind,
            link=link,
            parent=parent,
            cm_supported=fport.profile.cm,
            max_ib_mtu=max_ib_mtu,
            features=features,
        )
        ctx.interfaces[name] = iface
        if parent is not None:
            parent.children.append(iface)
        if ctx.work.started:
            self._attach(iface)
        self._changed()
        return iface

    def _changed(self) -> None:
        for watcher in list(self.watchers):
            watcher()

    @staticmethod
    def offloads(fport: FabricPort) -> feat.HcaOffloads:
        """What the port's HCA offers IPoIB (IB_DEVICE_UD_IP_CSUM, IBK_UD_TSO, LRO); a child
        is registered on its parent's port, so it has its parent's HCA's offers."""
        p = fport.profile
        return feat.HcaOffloads(ud_ip_csum=p.ud_ip_csum, ud_tso=p.ud_tso, lro=p.lro)

    async def unregister(self, iface: Interface) -> None:
        """unregister_netdevice, under RTNL: ndo_stop if it is open, then it goes."""
        if iface.opened:
            iface.opened = False
            self.leave_all(iface)
        if iface.parent is not None and iface in iface.parent.children:
            iface.parent.children.remove(iface)
        if self.ctx.registered(iface):
            del self.ctx.interfaces[iface.name]
            self._changed()
        iface.rx.kick()  # its moderation timer, if any, sees it gone and ends
        await self._detach(iface)

    def _attach(self, iface: Interface) -> None:
        """Start moving the interface's packets (its UD QP exists from registration)."""
        ctx = self.ctx
        ctx.by_qpn[(iface.port.num, iface.qpn)] = iface
        neigh, port = self.neigh, iface.port

        def slow(frame: bytes) -> None:
            port.hold_multicast()  # released at the batch's end, member by member
            neigh.xmit(iface, frame)

        iface.pump = ctx.netdevs.pump(
            iface.link,
            functools.partial(neigh.xmit_fast, iface),  # per packet: no Python frame of its own
            slow,
            limit=ctx.txqlen,
            held=iface.placing,
            fast_end=lambda: neigh.xmit_batch_end(iface),
            slow_end=port.release_multicast,
            flows_ok=ctx.params.flows_ok,
        )
        iface.flows = iface.pump.flows

    async def _detach(self, iface: Interface) -> None:
        """Stop moving the interface's packets and delete its netdev (its reader thread
        ends with it)."""
        self.ctx.by_qpn.pop((iface.port.num, iface.qpn), None)
        self.placement.gone(iface)
        iface.port.quiesce()  # the receive thread no longer writes to its TUN
        await self.ctx.netdevs.destroy(iface.link)
        if iface.pump is not None:  # its thread is gone: its drops and sends become ours
            iface.stats["tx_dropped"] += iface.pump.dropped
            if iface.flows is not None:
                packets, nbytes = iface.flows.counts()
                iface.stats["tx_packets"] += packets
                iface.stats["tx_bytes"] += nbytes
            iface.pump = iface.flows = None

    # ------------------------------------------------------------- derived netdev state

    def operstate(self, iface: Interface, live: str, up: bool, carrier: bool) -> str:
        """default_operstate: a child without carrier is `lowerlayerdown` only when its parent
        (the iflink) has no carrier either; a TUN cannot know its parent, so it is derived."""
        if not up:
            return "down"
        if not carrier and iface.parent is not None:
            return "down" if iface.parent.carrier else "lowerlayerdown"
        return live

    def dev_id_read(self, iface: Interface, comm: str) -> None:
        """dev_id_show's netdev_info_once for ports >= 2, which have dev_port == dev_id."""
        if iface.parent is None and iface.dev_id and not iface.dev_id_warned:
            iface.dev_id_warned = True
            self.ctx.log.info(
                iface.name,
                f'"{comm}" wants to know my dev_id. Should it look at '
                "dev_port instead? See Documentation/ABI/testing/sysfs-class-net for "
                "more info.\n",
            )

    async def set_link_attrs(self, iface: Interface, **attrs: object) -> None:
        """Generic netdev stores (tx_queue_len, flags, ifalias, netdev_group), under RTNL."""
        async with self.ctx.rtnl:
            if not self.ctx.registered(iface):
                raise KernelError(errno.ENODEV)
            await self.ctx.netdevs.set_attrs(iface.link, **attrs)

    # ------------------------------------------------------------- umcast (§1)

    def set_umcast(self, iface: Interface, buf: bytes) -> None:
        """umcast_store: simple_strtoul, truncated to int, never fails."""
        self.umcast(iface, wire.c_int(wire.simple_strtoul(buf)))

    def umcast(self, iface: Interface, value: int) -> None:
        """ipoib_set_umcast."""
        if value > 0:
            iface.umcast = True
            self.ctx.log.warn(iface.name, "ignoring multicast groups joined directly by "
                                          "userspace\n")  # fmt: skip
        else:
            iface.umcast = False

    # ------------------------------------------------------------- mode (§3)

    async def set_mode(self, iface: Interface, buf: bytes) -> None:
        """mode's store: RTNL, then ipoib_set_mode."""
        async with self.ctx.rtnl:
            if not self.ctx.registered(iface):
                raise KernelError(errno.EPERM)
            await self.mode(iface, buf)

    async def mode(self, iface: Interface, buf: bytes) -> None:
        """ipoib_set_mode, under RTNL."""
        netdevs = self.ctx.netdevs
        if (iface.admin_cm and buf == b"connected\n") or (
            not iface.admin_cm and buf == b"datagram\n"
        ):
            return
        if iface.cm_supported and buf == b"connected\n":
            iface.admin_cm = True
            publish_routes(iface)  # the reader thread stops using UD routes to RC peers now
            self.ctx.log.warn(iface.name, "enabling connected mode will cause multicast packet "
                                          "drops\n")  # fmt: skip
            await self.update_features(iface)  # ipoib_fix_features drops IP_CSUM and TSO
            await self.dev_set_mtu(iface, wire.IPOIB_CM_MTU)
            iface.queues.reset_xps_gt(1)  # netif_set_real_num_tx_queues(dev, 1)
            self.flush_paths(iface)
            return
        if buf == b"datagram\n":
            iface.admin_cm = False
            publish_routes(iface)
            await self.update_features(iface)  # what was wanted comes back
            await self.dev_set_mtu(iface, min(iface.mcast_mtu, netdevs.mtu(iface.link)))
            self.flush_paths(iface)
            return
        raise KernelError(errno.EINVAL)

    # ------------------------------------------------------------- features (ndo_fix_features)

    async def update_features(self, iface: Interface) -> None:
        """netdev_update_features with ipoib_fix_features in the interface's mode; the TUN
        then takes what the interface now accepts (TUNSETOFFLOAD)."""
        await self._apply_features(iface, feat.ipoib_set_mode(iface.features, iface.admin_cm))

    async def _apply_features(self, iface: Interface, new: feat.Features) -> None:
        merged = ib.gro_enabled(iface)
        old, iface.features = iface.features, new
        if feat.tun_offload_flags(new) != feat.tun_offload_flags(old):
            await self.ctx.netdevs.set_offload(iface.link, feat.tun_offload_flags(new))
        if ib.gro_enabled(iface) != merged:
            self.placement.changed(iface)  # the peers merge for us, or stop

    def receive_changed(self, iface: Interface) -> None:
        """How the interface receives changed (RX moderation, data debug): its UD
        placements are offered again, or taken back."""
        self.placement.changed(iface)

    def data_debug_changed(self) -> None:
        for iface in list(self.ctx.interfaces.values()):
            self.receive_changed(iface)

    def feature_names(self) -> list[str]:
        """The kernel's feature names, in bit order (what ethtool asks the kernel for)."""
        return self.ctx.netdevs.feature_names()

    async def set_features(self, iface: Interface, bits: Sequence[feat.Request],
                           ) -> feat.SetFeaturesReply:  # fmt: skip
        """ETHTOOL_MSG_FEATURES_SET (`ethtool -K`), under RTNL: the core's ethnl_set_features
        with ipoib_fix_features as ndo_fix_features. A name the kernel does not know
        (EOPNOTSUPP) or a never-changeable one (EINVAL) refuses the whole request and
        changes nothing."""
        async with self.ctx.rtnl:
            if not self.ctx.registered(iface):
                raise KernelError(errno.ENODEV)
            new, reply = feat.ethnl_set_features(iface.features, bits, self.feature_names(),
                                                 feat.ipoib_fixer(iface.admin_cm))  # fmt: skip
            await self._apply_features(iface, new)
            return reply

    # ------------------------------------------------------------- MTU (§4)

    async def change_mtu(self, iface: Interface, new_mtu: int) -> None:
        """dev_set_mtu from the outside (sysfs `mtu`, netlink): RTNL, then the core and driver."""
        async with self.ctx.rtnl:
            await self.dev_set_mtu(iface, new_mtu)

    @staticmethod
    def check_mtu(iface: Interface, new_mtu: int) -> int:
        """The core's and ipoib_change_mtu's checks: the MTU the device ends up with, or raise."""
        if new_mtu < 0 or new_mtu > wire.IPOIB_CM_MTU:
            raise KernelError(errno.EINVAL, "mtu greater than device maximum")
        if iface.cm_enabled:
            return new_mtu
        if new_mtu < wire.IPOIB_MIN_MTU or new_mtu > wire.ud_mtu(iface.max_ib_mtu):
            raise KernelError(errno.EINVAL)
        return min(iface.mcast_mtu, new_mtu)

    async def dev_set_mtu(self, iface: Interface, new_mtu: int) -> None:
        """dev_set_mtu under RTNL: the core's no-op check, then ipoib_change_mtu."""
        log = self.ctx.log
        if new_mtu == self.ctx.netdevs.mtu(iface.link):
            return
        mtu = self.check_mtu(iface, new_mtu)
        if iface.cm_enabled:
            if new_mtu > iface.mcast_mtu:
                log.warn(iface.name, f"mtu > {iface.mcast_mtu} will cause multicast packet "
                                     "drops.\n")  # fmt: skip
        else:
            iface.admin_mtu = new_mtu
            if iface.mcast_mtu < new_mtu:
                log.dbg(iface.name, "MTU must be smaller than the underlying link layer "
                                    f"MTU - 4 ({iface.mcast_mtu})\n")  # fmt: skip
        await self._set_live_mtu(iface, mtu)

    async def _set_live_mtu(self, iface: Interface, mtu: int) -> None:
        iface.expected_mtu = mtu
        await self.ctx.netdevs.set_mtu(iface.link, mtu)

    async def _outside_mtu_change(self, iface: Interface, mtu: int) -> None:
        """`ip link set ... mtu` reached the TUN directly: apply the driver's rules afterwards."""
        old = iface.expected_mtu
        log = self.ctx.log
        try:
            result = self.check_mtu(iface, mtu)
        except KernelError:
            log.warn(iface.name, f"mtu {mtu} refused by ib_ipoib, restoring {old}\n")
            await self._set_live_mtu(iface, old)
            return
        if not iface.cm_enabled:
            iface.admin_mtu = mtu
        iface.expected_mtu = result
        if result != mtu:
            log.warn(iface.name, f"mtu {mtu} clamped to the multicast MTU {result}\n")
            await self._set_live_mtu(iface, result)

    # ------------------------------------------------------------- open / stop

    async def _open(self, iface: Interface) -> None:
        """ipoib_open: children follow the parent, then the broadcast join and carrier."""
        log, netdevs = self.ctx.log, self.ctx.netdevs
        log.dbg(iface.name, "bringing up interface\n")
        iface.opened = True
        self.placement.changed(iface)
        for child in iface.children:
            if not netdevs.is_up(child.link):
                await netdevs.set_up(child.link, True)
        if iface.parent is not None and not iface.parent.opened:
            log.dbg(iface.name, f"parent device {iface.parent.name} is not up, "
                                "so child device may be not functioning.\n")  # fmt: skip
        if not ib.pkey_present(iface):
            state = "Invalid" if not iface.pkey & wire.PKEY_MASK else "not found"
            log.warn(iface.name, f"P_Key 0x{iface.pkey:04x} is {state}\n")
            return
        self.mcast.start(iface)

    async def _stop(self, iface: Interface) -> None:
        """ipoib_stop: carrier off, leave every group, flush paths, children follow."""
        log, netdevs = self.ctx.log, self.ctx.netdevs
        log.dbg(iface.name, "stopping interface\n")
        iface.opened = False
        self.placement.changed(iface)
        log.dbg(iface.name, "downing ib_dev\n")
        log.dbg_mcast(iface.name, "stopping multicast thread\n")
        await self.carrier_off(iface)
        for child in iface.children:
            if netdevs.is_up(child.link):
                await netdevs.set_up(child.link, False)

    def leave_all(self, iface: Interface) -> None:
        """ipoib_mcast_dev_flush and ipoib_flush_paths."""
        iface.carrier = False
        self.mcast.flush(iface)
        self.flush_paths(iface)

    def fabric_port(self, num: int) -> FabricPort:
        """The HCA's port `num`; ENODEV for one it does not have."""
        for fport in self.ctx.ports:
            if fport.num == num:
                return fport
        raise KernelError(errno.ENODEV)

    async def set_port_link(self, num: int, up: bool) -> bool:
        """Fault injection: port `num`'s physical link goes down or comes back (the HCA then
        raises IB_EVENT_PORT_ERR or IB_EVENT_PORT_ACTIVE); False if it already was so."""
        return await self.fabric_port(num).set_link(up)

    # ib.PortReactions: what a port event does to an interface.

    async def carrier_off(self, iface: Interface) -> None:
        self.ctx.netdevs.set_carrier(iface.link, False)
        self.leave_all(iface)

    async def rejoin(self, iface: Interface) -> None:
        iface.mcast.pop(iface.broadcast_mgid, None)
        self.mcast.start(iface)

    def flush_paths(self, iface: Interface) -> None:
        self.neigh.flush(iface)

    def reregister(self, iface: Interface) -> None:
        self.neigh.mark_paths_invalid(iface)
        self.mcast.flush(iface)  # the SM holds none of them now: its refusals are ignored
        self.mcast.start(iface)

    # ------------------------------------------------------------- netdev events

    async def link_event(self, ifindex: int) -> None:
        """A netdev changed (ip link, or our own calls): follow its live state as ndo_* would.

        The live state is read now rather than taken from the event, so that events of our
        own earlier changes, arriving late, are not mistaken for changes from outside.
        """
        ctx = self.ctx
        async with ctx.rtnl:
            iface = ctx.by_ifindex(ifindex)
            if iface is None:
                return
            mtu = ctx.netdevs.mtu(iface.link)
            up = ctx.netdevs.is_up(iface.link)
            if mtu != iface.expected_mtu:
                await self._outside_mtu_change(iface, mtu)
            if up and not iface.opened:
                await self._open(iface)
            elif not up and iface.opened:
                await self._stop(iface)

    async def link_deleted(self, ifindex: int) -> None:
        """`ip link del` reached the TUN: a child goes (rtnl dellink); a parent comes back,
        since ipoib_del_child_link ignores parents and the kernel's `ip link del ib0` is a no-op.
        """
        ctx = self.ctx
        async with ctx.rtnl:
            iface = ctx.by_ifindex(ifindex)
            if iface is None:
                return
            self.leave_all(iface)
            if iface.is_child:
                await self.unregister(iface)
                return
            was_open = iface.opened
            iface.opened = False
            await self._detach(iface)
            offload = feat.tun_offload_flags(iface.features)
            iface.link = await ctx.netdevs.create(iface.name, mtu=iface.expected_mtu,
                                                  txqlen=ctx.txqlen, offload=offload)  # fmt: skip
            self._attach(iface)
            ctx.log.warn(iface.name, "parent interfaces are not deleted by ib_ipoib: "
                                     "recreated\n")  # fmt: skip
            if was_open:
                await ctx.netdevs.set_up(iface.link, True)

    async def _follow_links(self) -> None:
        """Every RTM_NEWLINK/RTM_DELLINK of our netdevs, as the core's notifiers call us."""
        async for ifindex, event in self.ctx.netdevs.link_events():
            self.ctx.ip_groups_kick.set()
            if event == "addresses":
                self.neigh.addresses_changed()
                continue
            try:
                if event == "deleted":
                    await self.link_deleted(ifindex)
                else:
                    await self.link_event(ifindex)
            except KernelError as e:
                if e.errno != errno.ENODEV:  # the link went away while we looked at it
                    self.ctx.log.daemon(f"link event for ifindex {ifindex}: {e}")
            except Exception:
                self.ctx.log.exception(f"link event for ifindex {ifindex} not followed")

    async def _follow_ip_groups(self) -> None:
        """The IP stack's multicast memberships, followed as ipoib_set_mcast_list does."""
        ctx = self.ctx
        interval, seen = IP_GROUP_POLL_SECONDS, None
        while True:
            with trio.move_on_after(interval):
                await ctx.ip_groups_kick.wait()
            kicked = ctx.ip_groups_kick.is_set()
            ctx.ip_groups_kick = trio.Event()
            try:
                groups = await ctx.netdevs.ip_memberships()
                await self.neigh.refresh_addresses()
                ifaces = list(ctx.interfaces.values())
                for iface in ifaces:
                    if iface.carrier:
                        ipv4, ipv6 = groups.get(iface.name, ([], []))
                        await self.mcast.restart(iface, ipv4, ipv6)
                now = (groups, [(i.name, i.carrier, tuple(i.addrs4)) for i in ifaces])
                steady = not kicked and now == seen
                interval = min(interval * 2, IP_GROUP_POLL_MAX) if steady else IP_GROUP_POLL_SECONDS
                seen = now
            except Exception:
                ctx.log.exception("the IP multicast list was not followed")
