"""class/net/<if>/: net/core/net-sysfs.c's net_class_attrs and statistics group, and the files
ib_ipoib adds (mode, pkey, umcast, create_child, delete_child, parent; dev_id replaced).

Each row is declared once; an interface's directory is NETDEV bound to the interface. Live
state (mtu, flags, operstate, carrier, counters) is read from the netdev on every show; what a
TUN cannot hold is derived from the driver. Formats and errno values follow the kernel
(shared/reference/linux-ipoib-driver.md).
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .. import wire
from ..errors import KernelError
from .context import STAT_NAMES, ChildType, Interface, MirrorContext
from .nodes import (
    Attribute,
    Caller,
    Group,
    Link,
    Members,
    Show,
    Table,
    const,
    current,
    fails,
    ro,
    rw,
    wo,
)
from .pci import device_link
from .queues import QUEUES

if TYPE_CHECKING:
    from ..netdev import LinkState

IFALIASZ = 256
S32_MAX = 0x7FFFFFFF
NAPI_ATTRS = ("gro_flush_timeout", "napi_defer_hard_irqs", "threaded")


# ----------------------------------------------------------------- which interfaces have a file


def not_rtnl_child(iface: Interface) -> bool:
    """Parents and legacy children: mode, pkey, umcast (RTNL children get no ipoib files)."""
    return iface.child_type is not ChildType.RTNL


def is_parent(iface: Interface) -> bool:
    """Parents only: create_child, delete_child."""
    return iface.child_type is ChildType.PARENT


def is_legacy_child(iface: Interface) -> bool:
    """Children made by create_child only: parent."""
    return iface.child_type is ChildType.LEGACY


# ----------------------------------------------------------------- helpers


def alive(ctx: MirrorContext, iface: Interface) -> Interface:
    """The interface if it is still registered (netdev_show's dev_isalive)."""
    if ctx.interfaces.get(iface.name) is not iface:
        raise KernelError(errno.EINVAL)
    return iface


def registered(ctx: MirrorContext, iface: Interface) -> Interface:
    """sysfs_rtnl_lock's dev_isalive: a store on a device being dismantled gets ENODEV."""
    if ctx.interfaces.get(iface.name) is not iface:
        raise KernelError(errno.ENODEV)
    return iface


async def state(ctx: MirrorContext, iface: Interface) -> LinkState:
    """What netlink says of the netdev (the namespace worker's round trip): for the fields
    no ioctl gives."""
    return await ctx.netdevs.state(alive(ctx, iface).link)


def live_flags(ctx: MirrorContext, iface: Interface) -> int:
    """dev_get_flags' low 16 bits, read now (an ioctl on this thread)."""
    return ctx.netdevs.flags(alive(ctx, iface).link)


def running(ctx: MirrorContext, iface: Interface) -> int:
    """The live flags of a running device; EINVAL if it is down (netif_running)."""
    flags = live_flags(ctx, iface)
    if not flags & wire.IFF_UP:
        raise KernelError(errno.EINVAL)
    return flags


def running_carrier(ctx: MirrorContext, iface: Interface) -> bool:
    """carrier_show's netif_carrier_ok of a running device; EINVAL if it is down. Carrier
    on says that it runs; only without it are the flags asked whether it does."""
    if ctx.netdevs.carrier(alive(ctx, iface).link):
        return True
    running(ctx, iface)
    return False


def netdev_store_value(caller: Caller, buf: bytes) -> int:
    """netdev_store and netdev_lock_store: ns_capable(CAP_NET_ADMIN) first, then
    kstrtoul(buf, 0) (the C string: a NUL ends it). tx_queue_len, gro_flush_timeout and
    napi_defer_hard_irqs check capable(CAP_NET_ADMIN) before: the same EPERM here."""
    if not caller.net_admin:
        raise KernelError(errno.EPERM)
    return wire.kstrtoul(buf)


def signed(name: str) -> Show:
    """A show of an unsigned field printed with "%d" (netdev_group)."""

    async def show(ctx: MirrorContext, iface: Interface) -> str:
        return f"{wire.c_int(getattr(await state(ctx, iface), name))}\n"

    return show


def field(name: str) -> Show:
    """A show of one field of the live netlink state (NETDEVICE_SHOW)."""

    async def show(ctx: MirrorContext, iface: Interface) -> str:
        return f"{getattr(await state(ctx, iface), name)}\n"

    return show


# ----------------------------------------------------------------- net_class_attrs


def show_uevent(ctx: MirrorContext, iface: Interface) -> str:
    return f"INTERFACE={iface.name}\nIFINDEX={iface.link.ifindex}\n"


def store_uevent(ctx: MirrorContext, iface: Interface, caller: Caller, buf: bytes) -> None:
    """uevent_store: kobject_synth_uevent's grammar over the whole buffer; no capability
    check (the file's mode is the only guard). The synthetic event itself is not sent."""
    wire.kobject_synth_uevent(buf)


def show_address(ctx: MirrorContext, iface: Interface) -> str:
    return wire.format_lladdr(alive(ctx, iface).hw_addr) + "\n"


def show_broadcast(ctx: MirrorContext, iface: Interface) -> str:
    return wire.format_lladdr(alive(ctx, iface).broadcast) + "\n"


def show_dev_id(ctx: MirrorContext, iface: Interface) -> str:
    """ib_ipoib's dev_id_show on parents (the core's on children; both print "%#x")."""
    ctx.dev_id_read(iface, current().comm)
    return f"{iface.dev_id:#x}\n"


def show_dev_port(ctx: MirrorContext, iface: Interface) -> str:
    return f"{iface.dev_id}\n"


def show_ifindex(ctx: MirrorContext, iface: Interface) -> str:
    return f"{iface.link.ifindex}\n"


def show_iflink(ctx: MirrorContext, iface: Interface) -> str:
    """ipoib_get_iflink: a child's is its parent's ifindex."""
    return f"{(iface.parent or iface).link.ifindex}\n"


def show_mtu(ctx: MirrorContext, iface: Interface) -> str:
    return f"{ctx.netdevs.mtu(alive(ctx, iface).link)}\n"


async def store_mtu(ctx: MirrorContext, iface: Interface, caller: Caller, buf: bytes) -> None:
    """change_mtu: dev_set_mtu(dev, (int)new_mtu)."""
    value = netdev_store_value(caller, buf)
    await ctx.change_mtu(registered(ctx, iface), wire.c_int(value))


def show_flags(ctx: MirrorContext, iface: Interface) -> str:
    return f"{wire.ipoib_flags(live_flags(ctx, iface)):#x}\n"


async def store_flags(ctx: MirrorContext, iface: Interface, caller: Caller, buf: bytes) -> None:
    """change_flags: dev_change_flags(dev, (unsigned int)new_flags)."""
    value = netdev_store_value(caller, buf) & 0xFFFFFFFF
    registered(ctx, iface)
    await ctx.set_link_attrs(iface, flags=value & wire.IFF_CHANGEABLE, change=wire.IFF_CHANGEABLE)


async def store_txqlen(ctx: MirrorContext, iface: Interface, caller: Caller, buf: bytes) -> None:
    """dev_change_tx_queue_len: ERANGE for a value that is no unsigned int."""
    value = netdev_store_value(caller, buf)
    registered(ctx, iface)
    if value > 0xFFFFFFFF:
        raise KernelError(errno.ERANGE)
    await ctx.set_link_attrs(iface, txqlen=value)


def show_txqlen(ctx: MirrorContext, iface: Interface) -> str:
    return f"{wire.c_int(ctx.netdevs.txqlen(alive(ctx, iface).link))}\n"


def show_operstate(ctx: MirrorContext, iface: Interface) -> str:
    """operstate_show: dev->operstate, DOWN unless running. A TUN's is UP or DOWN (no
    iflink, never dormant or testing; UNKNOWN is settled at creation), which IFF_RUNNING
    tells while it runs; UP also says that the carrier linkwatch last applied was on,
    which is what the kernel's default_operstate looked at for `lowerlayerdown`."""
    flags = live_flags(ctx, iface)
    up, oper_up = bool(flags & wire.IFF_UP), bool(flags & wire.IFF_RUNNING)
    return ctx.operstate(iface, "up" if oper_up else "down", up, oper_up) + "\n"


def show_carrier(ctx: MirrorContext, iface: Interface) -> str:
    return f"{int(running_carrier(ctx, iface))}\n"


def store_carrier(ctx: MirrorContext, iface: Interface, caller: Caller, buf: bytes) -> None:
    """carrier_store: IPoIB has no ndo_change_carrier, checked before anything else."""
    raise KernelError(errno.EOPNOTSUPP)


def show_running_zero(ctx: MirrorContext, iface: Interface) -> str:
    """dormant, testing: 0 while running."""
    running(ctx, iface)
    return "0\n"


def show_speed(ctx: MirrorContext, iface: Interface) -> str:
    return f"{iface.port.speed_mbps if running_carrier(ctx, iface) else -1}\n"


def show_duplex(ctx: MirrorContext, iface: Interface) -> str:
    return "full\n" if running_carrier(ctx, iface) else "unknown\n"


async def show_ifalias(ctx: MirrorContext, iface: Interface) -> bytes:
    """ifalias_show: "%s\n" of the alias, nothing without one. The bytes are the netdev's
    own (pyroute2 gives them undecoded when they are not UTF-8)."""
    alias: str | bytes = (await state(ctx, iface)).ifalias
    raw = alias.encode() if isinstance(alias, str) else bytes(alias)
    return raw + b"\n" if raw else b""


async def store_ifalias(ctx: MirrorContext, iface: Interface, caller: Caller, buf: bytes) -> None:
    """ifalias_store: the whole buffer but one trailing newline, then dev_set_alias (EINVAL
    from IFALIASZ on). The alias is kept up to its first NUL, which is all that
    ifalias_show and netlink ever print of it."""
    if not caller.net_admin:
        raise KernelError(errno.EPERM)
    alias = buf[:-1] if buf.endswith(b"\n") else buf
    registered(ctx, iface)
    if len(alias) >= IFALIASZ:
        raise KernelError(errno.EINVAL)
    await ctx.set_link_attrs(iface, ifalias=wire.cstring(alias))


async def store_group(ctx: MirrorContext, iface: Interface, caller: Caller, buf: bytes) -> None:
    """change_group: dev_set_group(dev, (int)new_group); the netdev keeps it as a u32."""
    value = netdev_store_value(caller, buf)
    registered(ctx, iface)
    await ctx.set_link_attrs(iface, group=value & 0xFFFFFFFF)


def store_proto_down(ctx: MirrorContext, iface: Interface, caller: Caller, buf: bytes) -> None:
    """change_proto_down: IPoIB does not set dev->change_proto_down."""
    netdev_store_value(caller, buf)
    registered(ctx, iface)
    raise KernelError(errno.EOPNOTSUPP)


#: The NAPI files' checks after netdev_lock_store's kstrtoul, and their shows' formats.
def _napi_gro_flush_timeout(value: int) -> int:
    return value  # netdev_set_gro_flush_timeout: any unsigned long


def _napi_defer_hard_irqs(value: int) -> int:
    if value > S32_MAX:
        raise KernelError(errno.ERANGE)
    return value


def _napi_threaded(value: int) -> int:
    """modify_napi_threaded: IPoIB has NAPI instances, so 0 and 1 (6.18 has no busy-poll
    mode); anything else is EOPNOTSUPP."""
    if value not in (0, 1):
        raise KernelError(errno.EOPNOTSUPP)
    return value


NAPI_CHECKS = {
    "gro_flush_timeout": _napi_gro_flush_timeout,
    "napi_defer_hard_irqs": _napi_defer_hard_irqs,
    "threaded": _napi_threaded,
}


def napi_attr(name: str) -> Attribute:
    """NAPI tuning: kept and shown as the kernel does ("%lu", "%u", "%d"), with no effect on
    a daemon."""
    check = NAPI_CHECKS[name]

    def show(ctx: MirrorContext, iface: Interface) -> str:
        return f"{iface.napi[name]}\n"

    async def store(ctx: MirrorContext, iface: Interface, caller: Caller, buf: bytes) -> None:
        value = check(netdev_store_value(caller, buf))
        await ctx.set_napi(registered(ctx, iface), name, value)

    return rw(name, show, store)


NET_CLASS_ATTRS: tuple[Attribute, ...] = (
    rw("uevent", show_uevent, store_uevent),
    ro("address", show_address),
    ro("broadcast", show_broadcast),
    ro("addr_len", const(wire.INFINIBAND_ALEN)),
    ro("type", const(wire.ARPHRD_INFINIBAND)),
    ro("dev_id", show_dev_id),
    ro("dev_port", show_dev_port),
    ro("ifindex", show_ifindex),
    ro("iflink", show_iflink),
    ro("link_mode", const(0)),
    ro("addr_assign_type", const(0)),
    ro("name_assign_type", fails(errno.EINVAL)),
    rw("mtu", show_mtu, store_mtu),
    rw("flags", show_flags, store_flags),
    rw("tx_queue_len", show_txqlen, store_txqlen),
    ro("operstate", show_operstate),
    rw("carrier", show_carrier, store_carrier),
    ro("carrier_changes", field("carrier_changes")),
    ro("carrier_up_count", field("carrier_up_count")),
    ro("carrier_down_count", field("carrier_down_count")),
    ro("dormant", show_running_zero),
    ro("testing", show_running_zero),
    ro("speed", show_speed),
    ro("duplex", show_duplex),
    rw("ifalias", show_ifalias, store_ifalias),
    rw("netdev_group", signed("group"), store_group),
    rw("proto_down", field("proto_down"), store_proto_down),
    *(napi_attr(name) for name in NAPI_ATTRS),
)


# ----------------------------------------------------------------- the statistics group


def stat_attr(name: str) -> Attribute:
    """netstat_show: one of the driver's counters."""

    def show(ctx: MirrorContext, iface: Interface) -> str:
        return f"{iface.statistic(name)}\n"

    return ro(name, show)


STATISTICS = Table(stat_attr(name) for name in STAT_NAMES)

#: The groups and links every netdev has between the core's files and the driver's: the
#: parent device is the HCA's PCI function (SET_NETDEV_DEV(dev, hca->dev.parent)).
NETDEV_LINKS: tuple[Group | Link | Members, ...] = (
    Group("statistics", STATISTICS),
    QUEUES,
    device_link(3),
    Link("subsystem", lambda ctx, iface: "../../net"),
)


# ----------------------------------------------------------------- ib_ipoib's dev_attr_*


def show_mode(ctx: MirrorContext, iface: Interface) -> str:
    return "connected\n" if iface.admin_cm else "datagram\n"


async def store_mode(ctx: MirrorContext, iface: Interface, caller: Caller, buf: bytes) -> None:
    """mode_store: ipoib_set_mode strcmp()s the C string against "connected\n" and
    "datagram\n" (no sysfs_streq: `echo -n connected` is EINVAL, a NUL after the newline
    is not seen)."""
    await ctx.set_mode(iface, wire.cstring(buf))


def show_pkey(ctx: MirrorContext, iface: Interface) -> str:
    return f"0x{iface.pkey:04x}\n"


def show_umcast(ctx: MirrorContext, iface: Interface) -> str:
    return f"{int(iface.umcast)}\n"


async def store_umcast(ctx: MirrorContext, iface: Interface, caller: Caller, buf: bytes) -> None:
    await ctx.set_umcast(iface, buf)


async def store_create_child(
    ctx: MirrorContext, iface: Interface, caller: Caller, buf: bytes
) -> None:
    await ctx.create_child(iface, buf, net_admin=caller.net_admin)


async def store_delete_child(
    ctx: MirrorContext, iface: Interface, caller: Caller, buf: bytes
) -> None:
    await ctx.delete_child(iface, buf, net_admin=caller.net_admin)


def show_parent(ctx: MirrorContext, iface: Interface) -> str:
    assert iface.parent is not None  # legacy children only
    return f"{iface.parent.name}\n"


IPOIB_ATTRS: tuple[Attribute, ...] = (
    rw("mode", show_mode, store_mode, not_rtnl_child),
    ro("pkey", show_pkey, not_rtnl_child),
    rw("umcast", show_umcast, store_umcast, not_rtnl_child),
    wo("create_child", store_create_child, is_parent),
    wo("delete_child", store_delete_child, is_parent),
    ro("parent", show_parent, is_legacy_child),
)

#: An interface's directory: the core's files, statistics and links, then ib_ipoib's.
NETDEV = Table(NET_CLASS_ATTRS, NETDEV_LINKS, IPOIB_ATTRS)


def _interface_names(ctx: MirrorContext, dev: object) -> Iterable[str]:
    return ctx.interfaces.keys()


def _interface(ctx: MirrorContext, dev: object, name: str) -> Interface | None:
    return ctx.interfaces.get(name)


#: class/net/: one NETDEV directory per registered interface.
INTERFACES = Members("net", _interface_names, _interface, NETDEV, volatile=True)
