"""ipoib_vlan.c: P_Key children made through sysfs (create_child / delete_child).

The kernel calls them VLANs: each child is a netdev of its own on the parent's port, with
its own UD QP and P_Key, named "%.10s.%04x" from the parent and the value written.
"""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from .. import wire
from ..errors import KernelError
from .context import DriverContext
from .interface import ChildType, Interface
from .main import IPoIBMain


class Vlan:
    def __init__(self, ctx: DriverContext, main: IPoIBMain) -> None:
        self.ctx = ctx
        self.main = main

    async def create_child(self, parent: Interface, buf: bytes, *, net_admin: bool) -> Interface:
        """create_child_store + ipoib_vlan_add."""
        pkey = wire.sscanf_int(buf)
        if pkey is None or pkey <= 0 or pkey > 0xFFFF or pkey == wire.FULL_MEMBER:
            raise KernelError(errno.EINVAL)
        async with self.lock(parent, net_admin):
            name = f"{parent.name[:10]}.{pkey:04x}"
            if parent.pkey == pkey or any(
                c.child_type is ChildType.LEGACY and c.pkey == pkey for c in parent.children
            ):
                raise KernelError(errno.ENOTUNIQ)
            try:
                return await self.main.register(name, parent.port, pkey, ChildType.LEGACY, parent)
            except KernelError as e:
                self.ctx.log.warn(name, f"failed to initialize; error {-e.errno}\n")
                raise

    async def delete_child(self, parent: Interface, buf: bytes, *, net_admin: bool) -> None:
        """delete_child_store + ipoib_vlan_delete; the unregister runs from the work queue."""
        pkey = wire.sscanf_int(buf)
        if pkey is None or pkey < 0 or pkey > 0xFFFF:
            raise KernelError(errno.EINVAL)
        async with self.lock(parent, net_admin):
            for child in parent.children:
                if child.pkey == pkey and child.child_type is ChildType.LEGACY:
                    parent.children.remove(child)
                    self.ctx.work.spawn(self._delete_task, child)
                    return
        raise KernelError(errno.ENODEV)

    @asynccontextmanager
    async def lock(self, parent: Interface, net_admin: bool) -> AsyncIterator[None]:
        """ipoib_vlan_add/delete's preamble: CAP_NET_ADMIN, RTNL, a registered parent."""
        if not net_admin:
            raise KernelError(errno.EPERM)
        async with self.ctx.rtnl:
            if not self.ctx.registered(parent):
                raise KernelError(errno.EPERM)
            yield

    async def _delete_task(self, child: Interface) -> None:
        async with self.ctx.rtnl:
            if self.ctx.registered(child):
                self.ctx.log.dbg(child.name, f"delete child vlan {child.name}\n")
                await self.main.unregister(child)
