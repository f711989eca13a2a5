"""The subnet manager's own agents (fabric/sm_agents.py): SMInfo, and SA NodeRecords and
PathRecords that follow the partitions."""

from __future__ import annotations

from ipoibfs.fabric import sm_agents
from ipoibfs.fabric.device import HcaDevice, hca_profile
from ipoibfs.fabric.partitions import parse_partitions
from ipoibfs.fabric.sm import NodeData, SubnetManager
from ipoibfs.fabric.sma import node_description, node_info
from ipoibfs.wire.mad import common, sa, smp

#: h1 and h2 share blue; h3 is in neither's partition but the default one, as a limited member
PARTITIONS = """
Default=0x7fff : ALL=limited ;
blue=0x0002 : {h1}=full, {h2}=full ;
"""


def lab() -> tuple[SubnetManager, list[HcaDevice]]:
    devices = [HcaDevice(f"h{i}", hca_profile("ipoibfs"), 0x0002C90300000000 | i << 8)
               for i in (1, 2, 3)]  # fmt: skip
    conf = PARTITIONS.format(h1=f"0x{devices[0].ports[0].guid:016x}",
                             h2=f"0x{devices[1].ports[0].guid:016x}")  # fmt: skip
    sm = SubnetManager(parse_partitions(conf))
    for dev in devices:
        port = dev.ports[0]
        sm.attach(port, node=NodeData(node_info(dev, port), node_description(dev)))
    return sm, devices


def ask(sm: SubnetManager, asker: int, method: int, attr_id: int,
        record: bytes = b"", comp_mask: int = 0) -> sa.SaMad:  # fmt: skip
    req = sa.sa_request(method, attr_id, record, comp_mask=comp_mask, tid=7)
    out = sm_agents.answer(sm, asker, req.pack())
    assert out is not None
    return sa.SaMad.unpack(out)


def test_sminfo_names_the_master():
    sm, _ = lab()
    req = smp.Smp(mgmt_class=common.IB_MGMT_CLASS_SUBN_LID_ROUTED, tid=3,
                  attr_id=smp.IB_SMP_ATTR_SM_INFO)  # fmt: skip
    out = sm_agents.answer(sm, 2, req.pack())
    assert out is not None
    info = smp.SMInfo.unpack(smp.Smp.unpack(out).data)
    assert (info.guid, info.state, info.act_count) == (sm_agents.SM_GUID, 3, 3)


def test_node_records_follow_the_partitions():
    sm, devices = lab()
    lids = [d.ports[0].lid for d in devices]
    table = ask(sm, lids[0], common.IB_MGMT_METHOD_GET_TABLE, sa.IB_SA_ATTR_NODE_REC)
    shown = [sa.NodeRecord.unpack(r) for r in table.records()]
    assert [r.lid for r in shown] == lids[:2]  # h3 shares only the default partition, limited
    assert shown[1].node_desc.text == "h2 ipoibfs0"
    assert len(table.pack()) > common.MAD_SIZE  # a table of two is an RMPP message
    # h3 sees only itself: a limited member sees no other limited member
    alone = ask(sm, lids[2], common.IB_MGMT_METHOD_GET_TABLE, sa.IB_SA_ATTR_NODE_REC)
    assert [sa.NodeRecord.unpack(r).lid for r in alone.records()] == [lids[2]]
    one = ask(sm, lids[0], common.IB_MGMT_METHOD_GET, sa.IB_SA_ATTR_NODE_REC,
              sa.NodeRecord(lid=lids[1]).pack(), comp_mask=1)  # fmt: skip
    assert one.status == 0 and sa.NodeRecord.unpack(one.data).lid == lids[1]
    none = ask(sm, lids[0], common.IB_MGMT_METHOD_GET, sa.IB_SA_ATTR_NODE_REC,
               sa.NodeRecord(lid=lids[2]).pack(), comp_mask=1)  # fmt: skip
    assert none.status == sa.IB_SA_MAD_STATUS_NO_RECORDS


def test_path_records_only_within_a_shared_partition():
    sm, devices = lab()
    p1, p2, p3 = (d.ports[0] for d in devices)
    found = ask(
        sm,
        p1.lid,
        common.IB_MGMT_METHOD_GET_TABLE,
        sa.IB_SA_ATTR_PATH_REC,
        sa.PathRecord(slid=p1.lid, dlid=p2.lid).pack(),
        comp_mask=1 << 4 | 1 << 5,
    )
    paths = [sa.PathRecord.unpack(r) for r in found.records()]
    assert [(p.slid, p.dlid, p.pkey) for p in paths] == [(p1.lid, p2.lid, 0x8002)]
    assert paths[0].dgid == p2.gid and paths[0].mtu == 5 and paths[0].mtu_selector == 2
    to_h3 = ask(
        sm,
        p1.lid,
        common.IB_MGMT_METHOD_GET_TABLE,
        sa.IB_SA_ATTR_PATH_REC,
        sa.PathRecord(slid=p1.lid, dlid=p3.lid).pack(),
        comp_mask=1 << 4 | 1 << 5,
    )
    assert to_h3.records() == []
    unknown = ask(sm, p1.lid, common.IB_MGMT_METHOD_GET, sa.IB_SA_ATTR_SL2VL_REC)
    assert unknown.status == common.IB_MGMT_MAD_STATUS_UNSUPPORTED_METHOD_ATTRIB
