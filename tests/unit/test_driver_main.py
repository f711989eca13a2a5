"""driver/main.py: registration, open/stop, the MTU rules, the mode, umcast, link events."""

from __future__ import annotations

import errno

import pytest
import trio.testing

from ipoibfs.driver import features as F
from ipoibfs.driver.interface import ChildType
from ipoibfs.errors import KernelError
from ipoibfs.fabric.device import HcaProfile

from .conftest import make_driver
from .fakes import FakeNetdevs


async def test_parent_defaults(env):
    ib0 = env.ib0
    assert ib0.name == "ib0" and ib0.pkey == 0xFFFF and ib0.qpn == 0x48
    assert ib0.child_type is ChildType.PARENT
    assert env.netdevs.links["ib0"].mtu == 4092
    assert env.driver.ctx.txqlen == 256
    assert env.netdevs.pumps["ib0"]  # its packets are moved from registration on


async def test_add_ports_refuses_a_taken_name():
    driver, _, _ = make_driver(netdevs=FakeNetdevs(taken=("ib0",)))
    with pytest.raises(KernelError) as e:
        await driver.add_ports()
    assert e.value.errno == errno.EEXIST


async def test_open_joins_the_broadcast_group_then_sets_mtu_and_carrier(env):
    ib0, link = env.ib0, env.netdevs.links["ib0"]
    await env.up(ib0)
    assert ib0.opened and ib0.carrier and link.carrier
    assert ib0.mcast_mtu == 2044 and link.mtu == 2044
    (entry,) = ib0.mcast.values()
    assert entry.complete and entry.mgid == ib0.broadcast_mgid
    sm = env.driver.ctx.ports[0].sm.sm
    assert ib0.qpn in {qpn for _, qpn in sm.groups[entry.mgid].members}
    assert link.addresses == [("fe80::202:c903:0:101", 64)]  # addrconf's ifid


async def test_stop_leaves_groups_and_drops_carrier(env):
    ib0 = env.ib0
    await env.up(ib0)
    await env.down(ib0)
    assert not ib0.carrier and not env.netdevs.links["ib0"].carrier and ib0.mcast == {}


async def test_child_with_a_missing_pkey_gets_no_carrier(env):
    child = await env.driver.vlan.create_child(env.ib0, b"0x8001", net_admin=True)
    await env.up(child)
    assert child.opened and not child.carrier
    assert "ib0.8001: P_Key 0x8001 is not found" in env.log.lines


async def test_parent_open_brings_children_up(env):
    child = await env.driver.vlan.create_child(env.ib0, b"0x7fff", net_admin=True)
    await env.up(env.ib0)
    assert env.netdevs.links[child.name].up
    await env.driver.main.link_event(child.link.ifindex)
    await trio.testing.wait_all_tasks_blocked()
    assert child.carrier


async def test_mode_switch_and_mtu(env):
    main, ib0, link = env.driver.main, env.ib0, env.netdevs.links["ib0"]
    await env.up(ib0)
    await main.set_mode(ib0, b"connected\n")
    assert ib0.admin_cm and link.mtu == 65520 and link.offload == 0
    assert env.log.lines[-2:] == ["ib0: enabling connected mode will cause multicast packet drops",
                                  "ib0: mtu > 2044 will cause multicast packet drops."]  # fmt: skip
    await main.change_mtu(ib0, 9000)
    assert link.mtu == 9000
    await main.set_mode(ib0, b"datagram\n")
    assert link.mtu == 2044 and link.offload == CSUM_TSO
    for bad in (b"connected", b"Datagram\n"):
        with pytest.raises(KernelError) as e:
            await main.set_mode(ib0, bad)
        assert e.value.errno == errno.EINVAL
    assert not ib0.admin_cm


CSUM_TSO = F.TUN_F_CSUM | F.TUN_F_TSO4


async def test_features_follow_the_mode_and_ethtool(env):
    """ipoib_set_dev_features at registration; connected mode drops IP_CSUM and TSO and
    datagram mode brings back what was wanted, `-K tso off` included; the TUN follows."""
    main, ib0, link = env.driver.main, env.ib0, env.netdevs.links["ib0"]
    assert ib0.features == F.ipoib_features() and link.offload == CSUM_TSO
    await main.set_features(ib0, [(F.TSO, False), (F.LRO, True)])
    assert not ib0.features.on(F.TSO) and ib0.features.on(F.LRO) and link.offload == F.TUN_F_CSUM
    await main.set_mode(ib0, b"connected\n")
    assert not ib0.features.on(F.IP_CSUM) and F.IP_CSUM in ib0.features.wanted
    assert ib0.features.on(F.RXCSUM) and ib0.features.on(F.LRO) and link.offload == 0
    await main.set_features(ib0, [(F.TSO, True)])  # wanted, forbidden by the mode
    assert not ib0.features.on(F.TSO) and link.offload == 0
    await main.set_mode(ib0, b"datagram\n")
    assert ib0.features.on(F.TSO) and link.offload == CSUM_TSO
    await main.set_features(ib0, [(F.TSO, False)])
    await main.set_mode(ib0, b"connected\n")
    await main.set_mode(ib0, b"datagram\n")
    assert not ib0.features.on(F.TSO) and ib0.features.on(F.IP_CSUM)
    child = await env.driver.vlan.create_child(ib0, b"0x8001", net_admin=True)
    assert child.features == F.ipoib_features()  # its own, from the parent's HCA


async def test_rtnl_children_have_their_own_features(env):
    main, ib0 = env.driver.main, env.ib0
    blue = await env.driver.netlink.new_link("ib0", "blue", 0x8002, mode=1)  # connected
    assert blue.features == F.ipoib_set_mode(F.ipoib_features(), True)
    assert env.netdevs.links["blue"].offload == 0
    await main.set_features(blue, [(F.GRO, False)])
    assert not blue.features.on(F.GRO) and ib0.features.on(F.GRO)
    await env.driver.netlink.change_link(blue, 0, None)  # datagram
    assert blue.features.on(F.TSO) and env.netdevs.links["blue"].offload == CSUM_TSO


async def test_invalid_feature_requests_change_nothing(env):
    main, ib0 = env.driver.main, env.ib0
    before = ib0.features
    for bits, err in (([(F.LRO, True), ("no-such-feature", True)], errno.EOPNOTSUPP),
                      ([(F.LRO, True), (F.VLAN_CHALLENGED, False)], errno.EINVAL)):  # fmt: skip
        with pytest.raises(KernelError) as e:
            await main.set_features(ib0, bits)
        assert e.value.errno == err
    await main.set_features(ib0, [(F.RXCSUM, False), (F.LRO, True)])  # LRO needs RX checksum
    assert not ib0.features.on(F.LRO) and F.LRO in ib0.features.wanted
    await main.set_features(ib0, [(F.RXCSUM, True)])
    assert ib0.features.on(F.LRO) and before != ib0.features


async def test_an_hca_without_offloads(nursery):
    driver, netdevs, _ = make_driver(HcaProfile(ud_ip_csum=False, ud_tso=False, lro=False))
    driver.start(nursery)
    (ib0,) = await driver.add_ports()
    assert ib0.features == F.ipoib_features(F.NO_OFFLOAD_HCA) and netdevs.links["ib0"].offload == 0
    before = ib0.features
    await driver.main.set_features(ib0, [(F.IP_CSUM, True), (F.TSO, True), (F.LRO, True)])
    assert ib0.features == before
    child = await driver.vlan.create_child(ib0, b"0x8001", net_admin=True)
    assert child.features == before and netdevs.links[child.name].offload == 0


async def test_connected_mode_needs_cm_support(nursery):
    driver, _, _ = make_driver(HcaProfile(cm=False))
    driver.start(nursery)
    (ib0,) = await driver.add_ports()
    assert ib0.hw_addr[0] == 0
    with pytest.raises(KernelError) as e:
        await driver.main.set_mode(ib0, b"connected\n")
    assert e.value.errno == errno.EINVAL


async def test_datagram_mtu_clamp_remembers_the_request(env):
    main, ib0, link = env.driver.main, env.ib0, env.netdevs.links["ib0"]
    await main.change_mtu(ib0, 4000)
    assert link.mtu == 4000  # before the join, the multicast MTU is 4092
    await env.up(ib0)
    # carrier_on's dev_set_mtu(min(mcast_mtu, admin_mtu)) goes through change_mtu, as upstream.
    assert link.mtu == 2044 and ib0.admin_mtu == 2044
    await main.change_mtu(ib0, 3000)
    assert link.mtu == 2044 and ib0.admin_mtu == 3000
    for bad in (71, 4093, 65521, -1):
        with pytest.raises(KernelError):
            await main.change_mtu(ib0, bad)
    assert link.mtu == 2044


async def test_outside_mtu_changes_follow_the_driver_rules(env):
    main, ib0, link = env.driver.main, env.ib0, env.netdevs.links["ib0"]
    link.mtu = 9000  # `ip link set ib0 mtu 9000` on the TUN
    await main.link_event(ib0.link.ifindex)
    assert link.mtu == 4092
    assert "ib0: mtu 9000 refused by ib_ipoib, restoring 4092" in env.log.lines
    link.mtu = 1500
    await main.link_event(ib0.link.ifindex)
    assert link.mtu == 1500 and ib0.admin_mtu == 1500


async def test_umcast_parsing_and_warning(env):
    main, ib0 = env.driver.main, env.ib0
    main.set_umcast(ib0, b"1\n")
    assert ib0.umcast
    assert env.log.lines[-1] == "ib0: ignoring multicast groups joined directly by userspace"
    main.set_umcast(ib0, b"0x80000000")
    assert not ib0.umcast


async def test_a_deleted_parent_comes_back(env):
    ib0 = env.ib0
    await env.up(ib0)
    old = ib0.link
    await env.driver.main.link_deleted(old.ifindex)
    assert ib0.link is not old and env.netdevs.links["ib0"].up
    assert "ib0: parent interfaces are not deleted by ib_ipoib: recreated" in env.log.lines


async def test_operstate_of_a_child_follows_its_parents_carrier(env):
    main = env.driver.main
    child = await env.driver.vlan.create_child(env.ib0, b"0x8001", net_admin=True)
    assert main.operstate(child, "up", up=False, carrier=False) == "down"
    assert main.operstate(child, "down", up=True, carrier=False) == "lowerlayerdown"
    await env.up(env.ib0)
    assert main.operstate(child, "down", up=True, carrier=False) == "down"
