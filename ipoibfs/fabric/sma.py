"""The agents of a CA port that answer MADs themselves: the SMA (subnet management agent,
IBA 14.2) and the PMA (performance management agent, IBA 16.1), as an HCA's firmware or the
kernel's process_mad answer them for the port's own LID and for a directed-route SMP with
no hops.

They answer from the real state: the HcaDevice and its Port (GUIDs, LID, SM LID, P_Key
table, state, MTU, width and speed, capability mask) and the traffic the host's interfaces
counted on the port (`Traffic`, summed by the caller; this layer does not know the driver).
`PortAgents.answer(mad)` takes a 256-byte request and gives the 256-byte answer, or None
when the port's agents do not handle that class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

from ..wire.mad import common, pma, smp
from .device import GUID_BASE, PKEY_TABLE_LEN, HcaDevice, Port

#: PortInfo's LinkWidth codes (IBA 14.2.5.6: 1 = 1x, 2 = 4x, 4 = 8x, 8 = 12x, 16 = 2x)
WIDTH_CODES = {1: 1, 4: 2, 8: 4, 12: 8, 2: 16}
#: Per-lane speed: LinkSpeedActive, LinkSpeedExtActive (0: none). Extended speeds report
#: QDR in the base field, as ConnectX HCAs do.
SPEED_CODES = {
    "SDR": (1, 0),
    "DDR": (2, 0),
    "QDR": (4, 0),
    "FDR10": (4, 0),
    "FDR": (4, 1),
    "EDR": (4, 2),
    "HDR": (4, 4),
    "NDR": (4, 8),
}
#: IBA MTU codes (enum ib_mtu)
MTU_CODES = {256: 1, 512: 2, 1024: 3, 2048: 4, 4096: 5}
#: The vendor OUI of NodeInfo: the one in every emulated GUID (00:02:c9)
VENDOR_ID = GUID_BASE >> 40
SUBNET_TIMEOUT = 18  # 4.096 µs * 2^18, about 1 s: what OpenSM programs by default
RESP_TIME_VALUE = 16

#: ClassPortInfo.capability_mask of the PMA: PortSelect 0xFF and PortCountersExtended
PMA_CAPABILITIES = pma.IB_PM_ALL_PORT_SELECT | pma.IB_PM_EXT_WIDTH_SUPPORTED


def node_info(device: HcaDevice, port: Port) -> bytes:
    """NodeInfo as the port's SMA answers it (and as the SM learns it: subnet_admin.py)."""
    return smp.NodeInfo(
        node_type=smp.IB_NODE_CA,
        num_ports=len(device.ports),
        sys_guid=device.node_guid,
        node_guid=device.node_guid,
        port_guid=port.guid,
        partition_cap=PKEY_TABLE_LEN,
        device_id=device.profile.pci.device,
        revision=device.profile.pci.revision,
        local_port_num=port.num,
        vendor_id=VENDOR_ID,
    ).pack()


def port_info(port: Port, *, local_port_num: int, lid: int, cap_mask: int,
              state: int | None = None, phys_state: int | None = None) -> bytes:  # fmt: skip
    """PortInfo of a link with `port` at one end (a CA's own port, or the switch port it is
    cabled to: the width, speeds and MTU are the link's), as the SMA answers it."""
    profile = port.profile
    width = WIDTH_CODES.get(profile.width, 2)
    speed, speed_ext = SPEED_CODES.get(profile.speed, (1, 0))
    mtu = MTU_CODES.get(profile.max_mtu, 5)
    state = port.state if state is None else state
    active = state >= smp.PortState.ARMED
    return smp.PortInfo(
        gid_prefix=port.gid_prefix,
        lid=lid,
        master_sm_lid=port.sm_lid,
        capability_mask=cap_mask,
        local_port_num=local_port_num,
        link_width_enabled=width | 1,
        link_width_supported=width | 1,
        link_width_active=width,
        link_speed_supported=7 if speed >= 4 else speed | 1,
        port_state=state,
        phys_state=port.phys_state if phys_state is None else phys_state,
        link_down_default_state=smp.PhysState.POLLING,
        link_speed_active=speed,
        link_speed_enabled=7 if speed >= 4 else speed | 1,
        neighbor_mtu=mtu if active else 0,
        vl_cap=1,
        vl_high_limit=0,
        mtu_cap=mtu,
        operational_vls=1 if active else 0,
        guid_cap=1,
        subnet_timeout=SUBNET_TIMEOUT,
        resp_time_value=RESP_TIME_VALUE,
        link_speed_ext_active=speed_ext,
        link_speed_ext_supported=(speed_ext << 1) - 1 if speed_ext else 0,
        link_speed_ext_enabled=(speed_ext << 1) - 1 if speed_ext else 0,
    ).pack()


def sl_to_vl(attr_mod: int = 0) -> bytes:
    """SLtoVLMappingTable (IBA 14.2.5.8): every SL on VL0, the one data VL (VLCap 1)."""
    return bytes(smp.IB_SMP_DATA_SIZE)


def node_description(device: HcaDevice) -> bytes:
    """NodeDescription: the 64-byte, NUL-padded node_desc."""
    return bytes(device.node_desc[:64]).ljust(64, b"\0")


@dataclass(frozen=True, slots=True)
class Traffic:
    """What the host's interfaces counted on one port, in bytes and packets."""

    xmit_bytes: int = 0
    rcv_bytes: int = 0
    xmit_pkts: int = 0
    rcv_pkts: int = 0
    rcv_multicast_pkts: int = 0
    xmit_multicast_pkts: int = 0
    rcv_errors: int = 0
    xmit_discards: int = 0
    link_downed: int = 0

    def minus(self, base: Traffic) -> Traffic:
        return Traffic(
            **{f.name: max(0, getattr(self, f.name) - getattr(base, f.name)) for f in fields(self)}
        )


#: Which Traffic counter each PMA counter shows (PortXmitData/PortRcvData are in 4-byte
#: words, IBA 16.1.3.5)
_BASE_OF = {
    "port_xmit_data": "xmit_bytes",
    "port_rcv_data": "rcv_bytes",
    "port_xmit_pkts": "xmit_pkts",
    "port_rcv_pkts": "rcv_pkts",
    "port_rcv_errors": "rcv_errors",
    "port_xmit_discards": "xmit_discards",
    "link_downed_counter": "link_downed",
    "port_multicast_xmit_pkts": "xmit_multicast_pkts",
    "port_multicast_rcv_pkts": "rcv_multicast_pkts",
}


class PortAgents:
    """The SMA and the PMA of one port of `device`. `traffic()` gives the port's totals."""

    def __init__(self, device: HcaDevice, port: Port, traffic: Callable[[], Traffic]) -> None:
        self.device = device
        self.port = port
        self.traffic = traffic
        #: What the PMA showed as zero at the last reset of each Traffic counter
        self._baseline: dict[str, int] = {}

    # ------------------------------------------------------------------ dispatch

    def answer(self, mad: bytes) -> bytes | None:
        """The answer to a request the port's own agents handle, else None."""
        hdr = common.MadHdr.unpack(mad)
        if hdr.is_response:
            return None
        if common.is_smp_class(hdr.mgmt_class):
            return self._sma(mad)
        if hdr.mgmt_class == common.IB_MGMT_CLASS_PERF_MGMT:
            return self._pma(mad, hdr)
        return None

    # ------------------------------------------------------------------ SMA

    def _sma(self, mad: bytes) -> bytes:
        req = smp.Smp.unpack(mad)
        if req.class_version != common.IB_SMP_CLASS_VERSION:
            return smp.smp_answer(req, status=common.IB_MGMT_MAD_STATUS_BAD_VERSION).pack()
        if req.method not in (common.IB_MGMT_METHOD_GET, common.IB_MGMT_METHOD_SET):
            return smp.smp_answer(req, status=common.IB_MGMT_MAD_STATUS_UNSUPPORTED_METHOD).pack()
        getter = {
            smp.IB_SMP_ATTR_NODE_INFO: self.node_info,
            smp.IB_SMP_ATTR_NODE_DESC: self.node_description,
            smp.IB_SMP_ATTR_PORT_INFO: self.port_info,
            smp.IB_SMP_ATTR_PKEY_TABLE: self.pkey_table,
            smp.IB_SMP_ATTR_GUID_INFO: self.guid_info,
            smp.IB_SMP_ATTR_SL_TO_VL_TABLE: sl_to_vl,
        }.get(req.attr_id)
        # NodeInfo and NodeDescription are read-only (IBA 14.2.5); a Set of the others is
        # the SM's, which programs this fabric itself: answered with the values as they are.
        read_only = req.attr_id in (smp.IB_SMP_ATTR_NODE_INFO, smp.IB_SMP_ATTR_NODE_DESC)
        if getter is None or (read_only and req.method == common.IB_MGMT_METHOD_SET):
            status = common.IB_MGMT_MAD_STATUS_UNSUPPORTED_METHOD_ATTRIB
            return smp.smp_answer(req, status=status).pack()
        data = getter(req.attr_mod)
        if data is None:
            return smp.smp_answer(req, status=common.IB_MGMT_MAD_STATUS_INVALID_ATTRIB_VALUE).pack()
        return smp.smp_answer(req, data).pack()

    def node_info(self, attr_mod: int = 0) -> bytes:
        return node_info(self.device, self.port)

    def node_description(self, attr_mod: int = 0) -> bytes:
        return node_description(self.device)

    def port_info(self, attr_mod: int = 0) -> bytes | None:
        """PortInfo of the port the SMP came in on; a CA answers for modifier 0 or its own
        port number."""
        port = self.port
        if attr_mod not in (0, port.num):
            match = [p for p in self.device.ports if p.num == attr_mod]
            if not match:
                return None
            port = match[0]
        return port_info(port, local_port_num=port.num, lid=port.lid,
                         cap_mask=port.cap_mask)  # fmt: skip

    def pkey_table(self, attr_mod: int = 0) -> bytes | None:
        block = attr_mod & 0xFFFF
        pkeys = self.port.pkeys
        if block * 32 >= len(pkeys):
            return None
        return smp.PKeyTable(tuple(pkeys[block * 32 : block * 32 + 32])).pack()

    def guid_info(self, attr_mod: int = 0) -> bytes | None:
        """GUIDInfo: the port GUID at index 0 (GUIDCap 1), as gids/0 shows it."""
        if attr_mod != 0:
            return None
        return smp.GuidInfo((self.port.guid,)).pack()

    # ------------------------------------------------------------------ PMA

    def _pma(self, mad: bytes, hdr: common.MadHdr) -> bytes:
        if hdr.class_version != common.IB_PMA_CLASS_VERSION:
            return common.response(mad, status=common.IB_MGMT_MAD_STATUS_BAD_VERSION)
        if hdr.method not in (common.IB_MGMT_METHOD_GET, common.IB_MGMT_METHOD_SET):
            return common.response(mad, status=common.IB_MGMT_MAD_STATUS_UNSUPPORTED_METHOD)
        data = mad[64:]
        if hdr.attr_id == pma.IB_PMA_CLASS_PORT_INFO:
            if hdr.method == common.IB_MGMT_METHOD_SET:
                return common.response(
                    mad, status=common.IB_MGMT_MAD_STATUS_UNSUPPORTED_METHOD_ATTRIB
                )
            info = common.ClassPortInfo(
                base_version=1,
                class_version=common.IB_PMA_CLASS_VERSION,
                capability_mask=PMA_CAPABILITIES,
                resp_time_value=RESP_TIME_VALUE,
            )
            return common.response(mad, info.pack())
        if hdr.attr_id == pma.IB_PMA_PORT_COUNTERS:
            req = pma.PortCounters.unpack(data)
            if not self._selects(req.port_select):
                return common.response(mad, status=common.IB_MGMT_MAD_STATUS_INVALID_ATTRIB_VALUE)
            if hdr.method == common.IB_MGMT_METHOD_SET:
                names = [
                    n for n, bit in pma.PORT_COUNTERS_SELECT.items() if req.counter_select & bit
                ]
                self.reset(names)
            return common.response(mad, self.port_counters(req.port_select).pack())
        if hdr.attr_id == pma.IB_PMA_PORT_COUNTERS_EXT:
            ext = pma.PortCountersExtended.unpack(data)
            if not self._selects(ext.port_select):
                return common.response(mad, status=common.IB_MGMT_MAD_STATUS_INVALID_ATTRIB_VALUE)
            if hdr.method == common.IB_MGMT_METHOD_SET:
                names = [
                    n for n, bit in pma.PORT_COUNTERS_EXT_SELECT.items() if ext.counter_select & bit
                ]
                self.reset(names)
            return common.response(mad, self.port_counters_ext(ext.port_select).pack())
        return common.response(mad, status=common.IB_MGMT_MAD_STATUS_UNSUPPORTED_METHOD_ATTRIB)

    def _selects(self, port_select: int) -> bool:
        return port_select in (self.port.num, pma.IB_PMA_ALL_PORTS, 0)

    def reset(self, counters: list[str]) -> None:
        """Set(PortCounters) with these counters selected: what the PMA shows restarts at
        zero (a baseline; the interfaces' own counters are never touched)."""
        now = self.traffic()
        for name in counters:
            base = _BASE_OF.get(name)
            if base is not None:
                self._baseline[base] = getattr(now, base)

    def shown(self) -> tuple[Traffic, int, int]:
        """The traffic since the resets, and the unicast packets sent and received (the
        packets less the multicast ones, so that they restart with them)."""
        now = self.traffic()
        base = Traffic(**{f.name: self._baseline.get(f.name, 0) for f in fields(Traffic)})
        t = now.minus(base)
        return (
            t,
            max(0, t.xmit_pkts - t.xmit_multicast_pkts),
            max(0, t.rcv_pkts - t.rcv_multicast_pkts),
        )

    def port_counters(self, port_select: int) -> pma.PortCounters:
        t, _, _ = self.shown()
        return pma.PortCounters(port_select=port_select).add(
            port_xmit_data=t.xmit_bytes // 4,
            port_rcv_data=t.rcv_bytes // 4,
            port_xmit_pkts=t.xmit_pkts,
            port_rcv_pkts=t.rcv_pkts,
            port_rcv_errors=t.rcv_errors,
            port_xmit_discards=t.xmit_discards,
            link_downed_counter=t.link_downed,
        )

    def port_counters_ext(self, port_select: int) -> pma.PortCountersExtended:
        t, ux, ur = self.shown()
        mask = (1 << 64) - 1
        return pma.PortCountersExtended(
            port_select=port_select,
            port_xmit_data=t.xmit_bytes // 4 & mask,
            port_rcv_data=t.rcv_bytes // 4 & mask,
            port_xmit_pkts=t.xmit_pkts & mask,
            port_rcv_pkts=t.rcv_pkts & mask,
            port_unicast_xmit_pkts=ux & mask,
            port_unicast_rcv_pkts=ur & mask,
            port_multicast_xmit_pkts=t.xmit_multicast_pkts & mask,
            port_multicast_rcv_pkts=t.rcv_multicast_pkts & mask,
        )
