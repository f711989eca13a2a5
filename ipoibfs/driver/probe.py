"""ipoib_add_one: ib_ipoib bound to one HCA. Builds the shared context and the rooms that
the layers above call: `main` (netdev entry points), `vlan` (sysfs children) and `netlink`
(rtnl_link_ops children). `ethtool` and `fs` are functions of an interface alone."""

from __future__ import annotations

from functools import partial

import trio

from ..fabric.device import HcaDevice, Port
from ..fabric.port import FabricPort
from ..fabric.sma import PortAgents, Traffic
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

    def port_agents(self) -> dict[int, PortAgents]:
        """Each port's SMA and PMA (the HCA's process_mad), counting what the interfaces on
        the port counted; the umad files and the mirror's counters/ share them, so that a
        PMA reset shows in both."""
        return {p.num: PortAgents(self.device, p, partial(self.port_traffic, p))
                for p in self.device.ports}  # fmt: skip

    def port_traffic(self, port: Port) -> Traffic:
        """What the interfaces on `port` counted (their netdev statistics), summed, and the
        port's faults: its link's downs, and what its impairments lost (`lab link`)."""
        names = ("tx_bytes", "rx_bytes", "tx_packets", "rx_packets", "multicast", "rx_errors",
                 "tx_dropped")  # fmt: skip
        totals = dict.fromkeys(names, 0)
        fport = None
        for iface in list(self.interfaces.values()):
            if iface.port.port is not port:
                continue
            fport = iface.port
            for name in names:
                totals[name] += iface.statistic(name)
        return Traffic(
            xmit_bytes=totals["tx_bytes"],
            rcv_bytes=totals["rx_bytes"],
            xmit_pkts=totals["tx_packets"],
            rcv_pkts=totals["rx_packets"],
            rcv_multicast_pkts=totals["multicast"],
            rcv_errors=totals["rx_errors"],
            xmit_discards=totals["tx_dropped"] + (fport.link_discards if fport else 0),
            link_downed=fport.link_downs if fport else 0,
        )

    def start(self, nursery: trio.Nursery) -> None:
        self.main.start(nursery)

    async def add_ports(self) -> list[Interface]:
        return await self.main.add_ports()

    async def shutdown(self) -> None:
        await self.main.shutdown()
