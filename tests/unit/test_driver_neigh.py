"""driver/neigh.py: ipoib_start_xmit, ARP, neighbours and paths, the reader thread's routes."""

from __future__ import annotations

import trio
import trio.testing

from ipoibfs import wire
from ipoibfs.driver import neigh
from ipoibfs.driver.interface import NUD_FAILED, Neighbour

PEER_IP = bytes([198, 18, 0, 2])


def ipv4(dst: bytes, size: int = 84) -> bytes:
    header = bytes.fromhex("4500") + size.to_bytes(2, "big") + bytes(8) + bytes([198, 18, 0, 1])
    return wire.NO_OFFLOAD + header + dst + bytes(size - 20)


async def resolved_peer(env):
    """ib0 up with a neighbour learned for PEER_IP: a second port of the same HCA's GID."""
    ib0 = env.ib0
    await env.up(ib0)
    hwaddr = wire.hw_addr(wire.IPOIB_FLAGS_RC, 0x99, ib0.port.port.gid)
    return await env.driver.main.neigh.learn(ib0, PEER_IP, hwaddr)


async def test_neighbours_age_out_after_two_reap_periods(env, autojump_clock):
    ib0 = env.ib0
    ib0.neighbours[PEER_IP] = Neighbour(used=trio.current_time())
    await trio.sleep(neigh.REAP_SECONDS * 2 - 1)
    assert PEER_IP in ib0.neighbours  # a reap ran, but it is not old enough
    await trio.sleep(neigh.REAP_SECONDS + 2)
    assert ib0.neighbours == {}  # gone after 60-90 s, as ipoib_reap_neigh does


async def test_a_neighbour_the_reader_thread_uses_is_kept(env, autojump_clock):
    peer = await resolved_peer(env)
    route = env.ib0.routes[PEER_IP]
    for _ in range(4):
        await trio.sleep(neigh.REAP_SECONDS)
        route.used = env.driver.ctx.clock.now  # as xmit_fast stamps it
        peer.confirmed = env.driver.ctx.clock.now  # and the peer's answers confirm it
    assert env.ib0.neighbours[PEER_IP] is peer


async def test_learning_publishes_a_new_snapshot_of_routes(env):
    before = env.ib0.routes
    peer = await resolved_peer(env)
    assert before == {} and env.ib0.routes is not before
    assert env.ib0.routes[PEER_IP] is peer.ud_route
    assert peer.dlid == env.ib0.port.port.lid
    assert list(env.ib0.paths) == [env.ib0.port.port.gid]


async def test_the_fast_path_sends_only_what_the_snapshot_allows(env):
    main, ib0 = env.driver.main, env.ib0
    assert not main.neigh.xmit_fast(ib0, ipv4(PEER_IP))  # no carrier
    await resolved_peer(env)
    sent = []
    ib0.port.send = lambda dlid, parts, fds=(): sent.append((dlid, parts)) or 0
    assert main.neigh.xmit_fast(ib0, ipv4(PEER_IP))
    assert ib0.fast_tx.packets == 1 and ib0.statistic("tx_packets") == 1
    assert not main.neigh.xmit_fast(ib0, ipv4(bytes([198, 18, 0, 3])))  # unknown: slow path
    assert not main.neigh.xmit_fast(ib0, ipv4(PEER_IP, size=3000))  # over the multicast MTU
    assert len(sent) == 1 and sent[0][0] == ib0.port.port.lid


async def test_the_fast_path_leaves_debugging_and_group_addresses_to_trio(env):
    """A data-debug level sends every packet the slow way (its message is printed there);
    a neighbour whose address became a subnet's directed broadcast leaves the routes, as
    the reader thread tests nothing but the lookup."""
    main, ib0 = env.driver.main, env.ib0
    await resolved_peer(env)
    ib0.port.send = lambda dlid, parts, fds=(): 0
    params = env.driver.ctx.params
    params["cm_data_debug_level"] = 1
    assert params.data_debug and not main.neigh.xmit_fast(ib0, ipv4(PEER_IP))
    params["cm_data_debug_level"] = 0
    assert not params.data_debug and main.neigh.xmit_fast(ib0, ipv4(PEER_IP))

    third = bytes([198, 18, 0, 3])
    hwaddr = wire.hw_addr(wire.IPOIB_FLAGS_RC, 0x98, ib0.port.port.gid)
    await main.neigh.learn(ib0, third, hwaddr)
    for plen, published in ((24, True), (30, False)):  # 198.18.0.3 is /30's broadcast
        env.netdevs.addresses = _addresses(ib0, "198.18.0.1", plen)
        await main.neigh.refresh_addresses()
        assert (third in ib0.routes) is published and third in ib0.neighbours
        assert main.neigh.xmit_fast(ib0, ipv4(third)) is published
    assert PEER_IP in ib0.routes


def _addresses(iface, address: str, plen: int):
    """FakeNetdevs.addresses as the namespace would answer with one IPv4 address."""

    async def addresses() -> dict:
        return {iface.link.ifindex: [(2, address, plen)]}

    return addresses


async def test_flush_empties_neighbours_paths_and_routes(env):
    await resolved_peer(env)
    env.driver.main.flush_paths(env.ib0)
    assert env.ib0.neighbours == {} and env.ib0.paths == {} and env.ib0.routes == {}


async def test_unresolved_destinations_queue_three_then_drop(env, autojump_clock):
    main, ib0 = env.driver.main, env.ib0
    await env.up(ib0)
    for _ in range(5):
        main.neigh.xmit(ib0, ipv4(PEER_IP))
    assert len(ib0.neighbours[PEER_IP].queue) == 3 and ib0.stats["tx_dropped"] == 2
    await trio.sleep(3 * 1.0 + 0.5)  # mcast_solicit probes, retrans_time apart: nobody answers
    assert ib0.neighbours[PEER_IP].nud == NUD_FAILED and ib0.stats["tx_dropped"] == 5


async def test_arp_requests_for_our_address_are_answered(env):
    main, ib0 = env.driver.main, env.ib0
    await env.up(ib0)
    ib0.addrs4 = [(bytes([198, 18, 0, 1]), 24)]
    sent = []
    ib0.port.send = lambda dlid, parts, fds=(): sent.append(b"".join(parts)) or 0
    sha = wire.hw_addr(0, 0x99, ib0.port.port.gid)
    request = wire.ArpPacket(wire.ARPOP_REQUEST, sha, PEER_IP, bytes(20), bytes([198, 18, 0, 1]))
    frame = memoryview(wire.NO_OFFLOAD + request.pack())
    main.neigh.deliver(ib0, wire.ETH_P_ARP, frame, True)
    await trio.testing.wait_all_tasks_blocked()
    (reply,) = sent
    arp = wire.ArpPacket.unpack(reply[wire.UD_VNET_OFFSET + wire.VNET_HDR_LEN :])
    assert arp.op == wire.ARPOP_REPLY and arp.tha == sha and arp.tpa == PEER_IP
    assert wire.UdHeader.unpack_from(reply).dst_qpn == 0x99
    assert ib0.neighbours[PEER_IP].ready and ib0.stats["multicast"] == 1


async def test_the_neighbour_table_is_bounded(env):
    main, ib0 = env.driver.main, env.ib0
    await env.up(ib0)
    for i in range(neigh.NEIGH_TABLE_MAX + 10):
        main.neigh.xmit(ib0, ipv4(bytes([198, 18, i >> 8 & 0xFF, i & 0xFF])))
    assert len(ib0.neighbours) == neigh.NEIGH_TABLE_MAX and ib0.stats["tx_dropped"] == 10
