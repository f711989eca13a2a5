"""The IPoIB driver layer: interface state and the kernel driver's rules, no I/O of its own."""

from .driver import DriverLog, IPoIBDriver
from .interface import STAT_NAMES, ChildType, Interface, Link, McastEntry, Netdevs, PathEntry
from .params import PARAMS, ModuleParams

__all__ = [
    "PARAMS",
    "STAT_NAMES",
    "ChildType",
    "DriverLog",
    "IPoIBDriver",
    "Interface",
    "Link",
    "McastEntry",
    "ModuleParams",
    "Netdevs",
    "PathEntry",
]
