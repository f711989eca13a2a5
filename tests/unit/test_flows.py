"""The netdev's flow table (netdev/flows.c), without root: a datagram socket pair stands in
for the TUN, a pipe for the peer's sink, and a real placement page (ReceiveQueue and
RemoteQueue) counts what the C loop placed, as the receiver reads it."""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import trio

from ipoibfs import wire
from ipoibfs.driver.ib import rx_counts, tx_bytes
from ipoibfs.driver.params import ModuleParams
from ipoibfs.fabric.device import HcaDevice, HcaProfile
from ipoibfs.fabric.flag import Flag
from ipoibfs.fabric.impair import Netem
from ipoibfs.fabric.placement import (
    FLAG_GRO,
    FLOW_RC,
    FLOW_UD,
    REVOKED_AT,
    ReceiveQueue,
    RemoteQueue,
)
from ipoibfs.fabric.port import FabricPort
from ipoibfs.fabric.tap import Tap
from ipoibfs.netdev.flows import FlowTable
from ipoibfs.wire.lro import VIRTIO_NET_HDR_GSO_TCPV4

PEER4 = bytes([198, 18, 0, 2])
PEER6 = bytes.fromhex("fd180000000000000000000000000002")
VNET_PLAIN = bytes(10)


def ipv4(dst: bytes, payload: bytes = b"x" * 64, proto: int = 1) -> bytes:
    total = 20 + len(payload)
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, proto, 0,
                       bytes([198, 18, 0, 1]), dst) + payload  # fmt: skip


def ipv6(dst: bytes, nexthdr: int = 17, payload: bytes = b"y" * 32) -> bytes:
    src = bytes.fromhex("fd180000000000000000000000000001")
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), nexthdr, 64, src, dst) + payload


def tcp(dst: bytes, data: bytes) -> bytes:
    header = struct.pack("!HHIIBBHHH", 1, 2, 0, 0, 5 << 4, 0x18, 0, 0, 0)
    return ipv4(dst, header + data, proto=socket.IPPROTO_TCP)


def super_packet(dst: bytes, hdr_len: int, mss: int, total: int) -> bytes:
    vnet = struct.pack("<BBHHHH", 1, VIRTIO_NET_HDR_GSO_TCPV4, hdr_len, mss, 34, 16)
    return vnet + tcp(dst, b"z" * (total - 40))


@dataclass
class Rig:
    table: FlowTable
    tun: socket.socket  # the TUN fd the table reads
    stack: socket.socket  # what the "stack" sends on the TUN
    sink: int  # what the peer's stack received
    receiver: ReceiveQueue
    sender: RemoteQueue
    port_ok: Flag
    host_ok: Flag

    def send(self, frame: bytes) -> None:
        self.stack.send(frame)

    def install(self, key: bytes, kind: int = FLOW_UD, limit: int = 2044) -> bool:
        table = self.table
        return self.sender.lend(
            lambda sink, page: table.install(table.generation, key, kind, limit,
                                             self.sender.gro, sink, page, self.port_ok),
            table.forget,
        )  # fmt: skip

    def placed(self) -> bytes:
        return os.read(self.sink, 70000)


@pytest.fixture(params=[0, FLAG_GRO], ids=["plain", "gro"])
def rig(request) -> Iterator[Rig]:
    tun, stack = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink_read, sink_write = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink_read.setblocking(False)
    receiver = ReceiveQueue(sink_write.fileno(), flags=request.param)
    sender = RemoteQueue.from_fds(receiver.fds)
    assert sender is not None
    host_ok = Flag()
    with tun, stack, sink_read, sink_write:
        yield Rig(FlowTable(tun.fileno(), host_ok), tun, stack, sink_read.fileno(), receiver,
                  sender, Flag(), host_ok)  # fmt: skip


def test_a_packet_to_an_installed_destination_is_placed_and_counted(rig: Rig):
    frame = VNET_PLAIN + ipv4(PEER4)
    assert rig.install(PEER4)
    rig.send(frame)
    rig.send(VNET_PLAIN + ipv4(bytes([198, 18, 0, 3])))  # not installed: Python's
    assert rig.table.run() == [VNET_PLAIN + ipv4(bytes([198, 18, 0, 3]))]
    assert rig.placed() == frame
    assert rig.receiver.counts() == rx_counts(frame)
    assert rig.table.counts() == (1, tx_bytes(frame))
    assert time.monotonic() - rig.receiver.placed_at() < 5
    assert rig.table.used() == [PEER4]
    assert rig.table.used() == []  # since the last call


def test_an_lso_super_packet_counts_as_the_driver_counts_it(rig: Rig):
    frame = super_packet(PEER4, hdr_len=54, mss=1990, total=9000)
    assert rig.install(PEER4)
    rig.send(frame)
    rig.send(VNET_PLAIN + ipv4(PEER6[:4]))  # ends the run
    rig.table.run()
    assert rig.placed() == frame
    assert rig.receiver.counts() == rx_counts(frame)
    assert rig.table.counts() == (1, tx_bytes(frame))


def test_what_the_driver_must_see_goes_back_to_python(rig: Rig):
    """Too long for UD, ICMPv6 (ND is rewritten), an IPv6 destination not installed:
    returned whole, in order, and nothing is placed."""
    assert rig.install(PEER4, limit=100)
    assert rig.install(PEER6)
    frames = [VNET_PLAIN + ipv4(PEER4, b"l" * 200), VNET_PLAIN + ipv6(PEER6, nexthdr=58),
              VNET_PLAIN + ipv6(bytes(16))]  # fmt: skip
    for frame in frames:
        rig.send(frame)
    assert [rig.table.run() for _ in frames] == [[frame] for frame in frames]
    with pytest.raises(BlockingIOError):
        rig.placed()
    assert rig.receiver.counts() == (0, 0)
    assert rig.table.counts() == (0, 0)


def test_ipv6_and_rc_destinations(rig: Rig):
    v6 = VNET_PLAIN + ipv6(PEER6)
    rc = VNET_PLAIN + ipv4(PEER4, b"r" * 300)
    assert rig.install(PEER6)
    assert rig.install(PEER4, kind=FLOW_RC, limit=65520)
    for frame in (v6, rc, VNET_PLAIN + ipv4(bytes(4))):
        rig.send(frame)
    rig.table.run()
    assert rig.placed() == v6
    assert rig.placed() == rc
    length = len(v6) - 10 + len(rc) - 10
    assert rig.receiver.counts() == (2, length)
    assert rig.table.counts() == (2, length + 2 * wire.IPOIB_ENCAP_LEN)


@pytest.mark.parametrize("stop", ["port", "host", "revoked", "clear", "forget", "closed"])
def test_a_destination_stops_at_once(rig: Rig, stop: str):
    """A cleared port or host flag, the receiver's revocation, clear and forget: the next
    packet is Python's."""
    assert rig.install(PEER4)
    if stop == "port":
        rig.port_ok.set(False)
    elif stop == "host":
        rig.host_ok.set(False)
    elif stop == "revoked":
        rig.receiver._page[REVOKED_AT] = 1
    elif stop == "clear":
        rig.table.clear()
    elif stop == "forget":
        rig.table.forget(rig.sender._address)
    else:
        trio.run(closed, rig.sender)  # the queue's own close forgets it
    frame = VNET_PLAIN + ipv4(PEER4)
    rig.send(frame)
    assert rig.table.run() == [frame]
    assert rig.table.counts() == (0, 0)


async def closed(sender: RemoteQueue) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender.watch)
        await trio.sleep(0)
        sender.release()


def test_an_install_from_before_a_change_is_refused(rig: Rig):
    table = rig.table
    stale = table.generation
    table.clear()
    lent = rig.sender.lend(
        lambda sink, page: table.install(
            stale, PEER4, FLOW_UD, 2044, False, sink, page, rig.port_ok
        ),  # fmt: skip
        table.forget,
    )
    assert not lent
    assert rig.install(PEER4)  # with the current generation


def test_forget_keeps_the_other_queues_destinations(rig: Rig):
    other = ReceiveQueue(rig.sink)
    sender = RemoteQueue.from_fds(other.fds)
    assert sender is not None
    table = rig.table
    assert rig.install(PEER4)
    assert sender.lend(
        lambda sink, page: table.install(
            table.generation, PEER6, FLOW_UD, 2044, False, sink, page, rig.port_ok
        ),  # fmt: skip
        table.forget,
    )
    table.forget(rig.sender._address)
    rig.send(VNET_PLAIN + ipv4(PEER4))
    rig.send(VNET_PLAIN + ipv6(PEER6))
    assert rig.table.run() == [VNET_PLAIN + ipv4(PEER4)]
    rig.send(VNET_PLAIN + ipv4(bytes(4)))
    rig.table.run()
    assert other.counts() == (1, len(ipv6(PEER6)))


def test_the_loop_ends_when_the_read_does(rig: Rig):
    """A deleted TUN fails the blocked read; a shut-down socket ends it as end of file."""
    rig.tun.shutdown(socket.SHUT_RD)
    assert rig.table.run() == [b""]
    with pytest.raises(OSError):
        FlowTable(-1, rig.host_ok).run()


async def test_a_port_is_unobserved_only_without_tap_impairment_or_pulled_link():
    """FabricPort.unobserved, which every placed destination's entry reads: a capture tap,
    an impairment or a pulled link each stop the loop's sends, and their end restarts them."""
    port = FabricPort(HcaDevice("h1", HcaProfile()).ports[0], _NoSm(), None, {}, {})
    assert port.unobserved
    port.tap = Tap(lambda: None)
    assert not port.unobserved
    port.tap = None
    assert port.unobserved
    port.set_impairment(Netem(loss=50.0))
    assert not port.unobserved
    port.set_impairment(None)
    assert port.unobserved
    port.port.state = 4  # ACTIVE, as the SM leaves it
    assert await port.set_link(False)
    assert not port.unobserved
    port.tap = None  # the tap's end does not restore a pulled link
    assert not port.unobserved
    assert await port.set_link(True)
    assert port.unobserved


class _NoSm:
    async def port_state(self, lid: int, state: int, phys_state: int) -> None:
        pass


def test_a_data_debug_level_stops_the_loop():
    params = ModuleParams(debug_data=True)
    assert params.flows_ok
    params["data_debug_level"] = 1
    assert not params.flows_ok
    params["data_debug_level"] = 0
    params["cm_data_debug_level"] = 1
    assert not params.flows_ok
    params["cm_data_debug_level"] = 0
    assert params.flows_ok
