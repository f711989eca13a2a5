"""The InfiniBand side at the level of verbs: an HCA with ports, and a subnet manager.

`FabricPort` is what the IPoIB driver talks to; a `Fabric` backend opens one per HCA port.
The embedded fabric (one host, its own subnet manager in-process) and the shared one
(`client.RemoteFabric`, the client of `fabric serve`) implement it; real hardware later.
"""

from .backend import Fabric
from .device import HcaDevice, HcaProfile, Port
from .embedded import EmbeddedFabric
from .port import FabricPort
from .sm import McMember, PathRecord, SubnetManager

__all__ = [
    "EmbeddedFabric",
    "Fabric",
    "FabricPort",
    "HcaDevice",
    "HcaProfile",
    "McMember",
    "PathRecord",
    "Port",
    "SubnetManager",
]
