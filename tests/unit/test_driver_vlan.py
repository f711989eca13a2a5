"""driver/vlan.py: create_child and delete_child (ipoib_vlan_add/delete)."""

from __future__ import annotations

import errno

import pytest
import trio
import trio.testing

from ipoibfs.driver.interface import ChildType
from ipoibfs.errors import KernelError


async def test_create_child_names_and_pkeys(env):
    child = await env.driver.vlan.create_child(env.ib0, b"1\n", net_admin=True)
    ib0 = env.ib0
    assert child.name == "ib0.0001" and child.pkey == 0x8001 and child.qpn == 0x49
    assert child.parent is ib0 and child in ib0.children
    assert child.hw_addr[4:] == ib0.hw_addr[4:] and child.hw_addr[:4] != ib0.hw_addr[:4]


@pytest.mark.parametrize(
    ("buf", "err"),
    [(b"0", errno.EINVAL), (b"0x8000", errno.EINVAL), (b"65536", errno.EINVAL),
     (b"x", errno.EINVAL), (b"0xffff", errno.ENOTUNIQ)],
)  # fmt: skip
async def test_create_child_refusals(env, buf, err):
    with pytest.raises(KernelError) as e:
        await env.driver.vlan.create_child(env.ib0, buf, net_admin=True)
    assert e.value.errno == err
    assert list(env.driver.interfaces) == ["ib0"] and list(env.netdevs.links) == ["ib0"]


async def test_create_child_checks_the_capability_after_the_value(env):
    vlan = env.driver.vlan
    with pytest.raises(KernelError) as e:
        await vlan.create_child(env.ib0, b"junk", net_admin=False)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(KernelError) as e:
        await vlan.create_child(env.ib0, b"0x8001", net_admin=False)
    assert e.value.errno == errno.EPERM


async def test_duplicate_detection_compares_raw_with_effective(env):
    vlan, ib0 = env.driver.vlan, env.ib0
    await vlan.create_child(ib0, b"1", net_admin=True)
    with pytest.raises(KernelError) as e:
        await vlan.create_child(ib0, b"0x8001", net_admin=True)
    assert e.value.errno == errno.ENOTUNIQ
    with pytest.raises(KernelError) as e:
        await vlan.create_child(ib0, b"1", net_admin=True)
    assert e.value.errno == errno.EEXIST
    assert "ib0.0001: failed to initialize; error -17" in env.log.lines
    child = await vlan.create_child(ib0, b"0x7fff", net_admin=True)
    assert child.pkey == 0xFFFF


async def test_delete_child_is_asynchronous_and_matches_effective_pkeys(env):
    vlan, ib0 = env.driver.vlan, env.ib0
    await vlan.create_child(ib0, b"1", net_admin=True)
    with pytest.raises(KernelError) as e:
        await vlan.delete_child(ib0, b"1", net_admin=True)
    assert e.value.errno == errno.ENODEV
    await vlan.delete_child(ib0, b"0x8001", net_admin=True)
    assert ib0.children == []
    assert "ib0.0001" in env.driver.interfaces  # still registered: the work item has not run
    await trio.testing.wait_all_tasks_blocked()
    assert list(env.driver.interfaces) == ["ib0"] and list(env.netdevs.links) == ["ib0"]


async def test_delete_child_never_removes_rtnl_children(env):
    await env.driver.netlink.new_link("ib0", "blue", 0x8001)
    with pytest.raises(KernelError) as e:
        await env.driver.vlan.delete_child(env.ib0, b"0x8001", net_admin=True)
    assert e.value.errno == errno.ENODEV
    assert env.driver.interfaces["blue"].child_type is ChildType.RTNL
