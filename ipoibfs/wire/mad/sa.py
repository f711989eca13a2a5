"""Subnet administration (IBA 15.2): the SA MAD (struct ib_sa_mad), its records, and the
component-mask matching an SA answers queries with.

An SA MAD is the common header, the RMPP header (12 bytes), the SA header (SM_Key, the
attribute offset, the component mask: 20 bytes) and 200 bytes of data. A GetTable answer
is one message of any length (RMPP cuts it into MADs, rmpp.py): its records follow each
other every `attr_offset` 8-byte words. A Get answer with no record is status
IB_SA_MAD_STATUS_NO_RECORDS; a GetTable answer with none has attr_offset 0 and no data
(osm_sa_respond).

Records are laid out from the IBA tables as OpenSM's ib_types.h and libibmad's fields.c
give them, padded to a multiple of 8 bytes as they sit in a table; each field's `comp` is
its component-mask bit (ib_sa.h's IB_SA_*_REC_*, OpenSM's IB_*_COMPMASK_*).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar, Self

from .common import (
    IB_MGMT_BASE_VERSION,
    IB_MGMT_CLASS_SUBN_ADM,
    IB_MGMT_METHOD_GET,
    IB_MGMT_METHOD_GET_TABLE,
    IB_MGMT_METHOD_RESP,
    IB_MGMT_METHOD_SET,
    IB_MGMT_SA_HDR,
    IB_SA_CLASS_VERSION,
    MAD_SIZE,
    MadHdr,
)
from .layout import Buffer, Field, Struct, comp_match
from .rmpp import (
    IB_MGMT_RMPP_FLAG_ACTIVE,
    IB_MGMT_RMPP_TYPE_DATA,
    IB_MGMT_RMPP_VERSION,
    RmppHdr,
)
from .smp import (
    LinearForwardingTable,
    MulticastForwardingTable,
    NodeDescription,
    NodeInfo,
    PKeyTable,
    PortInfo,
    SwitchInfo,
)

IB_SA_DATA_SIZE = MAD_SIZE - IB_MGMT_SA_HDR

# Attribute IDs (ib_sa.h)
IB_SA_ATTR_CLASS_PORTINFO = 0x01
IB_SA_ATTR_NOTICE = 0x02
IB_SA_ATTR_INFORM_INFO = 0x03
IB_SA_ATTR_NODE_REC = 0x11
IB_SA_ATTR_PORT_INFO_REC = 0x12
IB_SA_ATTR_SL2VL_REC = 0x13
IB_SA_ATTR_SWITCH_REC = 0x14
IB_SA_ATTR_LINEAR_FDB_REC = 0x15
IB_SA_ATTR_RANDOM_FDB_REC = 0x16
IB_SA_ATTR_MCAST_FDB_REC = 0x17
IB_SA_ATTR_SM_INFO_REC = 0x18
IB_SA_ATTR_LINK_REC = 0x20
IB_SA_ATTR_GUID_INFO_REC = 0x30
IB_SA_ATTR_SERVICE_REC = 0x31
IB_SA_ATTR_PARTITION_REC = 0x33
IB_SA_ATTR_PATH_REC = 0x35
IB_SA_ATTR_VL_ARB_REC = 0x36
IB_SA_ATTR_MC_MEMBER_REC = 0x38
IB_SA_ATTR_TRACE_REC = 0x39
IB_SA_ATTR_MULTI_PATH_REC = 0x3A
IB_SA_ATTR_SERVICE_ASSOC_REC = 0x3B
IB_SA_ATTR_INFORM_INFO_REC = 0xF3

# Status, class-specific bits 8-15 (IB_SA_MAD_STATUS_*)
IB_SA_MAD_STATUS_NO_RESOURCES = 0x0100
IB_SA_MAD_STATUS_REQ_INVALID = 0x0200
IB_SA_MAD_STATUS_NO_RECORDS = 0x0300
IB_SA_MAD_STATUS_TOO_MANY_RECORDS = 0x0400
IB_SA_MAD_STATUS_INVALID_GID = 0x0500
IB_SA_MAD_STATUS_INSUF_COMPS = 0x0600
IB_SA_MAD_STATUS_DENIED = 0x0700
IB_SA_MAD_STATUS_PRIO_SUGGESTED = 0x0800

# MCMemberRecord.join_state bits
IB_JOIN_STATE_FULL = 1
IB_JOIN_STATE_NON = 2
IB_JOIN_STATE_SEND_ONLY = 4
IB_JOIN_STATE_SEND_ONLY_FULL = 8

_SA_HDR = struct.Struct("!QHHQ")


def attr_offset_words(record_size: int) -> int:
    """A table's AttributeOffset: the record's size in 8-byte words, rounded up."""
    return (record_size + 7) // 8


@dataclass(frozen=True, slots=True, kw_only=True)
class SaMad:
    """An SA MAD, or a whole reassembled SA message when `data` is longer than 200
    bytes (what user_mad.c hands a reader: the first MAD's headers, then every
    segment's data)."""

    method: int = IB_MGMT_METHOD_GET
    status: int = 0
    tid: int = 0
    attr_id: int = 0
    attr_mod: int = 0
    rmpp: RmppHdr = field(default_factory=RmppHdr)
    sm_key: int = 0
    attr_offset: int = 0
    comp_mask: int = 0
    data: bytes = b""
    class_version: int = IB_SA_CLASS_VERSION
    base_version: int = IB_MGMT_BASE_VERSION

    HDR_SIZE: ClassVar[int] = IB_MGMT_SA_HDR

    @property
    def hdr(self) -> MadHdr:
        return MadHdr(base_version=self.base_version, mgmt_class=IB_MGMT_CLASS_SUBN_ADM,
                      class_version=self.class_version, method=self.method,
                      status=self.status, tid=self.tid, attr_id=self.attr_id,
                      attr_mod=self.attr_mod)  # fmt: skip

    def pack(self) -> bytes:
        """The MAD's bytes: 256 when the data fits one MAD, else the whole message."""
        try:
            sa = _SA_HDR.pack(self.sm_key, self.attr_offset, 0, self.comp_mask)
        except struct.error as e:
            raise ValueError(f"SA header: {e}") from None
        out = self.hdr.pack() + self.rmpp.pack() + sa + self.data
        return out.ljust(MAD_SIZE, b"\0")

    @classmethod
    def unpack(cls, data: Buffer) -> Self:
        if len(data) < IB_MGMT_SA_HDR:
            raise ValueError(f"an SA MAD is at least {IB_MGMT_SA_HDR} bytes, got {len(data)}")
        raw = bytes(data)
        hdr = MadHdr.unpack(raw)
        if hdr.mgmt_class != IB_MGMT_CLASS_SUBN_ADM:
            raise ValueError(f"management class {hdr.mgmt_class:#04x} is not the SA's")
        sm_key, attr_offset, _res, comp_mask = _SA_HDR.unpack_from(raw, 36)
        return cls(method=hdr.method, status=hdr.status, tid=hdr.tid, attr_id=hdr.attr_id,
                   attr_mod=hdr.attr_mod, rmpp=RmppHdr.unpack(raw), sm_key=sm_key,
                   attr_offset=attr_offset, comp_mask=comp_mask,
                   data=raw[IB_MGMT_SA_HDR:], class_version=hdr.class_version,
                   base_version=hdr.base_version)  # fmt: skip

    def records(self) -> list[bytes]:
        """The records of a GetTable answer (or the one of a Get answer: the data)."""
        if self.method != IB_MGMT_METHOD_GET_TABLE | IB_MGMT_METHOD_RESP:
            return [self.data]
        return split_records(self.data, self.attr_offset)


def split_records(data: bytes, attr_offset: int) -> list[bytes]:
    """A table's records, every `attr_offset` 8-byte words (the trailing zero padding of
    the last MAD is not a record: a table's length is a whole number of records)."""
    if attr_offset == 0:
        return []
    size = attr_offset * 8
    return [data[i : i + size] for i in range(0, len(data) - size + 1, size)]


def sa_request(method: int, attr_id: int, record: Struct | bytes = b"", *,
               comp_mask: int = 0, tid: int = 0, attr_mod: int = 0,
               sm_key: int = 0) -> SaMad:  # fmt: skip
    """A query as saquery and ib_sa build it: RMPP version 1, not active."""
    data = record if isinstance(record, bytes) else record.pack()
    return SaMad(method=method, tid=tid, attr_id=attr_id, attr_mod=attr_mod,
                 rmpp=RmppHdr(version=IB_MGMT_RMPP_VERSION), sm_key=sm_key,
                 comp_mask=comp_mask, data=data)  # fmt: skip


def sa_response(request: SaMad, records: Sequence[Struct | bytes] = (), status: int = 0,
                *, record_size: int | None = None) -> SaMad:  # fmt: skip
    """The SA's answer, as osm_sa_respond makes it: the request's header with the
    response method (Set is answered by GetResp), SM_Key 0, and

    - Get/Set: the one record, or IB_SA_MAD_STATUS_NO_RECORDS / TOO_MANY_RECORDS;
    - GetTable: every record at `attr_offset` words (0 with none), RMPP DATA active, as
      one message for rmpp.segments to cut.

    `status` other than 0 gives an answer with the request's data and that status."""
    method = request.method
    is_table = method == IB_MGMT_METHOD_GET_TABLE
    answer = (IB_MGMT_METHOD_GET if method == IB_MGMT_METHOD_SET else method) | 0x80
    raws = [r if isinstance(r, bytes) else r.pack() for r in records]
    if not status and not is_table:
        if not raws:
            status = IB_SA_MAD_STATUS_NO_RECORDS
        elif len(raws) > 1:
            status = IB_SA_MAD_STATUS_TOO_MANY_RECORDS
    base = SaMad(method=answer, status=status, tid=request.tid, attr_id=request.attr_id,
                 attr_mod=request.attr_mod, rmpp=RmppHdr(version=IB_MGMT_RMPP_VERSION),
                 comp_mask=request.comp_mask, class_version=request.class_version,
                 base_version=request.base_version)  # fmt: skip
    if status:
        return replace(base, data=request.data[:IB_SA_DATA_SIZE])
    if not is_table:
        return replace(base, data=raws[0])
    size = record_size if record_size is not None else max((len(r) for r in raws), default=0)
    offset = attr_offset_words(size) if raws else 0
    if any(len(r) > offset * 8 for r in raws):
        raise ValueError(f"a record is longer than the table's {offset * 8}-byte stride")
    data = b"".join(r.ljust(offset * 8, b"\0") for r in raws)
    rmpp = RmppHdr(version=IB_MGMT_RMPP_VERSION, type=IB_MGMT_RMPP_TYPE_DATA,
                   flags=IB_MGMT_RMPP_FLAG_ACTIVE)  # fmt: skip
    return replace(base, rmpp=rmpp, attr_offset=offset, data=data)


def matching(template: Struct, candidates: Iterable[Struct], comp_mask: int) -> list[Struct]:
    """The candidates that match a query's template under its component mask."""
    return [c for c in candidates if comp_match(template, c, comp_mask)]


def _f(name: str, offset: int, width: int, comp: int | None = None, kind: object = None,
       selector: str | None = None) -> Field:  # fmt: skip
    return Field(name, offset, width, comp, kind, selector)


_GID = bytes(16)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeRecord(Struct):
    """NodeRecord (IBA 15.2.5.2): LID, NodeInfo, NodeDescription; 108 bytes, 112 in a
    table."""

    lid: int = 0
    node_info: NodeInfo = field(default_factory=NodeInfo)
    node_desc: NodeDescription = field(default_factory=NodeDescription)

    LAYOUT: ClassVar[tuple[Field, ...]] = (
        _f("lid", 0, 16, 0),
        _f("node_info", 32, 320, None, NodeInfo),
        _f("node_desc", 352, 512, None, NodeDescription),
    )
    SIZE: ClassVar[int] = 112


@dataclass(frozen=True, slots=True, kw_only=True)
class PortInfoRecord(Struct):
    """PortInfoRecord (IBA 15.2.5.3): LID, port, options, PortInfo; 72 bytes."""

    lid: int = 0
    port_num: int = 0
    options: int = 0
    port_info: PortInfo = field(default_factory=PortInfo)

    LAYOUT: ClassVar[tuple[Field, ...]] = (
        _f("lid", 0, 16, 0),
        _f("port_num", 16, 8, 1),
        _f("options", 24, 8, 2),
        _f("port_info", 32, 512, None, PortInfo),
    )
    SIZE: ClassVar[int] = 72


@dataclass(frozen=True, slots=True, kw_only=True)
class PathRecord(Struct):
    """PathRecord (IBA 15.2.5.16), 64 bytes. ServiceID's mask is bits 0 and 1 (it was two
    reserved words once); `comp` gives bit 0."""

    service_id: int = 0
    dgid: bytes = _GID
    sgid: bytes = _GID
    dlid: int = 0
    slid: int = 0
    raw_traffic: int = 0
    flow_label: int = 0
    hop_limit: int = 0
    tclass: int = 0
    reversible: int = 0
    num_path: int = 0
    pkey: int = 0
    qos_class: int = 0
    sl: int = 0
    mtu_selector: int = 0
    mtu: int = 0
    rate_selector: int = 0
    rate: int = 0
    packet_life_time_selector: int = 0
    packet_life_time: int = 0
    preference: int = 0

    LAYOUT: ClassVar[tuple[Field, ...]] = (
        _f("service_id", 0, 64, 0),
        _f("dgid", 64, 128, 2, bytes),
        _f("sgid", 192, 128, 3, bytes),
        _f("dlid", 320, 16, 4),
        _f("slid", 336, 16, 5),
        _f("raw_traffic", 352, 1, 6),
        _f("flow_label", 356, 20, 8),
        _f("hop_limit", 376, 8, 9),
        _f("tclass", 384, 8, 10),
        _f("reversible", 392, 1, 11),
        _f("num_path", 393, 7, 12),
        _f("pkey", 400, 16, 13),
        _f("qos_class", 416, 12, 14),
        _f("sl", 428, 4, 15),
        _f("mtu_selector", 432, 2, 16),
        _f("mtu", 434, 6, 17, None, "mtu_selector"),
        _f("rate_selector", 440, 2, 18),
        _f("rate", 442, 6, 19, None, "rate_selector"),
        _f("packet_life_time_selector", 448, 2, 20),
        _f("packet_life_time", 450, 6, 21, None, "packet_life_time_selector"),
        _f("preference", 456, 8, 22),
    )
    SIZE: ClassVar[int] = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class MCMemberRecord(Struct):
    """MCMemberRecord (IBA 15.2.5.17): 52 bytes, 56 in a table."""

    mgid: bytes = _GID
    port_gid: bytes = _GID
    qkey: int = 0
    mlid: int = 0
    mtu_selector: int = 0
    mtu: int = 0
    tclass: int = 0
    pkey: int = 0
    rate_selector: int = 0
    rate: int = 0
    packet_life_time_selector: int = 0
    packet_life_time: int = 0
    sl: int = 0
    flow_label: int = 0
    hop_limit: int = 0
    scope: int = 0
    join_state: int = 0
    proxy_join: int = 0

    LAYOUT: ClassVar[tuple[Field, ...]] = (
        _f("mgid", 0, 128, 0, bytes),
        _f("port_gid", 128, 128, 1, bytes),
        _f("qkey", 256, 32, 2),
        _f("mlid", 288, 16, 3),
        _f("mtu_selector", 304, 2, 4),
        _f("mtu", 306, 6, 5, None, "mtu_selector"),
        _f("tclass", 312, 8, 6),
        _f("pkey", 320, 16, 7),
        _f("rate_selector", 336, 2, 8),
        _f("rate", 338, 6, 9, None, "rate_selector"),
        _f("packet_life_time_selector", 344, 2, 10),
        _f("packet_life_time", 346, 6, 11, None, "packet_life_time_selector"),
        _f("sl", 352, 4, 12),
        _f("flow_label", 356, 20, 13),
        _f("hop_limit", 376, 8, 14),
        _f("scope", 384, 4, 15),
        _f("join_state", 388, 4, 16),
        _f("proxy_join", 392, 1, 17),
    )
    SIZE: ClassVar[int] = 56


@dataclass(frozen=True, slots=True, kw_only=True)
class PKeyTableRecord(Struct):
    """P_KeyTableRecord (IBA 15.2.5.11): LID, block, port (switches), a P_KeyTable
    block; 72 bytes."""

    lid: int = 0
    block_num: int = 0
    port_num: int = 0
    pkey_table: PKeyTable = field(default_factory=PKeyTable)

    LAYOUT: ClassVar[tuple[Field, ...]] = (
        _f("lid", 0, 16, 0),
        _f("block_num", 16, 16, 1),
        _f("port_num", 32, 8, 2),
        _f("pkey_table", 64, 512, None, PKeyTable),
    )
    SIZE: ClassVar[int] = 72


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkRecord(Struct):
    """LinkRecord (IBA 15.2.5.13): one direction of a link; 6 bytes, 8 in a table."""

    from_lid: int = 0
    from_port_num: int = 0
    to_port_num: int = 0
    to_lid: int = 0

    LAYOUT: ClassVar[tuple[Field, ...]] = (
        _f("from_lid", 0, 16, 0),
        _f("from_port_num", 16, 8, 1),
        _f("to_port_num", 24, 8, 2),
        _f("to_lid", 32, 16, 3),
    )
    SIZE: ClassVar[int] = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class SwitchInfoRecord(Struct):
    """SwitchInfoRecord (IBA 15.2.5.4): a switch's LID and SwitchInfo; 24 bytes."""

    lid: int = 0
    switch_info: SwitchInfo = field(default_factory=SwitchInfo)

    LAYOUT: ClassVar[tuple[Field, ...]] = (
        _f("lid", 0, 16, 0),
        _f("switch_info", 32, 160, None, SwitchInfo),
    )
    SIZE: ClassVar[int] = 24


@dataclass(frozen=True, slots=True, kw_only=True)
class LFTRecord(Struct):
    """LinearForwardingTableRecord (IBA 15.2.5.6): LID, block, 64 ports; 72 bytes."""

    lid: int = 0
    block_num: int = 0
    lft: LinearForwardingTable = field(default_factory=LinearForwardingTable)

    LAYOUT: ClassVar[tuple[Field, ...]] = (
        _f("lid", 0, 16, 0),
        _f("block_num", 16, 16, 1),
        _f("lft", 64, 512, None, LinearForwardingTable),
    )
    SIZE: ClassVar[int] = 72


@dataclass(frozen=True, slots=True, kw_only=True)
class MFTRecord(Struct):
    """MulticastForwardingTableRecord (IBA 15.2.5.8): LID, position (bits 12-15) and block
    (bits 0-8) of the 16-bit PositionBlockNum, then 32 port masks; 72 bytes."""

    lid: int = 0
    position: int = 0
    block_num: int = 0
    mft: MulticastForwardingTable = field(default_factory=MulticastForwardingTable)

    LAYOUT: ClassVar[tuple[Field, ...]] = (
        _f("lid", 0, 16, 0),
        _f("position", 16, 4, 1),
        _f("block_num", 23, 9, 3),
        _f("mft", 64, 512, None, MulticastForwardingTable),
    )
    SIZE: ClassVar[int] = 72


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceRecord(Struct):
    """ServiceRecord (IBA 15.2.5.14), 176 bytes. The data arrays are raw bytes here (their
    per-element mask bits 7-36 are not matched)."""

    service_id: int = 0
    service_gid: bytes = _GID
    service_pkey: int = 0
    service_lease: int = 0
    service_key: bytes = bytes(16)
    service_name: bytes = bytes(64)
    service_data8: bytes = bytes(16)
    service_data16: bytes = bytes(16)
    service_data32: bytes = bytes(16)
    service_data64: bytes = bytes(16)

    LAYOUT: ClassVar[tuple[Field, ...]] = (
        _f("service_id", 0, 64, 0),
        _f("service_gid", 64, 128, 1, bytes),
        _f("service_pkey", 192, 16, 2),
        _f("service_lease", 224, 32, 4),
        _f("service_key", 256, 128, 5, bytes),
        _f("service_name", 384, 512, 6, bytes),
        _f("service_data8", 896, 128, None, bytes),
        _f("service_data16", 1024, 128, None, bytes),
        _f("service_data32", 1152, 128, None, bytes),
        _f("service_data64", 1280, 128, None, bytes),
    )
    SIZE: ClassVar[int] = 176


@dataclass(frozen=True, slots=True, kw_only=True)
class InformInfo(Struct):
    """InformInfo (IBA 13.4.8.3), a subscription to traps: 36 bytes. For a generic trap
    `trap_num_or_dev_id` is the trap number and `producer_or_vendor` the producer type;
    for a vendor one, the device ID and the vendor ID."""

    gid: bytes = _GID
    lid_range_begin: int = 0
    lid_range_end: int = 0
    is_generic: int = 0
    subscribe: int = 0
    type: int = 0
    trap_num_or_dev_id: int = 0
    qpn: int = 0
    resp_time_value: int = 0
    producer_or_vendor: int = 0

    LAYOUT: ClassVar[tuple[Field, ...]] = (
        _f("gid", 0, 128, None, bytes),
        _f("lid_range_begin", 128, 16),
        _f("lid_range_end", 144, 16),
        _f("is_generic", 176, 8),
        _f("subscribe", 184, 8),
        _f("type", 192, 16),
        _f("trap_num_or_dev_id", 208, 16),
        _f("qpn", 224, 24),
        _f("resp_time_value", 251, 5),
        _f("producer_or_vendor", 264, 24),
    )
    SIZE: ClassVar[int] = 36


@dataclass(frozen=True, slots=True, kw_only=True)
class InformInfoRecord(Struct):
    """InformInfoRecord (IBA 15.2.5.12): the subscriber's GID, its Enum, the InformInfo;
    64 bytes."""

    subscriber_gid: bytes = _GID
    enum: int = 0
    inform_info: InformInfo = field(default_factory=InformInfo)

    LAYOUT: ClassVar[tuple[Field, ...]] = (
        _f("subscriber_gid", 0, 128, 0, bytes),
        _f("enum", 128, 16, 1),
        _f("inform_info", 192, 288, None, InformInfo),
    )
    SIZE: ClassVar[int] = 64


#: Generic traps the SM raises (IBA 13.4.8.2, ib_types.h): a port's GID in and out of service.
TRAP_GID_IN_SERVICE = 64
TRAP_GID_OUT_OF_SERVICE = 65
NOTICE_TYPE_SUBN_MGMT = 4  # the type of traps 64-67
NOTICE_PRODUCER_CLASS_MANAGER = 4  # ProducerType: the SM


@dataclass(frozen=True, slots=True, kw_only=True)
class Notice(Struct):
    """Notice (IBA 13.4.8.2), what a Report carries: 80 bytes. For traps 64 and 65 the
    data details hold the GID at their byte 6."""

    is_generic: int = 1
    type: int = 0
    producer_or_vendor: int = 0
    trap_num_or_dev_id: int = 0
    issuer_lid: int = 0
    toggle: int = 0
    count: int = 0
    data_details: bytes = bytes(54)
    issuer_gid: bytes = _GID

    LAYOUT: ClassVar[tuple[Field, ...]] = (
        _f("is_generic", 0, 1),
        _f("type", 1, 7),
        _f("producer_or_vendor", 8, 24),
        _f("trap_num_or_dev_id", 32, 16),
        _f("issuer_lid", 48, 16),
        _f("toggle", 64, 1),
        _f("count", 65, 15),
        _f("data_details", 80, 432, None, bytes),
        _f("issuer_gid", 512, 128, None, bytes),
    )
    SIZE: ClassVar[int] = 80


#: the record type of each SA attribute ID this module lays out
SA_RECORDS: dict[int, type[Struct]] = {
    IB_SA_ATTR_NODE_REC: NodeRecord,
    IB_SA_ATTR_PORT_INFO_REC: PortInfoRecord,
    IB_SA_ATTR_SWITCH_REC: SwitchInfoRecord,
    IB_SA_ATTR_LINEAR_FDB_REC: LFTRecord,
    IB_SA_ATTR_MCAST_FDB_REC: MFTRecord,
    IB_SA_ATTR_LINK_REC: LinkRecord,
    IB_SA_ATTR_SERVICE_REC: ServiceRecord,
    IB_SA_ATTR_INFORM_INFO_REC: InformInfoRecord,
    IB_SA_ATTR_PARTITION_REC: PKeyTableRecord,
    IB_SA_ATTR_PATH_REC: PathRecord,
    IB_SA_ATTR_MC_MEMBER_REC: MCMemberRecord,
    IB_SA_ATTR_INFORM_INFO: InformInfo,
}
