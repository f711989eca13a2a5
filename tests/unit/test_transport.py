"""The emulated wire's data plane (DataPlane). Segmentation and reassembly, which are
pure, are tested with the rest of the wire in test_wire.py.

These use UDP planes on the loopback (Unix planes need a private network namespace); the
planes force their socket buffers' size, which takes CAP_NET_ADMIN.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterator

import pytest
import trio

from ipoibfs.fabric import FabricPort, HcaDevice, HcaProfile
from ipoibfs.fabric.transport import DataPlane

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="SO_RCVBUFFORCE needs CAP_NET_ADMIN")


@pytest.fixture
def planes() -> Iterator[tuple[DataPlane, DataPlane]]:
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
