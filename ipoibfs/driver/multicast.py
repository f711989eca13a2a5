"""ipoib_multicast.c: the broadcast join and carrier, the join retry, the IP groups the stack
joins (ipoib_mcast_restart_task), send-only joins and multicast sends."""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable

import trio

from .. import wire
from ..errors import KernelError
from ..fabric import McMember
from .context import DriverContext
from .ib import UdQp, pkey_present
from .interface import Interface, McastEntry

IPOIB_MAX_MCAST_QUEUE = 64
JOIN_RETRY_FIRST, JOIN_RETRY_MAX = 1.0, 16.0  # the join task's back-off, in seconds

#: dev_set_mtu through the core and ipoib_change_mtu (main.IPoIBMain.dev_set_mtu).
SetMtu = Callable[[Interface, int], Awaitable[None]]


class Multicast:
    def __init__(self, ctx: DriverContext, ud: UdQp, set_mtu: SetMtu) -> None:
        self.ctx = ctx
        self.ud = ud
        self._set_mtu = set_mtu

    # ------------------------------------------------------------- joins

    async def join(self, iface: Interface, mgid: bytes, *, send_only: bool = False,
                   create: bool = True) -> McMember | None:  # fmt: skip
        """ipoib_mcast_join and its completion, with their messages; None if it failed."""
        log = self.ctx.log
        gid = wire.format_gid_sysfs(mgid)
        kind = "sendonly " if send_only else ""
        log.dbg_mcast(iface.name, f"joining MGID {gid}\n")
        try:
            member = await iface.port.join_multicast(
                iface.qpn, mgid, iface.pkey, send_only=send_only, create=create
            )
        except KernelError as e:
            log.dbg_mcast(iface.name, f"{kind}join completion for {gid} (status {-e.errno})\n")
            log.dbg_mcast(iface.name, f"{kind}multicast join failed for {gid}, "
                                      f"status {-e.errno}\n")  # fmt: skip
            return None
        log.dbg_mcast(iface.name, f"{kind}join completion for {gid} (status 0)\n")
        log.dbg_mcast(iface.name, f"MGID {gid} AV {wire.kernel_pointer(member)}, "
                                  f"LID 0x{member.mlid:04x}, SL {member.sl}\n")  # fmt: skip
        return member

    async def leave(self, iface: Interface, mgid: bytes) -> None:
        """An SA leave; if the subnet manager is gone, the membership went with it."""
        self.ctx.log.dbg_mcast(iface.name, f"leaving MGID {wire.format_gid_sysfs(mgid)}\n")
        try:
            await iface.port.leave_multicast(iface.qpn, mgid)
        except KernelError:
            pass

    async def join_broadcast(self, iface: Interface, *, retry: bool = True) -> bool:
        """ipoib_mcast_join_task for the broadcast group, then ipoib_mcast_carrier_on_task."""
        mgid = iface.broadcast_mgid
        entry = iface.mcast.setdefault(mgid, McastEntry(mgid))
        self.ctx.log.dbg_mcast(iface.name, "starting multicast thread\n")
        member = await self.join(iface, mgid, create=False)
        if member is None:
            if iface.opened and retry:
                self.ctx.work.spawn(self._retry_join, iface)
            return False
        entry.complete = True
        entry.mlid = member.mlid
        new_mcast_mtu = wire.ud_mtu(member.mtu)
        if iface.mcast_mtu == iface.admin_mtu:
            iface.admin_mtu = new_mcast_mtu
        iface.mcast_mtu = new_mcast_mtu
        if not iface.cm_enabled:
            await self._set_mtu(iface, min(iface.mcast_mtu, iface.admin_mtu))
        iface.carrier = True
        self.ctx.netdevs.set_carrier(iface.link, True)
        await self._add_link_local(iface)
        return True

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

    async def _retry_join(self, iface: Interface) -> None:
        """The join task's back-off: try again while the interface is up without carrier."""
        delay = JOIN_RETRY_FIRST
        while True:
            await trio.sleep(delay)
            delay = min(delay * 2, JOIN_RETRY_MAX)
            async with self.ctx.rtnl:
                if not iface.opened or iface.carrier or not self.ctx.registered(iface):
                    return
                if not pkey_present(iface):
                    return
                if await self.join_broadcast(iface, retry=False):
                    return

    async def flush(self, iface: Interface) -> None:
        """ipoib_mcast_dev_flush: every group joined is left and forgotten."""
        for mgid, entry in list(iface.mcast.items()):
            if entry.complete:
                await self.leave(iface, mgid)
        iface.mcast.clear()

    # ------------------------------------------------------------- IP groups

    async def restart(self, iface: Interface, ipv4: Iterable[str], ipv6: Iterable[str]) -> None:
        """ipoib_mcast_restart_task: full joins for what the IP stack joined, leaves for the rest.

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
                        await self.leave(iface, mgid)
            for mgid in sorted(wanted):
                await self._add_group(iface, mgid)

    async def _add_group(self, iface: Interface, mgid: bytes) -> None:
        log = self.ctx.log
        entry = iface.mcast.get(mgid)
        if entry is not None and (not entry.send_only or iface.umcast):
            return  # joined already, or umcast counts our own send-only join
        if entry is not None:  # a send-only join becomes a full one
            del iface.mcast[mgid]
            if entry.complete:
                await self.leave(iface, mgid)
        gid = wire.format_gid_sysfs(mgid)
        if iface.umcast and iface.port.has_member(mgid, exclude_qpn=iface.qpn):
            log.dbg_mcast(iface.name, f"ignoring multicast entry for mgid {gid}\n")
            return
        log.dbg_mcast(iface.name, f"adding multicast entry for mgid {gid}\n")
        entry = McastEntry(mgid)
        iface.mcast[mgid] = entry
        member = await self.join(iface, mgid)
        if member is None:
            del iface.mcast[mgid]  # tried again on the next pass
            return
        entry.complete = True
        entry.mlid = member.mlid

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

    async def _send_only_join(self, iface: Interface, entry: McastEntry) -> None:
        member = await self.join(iface, entry.mgid, send_only=True)
        if member is None:
            iface.stats["tx_dropped"] += len(entry.queue)
            iface.mcast.pop(entry.mgid, None)
            return
        if iface.mcast.get(entry.mgid) is not entry:
            await self.leave(iface, entry.mgid)  # flushed or promoted meanwhile
            return
        entry.mlid = member.mlid
        entry.complete = True
        queued, entry.queue = entry.queue, []
        for proto, frame in queued:
            self.send(iface, entry.mgid, proto, frame)

    async def age(self, cutoff: float) -> None:
        """Send-only groups unused since `cutoff` are left, as the neighbour reaper does."""
        for iface in list(self.ctx.interfaces.values()):
            for mgid, entry in list(iface.mcast.items()):
                if entry.send_only and entry.complete and entry.used < cutoff:
                    del iface.mcast[mgid]
                    await self.leave(iface, mgid)
