"""driver/multicast.py: IP groups the stack joins, umcast, send-only joins and their ageing."""

from __future__ import annotations

import trio
import trio.testing

from ipoibfs.driver import main, neigh
from ipoibfs.driver.interface import ChildType

IPV6_MLD = b"\0" * 10 + bytes.fromhex("6000000000083a01") + bytes(32) + b"\x8f" + bytes(7)
MLD_MGID = bytes.fromhex("ff12601bffff00000000000000000016")


async def test_ip_groups_are_joined_and_left(env):
    mcast, ib0 = env.driver.main.mcast, env.ib0
    await env.up(ib0)
    await mcast.restart(ib0, ["224.0.0.1"], ["ff02::1", "ff01::1"])
    assert len(ib0.mcast) == 3  # broadcast, 224.0.0.1, ff02::1 (ff01::1 is node-local)
    await mcast.restart(ib0, [], [])
    assert list(ib0.mcast) == [ib0.broadcast_mgid]


async def test_the_driver_follows_the_stacks_memberships(env, autojump_clock):
    ib0 = env.ib0
    await env.up(ib0)
    env.netdevs.groups["ib0"] = (["224.0.0.1"], [])
    await trio.sleep(main.IP_GROUP_POLL_SECONDS * 2)
    assert len(ib0.mcast) == 2
    env.netdevs.groups["ib0"] = ([], [])
    await trio.sleep(main.IP_GROUP_POLL_SECONDS * 2)
    assert list(ib0.mcast) == [ib0.broadcast_mgid]


async def test_umcast_skips_groups_another_qp_of_the_port_holds(env):
    main, ib0 = env.driver.main, env.ib0
    await env.up(ib0)
    async with env.driver.ctx.rtnl:
        twin = await main.register("twin", ib0.port, 0x7FFF, ChildType.RTNL, ib0)
    await env.up(twin)
    await main.mcast.restart(twin, ["224.0.0.1"], [])
    main.set_umcast(ib0, b"1")
    await main.mcast.restart(ib0, ["224.0.0.1"], [])
    assert list(ib0.mcast) == [ib0.broadcast_mgid]


async def test_send_only_groups_are_joined_on_send_and_left_when_reaped(env, autojump_clock):
    mcast, ib0 = env.driver.main.mcast, env.ib0
    await env.up(ib0)
    mcast.send(ib0, MLD_MGID, 0x86DD, IPV6_MLD)
    assert ib0.mcast[MLD_MGID].send_only and not ib0.mcast[MLD_MGID].complete
    await trio.testing.wait_all_tasks_blocked()
    entry = ib0.mcast[MLD_MGID]
    assert entry.complete and entry.queue == [] and ib0.stats["tx_packets"] == 1
    assert ib0.port.has_member(MLD_MGID, exclude_qpn=0)
    await trio.sleep(neigh.REAP_SECONDS * 3 + 1)
    assert MLD_MGID not in ib0.mcast
    assert not ib0.port.has_member(MLD_MGID, exclude_qpn=0)


async def test_a_failed_broadcast_join_is_retried(env, autojump_clock):
    ib0, sm = env.ib0, env.driver.ctx.ports[0].sm.sm
    group = sm.groups.pop(ib0.broadcast_mgid)  # the SM has not created the group yet
    await env.up(ib0)
    assert ib0.opened and not ib0.carrier
    sm.groups[ib0.broadcast_mgid] = group
    await trio.sleep(3)
    assert ib0.carrier and env.netdevs.links["ib0"].carrier
