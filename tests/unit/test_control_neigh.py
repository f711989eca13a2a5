"""`.ipoibfs/neigh` and `.ipoibfs/arp` (sysfs/control.py) over the real driver and fakes."""

from __future__ import annotations

import errno
import json

import trio.testing

from ipoibfs import wire

from .test_sysfs import USER, host  # noqa: F401 - the mirror fixture

PEER_IP = bytes([198, 18, 0, 2])


async def test_the_neighbour_table_is_shown_and_deleted(host):  # noqa: F811
    ib0 = host.driver.interfaces["ib0"]
    host.netdevs.links["ib0"].up = True
    await host.driver.main.link_event(ib0.link.ifindex)
    await trio.testing.wait_all_tasks_blocked()
    hwaddr = wire.hw_addr(0, 0x99, ib0.port.gid)
    assert await host.driver.main.neigh.learn(ib0, PEER_IP, hwaddr) is not None
    (entry,) = json.loads(await host.show(".ipoibfs/neigh"))
    assert (entry["dev"], entry["family"], entry["dst"]) == ("ib0", 4, "198.18.0.2")
    assert entry["lladdr"] == wire.format_lladdr(hwaddr) and entry["state"] == 0x02
    assert set(entry) == {"dev", "family", "dst", "lladdr", "state", "used", "confirmed",
                          "updated", "probes"}  # fmt: skip
    delete = b'{"op": "delete", "dev": "ib0", "dst": "198.18.0.2"}'
    assert await host.store(".ipoibfs/neigh", delete, USER) == errno.EPERM
    assert await host.store(".ipoibfs/neigh", b'{"op": "delete", "dev": "ib0"}') == errno.EINVAL
    assert await host.store(".ipoibfs/neigh", delete.replace(b"ib0", b"ib9")) == errno.ENODEV
    assert await host.store(".ipoibfs/neigh", delete) == 0
    assert await host.store(".ipoibfs/neigh", delete) == errno.ENOENT
    flush = b'{"op": "flush", "dev": "ib0", "dst": ["198.18.0.2"]}'
    assert await host.store(".ipoibfs/neigh", flush) == 0  # gone already: skipped
    assert json.loads(await host.show(".ipoibfs/neigh")) == []


async def test_an_arp_packet_is_sent_and_what_was_received_is_shown(host):  # noqa: F811
    ib0 = host.driver.interfaces["ib0"]
    bcast = ib0.broadcast.hex()
    request = {"op": "send", "dev": "ib0", "arpop": 1, "spa": "198.18.0.1",
               "tpa": "198.18.0.2", "tha": bcast, "dest": bcast}  # fmt: skip
    assert await host.store(".ipoibfs/arp", json.dumps(request).encode()) == errno.ENETDOWN
    host.netdevs.links["ib0"].up = True
    await host.driver.main.link_event(ib0.link.ifindex)
    await trio.testing.wait_all_tasks_blocked()
    sent = []
    ib0.port.send_multicast = lambda mgid, parts: sent.append(b"".join(parts))
    assert await host.store(".ipoibfs/arp", json.dumps(request).encode()) == 0
    (frame,) = sent
    arp = wire.ArpPacket.unpack(frame[wire.UD_VNET_OFFSET + wire.VNET_HDR_LEN :])
    assert arp.sha == ib0.hw_addr and arp.tpa == PEER_IP and arp.tha == ib0.broadcast
    for bad in ({"arpop": 3}, {"spa": "fd18::1"}, {"tha": "00:11"}, {"dest": None}):
        assert await host.store(".ipoibfs/arp", json.dumps({**request, **bad}).encode()) == (
            errno.EINVAL
        )
    assert await host.store(".ipoibfs/arp", json.dumps(request).encode(), USER) == errno.EPERM
    # A reply heard on the broadcast group is shown, numbered, with its packet type.
    reply = wire.ArpPacket(wire.ARPOP_REPLY, wire.hw_addr(0, 0x99, ib0.port.gid), PEER_IP,
                           ib0.hw_addr, bytes([198, 18, 0, 1]))  # fmt: skip
    host.driver.main.ud.rx = None
    host.driver.main.neigh.deliver(ib0, wire.ETH_P_ARP,
                                   memoryview(wire.NO_OFFLOAD + reply.pack()), False)  # fmt: skip
    (seen,) = json.loads(await host.show(".ipoibfs/arp"))
    assert (seen["dev"], seen["op"], seen["spa"], seen["tpa"]) == ("ib0", 2, "198.18.0.2",
                                                                   "198.18.0.1")  # fmt: skip
    assert seen["sha"] == reply.sha.hex() and seen["pkttype"] == "host" and seen["seq"] >= 1
