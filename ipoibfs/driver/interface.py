"""One IPoIB interface's state (struct ipoib_dev_priv), and what the driver needs of a netdev."""

from __future__ import annotations

import enum
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from .. import wire
from ..fabric.flag import Flag
from ..fabric.placement import ReceiveQueue, RemoteQueue
from ..fabric.port import FabricPort
from .features import Features, ipoib_features
from .queues import NetdevQueues, num_queues

#: How many received ARP packets an interface keeps for `arping` to read.
ARP_SEEN_MAX = 64


class Link(Protocol):
    """A live netdev as the netdev layer hands it out."""

    ifindex: int
    name: str


class Flows(Protocol):
    """The netdev's flow table (netdev/flows.py): destinations its reader thread's C loop
    sends to on its own, placing each packet into the peer's stack (a RemoteQueue lent to
    it) as Neighbours.xmit_fast would. The driver installs a destination only after its own
    fast path sent a packet there, and clears the table whenever what it published changes.
    An install made with a `generation` older than the table's is refused."""

    generation: int

    def install(self, generation: int, key: bytes, kind: int, limit: int, gro: bool,
                sink: int, page: int, port_ok: Flag) -> bool: ...  # fmt: skip
    def clear(self) -> None: ...
    def forget(self, page: int) -> None: ...
    def counts(self) -> tuple[int, int]: ...
    def used(self) -> list[bytes]: ...


class PumpStats(Protocol):
    """What a netdev's reader thread counts (Netdevs.pump): packets it dropped because the
    hand-off to the trio thread was full (a full TX ring). Only that thread writes it.
    `flows`: its flow table, when the reader runs the C loop."""

    @property
    def dropped(self) -> int: ...
    @property
    def flows(self) -> Flows | None: ...


class ChildType(enum.Enum):
    PARENT = "parent"
    LEGACY = "legacy"  # made by create_child
    RTNL = "rtnl"  # made by `ip link add ... type ipoib`


@dataclass
class McastEntry:
    """struct ipoib_mcast, as `<if>_mcg` shows it."""

    mgid: bytes
    created: int = field(default_factory=lambda: wire.jiffies(time.monotonic()))  # jiffies
    send_only: bool = False
    complete: bool = False
    queue: list = field(default_factory=list)
    mlid: int = 0
    used: float = 0.0  # the data path's clock at the last send (send-only groups age out)
    backoff: float = 1.0  # seconds, doubled at each failed join (IPOIB_MAX_BACKOFF_SECONDS)
    delay_until: float = 0.0  # trio time before which the join task does not try again


class Route(Protocol):
    """How a netdev's reader thread sends to one resolved neighbour without the trio thread
    (ib.UdRoute, cm.RcRoute). Immutable but for `used`, which the reader writes (and the
    trio thread, for what the flow table sent: Neighbours.flows_used), and `offered`, the
    flow table's generation in which the reader installed the route there."""

    used: float
    offered: int

    def send(self, frame: bytes) -> int:
        """Send one frame: the bytes to count, or 0 if it must take the full path."""
        ...

    def offer(self, flows: Flows, generation: int, key: bytes) -> bool:
        """On the reader thread, after `send` succeeded: install `key` in the flow table if
        the route places into a peer on this machine and nothing must see its packets."""
        ...


@dataclass(slots=True)
class RxBatch:
    """What the receive side holds for the interface's stack (driver/ib.py, trio thread
    only): frames waiting for the end of the port's receive batch, where GRO/LRO merges
    them (napi_gro_flush), or for the RX moderation (ethtool -C rx-usecs/rx-frames) to
    deliver them, as a moderated CQ holds its completions."""

    frames: list[bytes] = field(default_factory=list)
    at_batch_end: bool = False  # a flush is registered for the end of the port's batch
    deadline: float = math.inf  # trio time at which the moderation delivers what is held
    timing: bool = False  # the interface's moderation timer task runs
    timer: trio.CancelScope | None = None  # ... and the scope it sleeps in

    def kick(self) -> None:
        """The moderation changed (set_coalesce): the timer looks again at once."""
        if self.timer is not None:
            self.timer.deadline = -math.inf


#: NUD states (include/uapi/linux/neighbour.h), as `ip neigh` prints them.
NUD_NONE = 0x00
NUD_INCOMPLETE = 0x01
NUD_REACHABLE = 0x02
NUD_STALE = 0x04
NUD_DELAY = 0x08
NUD_PROBE = 0x10
NUD_FAILED = 0x20
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NUD_IN_TIMER = NUD_INCOMPLETE | NUD_REACHABLE | NUD_DELAY | NUD_PROBE
NUD_VALID = NUD_PERMANENT | NUD_NOARP | NUD_REACHABLE | NUD_PROBE | NUD_STALE | NUD_DELAY
NUD_CONNECTED = NUD_PERMANENT | NUD_NOARP | NUD_REACHABLE


@dataclass
class NeighParms:
    """struct neigh_parms of one interface and family, as the namespace's
    /proc/sys/net/ipv{4,6}/neigh/<if>/ shows it (times in seconds), with `accept` the
    interface's arp_accept (IPv4). The defaults are arp_tbl's and nd_tbl's."""

    base_reachable_time: float = 30.0
    reachable_time: float = 30.0  # base randomised by 0.5-1.5 (neigh_rand_reach_time)
    delay_first_probe_time: float = 5.0
    retrans_time: float = 1.0
    ucast_solicit: int = 3
    mcast_solicit: int = 3
    app_solicit: int = 0
    mcast_resolicit: int = 0
    locktime: float = 1.0
    accept: int = 0
    drop_gratuitous: bool = False  # drop_gratuitous_arp (IPv4), the interface's or all's
    randomised_at: float = float("-inf")  # when reachable_time was last drawn


@dataclass
class ArpSeen:
    """One ARP packet the interface received, for `arping` (a packet socket's view)."""

    seq: int
    time: float  # CLOCK_MONOTONIC at reception
    op: int
    sha: bytes
    spa: bytes
    tha: bytes
    tpa: bytes
    pkttype: str  # "host", "broadcast" or "multicast" (skb->pkt_type)


class Hearing:
    """A neighbour's UD identity (its LID and QPN) for the port's receive thread, which
    stamps `heard` (trio time) when unicast IP from it arrives there: neigh_confirm without
    a trio hop (ib.UdFastRx). Only that thread writes `heard`; the trio thread replaces the
    whole object when a confirmation must be forgotten (a rebind, a lowered `confirmed`)."""

    __slots__ = ("dlid", "qpn", "heard")

    def __init__(self, dlid: int, qpn: int) -> None:
        self.dlid, self.qpn = dlid, qpn
        self.heard = -math.inf


@dataclass
class Neighbour:
    """struct neighbour (its NUD state, net/core/neighbour.c) joined with struct
    ipoib_neigh (the hardware address's path and connection): an IP address of a peer."""

    hwaddr: bytes = b""
    dlid: int = 0
    qpn: int = 0  # the peer's UD QPN, from hwaddr
    header: bytes = b""  # the UD header and IPoIB header every packet to it starts with
    queue: list[bytes] = field(default_factory=list)
    used: float = 0.0
    cm: Any = None  # the connected-mode TX connection to it (cm.CmTx), if any
    ud_route: Route | None = None  # how the reader thread reaches it over UD
    rc_route: Route | None = None  # ... and over its established RC connection
    nud: int = NUD_NONE
    confirmed: float = 0.0  # trio time of the last confirmation on the trio thread
    hearing: Hearing | None = None  # ... and on the receive thread, once it has a path
    updated: float = 0.0
    probes: int = 0
    timer: float | None = None  # trio time at which its NUD timer fires
    binding: trio.Event | None = None  # set when the path query for hwaddr ends

    @property
    def ready(self) -> bool:
        return bool(self.header)

    @property
    def rc_capable(self) -> bool:
        """IPOIB_CM_SUPPORTED: the RC flag in the peer's hardware address."""
        return bool(self.hwaddr) and bool(self.hwaddr[0] & wire.IPOIB_FLAGS_RC)

    @property
    def last_confirmed(self) -> float:
        """When reachability was last confirmed, by either thread."""
        hearing = self.hearing
        return self.confirmed if hearing is None else max(self.confirmed, hearing.heard)

    @property
    def last_used(self) -> float:
        """The last time a packet went to it, from the trio thread or a reader thread."""
        return max(
            self.used,
            self.ud_route.used if self.ud_route is not None else 0.0,
            self.rc_route.used if self.rc_route is not None else 0.0,
        )


@dataclass
class PathEntry:
    """struct ipoib_path, as `<if>_path` shows it."""

    dgid: bytes
    dlid: int = 0
    sl: int = 0
    rate_mbps: int = 0
    valid: bool = True  # False once a light flush marked its address handle invalid


STAT_NAMES = (
    "rx_packets", "tx_packets", "rx_bytes", "tx_bytes", "rx_errors", "tx_errors",
    "rx_dropped", "tx_dropped", "multicast", "collisions", "rx_length_errors",
    "rx_over_errors", "rx_crc_errors", "rx_frame_errors", "rx_fifo_errors",
    "rx_missed_errors", "tx_aborted_errors", "tx_carrier_errors", "tx_fifo_errors",
    "tx_heartbeat_errors", "tx_window_errors", "rx_compressed", "tx_compressed",
    "rx_nohandler",
)  # fmt: skip


PLACED_COUNTERS = ("rx_packets", "rx_bytes")  # the order of ReceiveQueue.counts()


class TxCounter:
    """What the netdev's reader thread sent (Neighbours.xmit_fast); only that thread writes it,
    so that no count is lost to the trio thread's own."""

    __slots__ = ("packets", "bytes")

    def __init__(self) -> None:
        self.packets = self.bytes = 0

    def count(self, nbytes: int) -> None:
        self.packets += 1
        self.bytes += nbytes


class RxCounter:
    """What the port's receive thread delivered (ib.UdFastRx); only that thread writes it."""

    __slots__ = ("packets", "bytes", "dropped")

    def __init__(self) -> None:
        self.packets = self.bytes = self.dropped = 0

    def count(self, packets: int, nbytes: int) -> None:
        self.packets += packets
        self.bytes += nbytes


@dataclass
class Interface:
    name: str
    port: FabricPort
    qpn: int
    pkey: int  # effective: the full-membership bit is always set
    child_type: ChildType
    link: Link
    parent: Interface | None = None
    cm_supported: bool = True
    admin_cm: bool = False
    umcast: bool = False
    max_ib_mtu: int = 4096
    mcast_mtu: int = 0
    admin_mtu: int = 0
    expected_mtu: int = 0  # the MTU the driver last set; anything else came from outside
    opened: bool = False  # ndo_open ran and ndo_stop has not
    carrier: bool = False
    dev_id_warned: bool = False
    #: The netdev's hw_features, wanted_features and features (driver/features.py): set at
    #: registration from the HCA's offloads, changed by the mode and `ethtool -K`.
    features: Features = field(default_factory=ipoib_features)
    coalesce_usecs: int = 0  # ethtool -C rx-usecs, kept as ipoib_set_coalesce keeps it
    coalesce_frames: int = 0  # ethtool -C rx-frames
    rx: RxBatch = field(default_factory=RxBatch)  # held for GRO and the RX moderation
    napi: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("gro_flush_timeout", "napi_defer_hard_irqs", "threaded"), 0
        )
    )
    children: list[Interface] = field(default_factory=list)
    mcast: dict[bytes, McastEntry] = field(default_factory=dict)
    #: The multicast join task (ipoib_mcast_join_task) is running, and what wakes it early.
    mcast_joining: bool = False
    mcast_wake: trio.Event = field(default_factory=trio.Event)
    paths: dict[bytes, PathEntry] = field(default_factory=dict)
    neighbours: dict[bytes, Neighbour] = field(default_factory=dict)  # by IPv4/IPv6 address
    addrs4: list[tuple[bytes, int]] = field(default_factory=list)  # (address, prefix length)
    broadcasts4: set[bytes] = field(default_factory=set)
    arp_parms: NeighParms = field(default_factory=NeighParms)  # arp_tbl's, for this netdev
    nd_parms: NeighParms = field(default_factory=NeighParms)  # nd_tbl's
    arp_seen: deque[ArpSeen] = field(default_factory=lambda: deque(maxlen=ARP_SEEN_MAX))
    #: ARP received while an earlier one waits for the addresses to be read, in order
    #: (arp_rcv's backlog; driver/neigh.py).
    arp_backlog: deque[tuple[wire.ArpPacket, bool]] = field(default_factory=deque)
    stats: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAT_NAMES, 0))
    #: Receive queues that peers place packets into directly (RC: driver/cm.py; UD:
    #: driver/udplace.py).
    placed: list[ReceiveQueue] = field(default_factory=list)
    #: The reader thread's own: its UD placements holding frames for GRO (udplace.py).
    placing: list[Any] = field(default_factory=list)
    fast_tx: TxCounter = field(default_factory=TxCounter)
    fast_rx: RxCounter = field(default_factory=RxCounter)
    pump: PumpStats | None = None  # the reader thread's own drops, once the link is pumped
    flows: Flows | None = None  # the reader thread's flow table (its C loop's sends)
    #: What the reader thread may send on its own, by IP address: published by the trio
    #: thread (publish_routes) as a new dict each time, never changed in place.
    routes: dict[bytes, Route] = field(default_factory=dict)
    #: Every neighbour with a path, by IP address, for the port's receive thread to
    #: confirm (Hearing): published with `routes`, in the same way.
    hearing: dict[bytes, Hearing] = field(default_factory=dict)
    #: Its RX and TX queues (struct netdev_rx_queue, netdev_queue), allocated with it.
    queues: NetdevQueues = field(init=False)

    def __post_init__(self) -> None:
        self.mcast_mtu = self.admin_mtu = self.expected_mtu = wire.ud_mtu(self.max_ib_mtu)
        self.queues = NetdevQueues.alloc(num_queues(self.child_type is ChildType.RTNL))

    def statistic(self, name: str) -> int:
        """A counter, including what the reader thread sent or dropped, what the port's
        receive thread delivered, and what RC peers placed directly into our stack."""
        value = self.stats[name]
        if name == "tx_packets":
            value += self.fast_tx.packets + (self.flows.counts()[0] if self.flows else 0)
        elif name == "tx_bytes":
            value += self.fast_tx.bytes + (self.flows.counts()[1] if self.flows else 0)
        elif name == "tx_dropped" and self.pump is not None:
            value += self.pump.dropped
        elif name == "rx_packets":
            value += self.fast_rx.packets
        elif name == "rx_bytes":
            value += self.fast_rx.bytes
        elif name == "rx_dropped":
            value += self.fast_rx.dropped
        if self.placed and name in PLACED_COUNTERS:
            i = PLACED_COUNTERS.index(name)
            value += sum(queue.counts()[i] for queue in self.placed)
        return value

    def reaches_over_rc(self, dgid: bytes) -> bool:
        """Whether traffic to the path's neighbours goes over an established RC connection."""
        return any(
            neigh.cm is not None and neigh.cm.connected and neigh.hwaddr[4:] == dgid
            for neigh in self.neighbours.values()
        )

    @property
    def is_child(self) -> bool:
        return self.parent is not None

    @property
    def hw_addr(self) -> bytes:
        flags = wire.IPOIB_FLAGS_RC if self.cm_supported else 0
        return wire.hw_addr(flags, self.qpn, self.port.gid)

    @property
    def broadcast(self) -> bytes:
        return wire.broadcast_addr(self.pkey)

    @property
    def broadcast_mgid(self) -> bytes:
        return self.broadcast[4:]

    @property
    def cm_enabled(self) -> bool:
        """ipoib_cm_admin_enabled: the RC flag in our address and ADMIN_CM."""
        return self.cm_supported and self.admin_cm

    @property
    def dev_id(self) -> int:
        return self.port.num - 1 if self.parent is None else 0


def is_ipv4_group(iface: Interface, dst: bytes) -> bool:
    """Multicast, limited broadcast, or the directed broadcast of one of our subnets."""
    return dst[0] >= 224 or dst == b"\xff\xff\xff\xff" or dst in iface.broadcasts4


#: The states whose packets the reader thread may send on its own.
PUBLISHED = NUD_CONNECTED | NUD_DELAY | NUD_PROBE


def publish_routes(iface: Interface) -> None:
    """Give the reader thread a fresh snapshot of the neighbours it may send to: over RC
    when both ends do connected mode and the connection is up, else over UD; and the
    receive thread the neighbours it may confirm. Called on the trio thread whenever a
    neighbour, a connection, the mode or a subnet's broadcast address changes. No group
    address is published (multicast, broadcast: Neighbours.xmit_fast tests nothing else)."""
    rc = iface.cm_enabled
    routes: dict[bytes, Route] = {}
    hearing: dict[bytes, Hearing] = {}
    for addr, neigh in iface.neighbours.items():
        if neigh.hearing is not None:
            hearing[addr] = neigh.hearing
        if not neigh.nud & PUBLISHED:
            continue  # STALE (the first use moves it to DELAY on the trio thread) or invalid
        if is_ipv4_group(iface, addr) if len(addr) == 4 else addr[0] == 0xFF:
            continue
        route = neigh.rc_route if rc and neigh.rc_capable else neigh.ud_route
        if route is not None and neigh.ready:
            routes[addr] = route
    iface.routes = routes
    iface.hearing = hearing
    if iface.flows is not None:  # what it sent goes through `routes` again (xmit_fast)
        iface.flows.clear()


def lend_to_flows(flows: Flows, generation: int, key: bytes, queue: RemoteQueue, kind: int,
                  limit: int, gro: bool, port_ok: Flag) -> bool:  # fmt: skip
    """Route.offer's end: install `key` in the flow table, into `queue`, while it is open."""
    return queue.lend(
        lambda sink, page: flows.install(generation, key, kind, limit, gro, sink, page, port_ok),
        flows.forget,
    )
