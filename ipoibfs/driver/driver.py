"""The IPoIB driver of one host: interfaces, children, mode, MTU, multicast, in the kernel's shape.

Every method that the kernel guards with RTNL takes `self.rtnl`; every refusal raises a
KernelError with the errno ib_ipoib returns. Section numbers refer to
shared/reference/linux-ipoib-driver.md.
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Iterable
from contextlib import asynccontextmanager
from typing import Protocol

import trio

from .. import wire
from ..errors import KernelError
from ..fabric import FabricPort, HcaDevice, McMember
from .cm import ConnectedMode
from .datapath import DataPath
from .interface import ChildType, Interface, McastEntry, Netdevs
from .params import ModuleParams


class DriverLog(Protocol):
    """ipoib_warn / ipoib_dbg / ipoib_dbg_mcast: messages prefixed with the device name."""

    def warn(self, dev: str, text: str) -> None: ...
    def info(self, dev: str, text: str) -> None: ...
    def dbg(self, dev: str, text: str) -> None: ...
    def dbg_mcast(self, dev: str, text: str) -> None: ...


class IPoIBDriver:
    def __init__(
        self,
        device: HcaDevice,
        ports: list[FabricPort],
        netdevs: Netdevs,
        params: ModuleParams,
        log: DriverLog,
    ) -> None:
        self.device = device
        self.ports = ports
        self.netdevs = netdevs
        self.params = params
        self.log = log
        self.interfaces: dict[str, Interface] = {}
        self.rtnl = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self.datapath = DataPath(self)
        self.cm = ConnectedMode(self)

    # ------------------------------------------------------------- lifetime

    def start(self, nursery: trio.Nursery) -> None:
        """Give the driver its work queue (ipoib_workqueue) and start receiving."""
        self._nursery = nursery
        for fport in self.ports:
            fport.on_pkey_change = lambda f=fport: self.pkey_event(f)
            if fport.plane is not None:
                nursery.start_soon(
                    fport.plane.receive,
                    lambda data, fds, f=fport: self.datapath.receive(f, data, fds),
                )
        nursery.start_soon(self.datapath.reap)

    def spawn(self, fn, *args) -> None:
        """Queue work (a task in the driver's nursery)."""
        if self._nursery is None:
            raise RuntimeError("driver not started")
        self._nursery.start_soon(fn, *args)

    @property
    def txqlen(self) -> int:
        return 2 * self.params["send_queue_size"]

    async def add_ports(self) -> list[Interface]:
        """ipoib_add_one: one parent interface `ib<N>` per port, DOWN, datagram mode."""
        parents = []
        async with self.rtnl:
            for index, fport in enumerate(self.ports):
                parents.append(
                    await self._register(
                        f"ib{index}", fport, self._parent_pkey(fport), ChildType.PARENT, None
                    )
                )
        return parents

    @staticmethod
    def _parent_pkey(fport: FabricPort) -> int:
        """ipoib_add_port: the parent takes the P_Key at index 0 of the port's table."""
        return fport.port.pkeys[0] or wire.DEFAULT_PKEY

    async def shutdown(self) -> None:
        """Module unload: every interface goes, children first."""
        async with self.rtnl:
            for iface in sorted(self.interfaces.values(), key=lambda i: not i.is_child):
                self.interfaces.pop(iface.name)
                self.datapath.detach(iface)
                await self.netdevs.destroy(iface.link)

    def by_ifindex(self, ifindex: int) -> Interface | None:
        for iface in self.interfaces.values():
            if iface.link.ifindex == ifindex:
                return iface
        return None

    async def _register(
        self, name: str, fport: FabricPort, pkey: int, kind: ChildType, parent: Interface | None
    ) -> Interface:
        """register_netdevice + ipoib_ndo_init: the full-membership bit is set here."""
        max_ib_mtu = fport.port.profile.max_mtu
        link = await self.netdevs.create(name, mtu=wire.ud_mtu(max_ib_mtu), txqlen=self.txqlen)
        iface = Interface(
            name=name,
            port=fport,
            qpn=self.device.alloc_qpn(),
            pkey=pkey | wire.FULL_MEMBER,
            child_type=kind,
            link=link,
            parent=parent,
            cm_supported=fport.port.profile.cm,
            max_ib_mtu=max_ib_mtu,
        )
        self.interfaces[name] = iface
        if parent is not None:
            parent.children.append(iface)
        if self._nursery is not None:
            self.datapath.attach(iface)
        return iface

    async def _unregister(self, iface: Interface) -> None:
        if iface.opened:
            iface.opened = False
            await self._leave_all(iface)
        if iface.parent is not None and iface in iface.parent.children:
            iface.parent.children.remove(iface)
        self.interfaces.pop(iface.name, None)
        self.datapath.detach(iface)
        await self.netdevs.destroy(iface.link)

    # ------------------------------------------------------------- children (§2)

    async def create_child(self, parent: Interface, buf: bytes, *, net_admin: bool) -> Interface:
        """create_child_store + ipoib_vlan_add."""
        pkey = wire.sscanf_int(buf)
        if pkey is None or pkey <= 0 or pkey > 0xFFFF or pkey == 0x8000:
            raise KernelError(errno.EINVAL)
        async with self._vlan_lock(parent, net_admin):
            name = f"{parent.name[:10]}.{pkey:04x}"
            if parent.pkey == pkey or any(
                c.child_type is ChildType.LEGACY and c.pkey == pkey for c in parent.children
            ):
                raise KernelError(errno.ENOTUNIQ)
            try:
                return await self._register(name, parent.port, pkey, ChildType.LEGACY, parent)
            except KernelError as e:
                self.log.warn(name, f"failed to initialize; error {-e.errno}")
                raise

    async def delete_child(self, parent: Interface, buf: bytes, *, net_admin: bool) -> None:
        """delete_child_store + ipoib_vlan_delete; the unregister runs from the work queue."""
        pkey = wire.sscanf_int(buf)
        if pkey is None or pkey < 0 or pkey > 0xFFFF:
            raise KernelError(errno.EINVAL)
        async with self._vlan_lock(parent, net_admin):
            for child in parent.children:
                if child.pkey == pkey and child.child_type is ChildType.LEGACY:
                    parent.children.remove(child)
                    self.spawn(self._vlan_delete_task, child)
                    return
        raise KernelError(errno.ENODEV)

    @asynccontextmanager
    async def _vlan_lock(self, parent: Interface, net_admin: bool):
        """ipoib_vlan_add/delete's preamble: CAP_NET_ADMIN, RTNL, a registered parent."""
        if not net_admin:
            raise KernelError(errno.EPERM)
        async with self.rtnl:
            if parent.name not in self.interfaces:
                raise KernelError(errno.EPERM)
            yield

    async def _vlan_delete_task(self, child: Interface) -> None:
        async with self.rtnl:
            if child.name in self.interfaces:
                self.log.dbg(child.name, f"delete child vlan {child.name}\n")
                await self._unregister(child)

    async def set_link_attrs(self, iface: Interface, **attrs) -> None:
        """Generic netdev stores (tx_queue_len, flags, ifalias, netdev_group), under RTNL."""
        async with self.rtnl:
            if iface.name not in self.interfaces:
                raise KernelError(errno.ENODEV)
            await self.netdevs.set_attrs(iface.link, **attrs)

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
            self.log.info(
                iface.name,
                f'"{comm}" wants to know my dev_id. Should it look at '
                "dev_port instead? See Documentation/ABI/testing/sysfs-class-net for "
                "more info.\n",
            )

    # ------------------------------------------------------------- umcast (§1)

    def set_umcast(self, iface: Interface, buf: bytes) -> None:
        """umcast_store: simple_strtoul, truncated to int, never fails."""
        self._set_umcast(iface, wire.c_int(wire.simple_strtoul(buf)))

    def _set_umcast(self, iface: Interface, value: int) -> None:
        """ipoib_set_umcast."""
        if value > 0:
            iface.umcast = True
            self.log.warn(iface.name, "ignoring multicast groups joined directly by userspace\n")
        else:
            iface.umcast = False

    # ------------------------------------------------------------- ethtool (§8)

    def set_coalesce(self, iface: Interface, usecs: int | None, frames: int | None) -> None:
        """ipoib_set_coalesce: each value at most 0xffff; the CQ moderation always applies."""
        usecs = iface.coalesce_usecs if usecs is None else usecs
        frames = iface.coalesce_frames if frames is None else frames
        if not 0 <= usecs <= 0xFFFF or not 0 <= frames <= 0xFFFF:
            raise KernelError(errno.EINVAL)
        iface.coalesce_usecs, iface.coalesce_frames = usecs, frames

    # ------------------------------------------------------------- mode (§3)

    async def set_mode(self, iface: Interface, buf: bytes) -> None:
        async with self.rtnl:
            if iface.name not in self.interfaces:
                raise KernelError(errno.EPERM)
            await self._set_mode(iface, buf)

    async def _set_mode(self, iface: Interface, buf: bytes) -> None:
        """ipoib_set_mode, under RTNL."""
        if (iface.admin_cm and buf == b"connected\n") or (
            not iface.admin_cm and buf == b"datagram\n"
        ):
            return
        if iface.cm_supported and buf == b"connected\n":
            iface.admin_cm = True
            self.log.warn(iface.name, "enabling connected mode will cause multicast packet drops\n")
            await self.netdevs.set_offload(iface.link, False)  # ipoib_fix_features
            await self._dev_set_mtu(iface, wire.IPOIB_CM_MTU)
            self._flush_paths(iface)
            return
        if buf == b"datagram\n":
            iface.admin_cm = False
            await self.netdevs.set_offload(iface.link, True)
            await self._dev_set_mtu(iface, min(iface.mcast_mtu, self.netdevs.mtu(iface.link)))
            self._flush_paths(iface)
            return
        raise KernelError(errno.EINVAL)

    # ------------------------------------------------------------- rtnl_link_ops (§5)

    async def new_link(
        self, parent: str, name: str | None, pkey: int | None, mode: int | None = None,
        umcast: int | None = None,
    ) -> Interface:  # fmt: skip
        """ipoib_new_child_link (`ip link add link PARENT [name NAME] type ipoib ...`): an
        RTNL child, with no sysfs attributes and no uniqueness check."""
        async with self.rtnl:
            pdev = self.interfaces.get(parent)
            if pdev is None:
                raise KernelError(errno.ENODEV)
            if pdev.is_child:
                self.log.warn(pdev.name, "child creation disallowed for child devices\n")
                raise KernelError(errno.EINVAL)
            if pkey is None:
                self.log.dbg(pdev.name, "no pkey specified, using parent pkey\n")
                pkey = pdev.pkey
            if pkey & 0x7FFF == 0:
                raise KernelError(errno.EINVAL)
            name = self._link_name(name or "ipoib%d")
            iface = await self._register(name, pdev.port, pkey, ChildType.RTNL, pdev)
            try:
                await self._change_link(iface, mode, umcast)
            except KernelError:
                await self._unregister(iface)
                raise
            return iface

    def _link_name(self, name: str) -> str:
        """dev_valid_name, and dev_alloc_name for a name with one %d."""
        if (not name or len(name.encode()) >= wire.IFNAMSIZ or name in (".", "..")
                or any(c in name for c in "/: \t\n")):  # fmt: skip
            raise KernelError(errno.EINVAL)
        if "%" not in name:
            return name
        if name.count("%") != 1 or "%d" not in name:
            raise KernelError(errno.EINVAL)
        taken = set(self.netdevs.names())
        for i in range(32768):
            candidate = name.replace("%d", str(i))
            if candidate not in taken:
                if len(candidate.encode()) >= wire.IFNAMSIZ:
                    break
                return candidate
        raise KernelError(errno.ENFILE)

    async def change_link(self, iface: Interface, mode: int | None, umcast: int | None) -> None:
        """ipoib_changelink (`ip link set DEV type ipoib ...`); a pkey is ignored."""
        async with self.rtnl:
            if iface.name not in self.interfaces:
                raise KernelError(errno.ENODEV)
            await self._change_link(iface, mode, umcast)

    async def _change_link(self, iface: Interface, mode: int | None, umcast: int | None) -> None:
        if mode is not None:
            if mode not in (wire.IPOIB_MODE_DATAGRAM, wire.IPOIB_MODE_CONNECTED):
                raise KernelError(errno.EINVAL)
            connected = mode == wire.IPOIB_MODE_CONNECTED
            await self._set_mode(iface, b"connected\n" if connected else b"datagram\n")
        if umcast is not None:
            self._set_umcast(iface, umcast)

    async def del_link(self, iface: Interface) -> None:
        """ipoib_del_child_link (`ip link del DEV`): a child of either kind goes at once; a
        parent stays, and the call still succeeds."""
        async with self.rtnl:
            if iface.parent is None or iface.name not in self.interfaces:
                return
            await self._unregister(iface)

    def _flush_paths(self, iface: Interface) -> None:
        self.datapath.flush(iface)

    # ------------------------------------------------------------- MTU (§4)

    async def change_mtu(self, iface: Interface, new_mtu: int) -> None:
        """dev_set_mtu from the outside (sysfs `mtu`, netlink): RTNL, then the core and driver."""
        async with self.rtnl:
            await self._dev_set_mtu(iface, new_mtu)

    def check_mtu(self, iface: Interface, new_mtu: int) -> int:
        """The core's and ipoib_change_mtu's checks: the MTU the device ends up with, or raise."""
        if new_mtu < 0 or new_mtu > wire.IPOIB_CM_MTU:
            raise KernelError(errno.EINVAL, "mtu greater than device maximum")
        if iface.cm_enabled:
            return new_mtu
        if new_mtu < wire.IPOIB_MIN_MTU or new_mtu > wire.ud_mtu(iface.max_ib_mtu):
            raise KernelError(errno.EINVAL)
        return min(iface.mcast_mtu, new_mtu)

    async def _dev_set_mtu(self, iface: Interface, new_mtu: int) -> None:
        if new_mtu == self.netdevs.mtu(iface.link):
            return
        mtu = self.check_mtu(iface, new_mtu)
        if iface.cm_enabled:
            if new_mtu > iface.mcast_mtu:
                self.log.warn(
                    iface.name, f"mtu > {iface.mcast_mtu} will cause multicast packet drops.\n"
                )
        else:
            iface.admin_mtu = new_mtu
            if iface.mcast_mtu < new_mtu:
                self.log.dbg(
                    iface.name,
                    "MTU must be smaller than the underlying link layer "
                    f"MTU - 4 ({iface.mcast_mtu})\n",
                )
        await self._set_live_mtu(iface, mtu)

    async def _set_live_mtu(self, iface: Interface, mtu: int) -> None:
        iface.expected_mtu = mtu
        await self.netdevs.set_mtu(iface.link, mtu)

    # ------------------------------------------------------------- open / stop

    async def link_event(self, ifindex: int) -> None:
        """A netdev changed (ip link, or our own calls): follow its live state as ndo_* would.

        The live state is read now rather than taken from the event, so that events of our
        own earlier changes, arriving late, are not mistaken for changes from outside.
        """
        async with self.rtnl:
            iface = self.by_ifindex(ifindex)
            if iface is None:
                return
            mtu = self.netdevs.mtu(iface.link)
            up = self.netdevs.is_up(iface.link)
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
        async with self.rtnl:
            iface = self.by_ifindex(ifindex)
            if iface is None:
                return
            await self._leave_all(iface)
            if iface.is_child:
                await self._unregister(iface)
                return
            was_open = iface.opened
            iface.opened = False
            self.datapath.detach(iface)
            await self.netdevs.destroy(iface.link)
            iface.link = await self.netdevs.create(
                iface.name, mtu=iface.expected_mtu, txqlen=self.txqlen
            )
            self.datapath.attach(iface)
            self.log.warn(iface.name, "parent interfaces are not deleted by ib_ipoib: recreated\n")
            if was_open:
                await self.netdevs.set_up(iface.link, True)

    async def _outside_mtu_change(self, iface: Interface, mtu: int) -> None:
        """`ip link set ... mtu` reached the TUN directly: apply the driver's rules afterwards."""
        old = iface.expected_mtu
        try:
            result = self.check_mtu(iface, mtu)
        except KernelError:
            self.log.warn(iface.name, f"mtu {mtu} refused by ib_ipoib, restoring {old}\n")
            await self._set_live_mtu(iface, old)
            return
        if not iface.cm_enabled:
            iface.admin_mtu = mtu
        iface.expected_mtu = result
        if result != mtu:
            self.log.warn(iface.name, f"mtu {mtu} clamped to the multicast MTU {result}\n")
            await self._set_live_mtu(iface, result)

    async def _open(self, iface: Interface) -> None:
        """ipoib_open: children follow the parent, then the broadcast join and carrier."""
        self.log.dbg(iface.name, "bringing up interface\n")
        iface.opened = True
        for child in iface.children:
            if not self.netdevs.is_up(child.link):
                await self.netdevs.set_up(child.link, True)
        if iface.parent is not None and not iface.parent.opened:
            self.log.dbg(
                iface.name,
                f"parent device {iface.parent.name} is not up, "
                "so child device may be not functioning.\n",
            )
        if not self._pkey_present(iface):
            state = "Invalid" if not iface.pkey & 0x7FFF else "not found"
            self.log.warn(iface.name, f"P_Key 0x{iface.pkey:04x} is {state}\n")
            return
        await self._join_broadcast(iface)

    def _pkey_present(self, iface: Interface) -> bool:
        return bool(iface.pkey & 0x7FFF) and iface.port.port.pkey_index(iface.pkey) is not None

    async def _join_broadcast(self, iface: Interface, *, retry: bool = True) -> bool:
        """ipoib_mcast_join_task for the broadcast group, then ipoib_mcast_carrier_on_task."""
        mgid = iface.broadcast_mgid
        entry = iface.mcast.setdefault(mgid, McastEntry(mgid))
        self.log.dbg_mcast(iface.name, "starting multicast thread\n")
        member = await self.join_group(iface, mgid, create=False)
        if member is None:
            if iface.opened and retry:
                self.spawn(self._retry_join, iface)
            return False
        entry.complete = True
        entry.mlid = member.mlid
        new_mcast_mtu = wire.ud_mtu(member.mtu)
        if iface.mcast_mtu == iface.admin_mtu:
            iface.admin_mtu = new_mcast_mtu
        iface.mcast_mtu = new_mcast_mtu
        if not iface.cm_enabled:
            await self._dev_set_mtu(iface, min(iface.mcast_mtu, iface.admin_mtu))
        iface.carrier = True
        self.netdevs.set_carrier(iface.link, True)
        await self._add_link_local(iface)
        return True

    async def _add_link_local(self, iface: Interface) -> None:
        """addrconf's link-local, which the kernel makes for no TUN in eui64 mode; with
        stable-privacy or random modes it has made its own, and that one stays alone."""
        try:
            addresses = (await self.netdevs.addresses()).get(iface.link.ifindex, [])
            if any(family == 10 and a.startswith("fe80:") for family, a, _ in addresses):
                return
            guid = iface.port.port.guid
            await self.netdevs.add_address(
                iface.link, str(ipaddress.IPv6Address(wire.link_local_from_guid(guid))), 64
            )
        except KernelError as e:
            self.log.dbg(iface.name, f"cannot add the link-local address: {e}\n")

    async def join_group(self, iface: Interface, mgid: bytes, *, send_only: bool = False,
                    create: bool = True) -> McMember | None:  # fmt: skip
        """ipoib_mcast_join and its completion, with their messages; None if it failed."""
        gid = wire.format_gid_sysfs(mgid)
        kind = "sendonly " if send_only else ""
        self.log.dbg_mcast(iface.name, f"joining MGID {gid}\n")
        port = iface.port
        try:
            member = await port.join_multicast(iface.qpn, mgid, iface.pkey, send_only=send_only,
                                               create=create)  # fmt: skip
        except KernelError as e:
            self.log.dbg_mcast(iface.name, f"{kind}join completion for {gid} (status {-e.errno})\n")
            self.log.dbg_mcast(iface.name, f"{kind}multicast join failed for {gid}, "
                                           f"status {-e.errno}\n")  # fmt: skip
            return None
        self.log.dbg_mcast(iface.name, f"{kind}join completion for {gid} (status 0)\n")
        self.log.dbg_mcast(iface.name, f"MGID {gid} AV {wire.kernel_pointer(member)}, "
                                       f"LID 0x{member.mlid:04x}, SL {member.sl}\n")  # fmt: skip
        return member

    async def _retry_join(self, iface: Interface) -> None:
        """The join task's back-off: try again while the interface is up without carrier."""
        delay = 1.0
        while True:
            await trio.sleep(delay)
            delay = min(delay * 2, 16.0)
            async with self.rtnl:
                if not iface.opened or iface.carrier or iface.name not in self.interfaces:
                    return
                if not self._pkey_present(iface):
                    return
                if await self._join_broadcast(iface, retry=False):
                    return

    async def pkey_event(self, fport: FabricPort) -> None:
        """IB_EVENT_PKEY_CHANGE: a parent follows index 0 (update_parent_pkey); interfaces
        whose P_Key came get carrier, whose P_Key went lose it."""
        async with self.rtnl:
            for iface in list(self.interfaces.values()):
                if iface.port is not fport:
                    continue
                try:
                    await self._pkey_changed(iface)
                except KernelError as e:
                    self.log.warn(iface.name, f"P_Key change not applied: {e}\n")

    async def _pkey_changed(self, iface: Interface) -> None:
        if iface.parent is None:
            pkey = self._parent_pkey(iface.port) | wire.FULL_MEMBER
            if pkey != iface.pkey:
                self.log.dbg(iface.name, f"pkey changed from 0x{iface.pkey:x} to 0x{pkey:x}\n")
                if iface.opened:
                    await self._carrier_off(iface)
                iface.pkey = pkey
        if not iface.opened:
            return
        present = self._pkey_present(iface)
        if present and not iface.carrier:
            iface.mcast.pop(iface.broadcast_mgid, None)
            await self._join_broadcast(iface)
        elif not present and iface.carrier:
            await self._carrier_off(iface)
        elif present:
            self._flush_paths(iface)  # the P_Key index may have moved

    async def refresh_addresses(self) -> None:
        """The IPv4 addresses of our interfaces, which ARP answers for."""
        by_index = await self.netdevs.addresses()
        for iface in list(self.interfaces.values()):
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

    async def _stop(self, iface: Interface) -> None:
        """ipoib_stop: carrier off, leave every group, flush paths, children follow."""
        self.log.dbg(iface.name, "stopping interface\n")
        iface.opened = False
        self.log.dbg(iface.name, "downing ib_dev\n")
        self.log.dbg_mcast(iface.name, "stopping multicast thread\n")
        await self._carrier_off(iface)
        for child in iface.children:
            if self.netdevs.is_up(child.link):
                await self.netdevs.set_up(child.link, False)

    async def _carrier_off(self, iface: Interface) -> None:
        self.netdevs.set_carrier(iface.link, False)
        await self._leave_all(iface)

    async def _leave_all(self, iface: Interface) -> None:
        """ipoib_mcast_dev_flush and ipoib_flush_paths."""
        iface.carrier = False
        for mgid, entry in list(iface.mcast.items()):
            if entry.complete:
                await self.leave(iface, mgid)
        iface.mcast.clear()
        self._flush_paths(iface)

    async def leave(self, iface: Interface, mgid: bytes) -> None:
        """An SA leave; if the subnet manager is gone, the membership went with it."""
        self.log.dbg_mcast(iface.name, f"leaving MGID {wire.format_gid_sysfs(mgid)}\n")
        try:
            await iface.port.leave_multicast(iface.qpn, mgid)
        except KernelError:
            pass

    # ------------------------------------------------------------- IP multicast

    async def set_ip_groups(
        self, iface: Interface, ipv4: Iterable[str], ipv6: Iterable[str]
    ) -> None:
        """ipoib_mcast_restart_task: full joins for what the IP stack joined, leaves for the rest.

        IPv6 groups below link-local scope never reach the device (igmp6_group_added).
        """
        async with self.rtnl:
            if not iface.carrier or iface.name not in self.interfaces:
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
                    self.log.dbg_mcast(iface.name, f"deleting multicast group {gid}\n")
                    del iface.mcast[mgid]
                    if entry.complete:
                        await self.leave(iface, mgid)
            for mgid in sorted(wanted):
                entry = iface.mcast.get(mgid)
                if entry is not None and (not entry.send_only or iface.umcast):
                    continue  # joined already, or umcast counts our own send-only join
                if entry is not None:  # a send-only join becomes a full one
                    del iface.mcast[mgid]
                    if entry.complete:
                        await self.leave(iface, mgid)
                if iface.umcast and iface.port.has_member(mgid, exclude_qpn=iface.qpn):
                    self.log.dbg_mcast(
                        iface.name,
                        f"ignoring multicast entry for mgid {wire.format_gid_sysfs(mgid)}\n",
                    )
                    continue
                gid = wire.format_gid_sysfs(mgid)
                self.log.dbg_mcast(iface.name, f"adding multicast entry for mgid {gid}\n")
                entry = McastEntry(mgid)
                iface.mcast[mgid] = entry
                member = await self.join_group(iface, mgid)
                if member is None:
                    del iface.mcast[mgid]  # tried again on the next pass
                    continue
                entry.complete = True
                entry.mlid = member.mlid
