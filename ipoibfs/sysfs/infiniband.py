"""class/infiniband/<hca>/: drivers/infiniband/core/sysfs.c's device and port attributes.

HCA holds the device's files (dev = the HcaDevice), PORT a port's (dev = the fabric Port),
with the numbered gids/, pkeys/ and gid_attrs/ arrays (dev = (Port, index)) and counters/,
whose every read asks the port's PMA (the HCA's process_mad), as show_pma_counter does.
"""

from __future__ import annotations

import errno

from .. import wire
from ..errors import KernelError
from ..fabric.device import GID_TABLE_LEN, PHYS_STATES, PORT_STATES, HcaDevice, Port
from ..wire.mad import common, pma
from .context import MirrorContext
from .nodes import Attribute, Caller, Group, Link, Members, Show, Table, const, numbered, ro, rw
from .pci import device_link

# ----------------------------------------------------------------- port attributes


def show_lid(ctx: MirrorContext, port: Port) -> str:
    return f"0x{port.lid:x}\n"


def show_sm_lid(ctx: MirrorContext, port: Port) -> str:
    return f"0x{port.sm_lid:x}\n"


def show_state(ctx: MirrorContext, port: Port) -> str:
    return f"{port.state}: {PORT_STATES.get(port.state, 'UNKNOWN')}\n"


def show_phys_state(ctx: MirrorContext, port: Port) -> str:
    return f"{port.phys_state}: {PHYS_STATES.get(port.phys_state, '<unknown>')}\n"


def show_cap_mask(ctx: MirrorContext, port: Port) -> str:
    return f"0x{port.cap_mask:08x}\n"


def show_rate(ctx: MirrorContext, port: Port) -> str:
    return port.rate_text + "\n"


def show_gid(ctx: MirrorContext, entry: tuple[Port, int]) -> str:
    port, i = entry
    return wire.format_gid_sysfs(port.gids[i]) + "\n"


def show_pkey(ctx: MirrorContext, entry: tuple[Port, int]) -> str:
    port, i = entry
    return f"0x{port.pkeys[i]:04x}\n"


def _gid_attr(entry: tuple[Port, int], show: str | None) -> str:
    """rdma_get_gid_attr: ENODATA for an empty entry; an IB GID has no netdev."""
    port, i = entry
    if not any(port.gids[i]):
        raise KernelError(errno.ENODATA)
    if show is None:
        raise KernelError(errno.EINVAL)
    return show


def show_gid_type(ctx: MirrorContext, entry: tuple[Port, int]) -> str:
    return _gid_attr(entry, "IB/RoCE v1\n")


def show_gid_ndev(ctx: MirrorContext, entry: tuple[Port, int]) -> str:
    return _gid_attr(entry, None)


def _gid_count(port: Port) -> int:
    return GID_TABLE_LEN  # len(port.gids), without building the table


def _pkey_count(port: Port) -> int:
    return len(port.pkeys)


def _pma_counter(attr_id: int, offset: int, width: int) -> Show:
    """show_pma_counter: a Get of the attribute for the port (PortSelect), and the field at
    `offset` bits into its data, in decimal; EINVAL if the PMA does not answer."""

    def show(ctx: MirrorContext, port: Port) -> str:
        hdr = common.MadHdr(mgmt_class=common.IB_MGMT_CLASS_PERF_MGMT,
                            class_version=common.IB_PMA_CLASS_VERSION, attr_id=attr_id)  # fmt: skip
        select = bytes([0, port.num])  # data[41] of the MAD: PortSelect
        answer = ctx.pma(port, (hdr.pack() + bytes(40) + select).ljust(common.MAD_SIZE, b"\0"))
        if answer is None or common.MadHdr.unpack(answer).status:
            raise KernelError(errno.EINVAL)
        data = int.from_bytes(answer[64 : 64 + (offset + width + 7) // 8], "big")
        bits = (offset + width + 7) // 8 * 8
        return f"{data >> (bits - offset - width) & ((1 << width) - 1)}\n"

    return show


_PC, _PCE = pma.IB_PMA_PORT_COUNTERS, pma.IB_PMA_PORT_COUNTERS_EXT
#: counters/ as pma_group_ext lays it out (the PMA's ClassPortInfo has
#: IB_PMA_CLASS_CAP_EXT_WIDTH): (file, attribute, bit offset, width), in the kernel's order.
PMA_COUNTERS = (
    ("symbol_error", _PC, 32, 16),
    ("link_error_recovery", _PC, 48, 8),
    ("link_downed", _PC, 56, 8),
    ("port_rcv_errors", _PC, 64, 16),
    ("port_rcv_remote_physical_errors", _PC, 80, 16),
    ("port_rcv_switch_relay_errors", _PC, 96, 16),
    ("port_xmit_discards", _PC, 112, 16),
    ("port_xmit_constraint_errors", _PC, 128, 8),
    ("port_rcv_constraint_errors", _PC, 136, 8),
    ("local_link_integrity_errors", _PC, 152, 4),
    ("excessive_buffer_overrun_errors", _PC, 156, 4),
    ("VL15_dropped", _PC, 176, 16),
    ("port_xmit_data", _PCE, 64, 64),
    ("port_rcv_data", _PCE, 128, 64),
    ("port_xmit_packets", _PCE, 192, 64),
    ("port_xmit_wait", _PC, 320, 32),
    ("port_rcv_packets", _PCE, 256, 64),
    ("unicast_rcv_packets", _PCE, 384, 64),
    ("unicast_xmit_packets", _PCE, 320, 64),
    ("multicast_rcv_packets", _PCE, 512, 64),
    ("multicast_xmit_packets", _PCE, 448, 64),
)
COUNTERS = Table(tuple(ro(name, _pma_counter(attr, offset, width))
                       for name, attr, offset, width in PMA_COUNTERS))  # fmt: skip

#: The files of gid_attrs/ (gid_attr_group): types/<i> and ndevs/<i>.
GID_ATTRS = Table(
    (
        numbered("types", _gid_count, ro("type", show_gid_type)),
        numbered("ndevs", _gid_count, ro("ndev", show_gid_ndev)),
    )
)

PORT_ATTRS: tuple[Attribute | Members | Group, ...] = (
    ro("lid", show_lid),
    ro("sm_lid", show_sm_lid),
    ro("lid_mask_count", const(0)),
    ro("sm_sl", const(0)),
    ro("state", show_state),
    ro("phys_state", show_phys_state),
    ro("rate", show_rate),
    ro("cap_mask", show_cap_mask),
    ro("link_layer", const("InfiniBand")),
    numbered("gids", _gid_count, ro("gid", show_gid)),
    numbered("pkeys", _pkey_count, ro("pkey", show_pkey)),
    Group("gid_attrs", GID_ATTRS),
    Group("counters", COUNTERS),
)

#: ports/<N>/.
PORT = Table(PORT_ATTRS)


# ----------------------------------------------------------------- device attributes


def show_node_guid(ctx: MirrorContext, dev: HcaDevice) -> str:
    return wire.format_guid(dev.node_guid) + "\n"


def show_fw_ver(ctx: MirrorContext, dev: HcaDevice) -> str:
    return f"{dev.profile.fw_ver}\n"


def show_hca_type(ctx: MirrorContext, dev: HcaDevice) -> str:
    return f"{dev.profile.hca_type}\n"


def show_hw_rev(ctx: MirrorContext, dev: HcaDevice) -> str:
    return f"{dev.profile.hw_rev}\n"


def show_board_id(ctx: MirrorContext, dev: HcaDevice) -> str:
    return f"{dev.profile.board_id}\n"


def show_node_desc(ctx: MirrorContext, dev: HcaDevice) -> bytes:
    """node_desc_show: "%.64s\n", the bytes as they were written, up to a NUL."""
    return wire.cstring(dev.node_desc[:64]) + b"\n"


def store_node_desc(ctx: MirrorContext, dev: HcaDevice, caller: Caller, buf: bytes) -> None:
    """node_desc_store: memcpy of min(count, IB_DEVICE_NODE_DESC_MAX) bytes of the whole
    buffer (NULs and the newline included); no capability check."""
    dev.set_node_desc(buf)


def is_mlx5(dev: HcaDevice) -> bool:
    """mlx5_ib's own files (mlx5_attr_group): fw_pages and reg_pages ("%d\n")."""
    return dev.profile.pci.driver == "mlx5_core"


def _port_names(ctx: MirrorContext, dev: HcaDevice) -> list[str]:
    return [str(p.num) for p in dev.ports]


def _port(ctx: MirrorContext, dev: HcaDevice, name: str) -> Port | None:
    for p in dev.ports:
        if str(p.num) == name:
            return p
    return None


DEVICE_ATTRS: tuple[Attribute | Members | Link, ...] = (
    ro("node_type", const("1: CA")),
    ro("node_guid", show_node_guid),
    ro("sys_image_guid", show_node_guid),
    ro("fw_ver", show_fw_ver),
    ro("hca_type", show_hca_type),
    ro("hw_rev", show_hw_rev),
    ro("board_id", show_board_id),
    rw("node_desc", show_node_desc, store_node_desc),
    ro("fw_pages", const(0), is_mlx5),
    ro("reg_pages", const(0), is_mlx5),
    Members("ports", _port_names, _port, PORT),
    device_link(3),
    Link("subsystem", lambda ctx, dev: "../../infiniband"),
)

#: class/infiniband/<hca>/.
HCA = Table(DEVICE_ATTRS)
