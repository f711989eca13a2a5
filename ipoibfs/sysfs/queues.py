"""class/net/<if>/queues/: net/core/net-sysfs.c's rx-N and tx-N queue kobjects.

How many and what they hold: the interface's `queues` (driver/queues.py, struct
netdev_rx_queue / netdev_queue, allocated with the netdev). Connected mode sets the real TX
queue count to 1 (ipoib_set_mode, whose netif_set_real_num_tx_queues resets the XPS maps of
the queues beyond it), datagram mode back to all of them. The files show that state as the
kernel does, and every store goes through the MirrorContext; nothing here keeps state.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from functools import cache

from .. import wire
from ..errors import KernelError
from ..wire.bitmap import bitmap_parse, bitmap_string
from .context import (
    DQL_MAX_LIMIT,
    MAX_QUEUES,
    Interface,
    MirrorContext,
    RxQueue,
    TxQueue,
    cpu_online_mask,
    nr_cpu_ids,
    num_possible_cpus,
)
from .nodes import CAP_NET_ADMIN, Attribute, Caller, Group, Members, Table, const, ro, rw

__all__ = ["MAX_QUEUES", "QUEUES", "cpu_online_mask", "nr_cpu_ids", "num_possible_cpus"]

HZ = wire.HZ
#: sizeof(struct rps_dev_flow) with CONFIG_RFS_ACCEL (cpu, filter, last_qtail, hash), and
#: the table's header (log and its rcu_head).
RPS_DEV_FLOW_SIZE = 12
RPS_DEV_FLOW_TABLE_HEADER = 24


@cache
def total_ram() -> int:
    """totalram_pages() * PAGE_SIZE: vmalloc refuses anything larger."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def num_queues(iface: Interface) -> int:
    """num_rx_queues = num_tx_queues, as allocated with the netdev."""
    return len(iface.queues.tx)


def real_num_tx_queues(iface: Interface) -> int:
    """netif_set_real_num_tx_queues: 1 in connected mode, all of them in datagram mode."""
    return 1 if iface.admin_cm else num_queues(iface)


RX, TX = 0, 1

#: One queue kobject: (the interface, RX or TX, its index). A tuple, so that an open file's
#: device compares equal to the one a new lookup finds (fs.py's _same_device).
Queue = tuple[Interface, int, int]


def rx_of(queue: Queue) -> RxQueue:
    iface, _, index = queue
    return iface.queues.rx[index]


def tx_of(queue: Queue) -> TxQueue:
    iface, _, index = queue
    return iface.queues.tx[index]


def set_rx(ctx: MirrorContext, queue: Queue, **fields: object) -> None:
    _registered(ctx, queue)
    ctx.set_rx_queue(queue[0], queue[2], **fields)


def set_tx(ctx: MirrorContext, queue: Queue, **fields: object) -> None:
    _registered(ctx, queue)
    ctx.set_tx_queue(queue[0], queue[2], **fields)


def is_rx(queue: Queue) -> bool:
    return queue[1] == RX


def is_tx(queue: Queue) -> bool:
    return queue[1] == TX


def _net_admin(caller: Caller) -> None:
    if not caller.capable(CAP_NET_ADMIN):
        raise KernelError(errno.EPERM)


def _multiqueue(queue: Queue) -> None:
    """netif_is_multiqueue (num_tx_queues > 1), or ENOENT."""
    if num_queues(queue[0]) <= 1:
        raise KernelError(errno.ENOENT)


def _registered(ctx: MirrorContext, queue: Queue) -> None:
    if ctx.interfaces.get(queue[0].name) is not queue[0]:
        raise KernelError(errno.ENODEV)


# ----------------------------------------------------------------- rx-N


def show_rps_cpus(ctx: MirrorContext, queue: Queue) -> str:
    """show_rps_map: the map's CPUs, "%*pb\\n" over nr_cpu_ids."""
    return bitmap_string(rx_of(queue).rps_cpus, nr_cpu_ids()) + "\n"


def store_rps_cpus(ctx: MirrorContext, queue: Queue, caller: Caller, buf: bytes) -> None:
    """store_rps_map: capable(CAP_NET_ADMIN), bitmap_parse over nr_cpumask_bits (EINVAL,
    EOVERFLOW); the map holds the online CPUs of the mask (no housekeeping CPUs are
    isolated here)."""
    _net_admin(caller)
    mask = bitmap_parse(buf, nr_cpu_ids())
    set_rx(ctx, queue, rps_cpus=mask & cpu_online_mask())


def show_rps_flow_cnt(ctx: MirrorContext, queue: Queue) -> str:
    """show_rps_dev_flow_table_cnt: 1 << log, 0 without a table ("%lu\\n")."""
    log = rx_of(queue).flow_log
    return f"{0 if log is None else 1 << log}\n"


def store_rps_flow_cnt(ctx: MirrorContext, queue: Queue, caller: Caller, buf: bytes) -> None:
    """store_rps_dev_flow_table_cnt: capable(CAP_NET_ADMIN), kstrtoul(buf, 0); the count
    rounded up to a power of two, EINVAL when the mask does not fit a u32, ENOMEM when the
    table would not fit in memory (vmalloc); 0 removes the table."""
    _net_admin(caller)
    count = wire.kstrtoul(buf, 0)
    log = None
    if count:
        mask = count - 1
        while (mask | (mask >> 1)) != mask:
            mask |= mask >> 1
        if mask > 0xFFFFFFFF:
            raise KernelError(errno.EINVAL)
        if RPS_DEV_FLOW_TABLE_HEADER + RPS_DEV_FLOW_SIZE * (mask + 1) > total_ram():
            raise KernelError(errno.ENOMEM)
        log = mask.bit_length()  # ilog2(mask) + 1 (0 for a mask of 0)
    set_rx(ctx, queue, flow_log=log)


# ----------------------------------------------------------------- tx-N


def show_traffic_class(ctx: MirrorContext, queue: Queue) -> str:
    """traffic_class_show: ENOENT on a single-queue device; netdev_txq_to_tc is 0 without
    traffic classes."""
    _multiqueue(queue)
    return "0\n"


def show_tx_maxrate(ctx: MirrorContext, queue: Queue) -> str:
    return "0\n"


def store_tx_maxrate(ctx: MirrorContext, queue: Queue, caller: Caller, buf: bytes) -> None:
    """tx_maxrate_store: capable(CAP_NET_ADMIN), then EOPNOTSUPP before parsing: ib_ipoib
    has no ndo_set_tx_maxrate."""
    _net_admin(caller)
    raise KernelError(errno.EOPNOTSUPP)


def show_xps_cpus(ctx: MirrorContext, queue: Queue) -> str:
    """xps_cpus_show: ENOENT on a single-queue device, else the CPUs mapped to the queue."""
    _multiqueue(queue)
    return bitmap_string(tx_of(queue).xps_cpus, nr_cpu_ids()) + "\n"


def store_xps_cpus(ctx: MirrorContext, queue: Queue, caller: Caller, buf: bytes) -> None:
    """xps_cpus_store: ENOENT on a single-queue device (checked first), capable(), then
    bitmap_parse over nr_cpumask_bits; netif_set_xps_queue maps the online CPUs."""
    _multiqueue(queue)
    _net_admin(caller)
    mask = bitmap_parse(buf, nr_cpu_ids())
    set_tx(ctx, queue, xps_cpus=mask & cpu_online_mask())


def show_xps_rxqs(ctx: MirrorContext, queue: Queue) -> str:
    """xps_rxqs_show: the RX queues mapped to this TX queue, over num_rx_queues bits."""
    return bitmap_string(tx_of(queue).xps_rxqs, num_queues(queue[0])) + "\n"


def store_xps_rxqs(ctx: MirrorContext, queue: Queue, caller: Caller, buf: bytes) -> None:
    """xps_rxqs_store: ns_capable(CAP_NET_ADMIN), bitmap_parse over num_rx_queues bits."""
    _net_admin(caller)
    mask = bitmap_parse(buf, num_queues(queue[0]))
    set_tx(ctx, queue, xps_rxqs=mask)


def _msecs_to_jiffies(ms: int) -> int:
    return -(-ms * HZ // 1000)


def _jiffies_to_msecs(j: int) -> int:
    return j * 1000 // HZ


def bql_set(buf: bytes) -> int:
    """bql_set: "max" (strcmp, with or without one newline) is DQL_MAX_LIMIT, else
    kstrtouint(buf, 10), EINVAL above DQL_MAX_LIMIT."""
    text = wire.cstring(buf)
    if text in (b"max", b"max\n"):
        return DQL_MAX_LIMIT
    value = _kstrtouint(buf)
    if value > DQL_MAX_LIMIT:
        raise KernelError(errno.EINVAL)
    return value


def _kstrtouint(buf: bytes) -> int:
    """kstrtouint(buf, 10): ERANGE above a u32."""
    value = wire.kstrtoul(buf, 10)
    if value > 0xFFFFFFFF:
        raise KernelError(errno.ERANGE)
    return value


def bql_attr(name: str) -> Attribute:
    """BQL_ATTR(limit, limit_max, limit_min): "%u\\n" and bql_set; no capability check."""

    def show(ctx: MirrorContext, queue: Queue) -> str:
        return f"{getattr(tx_of(queue), name)}\n"

    def store(ctx: MirrorContext, queue: Queue, caller: Caller, buf: bytes) -> None:
        set_tx(ctx, queue, **{name: bql_set(buf)})

    return rw(name, show, store)


def show_hold_time(ctx: MirrorContext, queue: Queue) -> str:
    return f"{_jiffies_to_msecs(tx_of(queue).hold_time)}\n"


def store_hold_time(ctx: MirrorContext, queue: Queue, caller: Caller, buf: bytes) -> None:
    """bql_set_hold_time: kstrtouint(buf, 10) milliseconds, kept in jiffies."""
    set_tx(ctx, queue, hold_time=_msecs_to_jiffies(_kstrtouint(buf)))


def show_stall_thrs(ctx: MirrorContext, queue: Queue) -> str:
    return f"{_jiffies_to_msecs(tx_of(queue).stall_thrs)}\n"


def store_stall_thrs(ctx: MirrorContext, queue: Queue, caller: Caller, buf: bytes) -> None:
    """bql_set_stall_thrs: kstrtouint(buf, 10) ms; in jiffies 0 or 4..2*BITS_PER_LONG, else
    ERANGE."""
    value = _msecs_to_jiffies(_kstrtouint(buf)) & 0xFFFFFFFF
    if value and (value < 4 or value > 4 // 2 * 64):
        raise KernelError(errno.ERANGE)
    set_tx(ctx, queue, stall_thrs=value)


def store_stall_max(ctx: MirrorContext, queue: Queue, caller: Caller, buf: bytes) -> None:
    """bql_set_stall_max: any write resets it (it stays 0: nothing stalls here)."""
    _registered(ctx, queue)


#: byte_queue_limits/ (dql_group): every IPoIB netdev has it (no LLTX, a qdisc).
BYTE_QUEUE_LIMITS = Table(
    (
        bql_attr("limit"),
        bql_attr("limit_max"),
        bql_attr("limit_min"),
        rw("hold_time", show_hold_time, store_hold_time),
        ro("inflight", const(0)),
        rw("stall_thrs", show_stall_thrs, store_stall_thrs),
        ro("stall_cnt", const(0)),
        rw("stall_max", const(0), store_stall_max),
    )
)

#: One queue's directory: rx_queue_default_attrs or netdev_queue_default_attrs and dql_group.
QUEUE = Table(
    (
        rw("rps_cpus", show_rps_cpus, store_rps_cpus, is_rx),
        rw("rps_flow_cnt", show_rps_flow_cnt, store_rps_flow_cnt, is_rx),
        ro("tx_timeout", const(0), is_tx),
        ro("traffic_class", show_traffic_class, is_tx),
        rw("xps_cpus", show_xps_cpus, store_xps_cpus, is_tx),
        rw("xps_rxqs", show_xps_rxqs, store_xps_rxqs, is_tx),
        rw("tx_maxrate", show_tx_maxrate, store_tx_maxrate, is_tx),
        Group("byte_queue_limits", BYTE_QUEUE_LIMITS, is_tx),
    )
)


def _queue_names(ctx: MirrorContext, iface: Interface) -> Iterable[str]:
    rx = [f"rx-{i}" for i in range(num_queues(iface))]
    return rx + [f"tx-{i}" for i in range(real_num_tx_queues(iface))]


def _queue(ctx: MirrorContext, iface: Interface, name: str) -> Queue | None:
    kind, sep, number = name.partition("-")
    if not sep or kind not in ("rx", "tx") or not (number.isascii() and number.isdigit()):
        return None
    index = int(number)
    if str(index) != number:
        return None
    if kind == "rx":
        return (iface, RX, index) if index < num_queues(iface) else None
    return (iface, TX, index) if index < real_num_tx_queues(iface) else None


#: queues/: rx-<i> for every RX queue, tx-<i> for every real TX queue.
QUEUES = Members("queues", _queue_names, _queue, QUEUE, volatile=True)
