"""The live Linux side: TUN devices typed InfiniBand, netlink, link events, IP memberships.

All netlink and TUN code of the project is in this package.
"""

from ..namespaces import NetnsError
from .links import LinkState, LiveLink, LiveNetdevs, PumpStats
from .netns import NetnsWorker

__all__ = ["LinkState", "LiveLink", "LiveNetdevs", "NetnsError", "NetnsWorker", "PumpStats"]
