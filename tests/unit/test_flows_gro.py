"""The flow table's GRO (netdev/gro.c, netdev/flows.c), without root: what the C loop places
for a peer that wants GRO is what PlaceCell would have placed, frame for frame (wire/lro.py's
gro_receive over each batch's TCP segments), counted segment by segment; what it cannot
deliver comes back to Python, whole, uncounted and in order."""

from __future__ import annotations

import os
import random
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from ipoibfs import wire
from ipoibfs.driver.ib import rx_counts, tcp_segment, tx_bytes
from ipoibfs.fabric.flag import Flag
from ipoibfs.fabric.placement import FLAG_GRO, FLOW_UD, ReceiveQueue, RemoteQueue
from ipoibfs.netdev.flows import FlowTable
from ipoibfs.wire import lro

from .test_lro import ACK, CWR, FIN, PSH, RST, SYN, flow, tcp4, tcp6

PLAIN = bytes(10)  # no offload metadata: the loop checks the TCP checksum
PARTIAL = bytes([lro.VIRTIO_NET_HDR_F_NEEDS_CSUM]) + bytes(9)  # a TX-checksumming sender
DST4 = bytes([198, 18, 0, 2])
DST6 = bytes.fromhex("fd18" + "00" * 13 + "02")
BATCH = 64


def not_ours() -> bytes:
    """A packet to an address the table does not know: the run ends with it."""
    packet = bytearray(tcp4(1, b"o" * 8))
    packet[16:20] = bytes([198, 18, 0, 99])
    return PLAIN + bytes(packet)


@dataclass
class Rig:
    table: FlowTable
    stack: socket.socket  # the sender's stack, writing into "the TUN"
    peer: socket.socket  # the peer's stack, reading what is placed
    receiver: ReceiveQueue

    def run(self, frames: list[bytes]) -> list[bytes]:
        """The frames in one go, then a packet that is Python's: what the run returns."""
        for frame in frames + [not_ours()]:
            self.stack.send(frame)
        return self.table.run()

    def placed(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self.peer.recv(70000))
            except BlockingIOError:
                return out


@pytest.fixture
def rig() -> Iterator[Rig]:
    tun, stack = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    peer, sink = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (tun, stack, peer, sink):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    peer.setblocking(False)
    receiver = ReceiveQueue(sink.fileno(), flags=FLAG_GRO)
    sender = RemoteQueue.from_fds(receiver.fds)
    assert sender is not None and sender.gro
    table, port_ok = FlowTable(tun.fileno(), Flag()), Flag()
    for key in (DST4, DST6):

        def install(sink: int, page: int, key: bytes = key) -> bool:
            return table.install(table.generation, key, FLOW_UD, 4092, True, sink, page, port_ok)

        assert sender.lend(install, table.forget)
    with tun, stack, peer, sink:
        yield Rig(table, stack, peer, receiver)


def expected(frames: list[bytes]) -> list[bytes]:
    """What PlaceCell places: the TCP segments held and merged by gro_receive when another
    packet comes or the batch ends (PacketReader: BATCH packets read since nothing was
    held); other packets as they came."""
    out: list[bytes] = []
    held: list[bytes] = []

    def flush() -> None:
        out.extend(vnet + bytes(packet) for vnet, packet in wire.gro_receive(held))
        held.clear()

    count = 0
    for frame in frames:
        if not held:
            count = 0
        elif count >= BATCH:
            flush()
            count = 0
        count += 1
        if tcp_segment(frame):
            held.append(frame)
        else:
            flush()
            out.append(frame)
    flush()
    return out


def check(rig: Rig, frames: list[bytes]) -> None:
    rx, tx = rig.receiver.counts(), rig.table.counts()
    assert rig.run(frames) == [not_ours()]
    assert rig.placed() == expected(frames)
    packets = sum(rx_counts(frame)[0] for frame in frames)
    nbytes = sum(rx_counts(frame)[1] for frame in frames)
    assert rig.receiver.counts() == (rx[0] + packets, rx[1] + nbytes)
    sent = sum(tx_bytes(frame) for frame in frames)
    assert rig.table.counts() == (tx[0] + len(frames), tx[1] + sent)


def test_a_stream_of_full_segments_is_merged_into_super_packets(rig: Rig):
    frames = [PARTIAL + seg for seg in flow(40, mss=2000)]
    check(rig, frames)
    placed = expected(frames)
    assert len(placed) == 2  # 32 segments make 64 KiB, the rest the second
    assert all(len(p) > 2044 for p in placed)


@pytest.mark.parametrize("case", [
    "psh", "short", "reorder", "two_flows", "pure_ack", "syn_rst", "headers", "fixed_ids",
    "options", "bad_checksum", "cwr", "ipv6", "many_flows", "fin",
])  # fmt: skip
def test_each_rule_as_wire_lro_applies_it(rig: Rig, case: str):
    segs = flow(6, mss=1000)
    if case == "psh":
        segs[2] = tcp4(2001, bytes([2]) * 1000, flags=ACK | PSH, ip_id=3)
    elif case == "short":
        segs[3] = tcp4(3001, b"s" * 400, ip_id=4)
    elif case == "reorder":
        segs[1], segs[2] = segs[2], segs[1]
    elif case == "two_flows":
        other = flow(6, mss=1000, sport=40001)
        segs = [s for pair in zip(segs, other, strict=True) for s in pair]
    elif case == "pure_ack":
        segs.insert(3, tcp4(9, b"", ip_id=99))
    elif case == "syn_rst":
        segs[2] = tcp4(2001, bytes([2]) * 1000, flags=ACK | SYN, ip_id=3)
        segs[4] = tcp4(4001, bytes([4]) * 1000, flags=ACK | RST, ip_id=5)
    elif case == "headers":
        segs[2] = tcp4(2001, bytes([2]) * 1000, ip_id=3, ttl=63)
        segs[4] = tcp4(4001, bytes([4]) * 1000, ip_id=5, window=600)
    elif case == "fixed_ids":
        segs = [tcp4(1 + i * 1000, bytes([i]) * 1000, ip_id=7) for i in range(6)]
    elif case == "options":
        segs[3] = tcp4(3001, bytes([3]) * 1000, ip_id=4, options=bytes([1, 1, 1, 1]))
        later = bytes([1, 1, 8, 10]) + struct.pack("!II", 1001, 2000)  # the next timestamp
        segs[5] = tcp4(5001, bytes([5]) * 1000, ip_id=6, options=later)
        segs.insert(1, tcp4(1001, b"o" * 1000, ip_id=2, ip_options=bytes([1, 1, 1, 0])))
    elif case == "bad_checksum":
        segs[2] = tcp4(2001, bytes([2]) * 1000, ip_id=3, good_csum=False)
    elif case == "cwr":
        segs[0] = tcp4(1, bytes([0]) * 1000, flags=ACK | CWR, ip_id=1)
        segs[3] = tcp4(3001, bytes([3]) * 1000, flags=ACK | CWR, ip_id=4)
    elif case == "ipv6":
        segs = [tcp6(1 + i * 1000, bytes([i]) * 1000) for i in range(5)]
        segs.insert(2, tcp6(9, b"", flags=ACK))
    elif case == "many_flows":
        segs = [s for i in range(3) for s in (flow(10, mss=500, sport=41000 + j)[i]
                                                 for j in range(10))]  # fmt: skip
    elif case == "fin":
        segs[5] = tcp4(5001, bytes([5]) * 1000, flags=ACK | FIN, ip_id=6)
    check(rig, [PLAIN + seg for seg in segs])


def test_random_streams_match_wire_lro(rig: Rig):
    """Streams of several flows, with the faults a fabric and a stack make, in batches of up
    to two NAPI weights."""
    rng = random.Random(4391)
    for _ in range(20):
        flows = {port: 1 for port in range(40000, 40000 + rng.randint(1, 4))}
        frames = []
        for _ in range(rng.randint(1, 2 * BATCH - 1)):
            port = rng.choice(list(flows))
            size = rng.choice([1000, 1000, 1000, 700, 0])
            flags = ACK | rng.choice([0] * 8 + [PSH, FIN, CWR])
            seq = (flows[port] + rng.choice([0] * 10 + [1000, -1000])) % 2**32
            flows[port] = seq + size
            seg = tcp4(seq, bytes([seq % 251]) * size, flags=flags, sport=port,
                       ip_id=seq // 1000 % 65536, good_csum=rng.random() > 0.05)  # fmt: skip
            frames.append(rng.choice([PLAIN, PARTIAL]) + seg)
        check(rig, frames)


def test_what_cannot_be_delivered_comes_back_in_order_uncounted(rig: Rig):
    """The peer went away with segments held: they come back to Python ahead of the packet
    that ended the run, and nothing is counted."""
    frames = [PLAIN + seg for seg in flow(5)]
    rig.peer.close()
    assert rig.run(frames) == frames + [not_ours()]
    assert rig.receiver.counts() == (0, 0)
    assert rig.table.counts() == (0, 0)


def test_a_flow_that_ends_mid_batch_comes_back_whole(rig: Rig):
    """A short segment completes the flow at once; when it cannot be delivered, the run stops
    there and hands back what it held, the short one last; the packets after it are read
    again."""
    segs = [PLAIN + seg for seg in flow(3)] + [PLAIN + tcp4(3001, b"s" * 10, ip_id=4)]
    rig.peer.close()
    later = PLAIN + flow(5)[4]
    for frame in segs + [later]:
        rig.stack.send(frame)
    assert rig.table.run() == segs
    assert rig.table.run() == [later]  # held, then handed back ahead of the end of file
    rig.stack.close()
    assert rig.table.run() == [b""]
    assert rig.table.counts() == (0, 0)


def test_gro_holds_use_memory_only_while_they_hold():
    """A table costs little resident memory until GRO holds a frame: 256 hosts hold one each
    (a table is 170 KB, its hold area 266 KB)."""
    tun, stack = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with tun, stack:
        before = rss()
        tables = [FlowTable(tun.fileno(), Flag()) for _ in range(64)]
        assert rss() - before < 64 * 40_000
        del tables


def rss() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
