"""Subnet management packets (IBA 14.2.1, struct ib_smp), the directed-route rules of the
kernel's smi.c, and the SMA's attributes.

An SMP is 256 bytes: the common header (on a DR SMP bytes 4-5 are the D bit and a 15-bit
status, bytes 6-7 the hop pointer and hop count), the M_Key (24-31), the DR source and
destination LIDs (32-35, DR only), the 64-byte attribute (64-127) and, DR only, the initial
and return paths (128-191, 192-255; entry 0 unused, entry i the port of hop i).

The attribute layouts are the IBA's tables as libibmad's fields.c lists them (bit offsets
from the attribute's first bit). Every attribute's `comp` bits are those of the SA record
that carries it (PortInfoRecord for PortInfo, NodeRecord for NodeInfo and NodeDescription).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, replace
from typing import ClassVar, Self

from .common import (
    IB_MGMT_BASE_VERSION,
    IB_MGMT_CLASS_SUBN_DIRECTED_ROUTE,
    IB_MGMT_CLASS_SUBN_LID_ROUTED,
    IB_MGMT_METHOD_GET,
    IB_SMP_CLASS_VERSION,
    IB_SMP_DIRECTION,
    MAD_SIZE,
    MadHdr,
)
from .layout import Buffer, Field, Struct

IB_LID_PERMISSIVE = 0xFFFF
IB_SMP_DATA_SIZE = 64
IB_SMP_MAX_PATH_HOPS = 64

# Attribute IDs (ib_smi.h, libibmad's IB_ATTR_*)
IB_SMP_ATTR_NOTICE = 0x0002
IB_SMP_ATTR_NODE_DESC = 0x0010
IB_SMP_ATTR_NODE_INFO = 0x0011
IB_SMP_ATTR_SWITCH_INFO = 0x0012
IB_SMP_ATTR_GUID_INFO = 0x0014
IB_SMP_ATTR_PORT_INFO = 0x0015
IB_SMP_ATTR_PKEY_TABLE = 0x0016
IB_SMP_ATTR_SL_TO_VL_TABLE = 0x0017
IB_SMP_ATTR_VL_ARB_TABLE = 0x0018
IB_SMP_ATTR_LINEAR_FORWARD_TABLE = 0x0019
IB_SMP_ATTR_MCAST_FORWARD_TABLE = 0x001B
IB_SMP_ATTR_SM_INFO = 0x0020

# NodeInfo.node_type
IB_NODE_CA, IB_NODE_SWITCH, IB_NODE_ROUTER = 1, 2, 3


class PortState(enum.IntEnum):
    """PortInfo.port_state (IBA 14.2.5.6; 0 in a Set is "no change")."""

    NOP = 0
    DOWN = 1
    INIT = 2
    ARMED = 3
    ACTIVE = 4


class PhysState(enum.IntEnum):
    """PortInfo.phys_state."""

    NOP = 0
    SLEEP = 1
    POLLING = 2
    DISABLED = 3
    PORT_CONFIGURATION_TRAINING = 4
    LINK_UP = 5
    LINK_ERROR_RECOVERY = 6
    PHY_TEST = 7


class SmState(enum.IntEnum):
    """SMInfo.state."""

    NOT_ACTIVE = 0
    DISCOVERING = 1
    STANDBY = 2
    MASTER = 3


_SMP_FIXED = struct.Struct("!QHH28x")


@dataclass(frozen=True, slots=True, kw_only=True)
class Smp:
    """A LID-routed (class 0x01) or directed-route (0x81) SMP.

    `status` is the 16-bit status of a LID-routed SMP, the 15 bits under the D bit of a
    DR one (`direction`: False outbound, True returning). `initial_path` and
    `return_path` are the 64-byte path arrays; they, `hop_ptr`, `hop_cnt` and the DR LIDs
    are zero on the wire of a LID-routed SMP."""

    mgmt_class: int = IB_MGMT_CLASS_SUBN_LID_ROUTED
    method: int = IB_MGMT_METHOD_GET
    status: int = 0
    direction: bool = False
    hop_ptr: int = 0
    hop_cnt: int = 0
    tid: int = 0
    attr_id: int = 0
    attr_mod: int = 0
    mkey: int = 0
    dr_slid: int = 0
    dr_dlid: int = 0
    data: bytes = bytes(IB_SMP_DATA_SIZE)
    initial_path: bytes = bytes(IB_SMP_MAX_PATH_HOPS)
    return_path: bytes = bytes(IB_SMP_MAX_PATH_HOPS)
    base_version: int = IB_MGMT_BASE_VERSION
    class_version: int = IB_SMP_CLASS_VERSION

    SIZE: ClassVar[int] = MAD_SIZE

    @property
    def directed(self) -> bool:
        return self.mgmt_class == IB_MGMT_CLASS_SUBN_DIRECTED_ROUTE

    def pack(self) -> bytes:
        if len(self.data) > IB_SMP_DATA_SIZE:
            raise ValueError(f"an SMP's data is {IB_SMP_DATA_SIZE} bytes, got {len(self.data)}")
        if self.directed:
            if self.hop_cnt >= IB_SMP_MAX_PATH_HOPS:
                raise ValueError(f"hop count {self.hop_cnt}: at most 63 hops")
            word = (IB_SMP_DIRECTION if self.direction else 0) | self.status & 0x7FFF
            specific = self.hop_ptr << 8 | self.hop_cnt
        else:
            word, specific = self.status, 0
        hdr = MadHdr(base_version=self.base_version, mgmt_class=self.mgmt_class,
                     class_version=self.class_version, method=self.method, status=word,
                     class_specific=specific, tid=self.tid, attr_id=self.attr_id,
                     attr_mod=self.attr_mod)  # fmt: skip
        dr = (self.dr_slid, self.dr_dlid) if self.directed else (0, 0)
        out = hdr.pack() + _SMP_FIXED.pack(self.mkey, *dr) + self.data.ljust(64, b"\0")
        if self.directed:
            return out + self.initial_path.ljust(64, b"\0") + self.return_path.ljust(64, b"\0")
        return out + bytes(128)

    @classmethod
    def unpack(cls, data: Buffer) -> Self:
        if len(data) < MAD_SIZE:
            raise ValueError(f"an SMP is {MAD_SIZE} bytes, got {len(data)}")
        raw = bytes(data[:MAD_SIZE])
        hdr = MadHdr.unpack(raw)
        mkey, dr_slid, dr_dlid = _SMP_FIXED.unpack_from(raw, 24)
        if hdr.mgmt_class == IB_MGMT_CLASS_SUBN_DIRECTED_ROUTE:
            return cls(mgmt_class=hdr.mgmt_class, method=hdr.method,
                       status=hdr.status & 0x7FFF,
                       direction=bool(hdr.status & IB_SMP_DIRECTION),
                       hop_ptr=hdr.class_specific >> 8, hop_cnt=hdr.class_specific & 0xFF,
                       tid=hdr.tid, attr_id=hdr.attr_id, attr_mod=hdr.attr_mod, mkey=mkey,
                       dr_slid=dr_slid, dr_dlid=dr_dlid, data=raw[64:128],
                       initial_path=raw[128:192], return_path=raw[192:256],
                       base_version=hdr.base_version,
                       class_version=hdr.class_version)  # fmt: skip
        return cls(mgmt_class=hdr.mgmt_class, method=hdr.method, status=hdr.status,
                   tid=hdr.tid, attr_id=hdr.attr_id, attr_mod=hdr.attr_mod, mkey=mkey,
                   data=raw[64:128], base_version=hdr.base_version,
                   class_version=hdr.class_version)  # fmt: skip


def dr_smp(path: list[int] | tuple[int, ...], *, attr_id: int, attr_mod: int = 0,
           method: int = IB_MGMT_METHOD_GET, tid: int = 0, mkey: int = 0,
           data: bytes = b"", dr_slid: int = IB_LID_PERMISSIVE,
           dr_dlid: int = IB_LID_PERMISSIVE) -> Smp:  # fmt: skip
    """A directed-route request along `path` (the out ports of hops 1..n, as
    ibnetdiscover's and smpquery -D's "0,1,3" give them after the leading 0)."""
    if len(path) >= IB_SMP_MAX_PATH_HOPS:
        raise ValueError(f"a directed route has at most 63 hops, got {len(path)}")
    if any(not 0 <= p <= 255 for p in path):
        raise ValueError(f"ports are 0..255: {list(path)}")
    initial = bytes([0, *path]).ljust(IB_SMP_MAX_PATH_HOPS, b"\0")
    return Smp(mgmt_class=IB_MGMT_CLASS_SUBN_DIRECTED_ROUTE, method=method, tid=tid,
               attr_id=attr_id, attr_mod=attr_mod, mkey=mkey, dr_slid=dr_slid,
               dr_dlid=dr_dlid, hop_cnt=len(path), data=data.ljust(64, b"\0"),
               initial_path=initial)  # fmt: skip


# ------------------------------------------------------------- directed route (smi.c)


class SmiAction(enum.Enum):
    """What a node does with a received DR SMP (smi.h's smi_action/smi_forward_action
    folded into one): hand it to its own SMA or SM, pass it out of a port (a switch), or
    drop it."""

    LOCAL = "local"
    FORWARD = "forward"
    DISCARD = "discard"


def _path_set(path: bytes, index: int, port: int) -> bytes:
    out = bytearray(path)
    out[index] = port
    return bytes(out)


def smi_handle_dr_smp_send(smp: Smp, is_switch: bool, port: int) -> Smp | None:
    """A DR SMP about to leave `port` (smi_handle_dr_smp_send, IBA C14-9 and C14-13): the
    hop pointer moved on, or None when the SMP must be discarded."""
    hop_ptr, hop_cnt = smp.hop_ptr, smp.hop_cnt
    if not smp.direction:
        if hop_cnt and hop_ptr == 0:  # C14-9:1, the source
            nxt = replace(smp, hop_ptr=1)
            return nxt if smp.initial_path[1] == port else None
        if 0 < hop_ptr < hop_cnt:  # C14-9:2, an intermediate switch
            if not is_switch:
                return None
            nxt = replace(smp, hop_ptr=hop_ptr + 1)
            return nxt if smp.initial_path[hop_ptr + 1] == port else None
        if hop_ptr == hop_cnt:  # C14-9:3, end of the DR part
            nxt = replace(smp, hop_ptr=hop_ptr + 1)
            return nxt if is_switch or smp.dr_dlid == IB_LID_PERMISSIVE else None
        # C14-9:4 hop_ptr == hop_cnt + 1 goes to the SMA/SM; C14-9:5 anything else fails
        return smp if hop_ptr == hop_cnt + 1 else None
    if hop_cnt and hop_ptr == hop_cnt + 1:  # C14-13:1, the answering node
        nxt = replace(smp, hop_ptr=hop_ptr - 1)
        return nxt if smp.return_path[hop_ptr - 1] == port else None
    if 2 <= hop_ptr <= hop_cnt:  # C14-13:2
        if not is_switch:
            return None
        nxt = replace(smp, hop_ptr=hop_ptr - 1)
        return nxt if smp.return_path[hop_ptr - 1] == port else None
    if hop_ptr == 1:  # C14-13:3, end of the DR part on the way back
        nxt = replace(smp, hop_ptr=0)
        return nxt if is_switch or smp.dr_slid == IB_LID_PERMISSIVE else None
    return smp if hop_ptr == 0 else None  # C14-13:4 to the SM; C14-13:5 fails


def smi_handle_dr_smp_recv(smp: Smp, is_switch: bool, port: int, phys_port_cnt: int,
                           ) -> Smp | None:  # fmt: skip
    """A DR SMP that arrived on `port` (smi_handle_dr_smp_recv): the return path
    recorded, or None when it must be dropped."""
    hop_ptr, hop_cnt = smp.hop_ptr, smp.hop_cnt
    if not smp.direction:
        if hop_cnt and hop_ptr == 0:  # C14-9:1, the sender should have moved it
            return None
        if 0 < hop_ptr < hop_cnt:  # C14-9:2
            if not is_switch:
                return None
            nxt = replace(smp, return_path=_path_set(smp.return_path, hop_ptr, port))
            return nxt if smp.initial_path[hop_ptr + 1] <= phys_port_cnt else None
        if hop_ptr == hop_cnt:  # C14-9:3
            nxt = smp
            if hop_cnt:
                nxt = replace(smp, return_path=_path_set(smp.return_path, hop_ptr, port))
            return nxt if is_switch or smp.dr_dlid == IB_LID_PERMISSIVE else None
        return smp if hop_ptr == hop_cnt + 1 else None  # C14-9:4, C14-9:5
    if hop_cnt and hop_ptr == hop_cnt + 1:  # C14-13:1
        nxt = replace(smp, hop_ptr=hop_ptr - 1)
        return nxt if smp.return_path[hop_ptr - 1] == port else None
    if 2 <= hop_ptr <= hop_cnt:  # C14-13:2
        if not is_switch:
            return None
        return smp if smp.return_path[hop_ptr - 1] <= phys_port_cnt else None
    if hop_ptr == 1:  # C14-13:3
        if smp.dr_slid == IB_LID_PERMISSIVE:
            return replace(smp, hop_ptr=0)  # to the SM
        return smp if is_switch else None
    return smp if hop_ptr == 0 else None  # C14-13:4, C14-13:5


def smi_check_forward_dr_smp(smp: Smp) -> str:
    """smi_check_forward_dr_smp after a good receive: "forward" (an intermediate switch
    passes it on), "send" (the end of the DR part, where the SMP continues
    LID-routed or is handed on to the SMA/SM), or "local"."""
    hop_ptr, hop_cnt = smp.hop_ptr, smp.hop_cnt
    if not smp.direction:
        if 0 < hop_ptr < hop_cnt:
            return "forward"
        if hop_ptr == hop_cnt:
            return "send" if smp.dr_dlid == IB_LID_PERMISSIVE else "local"
        if hop_ptr == hop_cnt + 1:
            return "send"
    else:
        if 2 <= hop_ptr <= hop_cnt:
            return "forward"
        if hop_ptr == 1:
            return "send" if smp.dr_slid != IB_LID_PERMISSIVE else "local"
    return "local"


def smi_get_fwd_port(smp: Smp) -> int:
    """The port a switch passes a DR SMP out of (smi_get_fwd_port)."""
    if not smp.direction:
        return smp.initial_path[smp.hop_ptr + 1]
    return smp.return_path[smp.hop_ptr - 1]


def smi_receive(smp: Smp, *, is_switch: bool, port: int, phys_port_cnt: int,
                ) -> tuple[SmiAction, Smp, int]:  # fmt: skip
    """What a node does with a DR SMP that arrived on `port`, as handle_ib_smi in mad.c:
    (LOCAL, smp as its SMA/SM sees it, 0), (FORWARD, smp as it leaves, out port) for a
    switch on the path, or (DISCARD, smp, 0)."""
    got = smi_handle_dr_smp_recv(smp, is_switch, port, phys_port_cnt)
    if got is None:
        return SmiAction.DISCARD, smp, 0
    verdict = smi_check_forward_dr_smp(got)
    if verdict == "local":
        return SmiAction.LOCAL, got, 0
    if verdict == "send":
        # handle_ib_smi: the end of the DR part; only an outbound SMP that reached its
        # destination goes to the SMA (smi_check_local_smp), Linux has no LID-routed leg
        sent = smi_handle_dr_smp_send(got, is_switch, port)
        if sent is None or sent.direction or sent.hop_ptr != sent.hop_cnt + 1:
            return SmiAction.DISCARD, got, 0
        return SmiAction.LOCAL, sent, 0
    if not is_switch:
        return SmiAction.DISCARD, got, 0
    out = smi_get_fwd_port(got)
    sent = smi_handle_dr_smp_send(got, is_switch, out)
    if sent is None:
        return SmiAction.DISCARD, got, 0
    return SmiAction.FORWARD, sent, out


def smp_answer(request: Smp, data: Buffer | None = None, status: int = 0) -> Smp:
    """The SMA's answer: GetResp, the same TID and attribute, `data` as the attribute,
    and on a DR SMP the D bit (it then goes back with smi_handle_dr_smp_send)."""
    if request.method & 0x80:
        raise ValueError(f"method {request.method:#04x} is already a response")
    body = request.data if data is None else bytes(data).ljust(IB_SMP_DATA_SIZE, b"\0")
    if len(body) > IB_SMP_DATA_SIZE:
        raise ValueError(f"an SMP's data is {IB_SMP_DATA_SIZE} bytes, got {len(body)}")
    return replace(request, method=0x81, status=status, direction=request.directed,
                   data=body)  # fmt: skip


# ------------------------------------------------------------------------ attributes


def _f(name: str, offset: int, width: int, comp: int | None = None) -> Field:
    return Field(name, offset, width, comp)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeInfo(Struct):
    """NodeInfo (IBA 14.2.5.3), 40 bytes. `comp` bits are NodeRecord's."""

    base_version: int = 1
    class_version: int = 1
    node_type: int = IB_NODE_CA
    num_ports: int = 1
    sys_guid: int = 0
    node_guid: int = 0
    port_guid: int = 0
    partition_cap: int = 0
    device_id: int = 0
    revision: int = 0
    local_port_num: int = 1
    vendor_id: int = 0

    LAYOUT: ClassVar[tuple[Field, ...]] = (
        _f("base_version", 0, 8, 2),
        _f("class_version", 8, 8, 3),
        _f("node_type", 16, 8, 4),
        _f("num_ports", 24, 8, 5),
        _f("sys_guid", 32, 64, 6),
        _f("node_guid", 96, 64, 7),
        _f("port_guid", 160, 64, 8),
        _f("partition_cap", 224, 16, 9),
        _f("device_id", 240, 16, 10),
        _f("revision", 256, 32, 11),
        _f("local_port_num", 288, 8, 12),
        _f("vendor_id", 296, 24, 13),
    )
    SIZE: ClassVar[int] = 40


@dataclass(frozen=True, slots=True)
class NodeDescription(Struct):
    """NodeDescription: 64 bytes of text, zero-padded (IBA 14.2.5.2)."""

    description: bytes = bytes(64)

    LAYOUT: ClassVar[tuple[Field, ...]] = (Field("description", 0, 512, 14, bytes),)
    SIZE: ClassVar[int] = 64

    @classmethod
    def of(cls, text: str) -> NodeDescription:
        raw = text.encode()
        if len(raw) > 64:
            raise ValueError(f"a node description is at most 64 bytes, got {len(raw)}")
        return cls(raw.ljust(64, b"\0"))

    @property
    def text(self) -> str:
        return self.description.split(b"\0", 1)[0].decode(errors="replace")


@dataclass(frozen=True, slots=True, kw_only=True)
class PortInfo(Struct):
    """PortInfo (IBA 14.2.5.6), 64 bytes, every field. `comp` bits are PortInfoRecord's
    (IB_PIR_COMPMASK_*): the record's LID, port and options take bits 0-2."""

    mkey: int = 0
    gid_prefix: int = 0
    lid: int = 0
    master_sm_lid: int = 0
    capability_mask: int = 0
    diag_code: int = 0
    mkey_lease_period: int = 0
    local_port_num: int = 0
    link_width_enabled: int = 0
    link_width_supported: int = 0
    link_width_active: int = 0
    link_speed_supported: int = 0
    port_state: int = 0
    phys_state: int = 0
    link_down_default_state: int = 0
    mkey_protect_bits: int = 0
    lmc: int = 0
    link_speed_active: int = 0
    link_speed_enabled: int = 0
    neighbor_mtu: int = 0
    master_sm_sl: int = 0
    vl_cap: int = 0
    init_type: int = 0
    vl_high_limit: int = 0
    vl_arb_high_cap: int = 0
    vl_arb_low_cap: int = 0
    init_type_reply: int = 0
    mtu_cap: int = 0
    vl_stall_count: int = 0
    hoq_life: int = 0
    operational_vls: int = 0
    partition_enforcement_inbound: int = 0
    partition_enforcement_outbound: int = 0
    filter_raw_inbound: int = 0
    filter_raw_outbound: int = 0
    mkey_violations: int = 0
    pkey_violations: int = 0
    qkey_violations: int = 0
    guid_cap: int = 0
    client_reregister: int = 0
    mcast_pkey_trap_suppression: int = 0
    subnet_timeout: int = 0
    resp_time_value: int = 0
    local_phy_errors: int = 0
    overrun_errors: int = 0
    max_credit_hint: int = 0
    link_speed_ext_active2: int = 0
    link_speed_ext_supported2: int = 0
    link_speed_ext_enabled2: int = 0
    link_round_trip_latency: int = 0
    capability_mask2: int = 0
    link_speed_ext_active: int = 0
    link_speed_ext_supported: int = 0
    link_speed_ext_enabled: int = 0

    LAYOUT: ClassVar[tuple[Field, ...]] = (
        _f("mkey", 0, 64, 3),
        _f("gid_prefix", 64, 64, 4),
        _f("lid", 128, 16, 5),
        _f("master_sm_lid", 144, 16, 6),
        _f("capability_mask", 160, 32, 7),
        _f("diag_code", 192, 16, 8),
        _f("mkey_lease_period", 208, 16, 9),
        _f("local_port_num", 224, 8, 10),
        _f("link_width_enabled", 232, 8, 11),
        _f("link_width_supported", 240, 8, 12),
        _f("link_width_active", 248, 8, 13),
        _f("link_speed_supported", 256, 4, 14),
        _f("port_state", 260, 4, 15),
        _f("phys_state", 264, 4, 16),
        _f("link_down_default_state", 268, 4, 17),
        _f("mkey_protect_bits", 272, 2, 18),
        _f("lmc", 277, 3, 20),
        _f("link_speed_active", 280, 4, 21),
        _f("link_speed_enabled", 284, 4, 22),
        _f("neighbor_mtu", 288, 4, 23),
        _f("master_sm_sl", 292, 4, 24),
        _f("vl_cap", 296, 4, 25),
        _f("init_type", 300, 4, 26),
        _f("vl_high_limit", 304, 8, 27),
        _f("vl_arb_high_cap", 312, 8, 28),
        _f("vl_arb_low_cap", 320, 8, 29),
        _f("init_type_reply", 328, 4, 30),
        _f("mtu_cap", 332, 4, 31),
        _f("vl_stall_count", 336, 3, 32),
        _f("hoq_life", 339, 5, 33),
        _f("operational_vls", 344, 4, 34),
        _f("partition_enforcement_inbound", 348, 1, 35),
        _f("partition_enforcement_outbound", 349, 1, 36),
        _f("filter_raw_inbound", 350, 1, 37),
        _f("filter_raw_outbound", 351, 1, 38),
        _f("mkey_violations", 352, 16, 39),
        _f("pkey_violations", 368, 16, 40),
        _f("qkey_violations", 384, 16, 41),
        _f("guid_cap", 400, 8, 42),
        _f("client_reregister", 408, 1, 43),
        _f("mcast_pkey_trap_suppression", 409, 2, 44),
        _f("subnet_timeout", 411, 5, 45),
        _f("resp_time_value", 419, 5, 47),
        _f("local_phy_errors", 424, 4, 48),
        _f("overrun_errors", 428, 4, 49),
        _f("max_credit_hint", 432, 16, 50),
        _f("link_speed_ext_active2", 449, 2),
        _f("link_speed_ext_supported2", 451, 2),
        _f("link_speed_ext_enabled2", 453, 3),
        _f("link_round_trip_latency", 456, 24, 52),
        _f("capability_mask2", 480, 16, 53),
        _f("link_speed_ext_active", 496, 4, 54),
        _f("link_speed_ext_supported", 500, 4, 55),
        _f("link_speed_ext_enabled", 507, 5, 57),
    )
    SIZE: ClassVar[int] = 64


def _u16_table(count: int) -> struct.Struct:
    return struct.Struct(f"!{count}H")


_PKEYS = _u16_table(32)
_MFT = _u16_table(32)
_GUIDS = struct.Struct("!8Q")


def _table(values: tuple[int, ...], count: int, name: str) -> tuple[int, ...]:
    if len(values) > count:
        raise ValueError(f"{name}: {count} entries per block, got {len(values)}")
    return (*values, *(0,) * (count - len(values)))


def _pad_block(table: object, name: str, attr: str, count: int) -> None:
    """A block given with fewer entries is zero-filled, so that equal blocks compare
    equal whichever way they were built."""
    object.__setattr__(table, attr, _table(tuple(getattr(table, attr)), count, name))


@dataclass(frozen=True, slots=True)
class PKeyTable(Struct):
    """P_KeyTable (IBA 14.2.5.7): one block of 32 P_Keys; the attribute modifier is the
    block number (and, on a switch, the port in bits 16-31)."""

    pkeys: tuple[int, ...] = ()

    SIZE: ClassVar[int] = 64
    ENTRIES: ClassVar[int] = 32

    def __post_init__(self) -> None:
        _pad_block(self, "P_KeyTable", "pkeys", 32)

    def pack(self) -> bytes:
        try:
            return _PKEYS.pack(*_table(self.pkeys, 32, "P_KeyTable"))
        except struct.error as e:
            raise ValueError(f"P_KeyTable: {e}") from None

    @classmethod
    def unpack(cls, data: Buffer) -> Self:
        return cls(_PKEYS.unpack(bytes(data[:64]).ljust(64, b"\0")))


@dataclass(frozen=True, slots=True)
class GuidInfo(Struct):
    """GUIDInfo (IBA 14.2.5.5): one block of 8 GUIDs; the modifier is the block."""

    guids: tuple[int, ...] = ()

    SIZE: ClassVar[int] = 64
    ENTRIES: ClassVar[int] = 8

    def __post_init__(self) -> None:
        _pad_block(self, "GUIDInfo", "guids", 8)

    def pack(self) -> bytes:
        try:
            return _GUIDS.pack(*_table(self.guids, 8, "GUIDInfo"))
        except struct.error as e:
            raise ValueError(f"GUIDInfo: {e}") from None

    @classmethod
    def unpack(cls, data: Buffer) -> Self:
        return cls(_GUIDS.unpack(bytes(data[:64]).ljust(64, b"\0")))


@dataclass(frozen=True, slots=True)
class LinearForwardingTable(Struct):
    """LinearForwardingTable (IBA 14.2.5.10): the out ports of 64 LIDs, block n holding
    LIDs 64n..64n+63 (the modifier is n); 255 is "no route"."""

    ports: tuple[int, ...] = ()

    SIZE: ClassVar[int] = 64
    ENTRIES: ClassVar[int] = 64

    def __post_init__(self) -> None:
        _pad_block(self, "LinearForwardingTable", "ports", 64)

    def pack(self) -> bytes:
        ports = _table(self.ports, 64, "LinearForwardingTable")
        if any(not 0 <= p <= 255 for p in ports):
            raise ValueError(f"LinearForwardingTable: ports are 0..255, got {ports}")
        return bytes(ports)

    @classmethod
    def unpack(cls, data: Buffer) -> Self:
        return cls(tuple(bytes(data[:64]).ljust(64, b"\0")))


@dataclass(frozen=True, slots=True)
class MulticastForwardingTable(Struct):
    """MulticastForwardingTable (IBA 14.2.5.12): 32 port masks, one per MLID from
    0xC000 + 32 * block; each mask covers 16 ports, from 16 * position."""

    masks: tuple[int, ...] = ()

    SIZE: ClassVar[int] = 64
    ENTRIES: ClassVar[int] = 32

    def __post_init__(self) -> None:
        _pad_block(self, "MulticastForwardingTable", "masks", 32)

    def pack(self) -> bytes:
        try:
            return _MFT.pack(*_table(self.masks, 32, "MulticastForwardingTable"))
        except struct.error as e:
            raise ValueError(f"MulticastForwardingTable: {e}") from None

    @classmethod
    def unpack(cls, data: Buffer) -> Self:
        return cls(_MFT.unpack(bytes(data[:64]).ljust(64, b"\0")))


def mft_attr_mod(block: int, position: int) -> int:
    """The MFT's attribute modifier: the port-mask position in bits 28-31, the block of
    32 MLIDs in bits 0-8."""
    if not 0 <= block < 512 or not 0 <= position < 16:
        raise ValueError(f"MFT block {block} (0..511), position {position} (0..15)")
    return position << 28 | block


def mft_block_position(attr_mod: int) -> tuple[int, int]:
    return attr_mod & 0x1FF, attr_mod >> 28 & 0xF


@dataclass(frozen=True, slots=True, kw_only=True)
class SwitchInfo(Struct):
    """SwitchInfo (IBA 14.2.5.4)."""

    linear_fdb_cap: int = 0
    random_fdb_cap: int = 0
    mcast_fdb_cap: int = 0
    linear_fdb_top: int = 0
    default_port: int = 0
    default_mcast_primary_port: int = 0
    default_mcast_not_primary_port: int = 0
    life_time_value: int = 0
    port_state_change: int = 0
    optimized_sl_to_vl_mapping: int = 0
    lids_per_port: int = 0
    partition_enforcement_cap: int = 0
    inbound_enforcement_cap: int = 0
    outbound_enforcement_cap: int = 0
    filter_raw_inbound_cap: int = 0
    filter_raw_outbound_cap: int = 0
    enhanced_port0: int = 0
    mcast_fdb_top: int = 0

    LAYOUT: ClassVar[tuple[Field, ...]] = (
        _f("linear_fdb_cap", 0, 16),
        _f("random_fdb_cap", 16, 16),
        _f("mcast_fdb_cap", 32, 16),
        _f("linear_fdb_top", 48, 16),
        _f("default_port", 64, 8),
        _f("default_mcast_primary_port", 72, 8),
        _f("default_mcast_not_primary_port", 80, 8),
        _f("life_time_value", 88, 5),
        _f("port_state_change", 93, 1),
        _f("optimized_sl_to_vl_mapping", 94, 2),
        _f("lids_per_port", 96, 16),
        _f("partition_enforcement_cap", 112, 16),
        _f("inbound_enforcement_cap", 128, 1),
        _f("outbound_enforcement_cap", 129, 1),
        _f("filter_raw_inbound_cap", 130, 1),
        _f("filter_raw_outbound_cap", 131, 1),
        _f("enhanced_port0", 132, 1),
        _f("mcast_fdb_top", 144, 16),
    )
    SIZE: ClassVar[int] = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class SMInfo(Struct):
    """SMInfo (IBA 14.2.5.13), what sminfo prints."""

    guid: int = 0
    sm_key: int = 0
    act_count: int = 0
    priority: int = 0
    state: int = 0

    LAYOUT: ClassVar[tuple[Field, ...]] = (
        _f("guid", 0, 64),
        _f("sm_key", 64, 64),
        _f("act_count", 128, 32),
        _f("priority", 160, 4),
        _f("state", 164, 4),
    )
    SIZE: ClassVar[int] = 21


#: the attribute type of each SMP attribute ID this module lays out
SMP_ATTRIBUTES: dict[int, type[Struct]] = {
    IB_SMP_ATTR_NODE_DESC: NodeDescription,
    IB_SMP_ATTR_NODE_INFO: NodeInfo,
    IB_SMP_ATTR_SWITCH_INFO: SwitchInfo,
    IB_SMP_ATTR_GUID_INFO: GuidInfo,
    IB_SMP_ATTR_PORT_INFO: PortInfo,
    IB_SMP_ATTR_PKEY_TABLE: PKeyTable,
    IB_SMP_ATTR_LINEAR_FORWARD_TABLE: LinearForwardingTable,
    IB_SMP_ATTR_MCAST_FORWARD_TABLE: MulticastForwardingTable,
    IB_SMP_ATTR_SM_INFO: SMInfo,
}
