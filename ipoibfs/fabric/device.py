"""An emulated HCA: node attributes and ports as ib_query_device/ib_query_port report them."""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import wire
from ..errors import UsageError

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
#: The port's capability mask (PortInfo.CapabilityMask, sysfs cap_mask) without IsSM;
#: IB_PORT_SM is set while a process holds the port's issmN open (ib_umad_sm_open).
CAP_MASK = 0x2651E848
IB_PORT_SM = 1 << 1


def node_guid_for(host: str) -> int:
    """Deterministic node GUID: lab host hN reads as N in the last bytes, others hash."""
    m = re.fullmatch(r"(?:.*-)?h(\d+)", host)
    number = int(m.group(1)) if m else zlib.crc32(host.encode()) & 0xFFFFFF
    return GUID_BASE | (number & 0xFFFFFF) << 8


# ----------------------------------------------------------------- the PCI function

#: Where the HCA sits: a PCI domain of its own, so that the emulated root bus never shadows a
#: real one in `ipoibfs exec`'s merged /sys/devices (hosts with several PCI domains number
#: theirs the same way, e.g. 0001:00:02.0 for a VM's passed-through ConnectX).
PCI_DOMAIN = 0x0001
PCI_BUS = 0x00
#: Class 02 (network controller), subclass 07 (InfiniBand), prog-if 0, as lspci shows
#: ConnectX HCAs ("Infiniband controller [0207]").
PCI_CLASS_INFINIBAND = 0x020700
#: include/linux/ioport.h: IORESOURCE_MEM | IORESOURCE_MEM_64 | IORESOURCE_SIZEALIGN, and the
#: BAR's own type bits (PCI_BASE_ADDRESS_MEM_TYPE_64); _PREFETCH adds IORESOURCE_PREFETCH and
#: PCI_BASE_ADDRESS_MEM_PREFETCH.
IORESOURCE_MEM_64BIT = 0x00140204
IORESOURCE_MEM_64BIT_PREFETCH = 0x0014220C


@dataclass(frozen=True)
class PciFunction:
    """The PCI function that holds the HCA, as drivers/pci/pci-sysfs.c shows it."""

    vendor: int
    device: int
    subsystem_vendor: int
    subsystem_device: int
    driver: str  #: the PCI driver bound to it, and its module
    pci_class: int = PCI_CLASS_INFINIBAND
    revision: int = 0
    bar0_start: int = 0xE0000000
    bar0_size: int = 0x02000000
    bar0_flags: int = IORESOURCE_MEM_64BIT_PREFETCH

    @property
    def slot_name(self) -> str:
        """pci_name(): "%04x:%02x:%02x.%d" (domain, bus, slot 0, function 0)."""
        return f"{PCI_DOMAIN:04x}:{PCI_BUS:02x}:00.0"

    @property
    def root_bus(self) -> str:
        """The root bus's device under /sys/devices: "pci%04x:%02x"."""
        return f"pci{PCI_DOMAIN:04x}:{PCI_BUS:02x}"

    @property
    def modalias(self) -> str:
        """modalias_show: "pci:v%08Xd%08Xsv%08Xsd%08Xbc%02Xsc%02Xi%02X" (no newline)."""
        c = self.pci_class
        return (
            f"pci:v{self.vendor:08X}d{self.device:08X}sv{self.subsystem_vendor:08X}"
            f"sd{self.subsystem_device:08X}bc{c >> 16 & 0xFF:02X}sc{c >> 8 & 0xFF:02X}"
            f"i{c & 0xFF:02X}"
        )

    def resource_text(self, lines: int) -> str:
        """resource_show: one "0x%016llx 0x%016llx 0x%016llx" line (start, end, flags) per
        resource up to PCI_BRIDGE_RESOURCES; only BAR 0 is assigned."""
        rows = [(self.bar0_start, self.bar0_start + self.bar0_size - 1, self.bar0_flags)]
        rows += [(0, 0, 0)] * (lines - 1)
        return "".join(f"0x{a:016x} 0x{b:016x} 0x{f:016x}\n" for a, b, f in rows)

    def config_space(self) -> bytes:
        """The 256 bytes of a conventional PCI type-0 header (include/uapi/linux/pci_regs.h
        offsets, little-endian): ids, command (memory space, bus master, INTx disabled),
        class, BAR 0 (and BAR 1, its high half, for a 64-bit BAR), subsystem ids; no
        capability list, so no PCIe extended space."""
        cfg = bytearray(256)
        struct.pack_into("<HHHH", cfg, 0x00, self.vendor, self.device, 0x0406, 0x0000)
        cfg[0x08] = self.revision
        cfg[0x09:0x0C] = (self.pci_class & 0xFFFFFF).to_bytes(3, "little")
        bar = self.bar0_start | (self.bar0_flags & 0xF)  # the BAR's type and prefetch bits
        struct.pack_into("<Q", cfg, 0x10, bar)
        struct.pack_into("<HH", cfg, 0x2C, self.subsystem_vendor, self.subsystem_device)
        return bytes(cfg)

    def uevent_text(self) -> str:
        """dev_uevent's DRIVER= and pci_uevent's variables."""
        return (
            f"DRIVER={self.driver}\n"
            f"PCI_CLASS={self.pci_class:04X}\n"
            f"PCI_ID={self.vendor:04X}:{self.device:04X}\n"
            f"PCI_SUBSYS_ID={self.subsystem_vendor:04X}:{self.subsystem_device:04X}\n"
            f"PCI_SLOT_NAME={self.slot_name}\n"
            f"MODALIAS={self.modalias}\n"
        )


#: The neutral profile's function: vendor and device 0x0000, so that nothing (no kernel
#: driver, no rdma-core provider) takes it for a real card; its driver is "ipoibfs".
NEUTRAL_PCI = PciFunction(
    vendor=0x0000, device=0x0000, subsystem_vendor=0x0000, subsystem_device=0x0000,
    driver="ipoibfs", bar0_size=0x00100000, bar0_flags=IORESOURCE_MEM_64BIT,
)  # fmt: skip
#: ConnectX-6 (drivers/net/ethernet/mellanox/mlx5/core/main.c mlx5_core_pci_table:
#: PCI_VDEVICE(MELLANOX, 0x101b)), bound to mlx5_core. rdma-core's mlx5 provider matches it
#: by VERBS_PCI_MATCH(0x15b3, 0x101b). The subsystem ids are this profile's choice.
CONNECTX6_PCI = PciFunction(
    vendor=0x15B3, device=0x101B, subsystem_vendor=0x15B3, subsystem_device=0x0006,
    driver="mlx5_core",
)  # fmt: skip


@dataclass
class HcaProfile:
    """What the emulated HCA reports; the defaults are the documented (neutral) profile."""

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
    #: The stateless offloads it offers IPoIB (decisions 18 and 33): IB_DEVICE_UD_IP_CSUM,
    #: IBK_UD_TSO (LSO) and LRO (the driver documentation's, only with the checksum).
    ud_ip_csum: bool = True
    ud_tso: bool = True
    lro: bool = True
    kind: str = "ipoibfs"  #: the profile's name (HCA_PROFILES)
    pci: PciFunction = NEUTRAL_PCI


def _connectx6(**kw: Any) -> HcaProfile:
    """ConnectX-6 as mlx5_ib shows it: hca_type "MT%d" of the PCI device id (MT4123),
    hw_rev "%x" of the PCI revision, fw_ver "%d.%d.%04d" (a ConnectX-6 release, 20.x),
    board_id the PSID, 4X HDR links, devices named mlx5_<n>."""
    pci = CONNECTX6_PCI
    values: dict[str, Any] = dict(
        name="mlx5_0", fw_ver="20.31.1014", hca_type=f"MT{pci.device}",
        hw_rev=f"{pci.revision:x}", board_id="MT_0000000223", speed="HDR", kind="connectx6",
        pci=pci,
    )  # fmt: skip
    values.update(kw)
    return HcaProfile(**values)


#: The HCA profiles `--hca` chooses from (the first is the default).
HCA_PROFILES: dict[str, Callable[..., HcaProfile]] = {
    "ipoibfs": HcaProfile,
    "connectx6": _connectx6,
}


#: `--no-offload`: an HCA that offers none of the stateless offloads.
NO_OFFLOAD = {"ud_ip_csum": False, "ud_tso": False, "lro": False}


def hca_profile(kind: str, *, offload: bool = True, **kw: Any) -> HcaProfile:
    """The profile named `kind`, with the given fields (ports, cm, srq) set; without
    `offload`, one that offers no stateless offload (NO_OFFLOAD)."""
    if not offload:
        kw = {**kw, **NO_OFFLOAD}
    try:
        make = HCA_PROFILES[kind]
    except KeyError:
        choices = ", ".join(HCA_PROFILES)
        raise UsageError(f"unknown HCA profile '{kind}' (choose from {choices})") from None
    return make(**kw)


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
    is_sm: bool = False
    _pkey_cache: dict[int, int | None] = field(default_factory=dict, repr=False)

    @property
    def gid(self) -> bytes:
        return wire.gid_from_guid(self.gid_prefix, self.guid)

    @property
    def cap_mask(self) -> int:
        """IsSM while issmN is open, or on the port the SM runs on (its LID the SM's)."""
        runs_sm = self.is_sm or (self.lid != 0 and self.lid == self.sm_lid)
        return CAP_MASK | IB_PORT_SM if runs_sm else CAP_MASK

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
        #: The PCI function's numa_node (NUMA_NO_NODE until a numa_node store sets it).
        self.numa_node = -1

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
