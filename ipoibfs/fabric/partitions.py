"""Partitions as OpenSM's partitions.conf describes them (the default when there is no file)."""

from __future__ import annotations

from dataclasses import dataclass, field

#: partitions.conf defaults for IPoIB broadcast groups: mtu=4 (2048), rate=3 (10 Gb/s), scope 2.
DEFAULT_MTU_ENUM = 4
DEFAULT_RATE_ENUM = 3
DEFAULT_SCOPE = 2
IPOIB_QKEY = 0x0B1B


@dataclass
class Member:
    """A `partitions.conf` member: a port GUID or ALL, with full or limited membership."""

    guid: int | None  # None means ALL
    full: bool


@dataclass
class Partition:
    name: str
    pkey: int  # 15-bit partition number, no membership bit
    ipoib: bool = False
    mtu: int = DEFAULT_MTU_ENUM
    rate: int = DEFAULT_RATE_ENUM
    sl: int = 0
    scope: int = DEFAULT_SCOPE
    members: list[Member] = field(default_factory=list)

    def membership(self, port_guid: int) -> bool | None:
        """True for full, False for limited, None when the port is not a member."""
        found: bool | None = None
        for m in self.members:
            if m.guid is None or m.guid == port_guid:
                found = bool(found) or m.full
        return found


def default_partitions() -> list[Partition]:
    """What OpenSM runs with no file: `Default=0x7fff, ipoib : ALL=full ;`."""
    return [Partition("Default", 0x7FFF, ipoib=True, members=[Member(None, True)])]
