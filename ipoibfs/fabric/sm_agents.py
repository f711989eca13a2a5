"""The subnet manager's own agents and the fabric's switches, answering from the
SubnetManager's state. Pure: a MAD in, the answer out (None: dropped, as OpenSM drops what it
does not serve).

The switches and their cables are the SM's topology (fabric/topology.py): by default one
switch at the SM's LID with the host of LID L on port L - 1; or leaves and a spine; or what a
topology file says. Each switch's SMA answers NodeInfo, NodeDescription, PortInfo,
SwitchInfo, its Linear and its MulticastForwardingTable, LID-routed to its LID or at the end
of a directed route (`dr_walk`, which also finds the host a route ends at); the SM answers
SMInfo; its SA (class 0x03: `saquery`, and what ib_sa asks) NodeRecords (hosts and
switches), PathRecords and the topology's records as OpenSM's osm_sa_*_record.c do.

Answers respect partitions (IBA 15.4.1): the asker sees the nodes and paths of the ports it
shares a partition with, and a GetTable answer is one whole RMPP message (`sa.sa_response`),
as the asker's MAD layer hands it on after reassembly.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import KernelError
from ..wire.mad import common, rmpp, sa, smp
from .device import CAP_MASK, IB_PORT_SM, Port
from .sm import FIRST_MLID, McGroup, NodeData, SubnetManager
from .sma import RESP_TIME_VALUE, VENDOR_ID, port_info, sl_to_vl
from .topology import SM_LID

SWITCH_DEVICE_ID = 0xC738  # a SwitchX
PARTITION_CAP = 8  # a switch port's P_Key table entries (NodeInfo, SwitchInfo)
LFT_CAP = 0xC000
MFT_CAP = 0x200  # MulticastFDBCap: MLIDs 0xC000..0xC1FF
MFT_MLIDS = 32  # the MLIDs of an MFT block
MFT_PORTS = 16  # the ports of one position of an MFT block
#: Mellanox's vendor-specific MLNXExtendedPortInfo, which libibnetdisc asks a Mellanox
#: switch for each port (its FDR10 speeds): zeros, as a switch without FDR10 answers.
MLNX_EXT_PORT_INFO = 0xFF90
#: What a Set cannot change (IBA 14.2.5); a Set of the others is answered with the values
#: as they are, as this fabric's SM programs the switch itself.
READ_ONLY = (smp.IB_SMP_ATTR_NODE_INFO, smp.IB_SMP_ATTR_NODE_DESC, smp.IB_SMP_ATTR_SM_INFO)
SM_PRIORITY = 0
SM_STATE_MASTER = 3
#: OpenSM's default subnet timeout and packet life time (ib_path_rec's).
PACKET_LIFE_TIME = 18
#: IBA MTU codes and rate codes of a path (enum ib_mtu, ib_rate).
_MTU_CODES = {256: 1, 512: 2, 1024: 3, 2048: 4, 4096: 5}
_RATE_CODES = {2500: 2, 10000: 3, 30000: 4, 5000: 5, 20000: 6, 40000: 7, 60000: 8, 80000: 9,
               120000: 10, 14000: 11, 56000: 12, 112000: 13, 168000: 14, 25000: 15,
               100000: 16, 200000: 17, 300000: 18, 28000: 19, 50000: 20, 400000: 21,
               600000: 22}  # fmt: skip
SELECTOR_EXACTLY = 2
NUMB_PATH_COMP = 1 << 12  # PathRecord's NumbPath component-mask bit
MCR_PORT_GID = 1 << 1  # MCMemberRecord's PortGID component-mask bit
JOIN_FULL, JOIN_SEND_ONLY = 0x1, 0x4  # JoinState: FullMember, SendOnlyNonMember
#: The SA's key (OpenSM's default sa_key): a query with it is trusted, with 0 not.
SA_KEY = 1


def _shared_pkey(src: Port, dst: Port, key: int) -> int | None:
    """The P_Key of a path from src to dst for dst's table entry `key`: src's own entry
    (what it sends with), or None unless both tables hold it and one as a full member (two
    limited members cannot talk)."""
    index = src.pkey_index(key) if key & 0x7FFF else None
    if index is None:
        return None
    mine = src.pkeys[index]
    return mine if (key | mine) & 0x8000 else None


def _shares_partition(a: Port, b: Port) -> bool:
    return any(_shared_pkey(a, b, key) is not None for key in b.pkeys)


@dataclass(frozen=True)
class Forward:
    """A directed-route SMP whose path ends at a host's port: the asker sends it there."""

    lid: int


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


Answer = bytes | Forward | Change | None


def answer(sm: SubnetManager, asker: int, mad: bytes, dlid: int = SM_LID) -> Answer:
    """The fabric's answer to a MAD that LID `asker` sent: LID-routed to `dlid` (the SM's
    SMInfo and SA, or a switch's SMA), or a directed-route SMP, which its path takes to a
    switch (answered here) or a host (Forward). None: nothing answers. A Change is an
    answer whose request changed a host's link or a group's members."""
    if len(mad) < common.MAD_HEADER_SIZE:
        return None
    hdr = common.MadHdr.unpack(mad)
    if hdr.is_response:
        return None
    topo = sm.topology
    if hdr.mgmt_class == common.IB_MGMT_CLASS_SUBN_LID_ROUTED:
        if dlid == SM_LID and hdr.attr_id == smp.IB_SMP_ATTR_SM_INFO:
            return _sm_info_answer(sm, mad)
        sw = topo.switch_at(dlid)
        if sw is None:
            return None
        return _switch_sma(sm, sw, _entry(sm, asker, sw), mad)
    if hdr.mgmt_class == common.IB_MGMT_CLASS_SUBN_DIRECTED_ROUTE:
        dr = smp.Smp.unpack(mad)
        end = dr_walk(sm, asker, tuple(dr.initial_path), dr.hop_cnt)
        if end is None or isinstance(end, int):
            return None if end is None else Forward(end)
        return _switch_sma(sm, end[0], end[1], mad)
    if hdr.mgmt_class == common.IB_MGMT_CLASS_SUBN_ADM and dlid == SM_LID:
        return _sa(sm, asker, mad)
    return None


def _attachment(sm: SubnetManager, lid: int) -> tuple[int, int] | None:
    port = sm.ports.get(lid)
    return None if port is None else sm.topology.attachment(port.guid, lid)


def _entry(sm: SubnetManager, asker: int, sw: int) -> int:
    """The port a LID-routed SMP from `asker` enters switch sw through (LocalPortNum);
    0 when it cannot get there."""
    at = _attachment(sm, asker)
    if at is None:
        return 0
    return sm.topology.entry_port(at[0], sw, at[1]) or 0


def dr_walk(sm: SubnetManager, asker: int, path: tuple[int, ...],
            hop_cnt: int) -> tuple[int, int] | int | None:  # fmt: skip
    """Where a directed-route SMP from the host with LID `asker` ends, following its path
    (path[1] is the asker's own port, each next entry a switch's out port): (switch, the
    port it entered through), a host's LID, or None for a path that leaves the fabric
    (through a port with nothing cabled, or on beyond a CA)."""
    at = _attachment(sm, asker)
    if at is None or hop_cnt < 1 or len(path) <= hop_cnt:
        return None
    sw, entry = at
    for i in range(2, hop_cnt + 1):
        if not 0 < path[i] <= _num_ports(sm, sw):
            return None
        end = sm.topology.far_end(sw, path[i], sm.ports)
        if end is None:
            return None
        if end[0] == "switch":
            sw, entry = end[1], end[2]
            continue
        host = sm.attached(end[1])
        return host.lid if i == hop_cnt and host is not None else None
    return sw, entry


def _host_at(sm: SubnetManager, sw: int, num: int) -> Port | None:
    """The host port that is up and cabled to port `num` of switch sw."""
    end = sm.topology.far_end(sw, num, sm.ports) if num else None
    return sm.attached(end[1]) if end is not None and end[0] == "ca" else None


def _num_ports(sm: SubnetManager, sw: int) -> int:
    return sm.topology.num_ports(sw, sm.ports)


def _switch_sma(sm: SubnetManager, sw: int, entry: int, mad: bytes) -> bytes | Change:
    """Switch sw's SMA, for an SMP that came in on port `entry` (0: from the SM itself)."""
    req = smp.Smp.unpack(mad)
    unsupported = common.IB_MGMT_MAD_STATUS_UNSUPPORTED_METHOD_ATTRIB
    if req.method not in (common.IB_MGMT_METHOD_GET, common.IB_MGMT_METHOD_SET):
        return smp.smp_answer(req, status=common.IB_MGMT_MAD_STATUS_UNSUPPORTED_METHOD).pack()
    if req.method == common.IB_MGMT_METHOD_SET and req.attr_id in READ_ONLY:
        return smp.smp_answer(req, status=unsupported).pack()
    switch = sm.topology.switches[sw]
    ports = _num_ports(sm, sw)
    if req.method == common.IB_MGMT_METHOD_SET and req.attr_id == smp.IB_SMP_ATTR_PORT_INFO:
        return _set_switch_port(sm, sw, entry, req, ports)
    data: bytes | None
    if req.attr_id == smp.IB_SMP_ATTR_SM_INFO and sw == 0 and sm.topology.sm_port is None:
        return _sm_info_answer(sm, mad)
    if req.attr_id == smp.IB_SMP_ATTR_NODE_INFO:
        data = _switch_node_info(sm, sw, entry).pack()
    elif req.attr_id == smp.IB_SMP_ATTR_NODE_DESC:
        data = switch.desc.ljust(64, b"\0")
    elif req.attr_id == smp.IB_SMP_ATTR_PORT_INFO:
        data = _switch_port_info(sm, sw, req.attr_mod & 0xFF, entry, ports)
    elif req.attr_id == smp.IB_SMP_ATTR_SWITCH_INFO:
        data = _switch_info(sm).pack()
    elif req.attr_id == smp.IB_SMP_ATTR_PKEY_TABLE:
        data = _switch_pkeys(sm, sw, req.attr_mod >> 16, req.attr_mod & 0xFFFF, ports)
    elif req.attr_id == smp.IB_SMP_ATTR_SL_TO_VL_TABLE:
        in_port, out_port = req.attr_mod >> 8 & 0xFF, req.attr_mod & 0xFF
        data = sl_to_vl() if in_port <= ports and out_port <= ports else None
    elif req.attr_id == MLNX_EXT_PORT_INFO:
        data = bytes(64) if (req.attr_mod & 0xFF) <= ports else None  # no FDR10 links
    elif req.attr_id == smp.IB_SMP_ATTR_LINEAR_FORWARD_TABLE:
        block = req.attr_mod & 0xFFFF
        data = None if block * 64 >= LFT_CAP else _lft_block(sm, sw, block).pack()
    elif req.attr_id == smp.IB_SMP_ATTR_MCAST_FORWARD_TABLE:
        block, position = smp.mft_block_position(req.attr_mod)
        valid = block * MFT_MLIDS < MFT_CAP and position * MFT_PORTS <= ports
        data = _mft_block(sm, sw, block, position).pack() if valid else None
    else:
        return smp.smp_answer(req, status=unsupported).pack()
    if data is None:
        return smp.smp_answer(req, status=common.IB_MGMT_MAD_STATUS_INVALID_ATTRIB_VALUE).pack()
    return smp.smp_answer(req, data).pack()


def _sm_info_answer(sm: SubnetManager, mad: bytes) -> bytes:
    """The SM's SMInfo, wherever it runs (a switch's port 0 or a host's port)."""
    req = smp.Smp.unpack(mad)
    if req.method == common.IB_MGMT_METHOD_SET:
        return smp.smp_answer(
            req, status=common.IB_MGMT_MAD_STATUS_UNSUPPORTED_METHOD_ATTRIB
        ).pack()
    # its SM_Key too, as OpenSM answers a Get when no M_Key protects its port (another SM
    # with the same key then knows it for a master: a real OpenSM started on a host goes
    # STANDBY, one with another key ignores it)
    info = smp.SMInfo(guid=sm.topology.sm_guid, sm_key=SA_KEY, act_count=sm.act_count,
                      priority=SM_PRIORITY, state=SM_STATE_MASTER)  # fmt: skip
    return smp.smp_answer(req, info.pack()).pack()


def _switch_pkeys(sm: SubnetManager, sw: int, num: int, block: int,
                  ports: int) -> bytes | None:  # fmt: skip
    """P_KeyTable of switch port `num` (PartitionEnforcementCap 8: one block): port 0 and
    the links between switches hold the default full member; a port facing a host holds
    that host's table, as OpenSM programs a switch that enforces partitions."""
    if num > ports or block * 32 >= PARTITION_CAP:
        return None
    host = _host_at(sm, sw, num)
    keys = host.pkeys[:PARTITION_CAP] if host is not None else [0xFFFF]
    return smp.PKeyTable(tuple(keys)).pack()


def _switch_node_info(sm: SubnetManager, sw: int, entry: int) -> smp.NodeInfo:
    guid = sm.topology.switches[sw].guid
    return smp.NodeInfo(node_type=smp.IB_NODE_SWITCH, num_ports=_num_ports(sm, sw),
                        sys_guid=guid, node_guid=guid, port_guid=guid, partition_cap=PARTITION_CAP,
                        device_id=SWITCH_DEVICE_ID, local_port_num=entry,
                        vendor_id=VENDOR_ID)  # fmt: skip


def _top_lid(sm: SubnetManager) -> int:
    return max(max(sm.ports, default=SM_LID), *(s.lid for s in sm.topology.switches))


def _top_mlid(sm: SubnetManager) -> int:
    """MulticastFDBTop: the highest MLID in use (0xBFFF for none), as OpenSM sets it."""
    return max((g.mlid for g in sm.groups.values()), default=FIRST_MLID - 1)


def _switch_info(sm: SubnetManager) -> smp.SwitchInfo:
    return smp.SwitchInfo(linear_fdb_cap=LFT_CAP, mcast_fdb_cap=MFT_CAP,
                          linear_fdb_top=_top_lid(sm), life_time_value=18,
                          lids_per_port=0, partition_enforcement_cap=PARTITION_CAP,
                          mcast_fdb_top=_top_mlid(sm))  # fmt: skip


def _mft_block(sm: SubnetManager, sw: int, block: int,
               position: int) -> smp.MulticastForwardingTable:  # fmt: skip
    """MLIDs 0xC000 + 32·block to + 31 of switch sw, ports 16·position to + 15: each group's
    tree (Topology.multicast_ports) through the ports its members are cabled to."""
    by_mlid = {g.mlid: g for g in sm.groups.values()}
    first = FIRST_MLID + block * MFT_MLIDS
    low = position * MFT_PORTS
    masks = []
    for mlid in range(first, first + MFT_MLIDS):
        group = by_mlid.get(mlid)
        ports: set[int] = set()
        if group is not None:
            found = (_attachment(sm, lid) for lid in {lid for lid, _ in group.members})
            ports = sm.topology.multicast_ports(sw, [at for at in found if at is not None])
        masks.append(sum(1 << (p - low) for p in ports if low <= p < low + MFT_PORTS))
    return smp.MulticastForwardingTable(tuple(masks))


def _lft_block(sm: SubnetManager, sw: int, block: int) -> smp.LinearForwardingTable:
    """LIDs 64·block to 64·block + 63 of switch sw: its own to port 0, the others on the
    way the topology routes them."""
    topo = sm.topology
    return smp.LinearForwardingTable(tuple(
        topo.out_port(sw, lid, _attachment(sm, lid))
        for lid in range(block * 64, block * 64 + 64)))  # fmt: skip


def _set_switch_port(sm: SubnetManager, sw: int, entry: int, req: smp.Smp,
                     ports: int) -> bytes | Change:  # fmt: skip
    """Set(PortInfo) of switch port `num`, as ibportstate sends it: PortPhysicalState
    Disabled takes the link down and keeps it so, Polling enables a disabled port (the link
    trains and comes up) or resets an enabled one (down, then up again), PortState Down
    resets it too; the other fields are the SM's to program and keep their values. The
    answer is the PortInfo after the Set."""
    num = req.attr_mod & 0xFF
    if num > ports:
        return smp.smp_answer(req, status=common.IB_MGMT_MAD_STATUS_INVALID_ATTRIB_VALUE).pack()
    want = smp.PortInfo.unpack(req.data)
    where = (sw, num)
    states: tuple[bool, ...] = ()
    if num and want.phys_state == smp.PhysState.DISABLED:
        if where not in sm.disabled_ports:
            sm.disabled_ports.add(where)
            states = (False,)
    elif num and want.phys_state == smp.PhysState.POLLING:
        states = (True,) if where in sm.disabled_ports else (False, True)
        sm.disabled_ports.discard(where)
    elif num and want.port_state == smp.PortState.DOWN and where not in sm.disabled_ports:
        states = (False, True)
    answer = smp.smp_answer(req, _switch_port_info(sm, sw, num, entry, ports)).pack()
    host = _host_at(sm, sw, num)
    if not states or host is None:
        return answer
    sm.act_count += 1
    return Change(answer, lid=host.lid, states=states)


def _switch_port_info(sm: SubnetManager, sw: int, num: int, entry: int,
                      ports: int) -> bytes | None:  # fmt: skip
    """PortInfo of port `num` of switch sw, asked through port `entry` (LocalPortNum): port
    0 holds the switch's LID (and on switch 0 the SM) and the capability mask of them all
    (extended speeds: libibnetdisc reads port 0's); an external port is the link to the
    host cabled there (its width and speeds, its state), to another switch, or down."""
    if num > ports:
        return None
    topo = sm.topology
    model = next(iter(sm.ports.values()), None)
    if model is None:
        return None
    lid = topo.switches[sw].lid
    sm_here = num == 0 and sw == 0 and topo.sm_port is None
    cap = CAP_MASK | IB_PORT_SM if sm_here else CAP_MASK
    end = None if num == 0 else topo.far_end(sw, num, sm.ports)
    host = _host_at(sm, sw, num)
    if end is not None and end[0] == "ca" and host is None:
        end = None  # cabled, but that host is not up
    if (sw, num) in sm.disabled_ports:
        return port_info(host or model, local_port_num=entry, lid=lid, cap_mask=cap,
                         state=smp.PortState.DOWN, phys_state=smp.PhysState.DISABLED)  # fmt: skip
    if num == 0 or end is not None:
        state = host.state if host is not None else smp.PortState.ACTIVE
        phys = host.phys_state if host is not None else smp.PhysState.LINK_UP
        return port_info(host or model, local_port_num=entry, lid=lid, cap_mask=cap,
                         state=state, phys_state=phys)  # fmt: skip
    return port_info(model, local_port_num=entry, lid=lid, cap_mask=cap,
                     state=smp.PortState.DOWN, phys_state=smp.PhysState.POLLING)  # fmt: skip


def _sa(sm: SubnetManager, asker: int, mad: bytes) -> bytes | Change | None:
    try:
        req = sa.SaMad.unpack(mad)
    except ValueError:
        return None
    if req.class_version != common.IB_SA_CLASS_VERSION:
        return sa.sa_response(req, status=common.IB_MGMT_MAD_STATUS_BAD_VERSION).pack()
    source = sm.ports.get(asker)
    if source is None:
        return None
    joins = (common.IB_MGMT_METHOD_SET, common.IB_MGMT_METHOD_DELETE)
    if req.attr_id == sa.IB_SA_ATTR_MC_MEMBER_REC and req.method in joins:
        return _mcmember_join(sm, source, req)
    if req.method not in (common.IB_MGMT_METHOD_GET, common.IB_MGMT_METHOD_GET_TABLE):
        return sa.sa_response(req, status=common.IB_MGMT_MAD_STATUS_UNSUPPORTED_METHOD).pack()
    visible = [p for lid, p in sorted(sm.ports.items())
               if lid == asker or _shares_partition(source, p)]  # fmt: skip
    if req.attr_id == sa.IB_SA_ATTR_NODE_REC:
        nodes = sm.nodes
        candidates = [_node_record(p, nodes[p.lid]) for p in visible if p.lid in nodes]
        candidates += [_switch_node_record(sm, sw) for sw in range(len(sm.topology.switches))]
        candidates.sort(key=lambda r: r.lid)
        found = sa.matching(sa.NodeRecord.unpack(req.data), candidates, req.comp_mask)
        return _message(sa.sa_response(req, found, record_size=sa.NodeRecord.SIZE))
    if req.attr_id == sa.IB_SA_ATTR_PATH_REC:
        paths = [path for s in visible for d in visible for path in _paths(s, d)]
        # NumbPath is a limit, not a value to match (osm_pr_rcv_get_path_parms)
        mask = req.comp_mask & ~NUMB_PATH_COMP
        found = sa.matching(sa.PathRecord.unpack(req.data), paths, mask)
        if req.method == common.IB_MGMT_METHOD_GET:
            found = found[:1]  # osm_pr_rcv: a Get is answered with the first path
        return _message(sa.sa_response(req, found, record_size=sa.PathRecord.SIZE))
    if req.attr_id == sa.IB_SA_ATTR_CLASS_PORTINFO and req.method == common.IB_MGMT_METHOD_GET:
        cpi = common.ClassPortInfo(class_version=common.IB_SA_CLASS_VERSION,
                                   resp_time_value=RESP_TIME_VALUE)  # fmt: skip
        return sa.sa_response(req, [cpi.pack()]).pack()
    records = _topology_records(sm, visible, req.attr_id)
    if records is not None:
        found = sa.matching(records[0].unpack(req.data), records[1], req.comp_mask)
        return _message(sa.sa_response(req, found, record_size=records[0].SIZE))
    if req.attr_id == sa.IB_SA_ATTR_MC_MEMBER_REC:
        if req.sm_key not in (0, SA_KEY):
            return None  # a wrong key is dropped unanswered (osm_sa_mad_ctrl)
        groups = _mcmember_records(sm, source, req)
        return _message(sa.sa_response(req, groups, record_size=sa.MCMemberRecord.SIZE))
    status = common.IB_MGMT_MAD_STATUS_UNSUPPORTED_METHOD_ATTRIB
    return sa.sa_response(req, status=status).pack()


def _topology_records(sm: SubnetManager, visible: list[Port],
                      attr_id: int) -> tuple[type[sa.Struct], list[sa.Struct]] | None:  # fmt: skip
    """The records of the fabric's ports, links and switch (the asker's visible hosts and
    the switches, which are in every partition), as osm_sa_portinfo_record.c,
    osm_sa_pkey_record.c, osm_sa_link_record.c, osm_sa_sw_info_record.c,
    osm_sa_lft_record.c and osm_sa_mft_record.c give them; an empty table for ServiceRecord
    and InformInfoRecord (nothing is registered); None for an attribute the SA does not serve."""
    topo = sm.topology
    out: list[sa.Struct] = []
    if attr_id == sa.IB_SA_ATTR_PORT_INFO_REC:
        for p in visible:
            info = port_info(p, local_port_num=p.num, lid=p.lid, cap_mask=p.cap_mask)
            out.append(sa.PortInfoRecord(lid=p.lid, port_num=p.num,
                                         port_info=smp.PortInfo.unpack(info)))  # fmt: skip
        for sw, switch in enumerate(topo.switches):
            ports = _num_ports(sm, sw)
            for num in range(ports + 1):
                raw = _switch_port_info(sm, sw, num, 0, ports)
                if raw is not None:
                    out.append(sa.PortInfoRecord(lid=switch.lid, port_num=num,
                                                 port_info=smp.PortInfo.unpack(raw)))  # fmt: skip
        return sa.PortInfoRecord, out
    if attr_id == sa.IB_SA_ATTR_PARTITION_REC:
        for p in visible:
            for block in range(len(p.pkeys) // 32):
                table = tuple(p.pkeys[block * 32 : block * 32 + 32])
                if any(table):
                    out.append(sa.PKeyTableRecord(lid=p.lid, block_num=block, port_num=p.num,
                                                  pkey_table=smp.PKeyTable(table)))  # fmt: skip
        return sa.PKeyTableRecord, out
    if attr_id == sa.IB_SA_ATTR_LINK_REC:
        for p in visible:
            at = _attachment(sm, p.lid)
            if at is None:
                continue
            lid = topo.switches[at[0]].lid
            out.append(sa.LinkRecord(from_lid=p.lid, from_port_num=p.num,
                                     to_port_num=at[1], to_lid=lid))  # fmt: skip
            out.append(sa.LinkRecord(from_lid=lid, from_port_num=at[1],
                                     to_port_num=p.num, to_lid=p.lid))  # fmt: skip
        for (sw, port), (peer, peer_port) in sorted(topo.links.items()):
            out.append(sa.LinkRecord(from_lid=topo.switches[sw].lid, from_port_num=port,
                                     to_port_num=peer_port,
                                     to_lid=topo.switches[peer].lid))  # fmt: skip
        return sa.LinkRecord, out
    if attr_id == sa.IB_SA_ATTR_SWITCH_REC:
        switch_info = _switch_info(sm)
        return sa.SwitchInfoRecord, [sa.SwitchInfoRecord(lid=s.lid, switch_info=switch_info)
                                     for s in topo.switches]  # fmt: skip
    if attr_id == sa.IB_SA_ATTR_LINEAR_FDB_REC:
        blocks = _top_lid(sm) // 64 + 1
        return sa.LFTRecord, [sa.LFTRecord(lid=s.lid, block_num=b, lft=_lft_block(sm, sw, b))
                              for sw, s in enumerate(topo.switches)
                              for b in range(blocks)]  # fmt: skip
    if attr_id == sa.IB_SA_ATTR_MCAST_FDB_REC:
        blocks = (_top_mlid(sm) - FIRST_MLID) // MFT_MLIDS + 1  # 0 when no MLID is in use
        return sa.MFTRecord, [
            sa.MFTRecord(lid=s.lid, position=pos, block_num=b, mft=_mft_block(sm, sw, b, pos))
            for sw, s in enumerate(topo.switches)
            for b in range(blocks)
            for pos in range(_num_ports(sm, sw) // MFT_PORTS + 1)
        ]
    if attr_id == sa.IB_SA_ATTR_SERVICE_REC:
        return sa.ServiceRecord, []
    if attr_id == sa.IB_SA_ATTR_INFORM_INFO_REC:
        return sa.InformInfo, []  # (its record: no subscriptions to show)
    return None


#: A port's own membership, joined or left through the SA (not an interface's QP): the
#: SM keeps members by (LID, QPN), and the GSI's QP1 is no IPoIB interface's.
SA_MEMBER_QPN = 1
#: The components a join must give (JOIN_MC_COMP_MASK), and those that creating a group
#: needs besides (REQUIRED_MC_CREATE_COMP_MASK: Q_Key, TClass, P_Key, SL, FlowLabel).
JOIN_COMPS = 1 << 0 | MCR_PORT_GID | 1 << 16
CREATE_COMPS = JOIN_COMPS | 1 << 2 | 1 << 6 | 1 << 7 | 1 << 12 | 1 << 13


def _mcmember_join(sm: SubnetManager, source: Port, req: sa.SaMad) -> bytes | Change:
    """An MCMemberRecord Set (join) or Delete (leave) of the asker's own port, as
    osm_sa_mcmember_record.c takes them: the answer is the group's record with the port's
    GID and join state. REQ_INVALID for another port's GID (no proxy joins), a group the
    port cannot be in, or a leave of a group it is not in; INSUF_COMPS for a join that
    names too little, or would create a group without all it needs."""
    rec = sa.MCMemberRecord.unpack(req.data)
    mask = req.comp_mask

    def refuse(status: int) -> bytes:
        return sa.sa_response(req, status=status).pack()

    if mask & JOIN_COMPS != JOIN_COMPS or not rec.join_state & 0x7:
        return refuse(sa.IB_SA_MAD_STATUS_INSUF_COMPS)
    if rec.port_gid != source.gid or rec.mgid == bytes(16):
        return refuse(sa.IB_SA_MAD_STATUS_REQ_INVALID)
    group = sm.groups.get(rec.mgid)
    key = (source.lid, SA_MEMBER_QPN)
    if req.method == common.IB_MGMT_METHOD_DELETE:
        if group is None or key not in group.members:
            return refuse(sa.IB_SA_MAD_STATUS_REQ_INVALID)
        state = JOIN_FULL if group.members[key] else JOIN_SEND_ONLY
        record = replace(_group_record(group), port_gid=source.gid, join_state=state)
        sm.leave(source.lid, SA_MEMBER_QPN, rec.mgid)
        sm.act_count += 1
        return Change(sa.sa_response(req, [record]).pack(), mgid=rec.mgid)
    if group is None and (mask & CREATE_COMPS != CREATE_COMPS or not rec.join_state & JOIN_FULL):
        return refuse(sa.IB_SA_MAD_STATUS_INSUF_COMPS)
    pkey = rec.pkey if group is None or mask & 1 << 7 else group.pkey
    try:
        sm.join(source.lid, SA_MEMBER_QPN, rec.mgid, pkey, send_only=not rec.join_state & 1,
                create=True, qkey=rec.qkey, sl=rec.sl)  # fmt: skip
    except KernelError:
        return refuse(sa.IB_SA_MAD_STATUS_REQ_INVALID)
    joined = sm.groups[rec.mgid]
    state = JOIN_FULL if joined.members[key] else JOIN_SEND_ONLY
    record = replace(_group_record(joined), port_gid=source.gid, join_state=state)
    sm.act_count += 1
    return Change(sa.sa_response(req, [record]).pack(), mgid=rec.mgid)


def _mcmember_records(sm: SubnetManager, source: Port, req: sa.SaMad) -> list[sa.MCMemberRecord]:
    """mcmr_query_mgrp: the groups whose P_Key the asker holds, in MGID order, that match
    the query; one record each, or one per member for a trusted asker (SM_Key) that names
    no PortGID. An untrusted asker sees no PortGID, JoinState or ProxyJoin."""
    template = sa.MCMemberRecord.unpack(req.data)
    mask = req.comp_mask
    trusted = req.sm_key != 0
    out: list[sa.MCMemberRecord] = []
    for mgid in sorted(sm.groups):
        group = sm.groups[mgid]
        if source.pkey_index(group.pkey) is None:
            continue
        record = _group_record(group)
        members: dict[bytes, int] = {}
        for (lid, _qpn), full in group.members.items():
            port = sm.ports.get(lid)
            if port is not None:
                members[port.gid] = members.get(port.gid, 0) | (
                    JOIN_FULL if full else JOIN_SEND_ONLY
                )
        if mask & MCR_PORT_GID:
            if template.port_gid not in members:
                continue
            candidates = [replace(record, port_gid=template.port_gid,
                                  join_state=members[template.port_gid])]  # fmt: skip
        elif trusted:
            candidates = [replace(record, port_gid=gid, join_state=state)
                          for gid, state in members.items()]  # fmt: skip
        else:
            candidates = [record]
        out += [r for r in sa.matching(template, candidates, mask)
                if isinstance(r, sa.MCMemberRecord)]  # fmt: skip
    if not trusted:
        out = [replace(r, port_gid=bytes(16), join_state=0, proxy_join=0) for r in out]
    return out


def _group_record(group: McGroup) -> sa.MCMemberRecord:
    """A group's record as OpenSM keeps it: MTU, rate and packet life time "exactly"."""
    return sa.MCMemberRecord(
        mgid=group.mgid, qkey=group.qkey, mlid=group.mlid, mtu_selector=SELECTOR_EXACTLY,
        mtu=group.mtu, pkey=group.pkey, rate_selector=SELECTOR_EXACTLY, rate=group.rate,
        packet_life_time_selector=SELECTOR_EXACTLY, packet_life_time=PACKET_LIFE_TIME,
        sl=group.sl, scope=group.mgid[1] & 0x0F, join_state=JOIN_FULL,
    )  # fmt: skip


def _message(answer: sa.SaMad) -> bytes:
    """The answer as the asker's MAD layer hands it on: a Get's one MAD; a GetTable's RMPP
    message cut into segments and put back together (its length the headers and the
    records, get_mad_len's, not a whole number of MADs)."""
    if not answer.rmpp.active:
        return answer.pack()
    whole = answer.pack()[: sa.SaMad.HDR_SIZE + len(answer.data)]
    return rmpp.reassemble(rmpp.segments(whole))


def _node_record(port: Port, node: NodeData) -> sa.NodeRecord:
    return sa.NodeRecord(lid=port.lid, node_info=smp.NodeInfo.unpack(node.node_info),
                         node_desc=smp.NodeDescription(node.node_desc))  # fmt: skip


def _switch_node_record(sm: SubnetManager, sw: int) -> sa.NodeRecord:
    """A switch's one NodeRecord, its port 0's (osm_sa_node_record.c), which every asker
    sees (port 0 is in every partition)."""
    switch = sm.topology.switches[sw]
    return sa.NodeRecord(lid=switch.lid, node_info=_switch_node_info(sm, sw, 0),
                         node_desc=smp.NodeDescription(switch.desc))  # fmt: skip


def _paths(src: Port, dst: Port) -> list[sa.PathRecord]:
    """The paths from src to dst, one per P_Key they share; the P_Key is the one src
    sends with (its own table's entry)."""
    out = []
    mtu = min(src.profile.max_mtu, dst.profile.max_mtu)
    rate = min(src.speed_mbps, dst.speed_mbps)
    for key in dst.pkeys:
        pkey = _shared_pkey(src, dst, key)
        if pkey is None:
            continue
        out.append(sa.PathRecord(
            dgid=dst.gid, sgid=src.gid, dlid=dst.lid, slid=src.lid, reversible=1, pkey=pkey,
            sl=0, mtu_selector=SELECTOR_EXACTLY, mtu=_MTU_CODES.get(mtu, 4),
            rate_selector=SELECTOR_EXACTLY, rate=_RATE_CODES.get(rate, 3),
            packet_life_time_selector=SELECTOR_EXACTLY, packet_life_time=PACKET_LIFE_TIME,
        ))  # fmt: skip
    return out
