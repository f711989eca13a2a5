"""The subnet manager through the stock tools under `ipoibfs exec`: sminfo, and saquery's
NodeRecord and PathRecord tables, which follow the partitions and, longer than one MAD,
reach saquery whole (RMPP through exec's read supervisor: umad/supervisor.py).

One lab serves the module: h1 and h2 share the default partition, h3 is alone in green.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import time
from collections.abc import Iterator

import pytest

from .conftest import GUID, IPOIBFS, LabHandle, lab_handle, read, run, wait_for

pytestmark = pytest.mark.skipif(
    not os.path.exists("/usr/sbin/saquery"), reason="infiniband-diags is not installed"
)

PARTITIONS = (
    f"Default=0x7fff, ipoib : {GUID.format(1)}=full, {GUID.format(2)}=full ;\n"
    f"green=0x0003, ipoib : {GUID.format(3)}=full ;\n"
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[LabHandle]:
    conf = tmp_path_factory.mktemp("sa") / "partitions.conf"
    conf.write_text(PARTITIONS)
    with lab_handle("s") as handle:
        handle.up(3, "--partitions", str(conf))
        yield handle


def tool(lab: LabHandle, i: int, *cmd: str) -> str:
    result = run(IPOIBFS, "exec", lab.name(i), "--", *cmd, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def lid(lab: LabHandle, i: int) -> int:
    value = read(lab.host(i).hca("ports", "1", "lid"))
    assert isinstance(value, str)
    return int(value, 16)


def dumped(text: str, field: str) -> list[str]:
    """The values of one field in saquery's record dumps, in order."""
    return re.findall(rf"^\s+{field}\.+(.*)$", text, re.M)


def test_sminfo_names_the_master(lab):
    out = tool(lab, 1, "sminfo")
    assert re.fullmatch(r"sminfo: sm lid 1 sm guid 0x2c90300000001, activity count \d+ "
                        r"priority 0 state 3 SMINFO_MASTER\n", out), out  # fmt: skip


def test_node_records_are_those_of_the_partitions_and_come_whole(lab):
    out = tool(lab, 1, "saquery")
    # the switch and two hosts: three NodeRecords are 336 bytes, more than one MAD's 200,
    # so an RMPP message
    assert dumped(out, "lid") == ["1", str(lid(lab, 1)), str(lid(lab, 2))]
    assert dumped(out, "NodeDescription") == ["ipoibfs switch"] + [
        f"{lab.name(i)} ipoibfs0" for i in (1, 2)
    ]
    assert dumped(out, "port_guid") == ["0x0002c90300000001"] + [GUID.format(i) for i in (1, 2)]
    assert dumped(out, "node_type") == ["Switch", "Channel Adapter", "Channel Adapter"]
    alone = tool(lab, 3, "saquery")  # the switch's port 0 is in every partition
    assert dumped(alone, "lid") == ["1", str(lid(lab, 3))]


def test_path_records_only_between_hosts_that_share_a_partition(lab):
    path = tool(lab, 1, "saquery", "-p", "--src-to-dst", f"{lid(lab, 1)}:{lid(lab, 2)}")
    assert dumped(path, "slid") == [str(lid(lab, 1))]
    assert dumped(path, "dlid") == [str(lid(lab, 2))]
    assert dumped(path, "pkey") == ["0xFFFF"]
    assert dumped(path, "mtu") == ["0x85"]  # exactly 4096
    none = tool(lab, 1, "saquery", "-p", "--src-to-dst", f"{lid(lab, 1)}:{lid(lab, 3)}")
    assert dumped(none, "dlid") == []
    every = tool(lab, 1, "saquery", "-p")  # h1 <-> h2 both ways and each to itself
    assert len(dumped(every, "dlid")) == 4


def test_reads_of_the_supervised_size_from_other_files_are_untouched(lab):
    """exec's seccomp filter hands every 320-byte read to its supervisor, which lets those
    of any file but a umad one run as they are."""
    out = tool(lab, 1, "sh", "-c", "dd if=/etc/services bs=320 count=3 status=none | md5sum")
    with open("/etc/services", "rb") as f:
        assert out.split()[0] == hashlib.md5(f.read(960)).hexdigest()


def test_a_program_left_running_after_exec_still_reads(lab, tmp_path):
    """exec returns when its program does; what that left behind keeps being answered."""
    out = tmp_path / "read"
    script = f"(sleep 0.5; dd if=/etc/services bs=320 count=1 status=none > {out}) &"
    started = time.monotonic()
    tool(lab, 1, "sh", "-c", script)
    assert time.monotonic() - started < 5  # exec did not wait for the background job
    wait_for(lambda: out.exists() and out.stat().st_size == 320, timeout=10,
             what="the background read")  # fmt: skip


def test_ibnetdiscover_finds_the_switch_and_every_host(lab):
    """SMPs are not partitioned: h1 discovers h3 too, through the switch's ports."""
    out = tool(lab, 1, "ibnetdiscover")
    assert re.search(r'^Switch\t36 "S-0002c90300000001"\t\t# "ipoibfs switch" base port 0 '
                     r"lid 1 lmc 0$", out, re.M), out  # fmt: skip
    for i in (1, 2, 3):
        node = GUID.format(i)[2:-2] + "00"
        assert re.search(rf'^\[{lid(lab, i) - 1}\]\t"H-{node}"\[1\]\({int(GUID.format(i), 16):x}\)'
                         rf' \t\t# "{lab.name(i)} ipoibfs0" lid {lid(lab, i)} 4xEDR$', out,
                         re.M), out  # fmt: skip
        assert f'Ca\t1 "H-{node}"\t\t# "{lab.name(i)} ipoibfs0"' in out
    hosts = tool(lab, 2, "ibhosts")
    assert sorted(re.findall(r'"(\S+) ipoibfs0"', hosts)) == [lab.name(i) for i in (1, 2, 3)]
    switches = tool(lab, 2, "ibswitches")
    assert switches == ('Switch\t: 0x0002c90300000001 ports 36 "ipoibfs switch" base port 0 '
                        "lid 1 lmc 0\n")  # fmt: skip


def test_iblinkinfo_ibtracert_and_ibroute_agree_with_the_lids(lab):
    links = tool(lab, 1, "iblinkinfo")
    for i in (1, 2, 3):
        port = lid(lab, i) - 1
        assert re.search(rf"^\s+1\s+{port}\[  \] ==\( 4X\s+25.78125 Gbps Active/  LinkUp\)==>"
                         rf"\s+{lid(lab, i)}\s+1\[  \] \"{lab.name(i)} ipoibfs0\"", links,
                         re.M), links  # fmt: skip
    assert "1    4[  ] ==(                Down/ Polling)==>" in links  # nothing cabled
    trace = tool(lab, 1, "ibtracert", str(lid(lab, 1)), str(lid(lab, 3)))
    assert '[1] -> switch port {0x0002c90300000001}[1] lid 1-1 "ipoibfs switch"' in trace
    assert f"[{lid(lab, 3) - 1}] -> ca port" in trace and f"lid {lid(lab, 3)}-" in trace
    route = tool(lab, 1, "ibroute", "1")
    for i in (1, 2, 3):
        assert re.search(rf"^0x{lid(lab, i):04x} {lid(lab, i) - 1:03d} : \(Channel Adapter", route,
                         re.M), route  # fmt: skip


def test_multicast_groups_are_those_of_the_askers_partitions(lab):
    groups = tool(lab, 1, "saquery", "-g")
    mgids = dumped(groups, "MGID")
    assert "ff12:401b:ffff::ffff:ffff" in mgids  # the default partition's broadcast group
    assert not any(m.startswith("ff12:401b:8003:") for m in mgids)  # green's: not h1's
    assert set(dumped(groups, "pkey")) == {"0xFFFF"}
    green = dumped(tool(lab, 3, "saquery", "-g"), "MGID")
    assert "ff12:401b:8003::ffff:ffff" in green and "ff12:401b:ffff::ffff:ffff" not in green
    # untrusted (SM_Key 0): no member's GID, as OpenSM answers
    members = tool(lab, 1, "saquery", "-m")
    assert set(dumped(members, "PortGid")) == {"::"}


@pytest.mark.skipif(not os.path.exists("/usr/sbin/opensm"), reason="opensm is not installed")
def test_a_real_opensm_on_a_host_sweeps_the_fabric_and_stands_by(lab, tmp_path):
    """Debian's OpenSM under exec on h1: it discovers the fabric through h1's umad files,
    finds the fabric's SM master (the same SM_Key, a lower GUID) and goes STANDBY, as it
    would next to a running master on a real fabric."""
    log = tmp_path / "opensm.log"
    cmd = [IPOIBFS, "exec", lab.name(1), "--", "env", f"OSM_CACHE_DIR={tmp_path}", "opensm",
           "-f", str(log), "-s", "0"]  # fmt: skip
    opensm = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: log.exists() and "Entering STANDBY state" in log.read_text(),
                 timeout=20, what="OpenSM going STANDBY")  # fmt: skip
        assert "Entering MASTER state" not in log.read_text()
    finally:
        opensm.terminate()
        opensm.wait(timeout=10)
    assert tool(lab, 2, "sminfo").startswith("sminfo: sm lid 1 sm guid 0x2c90300000001,")


def test_the_other_records_show_the_links_tables_and_switch(lab):
    h1, h2, h3 = (lid(lab, i) for i in (1, 2, 3))
    links = tool(lab, 1, "saquery", "LR")
    pairs = set(zip(dumped(links, "FromLID"), dumped(links, "ToLID"), strict=True))
    assert pairs == {(str(h), "1") for h in (h1, h2)} | {("1", str(h)) for h in (h1, h2)}
    assert dumped(tool(lab, 1, "saquery", "SWIR"), "LID") == ["1"]
    lft = tool(lab, 1, "saquery", "LFTR")
    assert re.search(rf"^\t\t{h3}\t{h3 - 1}$", lft, re.M), lft  # every host's LID routed
    tables = tool(lab, 1, "saquery", "PKTR")
    assert dumped(tables, "LID") == [str(h1), str(h2)]  # not h3's: no shared partition
    ports = tool(lab, 1, "saquery", "PIR")
    assert dumped(ports, "EndPortLid")[:2] == [str(h1), str(h2)]
    assert dumped(ports, "EndPortLid").count("1") == 37  # the switch's ports 0-36
    assert tool(lab, 1, "saquery", "SR") == ""  # no service registered
    assert dumped(tool(lab, 1, "saquery", "-c"), "Class version") == ["2"]


def test_the_switchs_pkeys_and_sl2vl_tables(lab):
    """A port facing a host holds that host's P_Keys (OpenSM's partition enforcement), port
    0 the default; every SL maps to VL0 on the switch and the CAs."""
    h3_pkey = read(lab.host(3).hca("ports", "1", "pkeys", "0")).strip()
    facing = tool(lab, 1, "smpquery", "pkeys", "1", str(lid(lab, 3) - 1))
    assert facing.startswith(f"   0: {h3_pkey} 0x0000"), facing
    assert "8 pkeys capacity for this port" in facing
    assert tool(lab, 1, "smpquery", "pkeys", "1").startswith("   0: 0xffff 0x0000")
    for target in ("1", str(lid(lab, 1))):
        table = tool(lab, 1, "smpquery", "sl2vl", target)
        rows = re.findall(r"^ports: in +\d+, out +\d+: (.*)$", table, re.M)
        assert rows and set(rows) == {"|" + " 0|" * 16}, table
    assert len(re.findall("^ports:", tool(lab, 1, "smpquery", "sl2vl", "1"), re.M)) == 37


def test_the_switch_sees_a_host_link_go_down_and_come_back(lab):
    port = lid(lab, 3) - 1

    def state() -> str:
        links = tool(lab, 1, "iblinkinfo", "--switch", "0x0002c90300000001")
        found = re.search(rf"^\s+1\s+{port}\[  \] ==\(.*?(\w+)/\s*(\w+)\)==>", links, re.M)
        assert found, links
        return f"{found[1]}/{found[2]}"

    assert state() == "Active/LinkUp"
    assert lab.ipoibfs("port", "h3", "down").returncode == 0
    assert state() == "Down/Polling"
    assert lab.ipoibfs("port", "h3", "up").returncode == 0
    lab.host(3).wait_carrier()
    assert state() == "Active/LinkUp"


def test_ibportstate_disables_enables_and_resets_a_switch_port(lab):
    """The SMA's Set of a switch port's PortInfo: the host cabled there loses its link while
    the port is disabled, and a reset takes it down once and back."""
    port = str(lid(lab, 3) - 1)
    carrier = lab.host(3).attr("ib0", "carrier")
    assert carrier == "1\n"
    out = tool(lab, 1, "ibportstate", "1", port, "disable")
    after = out.split("After PortInfo set:", 1)[1]
    assert re.search(r"^LinkState:\.+Down$", after, re.M) and re.search(
        r"^PhysLinkState:\.+Disabled$", after, re.M
    ), out
    wait_for(lambda: lab.host(3).attr("ib0", "carrier") == "0\n", what="h3 losing carrier")
    assert "Physical state: Polling" in tool(lab, 3, "ibstat")
    links = tool(lab, 1, "iblinkinfo", "--switch", "0x0002c90300000001")
    assert re.search(rf"^\s+1\s+{port}\[  \] ==\(\s+Down/Disabled\)==>", links, re.M), links
    assert not lab.ping(1, "198.18.0.3", count=1)
    tool(lab, 1, "ibportstate", "1", port, "enable")
    lab.host(3).wait_carrier()

    def downed() -> int:
        out = tool(lab, 3, "perfquery")  # its own port (h1 shares no partition with it)
        return int(re.search(r"^LinkDownedCounter:\.+(\d+)$", out, re.M)[1])

    before = downed()
    tool(lab, 1, "ibportstate", "1", port, "reset")
    wait_for(lambda: downed() == before + 1, what="the reset's link down")
    lab.host(3).wait_carrier()
    assert "State: Active" in tool(lab, 3, "ibstat")


def test_a_switch_ports_counters_are_its_hosts_turned_round(lab):
    """perfquery of the switch port facing h2: what h2 sent, that port received, and the
    other way round; a port with nothing cabled counts nothing; ibqueryerrors walks every
    port of the fabric."""

    def counters(*args: str) -> dict[str, int]:
        out = tool(lab, 1, "perfquery", "-x", *args)
        return {k: int(v) for k, v in re.findall(r"^(\w+):\.+(\d+)$", out, re.M)}

    assert lab.ping(1, "198.18.0.2", count=3)
    port = str(lid(lab, 2) - 1)
    host, switch = counters(str(lid(lab, 2)), "1"), counters("1", port)
    host_after = counters(str(lid(lab, 2)), "1")
    assert switch["PortSelect"] == int(port)
    for mine, theirs in (("PortRcvData", "PortXmitData"), ("PortXmitData", "PortRcvData"),
                         ("PortRcvPkts", "PortXmitPkts")):  # fmt: skip
        assert host[theirs] <= switch[mine] <= host_after[theirs], (mine, host, switch)
    assert host[theirs] > 0
    empty = counters("1", "20")
    assert empty["PortXmitData"] == empty["PortRcvData"] == 0
    reset = run(IPOIBFS, "exec", lab.name(1), "--", "perfquery", "-R", "1", port, check=False)
    assert reset.returncode != 0  # the host's counters: only the host resets them
    # every node and port is walked; h3 shares no partition with h1, so its PMA (and the
    # switch port's counters, read from it) do not answer h1, as h3's would not on a fabric
    walk = run(IPOIBFS, "exec", lab.name(1), "--", "ibqueryerrors", check=False)
    assert "## Summary: 4 nodes checked" in walk.stdout, walk.stdout + walk.stderr
    assert "##          39 ports checked" in walk.stdout, walk.stdout
    assert f"Lid {lid(lab, 3)} port 1" in walk.stderr and f"Lid 1 port {port}" not in walk.stderr


def test_ibping_of_a_stopped_host_times_out(lab):
    """Last in the module: it kills h2."""
    h2 = str(lid(lab, 2))
    cmd = [IPOIBFS, "exec", lab.name(2), "--", "ibping", "-S"]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def ibping() -> subprocess.CompletedProcess:
        return run(IPOIBFS, "exec", lab.name(1), "--", "ibping", "-c", "1", "-t", "300", h2,
                   check=False)  # fmt: skip

    try:
        wait_for(lambda: " 0% packet loss" in ibping().stdout, timeout=10, what="ibping -S")
        assert lab.ipoibfs("kill", "h2").returncode == 0
        result = ibping()
        assert "1 packets transmitted, 0 received, 100% packet loss" in result.stdout
        assert f"_do_madrpc failed; dport (Lid {h2})" in result.stderr
    finally:
        server.kill()
        server.wait()
