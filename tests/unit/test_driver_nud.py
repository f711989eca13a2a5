"""driver/neigh.py's NUD state machine (neighbour.c, arp.c), on trio's virtual clock:
REACHABLE -> STALE -> DELAY -> PROBE -> FAILED, confirmations, arp_accept, the sysctls."""

from __future__ import annotations

import errno

import pytest
import trio
import trio.testing

from ipoibfs import wire
from ipoibfs.driver import neigh
from ipoibfs.driver.interface import (
    NUD_DELAY,
    NUD_FAILED,
    NUD_INCOMPLETE,
    NUD_PROBE,
    NUD_REACHABLE,
    NUD_STALE,
)
from ipoibfs.errors import KernelError

from .test_driver_neigh import PEER_IP, ipv4

OUR_IP = bytes([198, 18, 0, 1])


class Wire:
    """What ib0 sends, captured: ARP packets with their destination QPN (MCAST_QPN for the
    broadcast group), and IP packets."""

    def __init__(self, env) -> None:
        self.arps: list[tuple[int, wire.ArpPacket]] = []
        self.ip: list[int] = []
        port = env.ib0.port
        port.send = lambda dlid, parts, fds=(): self._capture(parts)
        port.send_multicast = lambda mgid, parts: self._capture(parts)

    def _capture(self, parts) -> int:
        data = b"".join(parts)
        hdr = wire.UdHeader.unpack_from(data)
        payload = data[wire.UD_VNET_OFFSET + wire.VNET_HDR_LEN :]
        proto = int.from_bytes(data[hdr.SIZE : hdr.SIZE + 2], "big")
        if proto == wire.ETH_P_ARP:
            self.arps.append((hdr.dst_qpn, wire.ArpPacket.unpack(payload)))
        else:
            self.ip.append(hdr.dst_qpn)
        return 0

    def requests(self) -> list[int]:
        """The destination QPN of every ARP request sent so far."""
        return [qpn for qpn, arp in self.arps if arp.op == wire.ARPOP_REQUEST]


def hw(qpn: int, env) -> bytes:
    return wire.hw_addr(0, qpn, env.ib0.port.gid)


def receive(env, proto: int, packet: bytes, *, src_qpn: int, unicast: bool = True) -> None:
    """A datagram from a peer on our own port reaches ib0 (unicast, or to the broadcast group)."""
    ib0 = env.ib0
    env.driver.main.ud.rx = wire.UdHeader(
        slid=ib0.port.lid,
        dlid=ib0.port.lid,
        src_qpn=src_qpn,
        dst_qpn=ib0.qpn if unicast else wire.MCAST_QPN,
        pkey=0xFFFF,
        qkey=wire.IPOIB_QKEY,
        sgid=ib0.port.gid,
        dgid=bytes(16) if unicast else ib0.broadcast_mgid,
    )
    env.driver.main.neigh.deliver(ib0, proto, memoryview(wire.NO_OFFLOAD + packet), not unicast)


def arp_in(env, op: int, sha: bytes, spa: bytes, tpa: bytes, *, unicast: bool, qpn: int) -> None:
    tha = env.ib0.hw_addr if op == wire.ARPOP_REPLY else bytes(20)
    receive(env, wire.ETH_P_ARP, wire.ArpPacket(op, sha, spa, tha, tpa).pack(),
            src_qpn=qpn, unicast=unicast)  # fmt: skip


def ip_from_peer(src: bytes) -> bytes:
    return bytes.fromhex("4500001c") + bytes(8) + src + OUR_IP + bytes(8)


@pytest.fixture
async def up(env):
    """ib0 up with 198.18.0.1 (what the address dumps give too), reachable_time pinned to
    30 s, sends captured."""

    async def addresses() -> dict:
        return {env.ib0.link.ifindex: [(2, "198.18.0.1", 24)]}

    env.netdevs.addresses = addresses
    await env.up(env.ib0)
    env.ib0.addrs4 = [(OUR_IP, 24)]
    parms = env.ib0.arp_parms
    parms.reachable_time, parms.randomised_at = 30.0, trio.current_time()
    return Wire(env)


async def resolve(env, qpn: int = 0x99):
    """A ping to PEER_IP, answered by a unicast ARP reply from `qpn`."""
    main, ib0 = env.driver.main, env.ib0
    main.neigh.xmit(ib0, ipv4(PEER_IP))
    arp_in(env, wire.ARPOP_REPLY, hw(qpn, env), PEER_IP, OUR_IP, unicast=True, qpn=qpn)
    await trio.testing.wait_all_tasks_blocked()
    return ib0.neighbours[PEER_IP]


async def test_resolution_broadcasts_and_a_unicast_reply_makes_it_reachable(
    env, up, autojump_clock
):
    peer = await resolve(env)
    assert up.requests() == [wire.MCAST_QPN]  # one broadcast, answered at once
    assert peer.nud == NUD_REACHABLE and peer.hwaddr == hw(0x99, env)
    assert env.ib0.routes[PEER_IP] is peer.ud_route and up.ip == [0x99]  # the queued ping went


async def test_an_unused_entry_goes_stale_and_its_next_use_delays_then_probes(
    env, up, autojump_clock
):
    main, ib0 = env.driver.main, env.ib0
    peer = await resolve(env)
    await trio.sleep(30.5)  # reachable_time, unused since: STALE, off the reader's routes
    assert peer.nud == NUD_STALE and PEER_IP not in ib0.routes
    main.neigh.xmit(ib0, ipv4(PEER_IP))  # the first use: DELAY, sent at once, published
    assert peer.nud == NUD_DELAY and up.ip[-1] == 0x99 and PEER_IP in ib0.routes
    await trio.sleep(5.1)  # delay_first_probe_time without confirmation
    assert peer.nud == NUD_PROBE and up.requests()[1:] == [0x99]  # unicast to the old address
    await trio.sleep(3.0)
    assert up.requests()[1:] == [0x99] * 3  # ucast_solicit, retrans_time apart, then FAILED
    assert peer.nud == NUD_FAILED and PEER_IP not in ib0.routes


async def test_a_probe_answered_makes_it_reachable_again(env, up, autojump_clock):
    main, ib0 = env.driver.main, env.ib0
    peer = await resolve(env)
    await trio.sleep(30.5)
    main.neigh.xmit(ib0, ipv4(PEER_IP))
    await trio.sleep(5.1)
    assert peer.nud == NUD_PROBE
    arp_in(env, wire.ARPOP_REPLY, hw(0x99, env), PEER_IP, OUR_IP, unicast=True, qpn=0x99)
    await trio.testing.wait_all_tasks_blocked()
    assert peer.nud == NUD_REACHABLE and PEER_IP in ib0.routes


async def test_received_unicast_from_the_peer_confirms_it(env, up, autojump_clock):
    ib0 = env.ib0
    peer = await resolve(env)
    route = ib0.routes[PEER_IP]
    for _ in range(100):  # 60 s of traffic both ways, 0.6 s apart
        await trio.sleep(0.6)
        route.used = env.driver.ctx.clock.now  # as the reader thread stamps it
        receive(env, wire.ETH_P_IP, ip_from_peer(PEER_IP), src_qpn=0x99)
    assert peer.nud in (NUD_REACHABLE, NUD_DELAY) and up.requests() == [wire.MCAST_QPN]
    # The same traffic from another QPN (the peer's address re-created) confirms nothing.
    for _ in range(100):
        await trio.sleep(0.6)
        route.used = env.driver.ctx.clock.now
        receive(env, wire.ETH_P_IP, ip_from_peer(PEER_IP), src_qpn=0x77)
        if peer.nud == NUD_PROBE:
            break
    assert peer.nud == NUD_PROBE


async def test_a_changed_peer_is_found_again_while_traffic_never_stops(env, up, autojump_clock):
    """The peer's QPN changes (child re-created); pings every 0.2 s find it again within
    reachable_time (<= 45 s) + delay_first_probe_time + ucast_solicit x retrans_time."""
    main, ib0 = env.driver.main, env.ib0
    peer = await resolve(env)
    seen = len(up.arps)  # from here on the old QPN is gone; the new one (0x5a) answers
    start = trio.current_time()
    found = None
    while trio.current_time() - start < 60:
        await trio.sleep(0.2)
        if PEER_IP in ib0.routes:
            ib0.routes[PEER_IP].used = env.driver.ctx.clock.now  # the fast path sent it
        else:
            main.neigh.xmit(ib0, ipv4(PEER_IP))
        for qpn, arp in up.arps[seen:]:
            if qpn == wire.MCAST_QPN and arp.op == wire.ARPOP_REQUEST:
                arp_in(env, wire.ARPOP_REPLY, hw(0x5A, env), PEER_IP, OUR_IP, unicast=True,
                       qpn=0x5A)  # fmt: skip
        seen = len(up.arps)
        await trio.testing.wait_all_tasks_blocked()
        peer = ib0.neighbours[PEER_IP]
        if peer.ready and peer.qpn == 0x5A and PEER_IP in ib0.routes:
            found = trio.current_time() - start
            break
    assert found is not None and found < 30 * 1.5 + 5 + 3 + 1, found
    assert peer.nud == NUD_REACHABLE


async def test_gratuitous_arp_updates_an_entry_but_makes_none_with_arp_accept_0(
    env, up, autojump_clock
):
    ib0 = env.ib0
    peer = await resolve(env)  # within locktime: a gratuitous ARP overrides it
    new_hw = hw(0x5A, env)
    arp_in(env, wire.ARPOP_REQUEST, new_hw, PEER_IP, PEER_IP, unicast=False, qpn=0x5A)  # -U
    other = bytes([198, 18, 0, 9])
    arp_in(env, wire.ARPOP_REQUEST, hw(0x60, env), other, other, unicast=False, qpn=0x60)
    await trio.testing.wait_all_tasks_blocked()
    assert peer.hwaddr == new_hw and peer.nud == NUD_STALE and peer.ready
    assert other not in ib0.neighbours
    env.driver.main.neigh.xmit(ib0, ipv4(PEER_IP))  # the next packet goes to the new QPN
    assert up.ip[-1] == 0x5A and peer.nud == NUD_DELAY


async def test_a_gratuitous_request_right_after_resolution_updates_the_entry(
    env, up, autojump_clock
):
    peer = await resolve(env)
    assert trio.current_time() - peer.updated < env.ib0.arp_parms.locktime
    new_hw = hw(0x5A, env)
    arp_in(env, wire.ARPOP_REQUEST, new_hw, PEER_IP, PEER_IP, unicast=False, qpn=0x5A)  # -U
    await trio.testing.wait_all_tasks_blocked()
    assert trio.current_time() - peer.updated < env.ib0.arp_parms.locktime
    assert peer.hwaddr == new_hw and peer.nud == NUD_STALE


async def test_a_gratuitous_reply_right_after_resolution_updates_the_entry(env, up, autojump_clock):
    peer = await resolve(env)
    new_hw = hw(0x5A, env)
    garp = wire.ArpPacket(wire.ARPOP_REPLY, new_hw, PEER_IP, new_hw, PEER_IP)  # arping -A
    receive(env, wire.ETH_P_ARP, garp.pack(), src_qpn=0x5A, unicast=False)
    assert peer.hwaddr == new_hw and peer.nud == NUD_STALE  # a broadcast reply: STALE


async def test_a_reply_to_itself_with_another_target_hw_is_not_gratuitous(env, up, autojump_clock):
    peer = await resolve(env)
    other = wire.ArpPacket(wire.ARPOP_REPLY, hw(0x5A, env), PEER_IP, env.ib0.hw_addr, PEER_IP)
    receive(env, wire.ETH_P_ARP, other.pack(), src_qpn=0x5A, unicast=False)
    assert peer.hwaddr == hw(0x99, env)  # tha != sha: locktime holds


async def test_a_gratuitous_arp_from_a_broadcast_address_is_not_gratuitous(env, up, autojump_clock):
    peer = await resolve(env)
    env.ib0.broadcasts4 = {PEER_IP}  # as if PEER_IP were the subnet's broadcast route
    arp_in(env, wire.ARPOP_REQUEST, hw(0x5A, env), PEER_IP, PEER_IP, unicast=False, qpn=0x5A)
    assert peer.hwaddr == hw(0x99, env)  # not RTN_UNICAST: locktime holds


async def test_drop_gratuitous_arp_drops_it(env, up, autojump_clock):
    peer = await resolve(env)
    env.ib0.arp_parms.drop_gratuitous = True
    arp_in(env, wire.ARPOP_REQUEST, hw(0x5A, env), PEER_IP, PEER_IP, unicast=False, qpn=0x5A)
    assert peer.hwaddr == hw(0x99, env)


async def test_arp_accept_2_creates_entries_only_for_senders_on_link(env, up, autojump_clock):
    env.ib0.arp_parms.accept = 2
    far, near = bytes([198, 19, 0, 9]), bytes([198, 18, 0, 9])
    for addr, qpn in ((far, 0x60), (near, 0x61)):
        arp_in(env, wire.ARPOP_REQUEST, hw(qpn, env), addr, addr, unicast=False, qpn=qpn)
    await trio.testing.wait_all_tasks_blocked()
    assert far not in env.ib0.neighbours and env.ib0.neighbours[near].nud == NUD_STALE


async def test_arp_is_processed_in_order_with_one_address_dump(env, up, autojump_clock):
    """Requests for addresses not ours wait for one dump (an address of ours changed since
    the last), and what follows them waits behind them; nothing is dumped per packet."""
    ib0 = env.ib0
    dumps = []

    async def addresses():
        dumps.append(trio.current_time())
        await trio.lowlevel.checkpoint()
        return {ib0.link.ifindex: [(2, "198.18.0.1", 24)]}

    env.netdevs.addresses = addresses
    await trio.sleep(0.75)  # between the driver's polls
    env.driver.main.neigh.addresses_changed()  # an RTM_NEWADDR or RTM_DELADDR
    before = len(dumps)
    first, second = hw(0x5A, env), hw(0x5B, env)
    strangers = [bytes([198, 18, 0, 100 + i]) for i in range(20)]
    for addr in strangers:  # requests for someone else, broadcast
        arp_in(env, wire.ARPOP_REQUEST, hw(0x70, env), bytes([198, 18, 0, 70]), addr,
               unicast=False, qpn=0x70)  # fmt: skip
    arp_in(env, wire.ARPOP_REQUEST, first, PEER_IP, OUR_IP, unicast=False, qpn=0x5A)
    arp_in(env, wire.ARPOP_REQUEST, second, PEER_IP, OUR_IP, unicast=False, qpn=0x5B)
    assert PEER_IP not in ib0.neighbours  # waiting behind the first stranger's dump
    await trio.testing.wait_all_tasks_blocked()
    assert len(dumps) == before + 1, dumps  # one for 22 packets
    assert ib0.neighbours[PEER_IP].hwaddr == second  # in arrival order: the last one counts
    assert not ib0.arp_backlog
    replies = [(qpn, a) for qpn, a in up.arps if a.op == wire.ARPOP_REPLY]
    assert sorted(qpn for qpn, _ in replies) == [0x5A, 0x5B]


async def test_arp_accept_1_creates_entries_from_gratuitous_arp(env, up, autojump_clock):
    env.ib0.arp_parms.accept = 1
    other = bytes([198, 18, 0, 9])
    arp_in(env, wire.ARPOP_REQUEST, hw(0x60, env), other, other, unicast=False, qpn=0x60)
    await trio.testing.wait_all_tasks_blocked()
    assert env.ib0.neighbours[other].nud == NUD_STALE


async def test_within_locktime_a_second_answer_does_not_override(env, up, autojump_clock):
    peer = await resolve(env)
    arp_in(env, wire.ARPOP_REPLY, hw(0x5A, env), PEER_IP, OUR_IP, unicast=True, qpn=0x5A)
    await trio.testing.wait_all_tasks_blocked()
    assert peer.hwaddr == hw(0x99, env)  # the first reply wins (arp_process's locktime)


async def test_requests_for_us_are_answered_and_dad_probes_too(env, up, autojump_clock):
    arp_in(env, wire.ARPOP_REQUEST, hw(0x99, env), bytes(4), OUR_IP, unicast=False, qpn=0x99)
    await trio.testing.wait_all_tasks_blocked()
    ((qpn, reply),) = up.arps
    assert qpn == 0x99 and reply.op == wire.ARPOP_REPLY and reply.spa == OUR_IP
    assert reply.tpa == bytes(4) and reply.tha == hw(0x99, env)
    assert PEER_IP not in env.ib0.neighbours  # a DAD probe teaches nothing


async def test_the_kernels_own_gratuitous_arp_goes_out_with_our_address(env, up, autojump_clock):
    # inetdev_send_gratuitous_arp on a TUN: hardware type 32, no hardware addresses.
    packet = bytes.fromhex("002008000004") + (1).to_bytes(2, "big") + OUR_IP + OUR_IP
    env.driver.main.neigh.xmit(env.ib0, wire.NO_OFFLOAD + packet)
    ((qpn, arp),) = up.arps
    assert qpn == wire.MCAST_QPN and arp.sha == env.ib0.hw_addr and arp.spa == arp.tpa == OUR_IP


async def test_delete_removes_an_entry(env, up, autojump_clock):
    main, ib0 = env.driver.main, env.ib0
    await resolve(env)
    main.neigh.delete(ib0, PEER_IP)
    assert PEER_IP not in ib0.neighbours and PEER_IP not in ib0.routes
    with pytest.raises(KernelError) as e:
        main.neigh.delete(ib0, PEER_IP)
    assert e.value.errno == errno.ENOENT


async def test_the_timers_come_from_the_namespace_sysctls(env, up, autojump_clock):
    base = "ipv4/neigh/ib0/"
    env.netdevs.sysctl_values.update({
        base + "base_reachable_time_ms": 4000, base + "delay_first_probe_time": 2,
        base + "retrans_time_ms": 500, base + "ucast_solicit": 1, base + "locktime": 50,
        "ipv4/conf/all/arp_accept": 1, "ipv4/conf/ib0/drop_gratuitous_arp": 1,
    })  # fmt: skip
    await trio.sleep(1.5)  # base_reachable_time_ms is read every second, the rest less often
    parms = env.ib0.arp_parms
    assert parms.base_reachable_time == 4.0 and 2.0 <= parms.reachable_time < 6.0
    assert parms.delay_first_probe_time == 5.0 and parms.accept == 0
    await trio.sleep(neigh.SYSCTL_SLOW_POLL_SECONDS)
    assert (parms.base_reachable_time, parms.delay_first_probe_time) == (4.0, 2.0)
    assert (parms.retrans_time, parms.ucast_solicit, parms.locktime) == (0.5, 1, 0.5)
    assert 2.0 <= parms.reachable_time < 6.0 and parms.accept == 1 and parms.drop_gratuitous
    assert env.ib0.nd_parms.base_reachable_time == 30.0


async def test_an_incomplete_entry_is_not_sent_to(env, up, autojump_clock):
    main, ib0 = env.driver.main, env.ib0
    main.neigh.xmit(ib0, ipv4(PEER_IP))
    assert ib0.neighbours[PEER_IP].nud == NUD_INCOMPLETE and PEER_IP not in ib0.routes
    assert main.neigh.xmit_fast(ib0, ipv4(PEER_IP)) is False


async def test_a_probe_comes_from_the_waiting_packets_source(env, up, autojump_clock):
    env.ib0.addrs4 = []  # the address was added a moment ago and not read yet
    env.driver.main.neigh.xmit(env.ib0, ipv4(PEER_IP))
    ((qpn, arp),) = up.arps
    assert arp.spa == OUR_IP and arp.tpa == PEER_IP  # arp_solicit with arp_announce 0
