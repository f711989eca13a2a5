"""The fabric's switches and cables: which switch port each host port is cabled to, the
links between switches, and the routes (the LinearForwardingTables) they make. Pure.

Three shapes:
- the default, one switch at the SM's LID with the host of LID L on port L - 1 (a host that
  joins later is cabled as it comes);
- `tree`: leaf switches with the hosts, each with an uplink to one spine (where the SM runs);
- what an ibnetdiscover topology file says (`parse_ibnetdiscover`), which `format_ibnetdiscover`
  writes back the way the tool prints it.

A switch is known by its index in `Topology.switches`. The SM is at SM_LID: on switch 0's
port 0, or on a host's port when a topology file gives that LID to a CA (OpenSM gives its
own port the first LID); switch 0, the lowest LID, is the root of the multicast trees.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..errors import UsageError
from .device import GUID_BASE, Port

SM_LID = 1  # the subnet manager's LID, on switch 0's port 0
SM_GUID = GUID_BASE | 0x01  # switch 0's node and port 0 GUID (no host's: theirs end in 00)
#: Ports of a switch: 36 (a common edge switch), more when more hosts are cabled.
SWITCH_PORTS = 36
MAX_PORTS = 254  # NumPorts is 8 bits, and port 255 is not one
SINGLE_DESC = b"ipoibfs switch"
NO_PORT = 0xFF  # an LFT entry for a LID the switch has no route to

#: A switch port's far end: ("switch", index, port) or ("ca", port GUID, port number).
End = tuple[str, int, int]


@dataclass(frozen=True)
class Switch:
    guid: int
    lid: int
    ports: int
    desc: bytes


@dataclass(frozen=True)
class CaNode:
    """A host of a topology file: what its HCA must be for the fabric to be the same."""

    guid: int
    ports: int
    desc: bytes
    lids: tuple[int, ...]  # port 1's, port 2's, ...


@dataclass
class Topology:
    switches: list[Switch]
    #: (switch, port) -> (switch, port) for every inter-switch link, both ways round.
    links: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)
    #: Host port GUID -> (switch, port) it is cabled to.
    cables: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: The hosts a topology file names (empty for the default and `tree`).
    cas: list[CaNode] = field(default_factory=list)
    #: The default one switch: a host port not in `cables` is on port LID - SM_LID.
    dynamic: bool = False
    #: The host port GUID the SM runs on (a file's CA with SM_LID); None: switch 0's port 0.
    sm_port: int | None = None

    def __post_init__(self) -> None:
        self._by_lid = {s.lid: i for i, s in enumerate(self.switches)}
        self._cabled = {(sw, port): guid for guid, (sw, port) in self.cables.items()}
        self._next = self._next_hops()
        self._up, self._order = self._spanning_tree()

    # ------------------------------------------------------------- what is where

    @property
    def sm_guid(self) -> int:
        """The port GUID of the SM (SMInfo's GUID)."""
        return self.switches[0].guid if self.sm_port is None else self.sm_port

    def switch_at(self, lid: int) -> int | None:
        """The switch whose LID this is."""
        return self._by_lid.get(lid)

    def num_ports(self, sw: int, host_lids: Iterable[int] = ()) -> int:
        """Switch sw's NumPorts: the dynamic switch grows to the highest host port cabled."""
        if self.dynamic and sw == 0:
            top = max((lid - SM_LID for lid in host_lids), default=0)
            return min(MAX_PORTS, max(self.switches[0].ports, top))
        return self.switches[sw].ports

    def attachment(self, guid: int, lid: int) -> tuple[int, int] | None:
        """The switch port a host port (its GUID and LID) is cabled to; None: not cabled."""
        where = self.cables.get(guid)
        if where is not None:
            return where
        if self.dynamic and 0 < lid - SM_LID <= MAX_PORTS:
            return 0, lid - SM_LID
        return None

    def cabled_at(self, sw: int, port: int) -> int | None:
        """The GUID of the host port a topology cables to switch port (sw, port)."""
        return self._cabled.get((sw, port))

    def far_end(self, sw: int, port: int, hosts: Mapping[int, Port]) -> End | None:
        """What switch port `port` of sw is cabled to; `hosts` are the attached host ports
        by LID (the SM's ports), which the dynamic switch cables by their LIDs."""
        peer = self.links.get((sw, port))
        if peer is not None:
            return "switch", peer[0], peer[1]
        guid = self._cabled.get((sw, port))
        if guid is None and self.dynamic and sw == 0:
            host = hosts.get(port + SM_LID)
            guid = None if host is None else host.guid
        return None if guid is None else ("ca", guid, 0)

    # ------------------------------------------------------------- routes

    def _next_hops(self) -> list[dict[int, int]]:
        """For each switch, the port toward every other switch: breadth first over the
        links, the lowest port first, as a min-hop routing engine chooses."""
        n = len(self.switches)
        adjacent: list[list[tuple[int, int]]] = [[] for _ in range(n)]
        for (sw, port), (peer, _) in sorted(self.links.items()):
            adjacent[sw].append((port, peer))
        table: list[dict[int, int]] = []
        for start in range(n):
            first: dict[int, int] = {}
            queue = deque([(start, 0)])
            seen = {start}
            while queue:
                here, out = queue.popleft()
                for port, peer in adjacent[here]:
                    if peer not in seen:
                        seen.add(peer)
                        hop = port if here == start else out
                        first[peer] = hop
                        queue.append((peer, hop))
            table.append(first)
        return table

    def _spanning_tree(self) -> tuple[dict[int, tuple[int, int, int]], list[int]]:
        """The multicast trees' frame: each switch's link up to switch 0 (its port, the
        parent, the parent's port), breadth first from switch 0, lowest port first; and the
        switches in that order."""
        up: dict[int, tuple[int, int, int]] = {}
        order = [0]
        for here in order:
            for port in range(1, MAX_PORTS + 1):
                peer = self.links.get((here, port))
                if peer is not None and peer[0] not in up and peer[0] != 0:
                    up[peer[0]] = (peer[1], here, port)
                    order.append(peer[0])
        return up, order

    def multicast_ports(self, sw: int, members: Iterable[tuple[int, int]]) -> set[int]:
        """Switch sw's MFT ports for a group whose member ports are cabled at `members`
        (switch, port): its members' own ports, and each tree link with members on both
        sides (the spanning tree cut down to the group, as OpenSM's mcast manager builds)."""
        at = list(members)
        below = [0] * len(self.switches)  # member ports in each switch's subtree
        for s, _ in at:
            below[s] += 1
        for s in reversed(self._order):
            if s in self._up:
                below[self._up[s][1]] += below[s]
        ports = {port for s, port in at if s == sw}
        for child, (port, parent, parent_port) in self._up.items():
            if 0 < below[child] < len(at):
                if child == sw:
                    ports.add(port)
                elif parent == sw:
                    ports.add(parent_port)
        return ports

    def out_port(self, sw: int, dlid: int, host_at: tuple[int, int] | None) -> int:
        """Switch sw's LFT entry for dlid (host_at: where the host with dlid is cabled, if
        dlid is a host's): 0 for its own LID, the port on the way, NO_PORT for none."""
        target = self._by_lid.get(dlid)
        if target == sw:
            return 0
        if target is None:
            if host_at is None:
                return NO_PORT
            target, port = host_at
            if target == sw:
                return port
        return self._next[sw].get(target, NO_PORT)

    def entry_port(self, src: int, dst: int, first: int) -> int | None:
        """The port a LID-routed packet enters switch dst through, when it comes from
        switch src (having entered it through `first`); None if dst cannot be reached."""
        if src == dst:
            return first
        here = src
        for _ in range(len(self.switches)):
            out = self._next[here].get(dst)
            if out is None:
                return None
            here, entry = self.links[(here, out)]
            if here == dst:
                return entry
        return None


# ----------------------------------------------------------------- the shapes


def single() -> Topology:
    return Topology([Switch(SM_GUID, SM_LID, SWITCH_PORTS, SINGLE_DESC)], dynamic=True)


def tree(leaves: int, hosts: list[list[int]]) -> Topology:
    """`leaves` leaf switches and one spine (switch 0, LIDs 1, 2..leaves+1). The hosts (each
    the GUIDs of its ports) are shared out in order, as even blocks, one leaf port per host
    port from port 1 up; each leaf's last port goes to the spine's port of its number."""
    if not 1 <= leaves <= MAX_PORTS:
        raise UsageError(f"--switches must be between 1 and {MAX_PORTS}")
    per_leaf = -(-len(hosts) // leaves)
    ports_used = max((sum(len(h) for h in hosts[i : i + per_leaf])
                      for i in range(0, len(hosts), per_leaf)), default=0)  # fmt: skip
    leaf_ports = max(SWITCH_PORTS, ports_used + 1)
    if leaf_ports > MAX_PORTS:
        raise UsageError(f"{ports_used} host ports on one leaf switch: use more --switches")
    switches = [Switch(SM_GUID, SM_LID, max(SWITCH_PORTS, leaves), b"ipoibfs spine")]
    links: dict[tuple[int, int], tuple[int, int]] = {}
    for k in range(1, leaves + 1):
        switches.append(Switch(SM_GUID + k, SM_LID + k, leaf_ports, f"ipoibfs leaf {k}".encode()))
        links[(k, leaf_ports)] = (0, k)
        links[(0, k)] = (k, leaf_ports)
    cables: dict[int, tuple[int, int]] = {}
    used = [0] * (leaves + 1)  # host ports cabled to each leaf so far
    for i, guids in enumerate(hosts):
        leaf = 1 + i // per_leaf
        for guid in guids:
            used[leaf] += 1
            cables[guid] = (leaf, used[leaf])
    return Topology(switches, links, cables)


# ----------------------------------------------------------------- ibnetdiscover files

_NODE = re.compile(r'(Switch|Ca|Rt)\s+(\d+)\s+"([SHR])-([0-9a-fA-F]{1,16})"\s*(?:#\s*"(.*)"(.*))?$')
_PORT = re.compile(r'\[(\d+)\](?:\(([0-9a-fA-F]{1,16})\))?\s+"([SHR])-([0-9a-fA-F]{1,16})"'
                   r"\[(\d+)\](?:\(([0-9a-fA-F]{1,16})\))?\s*(?:#(.*))?$")  # fmt: skip
_LID = re.compile(r"\blid (\d+)\b")


def parse_ibnetdiscover(text: str, source: str = "topology") -> Topology:
    """An ibnetdiscover topology file: its switches (GUID, ports, description, LID), their
    links, and the CAs cabled to them. The node with LID 1 (a switch or a CA's port) runs
    the SM. UsageError naming the line for what this fabric cannot be."""
    nodes: dict[int, tuple[str, int, bytes, int]] = {}  # guid -> (kind, ports, desc, lid)
    wires: dict[tuple[int, int], tuple[int, int]] = {}  # (guid, port) -> (guid, port)
    ca_lids: dict[tuple[int, int], int] = {}
    current: tuple[str, int] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        where = f"{source} line {number}"
        if not line or line.startswith("#") or re.match(r"\w+=", line):
            continue
        node = _NODE.match(line)
        if node:
            kind, ports, _, guid_hex, desc, tail = node.groups()
            if kind == "Rt":
                raise UsageError(f"{where}: routers are not emulated")
            guid, lid = int(guid_hex, 16), 0
            if kind == "Switch":
                found = _LID.search(tail or "")
                if found is None:
                    raise UsageError(f"{where}: a switch without 'lid N' in its comment")
                lid = int(found[1])
            if guid in nodes:
                raise UsageError(f"{where}: node {guid:#x} is listed twice")
            nodes[guid] = (kind, int(ports), (desc or "").encode()[:64], lid)
            current = (kind, guid)
            continue
        port = _PORT.match(line)
        if port is None or current is None:
            raise UsageError(f"{where}: not a node or port line: {line!r:.60}")
        num, _, _, peer_hex, peer_port, _, comment = port.groups()
        here = (current[1], int(num))
        there = (int(peer_hex, 16), int(peer_port))
        if wires.get(here, there) != there or wires.get(there, here) != here:
            raise UsageError(f"{where}: port {num} is cabled twice")
        wires[here], wires[there] = there, here
        if current[0] == "Ca":
            found = _LID.search(comment or "")
            if found is None:
                raise UsageError(f"{where}: a CA port without 'lid N' in its comment")
            ca_lids[here] = int(found[1])
    return _build(nodes, wires, ca_lids, source)


def _build(nodes: dict[int, tuple[str, int, bytes, int]],
           wires: dict[tuple[int, int], tuple[int, int]], ca_lids: dict[tuple[int, int], int],
           source: str) -> Topology:  # fmt: skip
    switch_guids = sorted((g for g, n in nodes.items() if n[0] == "Switch"),
                          key=lambda g: nodes[g][3])  # fmt: skip
    if not switch_guids:
        raise UsageError(f"{source}: no switch")
    index = {g: i for i, g in enumerate(switch_guids)}
    lids: dict[int, int] = {}
    switches = []
    for g in switch_guids:
        _, ports, desc, lid = nodes[g]
        if not 0 < ports <= MAX_PORTS or lid in lids:
            raise UsageError(f"{source}: switch {g:#x} has {ports} ports or a LID given twice")
        lids[lid] = g
        switches.append(Switch(g, lid, ports, desc))
    links: dict[tuple[int, int], tuple[int, int]] = {}
    cables: dict[int, tuple[int, int]] = {}
    cas = []
    sm_port = None
    for (g, port), (peer, peer_port) in wires.items():
        if peer not in nodes:
            raise UsageError(f"{source}: node {g:#x} port {port} goes to {peer:#x}, not listed")
        if g in index and peer in index:
            links[(index[g], port)] = (index[peer], peer_port)
        elif g in index:
            if nodes[peer][0] != "Ca":
                raise UsageError(f"{source}: node {peer:#x} is cabled to a switch but is no CA")
            cables[peer + peer_port] = (index[g], port)
    for g, (kind, ports, desc, _) in nodes.items():
        if kind != "Ca":
            continue
        ca = tuple(ca_lids.get((g, p), 0) for p in range(1, ports + 1))
        if 0 in ca:
            raise UsageError(f"{source}: CA {g:#x} has a port that is not cabled to a switch")
        for p, lid in enumerate(ca, 1):
            if lid in lids or lid <= 0:
                raise UsageError(f"{source}: LID {lid} of CA {g:#x} is given twice")
            lids[lid] = g
            if lid == SM_LID:
                sm_port = g + p
        cas.append(CaNode(g, ports, desc, ca))
    cas.sort(key=lambda c: c.lids[0])
    if SM_LID not in lids:
        raise UsageError(f"{source}: no node has LID {SM_LID}, where the SM runs")
    return Topology(switches, links, cables, cas, sm_port=sm_port)


#: The width and speed in each link's comment (the default HCA's; parsing skips comments).
LINK = "4xEDR"


def format_ibnetdiscover(topo: Topology, cas: Iterable[CaNode]) -> str:
    """The topology file ibnetdiscover prints for this fabric (its node sections, without
    the header, whose date and initiator change each time)."""
    by_guid = {c.guid + p: (c, p) for c in cas for p in range(1, c.ports + 1)}
    out = []
    for i, s in enumerate(topo.switches):
        out.append(f'vendid=0x2c9\ndevid=0xc738\nsysimgguid={s.guid:#x}\n'
                   f'switchguid={s.guid:#x}({s.guid:x})\n'
                   f'Switch\t{s.ports} "S-{s.guid:016x}"\t\t# "{s.desc.decode()}" base port 0 '
                   f"lid {s.lid} lmc 0\n")  # fmt: skip
        for port in range(1, s.ports + 1):
            peer = topo.links.get((i, port))
            if peer is not None:
                o = topo.switches[peer[0]]
                out.append(f'[{port}]\t"S-{o.guid:016x}"[{peer[1]}]\t\t# "{o.desc.decode()}" '
                           f"lid {o.lid} {LINK}\n")  # fmt: skip
                continue
            guid = topo.cabled_at(i, port)
            if guid is not None and guid in by_guid:
                ca, p = by_guid[guid]
                out.append(
                    f'[{port}]\t"H-{ca.guid:016x}"[{p}]({guid:x}) \t\t# '
                    f'"{ca.desc.decode()}" lid {ca.lids[p - 1]} {LINK}\n'
                )
        out.append("\n")
    for ca in cas:
        out.append(
            f"vendid=0x2c9\ndevid=0x0\nsysimgguid={ca.guid:#x}\ncaguid={ca.guid:#x}\n"
            f'Ca\t{ca.ports} "H-{ca.guid:016x}"\t\t# "{ca.desc.decode()}"\n'
        )
        for p in range(1, ca.ports + 1):
            sw, port = topo.cables[ca.guid + p]
            s = topo.switches[sw]
            out.append(
                f'[{p}]({ca.guid + p:x}) \t"S-{s.guid:016x}"[{port}]\t\t# lid '
                f'{ca.lids[p - 1]} lmc 0 "{s.desc.decode()}" lid {s.lid} {LINK}\n'
            )
        out.append("\n")
    return "".join(out)
