"""ipoib_add_one: ib_ipoib bound to one HCA. Builds the shared context and the rooms that
the layers above call: `main` (netdev entry points), `vlan` (sysfs children) and `netlink`
(rtnl_link_ops children). `ethtool` and `fs` are functions of an interface alone."""

from __future__ import annotations

import trio

from ..fabric import FabricPort, HcaDevice
from . import ethtool
from .context import DriverContext, DriverLog, Netdevs
from .interface import Interface
from .main import IPoIBMain
from .netlink import Netlink
from .params import ModuleParams
from .vlan import Vlan


class IPoIBDriver:
    def __init__(self, device: HcaDevice, ports: list[FabricPort], netdevs: Netdevs,
                 params: ModuleParams, log: DriverLog) -> None:  # fmt: skip
        self.ctx = DriverContext(device, ports, netdevs, log, params)
        self.main = IPoIBMain(self.ctx)
        self.vlan = Vlan(self.ctx, self.main)
        self.netlink = Netlink(self.ctx, self.main)

    @property
    def interfaces(self) -> dict[str, Interface]:
        return self.ctx.interfaces

    @property
    def params(self) -> ModuleParams:
        return self.ctx.params

    @property
    def device(self) -> HcaDevice:
        return self.ctx.device

    def start(self, nursery: trio.Nursery) -> None:
        self.main.start(nursery)

    async def add_ports(self) -> list[Interface]:
        return await self.main.add_ports()

    async def shutdown(self) -> None:
        await self.main.shutdown()

    # Transitional entry points for the layers above while they move to the rooms.

    async def create_child(self, parent: Interface, buf: bytes, *, net_admin: bool) -> Interface:
        return await self.vlan.create_child(parent, buf, net_admin=net_admin)

    async def delete_child(self, parent: Interface, buf: bytes, *, net_admin: bool) -> None:
        await self.vlan.delete_child(parent, buf, net_admin=net_admin)

    async def set_mode(self, iface: Interface, buf: bytes) -> None:
        await self.main.set_mode(iface, buf)

    def set_umcast(self, iface: Interface, buf: bytes) -> None:
        self.main.set_umcast(iface, buf)

    async def change_mtu(self, iface: Interface, mtu: int) -> None:
        await self.main.change_mtu(iface, mtu)

    async def set_link_attrs(self, iface: Interface, **attrs: object) -> None:
        await self.main.set_link_attrs(iface, **attrs)

    async def new_link(self, parent: str, name: str | None, pkey: int | None,
                       mode: int | None = None, umcast: int | None = None,
                       ) -> Interface:  # fmt: skip
        return await self.netlink.new_link(parent, name, pkey, mode, umcast)

    async def change_link(self, iface: Interface, mode: int | None, umcast: int | None) -> None:
        await self.netlink.change_link(iface, mode, umcast)

    async def del_link(self, iface: Interface) -> None:
        await self.netlink.del_link(iface)

    def set_coalesce(self, iface: Interface, usecs: int | None, frames: int | None) -> None:
        ethtool.set_coalesce(iface, usecs, frames)

    def operstate(self, iface: Interface, live: str, up: bool, carrier: bool) -> str:
        return self.main.operstate(iface, live, up, carrier)

    def dev_id_read(self, iface: Interface, comm: str) -> None:
        self.main.dev_id_read(iface, comm)

    async def link_event(self, ifindex: int) -> None:
        await self.main.link_event(ifindex)

    async def link_deleted(self, ifindex: int) -> None:
        await self.main.link_deleted(ifindex)

    async def set_ip_groups(self, iface: Interface, ipv4: list[str], ipv6: list[str]) -> None:
        await self.main.mcast.restart(iface, ipv4, ipv6)

    async def refresh_addresses(self) -> None:
        await self.main.neigh.refresh_addresses()
