"""What the driver's rooms share, and what the driver needs of the layers around it.

The kernel's ib_ipoib files share `struct ipoib_dev_priv`, RTNL and `ipoib_workqueue`; here
each room (main, vlan, netlink, multicast, ib, neigh, cm, ethtool, fs) is given one
`DriverContext` and the rooms it calls, and reaches nothing else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sized
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from ..fabric.device import HcaDevice
from ..fabric.flag import Flag
from ..fabric.port import FabricPort
from .interface import Interface, PumpStats
from .params import ModuleParams


class DriverLog(Protocol):
    """ipoib_warn / ipoib_dbg / ipoib_dbg_mcast / ipoib_dbg_data: messages prefixed with the
    device name, gated by the module parameters."""

    def alert(self, dev: str, text: str) -> None: ...
    def warn(self, dev: str, text: str) -> None: ...
    def info(self, dev: str, text: str) -> None: ...
    def dbg(self, dev: str, text: str) -> None: ...
    def dbg_mcast(self, dev: str, text: str) -> None: ...
    def dbg_data(self, dev: str, text: str) -> None: ...

    @property
    def data(self) -> bool:
        """data_debug_level > 0: the UD data path traces every packet."""
        ...

    @property
    def cm_data(self) -> bool:
        """cm_data_debug_level > 0: connected mode traces every packet."""
        ...

    def daemon(self, text: str) -> None:
        """A line for the daemon's log only: the daemon's own business, not a kernel message."""
        ...

    def exception(self, what: str) -> None:
        """A bug: `what` and the traceback of the exception being handled, to the daemon log."""
        ...


Addresses = dict[int, list[tuple[int, str, int]]]  # ifindex -> [(family, address, prefix length)]
Memberships = dict[str, tuple[list[str], list[str]]]  # netdev name -> (IPv4 groups, IPv6 groups)


class Netdevs(Protocol):
    """The live Linux side the driver drives; the netdev layer implements it."""

    async def create(self, name: str, *, mtu: int, txqlen: int, offload: int) -> Any:
        """A new netdev, down, without carrier; `offload` its TUNSETOFFLOAD flags."""
        ...

    async def destroy(self, link: Any) -> None: ...
    def names(self) -> list[str]: ...
    def pump(
        self,
        link: Any,
        fast: Callable[[bytes], bool],
        slow: Callable[[bytes], None],
        *,
        limit: int,
        held: Sized = (),
        fast_end: Callable[[], None] | None = None,
        slow_end: Callable[[], None] | None = None,
        flows_ok: Flag | None = None,
    ) -> PumpStats: ...
    def write(self, link: Any, packet: bytes | memoryview) -> bool: ...
    def sink(self, link: Any) -> int: ...
    async def add_address(self, link: Any, address: str, prefixlen: int) -> None: ...
    async def addresses(self) -> Addresses: ...
    async def ip_memberships(self) -> Memberships: ...
    async def sysctls(self, paths: list[str]) -> list[int | None]:
        """The first number of each /proc/sys/net/PATH of the netdevs' namespace (None where
        it is missing or not a number)."""
        ...

    def link_events(self) -> AsyncIterator[tuple[int, str]]:
        """(ifindex, "changed" | "deleted" | "addresses") for each link of ours: an
        RTM_NEWLINK, an RTM_DELLINK, an IPv4 address added or removed."""
        ...

    async def set_mtu(self, link: Any, mtu: int) -> None: ...
    async def set_up(self, link: Any, up: bool) -> None: ...
    def set_carrier(self, link: Any, on: bool) -> None: ...
    async def set_attrs(self, link: Any, **attrs: Any) -> None: ...
    async def set_offload(self, link: Any, flags: int) -> None:
        """TUNSETOFFLOAD: what the stack may hand the netdev (features.tun_offload_flags)."""
        ...

    def feature_names(self) -> list[str]:
        """The kernel's netdev feature names in bit order (ETH_SS_FEATURES)."""
        ...

    def mtu(self, link: Any) -> int: ...
    def is_up(self, link: Any) -> bool: ...


class WorkQueue:
    """ipoib_workqueue: work items run as tasks of the driver's nursery.

    A work item that raises is logged with its traceback and the host goes on, as a
    kernel work item's WARN does not take the machine down.
    """

    def __init__(self, log: DriverLog) -> None:
        self._log = log
        self._nursery: trio.Nursery | None = None

    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    @property
    def started(self) -> bool:
        return self._nursery is not None

    def spawn(self, fn: Callable[..., Awaitable[object]], *args: Any) -> None:
        """Queue a work item."""
        if self._nursery is None:
            raise RuntimeError("driver not started")
        self._nursery.start_soon(self._run, fn, args, name=getattr(fn, "__qualname__", fn))

    async def _run(self, fn: Callable[..., Awaitable[object]], args: tuple) -> None:
        try:
            await fn(*args)
        except Exception:
            self._log.exception(f"work item {getattr(fn, '__qualname__', fn)} failed")


class Clock:
    """The data path's coarse clock (jiffies, roughly): trio ticks it every second; reader
    threads read it to stamp what they used."""

    def __init__(self) -> None:
        self.now = trio.current_time()
        #: Called on the trio thread after each tick, with the new time.
        self.ticks: list[Callable[[float], None]] = []

    async def run(self) -> None:
        while True:
            await trio.sleep(1)
            self.now = now = trio.current_time()
            for tick in self.ticks:
                tick(now)


@dataclass
class DriverContext:
    """The per-host state every room shares: the HCA and its ports, the netdevs, the log,
    the module parameters, the registered interfaces, RTNL, the work queue and the clock."""

    device: HcaDevice
    ports: list[FabricPort]
    netdevs: Netdevs
    log: DriverLog
    params: ModuleParams
    interfaces: dict[str, Interface] = field(default_factory=dict)
    #: (port number, UD QPN) -> interface: where a unicast datagram is delivered.
    by_qpn: dict[tuple[int, int], Interface] = field(default_factory=dict)
    rtnl: trio.Lock = field(default_factory=trio.Lock)
    work: WorkQueue = field(init=False)
    clock: Clock = field(default_factory=Clock)
    #: Set when the IP multicast list may have changed (a link event, a carrier on): the
    #: follower of the IP stack's groups looks at once (IPoIBMain._follow_ip_groups).
    ip_groups_kick: trio.Event = field(default_factory=trio.Event)

    def __post_init__(self) -> None:
        self.work = WorkQueue(self.log)

    @property
    def txqlen(self) -> int:
        """The netdev's tx_queue_len: twice the send queue, as ipoib_dev_init sets it."""
        return 2 * self.params["send_queue_size"]

    def by_ifindex(self, ifindex: int) -> Interface | None:
        for iface in self.interfaces.values():
            if iface.link.ifindex == ifindex:
                return iface
        return None

    def registered(self, iface: Interface) -> bool:
        """Whether the interface is still registered (not replaced, not unregistered)."""
        return self.interfaces.get(iface.name) is iface
