"""ipoib_add_one: ib_ipoib bound to one HCA. Builds the shared context and the rooms that
the layers above call: `main` (netdev entry points), `vlan` (sysfs children) and `netlink`
(rtnl_link_ops children). `ethtool` and `fs` are functions of an interface alone."""

from __future__ import annotations

import trio

from ..fabric.device import HcaDevice
from ..fabric.port import FabricPort
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
