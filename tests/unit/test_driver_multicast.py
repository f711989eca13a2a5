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
    await trio.testing.wait_all_tasks_blocked()
    assert len(ib0.mcast) == 3  # broadcast, 224.0.0.1, ff02::1 (ff01::1 is node-local)
    await mcast.restart(ib0, [], [])
    await trio.testing.wait_all_tasks_blocked()
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
    await trio.testing.wait_all_tasks_blocked()
    main.set_umcast(ib0, b"1")
    await main.mcast.restart(ib0, ["224.0.0.1"], [])
    await trio.testing.wait_all_tasks_blocked()
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


class GatedSm:
    """The embedded subnet manager behind a gate: requests wait until it opens (a SIGSTOPped
    SM), and the order they reach it in is recorded."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.gate = trio.Event()
        self.seen: list[tuple[str, bytes]] = []

    async def join(self, lid, qpn, mgid, pkey, *, send_only, create):
        await self.gate.wait()
        self.seen.append(("join", mgid))
        return await self.inner.join(lid, qpn, mgid, pkey, send_only=send_only, create=create)

    async def leave(self, lid, qpn, mgid):
        await self.gate.wait()
        self.seen.append(("leave", mgid))
        await self.inner.leave(lid, qpn, mgid)

    async def path(self, dgid, pkey):
        await self.gate.wait()
        return await self.inner.path(dgid, pkey)


async def test_a_silent_subnet_manager_never_holds_rtnl(env):
    from ipoibfs.driver.fs import show_mcg

    driver, ib0 = env.driver, env.ib0
    fport = driver.ctx.ports[0]
    sm = fport.sm = GatedSm(fport.sm)
    await env.up(ib0)  # the broadcast join now waits for the SM
    assert ib0.opened and not ib0.carrier
    assert "  complete:        no" in show_mcg(ib0)  # pending, as the kernel shows it
    with trio.fail_after(5):  # each returns at once; none waits for the SM
        await driver.main.set_mode(ib0, b"connected\n")
        await driver.main.change_mtu(ib0, 9000)
        driver.main.set_umcast(ib0, b"1")
        child = await driver.vlan.create_child(ib0, b"0x7fff", net_admin=True)
        await driver.netlink.new_link("ib0", "blue", 0x8001)
        await env.down(ib0)
        await env.up(ib0)
    sm.gate.set()  # SIGCONT: the joins complete
    await trio.testing.wait_all_tasks_blocked()
    assert ib0.carrier and env.netdevs.links["ib0"].carrier
    await driver.main.link_event(child.link.ifindex)
    await trio.testing.wait_all_tasks_blocked()
    assert child.carrier


async def test_a_leave_queued_by_a_flush_goes_before_the_next_join(env):
    ib0 = env.ib0
    fport = env.driver.ctx.ports[0]
    await env.up(ib0)
    sm = fport.sm = GatedSm(fport.sm)
    await env.down(ib0)
    await env.up(ib0)
    sm.gate.set()
    await trio.testing.wait_all_tasks_blocked()
    assert sm.seen == [("leave", ib0.broadcast_mgid), ("join", ib0.broadcast_mgid)]
    members = fport.sm.inner.sm.groups[ib0.broadcast_mgid].members
    assert ib0.qpn in {qpn for _, qpn in members} and ib0.carrier


async def test_failed_joins_back_off_as_the_join_task_does(env, autojump_clock):
    ib0 = env.ib0
    sm = env.driver.ctx.ports[0].sm.sm
    group = sm.groups.pop(ib0.broadcast_mgid)
    tries = []
    real_join = sm.join

    def join(*args, **kw):
        tries.append(trio.current_time())
        return real_join(*args, **kw)

    sm.join = join
    await env.up(ib0)
    await trio.sleep(2 + 4 + 8 + 16 + 16 + 1)
    gaps = [round(b - a) for a, b in zip(tries, tries[1:], strict=False)]
    assert gaps == [2, 4, 8, 16, 16] and not ib0.carrier
    sm.groups[ib0.broadcast_mgid] = group
    await trio.sleep(16)
    assert ib0.carrier
