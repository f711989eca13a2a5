"""driver/context.py: the work queue never lets a failing work item end the host."""

from __future__ import annotations

import trio
import trio.testing

from ipoibfs import wire
from ipoibfs.driver import neigh


async def test_a_work_item_that_raises_is_logged_and_the_host_goes_on(env):
    main, ib0 = env.driver.main, env.ib0
    await env.up(ib0)

    async def broken(*args):
        raise RuntimeError("a bug in a handler")

    ib0.addrs4 = [(bytes([198, 18, 0, 1]), 24)]
    sha = wire.hw_addr(0, 0x99, ib0.port.port.gid)
    request = wire.ArpPacket(wire.ARPOP_REQUEST, sha, bytes([198, 18, 0, 2]), bytes(20),
                             bytes([198, 18, 0, 1]))  # fmt: skip
    original = neigh.Neighbours.send_arp_to
    main.neigh.send_arp_to = broken  # type: ignore[method-assign]
    main.neigh.deliver(ib0, wire.ETH_P_ARP, memoryview(wire.NO_OFFLOAD + request.pack()), True)
    await trio.testing.wait_all_tasks_blocked()
    assert env.log.exceptions and "failed" in env.log.exceptions[0]
    # The driver still forwards: the next ARP request is answered.
    main.neigh.send_arp_to = original.__get__(main.neigh)  # type: ignore[method-assign]
    sent = []
    ib0.port.send = lambda dlid, parts, fds=(): sent.append(parts) or 0
    main.neigh.deliver(ib0, wire.ETH_P_ARP, memoryview(wire.NO_OFFLOAD + request.pack()), True)
    await trio.testing.wait_all_tasks_blocked()
    assert len(sent) == 1 and ib0.neighbours[bytes([198, 18, 0, 2])].ready
