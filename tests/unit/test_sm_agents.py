"""The subnet manager's own agents (fabric/sm_agents.py): SMInfo, SA NodeRecords and
PathRecords that follow the partitions, and the switches' forwarding tables."""

from __future__ import annotations

from dataclasses import replace

from ipoibfs.fabric import sm_agents, subnet_admin, switches
from ipoibfs.fabric.device import HcaDevice, hca_profile
from ipoibfs.fabric.partitions import parse_partitions
from ipoibfs.fabric.sm import Change, NodeData, SubnetManager
from ipoibfs.fabric.sma import node_description, node_info
from ipoibfs.fabric.topology import SM_GUID
from ipoibfs.wire.mad import common, pma, sa, smp

#: h1 and h2 share blue; h3 is in neither's partition but the default one, as a limited member
PARTITIONS = """
Default=0x7fff : ALL=limited ;
blue=0x0002, ipoib : {h1}=full, {h2}=full ;
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
    assert (info.guid, info.state, info.act_count, info.sm_key) == (SM_GUID, 3, 3, 1)


def test_node_records_follow_the_partitions():
    sm, devices = lab()
    lids = [d.ports[0].lid for d in devices]
    table = ask(sm, lids[0], common.IB_MGMT_METHOD_GET_TABLE, sa.IB_SA_ATTR_NODE_REC)
    shown = [sa.NodeRecord.unpack(r) for r in table.records()]
    # the switch (its port 0, in every partition), h1, h2; h3 shares only the default
    # partition, as a limited member
    assert [r.lid for r in shown] == [1, *lids[:2]]
    assert (shown[0].node_info.node_type, shown[0].node_info.local_port_num) == (2, 0)
    assert shown[0].node_desc.text == "ipoibfs switch" and shown[2].node_desc.text == "h2 ipoibfs0"
    assert len(table.pack()) > common.MAD_SIZE  # a table of three is an RMPP message
    # h3 sees only itself and the switch: a limited member sees no other limited member
    alone = ask(sm, lids[2], common.IB_MGMT_METHOD_GET_TABLE, sa.IB_SA_ATTR_NODE_REC)
    assert [sa.NodeRecord.unpack(r).lid for r in alone.records()] == [1, lids[2]]
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


def dr(path: list[int], attr_id: int, attr_mod: int = 0) -> bytes:
    return smp.dr_smp(path, attr_id=attr_id, attr_mod=attr_mod, tid=9).pack()


def test_the_switch_answers_one_hop_away_and_dr_paths_lead_to_hosts():
    sm, devices = lab()
    p1, p2, _ = (d.ports[0] for d in devices)
    out = sm_agents.answer(sm, p1.lid, dr([1], smp.IB_SMP_ATTR_NODE_INFO))
    assert out is not None
    node = smp.NodeInfo.unpack(smp.Smp.unpack(out).data)
    assert (node.node_type, node.num_ports, node.node_guid) == (smp.IB_NODE_SWITCH, 36,
                                                                SM_GUID)  # fmt: skip
    assert node.local_port_num == p1.lid - 1  # where h1's SMP came in
    info = sm_agents.answer(sm, p1.lid, dr([1], smp.IB_SMP_ATTR_PORT_INFO,
                                           p2.lid - 1))  # fmt: skip
    assert info is not None
    port = smp.PortInfo.unpack(smp.Smp.unpack(info).data)
    assert (port.port_state, port.lid, port.local_port_num) == (4, 1, p1.lid - 1)
    empty = sm_agents.answer(sm, p1.lid, dr([1], smp.IB_SMP_ATTR_PORT_INFO, 20))
    assert empty is not None and smp.PortInfo.unpack(smp.Smp.unpack(empty).data).port_state == 1
    lft = sm_agents.answer(sm, p1.lid, dr([1], smp.IB_SMP_ATTR_LINEAR_FORWARD_TABLE))
    assert lft is not None
    ports = smp.LinearForwardingTable.unpack(smp.Smp.unpack(lft).data).ports
    assert ports[1] == 0 and ports[p2.lid] == p2.lid - 1 and ports[9] == 0xFF
    path = tuple([0, 1, p2.lid - 1] + [0] * 61)
    assert sm_agents.dr_walk(sm, p1.lid, path, 2) == p2.lid
    assert sm_agents.dr_walk(sm, p1.lid, path, 1) == (0, p1.lid - 1)  # the switch, entered
    assert sm_agents.dr_walk(sm, p1.lid, path, 3) is None  # on beyond a CA
    forward = sm_agents.answer(sm, p1.lid, smp.dr_smp(list(path[1:3]), attr_id=0x11).pack())
    assert forward == sm_agents.Forward(p2.lid)


def test_mcmember_records_by_partition_and_trust():
    sm, devices = lab()
    p1, p2, p3 = (d.ports[0] for d in devices)
    blue = next(m for m, g in sm.groups.items() if g.pkey & 0x7FFF == 2)
    sm.join(p1.lid, 0x48, blue, 0x8002, send_only=False, create=False)
    sm.join(p2.lid, 0x49, blue, 0x8002, send_only=False, create=False)
    untrusted = ask(sm, p1.lid, common.IB_MGMT_METHOD_GET_TABLE, sa.IB_SA_ATTR_MC_MEMBER_REC)
    records = [sa.MCMemberRecord.unpack(r) for r in untrusted.records()]
    assert blue in [r.mgid for r in records]
    assert {r.port_gid for r in records} == {bytes(16)} and {r.join_state for r in records} == {0}
    req = sa.sa_request(
        common.IB_MGMT_METHOD_GET_TABLE,
        sa.IB_SA_ATTR_MC_MEMBER_REC,
        sa.MCMemberRecord(mgid=blue).pack(),
        comp_mask=1,
        tid=3,
        sm_key=1,
    )
    out = sm_agents.answer(sm, p1.lid, req.pack())
    assert out is not None
    trusted = [sa.MCMemberRecord.unpack(r) for r in sa.SaMad.unpack(out).records()]
    assert sorted(r.port_gid for r in trusted) == sorted([p1.gid, p2.gid])
    assert {r.join_state for r in trusted} == {1}
    wrong_key = sa.sa_request(common.IB_MGMT_METHOD_GET_TABLE, sa.IB_SA_ATTR_MC_MEMBER_REC,
                              sm_key=5, tid=4)  # fmt: skip
    assert sm_agents.answer(sm, p1.lid, wrong_key.pack()) is None  # dropped, as OpenSM does
    h3 = ask(sm, p3.lid, common.IB_MGMT_METHOD_GET_TABLE, sa.IB_SA_ATTR_MC_MEMBER_REC)
    assert blue not in [sa.MCMemberRecord.unpack(r).mgid for r in h3.records()]


def test_the_mft_sends_a_group_to_its_members_ports_only():
    sm, devices = lab()
    p1, p2, p3 = (d.ports[0] for d in devices)
    blue = sm.groups[next(m for m, g in sm.groups.items() if g.pkey & 0x7FFF == 2)]
    sm.join(p1.lid, 0x48, blue.mgid, 0x8002, send_only=False, create=False)
    sm.join(p2.lid, 0x49, blue.mgid, 0x8002, send_only=True, create=False)
    block, row = divmod(blue.mlid - 0xC000, 32)
    out = sm_agents.answer(sm, p3.lid, dr([1], smp.IB_SMP_ATTR_MCAST_FORWARD_TABLE,
                                          smp.mft_attr_mod(block, 0)))  # fmt: skip
    assert out is not None
    masks = smp.MulticastForwardingTable.unpack(smp.Smp.unpack(out).data).masks
    assert masks[row] == 1 << (p1.lid - 1) | 1 << (p2.lid - 1)  # a send-only member too
    info = sm_agents.answer(sm, p3.lid, dr([1], smp.IB_SMP_ATTR_SWITCH_INFO))
    assert info is not None
    switch = smp.SwitchInfo.unpack(smp.Smp.unpack(info).data)
    assert switch.mcast_fdb_cap == 0x200 and switch.mcast_fdb_top == max(
        g.mlid for g in sm.groups.values()
    )
    beyond = sm_agents.answer(sm, p3.lid, dr([1], smp.IB_SMP_ATTR_MCAST_FORWARD_TABLE,
                                             smp.mft_attr_mod(16, 0)))  # fmt: skip
    assert beyond is not None and smp.Smp.unpack(beyond).status == (
        common.IB_MGMT_MAD_STATUS_INVALID_ATTRIB_VALUE
    )
    records = ask(sm, p1.lid, common.IB_MGMT_METHOD_GET_TABLE, sa.IB_SA_ATTR_MCAST_FDB_REC,
                  sa.MFTRecord(block_num=block).pack(), comp_mask=1 << 3)  # fmt: skip
    found = [sa.MFTRecord.unpack(r) for r in records.records()]
    assert [(r.lid, r.position, r.block_num) for r in found] == [(1, 0, block), (1, 1, block),
                                                                 (1, 2, block)]  # fmt: skip
    assert found[0].mft.masks[row] == masks[row]


def test_a_set_of_a_switch_ports_state_changes_the_hosts_link():
    sm, devices = lab()
    p1, p2, _ = (d.ports[0] for d in devices)

    def set_port(num: int, phys: int = 0, state: int = 0) -> sm_agents.Answer:
        info = smp.PortInfo(phys_state=phys, port_state=state).pack()
        req = smp.Smp(mgmt_class=common.IB_MGMT_CLASS_SUBN_LID_ROUTED, tid=4, attr_id=0x15,
                      attr_mod=num, method=common.IB_MGMT_METHOD_SET, data=info)  # fmt: skip
        return sm_agents.answer(sm, p1.lid, req.pack())

    port = p2.lid - 1
    disabled = set_port(port, phys=smp.PhysState.DISABLED)
    assert isinstance(disabled, Change)
    assert (disabled.lid, disabled.states) == (p2.lid, (False,))
    shown = smp.PortInfo.unpack(smp.Smp.unpack(disabled.answer).data)
    assert (shown.port_state, shown.phys_state) == (1, 3)  # Down/Disabled, as set
    assert isinstance(set_port(port, phys=smp.PhysState.DISABLED), bytes)  # already so
    enabled = set_port(port, phys=smp.PhysState.POLLING)
    assert isinstance(enabled, Change) and enabled.states == (True,)
    reset = set_port(port, phys=smp.PhysState.POLLING)  # an enabled port: down, then up
    assert isinstance(reset, Change) and reset.states == (False, True)
    down = set_port(port, state=smp.PortState.DOWN)
    assert isinstance(down, Change) and down.states == (False, True)
    assert isinstance(set_port(20, phys=smp.PhysState.DISABLED), bytes)  # no host there
    beyond = set_port(37, phys=smp.PhysState.DISABLED)
    assert isinstance(beyond, bytes) and smp.Smp.unpack(beyond).status == (
        common.IB_MGMT_MAD_STATUS_INVALID_ATTRIB_VALUE
    )


def test_sa_joins_and_leaves_of_the_askers_own_port():
    sm, devices = lab()
    p1, p2, p3 = (d.ports[0] for d in devices)
    mgid = bytes.fromhex("ff12601b800200000000000000000123")  # in blue, not a group yet
    create = 1 << 0 | 1 << 1 | 1 << 2 | 1 << 6 | 1 << 7 | 1 << 12 | 1 << 13 | 1 << 16

    def join(port, method=common.IB_MGMT_METHOD_SET, mask=create,
             join_state=1) -> sm_agents.Answer:  # fmt: skip
        rec = sa.MCMemberRecord(mgid=mgid, port_gid=port.gid, qkey=0x1234, pkey=0x8002,
                                join_state=join_state)  # fmt: skip
        req = sa.sa_request(method, sa.IB_SA_ATTR_MC_MEMBER_REC, rec, comp_mask=mask, tid=8)
        return sm_agents.answer(sm, port.lid, req.pack())

    made = join(p1)
    assert isinstance(made, Change) and made.mgid == mgid
    answer = sa.SaMad.unpack(made.answer)
    record = sa.MCMemberRecord.unpack(answer.data)
    assert (answer.status, answer.method) == (0, common.IB_MGMT_METHOD_GET_RESP)
    assert (record.port_gid, record.join_state, record.qkey) == (p1.gid, 1, 0x1234)
    assert sm.mroute(mgid) == [p1.lid] and record.mlid == sm.groups[mgid].mlid

    def status(out: sm_agents.Answer) -> int:
        raw = out.answer if isinstance(out, Change) else out
        assert isinstance(raw, bytes)
        return sa.SaMad.unpack(raw).status

    # the group exists: joining needs only MGID, PortGID and JoinState; send-only here
    assert status(join(p2, mask=1 << 0 | 1 << 1 | 1 << 16, join_state=4)) == 0
    assert sm.mroute(mgid) == [p1.lid]  # a send-only member gets no forwarding entry
    # refused: too few components, another port's GID, a port outside the partition
    assert status(join(p3, mask=1 << 0 | 1 << 1)) == sa.IB_SA_MAD_STATUS_INSUF_COMPS
    proxy = sa.MCMemberRecord(mgid=mgid, port_gid=p1.gid, join_state=1)
    req = sa.sa_request(common.IB_MGMT_METHOD_SET, sa.IB_SA_ATTR_MC_MEMBER_REC, proxy,
                        comp_mask=1 << 0 | 1 << 1 | 1 << 16)  # fmt: skip
    assert status(sm_agents.answer(sm, p2.lid, req.pack())) == sa.IB_SA_MAD_STATUS_REQ_INVALID
    assert status(join(p3)) == sa.IB_SA_MAD_STATUS_REQ_INVALID  # h3 is not in blue
    # leaving: Delete, answered with DeleteResp; the group goes with its last member
    left = join(p1, method=common.IB_MGMT_METHOD_DELETE)
    assert isinstance(left, Change) and sm.mroute(mgid) == []
    assert sa.SaMad.unpack(left.answer).method == common.IB_MGMT_METHOD_DELETE_RESP
    again = join(p1, method=common.IB_MGMT_METHOD_DELETE)
    assert status(again) == sa.IB_SA_MAD_STATUS_REQ_INVALID  # not a member now
    assert mgid in sm.groups  # h2 is still in it
    join(p2, method=common.IB_MGMT_METHOD_DELETE, join_state=4)
    assert mgid not in sm.groups


def test_a_switch_ports_counters_are_read_from_its_host_and_turned_round():
    sm, devices = lab()
    p2 = devices[1].ports[0]

    def pma_get(attr_id: int, port_select: int) -> bytes:
        head = common.MadHdr(mgmt_class=common.IB_MGMT_CLASS_PERF_MGMT, method=1, tid=6,
                             attr_id=attr_id).pack()  # fmt: skip
        return (head + bytes(40) + bytes([0, port_select])).ljust(256, b"\0")

    peer = sm_agents.answer(sm, p2.lid, pma_get(pma.IB_PMA_PORT_COUNTERS, p2.lid - 1))
    assert peer == switches.PeerCounters(p2.lid, 1, 1, p2.lid - 1)
    empty = sm_agents.answer(sm, p2.lid, pma_get(pma.IB_PMA_PORT_COUNTERS_EXT, 20))
    assert isinstance(empty, bytes)
    assert pma.PortCountersExtended.unpack(empty[64:]) == pma.PortCountersExtended(port_select=20)
    beyond = sm_agents.answer(sm, p2.lid, pma_get(pma.IB_PMA_PORT_COUNTERS, 40))
    assert isinstance(beyond, bytes) and common.MadHdr.unpack(beyond).status == 0x1C
    # the host's answer, as the switch port shows it
    host = pma.PortCounters(port_select=1).add(port_xmit_data=100, port_rcv_data=7,
                                               port_xmit_pkts=5, port_xmit_discards=2,
                                               link_downed_counter=1)  # fmt: skip
    answer = common.response(pma_get(pma.IB_PMA_PORT_COUNTERS, 1), host.pack())
    seen = pma.PortCounters.unpack(pma.turned_round(answer, 9)[64:])
    assert (seen.port_select, seen.port_rcv_data, seen.port_xmit_data, seen.port_rcv_pkts) == (
        9, 100, 7, 5)  # fmt: skip
    assert (seen.port_xmit_discards, seen.link_downed_counter) == (0, 1)


def test_trap_subscriptions_and_the_reports_they_get():
    sm, devices = lab()
    p1, p2, p3 = (d.ports[0] for d in devices)

    def inform(port, info: sa.InformInfo, sm_key: int = 0) -> sa.SaMad:
        req = sa.sa_request(common.IB_MGMT_METHOD_SET, sa.IB_SA_ATTR_INFORM_INFO, info,
                            sm_key=sm_key, tid=3)  # fmt: skip
        out = sm_agents.answer(sm, port.lid, req.pack())
        assert isinstance(out, bytes)
        return sa.SaMad.unpack(out)

    out_of_service = sa.InformInfo(gid=p2.gid, is_generic=1, subscribe=1, type=0xFFFF,
                                   trap_num_or_dev_id=65, producer_or_vendor=0xFFFFFF)  # fmt: skip
    assert inform(p1, out_of_service).status == 0
    assert inform(p1, out_of_service).status == 0  # the same again: still one
    assert len(sm.subscriptions) == 1 and sm.subscriptions[0].lid == p1.lid
    # Reports: trap 65 about h2 goes to h1; about h3 (not the GID asked for) or trap 64 not
    ((to, mad),) = subnet_admin.reports(sm, 65, p2.lid, p2.gid)
    report = sa.SaMad.unpack(mad)
    notice = sa.Notice.unpack(report.data)
    assert (to, report.method, report.attr_id) == (p1.lid, common.IB_MGMT_METHOD_REPORT, 2)
    assert (notice.trap_num_or_dev_id, notice.type, notice.data_details[6:22]) == (65, 4, p2.gid)
    assert subnet_admin.reports(sm, 65, p3.lid, p3.gid) == []
    assert subnet_admin.reports(sm, 64, p2.lid, p2.gid) == []
    # refused: a Subscribe above 1, a security trap without the key; unsubscribing twice
    assert inform(p1, replace(out_of_service, subscribe=2)).status == 0x0200
    security = replace(out_of_service, trap_num_or_dev_id=256)
    assert inform(p1, security).status == 0x0200 and inform(p1, security, sm_key=1).status == 0
    table = sa.sa_request(common.IB_MGMT_METHOD_GET_TABLE, sa.IB_SA_ATTR_INFORM_INFO_REC)
    raw = sm_agents.answer(sm, p2.lid, table.pack())
    assert isinstance(raw, bytes)
    listed = sa.SaMad.unpack(raw)
    assert [sa.InformInfoRecord.unpack(r).subscriber_gid for r in listed.records()] == [p1.gid] * 2
    assert inform(p1, replace(out_of_service, subscribe=0)).status == 0
    assert inform(p1, replace(out_of_service, subscribe=0)).status == 0x0200
    sm.detach(p1.lid)  # a port that leaves takes its subscriptions with it
    assert sm.subscriptions == []
