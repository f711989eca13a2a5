"""driver/ib.py: the UD QP's receive checks and counters, and the P_Key change event."""

from __future__ import annotations

import trio.testing

from ipoibfs import wire
from ipoibfs.driver import ib
from ipoibfs.fabric.partitions import parse_partitions

PING = bytes.fromhex("45000054000040004001") + bytes(2) + bytes([198, 18, 0, 2, 198, 18, 0, 1])


def datagram(iface, *, qkey=wire.IPOIB_QKEY, pkey=0xFFFF, dqpn=None, payload=PING) -> memoryview:
    header = wire.UdHeader(slid=3, dlid=iface.port.port.lid, src_qpn=0x48,
                           dst_qpn=iface.qpn if dqpn is None else dqpn, pkey=pkey, qkey=qkey,
                           sgid=bytes(16), dgid=iface.port.port.gid)  # fmt: skip
    return memoryview(header.pack() + wire.ipoib_header(wire.ETH_P_IP) + wire.NO_OFFLOAD + payload)


async def test_unicast_reaches_the_stack_and_is_counted(env):
    ib0 = env.ib0
    await env.up(ib0)
    env.driver.main.ud.receive(ib0.port, datagram(ib0))
    assert env.netdevs.links["ib0"].received == [wire.NO_OFFLOAD + PING]
    assert ib0.statistic("rx_packets") == 1 and ib0.statistic("rx_bytes") == len(PING)


async def test_wrong_qkey_pkey_or_qpn_is_dropped_silently(env):
    ib0 = env.ib0
    await env.up(ib0)
    ud = env.driver.main.ud
    for bad in (datagram(ib0, qkey=0x1234), datagram(ib0, pkey=0x8001), datagram(ib0, dqpn=0x99)):
        ud.receive(ib0.port, bad)
    assert env.netdevs.links["ib0"].received == [] and ib0.statistic("rx_packets") == 0


async def test_a_closed_interface_receives_nothing(env):
    env.driver.main.ud.receive(env.ib0.port, datagram(env.ib0))
    assert env.netdevs.links["ib0"].received == []


async def test_lso_super_packets_count_as_their_segments(env):
    frame = bytearray(wire.NO_OFFLOAD + bytes(40 + 3000))
    frame[1] = 1  # VIRTIO_NET_HDR_GSO_TCPV4
    frame[2:4] = (40).to_bytes(2, "little")  # header length
    frame[4:6] = (1000).to_bytes(2, "little")  # MSS
    ib.UdQp.count_rx(env.ib0, bytes(frame), False)
    assert env.ib0.stats["rx_packets"] == 3 and env.ib0.stats["rx_bytes"] == 3040 + 2 * 40


async def test_pkey_change_gives_and_takes_carrier(env):
    driver = env.driver
    child = await driver.vlan.create_child(env.ib0, b"0x8001", net_admin=True)
    await env.up(env.ib0)
    await driver.main.link_event(child.link.ifindex)
    await trio.testing.wait_all_tasks_blocked()
    assert not child.carrier
    fport = driver.ctx.ports[0]
    sm = fport.sm.sm
    sm.set_partitions(parse_partitions("Default=0x7fff, ipoib : ALL=full;\n"
                                       "blue=0x0001, ipoib : ALL=full;\n"))  # fmt: skip
    await ib.pkey_change(driver.ctx, fport, driver.main)
    await trio.testing.wait_all_tasks_blocked()
    assert child.carrier and env.netdevs.links[child.name].carrier
    sm.set_partitions(parse_partitions("Default=0x7fff, ipoib : ALL=full;\n"))
    await ib.pkey_change(driver.ctx, fport, driver.main)
    await trio.testing.wait_all_tasks_blocked()
    assert not child.carrier and not env.netdevs.links[child.name].carrier
    assert env.ib0.carrier


async def test_a_client_reregister_rejoins_without_dropping_carrier(env):
    driver, ib0 = env.driver, env.ib0
    await env.up(ib0)
    fport = driver.ctx.ports[0]
    group = fport.sm.sm.groups[ib0.broadcast_mgid]
    group.members.clear()  # the SM restarted: it knows no member
    await ib.client_reregister(driver.ctx, fport, driver.main)
    assert ib0.carrier
    await trio.testing.wait_all_tasks_blocked()
    assert ib0.qpn in {qpn for _, qpn in group.members} and ib0.mcast[ib0.broadcast_mgid].complete
