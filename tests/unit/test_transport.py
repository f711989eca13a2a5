"""The emulated wire's data plane (DataPlane) and the client of the subnet manager
(RemoteSm). Segmentation and reassembly, which are pure, are tested with the rest of the
wire in test_wire.py.

The plane tests use UDP planes on the loopback (Unix planes need a private network
namespace); the planes force their socket buffers' size, which takes CAP_NET_ADMIN.
"""

from __future__ import annotations

import errno
import json
import os
import threading
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from ipoibfs.errors import KernelError
from ipoibfs.fabric import FabricPort, HcaDevice, HcaProfile
from ipoibfs.fabric.client import SM_REQUEST_TIMEOUT, RemoteSm
from ipoibfs.fabric.service import encode
from ipoibfs.fabric.transport import DataPlane


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

    def keep(data: memoryview, fds) -> None:
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


# ---------------------------------------------------------------- the SM's client


async def test_a_request_the_sm_never_answers_times_out_and_a_late_reply_is_ignored(
    autojump_clock,
):
    host_end, sm_end = trio.testing.memory_stream_pair()
    sm = RemoteSm(host_end)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sm.run, nursery)
        start = trio.current_time()
        with pytest.raises(KernelError) as e:
            await sm.path(b"\xfe" * 16, 0xFFFF)
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
        rec = await sm.path(b"\xfe" * 16, 0xFFFF)
        assert rec.dlid == 4  # this request's reply, not the late one
        assert not sm._waiting  # nothing left behind
        nursery.cancel_scope.cancel()


async def test_requests_to_a_stopped_sm_time_out_and_abandoned_ones_are_never_sent(
    autojump_clock,
):
    """A stopped SM reads nothing: the first request's write blocks, the rest queue, all
    time out; once the SM reads again it sees only the one already on its socket."""
    host_end, sm_end = trio.testing.lockstep_stream_pair()
    sm = RemoteSm(host_end)
    errnos: list[int] = []

    async def leave(n: int) -> None:
        try:
            await sm.leave(2, 0x48 + n, bytes(16))
        except KernelError as e:
            errnos.append(e.errno)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sm.run, nursery)
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


async def test_a_request_after_the_sm_went_away_fails_at_once(autojump_clock):
    host_end, sm_end = trio.testing.memory_stream_pair()
    sm = RemoteSm(host_end)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sm.run, nursery)
        await sm_end.aclose()
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        with pytest.raises(KernelError) as e:
            await sm.leave(2, 0x48, bytes(16))
        assert e.value.errno == errno.ETIMEDOUT and trio.current_time() == start
        nursery.cancel_scope.cancel()
