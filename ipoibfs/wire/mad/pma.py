"""The performance management agent's attributes (IBA 16.1, ib_pma.h), as perfquery reads
and resets them: PortCounters and PortCountersExtended, and the capability bits of its
ClassPortInfo (common.ClassPortInfo, the layout every GSI class shares).

PMA MADs carry the attribute at byte 64 (ib_pma_mad: 40 reserved bytes after the common
header). A Get reads the counters of `port_select`; a Set with a counter select mask
zeroes the selected counters and answers with the counters as they are after the reset
(what ibsim and the kernel's PMAs do, and what perfquery -R expects).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, TypeVar

from .layout import Field, Struct

IB_PMA_CLASS_PORT_INFO = 0x0001
IB_PMA_PORT_SAMPLES_CONTROL = 0x0010
IB_PMA_PORT_SAMPLES_RESULT = 0x0011
IB_PMA_PORT_COUNTERS = 0x0012
IB_PMA_PORT_COUNTERS_EXT = 0x001D

#: PortSelect 0xFF: every port, summed (needs IB_PM_ALL_PORT_SELECT)
IB_PMA_ALL_PORTS = 0xFF

# ClassPortInfo.capability_mask of the PMA (ib_pma.h, libibmad's iba_types.h)
IB_PM_ALL_PORT_SELECT = 1 << 8
IB_PM_EXT_WIDTH_SUPPORTED = 1 << 9
IB_PM_EXT_WIDTH_NOIETF_SUP = 1 << 10
IB_PM_PC_XMIT_WAIT_SUP = 1 << 12
IB_PM_IS_QP1_DROP_SUP = 1 << 15
# ClassPortInfo.capability_mask2
IB_PM_IS_ADDL_PORT_CTRS_EXT_SUP = 1 << 1


def _f(name: str, offset: int, width: int, kind: object = None) -> Field:
    return Field(name, offset, width, None, kind)


#: PortCounters' CounterSelect: the bit that resets each counter (ib_pma.h's
#: IB_PMA_SEL_*, ibsim's GS_PERF_*_MASK); CounterSelect2, as ibsim reads it, resets
#: PortXmitWait (any bit)
PORT_COUNTERS_SELECT: dict[str, int] = {
    "symbol_error_counter": 1 << 0,
    "link_error_recovery_counter": 1 << 1,
    "link_downed_counter": 1 << 2,
    "port_rcv_errors": 1 << 3,
    "port_rcv_remote_physical_errors": 1 << 4,
    "port_rcv_switch_relay_errors": 1 << 5,
    "port_xmit_discards": 1 << 6,
    "port_xmit_constraint_errors": 1 << 7,
    "port_rcv_constraint_errors": 1 << 8,
    "local_link_integrity_errors": 1 << 9,
    "excessive_buffer_overrun_errors": 1 << 10,
    "vl15_dropped": 1 << 11,
    "port_xmit_data": 1 << 12,
    "port_rcv_data": 1 << 13,
    "port_xmit_pkts": 1 << 14,
    "port_rcv_pkts": 1 << 15,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class PortCounters(Struct):
    """PortCounters (IBA 16.1.3.5), 44 bytes. The counters saturate at their width;
    PortXmitData and PortRcvData count 4-byte words."""

    port_select: int = 0
    counter_select: int = 0
    symbol_error_counter: int = 0
    link_error_recovery_counter: int = 0
    link_downed_counter: int = 0
    port_rcv_errors: int = 0
    port_rcv_remote_physical_errors: int = 0
    port_rcv_switch_relay_errors: int = 0
    port_xmit_discards: int = 0
    port_xmit_constraint_errors: int = 0
    port_rcv_constraint_errors: int = 0
    counter_select2: int = 0
    local_link_integrity_errors: int = 0
    excessive_buffer_overrun_errors: int = 0
    qp1_dropped: int = 0
    vl15_dropped: int = 0
    port_xmit_data: int = 0
    port_rcv_data: int = 0
    port_xmit_pkts: int = 0
    port_rcv_pkts: int = 0
    port_xmit_wait: int = 0

    LAYOUT: ClassVar[tuple[Field, ...]] = (
        _f("port_select", 8, 8),
        _f("counter_select", 16, 16),
        _f("symbol_error_counter", 32, 16),
        _f("link_error_recovery_counter", 48, 8),
        _f("link_downed_counter", 56, 8),
        _f("port_rcv_errors", 64, 16),
        _f("port_rcv_remote_physical_errors", 80, 16),
        _f("port_rcv_switch_relay_errors", 96, 16),
        _f("port_xmit_discards", 112, 16),
        _f("port_xmit_constraint_errors", 128, 8),
        _f("port_rcv_constraint_errors", 136, 8),
        _f("counter_select2", 144, 8),
        _f("local_link_integrity_errors", 152, 4),
        _f("excessive_buffer_overrun_errors", 156, 4),
        _f("qp1_dropped", 160, 16),
        _f("vl15_dropped", 176, 16),
        _f("port_xmit_data", 192, 32),
        _f("port_rcv_data", 224, 32),
        _f("port_xmit_pkts", 256, 32),
        _f("port_rcv_pkts", 288, 32),
        _f("port_xmit_wait", 320, 32),
    )
    SIZE: ClassVar[int] = 44

    def reset(self, counter_select: int, counter_select2: int = 0) -> PortCounters:
        """The counters after a Set with these select masks."""
        zero = {name: 0 for name, bit in PORT_COUNTERS_SELECT.items() if counter_select & bit}
        if counter_select2:
            zero["port_xmit_wait"] = 0
        return replace(self, **zero)

    def add(self, **deltas: int) -> PortCounters:
        """The counters with `deltas` added, each stopping at its field's maximum (IBA
        16.1.3.5: the counters do not wrap)."""
        widths = {f.name: f.width for f in self.LAYOUT}
        changed = {}
        for name, delta in deltas.items():
            if name not in widths or name in ("port_select", "counter_select", "counter_select2"):
                raise ValueError(f"PortCounters has no counter {name!r}")
            changed[name] = min(getattr(self, name) + delta, (1 << widths[name]) - 1)
        return replace(self, **changed)


#: PortCountersExtended's CounterSelect bits (IB_PMA_SELX_*)
PORT_COUNTERS_EXT_SELECT: dict[str, int] = {
    "port_xmit_data": 1 << 0,
    "port_rcv_data": 1 << 1,
    "port_xmit_pkts": 1 << 2,
    "port_rcv_pkts": 1 << 3,
    "port_unicast_xmit_pkts": 1 << 4,
    "port_unicast_rcv_pkts": 1 << 5,
    "port_multicast_xmit_pkts": 1 << 6,
    "port_multicast_rcv_pkts": 1 << 7,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class PortCountersExtended(Struct):
    """PortCountersExtended (IBA 16.1.4.11): 64-bit data and packet counters, then (when
    the PMA sets IB_PM_IS_ADDL_PORT_CTRS_EXT_SUP) 64-bit copies of the error counters;
    184 bytes."""

    port_select: int = 0
    counter_select: int = 0
    counter_select2: int = 0
    port_xmit_data: int = 0
    port_rcv_data: int = 0
    port_xmit_pkts: int = 0
    port_rcv_pkts: int = 0
    port_unicast_xmit_pkts: int = 0
    port_unicast_rcv_pkts: int = 0
    port_multicast_xmit_pkts: int = 0
    port_multicast_rcv_pkts: int = 0
    symbol_error_counter: int = 0
    link_error_recovery_counter: int = 0
    link_downed_counter: int = 0
    port_rcv_errors: int = 0
    port_rcv_remote_physical_errors: int = 0
    port_rcv_switch_relay_errors: int = 0
    port_xmit_discards: int = 0
    port_xmit_constraint_errors: int = 0
    port_rcv_constraint_errors: int = 0
    local_link_integrity_errors: int = 0
    excessive_buffer_overrun_errors: int = 0
    vl15_dropped: int = 0
    port_xmit_wait: int = 0
    qp1_dropped: int = 0

    LAYOUT: ClassVar[tuple[Field, ...]] = (
        _f("port_select", 8, 8),
        _f("counter_select", 16, 16),
        _f("counter_select2", 32, 32),
        _f("port_xmit_data", 64, 64),
        _f("port_rcv_data", 128, 64),
        _f("port_xmit_pkts", 192, 64),
        _f("port_rcv_pkts", 256, 64),
        _f("port_unicast_xmit_pkts", 320, 64),
        _f("port_unicast_rcv_pkts", 384, 64),
        _f("port_multicast_xmit_pkts", 448, 64),
        _f("port_multicast_rcv_pkts", 512, 64),
        _f("symbol_error_counter", 576, 64),
        _f("link_error_recovery_counter", 640, 64),
        _f("link_downed_counter", 704, 64),
        _f("port_rcv_errors", 768, 64),
        _f("port_rcv_remote_physical_errors", 832, 64),
        _f("port_rcv_switch_relay_errors", 896, 64),
        _f("port_xmit_discards", 960, 64),
        _f("port_xmit_constraint_errors", 1024, 64),
        _f("port_rcv_constraint_errors", 1088, 64),
        _f("local_link_integrity_errors", 1152, 64),
        _f("excessive_buffer_overrun_errors", 1216, 64),
        _f("vl15_dropped", 1280, 64),
        _f("port_xmit_wait", 1344, 64),
        _f("qp1_dropped", 1408, 64),
    )
    SIZE: ClassVar[int] = 184

    def reset(self, counter_select: int) -> PortCountersExtended:
        """The counters after a Set: CounterSelect's bits zero the eight data and packet
        counters (the error counters' CounterSelect2 is not interpreted here)."""
        zero = {n: 0 for n, bit in PORT_COUNTERS_EXT_SELECT.items() if counter_select & bit}
        return replace(self, **zero)


#: The counters the two ends of a link swap: what one end sends, the other receives.
_FAR_END_PAIRS = (
    ("port_xmit_data", "port_rcv_data"),
    ("port_xmit_pkts", "port_rcv_pkts"),
    ("port_unicast_xmit_pkts", "port_unicast_rcv_pkts"),
    ("port_multicast_xmit_pkts", "port_multicast_rcv_pkts"),
)


_Counters = TypeVar("_Counters", PortCounters, PortCountersExtended)


def far_end(counters: _Counters, port_select: int) -> _Counters:
    """The counters of the other end of the link, as port `port_select` of it shows them:
    what this end sent it received and the other way round, the link's downs the same, and
    no errors of its own (an emulated switch port drops nothing)."""
    names = {f.name for f in counters.LAYOUT} - {"port_select", "counter_select",
                                                  "counter_select2"}  # fmt: skip
    values = dict.fromkeys(names, 0)
    for a, b in _FAR_END_PAIRS:
        if a in names:
            values[a], values[b] = getattr(counters, b), getattr(counters, a)
    values["link_downed_counter"] = counters.link_downed_counter
    return replace(counters, port_select=port_select, **values)


def turned_round(answer: bytes, port_select: int) -> bytes:
    """A PMA's PortCounters(Extended) answer as the other end of the link would give it
    (far_end), for its port `port_select`; any other answer as it is."""
    attr_id = int.from_bytes(answer[16:18], "big")
    if answer[4:6] != b"\0\0":  # an error status
        return answer
    if attr_id == IB_PMA_PORT_COUNTERS:
        turned = far_end(PortCounters.unpack(answer[64:]), port_select).pack()
    elif attr_id == IB_PMA_PORT_COUNTERS_EXT:
        turned = far_end(PortCountersExtended.unpack(answer[64:]), port_select).pack()
    else:
        return answer
    return answer[:64] + turned.ljust(len(answer) - 64, b"\0")
