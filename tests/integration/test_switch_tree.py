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


#: A fabric as ibnetdiscover prints one whose OpenSM runs on a head node: the SM's own port
#: took LID 1, the switch LID 2 (an SX6036 with enhanced port 0).
SM_ON_A_HOST = """\
# Topology file: generated on Tue Dec  1 10:00:00 2026
vendid=0x2c9
devid=0xc738
sysimgguid=0x2c90300c0ffee
switchguid=0x2c90300c0ffee(2c90300c0ffee)
Switch\t36 "S-0002c90300c0ffee"\t\t# "MF0;sw-edge:SX6036/U1" enhanced port 0 lid 2 lmc 0
[1]\t"H-0002c90300a0b000"[1](2c90300a0b001) \t\t# "head01 mlx5_0" lid 1 4xEDR
[2]\t"H-0002c90300a0c000"[1](2c90300a0c001) \t\t# "node01 mlx5_0" lid 3 4xEDR
[3]\t"H-0002c90300a0d000"[1](2c90300a0d001) \t\t# "node02 mlx5_0" lid 4 4xEDR
""" + "".join(
    f"\nvendid=0x2c9\ndevid=0x1017\nsysimgguid=0x2c90300a{n}000\ncaguid=0x2c90300a{n}000\n"
    f'Ca\t1 "H-0002c90300a{n}000"\t\t# "{name} mlx5_0"\n'
    f'[1](2c90300a{n}001) \t"S-0002c90300c0ffee"[{port}]\t\t# lid {lid} lmc 0 '
    f'"MF0;sw-edge:SX6036/U1" lid 2 4xEDR\n'
    for n, name, port, lid in (
        ("0b", "head01", 1, 1),
        ("0c", "node01", 2, 3),
        ("0d", "node02", 3, 4),
    )
)


def test_a_file_whose_sm_runs_on_a_host_starts_its_first_hosts(lab, tmp_path: Path):
    saved = tmp_path / "head.topo"
    saved.write_text(SM_ON_A_HOST)
    too_many = lab.ipoibfs("up", "--hosts", "4", "--topology", str(saved), check=False)
    assert too_many.returncode == 1
    assert too_many.stderr.strip() == f"ipoibfs: --hosts 4, but {saved} has 3 CA(s)"
    lab.up(2, "--topology", str(saved))  # head01 and node01; node02 stays off
    assert [lid(lab, i) for i in (1, 2)] == [1, 3]
    for i in (1, 2):  # the SM is head01's port, asked from another host and from its own
        assert tool(lab, i, "sminfo").startswith("sminfo: sm lid 1 sm guid 0x2c90300a0b001, ")
    is_sm = 1 << 1
    assert int(read(lab.host(1).hca("ports", "1", "cap_mask")), 16) & is_sm
    assert not int(read(lab.host(2).hca("ports", "1", "cap_mask")), 16) & is_sm
    assert tool(lab, 2, "smpquery", "nodedesc", "1").endswith("head01 mlx5_0\n")  # its SMA
    nodes = tool(lab, 1, "saquery")  # the SA at LID 1, asked by its own host
    assert re.findall(r"^\s+lid\.+(\d+)$", nodes, re.M) == ["1", "2", "3"]
    links = tool(lab, 2, "iblinkinfo", "--switch", "0x0002c90300c0ffee")
    assert re.search(r'^\s+2\s+1\[  \] ==\( 4X .* Active/  LinkUp\)==>\s+1\s+1\[  \] '
                     r'"head01 mlx5_0"', links, re.M), links  # fmt: skip
    assert re.search(r"^\s+2\s+3\[  \] ==\(\s+Down/ Polling\)==>", links, re.M), links
    assert lab.ping(2, "198.18.0.1")
