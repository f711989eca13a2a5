"""An emulated HCA: node attributes and ports as ib_query_device/ib_query_port report them."""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field

from .. import wire

#: The vendor part of every emulated GUID (Mellanox's OUI 00:02:c9, as on ConnectX HCAs).
GUID_BASE = 0x0002C90300000000
SUBNET_PREFIX = 0xFE80000000000000
FIRST_QPN = 0x48

PORT_STATES = {0: "NOP", 1: "DOWN", 2: "INIT", 3: "ARMED", 4: "ACTIVE", 5: "ACTIVE_DEFER"}
PHYS_STATES = {
    1: "Sleep",
    2: "Polling",
    3: "Disabled",
    4: "PortConfigurationTraining",
    5: "LinkUp",
    6: "LinkErrorRecovery",
    7: "Phy Test",
}
#: Per-lane speed: name, deci-Gb/s for the core's `rate`, Mb/s for ethtool.
SPEEDS = {
    "SDR": (25, 2500),
    "DDR": (50, 5000),
    "QDR": (100, 10000),
    "FDR10": (100, 10000),
    "FDR": (140, 14000),
    "EDR": (250, 25000),
    "HDR": (500, 50000),
    "NDR": (1000, 100000),
}
PKEY_TABLE_LEN = 128
GID_TABLE_LEN = 128


def node_guid_for(host: str) -> int:
    """Deterministic node GUID: lab host hN reads as N in the last bytes, others hash."""
    m = re.fullmatch(r"(?:.*-)?h(\d+)", host)
    number = int(m.group(1)) if m else zlib.crc32(host.encode()) & 0xFFFFFF
    return GUID_BASE | (number & 0xFFFFFF) << 8


@dataclass
class HcaProfile:
    """What the emulated HCA reports; the defaults are the documented profile."""

    name: str = "ipoibfs0"
    ports: int = 1
    fw_ver: str = "1.0.0"
    hca_type: str = "ipoibfs"
    hw_rev: str = "0"
    board_id: str = "IPOIBFS_0001"
    speed: str = "EDR"
    width: int = 4
    max_mtu: int = 4096
    cm: bool = True
    srq: bool = True


@dataclass
class Port:
    """One HCA port. `lid`, `sm_lid` and the P_Key table are programmed by the subnet manager."""

    num: int
    guid: int
    profile: HcaProfile
    lid: int = 0
    sm_lid: int = 0
    state: int = 1
    phys_state: int = 5
    pkeys: list[int] = field(default_factory=lambda: [0] * PKEY_TABLE_LEN)
    gid_prefix: int = SUBNET_PREFIX
    _pkey_cache: dict[int, int | None] = field(default_factory=dict, repr=False)

    @property
    def gid(self) -> bytes:
        return wire.gid_from_guid(self.gid_prefix, self.guid)

    @property
    def gids(self) -> list[bytes]:
        return [self.gid] + [bytes(16)] * (GID_TABLE_LEN - 1)

    @property
    def rate_text(self) -> str:
        """The core's `rate` file: "%d%s Gb/sec (%dX%s)"."""
        deci = SPEEDS[self.profile.speed][0] * self.profile.width
        half = ".5" if deci % 10 else ""
        return f"{deci // 10}{half} Gb/sec ({self.profile.width}X {self.profile.speed})"

    @property
    def speed_mbps(self) -> int:
        return SPEEDS[self.profile.speed][1] * self.profile.width

    def set_pkeys(self, table: list[int]) -> None:
        """Program the P_Key table (the SM's SubnSet(P_KeyTable)); unused entries are 0."""
        self.pkeys[:] = list(table[: len(self.pkeys)]) + [0] * (len(self.pkeys) - len(table))
        self._pkey_cache.clear()

    def pkey_index(self, pkey: int) -> int | None:
        """ib_find_pkey: the first full-member entry for the partition, else the first limited.

        Memoised: the receive path asks it for every datagram.
        """
        if pkey in self._pkey_cache:
            return self._pkey_cache[pkey]
        limited = found = None
        for i, value in enumerate(self.pkeys):
            if value & wire.PKEY_MASK == pkey & wire.PKEY_MASK:
                if value & wire.FULL_MEMBER:
                    found = i
                    break
                if limited is None:
                    limited = i
        result = found if found is not None else limited
        self._pkey_cache[pkey] = result
        return result


class HcaDevice:
    """The host's HCA: node attributes, ports, and the per-host QPN allocator."""

    def __init__(self, host: str, profile: HcaProfile, node_guid: int | None = None) -> None:
        self.host = host
        self.profile = profile
        self.node_guid = node_guid if node_guid is not None else node_guid_for(host)
        self.node_desc = f"{host} {profile.name}".encode()
        self.ports = [
            Port(num=n, guid=self.node_guid + n, profile=profile)
            for n in range(1, profile.ports + 1)
        ]
        self._next_qpn = FIRST_QPN

    @property
    def name(self) -> str:
        return self.profile.name

    def set_node_desc(self, buf: bytes) -> None:
        """ib_modify_device(NODE_DESC): the first 64 bytes, as written (newline included)."""
        self.node_desc = buf[:64]

    def alloc_qpn(self) -> int:
        qpn = self._next_qpn
        self._next_qpn += 1
        return qpn
