"""The driver's rules against a fake netdev layer and the embedded fabric: no root needed."""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

import pytest
import trio

from ipoibfs.driver import ChildType, IPoIBDriver, ModuleParams
from ipoibfs.errors import KernelError
from ipoibfs.fabric import EmbeddedFabric, HcaDevice, HcaProfile


@dataclass
class FakeLink:
    ifindex: int
    name: str
    mtu: int
    up: bool = False
    carrier: bool = False
    received: list = field(default_factory=list)
    offload: bool = True
    addresses: list = field(default_factory=list)


class FakeNetdevs:
    def __init__(self, taken: tuple[str, ...] = ()) -> None:
        self.links: dict[str, FakeLink] = {}
        self.taken = set(taken)
        self._next = 2

    async def create(self, name: str, *, mtu: int, txqlen: int) -> FakeLink:
        if name in self.links or name in self.taken:
            raise KernelError(errno.EEXIST)
        link = FakeLink(self._next, name, mtu)
        self._next += 1
        self.links[name] = link
        return link

    async def destroy(self, link: FakeLink) -> None:
        self.links.pop(link.name, None)

    async def set_mtu(self, link: FakeLink, mtu: int) -> None:
        link.mtu = mtu

    async def set_up(self, link: FakeLink, up: bool) -> None:
        link.up = up

    def set_carrier(self, link: FakeLink, on: bool) -> None:
        link.carrier = on

    async def set_offload(self, link: FakeLink, on: bool) -> None:
        link.offload = on

    def mtu(self, link: FakeLink) -> int:
        return link.mtu

    def pump(self, link: FakeLink, fast, slow) -> None:
        pass

    def stop_pump(self, link: FakeLink) -> None:
        pass

    def write(self, link: FakeLink, packet: bytes) -> bool:
        link.received.append(bytes(packet))
        return True

    async def add_address(self, link: FakeLink, address: str, prefixlen: int) -> None:
        link.addresses.append((address, prefixlen))

    async def addresses(self) -> dict:
        return {}

    def is_up(self, link: FakeLink) -> bool:
        return link.up


class ListLog:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def warn(self, dev: str, text: str) -> None:
        self.lines.append(f"{dev}: {text}".rstrip("\n"))

    info = dbg = dbg_mcast = warn


@pytest.fixture
async def env(nursery):
    device = HcaDevice("h1", HcaProfile(ports=1))
    fabric = EmbeddedFabric(device)
    netdevs = FakeNetdevs()
    log = ListLog()
    driver = IPoIBDriver(device, fabric.ports, netdevs, ModuleParams(), log)
    driver.start(nursery)
    (ib0,) = await driver.add_ports()
    return driver, ib0, netdevs, log


async def bring_up(driver, iface, netdevs):
    netdevs.links[iface.name].up = True
    await driver.link_event(iface.link.ifindex)


async def test_parent_defaults(env):
    driver, ib0, netdevs, _ = env
    assert ib0.name == "ib0" and ib0.pkey == 0xFFFF and ib0.qpn == 0x48
    assert ib0.child_type is ChildType.PARENT
    assert netdevs.links["ib0"].mtu == 4092
    assert driver.txqlen == 256


async def test_add_ports_refuses_a_taken_name():
    device = HcaDevice("h1", HcaProfile())
    driver = IPoIBDriver(device, EmbeddedFabric(device).ports, FakeNetdevs(taken=("ib0",)),
                         ModuleParams(), ListLog())  # fmt: skip
    with pytest.raises(KernelError) as e:
        await driver.add_ports()
    assert e.value.errno == errno.EEXIST


async def test_create_child_names_and_pkeys(env):
    driver, ib0, _, _ = env
    child = await driver.create_child(ib0, b"1\n", net_admin=True)
    assert child.name == "ib0.0001" and child.pkey == 0x8001 and child.qpn == 0x49
    assert child.parent is ib0 and child in ib0.children
    assert child.hw_addr[4:] == ib0.hw_addr[4:] and child.hw_addr[:4] != ib0.hw_addr[:4]


@pytest.mark.parametrize(
    ("buf", "err"),
    [(b"0", errno.EINVAL), (b"0x8000", errno.EINVAL), (b"65536", errno.EINVAL),
     (b"x", errno.EINVAL), (b"0xffff", errno.ENOTUNIQ)],
)  # fmt: skip
async def test_create_child_refusals(env, buf, err):
    driver, ib0, netdevs, _ = env
    with pytest.raises(KernelError) as e:
        await driver.create_child(ib0, buf, net_admin=True)
    assert e.value.errno == err
    assert list(driver.interfaces) == ["ib0"] and list(netdevs.links) == ["ib0"]


async def test_create_child_checks_the_capability_after_the_value(env):
    driver, ib0, _, _ = env
    with pytest.raises(KernelError) as e:
        await driver.create_child(ib0, b"junk", net_admin=False)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(KernelError) as e:
        await driver.create_child(ib0, b"0x8001", net_admin=False)
    assert e.value.errno == errno.EPERM


async def test_duplicate_detection_compares_raw_with_effective(env):
    driver, ib0, _, log = env
    await driver.create_child(ib0, b"1", net_admin=True)
    with pytest.raises(KernelError) as e:
        await driver.create_child(ib0, b"0x8001", net_admin=True)
    assert e.value.errno == errno.ENOTUNIQ
    with pytest.raises(KernelError) as e:
        await driver.create_child(ib0, b"1", net_admin=True)
    assert e.value.errno == errno.EEXIST
    assert "ib0.0001: failed to initialize; error -17" in log.lines
    child = await driver.create_child(ib0, b"0x7fff", net_admin=True)
    assert child.pkey == 0xFFFF


async def test_delete_child_is_asynchronous_and_matches_effective_pkeys(env):
    driver, ib0, netdevs, _ = env
    await driver.create_child(ib0, b"1", net_admin=True)
    with pytest.raises(KernelError) as e:
        await driver.delete_child(ib0, b"1", net_admin=True)
    assert e.value.errno == errno.ENODEV
    await driver.delete_child(ib0, b"0x8001", net_admin=True)
    assert ib0.children == []
    assert "ib0.0001" in driver.interfaces  # still registered: the work item has not run
    await trio.testing.wait_all_tasks_blocked()
    assert list(driver.interfaces) == ["ib0"] and list(netdevs.links) == ["ib0"]


async def test_delete_child_never_removes_rtnl_children(env):
    driver, ib0, _, _ = env
    async with driver.rtnl:
        await driver._register("ib0.8001", ib0.port, 0x8001, ChildType.RTNL, ib0)
    with pytest.raises(KernelError) as e:
        await driver.delete_child(ib0, b"0x8001", net_admin=True)
    assert e.value.errno == errno.ENODEV


async def test_open_joins_the_broadcast_group_then_sets_mtu_and_carrier(env):
    driver, ib0, netdevs, _ = env
    await bring_up(driver, ib0, netdevs)
    assert ib0.opened and ib0.carrier and netdevs.links["ib0"].carrier
    assert ib0.mcast_mtu == 2044 and netdevs.links["ib0"].mtu == 2044
    (entry,) = ib0.mcast.values()
    assert entry.complete and entry.mgid == ib0.broadcast_mgid
    assert ib0.qpn in {qpn for _, qpn in driver.ports[0].sm.sm.groups[entry.mgid].members}
    assert netdevs.links["ib0"].addresses == [("fe80::202:c903:0:101", 64)]  # addrconf's ifid


async def test_stop_leaves_groups_and_drops_carrier(env):
    driver, ib0, netdevs, _ = env
    await bring_up(driver, ib0, netdevs)
    netdevs.links["ib0"].up = False
    await driver.link_event(ib0.link.ifindex)
    assert not ib0.carrier and not netdevs.links["ib0"].carrier and ib0.mcast == {}


async def test_child_with_a_missing_pkey_gets_no_carrier(env):
    driver, ib0, netdevs, log = env
    child = await driver.create_child(ib0, b"0x8001", net_admin=True)
    await bring_up(driver, child, netdevs)
    assert child.opened and not child.carrier
    assert "ib0.8001: P_Key 0x8001 is not found" in log.lines


async def test_parent_open_brings_children_up(env):
    driver, ib0, netdevs, _ = env
    child = await driver.create_child(ib0, b"0x7fff", net_admin=True)
    await bring_up(driver, ib0, netdevs)
    assert netdevs.links[child.name].up
    await driver.link_event(child.link.ifindex)
    assert child.carrier


async def test_mode_switch_and_mtu(env):
    driver, ib0, netdevs, log = env
    await bring_up(driver, ib0, netdevs)
    await driver.set_mode(ib0, b"connected\n")
    assert ib0.admin_cm and netdevs.links["ib0"].mtu == 65520
    assert log.lines[-2:] == ["ib0: enabling connected mode will cause multicast packet drops",
                              "ib0: mtu > 2044 will cause multicast packet drops."]  # fmt: skip
    await driver.change_mtu(ib0, 9000)
    assert netdevs.links["ib0"].mtu == 9000
    await driver.set_mode(ib0, b"datagram\n")
    assert netdevs.links["ib0"].mtu == 2044
    for bad in (b"connected", b"Datagram\n"):
        with pytest.raises(KernelError) as e:
            await driver.set_mode(ib0, bad)
        assert e.value.errno == errno.EINVAL
    assert not ib0.admin_cm


async def test_connected_mode_needs_cm_support(nursery):
    device = HcaDevice("h1", HcaProfile(cm=False))
    driver = IPoIBDriver(device, EmbeddedFabric(device).ports, FakeNetdevs(), ModuleParams(),
                         ListLog())  # fmt: skip
    driver.start(nursery)
    (ib0,) = await driver.add_ports()
    assert ib0.hw_addr[0] == 0
    with pytest.raises(KernelError) as e:
        await driver.set_mode(ib0, b"connected\n")
    assert e.value.errno == errno.EINVAL


async def test_datagram_mtu_clamp_remembers_the_request(env):
    driver, ib0, netdevs, _ = env
    await driver.change_mtu(ib0, 4000)
    assert netdevs.links["ib0"].mtu == 4000  # before the join, the multicast MTU is 4092
    await bring_up(driver, ib0, netdevs)
    # carrier_on's dev_set_mtu(min(mcast_mtu, admin_mtu)) goes through change_mtu, as upstream.
    assert netdevs.links["ib0"].mtu == 2044 and ib0.admin_mtu == 2044
    await driver.change_mtu(ib0, 3000)
    assert netdevs.links["ib0"].mtu == 2044 and ib0.admin_mtu == 3000
    for bad in (71, 4093, 65521, -1):
        with pytest.raises(KernelError):
            await driver.change_mtu(ib0, bad)
    assert netdevs.links["ib0"].mtu == 2044


async def test_outside_mtu_changes_follow_the_driver_rules(env):
    driver, ib0, netdevs, log = env
    netdevs.links["ib0"].mtu = 9000  # `ip link set ib0 mtu 9000` on the TUN
    await driver.link_event(ib0.link.ifindex)
    assert netdevs.links["ib0"].mtu == 4092
    assert "ib0: mtu 9000 refused by ib_ipoib, restoring 4092" in log.lines
    netdevs.links["ib0"].mtu = 1500
    await driver.link_event(ib0.link.ifindex)
    assert netdevs.links["ib0"].mtu == 1500 and ib0.admin_mtu == 1500


async def test_umcast_parsing_and_warning(env):
    driver, ib0, _, log = env
    driver.set_umcast(ib0, b"1\n")
    assert ib0.umcast
    assert log.lines[-1] == "ib0: ignoring multicast groups joined directly by userspace"
    driver.set_umcast(ib0, b"0x80000000")
    assert not ib0.umcast


async def test_ip_groups_are_joined_and_left(env):
    driver, ib0, netdevs, _ = env
    await bring_up(driver, ib0, netdevs)
    await driver.set_ip_groups(ib0, ["224.0.0.1"], ["ff02::1", "ff01::1"])
    assert len(ib0.mcast) == 3  # broadcast, 224.0.0.1, ff02::1 (ff01::1 is node-local)
    await driver.set_ip_groups(ib0, [], [])
    assert list(ib0.mcast) == [ib0.broadcast_mgid]


async def test_umcast_skips_groups_another_qp_of_the_port_holds(env):
    driver, ib0, netdevs, _ = env
    await bring_up(driver, ib0, netdevs)
    async with driver.rtnl:
        twin = await driver._register("twin", ib0.port, 0x7FFF, ChildType.RTNL, ib0)
    await bring_up(driver, twin, netdevs)
    await driver.set_ip_groups(twin, ["224.0.0.1"], [])
    driver.set_umcast(ib0, b"1")
    await driver.set_ip_groups(ib0, ["224.0.0.1"], [])
    assert list(ib0.mcast) == [ib0.broadcast_mgid]


async def test_neighbours_age_out_after_two_reap_periods(env, autojump_clock):
    from ipoibfs.driver import datapath
    from ipoibfs.driver.interface import Neighbour

    driver, ib0, _, _ = env
    ib0.neighbours[b"\xc6\x12\x00\x02"] = Neighbour(used=trio.current_time())
    await trio.sleep(datapath.REAP_SECONDS * 2 - 1)
    assert b"\xc6\x12\x00\x02" in ib0.neighbours  # a reap ran, but it is not old enough
    await trio.sleep(datapath.REAP_SECONDS + 2)
    assert ib0.neighbours == {}  # gone after 60-90 s, as ipoib_reap_neigh does


async def test_send_only_groups_are_left_when_reaped(env, autojump_clock):
    from ipoibfs.driver import datapath

    driver, ib0, netdevs, _ = env
    await bring_up(driver, ib0, netdevs)
    mgid = bytes.fromhex("ff12601bffff00000000000000000016")
    frame = b"\0" * 10 + bytes.fromhex("6000000000083a01") + bytes(32) + b"\x8f" + bytes(7)
    driver.datapath._xmit_multicast(ib0, mgid, 0x86DD, frame)
    await trio.testing.wait_all_tasks_blocked()
    assert ib0.mcast[mgid].send_only and ib0.mcast[mgid].complete
    assert ib0.port.has_member(mgid, exclude_qpn=0)
    await trio.sleep(datapath.REAP_SECONDS * 3 + 1)
    assert mgid not in ib0.mcast
    assert not ib0.port.has_member(mgid, exclude_qpn=0)
