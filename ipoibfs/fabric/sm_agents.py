"""The subnet manager's own agents and the fabric's switches, answering MADs from the
SubnetManager's state: where a MAD goes (LID-routed to the SM's SMInfo and SA or to a
switch's SMA, a directed route along its path to a switch or on to a host) and the SM's
SMInfo. The switches' SMAs are fabric/switches.py, the SA fabric/subnet_admin.py. Pure: a MAD
in, the answer out (None: dropped, as OpenSM drops what it does not serve).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..wire.mad import common, smp
from . import switches
from .sm import Change, SubnetManager
from .subnet_admin import SA_KEY, answer_sa
from .topology import SM_LID

SM_PRIORITY = 0
SM_STATE_MASTER = 3


@dataclass(frozen=True)
class Forward:
    """A directed-route SMP whose path ends at a host's port: the asker sends it there."""

    lid: int


#: What the fabric hands back to the asker's MAD layer: an answer, the host a directed
#: route ends at, the host whose counters a switch port shows, or nothing.
Reply = bytes | Forward | switches.PeerCounters | None
Answer = Reply | Change


def answer(sm: SubnetManager, asker: int, mad: bytes, dlid: int = SM_LID) -> Answer:
    """The fabric's answer to a MAD that LID `asker` sent: LID-routed to `dlid` (the SM's
    SMInfo and SA, or a switch's SMA), or a directed-route SMP, which its path takes to a
    switch (answered here) or a host (Forward); a switch's PMA. None: nothing answers. A
    Change is an answer whose request changed a host's link or a group's members."""
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
        return switches.switch_sma(sm, sw, _entry(sm, asker, sw), mad)
    if hdr.mgmt_class == common.IB_MGMT_CLASS_SUBN_DIRECTED_ROUTE:
        dr = smp.Smp.unpack(mad)
        end = dr_walk(sm, asker, tuple(dr.initial_path), dr.hop_cnt)
        if end is None or isinstance(end, int):
            return None if end is None else Forward(end)
        if hdr.attr_id == smp.IB_SMP_ATTR_SM_INFO and end[0] == 0 and topo.sm_port is None:
            return _sm_info_answer(sm, mad)  # the SM on switch 0's port 0
        return switches.switch_sma(sm, end[0], end[1], mad)
    if hdr.mgmt_class == common.IB_MGMT_CLASS_SUBN_ADM and dlid == SM_LID:
        return answer_sa(sm, asker, mad)
    if hdr.mgmt_class == common.IB_MGMT_CLASS_PERF_MGMT:
        sw = topo.switch_at(dlid)
        return None if sw is None else switches.switch_pma(sm, sw, mad)
    return None


def _entry(sm: SubnetManager, asker: int, sw: int) -> int:
    """The port a LID-routed SMP from `asker` enters switch sw through (LocalPortNum);
    0 when it cannot get there."""
    at = switches.attachment(sm, asker)
    if at is None:
        return 0
    return sm.topology.entry_port(at[0], sw, at[1]) or 0


def dr_walk(sm: SubnetManager, asker: int, path: tuple[int, ...],
            hop_cnt: int) -> tuple[int, int] | int | None:  # fmt: skip
    """Where a directed-route SMP from the host with LID `asker` ends, following its path
    (path[1] is the asker's own port, each next entry a switch's out port): (switch, the
    port it entered through), a host's LID, or None for a path that leaves the fabric
    (through a port with nothing cabled, or on beyond a CA)."""
    at = switches.attachment(sm, asker)
    if at is None or hop_cnt < 1 or len(path) <= hop_cnt:
        return None
    sw, entry = at
    for i in range(2, hop_cnt + 1):
        if not 0 < path[i] <= switches.num_ports(sm, sw):
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
