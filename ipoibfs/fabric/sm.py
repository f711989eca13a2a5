"""The subnet manager: LIDs, P_Key tables, MCMemberRecord groups, path records, and the
forwarding tables it programs (LID -> data address, MGID -> member LIDs). Pure state."""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

from .. import wire
from ..errors import KernelError, UsageError
from ..wire.mad.sa import InformInfo
from .device import Port
from .partitions import Partition, default_partitions
from .topology import SM_LID, Topology, single

FIRST_MLID = 0xC000
#: The unicast LIDs the SM hands out to ports (it holds SM_LID itself).
MAX_UNICAST_LID = FIRST_MLID - 1


def parse_guid2lid(text: str, source: str = "guid2lid") -> dict[int, int]:
    """OpenSM's guid2lid file: `0x<port guid> 0x<min lid> 0x<max lid>` per line (LMC 0:
    min = max), `#` comments. UsageError naming the line for anything else, or a LID given
    to two GUIDs."""
    out: dict[int, int] = {}
    owner: dict[int, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        try:
            if len(words) != 3 or not all(w.lower().startswith("0x") for w in words):
                raise ValueError
            guid, lid, max_lid = (int(w, 16) for w in words)
        except ValueError:
            raise UsageError(f"{source} line {number}: expected '0x<guid> 0x<lid> 0x<lid>', "
                             f"got {line.strip()!r:.60}") from None  # fmt: skip
        if not 0 < lid <= max_lid <= MAX_UNICAST_LID or guid >> 64:
            raise UsageError(f"{source} line {number}: LID or GUID out of range")
        if owner.get(lid, guid) != guid:
            raise UsageError(f"{source} line {number}: LID 0x{lid:x} is given to two GUIDs")
        out[guid] = owner[lid] = lid
    return out


def format_guid2lid(lids: dict[int, int]) -> str:
    """The guid2lid file OpenSM writes (osm_db): one port per line, by LID."""
    return "".join(f"0x{guid:016x} 0x{lid:04x} 0x{lid:04x}\n"
                   for guid, lid in sorted(lids.items(), key=lambda item: item[1]))  # fmt: skip


@dataclass
class McGroup:
    mgid: bytes
    mlid: int
    pkey: int
    qkey: int
    mtu: int  # IB MTU enum
    rate: int
    sl: int
    members: dict[tuple[int, int], bool] = field(default_factory=dict)  # (lid, qpn) -> full

    def full_member_lids(self) -> set[int]:
        return {lid for (lid, _), full in self.members.items() if full}


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
class NodeData:
    """What the SM knows of a port's node: its SMA's NodeInfo and NodeDescription (OpenSM
    reads them in its sweep; here the host says them when it registers)."""

    node_info: bytes
    node_desc: bytes


@dataclass(frozen=True)
class Subscription:
    """A port's SubnAdmSet(InformInfo) subscription: Reports go to its LID's QP1."""

    lid: int
    gid: bytes
    info: InformInfo


@dataclass(frozen=True)
class Change:
    """An answer whose request changed the fabric, which the caller carries out on the
    hosts: the link of the host port with LID `lid` (a switch port's Set: ibportstate
    disable, enable, reset), `states` what it does in order (False down, True up); or the
    members of the group `mgid` (an SA join or leave: the hosts' forwarding entries)."""

    answer: bytes
    lid: int = 0
    states: tuple[bool, ...] = ()
    mgid: bytes | None = None


@dataclass(frozen=True)
class PathRecord:
    dgid: bytes
    dlid: int
    sl: int
    rate_mbps: int
    mtu: int


class SubnetManager:
    """Programs ports and keeps the multicast groups, as OpenSM does for one subnet."""

    def __init__(
        self,
        partitions: list[Partition] | None = None,
        guid2lid: dict[int, int] | None = None,
        topology: Topology | None = None,
    ) -> None:
        self.partitions = partitions if partitions is not None else default_partitions()
        #: The switches and cables (fabric/topology.py); their LIDs are never a port's.
        self.topology = topology if topology is not None else single()
        self.ports: dict[int, Port] = {}  # by LID
        self.routes: dict[int, str] = {}  # LID -> data-plane address of the port
        self.groups: dict[bytes, McGroup] = {}
        #: Every LID ever given, by port GUID (OpenSM's guid2lid): a returning port keeps its
        #: LID, and no LID is given to a second port. The caller may persist it. A saved LID
        #: that is a switch's, or the SM's for another port, is not kept.
        switch_lids = {sw.lid for sw in self.topology.switches}
        sm_port = self.topology.sm_port
        self.guid2lid: dict[int, int] = {
            guid: lid for guid, lid in (guid2lid or {}).items()
            if lid not in switch_lids and (lid != SM_LID or guid == sm_port)
        }  # fmt: skip
        if sm_port is not None:
            self.guid2lid[sm_port] = SM_LID  # the SM's own port (OpenSM's first LID)
        self._taken = set(self.guid2lid.values()) | switch_lids | {SM_LID}
        #: LID by port GID, for PathRecord queries in O(1) (a lab has hundreds of ports)
        self._by_gid: dict[bytes, int] = {}
        self._next_lid = SM_LID + 1
        self._next_mlid = FIRST_MLID
        #: Each attached port's node, by LID (the SA's NodeRecords: subnet_admin.py).
        self.nodes: dict[int, NodeData] = {}
        #: SMInfo's ActCount: it grows with every change the SM makes to the subnet.
        self.act_count = 0
        #: Switch ports (switch, port) a Set(PortInfo) disabled (`ibportstate disable`).
        self.disabled_ports: set[tuple[int, int]] = set()
        #: The trap subscriptions (SubnAdmSet(InformInfo)), in the order they came.
        self.subscriptions: list[Subscription] = []
        #: The TID of the next Report the SM sends.
        self.report_tid = 1
        self._create_broadcast_groups()

    # ------------------------------------------------------------- ports

    def assign_lid(self, guid: int, hint: int | None = None) -> int:
        """The port's LID: the one guid2lid gave it; else `hint` (the LID the port says it
        had, from an SM that lost its state) if no other port has it; else the lowest free.
        EBUSY if the port's LID is in use by an attached port (the GUID is on the fabric
        twice); ENOSPC when no unicast LID is left."""
        lid = self.guid2lid.get(guid)
        if lid is None:
            if hint is not None and SM_LID < hint <= MAX_UNICAST_LID and hint not in self._taken:
                lid = hint
            else:
                while self._next_lid in self._taken:
                    self._next_lid += 1
                if self._next_lid > MAX_UNICAST_LID:
                    raise KernelError(errno.ENOSPC, "no unicast LID left")
                lid = self._next_lid
            self.guid2lid[guid] = lid
            self._taken.add(lid)
        elif lid in self.ports:
            raise KernelError(errno.EBUSY, f"port GUID {guid:#018x} is already on the fabric")
        return lid

    def attach(self, port: Port, address: str = "", lid_hint: int | None = None,
               node: NodeData | None = None) -> None:  # fmt: skip
        """Bring a port into the subnet: a LID (assign_lid), the SM's LID, its P_Key table,
        ACTIVE."""
        lid = self.assign_lid(port.guid, lid_hint)
        port.lid = lid
        port.sm_lid = SM_LID
        port.state = 4
        self.ports[lid] = port
        self._by_gid[port.gid] = lid
        self.routes[lid] = address
        if node is not None:
            self.nodes[lid] = node
        self.act_count += 1
        self._program_pkeys(port)

    def attached(self, guid: int) -> Port | None:
        """The port with this GUID, if it is on the fabric (O(1): through guid2lid)."""
        port = self.ports.get(self.guid2lid.get(guid, 0))
        return port if port is not None and port.guid == guid else None

    def detach(self, lid: int) -> list[bytes]:
        """A port left (its host stopped or died): drop it and its memberships.

        Returns the MGIDs whose member list changed.
        """
        port = self.ports.pop(lid, None)
        self.subscriptions = [sub for sub in self.subscriptions if sub.lid != lid]
        if port is not None and self._by_gid.get(port.gid) == lid:
            del self._by_gid[port.gid]
        self.routes.pop(lid, None)
        self.nodes.pop(lid, None)
        self.act_count += 1
        changed = []
        for mgid, group in list(self.groups.items()):
            gone = [key for key in group.members if key[0] == lid]
            for key in gone:
                del group.members[key]
            if gone:
                changed.append(mgid)
                self._maybe_delete(group)
        return changed

    def _program_pkeys(self, port: Port) -> None:
        """OpenSM's P_Key table: Default at index 0, then the file's order; `both` takes two."""
        table: list[int] = []
        for part in self.partitions:
            full, limited = part.membership(port.guid)
            if full:
                table.append(part.pkey | wire.FULL_MEMBER)
            if limited:
                table.append(part.pkey)
        port.set_pkeys(table)

    def set_partitions(self, partitions: list[Partition]) -> tuple[list[Port], list[bytes]]:
        """A reload: new P_Key tables and broadcast groups.

        Returns the ports whose table changed and the MGIDs of groups created or removed.
        """
        self.partitions = partitions
        changed = []
        for port in self.ports.values():
            before = list(port.pkeys)
            self._program_pkeys(port)
            if port.pkeys != before:
                changed.append(port)
        wanted = self._broadcast_mgids()
        groups_changed = [m for m, g in self.groups.items() if self._is_broadcast(g)
                          and m not in wanted]  # fmt: skip
        for mgid in groups_changed:
            del self.groups[mgid]
        groups_changed += [m for m in wanted if m not in self.groups]
        self._create_broadcast_groups()
        return changed, groups_changed

    # ------------------------------------------------------------- multicast

    def _broadcast_mgids(self) -> dict[bytes, Partition]:
        out = {}
        for part in self.partitions:
            if part.ipoib:
                for scope in part.scopes:
                    mgid = wire.broadcast_mgid(part.pkey | wire.FULL_MEMBER)
                    out[mgid[:1] + bytes([0x10 | scope]) + mgid[2:]] = part
        return out

    def _create_broadcast_groups(self) -> None:
        """As OpenSM does at start and reload: IPoIB itself never creates these."""
        for mgid, part in self._broadcast_mgids().items():
            if mgid not in self.groups:
                self._new_group(mgid, part.pkey | wire.FULL_MEMBER, part.mtu, part.rate, part.sl)

    def _new_group(self, mgid: bytes, pkey: int, mtu: int, rate: int, sl: int,
                   qkey: int = wire.IPOIB_QKEY) -> McGroup:  # fmt: skip
        group = McGroup(mgid, self._next_mlid, pkey, qkey, mtu, rate, sl)
        self._next_mlid += 1
        self.groups[mgid] = group
        return group

    def join(
        self,
        lid: int,
        qpn: int,
        mgid: bytes,
        pkey: int,
        *,
        send_only: bool,
        create: bool,
        qkey: int = wire.IPOIB_QKEY,
        sl: int | None = None,
    ) -> McMember:
        """An MCMemberRecord SET. IPoIB never creates the broadcast group (create=False). A
        group it creates takes the partition's MTU and rate, and `qkey` and `sl` (default:
        the partition's)."""
        port = self.ports.get(lid)
        if port is None or port.pkey_index(pkey) is None:
            raise KernelError(errno.EINVAL, "P_Key not in the port's table")
        group = self.groups.get(mgid)
        if group is None:
            if not create:
                raise KernelError(errno.ENOENT, "no such multicast group")
            template = self.groups.get(wire.broadcast_mgid(pkey | wire.FULL_MEMBER))
            if template is None:
                raise KernelError(errno.EINVAL, "no IPoIB broadcast group for the partition")
            group = self._new_group(mgid, pkey | wire.FULL_MEMBER, template.mtu, template.rate,
                                    template.sl if sl is None else sl, qkey)  # fmt: skip
        if group.pkey & wire.PKEY_MASK != pkey & wire.PKEY_MASK:
            raise KernelError(errno.EINVAL, "P_Key does not match the group")
        group.members[(lid, qpn)] = group.members.get((lid, qpn), False) or not send_only
        return McMember(mgid, group.mlid, group.qkey, wire.IB_MTU_BYTES[group.mtu], group.rate,
                        group.sl, group.pkey)  # fmt: skip

    def leave(self, lid: int, qpn: int, mgid: bytes) -> bool:
        """An MCMemberRecord DELETE; a non-broadcast group goes with its last member.

        Returns whether the group's list of full-member ports changed.
        """
        group = self.groups.get(mgid)
        if group is None or (lid, qpn) not in group.members:
            return False
        before = group.full_member_lids()
        del group.members[(lid, qpn)]
        self._maybe_delete(group)
        return group.full_member_lids() != before

    def _maybe_delete(self, group: McGroup) -> None:
        if not group.members and not self._is_broadcast(group):
            del self.groups[group.mgid]

    def _is_broadcast(self, group: McGroup) -> bool:
        return group.mgid[2:4] == b"\x40\x1b" and group.mgid[12:] == b"\xff\xff\xff\xff"

    def mroute(self, mgid: bytes) -> list[int]:
        """The multicast forwarding entry: ports with a full member of the group."""
        group = self.groups.get(mgid)
        return sorted(group.full_member_lids()) if group else []

    # ------------------------------------------------------------- paths

    def path(self, dgid: bytes, pkey: int, slid: int | None = None) -> PathRecord:
        """A PathRecord query: only to a port that shares the partition, with the
        requesting port (`slid`, when the SA knows who asks)."""
        if slid is not None:
            source = self.ports.get(slid)
            if source is None or source.pkey_index(pkey) is None:
                raise KernelError(errno.EHOSTUNREACH, "no path: P_Key not in the requester's table")
        port = self.ports.get(self._by_gid.get(dgid, -1))
        if port is not None and port.pkey_index(pkey) is not None:
            return PathRecord(dgid, port.lid, 0, port.speed_mbps, port.profile.max_mtu)
        raise KernelError(errno.EHOSTUNREACH, "no path to destination GID")
