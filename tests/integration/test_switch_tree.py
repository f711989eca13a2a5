"""Topologies beyond one switch: `lab up --switches K` (leaves and a spine) as the stock
infiniband-diags tools see it, and an ibnetdiscover file fed back through `lab up
--topology`, which rebuilds the same fabric."""

from __future__ import annotations

import re
from pathlib import Path

from .conftest import GUID, lab_handle, read
from .test_sa import lid, tool

SPINE, LEAF1, LEAF2 = "0x0002c90300000001", "0x0002c90300000002", "0x0002c90300000003"


def _body(topology: str) -> list[str]:
    """A topology file without its comment header (its date and initiator), sorted: the
    node sections come in the order the initiator found them."""
    return sorted(line for line in topology.splitlines() if not line.startswith("#"))


def test_a_tree_is_discovered_routed_and_rebuilt_from_its_file(lab, tmp_path: Path):
    lab.up(4, "--switches", "2")
    assert [lid(lab, i) for i in (1, 2, 3, 4)] == [4, 5, 6, 7]  # after the switches' 1..3
    found = tool(lab, 1, "ibnetdiscover")
    for guid, desc, lid_ in ((SPINE, "ipoibfs spine", 1), (LEAF1, "ipoibfs leaf 1", 2),
                             (LEAF2, "ipoibfs leaf 2", 3)):  # fmt: skip
        assert f'Switch\t36 "S-{guid[2:]}"\t\t# "{desc}" base port 0 lid {lid_} lmc 0' in found
    assert f'[1]\t"S-{LEAF1[2:]}"[36]\t\t# "ipoibfs leaf 1" lid 2 4xEDR' in found  # spine
    assert f'[36]\t"S-{SPINE[2:]}"[2]\t\t# "ipoibfs spine" lid 1 4xEDR' in found  # leaf 2
    for i, leaf, port in ((1, "leaf 1", 1), (2, "leaf 1", 2), (3, "leaf 2", 1), (4, "leaf 2", 2)):
        line = (
            rf'^\[1\]\({int(GUID.format(i), 16):x}\) \t"S-\w+"\[{port}\]\t\t# '
            rf'lid {lid(lab, i)} lmc 0 "ipoibfs {leaf}"'
        )
        assert re.search(line, found, re.M), found
    switches = tool(lab, 2, "ibswitches")
    assert sorted(re.findall(r'"(ipoibfs [\w ]+)"', switches)) == [
        "ipoibfs leaf 1", "ipoibfs leaf 2", "ipoibfs spine"]  # fmt: skip
    # h1 to h4 crosses leaf 1, the spine and leaf 2; h1 to h2 only leaf 1
    far = tool(lab, 1, "ibtracert", "4", "7")
    hops = re.findall(r"^\[(\d+)\] -> (switch|ca) port \{(0x\w+)\}\[(\d+)\]", far, re.M)
    expected = [
        ("1", "switch", LEAF1, "1"),
        ("36", "switch", SPINE, "1"),
        ("2", "switch", LEAF2, "36"),
        ("2", "ca", GUID.format(4), "1"),
    ]
    assert hops == expected, far
    # the broadcast group's tree, which every host joined: the same hops
    mcast = tool(lab, 1, "ibtracert", "-m", "0xc000", "4", "7")
    nodes_on_the_way = [LEAF1, SPINE, LEAF2, GUID.format(4)[:-2] + "00"]  # node GUIDs
    assert re.findall(r"^\[(\d+)\] -> (switch|ca) (0x\w+)\[(\d+)\]", mcast, re.M) == [
        (o, kind, hex(int(g, 16)), i)
        for (o, kind, _, i), g in zip(expected, nodes_on_the_way, strict=True)
    ], mcast
    # leaf 1's MFT: the broadcast group to both its hosts and up; h1's own groups to port 1
    mft = tool(lab, 1, "ibroute", "-M", "2")
    assert re.search(r"^0xc000 {8}x x {67}x $", mft, re.M), mft
    nodes = tool(lab, 1, "saquery")  # every node: the switches too
    assert re.findall(r"^\s+lid\.+(\d+)$", nodes, re.M) == [str(n) for n in range(1, 8)]
    near = tool(lab, 1, "ibtracert", "4", "5")
    assert re.findall(r"-> (switch|ca) port", near) == ["switch", "ca"], near
    route = tool(lab, 1, "ibroute", "2")  # leaf 1: its hosts down, the rest up port 36
    for dlid, port in ((1, 36), (2, 0), (3, 36), (4, 1), (5, 2), (6, 36), (7, 36)):
        assert re.search(rf"^0x{dlid:04x} {port:03d} :", route, re.M), route
    assert lab.ping(1, "198.18.0.4")

    # the file back: another lab, with the same switches, cables, GUIDs, LIDs and names
    saved = tmp_path / "tree.topo"
    saved.write_text(found)
    with lab_handle("r") as again:
        result = again.ipoibfs("up", "--topology", str(saved), check=False)
        assert result.returncode == 0, result.stderr
        for i in (1, 2, 3, 4):
            again.host(i).wait_carrier()
        assert read(again.host(3).hca("node_desc")) == f"{lab.name(3)} ipoibfs0\n"
        assert read(again.host(3).hca("node_guid")) == read(lab.host(3).hca("node_guid"))
        assert [lid(again, i) for i in (1, 2, 3, 4)] == [4, 5, 6, 7]
        assert _body(tool(again, 4, "ibnetdiscover")) == _body(found)
        assert again.ping(4, "198.18.0.1")


def test_a_topology_file_that_cannot_be_built_is_refused_whole(lab, tmp_path: Path):
    bad = tmp_path / "bad.topo"
    bad.write_text('Switch\t36 "S-0002c90300000001"\t\t# "sw" base port 0 lid 1 lmc 0\n'
                   "[1]\tnot a port\n")  # fmt: skip
    result = lab.ipoibfs("up", "--topology", str(bad), check=False)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        f"ipoibfs: topology file {bad} line 2: not a node or port line: '[1]\\tnot a port'"
    )
    assert "Traceback" not in result.stderr
    assert not Path(f"/run/ipoibfs/{lab.prefix}-lab.json").exists()
    both = lab.ipoibfs("up", "--hosts", "2", "--switches", "2", "--topology", str(bad),
                       check=False)  # fmt: skip
    assert both.returncode != 0 and "--switches and --topology" in both.stderr
