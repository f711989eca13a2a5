"""A netdev's queues as the core keeps them for the driver: struct netdev_rx_queue and
struct netdev_queue, allocated with the netdev (alloc_netdev_mqs) and gone with it; and the
machine's CPUs, which size them (ipoib_get_max_num_queues) and which their maps name.

How many: ib_ipoib allocates its netdevs with alloc_netdev (one RX and one TX queue) on an
HCA without an accelerated rdma_netdev, as here; an `ip link add … type ipoib` child gets
what rtnl_link_ops asks for, ipoib_get_max_num_queues (min(num_possible_cpus(), 128) each).
The maps and limits are kept as the queue files store them (sysfs/queues.py shows them);
nothing steers packets by them (the daemon has no per-queue data path).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

from .. import wire
from ..errors import KernelError
from ..wire.bitmap import bitmap_parselist

MAX_QUEUES = 128
#: CONFIG_NR_CPUS (Debian amd64): the most CPUs a list of /sys/devices/system can name.
NR_CPUS = 8192
#: include/linux/dynamic_queue_limits.h: DQL_MAX_OBJECT, DQL_MAX_LIMIT.
DQL_MAX_OBJECT = 0xFFFFFFFF // 16
DQL_MAX_LIMIT = 0xFFFFFFFF // 2 - DQL_MAX_OBJECT


# ----------------------------------------------------------------- the machine's CPUs


def cpu_list(path: str) -> int:
    """A CPU (or node) list file of /sys/devices/system ("0-3,8"), as a mask: CPU 0 alone
    when it cannot be read."""
    try:
        with open(path, "rb") as f:
            mask = bitmap_parselist(f.read(), NR_CPUS)
    except (OSError, KernelError):
        return 1
    return mask or 1


@cache
def nr_cpu_ids() -> int:
    """nr_cpu_ids (and nr_cpumask_bits): one more than the highest possible CPU."""
    return cpu_list("/sys/devices/system/cpu/possible").bit_length()


@cache
def num_possible_cpus() -> int:
    return cpu_list("/sys/devices/system/cpu/possible").bit_count()


def cpu_online_mask() -> int:
    """cpu_online_mask, read when asked (CPUs go on and offline)."""
    return cpu_list("/sys/devices/system/cpu/online")


def num_queues(rtnl_child: bool) -> int:
    """num_rx_queues = num_tx_queues: 1 (alloc_netdev), or ipoib_get_max_num_queues for an
    rtnl child."""
    return min(num_possible_cpus(), MAX_QUEUES) if rtnl_child else 1


# ----------------------------------------------------------------- per-queue state


@dataclass
class RxQueue:
    """struct netdev_rx_queue: the RPS map and the flow table's size."""

    rps_cpus: int = 0
    flow_log: int | None = None  #: rps_dev_flow_table->log, None without a table


@dataclass
class TxQueue:
    """struct netdev_queue: XPS maps, tx_maxrate and the dql (dql_init(&dql, HZ))."""

    xps_cpus: int = 0
    xps_rxqs: int = 0
    limit: int = 0
    limit_max: int = DQL_MAX_LIMIT
    limit_min: int = 0
    hold_time: int = wire.HZ  #: slack_hold_time, in jiffies
    stall_thrs: int = 0  #: in jiffies


@dataclass
class NetdevQueues:
    """One netdev's queues (num_rx_queues = num_tx_queues of them)."""

    rx: list[RxQueue] = field(default_factory=list)
    tx: list[TxQueue] = field(default_factory=list)

    @classmethod
    def alloc(cls, count: int) -> NetdevQueues:
        """alloc_netdev_mqs's queues."""
        return cls([RxQueue() for _ in range(count)], [TxQueue() for _ in range(count)])

    def reset_xps_gt(self, index: int) -> None:
        """netif_reset_xps_queues_gt: the TX queues from `index` on leave both XPS maps
        (netif_set_real_num_tx_queues, when the real count drops to `index`)."""
        for queue in self.tx[index:]:
            queue.xps_cpus = queue.xps_rxqs = 0
