"""The InfiniBand side at the level of verbs: an HCA with ports, and a subnet manager.

`FabricPort` is what the IPoIB driver talks to. The embedded fabric (one host, its own
subnet manager in-process) implements it today; a shared fabric and real hardware later.
"""

from .device import HcaDevice, HcaProfile, Port
from .embedded import EmbeddedFabric
from .port import FabricPort
from .sm import McMember, PathRecord, SubnetManager

__all__ = [
    "EmbeddedFabric",
    "FabricPort",
    "HcaDevice",
    "HcaProfile",
    "McMember",
    "PathRecord",
    "Port",
    "SubnetManager",
]
