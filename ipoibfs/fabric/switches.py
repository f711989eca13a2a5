"""The fabric's switches, as their SMAs answer (a switch's process_mad): NodeInfo,
NodeDescription, PortInfo (port 0 the switch's own, each external port the link to what is
cabled there), SwitchInfo, the Linear and Multicast ForwardingTables built from the SM's
routes and groups, P_KeyTable and SLtoVLMappingTable, and the Sets a switch takes: a port's
state (ibportstate disable, enable, reset); and their PMAs (perfquery, ibqueryerrors), whose
port facing a host shows that host's counters turned round. Pure: the SubnetManager's state
in, the answer out. The switches and their cables are the SM's topology (fabric/topology.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..wire.mad import common, pma, smp
from .device import CAP_MASK, IB_PORT_SM, Port
from .sm import FIRST_MLID, Change, SubnetManager
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


def attachment(sm: SubnetManager, lid: int) -> tuple[int, int] | None:
    port = sm.ports.get(lid)
    return None if port is None else sm.topology.attachment(port.guid, lid)


def host_at(sm: SubnetManager, sw: int, num: int) -> Port | None:
    """The host port that is up and cabled to port `num` of switch sw."""
    end = sm.topology.far_end(sw, num, sm.ports) if num else None
    return sm.attached(end[1]) if end is not None and end[0] == "ca" else None


def num_ports(sm: SubnetManager, sw: int) -> int:
    return sm.topology.num_ports(sw, sm.ports)


def switch_sma(sm: SubnetManager, sw: int, entry: int, mad: bytes) -> bytes | Change:
    """Switch sw's SMA, for an SMP that came in on port `entry` (0: from the SM itself)."""
    req = smp.Smp.unpack(mad)
    unsupported = common.IB_MGMT_MAD_STATUS_UNSUPPORTED_METHOD_ATTRIB
    if req.method not in (common.IB_MGMT_METHOD_GET, common.IB_MGMT_METHOD_SET):
        return smp.smp_answer(req, status=common.IB_MGMT_MAD_STATUS_UNSUPPORTED_METHOD).pack()
    if req.method == common.IB_MGMT_METHOD_SET and req.attr_id in READ_ONLY:
        return smp.smp_answer(req, status=unsupported).pack()
    switch = sm.topology.switches[sw]
    ports = num_ports(sm, sw)
    if req.method == common.IB_MGMT_METHOD_SET and req.attr_id == smp.IB_SMP_ATTR_PORT_INFO:
        return _set_switch_port(sm, sw, entry, req, ports)
    data: bytes | None
    if req.attr_id == smp.IB_SMP_ATTR_NODE_INFO:
        data = switch_node_info(sm, sw, entry).pack()
    elif req.attr_id == smp.IB_SMP_ATTR_NODE_DESC:
        data = switch.desc.ljust(64, b"\0")
    elif req.attr_id == smp.IB_SMP_ATTR_PORT_INFO:
        data = switch_port_info(sm, sw, req.attr_mod & 0xFF, entry, ports)
    elif req.attr_id == smp.IB_SMP_ATTR_SWITCH_INFO:
        data = switch_info(sm).pack()
    elif req.attr_id == smp.IB_SMP_ATTR_PKEY_TABLE:
        data = _switch_pkeys(sm, sw, req.attr_mod >> 16, req.attr_mod & 0xFFFF, ports)
    elif req.attr_id == smp.IB_SMP_ATTR_SL_TO_VL_TABLE:
        in_port, out_port = req.attr_mod >> 8 & 0xFF, req.attr_mod & 0xFF
        data = sl_to_vl() if in_port <= ports and out_port <= ports else None
    elif req.attr_id == MLNX_EXT_PORT_INFO:
        data = bytes(64) if (req.attr_mod & 0xFF) <= ports else None  # no FDR10 links
    elif req.attr_id == smp.IB_SMP_ATTR_LINEAR_FORWARD_TABLE:
        block = req.attr_mod & 0xFFFF
        data = None if block * 64 >= LFT_CAP else lft_block(sm, sw, block).pack()
    elif req.attr_id == smp.IB_SMP_ATTR_MCAST_FORWARD_TABLE:
        block, position = smp.mft_block_position(req.attr_mod)
        valid = block * MFT_MLIDS < MFT_CAP and position * MFT_PORTS <= ports
        data = mft_block(sm, sw, block, position).pack() if valid else None
    else:
        return smp.smp_answer(req, status=unsupported).pack()
    if data is None:
        return smp.smp_answer(req, status=common.IB_MGMT_MAD_STATUS_INVALID_ATTRIB_VALUE).pack()
    return smp.smp_answer(req, data).pack()


def _switch_pkeys(sm: SubnetManager, sw: int, num: int, block: int,
                  ports: int) -> bytes | None:  # fmt: skip
    """P_KeyTable of switch port `num` (PartitionEnforcementCap 8: one block): port 0 and
    the links between switches hold the default full member; a port facing a host holds
    that host's table, as OpenSM programs a switch that enforces partitions."""
    if num > ports or block * 32 >= PARTITION_CAP:
        return None
    host = host_at(sm, sw, num)
    keys = host.pkeys[:PARTITION_CAP] if host is not None else [0xFFFF]
    return smp.PKeyTable(tuple(keys)).pack()


def switch_node_info(sm: SubnetManager, sw: int, entry: int) -> smp.NodeInfo:
    guid = sm.topology.switches[sw].guid
    return smp.NodeInfo(node_type=smp.IB_NODE_SWITCH, num_ports=num_ports(sm, sw),
                        sys_guid=guid, node_guid=guid, port_guid=guid, partition_cap=PARTITION_CAP,
                        device_id=SWITCH_DEVICE_ID, local_port_num=entry,
                        vendor_id=VENDOR_ID)  # fmt: skip


def top_lid(sm: SubnetManager) -> int:
    return max(max(sm.ports, default=SM_LID), *(s.lid for s in sm.topology.switches))


def top_mlid(sm: SubnetManager) -> int:
    """MulticastFDBTop: the highest MLID in use (0xBFFF for none), as OpenSM sets it."""
    return max((g.mlid for g in sm.groups.values()), default=FIRST_MLID - 1)


def switch_info(sm: SubnetManager) -> smp.SwitchInfo:
    return smp.SwitchInfo(linear_fdb_cap=LFT_CAP, mcast_fdb_cap=MFT_CAP,
                          linear_fdb_top=top_lid(sm), life_time_value=18,
                          lids_per_port=0, partition_enforcement_cap=PARTITION_CAP,
                          mcast_fdb_top=top_mlid(sm))  # fmt: skip


def mft_block(sm: SubnetManager, sw: int, block: int,
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
            found = (attachment(sm, lid) for lid in {lid for lid, _ in group.members})
            ports = sm.topology.multicast_ports(sw, [at for at in found if at is not None])
        masks.append(sum(1 << (p - low) for p in ports if low <= p < low + MFT_PORTS))
    return smp.MulticastForwardingTable(tuple(masks))


def lft_block(sm: SubnetManager, sw: int, block: int) -> smp.LinearForwardingTable:
    """LIDs 64·block to 64·block + 63 of switch sw: its own to port 0, the others on the
    way the topology routes them."""
    topo = sm.topology
    return smp.LinearForwardingTable(tuple(
        topo.out_port(sw, lid, attachment(sm, lid))
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
    disabled = where in sm.disabled_ports
    states: tuple[bool, ...] = ()  # port 0 has no link to change
    if num and want.phys_state == smp.PhysState.DISABLED:
        sm.disabled_ports.add(where)
        states = () if disabled else (False,)
    elif num and want.phys_state == smp.PhysState.POLLING:
        sm.disabled_ports.discard(where)
        states = (True,) if disabled else (False, True)
    elif num and want.port_state == smp.PortState.DOWN and not disabled:
        states = (False, True)
    answer = smp.smp_answer(req, switch_port_info(sm, sw, num, entry, ports)).pack()
    host = host_at(sm, sw, num)
    if not states or host is None:
        return answer
    sm.act_count += 1
    return Change(answer, lid=host.lid, states=states)


def switch_port_info(sm: SubnetManager, sw: int, num: int, entry: int,
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
    host = sm.attached(end[1]) if end is not None and end[0] == "ca" else None
    state: int
    phys: int
    if (sw, num) in sm.disabled_ports:
        state, phys = smp.PortState.DOWN, smp.PhysState.DISABLED
    elif host is not None:
        state, phys = host.state, host.phys_state
    elif num == 0 or (end is not None and end[0] == "switch"):
        state, phys = smp.PortState.ACTIVE, smp.PhysState.LINK_UP
    else:  # nothing cabled, or a host that is not up
        state, phys = smp.PortState.DOWN, smp.PhysState.POLLING
    return port_info(host or model, local_port_num=entry, lid=lid, cap_mask=cap, state=state,
                     phys_state=phys)  # fmt: skip


@dataclass(frozen=True)
class PeerCounters:
    """A switch port's PortCounters(Extended): those of the host port cabled there (LID
    `lid`, port `port`), which the asker reads from the host and turns round
    (pma.far_end) as port `switch_port` of the switch at `switch_lid` shows them."""

    lid: int
    port: int
    switch_lid: int
    switch_port: int


def switch_pma(sm: SubnetManager, sw: int, mad: bytes) -> bytes | PeerCounters:
    """Switch sw's PMA: ClassPortInfo (extended counters, no PortSelect 0xFF), and the
    counters of one port: a port facing a host counts that host's traffic from the other
    end (PeerCounters), any other counts nothing (the data goes host to host: nothing
    crosses the links between switches here). A Set (perfquery -R) is refused: the
    counters are the host's, and only it resets them."""
    hdr = common.MadHdr.unpack(mad)
    if hdr.class_version != common.IB_PMA_CLASS_VERSION:
        return common.response(mad, status=common.IB_MGMT_MAD_STATUS_BAD_VERSION)
    if hdr.method != common.IB_MGMT_METHOD_GET:
        method_set = hdr.method == common.IB_MGMT_METHOD_SET
        status = (common.IB_MGMT_MAD_STATUS_UNSUPPORTED_METHOD_ATTRIB if method_set
                  else common.IB_MGMT_MAD_STATUS_UNSUPPORTED_METHOD)  # fmt: skip
        return common.response(mad, status=status)
    if hdr.attr_id == pma.IB_PMA_CLASS_PORT_INFO:
        info = common.ClassPortInfo(class_version=common.IB_PMA_CLASS_VERSION,
                                    capability_mask=pma.IB_PM_EXT_WIDTH_SUPPORTED,
                                    resp_time_value=RESP_TIME_VALUE)  # fmt: skip
        return common.response(mad, info.pack())
    kinds: dict[int, type[pma.PortCounters] | type[pma.PortCountersExtended]] = {
        pma.IB_PMA_PORT_COUNTERS: pma.PortCounters,
        pma.IB_PMA_PORT_COUNTERS_EXT: pma.PortCountersExtended,
    }
    kind = kinds.get(hdr.attr_id)
    if kind is None:
        return common.response(mad, status=common.IB_MGMT_MAD_STATUS_UNSUPPORTED_METHOD_ATTRIB)
    port_select = kind.unpack(mad[64:]).port_select
    if not 0 < port_select <= num_ports(sm, sw):
        return common.response(mad, status=common.IB_MGMT_MAD_STATUS_INVALID_ATTRIB_VALUE)
    host = host_at(sm, sw, port_select)
    if host is not None:
        return PeerCounters(host.lid, host.num, sm.topology.switches[sw].lid, port_select)
    return common.response(mad, kind(port_select=port_select).pack())
