"""The mirror's one context: what every show and store is given, and the only way in to the driver.

Every call the mirror makes into driver/ goes through a method of MirrorContext, in the block
marked below, so that when the driver's entry points move only that block changes. The
tables read the driver's interface state (`Interface` fields, as the kernel's shows read
`struct ipoib_dev_priv`) directly; everything that acts goes through here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ..driver import ethtool
from ..driver.fs import DEBUGFS
from ..driver.interface import NUD_VALID, STAT_NAMES, ChildType, Interface
from ..driver.params import PARAMS, ModuleParams
from ..driver.probe import IPoIBDriver
from ..driver.queues import (
    DQL_MAX_LIMIT,
    MAX_QUEUES,
    NetdevQueues,
    RxQueue,
    TxQueue,
    cpu_list,
    cpu_online_mask,
    nr_cpu_ids,
    num_possible_cpus,
    num_queues,
)
from ..fabric.device import HcaDevice, Port
from ..fabric.port import FabricPort
from ..fabric.sma import PortAgents

if TYPE_CHECKING:
    from ..netdev import LinkState

__all__ = [
    "DEBUGFS",
    "DQL_MAX_LIMIT",
    "MAX_QUEUES",
    "NetdevQueues",
    "RxQueue",
    "TxQueue",
    "cpu_list",
    "cpu_online_mask",
    "nr_cpu_ids",
    "num_possible_cpus",
    "num_queues",
    "NUD_VALID",
    "PARAMS",
    "STAT_NAMES",
    "ChildType",
    "Interface",
    "MirrorContext",
    "MirrorNetdevs",
    "ethtool",
]


class MirrorNetdevs(Protocol):
    """What the mirror reads of the live netdevs (netdev.LiveNetdevs), on every show. The
    plain calls answer on the calling thread (ioctls); `state` is netlink's whole answer,
    from the namespace worker."""

    def names(self) -> list[str]: ...
    def mtu(self, link: Any) -> int: ...
    def flags(self, link: Any) -> int:
        """SIOCGIFFLAGS: dev_get_flags' low 16 bits (IFF_UP; IFF_RUNNING while the netdev
        runs with operstate up; no IFF_LOWER_UP)."""
        ...

    def txqlen(self, link: Any) -> int: ...
    def carrier(self, link: Any) -> bool:
        """netif_carrier_ok after linkwatch_sync_dev, as carrier_show reads it; False while
        the netdev is down."""
        ...

    def state(self, link: Any) -> Awaitable[LinkState]: ...


class MirrorContext:
    """The driver, the HCA device and the live netdevs of one host."""

    __slots__ = ("device", "netdevs", "main", "vlan", "netlink", "_params", "interfaces", "_pma")

    def __init__(self, driver: IPoIBDriver, device: HcaDevice, netdevs: MirrorNetdevs,
                 agents: Mapping[int, PortAgents]) -> None:  # fmt: skip
        self.device = device
        self.netdevs = netdevs
        #: Each port's SMA and PMA (the HCA's process_mad), which counters/ asks.
        self._pma = agents
        self.main, self.vlan, self.netlink = driver.main, driver.vlan, driver.netlink
        self._params = driver.params
        # ============================================================= the driver's entry points
        # Everything from here on is a call into driver/ (and nothing elsewhere in sysfs/ is).
        #: The registered interfaces, by name (class/net/, debugfs, the control file): the
        #: driver's own dict, which it changes in place (bound once: every lookup reads it).
        self.interfaces: Mapping[str, Interface] = driver.interfaces

    def watch(self, watcher: Callable[[], None]) -> Callable[[], None]:
        """Call `watcher` after every interface registration or unregistration (on the trio
        thread); returns what stops it."""
        self.main.watchers.append(watcher)
        return lambda: self.main.watchers.remove(watcher)

    # ----------------------------------------------------------------- state the tables read

    def pma(self, port: Port, mad: bytes) -> bytes | None:
        """The port's PMA's answer to a MAD (the HCA's process_mad, as the core's sysfs asks
        it), None if it has none."""
        agents = self._pma.get(port.num)
        return agents.answer(mad) if agents is not None else None

    @property
    def params(self) -> ModuleParams:
        """ib_ipoib's module parameters (module/ib_ipoib/parameters/)."""
        return self._params

    async def set_param(self, name: str, value: int) -> None:
        """A write to a 0644 module parameter (param_set_int)."""
        self._params[name] = value
        if name == "data_debug_level":
            self.main.data_debug_changed()

    # ----------------------------------------------------------------- vlan (ipoib_vlan.c)

    async def create_child(self, parent: Interface, buf: bytes, *, net_admin: bool) -> None:
        """create_child_store."""
        await self.vlan.create_child(parent, buf, net_admin=net_admin)

    async def delete_child(self, parent: Interface, buf: bytes, *, net_admin: bool) -> None:
        """delete_child_store."""
        await self.vlan.delete_child(parent, buf, net_admin=net_admin)

    # ----------------------------------------------------------------- the HCA's ports (faults)

    async def set_port_link(self, num: int, up: bool) -> bool:
        """`.ipoibfs/ports`: a port's physical link goes down or comes back."""
        return await self.main.set_port_link(num, up)

    def port(self, num: int) -> FabricPort:
        """`.ipoibfs/ports`: the port whose egress `lab link` impairs."""
        return self.main.fabric_port(num)

    # ----------------------------------------------------------------- main (ipoib_main.c, _cm.c)

    async def set_mode(self, iface: Interface, buf: bytes) -> None:
        """mode_store."""
        await self.main.set_mode(iface, buf)

    async def set_umcast(self, iface: Interface, buf: bytes) -> None:
        """umcast_store."""
        self.main.set_umcast(iface, buf)

    async def change_mtu(self, iface: Interface, mtu: int) -> None:
        """The `mtu` store's dev_set_mtu."""
        await self.main.change_mtu(iface, mtu)

    async def set_link_attrs(self, iface: Interface, **attrs: Any) -> None:
        """The generic netdev stores (flags, tx_queue_len, netdev_group, ifalias), under RTNL."""
        await self.main.set_link_attrs(iface, **attrs)

    async def set_napi(self, iface: Interface, name: str, value: int) -> None:
        """gro_flush_timeout, napi_defer_hard_irqs, threaded: kept, without effect."""
        iface.napi[name] = value

    def operstate(self, iface: Interface, live: str, up: bool, carrier: bool) -> str:
        """default_operstate, as the driver derives it for the `operstate` show."""
        return self.main.operstate(iface, live, up, carrier)

    def dev_id_read(self, iface: Interface, comm: str) -> None:
        """dev_id_show's netdev_info_once."""
        self.main.dev_id_read(iface, comm)

    # ----------------------------------------------------------------- netlink (ipoib_netlink.c)

    async def new_link(
        self, parent: str, name: str | None, pkey: int | None, mode: int | None,
        umcast: int | None,
    ) -> None:  # fmt: skip
        """ipoib_new_child_link."""
        await self.netlink.new_link(parent, name, pkey, mode, umcast)

    async def change_link(self, iface: Interface, mode: int | None, umcast: int | None) -> None:
        """ipoib_changelink."""
        await self.netlink.change_link(iface, mode, umcast)

    async def del_link(self, iface: Interface) -> None:
        """ipoib_del_child_link."""
        await self.netlink.del_link(iface)

    # ----------------------------------------------------------------- ethtool (ipoib_ethtool.c)

    async def set_coalesce(self, iface: Interface, usecs: int | None, frames: int | None) -> None:
        """ipoib_set_coalesce."""
        ethtool.set_coalesce(iface, usecs, frames)
        self.main.receive_changed(iface)

    def feature_names(self) -> list[str]:
        """The kernel's netdev feature names in bit order (ETH_SS_FEATURES)."""
        return self.main.feature_names()

    async def set_features(self, iface: Interface, bits: list[tuple[str, bool]]) -> None:
        """ETHTOOL_MSG_FEATURES_SET with ipoib_fix_features."""
        await self.main.set_features(iface, bits)

    # ----------------------------------------------------------------- queues (net-sysfs.c)

    def set_rx_queue(self, iface: Interface, index: int, **fields: Any) -> None:
        """An rx-N store: struct netdev_rx_queue's RPS map or flow table size."""
        queue = iface.queues.rx[index]
        for name, value in fields.items():
            setattr(queue, name, value)

    def set_tx_queue(self, iface: Interface, index: int, **fields: Any) -> None:
        """A tx-N store: struct netdev_queue's XPS maps or its dql's limits."""
        queue = iface.queues.tx[index]
        for name, value in fields.items():
            setattr(queue, name, value)

    # ----------------------------------------------------------------- the PCI function

    def set_numa_node(self, node: int) -> None:
        """numa_node_store's effect: the taint (which ipoibfs cannot set), the firmware-bug
        alert, as pci_alert prints it (`<driver> <slot>: ...`), and the function's node."""
        pci = self.device.profile.pci
        self.main.ctx.log.alert(
            f"{pci.driver} {pci.slot_name}",
            f"[Firmware Bug]: Overriding NUMA node to {node}.  Contact your vendor for updates.",
        )
        self.device.numa_node = node

    # ----------------------------------------------------------------- neighbours (arp.c)

    def neigh_delete(self, iface: Interface, addr: bytes) -> None:
        """neigh_delete (RTM_DELNEIGH)."""
        self.main.neigh.delete(iface, addr)

    def arp_send(self, iface: Interface, op: int, spa: bytes, tha: bytes, tpa: bytes,
                 dest: bytes) -> None:  # fmt: skip
        """An ARP packet from a packet socket on the interface (arping's sendto)."""
        self.main.neigh.packet_send(iface, op, spa, tha, tpa, dest)
