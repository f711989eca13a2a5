"""ipoib_netlink.c: rtnl_link_ops children (`ip link add link ib0 name X type ipoib ...`),
changelink and dellink. Such children have no ipoib sysfs attributes and no uniqueness
check."""

from __future__ import annotations

import errno

from .. import wire
from ..errors import KernelError
from .context import DriverContext
from .interface import ChildType, Interface
from .main import IPoIBMain


class Netlink:
    def __init__(self, ctx: DriverContext, main: IPoIBMain) -> None:
        self.ctx = ctx
        self.main = main

    async def new_link(
        self, parent: str, name: str | None, pkey: int | None, mode: int | None = None,
        umcast: int | None = None,
    ) -> Interface:  # fmt: skip
        """ipoib_new_child_link."""
        ctx = self.ctx
        async with ctx.rtnl:
            pdev = ctx.interfaces.get(parent)
            if pdev is None:
                raise KernelError(errno.ENODEV)
            if pdev.is_child:
                ctx.log.warn(pdev.name, "child creation disallowed for child devices\n")
                raise KernelError(errno.EINVAL)
            if pkey is None:
                ctx.log.dbg(pdev.name, "no pkey specified, using parent pkey\n")
                pkey = pdev.pkey
            if pkey & wire.PKEY_MASK == 0:
                raise KernelError(errno.EINVAL)
            name = self._link_name("ipoib%d" if name is None else name)
            iface = await self.main.register(name, pdev.port, pkey, ChildType.RTNL, pdev)
            try:
                await self._change_link(iface, mode, umcast)
            except KernelError:
                await self.main.unregister(iface)
                raise
            return iface

    def _link_name(self, name: str) -> str:
        """dev_valid_name, and dev_alloc_name for a name with one %d, over the name's bytes:
        EINVAL for what dev_valid_name refuses (empty, IFNAMSIZ bytes or more, "." or "..",
        '/', ':', the kernel's white space) and for a NUL, before any netdev exists (the
        TUN would otherwise be made under the name up to the NUL)."""
        try:
            raw = name.encode()
        except UnicodeEncodeError:  # a lone surrogate: no bytes the kernel could be given
            raise KernelError(errno.EINVAL) from None
        if not wire.dev_valid_name(raw):
            raise KernelError(errno.EINVAL)
        if "%" not in name:
            return name
        if name.count("%") != 1 or "%d" not in name:
            raise KernelError(errno.EINVAL)
        taken = set(self.ctx.netdevs.names())
        for i in range(32768):
            # snprintf(buf, IFNAMSIZ, name, i): cut to IFNAMSIZ - 1 bytes
            cut = name.replace("%d", str(i)).encode()[: wire.IFNAMSIZ - 1]
            candidate = cut.decode(errors="ignore")
            if candidate.encode() == cut and candidate not in taken:
                return candidate
        raise KernelError(errno.ENFILE)

    async def change_link(self, iface: Interface, mode: int | None, umcast: int | None) -> None:
        """ipoib_changelink (`ip link set DEV type ipoib ...`); a pkey is ignored."""
        async with self.ctx.rtnl:
            if not self.ctx.registered(iface):
                raise KernelError(errno.ENODEV)
            await self._change_link(iface, mode, umcast)

    async def _change_link(self, iface: Interface, mode: int | None, umcast: int | None) -> None:
        if mode is not None:
            if mode not in (wire.IPOIB_MODE_DATAGRAM, wire.IPOIB_MODE_CONNECTED):
                raise KernelError(errno.EINVAL)
            connected = mode == wire.IPOIB_MODE_CONNECTED
            await self.main.mode(iface, b"connected\n" if connected else b"datagram\n")
        if umcast is not None:
            self.main.umcast(iface, umcast)

    async def del_link(self, iface: Interface) -> None:
        """ipoib_del_child_link (`ip link del DEV`): a child of either kind goes at once; a
        parent stays, and the call still succeeds."""
        async with self.ctx.rtnl:
            if iface.parent is None or not self.ctx.registered(iface):
                return
            await self.main.unregister(iface)
