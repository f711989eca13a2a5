"""The subnet manager's own agents, as OpenSM runs them on its port: the SMA's SMInfo (what
`sminfo` asks the SM's LID) and the SA (class 0x03: `saquery`, and what ib_sa asks), answering
from the SubnetManager's state as osm_sa_node_record.c and osm_sa_path_record.c do. Pure: a MAD
in, the answer out (None: dropped, as OpenSM drops what it does not serve).

Answers respect partitions (IBA 15.4.1): the asker sees the nodes and paths of the ports it
shares a partition with, and a GetTable answer is one whole RMPP message (`sa.sa_response`),
as the asker's MAD layer hands it on after reassembly.
"""

from __future__ import annotations

from ..wire.mad import common, rmpp, sa, smp
from .device import GUID_BASE, Port
from .sm import NodeData, SubnetManager

#: The SM's port GUID (SMInfo.GUID): no host's, which are GUID_BASE plus a host number << 8.
SM_GUID = GUID_BASE | 0x01
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


def answer(sm: SubnetManager, asker: int, mad: bytes) -> bytes | None:
    """The SM's answer to a MAD that LID `asker` sent to the SM's LID."""
    if len(mad) < common.MAD_HEADER_SIZE:
        return None
    hdr = common.MadHdr.unpack(mad)
    if hdr.is_response:
        return None
    if hdr.mgmt_class == common.IB_MGMT_CLASS_SUBN_LID_ROUTED:
        return _sma(sm, mad)
    if hdr.mgmt_class == common.IB_MGMT_CLASS_SUBN_ADM:
        return _sa(sm, asker, mad)
    return None


def _sma(sm: SubnetManager, mad: bytes) -> bytes:
    req = smp.Smp.unpack(mad)
    if req.method != common.IB_MGMT_METHOD_GET or req.attr_id != smp.IB_SMP_ATTR_SM_INFO:
        status = common.IB_MGMT_MAD_STATUS_UNSUPPORTED_METHOD_ATTRIB
        return smp.smp_answer(req, status=status).pack()
    info = smp.SMInfo(guid=SM_GUID, act_count=sm.act_count, priority=SM_PRIORITY,
                      state=SM_STATE_MASTER)  # fmt: skip
    return smp.smp_answer(req, data=info.pack()).pack()


def _sa(sm: SubnetManager, asker: int, mad: bytes) -> bytes | None:
    try:
        req = sa.SaMad.unpack(mad)
    except ValueError:
        return None
    if req.class_version != common.IB_SA_CLASS_VERSION:
        return sa.sa_response(req, status=common.IB_MGMT_MAD_STATUS_BAD_VERSION).pack()
    if req.method not in (common.IB_MGMT_METHOD_GET, common.IB_MGMT_METHOD_GET_TABLE):
        return sa.sa_response(req, status=common.IB_MGMT_MAD_STATUS_UNSUPPORTED_METHOD).pack()
    source = sm.ports.get(asker)
    if source is None:
        return None
    visible = [p for lid, p in sorted(sm.ports.items())
               if lid == asker or _shares_partition(source, p)]  # fmt: skip
    if req.attr_id == sa.IB_SA_ATTR_NODE_REC:
        nodes = sm.nodes
        candidates = [_node_record(p, nodes[p.lid]) for p in visible if p.lid in nodes]
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
    status = common.IB_MGMT_MAD_STATUS_UNSUPPORTED_METHOD_ATTRIB
    return sa.sa_response(req, status=status).pack()


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
