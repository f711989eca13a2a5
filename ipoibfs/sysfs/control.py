"""The mirror's control file, `.ipoibfs/links`, behind the `ip` and `ethtool` front ends
(`ipoibfs link` and `ipoibfs ethtool`, and the shims inside `ipoibfs exec`).

The kernel answers those tools over rtnetlink and the ethtool ioctls, which a TUN cannot
carry for an emulated driver. Reading the file gives one JSON object per IPoIB interface,
with what ipoib_fill_info and ipoib_ethtool_ops report. Writing one JSON request runs
rtnl_link_ops or set_coalesce, and the write fails with the errno the kernel returns.
"""

from __future__ import annotations

import errno
import json

from .. import wire
from ..errors import KernelError
from .context import STAT_NAMES, Interface, MirrorContext, ethtool
from .nodes import Attribute, Caller


def link_info(ctx: MirrorContext, iface: Interface) -> dict:
    port = iface.port
    return {
        "ifname": iface.name,
        "ifindex": iface.link.ifindex,
        "address": wire.format_lladdr(iface.hw_addr),
        "broadcast": wire.format_lladdr(iface.broadcast),
        "parent": iface.parent.name if iface.parent else None,
        "child_type": iface.child_type.value,
        "pkey": iface.pkey,
        "mode": "connected" if iface.admin_cm else "datagram",
        "umcast": int(iface.umcast),
        "carrier": iface.carrier,
        "up": iface.opened,  # IFF_UP as the driver saw it (M-DOWN on a child's `ip link`)
        "speed": ethtool.speed(iface),
        "driver": ethtool.DRIVER_NAME,
        "fw_version": port.profile.fw_ver,
        "bus_info": ctx.device.name,
        "coalesce": {"rx_usecs": iface.coalesce_usecs, "rx_frames": iface.coalesce_frames},
        "stats": ethtool.stats(iface),
        "statistics": {name: iface.statistic(name) for name in STAT_NAMES},
    }


def _optional_u16(request: dict, key: str) -> int | None:
    """An NLA_U16 attribute, if present."""
    value = request.get(key)
    if value is not None and (type(value) is not int or not 0 <= value <= 0xFFFF):
        raise KernelError(errno.EINVAL)
    return value


def _name(request: dict, key: str) -> str | None:
    value = request.get(key)
    if value is not None and not isinstance(value, str):
        raise KernelError(errno.EINVAL)
    return value


def _interface(ctx: MirrorContext, name: str | None) -> Interface:
    iface = ctx.interfaces.get(name) if name is not None else None
    if iface is None:
        raise KernelError(errno.ENODEV)
    return iface


async def store_links(ctx: MirrorContext, dev: None, caller: Caller, buf: bytes) -> None:
    try:
        request = json.loads(buf)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deep
        raise KernelError(errno.EINVAL) from None
    if not isinstance(request, dict):
        raise KernelError(errno.EINVAL)
    if not caller.net_admin:
        raise KernelError(errno.EPERM)  # rtnetlink and ethtool set operations need it
    op = request.get("op")
    mode, umcast = _optional_u16(request, "mode"), _optional_u16(request, "umcast")
    if op == "newlink":
        parent = _name(request, "link")
        if parent is None:
            raise KernelError(errno.EINVAL)  # ipoib_new_child_link needs IFLA_LINK
        await ctx.new_link(parent, _name(request, "name"), _optional_u16(request, "pkey"),
                           mode, umcast)  # fmt: skip
    elif op == "changelink":
        await ctx.change_link(_interface(ctx, _name(request, "dev")), mode, umcast)
    elif op == "dellink":
        await ctx.del_link(_interface(ctx, _name(request, "dev")))
    elif op == "coalesce":
        usecs, frames = request.get("rx_usecs"), request.get("rx_frames")
        if any(v is not None and type(v) is not int for v in (usecs, frames)):
            raise KernelError(errno.EINVAL)
        await ctx.set_coalesce(_interface(ctx, _name(request, "dev")), usecs, frames)
    else:
        raise KernelError(errno.EOPNOTSUPP)


def show_links(ctx: MirrorContext, dev: None) -> str:
    return json.dumps([link_info(ctx, i) for i in ctx.interfaces.values()]) + "\n"


#: `.ipoibfs/links` (dev = None): root's only, with debugfs's semantics.
LINKS = Attribute("links", 0o600, show=show_links, store=store_links, size=0, sysfs=False)
