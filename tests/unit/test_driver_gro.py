"""driver/ib.py's receive side: GRO of a receive batch and the RX moderation (rx-usecs,
rx-frames), with the driver's counters per segment the HCA delivered."""

from __future__ import annotations

from types import SimpleNamespace

import trio
import trio.testing

from ipoibfs import wire
from ipoibfs.driver import ethtool, ib
from ipoibfs.wire import lro

from .test_driver_ib import PING
from .test_lro import DST, SRC, flow

MSS = 1000


def datagram(iface, packet: bytes, vnet: bytes = wire.NO_OFFLOAD) -> memoryview:
    header = wire.UdHeader(slid=3, dlid=iface.port.port.lid, src_qpn=0x48, dst_qpn=iface.qpn,
                           pkey=0xFFFF, qkey=wire.IPOIB_QKEY, sgid=bytes(16),
                           dgid=iface.port.port.gid)  # fmt: skip
    return memoryview(header.pack() + wire.ipoib_header(wire.ETH_P_IP) + vnet + packet)


def ping_to_us() -> bytes:
    """PING with our addresses (the segments' flow)."""
    return PING[:12] + SRC + DST + PING[20:]


class Batch:
    """The port's receive loop as the driver sees it: callbacks for the end of the batch."""

    def __init__(self, iface) -> None:
        self.pending: list = []
        iface.port.at_batch_end = self.pending.append

    def end(self) -> None:
        pending, self.pending = self.pending, []
        for fn in pending:
            fn()


async def test_segments_of_one_batch_reach_the_stack_merged(env):
    ib0 = env.ib0
    await env.up(ib0)
    batch = Batch(ib0)
    ud = env.driver.main.ud
    for segment in flow(4, MSS):
        ud.receive(ib0.port, datagram(ib0, segment))
    received = env.netdevs.links["ib0"].received
    assert received == []  # held until the batch ends
    batch.end()
    assert len(received) == 1
    flags, gso, _, gso_size, _, _ = lro.VNET_HDR.unpack(received[0][:10])
    assert gso == lro.VIRTIO_NET_HDR_GSO_TCPV4 and gso_size == MSS
    assert len(received[0]) - 10 > ib0.mcast_mtu  # larger than the MTU
    # The driver counts what the HCA delivered: four segments and their IP lengths.
    assert ib0.statistic("rx_packets") == 4
    assert ib0.statistic("rx_bytes") == sum(len(s) for s in flow(4, MSS))


async def test_with_gro_and_lro_off_every_segment_goes_up_as_it_came(env):
    ib0 = env.ib0
    await env.up(ib0)
    ib0.features = SimpleNamespace(on=lambda name: False)
    batch = Batch(ib0)
    segments = flow(4, MSS)
    for segment in segments:
        env.driver.main.ud.receive(ib0.port, datagram(ib0, segment))
    assert env.netdevs.links["ib0"].received == [wire.NO_OFFLOAD + s for s in segments]
    assert batch.pending == []
    assert ib0.statistic("rx_packets") == 4


async def test_lro_alone_merges_too(env):
    ib0 = env.ib0
    await env.up(ib0)
    ib0.features = SimpleNamespace(on=lambda name: name == "rx-lro")
    batch = Batch(ib0)
    for segment in flow(3, MSS):
        env.driver.main.ud.receive(ib0.port, datagram(ib0, segment))
    batch.end()
    assert len(env.netdevs.links["ib0"].received) == 1


async def test_what_gro_cannot_merge_goes_up_at_once_while_nothing_is_held(env):
    ib0 = env.ib0
    await env.up(ib0)
    batch = Batch(ib0)
    ud = env.driver.main.ud
    ud.receive(ib0.port, datagram(ib0, ping_to_us()))
    super_packet = bytearray(wire.NO_OFFLOAD)
    super_packet[1] = lro.VIRTIO_NET_HDR_GSO_TCPV4
    super_packet[2:4] = (72).to_bytes(2, "little")
    super_packet[4:6] = (MSS).to_bytes(2, "little")
    (big,) = flow(1, 3 * MSS)
    ud.receive(ib0.port, datagram(ib0, big, bytes(super_packet)))
    received = env.netdevs.links["ib0"].received
    assert received == [wire.NO_OFFLOAD + ping_to_us(), bytes(super_packet) + big]
    assert batch.pending == []
    assert ib0.statistic("rx_packets") == 1 + 3  # the LSO send counts as its segments


async def test_a_batch_is_flushed_after_napi_weight_frames(env):
    ib0 = env.ib0
    await env.up(ib0)
    Batch(ib0)
    ud = env.driver.main.ud
    segments = flow(ib.NAPI_WEIGHT, 100)
    for segment in segments:
        ud.receive(ib0.port, datagram(ib0, segment))
    assert len(env.netdevs.links["ib0"].received) == 1


async def test_rx_usecs_holds_frames_until_the_time_has_passed(env, autojump_clock):
    ib0 = env.ib0
    await env.up(ib0)
    ethtool.set_coalesce(ib0, 20000, 0)
    ud = env.driver.main.ud
    received = env.netdevs.links["ib0"].received
    ud.receive(ib0.port, datagram(ib0, ping_to_us()))
    assert ib0.statistic("rx_packets") == 1  # counted as the HCA delivered it
    await trio.sleep(0.015)
    ud.receive(ib0.port, datagram(ib0, ping_to_us()))
    await trio.sleep(0.0049)
    assert received == []
    await trio.sleep(0.0002)
    assert received == [wire.NO_OFFLOAD + ping_to_us()] * 2  # 20 ms after the first
    ud.receive(ib0.port, datagram(ib0, ping_to_us()))
    await trio.sleep(0.0199)
    assert len(received) == 2
    await trio.sleep(0.0002)
    assert len(received) == 3


async def test_rx_frames_delivers_once_that_many_wait(env, autojump_clock):
    ib0 = env.ib0
    await env.up(ib0)
    ethtool.set_coalesce(ib0, 60000, 3)
    ud = env.driver.main.ud
    received = env.netdevs.links["ib0"].received
    for segment in flow(2, MSS):
        ud.receive(ib0.port, datagram(ib0, segment))
    await trio.sleep(0.01)
    assert received == []
    (third,) = flow(1, MSS, seq=1 + 2 * MSS)
    third = third[:4] + (3).to_bytes(2, "big") + third[6:]  # the next IP ID
    third = third[:10] + bytes(2) + third[12:]
    third = third[:10] + wire.ip_checksum(third[:20]).to_bytes(2, "big") + third[12:]
    ud.receive(ib0.port, datagram(ib0, third))
    assert len(received) == 1  # the three, merged by GRO as the moderated poll took them
    assert ib0.statistic("rx_packets") == 3


async def test_turning_moderation_off_delivers_what_is_held_and_ends_the_timer(env):
    ib0 = env.ib0
    await env.up(ib0)
    ethtool.set_coalesce(ib0, 60000, 0)
    env.driver.main.ud.receive(ib0.port, datagram(ib0, ping_to_us()))
    await trio.testing.wait_all_tasks_blocked()
    assert env.netdevs.links["ib0"].received == [] and ib0.rx.timing
    ethtool.set_coalesce(ib0, 0, 0)
    await trio.testing.wait_all_tasks_blocked()
    assert env.netdevs.links["ib0"].received == [wire.NO_OFFLOAD + ping_to_us()]
    assert not ib0.rx.timing
    env.driver.main.ud.receive(ib0.port, datagram(ib0, ping_to_us()))
    assert len(env.netdevs.links["ib0"].received) == 2  # at once again


async def test_without_tso_and_tx_checksum_each_packet_is_sent_whole_and_counted(env):
    """What the stack hands over with TX checksum and TSO off: MTU-sized, checksummed,
    GSO_NONE without NEEDS_CSUM; both send paths pass it as it is, one tx per packet."""
    from .test_driver_neigh import PEER_IP, resolved_peer

    ib0 = env.ib0
    await resolved_peer(env)
    sent = []
    ib0.port.send = lambda dlid, parts, fds=(): sent.append(b"".join(parts[1:])) or 0
    segments = [tcp for tcp in flow(3, MSS)]
    segments = [s[:16] + PEER_IP + s[20:] for s in segments]
    frames = [wire.NO_OFFLOAD + s for s in segments]
    main = env.driver.main
    assert main.neigh.xmit_fast(ib0, frames[0])  # the reader thread's fast path
    main.neigh.xmit(ib0, frames[1])  # the trio thread's path
    main.neigh.xmit(ib0, frames[2])
    assert sent == frames  # nothing rewritten: no checksum to finish, nothing to cut
    assert ib0.statistic("tx_packets") == 3
    assert ib0.statistic("tx_bytes") == sum(len(s) + wire.IPOIB_ENCAP_LEN for s in segments)


async def test_an_unregistered_interface_ends_its_moderation_timer(env):
    ib0 = env.ib0
    await env.up(ib0)
    ethtool.set_coalesce(ib0, 60000, 0)
    env.driver.main.ud.receive(ib0.port, datagram(ib0, ping_to_us()))
    await trio.testing.wait_all_tasks_blocked()
    assert ib0.rx.timing and ib0.rx.frames
    await env.driver.main.unregister(ib0)
    await trio.testing.wait_all_tasks_blocked()
    assert not ib0.rx.timing and not ib0.rx.frames  # no task left sleeping for it
