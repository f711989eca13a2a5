"""ipoib_ethtool.c: ipoib_ethtool_ops (drvinfo, link, statistics, coalesce)."""

from __future__ import annotations

import errno

from ..errors import KernelError
from .interface import Interface

DRIVER_NAME = "ib_ipoib"
#: ipoib_gstrings_stats, in its order.
ETHTOOL_STATS = ("rx_packets", "tx_packets", "rx_bytes", "tx_bytes", "tx_errors", "rx_dropped",
                 "tx_dropped", "multicast")  # fmt: skip


def speed(iface: Interface) -> int | None:
    """ipoib_get_link_ksettings: the port's speed in Mb/s, unknown without carrier."""
    return iface.port.speed_mbps if iface.carrier else None


def stats(iface: Interface) -> dict[str, int]:
    """ipoib_get_ethtool_stats."""
    return {name: iface.statistic(name) for name in ETHTOOL_STATS}


def set_coalesce(iface: Interface, usecs: int | None, frames: int | None) -> None:
    """ipoib_set_coalesce: each value at most 0xffff; the CQ moderation always applies."""
    usecs = iface.coalesce_usecs if usecs is None else usecs
    frames = iface.coalesce_frames if frames is None else frames
    if not 0 <= usecs <= 0xFFFF or not 0 <= frames <= 0xFFFF:
        raise KernelError(errno.EINVAL)
    iface.coalesce_usecs, iface.coalesce_frames = usecs, frames
    iface.rx.kick()  # the held frames' timer follows the new moderation
