"""The emulated wire's data plane (DataPlane) and the client of the subnet manager
(RemoteSm). Segmentation and reassembly, which are pure, are tested with the rest of the
wire in test_wire.py.

The plane tests use UDP planes on the loopback (Unix planes need a private network
namespace); the planes force their socket buffers' size, which takes CAP_NET_ADMIN.
"""

from __future__ import annotations

import errno
import io
import json
import os
import threading
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from ipoibfs.errors import KernelError, UsageError
from ipoibfs.fabric.client import SM_REQUEST_TIMEOUT, RemoteSm
from ipoibfs.fabric.device import HcaDevice, HcaProfile
from ipoibfs.fabric.port import PORT_ACTIVE, FabricPort
from ipoibfs.fabric.service import HELLO_DEADLINE, FabricService, data_key, encode
from ipoibfs.fabric.sm import SubnetManager, format_guid2lid, parse_guid2lid
from ipoibfs.fabric.transport import DataPlane, parse_address
from ipoibfs.wire import UdHeader


@pytest.fixture
def planes() -> Iterator[tuple[DataPlane, DataPlane]]:
    if os.geteuid() != 0:
        pytest.skip("SO_RCVBUFFORCE needs CAP_NET_ADMIN")
    a, b = DataPlane("udp:127.0.0.1:0"), DataPlane("udp:127.0.0.1:0")
    yield a, b
    a.close()
    b.close()
    a.close()  # idempotent


async def collect(plane: DataPlane, count: int, handler=None) -> list[bytes]:
    got: list[bytes] = []

    def keep(data: memoryview, fds, sender) -> None:
        got.append(bytes(data))
        if handler is not None:
            handler(bytes(data))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(plane.receive, keep)
            while len(got) < count:
                await trio.sleep(0.005)
            nursery.cancel_scope.cancel()
    return got


async def test_send_returns_0_on_the_wire_and_the_errno_of_a_loss(planes):
    a, b = planes
    assert a.send(b.address, [b"hello, ", memoryview(b"world")]) == 0
    big = os.urandom(65524 + 60)  # an RC message: two UDP segments
    assert a.send(b.address, [big]) == 0
    assert await collect(b, 2) == [b"hello, world", big]
    # A broadcast address without SO_BROADCAST: the kernel refuses the datagram.
    assert a.send("udp:255.255.255.255:9", [b"x"]) == errno.EACCES


async def test_a_raising_handler_is_printed_and_the_next_datagram_goes_on(planes, capsys):
    a, b = planes

    def handler(data: bytes) -> None:
        if data == b"2":
            raise ValueError("handler bug")

    for n in range(4):
        assert a.send(b.address, [str(n).encode()]) == 0
    assert await collect(b, 4, handler) == [b"0", b"1", b"2", b"3"]
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ValueError: handler bug" in err


async def test_sends_from_several_threads_at_once_all_arrive_whole(planes):
    a, b = planes
    big = [bytes([t]) * 70000 for t in range(4)]  # two segments each: numbers must not clash
    errors: list[int] = []

    def sender(t: int) -> None:
        for _ in range(25):
            errors.append(a.send(b.address, [big[t]]))

    threads = [threading.Thread(target=sender, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    got = await collect(b, 100)
    for t in threads:
        t.join()
    assert errors == [0] * 100
    assert sorted(got) == sorted(m for m in big for _ in range(25))


async def test_a_port_without_route_or_plane_cannot_send_and_receives_nothing(planes):
    a, _ = planes
    port = HcaDevice("h1", HcaProfile()).ports[0]
    alone = FabricPort(port, None, None, {7: a.address}, {})  # type: ignore[arg-type]
    assert alone.send(7, [b"x"]) == errno.EHOSTUNREACH
    assert alone.send_multicast(b"g" * 16, [b"x"]) == 0
    with trio.move_on_after(0.05) as scope:
        await alone.receive(lambda data, fds: None)
    assert scope.cancelled_caught  # it sleeps until cancelled
    wired = FabricPort(port, None, a, {}, {b"g" * 16: [7]})  # type: ignore[arg-type]
    assert wired.send(7, [b"x"]) == errno.EHOSTUNREACH  # no route to LID 7
    assert wired.send_multicast(b"g" * 16, [b"x"]) == 0


async def test_a_keyed_udp_wire_delivers_only_what_its_key_authenticated(planes):
    a, b = planes
    key = data_key(b"k" * 32)
    a.set_key(key)
    b.set_key(key)
    stranger, unkeyed = (
        DataPlane("udp:127.0.0.1:0", key=data_key(b"x" * 32)),
        DataPlane("udp:127.0.0.1:0"),
    )
    try:
        big = os.urandom(70000)  # two segments, each with its own MAC
        assert stranger.send(b.address, [b"forged"]) == 0
        assert unkeyed.send(b.address, [b"no mac"]) == 0
        assert stranger.send(b.address, [big]) == 0
        assert a.send(b.address, [b"genuine"]) == 0
        assert a.send(b.address, [big]) == 0
        assert await collect(b, 2) == [b"genuine", big]
        assert b.auth_failures == 4  # one forged, one without MAC, two forged segments
    finally:
        stranger.close()
        unkeyed.close()


def _ud(slid: int, pkey: int) -> bytes:
    header = UdHeader(slid=slid, dlid=2, src_qpn=0x48, dst_qpn=0x48, pkey=pkey,
                      qkey=0x0B1B, sgid=bytes(16), dgid=bytes(16))  # fmt: skip
    return header.pack() + b"payload"


async def test_a_port_drops_and_counts_what_its_source_may_not_send(planes):
    """A datagram must come from the route of its SLID, and carry a P_Key of that port's
    table; what fails is counted, never handed to the driver."""
    a, b = planes
    port = HcaDevice("h1", HcaProfile()).ports[0]
    port.state = 4  # ACTIVE: the SM has configured it
    sources: dict[object, int] = {parse_address(a.address)[1]: 3}
    wired = FabricPort(port, None, b, {}, {}, sources=sources,  # type: ignore[arg-type]
                       pkey_tables={3: frozenset({0xFFFF})})  # fmt: skip
    got: list[bytes] = []
    assert a.send(b.address, [_ud(4, 0xFFFF)]) == 0  # a's route is LID 3's, not 4's
    assert a.send(b.address, [_ud(3, 0x8001)]) == 0  # not in LID 3's table
    assert a.send(b.address, [b"\x00"]) == 0  # too short to name its source
    assert a.send(b.address, [_ud(3, 0xFFFF)]) == 0  # all right
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wired.receive, lambda data, fds: got.append(bytes(data)))
            while not got:
                await trio.sleep(0.005)
            nursery.cancel_scope.cancel()
    assert got == [_ud(3, 0xFFFF)]
    assert (wired.source_violations, wired.pkey_violations) == (2, 1)


# ---------------------------------------------------------------- the SM's client


async def test_a_request_the_sm_never_answers_times_out_and_a_late_reply_is_ignored(
    autojump_clock,
):
    host_end, sm_end = trio.testing.memory_stream_pair()
    sm = RemoteSm()
    async with trio.open_nursery() as nursery:
        sm.start(host_end, nursery)
        start = trio.current_time()
        with pytest.raises(KernelError) as e:
            await sm.path(2, b"\xfe" * 16, 0xFFFF)
        assert e.value.errno == errno.ETIMEDOUT
        assert trio.current_time() - start == pytest.approx(SM_REQUEST_TIMEOUT)
        late = json.loads(await sm_end.receive_some())
        assert late["op"] == "path"
        path = {"dlid": 3, "sl": 0, "rate_mbps": 100000, "mtu": 4}
        await sm_end.send_all(encode({"id": late["id"], "path": path}))

        async def answer_next() -> None:
            msg = json.loads(await sm_end.receive_some())
            await sm_end.send_all(encode({"id": msg["id"], "path": {**path, "dlid": 4}}))

        nursery.start_soon(answer_next)
        rec = await sm.path(2, b"\xfe" * 16, 0xFFFF)
        assert rec.dlid == 4  # this request's reply, not the late one
        assert not sm._waiting  # nothing left behind
        nursery.cancel_scope.cancel()


async def test_requests_to_a_stopped_sm_time_out_and_abandoned_ones_are_never_sent(
    autojump_clock,
):
    """A stopped SM reads nothing: the first request's write blocks, the rest queue, all
    time out; once the SM reads again it sees only the one already on its socket."""
    host_end, sm_end = trio.testing.lockstep_stream_pair()
    sm = RemoteSm()
    errnos: list[int] = []

    async def leave(n: int) -> None:
        try:
            await sm.leave(2, 0x48 + n, bytes(16))
        except KernelError as e:
            errnos.append(e.errno)

    async with trio.open_nursery() as nursery:
        sm.start(host_end, nursery)
        async with trio.open_nursery() as requests:
            for n in range(3):
                requests.start_soon(leave, n)
        assert errnos == [errno.ETIMEDOUT] * 3
        first = json.loads(await sm_end.receive_some())
        assert first["qpn"] in range(0x48, 0x48 + 3)
        with trio.move_on_after(1) as idle:
            await sm_end.receive_some()  # the abandoned two never come
        assert idle.cancelled_caught
        nursery.cancel_scope.cancel()


async def test_a_request_waits_for_a_lost_sm_to_come_back_up_to_the_timeout(autojump_clock):
    host_end, sm_end = trio.testing.memory_stream_pair()
    sm = RemoteSm()
    async with trio.open_nursery() as nursery:
        sm.start(host_end, nursery)
        await sm_end.aclose()
        await sm.lost()
        assert not sm.online
        start = trio.current_time()
        with pytest.raises(KernelError) as e:
            await sm.leave(2, 0x48, bytes(16))
        assert e.value.errno == errno.ETIMEDOUT
        assert trio.current_time() - start == pytest.approx(SM_REQUEST_TIMEOUT)
        # A request made while the SM is away goes once it is back (a new session).
        new_host, new_sm = trio.testing.memory_stream_pair()

        async def back_soon() -> None:
            await trio.sleep(SM_REQUEST_TIMEOUT / 2)
            sm.start(new_host, nursery)
            msg = json.loads(await new_sm.receive_some())
            await new_sm.send_all(encode({"id": msg["id"]}))

        nursery.start_soon(back_soon)
        start = trio.current_time()
        await sm.leave(2, 0x48, bytes(16))
        assert trio.current_time() - start == pytest.approx(SM_REQUEST_TIMEOUT / 2)
        nursery.cancel_scope.cancel()


async def test_a_refused_registration_ends_its_session(autojump_clock):
    host_end, sm_end = trio.testing.memory_stream_pair()
    sm = RemoteSm()

    async def refuse() -> None:
        msg = json.loads(await sm_end.receive_some())
        assert msg["op"] == "hello"
        await sm_end.send_all(encode({"id": msg["id"], "errno": errno.EEXIST, "error": "dup"}))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(refuse)
        with pytest.raises(KernelError) as e:
            await sm.register(host_end, nursery, {"host": "h1", "ports": []})
        assert e.value.errno == errno.EEXIST and not sm.online
        assert await sm_end.receive_some() == b""  # the host closed it


# ---------------------------------------------------------------- the SM's LIDs (guid2lid)


def test_guid2lid_reads_and_writes_opensms_lines():
    text = "# guid2lid\n0x0002c90300000101 0x0002 0x0002\n\n0x0002c90300000201 0x0005 0x0005\n"
    lids = parse_guid2lid(text)
    assert lids == {0x0002C90300000101: 2, 0x0002C90300000201: 5}
    assert format_guid2lid(lids) == text.split("\n", 1)[1].replace("\n\n", "\n")
    for bad, why in (("0x1 0x2", "line 1: expected"), ("0x1 0x0 0x0", "out of range"),
                     ("0x1 0x2 0x2\n0x3 0x2 0x2", "line 2: LID 0x2 is given to two GUIDs"),
                     ("0x1 2 2", "expected"), ("0x1 0xc000 0xc000", "out of range")):  # fmt: skip
        with pytest.raises(UsageError, match=why):
            parse_guid2lid(bad)


def test_lids_are_kept_by_guid_never_given_twice_and_hints_honoured_when_free():
    sm = SubnetManager(guid2lid={0xA: 2})  # restarted from its state: A had LID 2
    device = HcaDevice("hx", HcaProfile(ports=3))
    a, b, c = device.ports
    a.guid, b.guid, c.guid = 0xA, 0xB, 0xC
    sm.attach(b, "unix:b", lid_hint=2)  # B says it had 2: A's, so B gets the lowest free
    assert b.lid == 3
    sm.attach(c, "unix:c", lid_hint=7)  # free: kept
    assert c.lid == 7
    sm.attach(a, "unix:a", lid_hint=9)  # guid2lid wins over the hint
    assert a.lid == 2
    assert sm.guid2lid == {0xA: 2, 0xB: 3, 0xC: 7}
    sm.detach(3)
    other = HcaDevice("hy", HcaProfile()).ports[0]
    sm.attach(other, "unix:y")
    assert other.lid == 4  # 3 is still B's, though B left
    sm.attach(b, "unix:b")
    assert b.lid == 3  # and B gets it back
    with pytest.raises(KernelError) as e:
        sm.assign_lid(0xB)  # B twice at once
    assert e.value.errno == errno.EBUSY


# ---------------------------------------------------------------- the SM's service


async def test_a_tcp_stranger_that_never_proves_the_key_is_dropped(autojump_clock):
    log = io.StringIO()
    service = FabricService("127.0.0.1:0", None, log, key=b"k" * 32)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.serve)
        host, port = service.sockname
        stream = await trio.open_tcp_stream(host, port)
        challenge = json.loads(await stream.receive_some())
        assert challenge["op"] == "challenge" and len(bytes.fromhex(challenge["nonce"])) == 16
        start = trio.current_time()
        with trio.fail_after(HELLO_DEADLINE + 1):
            assert await stream.receive_some() == b""  # dropped, told nothing more
        assert trio.current_time() - start == pytest.approx(HELLO_DEADLINE)
        assert not service.conns
        nursery.cancel_scope.cancel()


def test_held_multicast_goes_member_by_member_in_the_order_it_was_sent():
    """hold_multicast/release_multicast (a batch of the netdev's queue): each member gets
    its copies back to back, in the order they were sent; nothing leaves before the
    release; after it, copies go at once again."""
    port = HcaDevice("h1", HcaProfile()).ports[0]
    port.state = PORT_ACTIVE
    sent: list[tuple[str, bytes]] = []

    class Plane:
        def send(self, address: str, parts, fds=()) -> int:
            sent.append((address, b"".join(parts)))
            return 0

    groups = {b"g" * 16: [7, 8], b"h" * 16: [8]}
    fport = FabricPort(port, None, Plane(), {7: "seven", 8: "eight"}, groups)  # type: ignore[arg-type]
    fport.hold_multicast()
    buffer = bytearray(b"1")
    assert fport.send_multicast(b"g" * 16, [memoryview(buffer)]) == 2
    buffer[0] = ord("x")  # a reused buffer: what was held is a copy
    assert fport.send_multicast(b"h" * 16, [b"2"]) == 1
    assert fport.send_multicast(b"g" * 16, [b"3"]) == 2
    assert sent == []
    fport.release_multicast()
    assert sent == [("seven", b"1"), ("seven", b"3"),
                    ("eight", b"1"), ("eight", b"2"), ("eight", b"3")]  # fmt: skip
    assert fport.send_multicast(b"h" * 16, [b"4"]) == 1 and sent[-1] == ("eight", b"4")
