"""ib_ipoib's module parameters, set at mount time as `modprobe ib_ipoib NAME=VALUE` would."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import UsageError
from ..fabric.flag import Flag

IPOIB_MAX_QUEUE_SIZE = 8192
IPOIB_MIN_QUEUE_SIZE = 2
MAX_SEND_CQE = 64
IPOIB_CM_MAX_CONN_QP = 4096


def _roundup_pow_of_two(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def _sendq(n: int) -> int:
    return max(min(_roundup_pow_of_two(n), IPOIB_MAX_QUEUE_SIZE), 2 * MAX_SEND_CQE)


def _recvq(n: int) -> int:
    return max(min(_roundup_pow_of_two(n), IPOIB_MAX_QUEUE_SIZE), IPOIB_MIN_QUEUE_SIZE)


def _conn_qp(n: int) -> int:
    return max(min(n, IPOIB_CM_MAX_CONN_QP), 0)


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: int
    mode: int
    description: str
    normalize: Callable[[int], int] | None = None  # applied once at load (ipoib_init_module)
    needs_debug_data: bool = False


PARAMS = [
    ParamSpec("send_queue_size", 128, 0o444, "Number of descriptors in send queue", _sendq),
    ParamSpec("recv_queue_size", 256, 0o444, "Number of descriptors in receive queue", _recvq),
    ParamSpec("debug_level", 0, 0o644, "Enable debug tracing if > 0"),
    ParamSpec("mcast_debug_level", 0, 0o644, "Enable multicast debug tracing if > 0"),
    ParamSpec(
        "data_debug_level", 0, 0o644, "Enable data path debug tracing if > 0", needs_debug_data=True
    ),
    ParamSpec(
        "cm_data_debug_level",
        0,
        0o644,
        "Enable data path debug tracing for connected mode if > 0",
        needs_debug_data=True,
    ),
    ParamSpec(
        "max_nonsrq_conn_qp",
        128,
        0o444,
        "Max number of connected-mode QPs per interface (applied only if shared receive "
        "queue is not available)",
        _conn_qp,
    ),
]
SPECS = {p.name: p for p in PARAMS}


class ModuleParams:
    """The values under /sys/module/ib_ipoib/parameters, after the module's own normalisation."""

    def __init__(self, overrides: dict[str, int] | None = None, debug_data: bool = False) -> None:
        self.specs = [p for p in PARAMS if debug_data or not p.needs_debug_data]
        self.values: dict[str, int] = {}
        overrides = overrides or {}
        for spec in self.specs:
            value = overrides.get(spec.name, spec.default)
            self.values[spec.name] = spec.normalize(value) if spec.normalize else value
        #: Clear while a debug level is set: the reader threads' C loop then sends nothing
        #: itself (every packet goes through Python, which traces it).
        self.flows_ok = Flag()
        unknown = set(overrides) - set(self.values)
        if unknown:
            raise UsageError(f"ib_ipoib: unknown parameter '{sorted(unknown)[0]}'")
        self._data_debug()

    def __getitem__(self, name: str) -> int:
        return self.values.get(name, 0)

    def __setitem__(self, name: str, value: int) -> None:
        self.values[name] = value
        self._data_debug()

    def _data_debug(self) -> None:
        """`data_debug`: whether a data-path debug level is set (data_debug_level or
        cm_data_debug_level). The reader thread asks once per packet, so it is an
        attribute, set again by every store."""
        self.data_debug = self["data_debug_level"] > 0 or self["cm_data_debug_level"] > 0
        self.flows_ok.set(not self.data_debug)

    @staticmethod
    def parse_assignments(items: list[str]) -> dict[str, int]:
        """`NAME=VALUE` strings from the command line, with the kernel's int parsing."""
        out: dict[str, int] = {}
        for item in items:
            name, sep, value = item.partition("=")
            if not sep or name not in SPECS:
                raise UsageError(
                    f"ib_ipoib: unknown parameter '{name}' (known: " + ", ".join(SPECS) + ")"
                )
            try:
                out[name] = int(value, 0)
            except ValueError:
                raise UsageError(f"ib_ipoib: '{value}' invalid for parameter '{name}'") from None
        return out
