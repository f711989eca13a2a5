"""The subnet manager: LIDs, P_Key tables, MCMemberRecord groups and path records."""

from __future__ import annotations

import errno
import time
from dataclasses import dataclass, field

from .. import wire
from ..errors import KernelError
from .device import IB_MTU_ENUM, Port
from .partitions import IPOIB_QKEY, Partition, default_partitions

SM_LID = 1
FIRST_MLID = 0xC000
#: IB rate enum -> Mb/s (ib_rate_to_mbps) for the rates partitions.conf can name.
RATE_MBPS = {
    2: 2500,
    3: 10000,
    4: 30000,
    5: 5000,
    6: 20000,
    7: 40000,
    8: 60000,
    9: 80000,
    10: 120000,
    11: 14062,
    12: 56250,
    13: 112500,
    14: 168750,
    15: 25781,
    16: 103125,
    17: 154687,
    18: 309375,
}
MTU_BYTES = {v: k for k, v in IB_MTU_ENUM.items()}


@dataclass
class McGroup:
    mgid: bytes
    mlid: int
    pkey: int
    qkey: int
    mtu: int  # IB MTU enum
    rate: int
    sl: int
    created: float = field(default_factory=time.monotonic)
    members: dict[tuple[int, int], str] = field(default_factory=dict)  # (lid, qpn) -> join state


@dataclass(frozen=True)
class McMember:
    """What a successful join hands back to the member (the MCMemberRecord's fields)."""

    mgid: bytes
    mlid: int
    qkey: int
    mtu: int  # bytes
    rate: int
    sl: int
    pkey: int


@dataclass(frozen=True)
class PathRecord:
    dgid: bytes
    dlid: int
    sl: int
    rate_mbps: int
    mtu: int


class SubnetManager:
    """Programs ports and keeps the multicast groups, as OpenSM does for one subnet."""

    def __init__(self, partitions: list[Partition] | None = None) -> None:
        self.partitions = partitions if partitions is not None else default_partitions()
        self.ports: list[Port] = []
        self.groups: dict[bytes, McGroup] = {}
        self._next_lid = SM_LID + 1
        self._next_mlid = FIRST_MLID
        self._create_broadcast_groups()

    # ------------------------------------------------------------- ports

    def attach(self, port: Port) -> None:
        """Bring a port into the subnet: a LID, the SM's LID, its P_Key table, ACTIVE."""
        port.lid = self._next_lid
        self._next_lid += 1
        port.sm_lid = SM_LID
        port.state = 4
        self.ports.append(port)
        self._program_pkeys(port)

    def _program_pkeys(self, port: Port) -> None:
        table = [0] * len(port.pkeys)
        i = 0
        for part in self.partitions:
            full = part.membership(port.guid)
            if full is None or i >= len(table):
                continue
            table[i] = part.pkey | (0x8000 if full else 0)
            i += 1
        port.pkeys[:] = table

    # ------------------------------------------------------------- multicast

    def _create_broadcast_groups(self) -> None:
        for part in self.partitions:
            if part.ipoib:
                mgid = wire.broadcast_mgid(part.pkey | 0x8000)
                mgid = mgid[:1] + bytes([0x10 | part.scope]) + mgid[2:]
                self._new_group(mgid, part.pkey | 0x8000, part.mtu, part.rate, part.sl)

    def _new_group(self, mgid: bytes, pkey: int, mtu: int, rate: int, sl: int) -> McGroup:
        group = McGroup(mgid, self._next_mlid, pkey, IPOIB_QKEY, mtu, rate, sl)
        self._next_mlid += 1
        self.groups[mgid] = group
        return group

    def join(
        self, port: Port, qpn: int, mgid: bytes, pkey: int, *, send_only: bool, create: bool
    ) -> McMember:
        """An MCMemberRecord SET. IPoIB never creates the broadcast group (create=False)."""
        if port.pkey_index(pkey) is None:
            raise KernelError(errno.EINVAL, "P_Key not in the port's table")
        group = self.groups.get(mgid)
        if group is None:
            if not create:
                raise KernelError(errno.ENOENT, "no such multicast group")
            template = self.groups.get(wire.broadcast_mgid(pkey))
            mtu, rate, sl = (template.mtu, template.rate, template.sl) if template else (4, 3, 0)
            group = self._new_group(mgid, pkey, mtu, rate, sl)
        if group.pkey & 0x7FFF != pkey & 0x7FFF:
            raise KernelError(errno.EINVAL, "P_Key does not match the group")
        group.members[(port.lid, qpn)] = "send_only" if send_only else "full"
        return McMember(
            mgid, group.mlid, group.qkey, MTU_BYTES[group.mtu], group.rate, group.sl, group.pkey
        )

    def leave(self, port: Port, qpn: int, mgid: bytes) -> None:
        """An MCMemberRecord DELETE; a non-broadcast group goes with its last member."""
        group = self.groups.get(mgid)
        if group is None:
            return
        group.members.pop((port.lid, qpn), None)
        if not group.members and not self._is_broadcast(group):
            del self.groups[mgid]

    def _is_broadcast(self, group: McGroup) -> bool:
        return group.mgid[2:4] == b"\x40\x1b" and group.mgid[12:] == b"\xff\xff\xff\xff"

    # ------------------------------------------------------------- paths

    def path(self, dgid: bytes) -> PathRecord:
        for port in self.ports:
            if port.gid == dgid:
                return PathRecord(dgid, port.lid, 0, port.speed_mbps, port.profile.max_mtu)
        raise KernelError(errno.EHOSTUNREACH, "no path to destination GID")
