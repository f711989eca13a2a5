"""ipoib_multicast.c: the join task (the broadcast group, then the IP groups the stack joins),
carrier on, the IP-group restart (ipoib_mcast_restart_task), send-only joins and multicast
sends.

As in the kernel, nothing here waits for the subnet manager while RTNL is held: stores and
netdev events only change the group list and kick the join task, which talks to the SA on
its own and takes RTNL only to apply a completed broadcast join (carrier on). Joins and
leaves of a port reach the SA in the order they were made, so a leave queued by a flush is
never overtaken by the join that follows it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable

import trio

from .. import wire
from ..errors import KernelError
from ..fabric.port import FabricPort
from ..fabric.sm import McMember
from .context import DriverContext
from .ib import UdQp
from .interface import Interface, McastEntry

IPOIB_MAX_MCAST_QUEUE = 64
IPOIB_MAX_BACKOFF_SECONDS = 16

#: dev_set_mtu through the core and ipoib_change_mtu (main.IPoIBMain.dev_set_mtu).
SetMtu = Callable[[Interface, int], Awaitable[None]]


class SaOrder:
    """One port's MCMemberRecord sets and deletes, sent in the order they were made: each
    request takes a ticket when it is made and goes once the one before it is done."""

    def __init__(self) -> None:
        self._last = trio.Event()
        self._last.set()

    def ticket(self) -> tuple[trio.Event, trio.Event]:
        """(what to wait for, what to set when done)."""
        before, mine = self._last, trio.Event()
        self._last = mine
        return before, mine


class Multicast:
    def __init__(self, ctx: DriverContext, ud: UdQp, set_mtu: SetMtu) -> None:
        self.ctx = ctx
        self.ud = ud
        self._set_mtu = set_mtu
        self._order: dict[int, SaOrder] = {}  # by port number

    def _sa(self, fport: FabricPort) -> SaOrder:
        order = self._order.get(fport.num)
        if order is None:
            order = self._order[fport.num] = SaOrder()
        return order

    # ------------------------------------------------------------- SA requests

    async def join(self, iface: Interface, mgid: bytes, *, send_only: bool = False,
                   create: bool = True) -> McMember | None:  # fmt: skip
        """ipoib_mcast_join and its completion, with their messages; None if it failed."""
        log = self.ctx.log
        gid = wire.format_gid_sysfs(mgid)
        kind = "sendonly " if send_only else ""
        before, mine = self._sa(iface.port).ticket()
        try:
            await before.wait()
            log.dbg_mcast(iface.name, f"joining MGID {gid}\n")
            member = await iface.port.join_multicast(
                iface.qpn, mgid, iface.pkey, send_only=send_only, create=create
            )
        except KernelError as e:
            log.dbg_mcast(iface.name, f"{kind}join completion for {gid} (status {-e.errno})\n")
            log.dbg_mcast(iface.name, f"{kind}multicast join failed for {gid}, "
                                      f"status {-e.errno}\n")  # fmt: skip
            return None
        finally:
            mine.set()
        log.dbg_mcast(iface.name, f"{kind}join completion for {gid} (status 0)\n")
        log.dbg_mcast(iface.name, f"MGID {gid} AV {wire.kernel_pointer(member)}, "
                                  f"LID 0x{member.mlid:04x}, SL {member.sl}\n")  # fmt: skip
        return member

    def leave(self, iface: Interface, mgid: bytes) -> None:
        """ipoib_mcast_leave: the SA delete goes out in order, without being waited for; if
        the subnet manager is gone, the membership went with it."""
        self.ctx.log.dbg_mcast(iface.name, f"leaving MGID {wire.format_gid_sysfs(mgid)}\n")
        before, mine = self._sa(iface.port).ticket()
        self.ctx.work.spawn(self._leave, iface.port, iface.qpn, mgid, before, mine)

    @staticmethod
    async def _leave(fport: FabricPort, qpn: int, mgid: bytes, before: trio.Event,
                     mine: trio.Event) -> None:  # fmt: skip
        try:
            await before.wait()
            await fport.leave_multicast(qpn, mgid)
        except KernelError:
            pass
        finally:
            mine.set()

    # ------------------------------------------------------------- the join task

    def start(self, iface: Interface) -> None:
        """ipoib_mcast_start_thread: the broadcast group is joined first, by the join task."""
        self.ctx.log.dbg_mcast(iface.name, "starting multicast thread\n")
        if iface.port.active:  # else the join task suspends before it makes priv->broadcast
            iface.mcast.setdefault(iface.broadcast_mgid, McastEntry(iface.broadcast_mgid))
        self._kick(iface)

    def _kick(self, iface: Interface) -> None:
        if iface.mcast_joining:
            iface.mcast_wake.set()
            return
        iface.mcast_joining = True
        self.ctx.work.spawn(self._join_task, iface)

    def _pending(self, iface: Interface) -> list[McastEntry]:
        """What the join task has to do: the broadcast group until it is joined, then every
        full-member group not joined yet."""
        broadcast = iface.mcast.get(iface.broadcast_mgid)
        if broadcast is None:
            return []
        if not broadcast.complete:
            return [broadcast]
        return [e for _, e in sorted(iface.mcast.items())
                if not e.complete and not e.send_only]  # fmt: skip

    async def _join_task(self, iface: Interface) -> None:
        """ipoib_mcast_join_task: one join at a time; a failed one is tried again after its
        back-off (doubled up to IPOIB_MAX_BACKOFF_SECONDS), the others meanwhile."""
        try:
            while iface.opened and self.ctx.registered(iface):
                if not iface.port.active:
                    state = iface.port.state
                    self.ctx.log.dbg(iface.name, f"port state is not ACTIVE (state = {state}) "
                                                 "suspending join task\n")  # fmt: skip
                    return
                now = trio.current_time()
                pending = self._pending(iface)
                if not pending:
                    return
                ready = [e for e in pending if e.delay_until <= now]
                if not ready:
                    iface.mcast_wake = trio.Event()
                    with trio.move_on_at(min(e.delay_until for e in pending)):
                        await iface.mcast_wake.wait()
                    continue
                await self._join_entry(iface, ready[0])
        finally:
            iface.mcast_joining = False

    async def _join_entry(self, iface: Interface, entry: McastEntry) -> None:
        broadcast = entry.mgid == iface.broadcast_mgid
        member = await self.join(iface, entry.mgid, create=not broadcast)
        if iface.mcast.get(entry.mgid) is not entry or not iface.opened:
            if member is not None:
                self.leave(iface, entry.mgid)  # flushed meanwhile: this membership is stale
            return
        if member is None:
            entry.backoff = min(entry.backoff * 2, IPOIB_MAX_BACKOFF_SECONDS)
            entry.delay_until = trio.current_time() + entry.backoff
            return
        entry.complete = True
        entry.mlid = member.mlid
        self._flush_queue(iface, entry)
        if broadcast:
            async with self.ctx.rtnl:
                if self.ctx.registered(iface) and iface.mcast.get(entry.mgid) is entry:
                    await self._carrier_on(iface, member)

    async def _carrier_on(self, iface: Interface, member: McMember) -> None:
        """ipoib_mcast_join_finish for the broadcast group, then ipoib_mcast_carrier_on_task,
        under RTNL."""
        new_mcast_mtu = wire.ud_mtu(member.mtu)
        if iface.mcast_mtu == iface.admin_mtu:
            iface.admin_mtu = new_mcast_mtu
        iface.mcast_mtu = new_mcast_mtu
        if not iface.cm_enabled:
            await self._set_mtu(iface, min(iface.mcast_mtu, iface.admin_mtu))
        iface.carrier = True
        self.ctx.netdevs.set_carrier(iface.link, True)
        self.ctx.ip_groups_kick.set()  # the IP groups are joined next, as set_mcast_list does
        await self._add_link_local(iface)

    async def _add_link_local(self, iface: Interface) -> None:
        """addrconf's link-local, which the kernel makes for no TUN in eui64 mode; with
        stable-privacy or random modes it has made its own, and that one stays alone."""
        netdevs = self.ctx.netdevs
        try:
            addresses = (await netdevs.addresses()).get(iface.link.ifindex, [])
            if any(family == 10 and a.startswith("fe80:") for family, a, _ in addresses):
                return
            address = ipaddress.IPv6Address(wire.link_local_from_guid(iface.port.guid))
            await netdevs.add_address(iface.link, str(address), 64)
        except KernelError as e:
            self.ctx.log.dbg(iface.name, f"cannot add the link-local address: {e}\n")

    def flush(self, iface: Interface) -> None:
        """ipoib_mcast_dev_flush: every group joined is left and every one forgotten."""
        for mgid, entry in list(iface.mcast.items()):
            if entry.complete:
                self.leave(iface, mgid)
        iface.mcast.clear()

    # ------------------------------------------------------------- IP groups

    async def restart(self, iface: Interface, ipv4: Iterable[str], ipv6: Iterable[str]) -> None:
        """ipoib_mcast_restart_task: full joins for what the IP stack joined, leaves for the
        rest; the joins themselves are the join task's.

        IPv6 groups below link-local scope never reach the device (igmp6_group_added).
        """
        async with self.ctx.rtnl:
            if not iface.carrier or not self.ctx.registered(iface):
                return
            mgids = {wire.ipv4_mc_mgid(g, iface.broadcast) for g in ipv4}
            mgids |= {
                wire.ipv6_mc_mgid(g, iface.broadcast)
                for g in ipv6
                if int(g.split(":")[0], 16) & 0xF >= 2
            }
            wanted = mgids - {iface.broadcast_mgid}
            for mgid, entry in list(iface.mcast.items()):
                if mgid != iface.broadcast_mgid and not entry.send_only and mgid not in wanted:
                    gid = wire.format_gid_sysfs(mgid)
                    self.ctx.log.dbg_mcast(iface.name, f"deleting multicast group {gid}\n")
                    del iface.mcast[mgid]
                    if entry.complete:
                        self.leave(iface, mgid)
            added = [mgid for mgid in sorted(wanted) if self._add_group(iface, mgid)]
            if added:
                self._kick(iface)

    def _add_group(self, iface: Interface, mgid: bytes) -> bool:
        """A group the stack joined gets a full-member entry for the join task."""
        log = self.ctx.log
        entry = iface.mcast.get(mgid)
        if entry is not None and (not entry.send_only or iface.umcast):
            return False  # joined or joining already, or umcast counts our own send-only join
        if entry is not None:  # a send-only join becomes a full one
            del iface.mcast[mgid]
            if entry.complete:
                self.leave(iface, mgid)
        gid = wire.format_gid_sysfs(mgid)
        if iface.umcast and iface.port.has_member(mgid, exclude_qpn=iface.qpn):
            log.dbg_mcast(iface.name, f"ignoring multicast entry for mgid {gid}\n")
            return False
        log.dbg_mcast(iface.name, f"adding multicast entry for mgid {gid}\n")
        iface.mcast[mgid] = McastEntry(mgid)
        return True

    # ------------------------------------------------------------- sending

    def send(self, iface: Interface, mgid: bytes, proto: int, frame: bytes) -> None:
        """ipoib_mcast_send: a group not joined gets a send-only join; frames wait for it."""
        if self.ud.oversize(iface, frame):
            return
        entry = iface.mcast.get(mgid)
        now = self.ctx.clock.now
        if entry is not None and entry.complete:
            entry.used = now
            self.ud.send_multicast(iface, entry, proto, frame)
            return
        if entry is None:
            self.ctx.log.dbg_mcast(iface.name, "setting up send only multicast group for "
                                               f"{wire.format_gid_sysfs(mgid)}\n")  # fmt: skip
            entry = McastEntry(mgid, send_only=True, used=now)
            iface.mcast[mgid] = entry
            self.ctx.work.spawn(self._send_only_join, iface, entry)
        if len(entry.queue) >= IPOIB_MAX_MCAST_QUEUE:
            self.ud.drop(iface)
            return
        entry.queue.append((proto, frame))

    def send_joined(self, iface: Interface, mgid: bytes, proto: int, frame: bytes) -> None:
        """To a group the interface has joined, or nowhere (ARP requests to the broadcast
        group, which needs no send-only join)."""
        entry = iface.mcast.get(mgid)
        if entry is not None and entry.complete:
            self.ud.send_multicast(iface, entry, proto, frame)

    def _flush_queue(self, iface: Interface, entry: McastEntry) -> None:
        """ipoib_mcast_join_finish: what waited for the join goes out."""
        queued, entry.queue = entry.queue, []
        for proto, frame in queued:
            self.send(iface, entry.mgid, proto, frame)

    async def _send_only_join(self, iface: Interface, entry: McastEntry) -> None:
        member = await self.join(iface, entry.mgid, send_only=True)
        if member is None:
            iface.stats["tx_dropped"] += len(entry.queue)
            if iface.mcast.get(entry.mgid) is entry:
                del iface.mcast[entry.mgid]
            return
        if iface.mcast.get(entry.mgid) is not entry:
            self.leave(iface, entry.mgid)  # flushed or promoted meanwhile
            return
        entry.mlid = member.mlid
        entry.complete = True
        self._flush_queue(iface, entry)

    def age(self, cutoff: float) -> None:
        """Send-only groups unused since `cutoff` are left, as the neighbour reaper does."""
        for iface in list(self.ctx.interfaces.values()):
            for mgid, entry in list(iface.mcast.items()):
                if entry.send_only and entry.complete and entry.used < cutoff:
                    del iface.mcast[mgid]
                    self.leave(iface, mgid)
