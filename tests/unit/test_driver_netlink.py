"""driver/netlink.py: rtnl_link_ops children (newlink, changelink, dellink)."""

from __future__ import annotations

import errno

import pytest

from ipoibfs import wire
from ipoibfs.driver.interface import ChildType
from ipoibfs.errors import KernelError


async def test_new_link_takes_the_parents_pkey_and_a_free_name(env):
    netlink = env.driver.netlink
    first = await netlink.new_link("ib0", None, None)
    second = await netlink.new_link("ib0", None, None)
    assert (first.name, second.name) == ("ipoib0", "ipoib1")
    assert first.pkey == second.pkey == 0xFFFF  # no uniqueness check for rtnl children
    assert first.child_type is ChildType.RTNL and first.parent is env.ib0
    assert "ib0: no pkey specified, using parent pkey" in env.log.lines


async def test_new_link_refusals_leave_nothing(env):
    netlink = env.driver.netlink
    child = await netlink.new_link("ib0", "blue", 0x8001)
    cases = [("nope", "x", 0x8001, None, errno.ENODEV), ("blue", "x", 0x8002, None, errno.EINVAL),
             ("ib0", "x", 0x8000, None, errno.EINVAL), ("ib0", "a/b", 0x8002, None, errno.EINVAL),
             ("ib0", "x", 0x8002, 7, errno.EINVAL),
             ("ib0", "", 0x8002, None, errno.EINVAL)]  # fmt: skip
    for parent, name, pkey, mode, err in cases:
        with pytest.raises(KernelError) as e:
            await netlink.new_link(parent, name, pkey, mode)
        assert e.value.errno == err
    assert set(env.driver.interfaces) == {"ib0", "blue"} and set(env.netdevs.links) == {
        "ib0", "blue"}  # fmt: skip
    assert child.parent is env.ib0


async def test_change_link_sets_mode_and_umcast(env):
    netlink = env.driver.netlink
    child = await netlink.new_link("ib0", "blue", 0x8001, wire.IPOIB_MODE_CONNECTED, 1)
    assert child.admin_cm and child.umcast and env.netdevs.links["blue"].mtu == 65520
    await netlink.change_link(child, wire.IPOIB_MODE_DATAGRAM, 0)
    assert not child.admin_cm and not child.umcast


async def test_del_link_removes_children_and_ignores_parents(env):
    netlink = env.driver.netlink
    child = await netlink.new_link("ib0", "blue", 0x8001)
    legacy = await env.driver.vlan.create_child(env.ib0, b"0x8002", net_admin=True)
    await netlink.del_link(child)
    await netlink.del_link(legacy)
    await netlink.del_link(env.ib0)
    assert list(env.driver.interfaces) == ["ib0"] and env.ib0.children == []
