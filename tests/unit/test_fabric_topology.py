"""The fabric's switches and cables (fabric/topology.py): a tree's routes, the ports a
packet enters by, and ibnetdiscover files read and written."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ipoibfs.errors import UsageError
from ipoibfs.fabric import topology
from ipoibfs.fabric.sm import SubnetManager
from ipoibfs.fabric.topology import NO_PORT, CaNode


def host_guids(n: int) -> list[list[int]]:
    return [[0x0002C90300000000 | i << 8 | 1] for i in range(1, n + 1)]


def test_a_tree_shares_the_hosts_out_and_routes_through_the_spine():
    topo = topology.tree(2, host_guids(5))
    assert [(s.lid, s.ports, s.desc) for s in topo.switches] == [
        (1, 36, b"ipoibfs spine"),
        (2, 36, b"ipoibfs leaf 1"),
        (3, 36, b"ipoibfs leaf 2"),
    ]
    guids = [g[0] for g in host_guids(5)]
    assert [topo.cables[g] for g in guids] == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2)]
    assert topo.links[(1, 36)] == (0, 1) and topo.links[(0, 2)] == (2, 36)
    h1, h5 = topo.cables[guids[0]], topo.cables[guids[4]]
    assert topo.out_port(1, 10, h1) == 1  # leaf 1 to its own host
    assert topo.out_port(1, 14, h5) == 36  # ... to another leaf's, up
    assert topo.out_port(0, 14, h5) == 2  # the spine down to leaf 2
    assert topo.out_port(2, 2, None) == 36 and topo.out_port(0, 3, None) == 2  # switches
    assert topo.out_port(0, 1, None) == 0 and topo.out_port(1, 99, None) == NO_PORT
    assert topo.entry_port(1, 2, 1) == 36  # from leaf 1 through the spine into leaf 2
    assert topo.entry_port(1, 0, 3) == 1 and topo.entry_port(1, 1, 3) == 3
    assert topo.far_end(0, 1, {}) == ("switch", 1, 36)
    assert topo.far_end(2, 2, {}) == ("ca", guids[4], 0)
    assert topo.far_end(2, 3, {}) is None


def test_a_groups_tree_spans_only_the_switches_between_its_members():
    topo = topology.tree(3, host_guids(6))  # leaves 1..3, two hosts each; spine port k
    # members on leaf 1 (port 1) and leaf 3 (port 2): through the spine, not leaf 2
    members = [(1, 1), (3, 2)]
    assert topo.multicast_ports(1, members) == {1, 36}
    assert topo.multicast_ports(0, members) == {1, 3}
    assert topo.multicast_ports(3, members) == {2, 36}
    assert topo.multicast_ports(2, members) == set()
    # all on one leaf: the spine is out of it
    assert topo.multicast_ports(1, [(1, 1), (1, 2)]) == {1, 2}
    assert topo.multicast_ports(0, [(1, 1), (1, 2)]) == set()


def test_the_default_switch_cables_a_host_by_its_lid():
    topo = topology.single()
    assert topo.attachment(0x1234, 7) == (0, 6)
    assert topo.far_end(0, 6, {7: SimpleNamespace(guid=0x1234)}) == ("ca", 0x1234, 0)
    assert topo.num_ports(0, [2, 3]) == 36 and topo.num_ports(0, [100]) == 99


def test_an_ibnetdiscover_file_round_trips():
    topo = topology.tree(2, host_guids(3))
    cas = [CaNode(g[0] - 1, 1, f"lab-h{i} ipoibfs0".encode(), (3 + i,))
           for i, g in enumerate(host_guids(3), 1)]  # fmt: skip
    text = topology.format_ibnetdiscover(topo, cas)
    again = topology.parse_ibnetdiscover("#\n# Topology file: generated\n#\n\n" + text)
    assert again.switches == topo.switches
    assert again.links == topo.links and again.cables == topo.cables
    assert again.cas == cas
    assert topology.format_ibnetdiscover(again, again.cas) == text


def test_a_file_may_put_the_sm_on_a_cas_port():
    text = (
        'Switch\t36 "S-0002c90300c0ffee"\t\t# "sw" enhanced port 0 lid 2 lmc 0\n'
        '[5]\t"H-0002c90300000100"[2](2c90300000102) \t\t# "h" lid 1 4xEDR\n'
        '[6]\t"H-0002c90300000100"[1](2c90300000101) \t\t# "h" lid 3 4xEDR\n'
        'Ca\t2 "H-0002c90300000100"\t\t# "h"\n'
        '[1](2c90300000101) \t"S-0002c90300c0ffee"[6]\t\t# lid 3 lmc 0 "sw" lid 2 4xEDR\n'
        '[2](2c90300000102) \t"S-0002c90300c0ffee"[5]\t\t# lid 1 lmc 0 "sw" lid 2 4xEDR\n'
    )
    topo = topology.parse_ibnetdiscover(text)
    assert topo.sm_port == topo.sm_guid == 0x2C90300000102  # port 2, which has LID 1
    assert topo.cas[0].lids == (3, 1) and topo.switch_at(2) == 0 and topo.switch_at(1) is None
    saved = {0x2C90300000101: 3, 0x2C90300000999: 1, 0x2C90300000998: 2}
    sm = SubnetManager(guid2lid=saved, topology=topo)
    assert sm.assign_lid(0x2C90300000102) == 1  # the SM's own port
    assert sm.assign_lid(0x2C90300000999) == 4  # a saved LID 1 or switch LID is not kept
    assert sm.assign_lid(0x2C90300000998) == 5


@pytest.mark.parametrize(("text", "message"), [
    ('Switch\t36 "S-0002c90300000001"\t\t# "sw" base port 0 lid 2 lmc 0\n', "no node has LID 1"),
    ('Switch\t36 "S-0002c90300000001"\t\t# "sw" base port 0 lid 1 lmc 0\n'
     '[1]\t"H-0002c90300000100"[1](2c90300000101) \t\t# "h" lid 2 4xEDR\n',
     "goes to 0x2c90300000100, not listed"),
    ('Rt\t2 "R-0002c90300000009"\t\t# "r"\n', "line 1: routers are not emulated"),
    ('Switch\t36 "S-0002c90300000001"\n', "line 1: a switch without 'lid N'"),
    ("hello\n", "line 1: not a node or port line"),
])  # fmt: skip
def test_a_bad_topology_file_names_what_is_wrong(text, message):
    with pytest.raises(UsageError, match=message):
        topology.parse_ibnetdiscover(text)
