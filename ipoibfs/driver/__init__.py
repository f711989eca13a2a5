"""The IPoIB driver layer: interface state and the kernel driver's rules, one room per
ib_ipoib file (main, vlan, netlink, multicast, ib, neigh, cm, ethtool, fs), no I/O of its own."""

from .context import DriverContext, DriverLog, Netdevs
from .interface import STAT_NAMES, ChildType, Interface, Link, McastEntry, PathEntry, PumpStats
from .params import PARAMS, ModuleParams
from .probe import IPoIBDriver

__all__ = [
    "PARAMS",
    "STAT_NAMES",
    "ChildType",
    "DriverContext",
    "DriverLog",
    "IPoIBDriver",
    "Interface",
    "Link",
    "McastEntry",
    "ModuleParams",
    "Netdevs",
    "PathEntry",
    "PumpStats",
]
