"""ipoib_fs.c: the debugfs files `<if>_mcg` and `<if>_path`, as seq_printf writes them."""

from __future__ import annotations

from collections.abc import Callable

from .. import wire
from .interface import Interface


def show_mcg(iface: Interface) -> str:
    """ipoib_mcg_seq_show, entries in ascending raw-MGID order."""
    out = []
    for mgid in sorted(iface.mcast):
        m = iface.mcast[mgid]
        out.append(
            f"GID: {wire.format_gid_debugfs(mgid)}\n"
            f"  created: {m.created:10d}\n"
            f"  queuelen: {len(m.queue):9d}\n"
            f"  complete: {'yes' if m.complete else 'no':>9}\n"
            f"  send_only: {'yes' if m.send_only else 'no':>8}\n"
            "\n"
        )
    return "".join(out)


def show_path(iface: Interface) -> str:
    """ipoib_path_seq_show, entries in ascending raw-DGID order.

    In connected mode a complete entry gets one line the kernel does not print, `RC:`,
    saying whether its neighbours are reached over an RC connection or over UD."""
    out = []
    for dgid in sorted(iface.paths):
        p = iface.paths[dgid]
        out.append(
            f"GID: {wire.format_gid_debugfs(dgid)}\n  complete: {'yes' if p.dlid else 'no':>6}\n"
        )
        if p.dlid:
            out.append(
                f"  DLID:     0x{p.dlid:04x}\n  SL: {p.sl:12d}\n"
                f"  rate: {wire.format_path_rate(p.rate_mbps)} Gb/sec\n"
            )
            if iface.cm_enabled:
                out.append(f"  RC: {'yes' if iface.reaches_over_rc(dgid) else 'no':>12}\n")
        out.append("\n")
    return "".join(out)


#: The per-interface debugfs files under kernel/debug/ipoib/, by suffix.
DEBUGFS: dict[str, Callable[[Interface], str]] = {"_mcg": show_mcg, "_path": show_path}
