"""The subnet manager's SA (class 0x03: `saquery`, and what ib_sa asks), as OpenSM's
osm_sa_*_record.c answer: NodeRecords (hosts and switches), PathRecords, MCMemberRecords
(queries, and joins and leaves of the asker's own port), and the topology's records. Pure:
the SubnetManager's state in, the answer out.

Answers respect partitions (IBA 15.4.1): the asker sees the nodes and paths of the ports it
shares a partition with, and a GetTable answer is one whole RMPP message (`sa.sa_response`),
as the asker's MAD layer hands it on after reassembly.
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import KernelError
from ..wire.mad import common, rmpp, sa, smp
from . import switches
from .device import Port
from .sm import FIRST_MLID, Change, McGroup, NodeData, SubnetManager, Subscription
from .sma import RESP_TIME_VALUE, port_info
from .topology import SM_LID

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


def answer_sa(sm: SubnetManager, asker: int, mad: bytes) -> bytes | Change | None:
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
    if req.attr_id == sa.IB_SA_ATTR_INFORM_INFO and req.method == common.IB_MGMT_METHOD_SET:
        return _inform_info(sm, source, req)
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
    osm_sa_lft_record.c, osm_sa_mft_record.c and osm_sa_informinfo.c give them; an empty
    table for ServiceRecord (nothing is registered); None for an attribute the SA does not serve."""
    topo = sm.topology
    out: list[sa.Struct] = []
    if attr_id == sa.IB_SA_ATTR_PORT_INFO_REC:
        for p in visible:
            info = port_info(p, local_port_num=p.num, lid=p.lid, cap_mask=p.cap_mask)
            out.append(sa.PortInfoRecord(lid=p.lid, port_num=p.num,
                                         port_info=smp.PortInfo.unpack(info)))  # fmt: skip
        for sw, switch in enumerate(topo.switches):
            ports = switches.num_ports(sm, sw)
            for num in range(ports + 1):
                raw = switches.switch_port_info(sm, sw, num, 0, ports)
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
            at = switches.attachment(sm, p.lid)
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
        switch_info = switches.switch_info(sm)
        return sa.SwitchInfoRecord, [sa.SwitchInfoRecord(lid=s.lid, switch_info=switch_info)
                                     for s in topo.switches]  # fmt: skip
    if attr_id == sa.IB_SA_ATTR_LINEAR_FDB_REC:
        lft = switches.lft_block
        return sa.LFTRecord, [sa.LFTRecord(lid=s.lid, block_num=b, lft=lft(sm, sw, b))
                              for sw, s in enumerate(topo.switches)
                              for b in range(switches.top_lid(sm) // 64 + 1)]  # fmt: skip
    if attr_id == sa.IB_SA_ATTR_MCAST_FDB_REC:
        mft = switches.mft_block
        # the blocks up to the highest MLID in use (none when no group is)
        blocks = (switches.top_mlid(sm) - FIRST_MLID) // switches.MFT_MLIDS + 1
        return sa.MFTRecord, [
            sa.MFTRecord(lid=s.lid, position=pos, block_num=b, mft=mft(sm, sw, b, pos))
            for sw, s in enumerate(topo.switches)
            for b in range(blocks)
            for pos in range(switches.num_ports(sm, sw) // switches.MFT_PORTS + 1)
        ]
    if attr_id == sa.IB_SA_ATTR_SERVICE_REC:
        return sa.ServiceRecord, []
    if attr_id == sa.IB_SA_ATTR_INFORM_INFO_REC:
        gids = {p.gid for p in visible}
        return sa.InformInfoRecord, [
            sa.InformInfoRecord(subscriber_gid=sub.gid, inform_info=sub.info)
            for sub in sm.subscriptions
            if sub.gid in gids
        ]
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
        record = _member_record(group, source, key)
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
    record = _member_record(sm.groups[rec.mgid], source, key)
    sm.act_count += 1
    return Change(sa.sa_response(req, [record]).pack(), mgid=rec.mgid)


def _member_record(group: McGroup, source: Port, key: tuple[int, int]) -> sa.MCMemberRecord:
    """The group's record as its member `key` (the asker's port) sees it."""
    state = JOIN_FULL if group.members[key] else JOIN_SEND_ONLY
    return replace(_group_record(group), port_gid=source.gid, join_state=state)


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
    return sa.NodeRecord(lid=switch.lid, node_info=switches.switch_node_info(sm, sw, 0),
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


#: The security traps (bad M_Key to bad switch P_Key) only a trusted asker may subscribe to.
SECURITY_TRAPS = range(256, 260)
ANY_TRAP, ANY_TYPE, ANY_PRODUCER = 0xFFFF, 0xFFFF, 0xFFFFFF


def _inform_info(sm: SubnetManager, source: Port, req: sa.SaMad) -> bytes:
    """SubnAdmSet(InformInfo), as osm_sa_informinfo.c takes it: Subscribe 1 records the
    subscription for the asker's port (its Reports go to the asker's QP1), Subscribe 0
    removes the one that matches it (REQ_INVALID if none); a Subscribe above 1, or a
    security trap without the SA's key, is REQ_INVALID. The answer is the InformInfo."""
    info = sa.InformInfo.unpack(req.data)
    untrusted_security = (req.sm_key == 0 and info.is_generic
                          and info.trap_num_or_dev_id in SECURITY_TRAPS)  # fmt: skip
    if info.subscribe > 1 or untrusted_security:
        return sa.sa_response(req, status=sa.IB_SA_MAD_STATUS_REQ_INVALID).pack()
    kept = replace(info, qpn=1, subscribe=1, resp_time_value=0)
    same = [sub for sub in sm.subscriptions if sub.lid == source.lid and sub.info == kept]
    if info.subscribe:
        if not same:
            sm.subscriptions.append(Subscription(source.lid, source.gid, kept))
    elif same:
        sm.subscriptions.remove(same[0])
    else:
        return sa.sa_response(req, status=sa.IB_SA_MAD_STATUS_REQ_INVALID).pack()
    return sa.sa_response(req, [info]).pack()


def _wants(sub: Subscription, trap: int, lid: int, gid: bytes) -> bool:
    """Whether the subscription takes this generic trap (the SM's, type 4) about this port."""
    info = sub.info
    if not info.is_generic or info.trap_num_or_dev_id not in (trap, ANY_TRAP):
        return False
    if info.type not in (sa.NOTICE_TYPE_SUBN_MGMT, ANY_TYPE):
        return False
    if info.producer_or_vendor not in (sa.NOTICE_PRODUCER_CLASS_MANAGER, ANY_PRODUCER):
        return False
    if info.gid != bytes(16):
        return info.gid == gid
    return info.lid_range_begin == 0xFFFF or info.lid_range_begin <= lid <= info.lid_range_end


def reports(sm: SubnetManager, trap: int, lid: int, gid: bytes) -> list[tuple[int, bytes]]:
    """The SubnAdmReport(Notice) MADs for trap 64 or 65 (the port with this LID and GID in
    or out of service), one per subscription that takes it: (the subscriber's LID, the
    MAD), as osm_report_notice sends them from the SM's port."""
    notice = sa.Notice(type=sa.NOTICE_TYPE_SUBN_MGMT,
                       producer_or_vendor=sa.NOTICE_PRODUCER_CLASS_MANAGER,
                       trap_num_or_dev_id=trap, issuer_lid=SM_LID,
                       data_details=(bytes(6) + gid).ljust(54, b"\0"),
                       issuer_gid=bytes(16))  # fmt: skip
    out = []
    for sub in sm.subscriptions:
        if sub.lid == lid and trap == sa.TRAP_GID_OUT_OF_SERVICE:
            continue  # the port going away hears nothing more
        if not _wants(sub, trap, lid, gid):
            continue
        tid, sm.report_tid = sm.report_tid, sm.report_tid + 1
        mad = sa.SaMad(method=common.IB_MGMT_METHOD_REPORT, tid=tid, attr_id=sa.IB_SA_ATTR_NOTICE,
                       rmpp=rmpp.RmppHdr(version=rmpp.IB_MGMT_RMPP_VERSION),
                       data=notice.pack())  # fmt: skip
        out.append((sub.lid, mad.pack()))
    return out
