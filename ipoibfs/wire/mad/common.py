"""The common MAD header (IBA 13.4.2, struct ib_mad_hdr), classes, methods, status codes,
and the answer to a request.

A MAD is 256 bytes: this 24-byte header, then the class's own header and data. Byte 3 is
the method with its response bit (0x80) on top; bytes 4-5 the status, which on a
directed-route SMP is the D bit (0x8000) and a 15-bit status, followed there by the hop
pointer and count where other classes have the class-specific field.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, Self

from .layout import Buffer, Field, Struct

MAD_SIZE = 256
MAD_HEADER_SIZE = 24  # struct ib_mad_hdr
IB_MGMT_BASE_VERSION = 1
#: The GSI's well-known Q_Key (QP1, ib_mad.h IB_QP1_QKEY).
IB_QP1_QKEY = 0x80010000

# Management classes (ib_mad.h)
IB_MGMT_CLASS_SUBN_LID_ROUTED = 0x01
IB_MGMT_CLASS_SUBN_DIRECTED_ROUTE = 0x81
IB_MGMT_CLASS_SUBN_ADM = 0x03
IB_MGMT_CLASS_PERF_MGMT = 0x04
IB_MGMT_CLASS_BM = 0x05
IB_MGMT_CLASS_DEVICE_MGMT = 0x06
IB_MGMT_CLASS_CM = 0x07
IB_MGMT_CLASS_SNMP = 0x08
IB_MGMT_CLASS_VENDOR_RANGE1_START = 0x09
IB_MGMT_CLASS_VENDOR_RANGE1_END = 0x0F
IB_MGMT_CLASS_DEVICE_ADM = 0x10
IB_MGMT_CLASS_BOOT_MGMT = 0x11
IB_MGMT_CLASS_BIS = 0x12
IB_MGMT_CLASS_CONG_MGMT = 0x21
IB_MGMT_CLASS_VENDOR_RANGE2_START = 0x30
IB_MGMT_CLASS_VENDOR_RANGE2_END = 0x4F
#: libibmad's IB_VENDOR_OPENIB_PING_CLASS (range 2 + 2), what ibping and ibping -S use
IB_VENDOR_OPENIB_PING_CLASS = 0x32
IB_VENDOR_OPENIB_SYSSTAT_CLASS = 0x33
IB_OPENIB_OUI = 0x001405

# Class versions
IB_SMP_CLASS_VERSION = 1
IB_SA_CLASS_VERSION = 2
IB_PMA_CLASS_VERSION = 1

# Methods
IB_MGMT_METHOD_GET = 0x01
IB_MGMT_METHOD_SET = 0x02
IB_MGMT_METHOD_SEND = 0x03
IB_MGMT_METHOD_TRAP = 0x05
IB_MGMT_METHOD_REPORT = 0x06
IB_MGMT_METHOD_TRAP_REPRESS = 0x07
IB_MGMT_METHOD_GET_TABLE = 0x12
IB_MGMT_METHOD_GET_TRACE_TABLE = 0x13
IB_MGMT_METHOD_GET_MULTI = 0x14
IB_MGMT_METHOD_DELETE = 0x15
IB_MGMT_METHOD_RESP = 0x80
IB_MGMT_METHOD_GET_RESP = 0x81
IB_MGMT_METHOD_REPORT_RESP = 0x86
IB_MGMT_METHOD_GET_TABLE_RESP = 0x92
IB_MGMT_METHOD_GET_MULTI_RESP = 0x94
IB_MGMT_METHOD_DELETE_RESP = 0x95

# Status (IBA 13.4.7, table 110): bits 0-4 common, 8-14 class-specific
IB_MGMT_MAD_STATUS_SUCCESS = 0x0000
IB_MGMT_MAD_STATUS_BUSY = 0x0001
IB_MGMT_MAD_STATUS_REDIRECT_REQD = 0x0002
IB_MGMT_MAD_STATUS_BAD_VERSION = 0x0004
IB_MGMT_MAD_STATUS_UNSUPPORTED_METHOD = 0x0008
IB_MGMT_MAD_STATUS_UNSUPPORTED_METHOD_ATTRIB = 0x000C
IB_MGMT_MAD_STATUS_INVALID_ATTRIB_VALUE = 0x001C
#: the D bit of a directed-route SMP's status word (0 outbound, 1 returning)
IB_SMP_DIRECTION = 0x8000

#: the common attribute of every class (IBA 13.4.8.1)
IB_ATTR_CLASS_PORT_INFO = 0x0001

# Where each class's data starts (ib_get_mad_data_offset)
IB_MGMT_MAD_HDR = 24
IB_MGMT_RMPP_HDR = 36
IB_MGMT_VENDOR_HDR = 40
IB_MGMT_SA_HDR = 56
IB_MGMT_DEVICE_HDR = 64

_HDR = struct.Struct("!BBBBHHQHHI")


def is_vendor_range2(mgmt_class: int) -> bool:
    return IB_MGMT_CLASS_VENDOR_RANGE2_START <= mgmt_class <= IB_MGMT_CLASS_VENDOR_RANGE2_END


def is_smp_class(mgmt_class: int) -> bool:
    return mgmt_class in (IB_MGMT_CLASS_SUBN_LID_ROUTED, IB_MGMT_CLASS_SUBN_DIRECTED_ROUTE)


def is_rmpp_class(mgmt_class: int) -> bool:
    """ib_is_mad_class_rmpp: the classes whose MADs carry an RMPP header."""
    return mgmt_class in (
        IB_MGMT_CLASS_SUBN_ADM,
        IB_MGMT_CLASS_DEVICE_MGMT,
        IB_MGMT_CLASS_DEVICE_ADM,
        IB_MGMT_CLASS_BIS,
    ) or is_vendor_range2(mgmt_class)


def data_offset(mgmt_class: int) -> int:
    """ib_get_mad_data_offset: the size of the headers before a class's data (what each
    RMPP segment after the first repeats, and what user_mad.c strips from them)."""
    if mgmt_class == IB_MGMT_CLASS_SUBN_ADM:
        return IB_MGMT_SA_HDR
    if mgmt_class in (IB_MGMT_CLASS_DEVICE_MGMT, IB_MGMT_CLASS_DEVICE_ADM, IB_MGMT_CLASS_BIS):
        return IB_MGMT_DEVICE_HDR
    if is_vendor_range2(mgmt_class):
        return IB_MGMT_VENDOR_HDR
    return IB_MGMT_MAD_HDR


@dataclass(frozen=True, slots=True, kw_only=True)
class MadHdr:
    """struct ib_mad_hdr. `method` keeps the response bit (0x81 is GetResp)."""

    base_version: int = IB_MGMT_BASE_VERSION
    mgmt_class: int = 0
    class_version: int = 1
    method: int = IB_MGMT_METHOD_GET
    status: int = 0
    class_specific: int = 0
    tid: int = 0
    attr_id: int = 0
    resv: int = 0
    attr_mod: int = 0

    SIZE: ClassVar[int] = IB_MGMT_MAD_HDR

    def pack(self) -> bytes:
        try:
            return _HDR.pack(self.base_version, self.mgmt_class, self.class_version,
                             self.method, self.status, self.class_specific, self.tid,
                             self.attr_id, self.resv, self.attr_mod)  # fmt: skip
        except struct.error as e:
            raise ValueError(f"MAD header: {e}") from None

    @classmethod
    def unpack(cls, data: Buffer) -> Self:
        if len(data) < cls.SIZE:
            raise ValueError(f"a MAD header is {cls.SIZE} bytes, got {len(data)}")
        (base, mclass, version, method, status, specific, tid, attr_id, resv,
         attr_mod) = _HDR.unpack_from(data)  # fmt: skip
        return cls(base_version=base, mgmt_class=mclass, class_version=version,
                   method=method, status=status, class_specific=specific, tid=tid,
                   attr_id=attr_id, resv=resv, attr_mod=attr_mod)  # fmt: skip

    @property
    def is_response(self) -> bool:
        return bool(self.method & IB_MGMT_METHOD_RESP)

    @property
    def directed(self) -> bool:
        return self.mgmt_class == IB_MGMT_CLASS_SUBN_DIRECTED_ROUTE


def is_response(mad: Buffer) -> bool:
    """ib_response_mad: a response method, a TrapRepress, or a BM MAD with the response
    bit in its attribute modifier."""
    hdr = MadHdr.unpack(mad)
    if hdr.method & IB_MGMT_METHOD_RESP or hdr.method == IB_MGMT_METHOD_TRAP_REPRESS:
        return True
    return hdr.mgmt_class == IB_MGMT_CLASS_BM and bool(hdr.attr_mod & 1)


def response_method(method: int) -> int:
    """The method of the answer: Set and Get are answered by GetResp (IBA 13.4.5), the
    others by the request's method with the response bit."""
    if method in (IB_MGMT_METHOD_GET, IB_MGMT_METHOD_SET):
        return IB_MGMT_METHOD_GET_RESP
    return method | IB_MGMT_METHOD_RESP


def attribute_offset(mgmt_class: int) -> int:
    """Where the attribute (the data) sits in a 256-byte MAD of a class: byte 64 for SMPs,
    LID-routed and directed, and for the PMA (40 reserved bytes after the header,
    ib_pma_mad), else the class's data offset."""
    if is_smp_class(mgmt_class) or mgmt_class == IB_MGMT_CLASS_PERF_MGMT:
        return 64
    return data_offset(mgmt_class)


def response(request: Buffer, data: Buffer | None = None, status: int = 0) -> bytes:
    """The answer to a request: the request's bytes (same TID, class, attribute and
    modifier, and on an SMP the M_Key, DR LIDs and paths) with the response method,
    `status`, and `data` as the attribute when given (zero-padded), else the request's.

    On a directed-route SMP the D bit is set (the answer travels the return path) and the
    status is the 15 bits under it."""
    req = bytes(request[:MAD_SIZE]).ljust(MAD_SIZE, b"\0")
    hdr = MadHdr.unpack(req)
    if hdr.is_response:
        raise ValueError(f"method {hdr.method:#04x} is already a response")
    out = bytearray(req)
    out[3] = response_method(hdr.method)
    word = IB_SMP_DIRECTION | status & 0x7FFF if hdr.directed else status
    out[4:6] = word.to_bytes(2, "big")
    if data is not None:
        start = attribute_offset(hdr.mgmt_class)
        # an SMP's data area is 64 bytes (a DR SMP's paths follow it)
        end = 128 if is_smp_class(hdr.mgmt_class) else MAD_SIZE
        if len(data) > end - start:
            raise ValueError(f"{len(data)} bytes of data do not fit the {end - start} of the MAD")
        out[start:end] = bytes(data).ljust(end - start, b"\0")
    return bytes(out)


def _f(name: str, offset: int, width: int, kind: object = None) -> Field:
    return Field(name, offset, width, None, kind)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClassPortInfo(Struct):
    """ClassPortInfo (IBA 13.4.8.1), the attribute 0x0001 of every GSI class; 72 bytes."""

    base_version: int = 1
    class_version: int = 1
    capability_mask: int = 0
    capability_mask2: int = 0
    resp_time_value: int = 0
    redirect_gid: bytes = bytes(16)
    redirect_tc: int = 0
    redirect_sl: int = 0
    redirect_fl: int = 0
    redirect_lid: int = 0
    redirect_pkey: int = 0
    redirect_qp: int = 0
    redirect_qkey: int = 0
    trap_gid: bytes = bytes(16)
    trap_tc: int = 0
    trap_sl: int = 0
    trap_fl: int = 0
    trap_lid: int = 0
    trap_pkey: int = 0
    trap_hl: int = 0
    trap_qp: int = 0
    trap_qkey: int = 0

    LAYOUT: ClassVar[tuple[Field, ...]] = (
        _f("base_version", 0, 8),
        _f("class_version", 8, 8),
        _f("capability_mask", 16, 16),
        _f("capability_mask2", 32, 27),
        _f("resp_time_value", 59, 5),
        _f("redirect_gid", 64, 128, bytes),
        _f("redirect_tc", 192, 8),
        _f("redirect_sl", 200, 4),
        _f("redirect_fl", 204, 20),
        _f("redirect_lid", 224, 16),
        _f("redirect_pkey", 240, 16),
        _f("redirect_qp", 264, 24),
        _f("redirect_qkey", 288, 32),
        _f("trap_gid", 320, 128, bytes),
        _f("trap_tc", 448, 8),
        _f("trap_sl", 456, 4),
        _f("trap_fl", 460, 20),
        _f("trap_lid", 480, 16),
        _f("trap_pkey", 496, 16),
        _f("trap_hl", 512, 8),
        _f("trap_qp", 520, 24),
        _f("trap_qkey", 544, 32),
    )
    SIZE: ClassVar[int] = 72
