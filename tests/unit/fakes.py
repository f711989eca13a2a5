"""The one set of fakes the unit tests share: a netdev layer, a driver log and a link state.

FakeNetdevs implements the driver's Netdevs protocol in memory; tests drive it as the
kernel would (`link.up = True`, then the driver is told of the event).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from pathlib import Path

from ipoibfs.errors import KernelError
from ipoibfs.netdev import LinkState

IFF_UP = 0x1
FEATURE_NAMES = (Path(__file__).parent / "data" / "eth-ss-features.txt").read_text().split("\n")
FEATURE_NAMES.pop()  # the last line's newline
#: A TUN's dev->flags (IFF_POINTOPOINT | IFF_NOARP | IFF_MULTICAST) ...
TUN_FLAGS = 0x10 | 0x80 | 0x1000
#: ... and what dev_get_flags adds while it runs (IFF_RUNNING | IFF_LOWER_UP).
IFF_RUNNING_LOWER_UP = 0x40 | 0x10000


@dataclass
class FakeLink:
    ifindex: int
    name: str
    mtu: int
    up: bool = False
    carrier: bool = False
    received: list = field(default_factory=list)
    offload: int = 0  #: the TUNSETOFFLOAD flags last set
    addresses: list = field(default_factory=list)
    attrs: dict = field(default_factory=dict)
    txqlen: int = 0


@dataclass
class FakePump:
    """What a reader thread reports: packets dropped because the slow path was full (a
    fake reader has no flow table: every packet reaches the driver)."""

    dropped: int = 0
    flows: None = None


class FakeNetdevs:
    def __init__(self, taken: tuple[str, ...] = ()) -> None:
        self.links: dict[str, FakeLink] = {}
        self.taken = set(taken)
        self.pumps: dict[str, tuple] = {}
        self.groups: dict[str, tuple[list[str], list[str]]] = {}
        self.sysctl_values: dict[str, int] = {}  # /proc/sys/net/PATH -> value; else missing
        self._next = 2

    async def create(self, name: str, *, mtu: int, txqlen: int, offload: int = 0) -> FakeLink:
        if name in self.links or name in self.taken:
            raise KernelError(errno.EEXIST)
        link = FakeLink(self._next, name, mtu, offload=offload)
        link.txqlen = txqlen
        self._next += 1
        self.links[name] = link
        return link

    async def destroy(self, link: FakeLink) -> None:
        """The netdev goes, and its reader with it."""
        self.links.pop(link.name, None)
        self.pumps.pop(link.name, None)

    def names(self) -> list[str]:
        return ["lo", *self.taken, *self.links]

    async def set_mtu(self, link: FakeLink, mtu: int) -> None:
        link.mtu = mtu

    async def set_up(self, link: FakeLink, up: bool) -> None:
        link.up = up

    def set_carrier(self, link: FakeLink, on: bool) -> None:
        link.carrier = on

    async def set_attrs(self, link: FakeLink, **attrs) -> None:
        link.attrs.update(attrs)

    async def set_offload(self, link: FakeLink, flags: int) -> None:
        link.offload = flags

    def feature_names(self) -> list[str]:
        """The kernel's ETH_SS_FEATURES strings (6.18, captured in tests/unit/data)."""
        return FEATURE_NAMES

    def mtu(self, link: FakeLink) -> int:
        return link.mtu

    def is_up(self, link: FakeLink) -> bool:
        return link.up

    def flags(self, link: FakeLink) -> int:
        """SIOCGIFFLAGS (LiveNetdevs.flags): a TUN's flags, with RUNNING while up with
        carrier (operstate up, linkwatch having run), cut to 16 bits: no LOWER_UP."""
        return self._flags(link) & 0xFFFF

    def txqlen(self, link: FakeLink) -> int:
        return link.attrs.get("txqlen", link.txqlen)

    def carrier(self, link: FakeLink) -> bool:
        """ETHTOOL_GLINK (LiveNetdevs.carrier): carrier while up, False while down."""
        return link.up and link.carrier

    @staticmethod
    def _flags(link: FakeLink) -> int:
        """dev_get_flags of the link (what netlink's ifi_flags carries)."""
        running = link.up and link.carrier
        return TUN_FLAGS | (IFF_UP if link.up else 0) | (IFF_RUNNING_LOWER_UP if running else 0)

    def pump(self, link: FakeLink, fast, slow, *, limit: int, held=(), fast_end=None,
             slow_end=None, flows_ok=None) -> FakePump:  # fmt: skip
        stats = FakePump()
        self.pumps[link.name] = (fast, slow, stats)
        return stats

    def write(self, link: FakeLink, packet: bytes) -> bool:
        link.received.append(bytes(packet))
        return True

    def sink(self, link: FakeLink) -> int:
        return -1

    async def add_address(self, link: FakeLink, address: str, prefixlen: int) -> None:
        link.addresses.append((address, prefixlen))

    async def addresses(self) -> dict:
        return {}

    async def ip_memberships(self) -> dict[str, tuple[list[str], list[str]]]:
        return self.groups

    async def sysctls(self, paths: list[str]) -> list[int | None]:
        return [self.sysctl_values.get(path) for path in paths]

    async def link_events(self):
        """No events of its own: tests call the driver's handlers directly."""
        return
        yield

    async def state(self, link: FakeLink) -> LinkState:
        """What netlink reports of the link now (LiveNetdevs.state): a TUN's flags, with
        RUNNING and LOWER_UP while up with carrier; txqlen, ifalias and group as set_attrs
        last set them."""
        running = link.up and link.carrier
        return LinkState(
            flags=self._flags(link),
            mtu=link.mtu,
            operstate="up" if running else "down",
            carrier=int(link.carrier),
            carrier_changes=0,
            carrier_up_count=0,
            carrier_down_count=0,
            txqlen=self.txqlen(link),
            ifalias=link.attrs.get("ifalias", ""),
            group=link.attrs.get("group", 0),
            proto_down=0,
        )


class ListLog:
    """A DriverLog that keeps its lines (`dev: text`, without the newline)."""

    data = cm_data = False

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.exceptions: list[str] = []

    def warn(self, dev: str, text: str) -> None:
        self.lines.append(f"{dev}: {text}".rstrip("\n"))

    alert = info = dbg = dbg_mcast = dbg_data = warn

    def daemon(self, text: str) -> None:
        self.lines.append(text)

    def exception(self, what: str) -> None:
        self.exceptions.append(what)
