"""`arping` under `ipoibfs exec` on lab hosts: iputils' output and exit codes, real RFC 4391
ARP on the fabric, and what it does to the peers' neighbour tables."""

from __future__ import annotations

import re

from .conftest import write
from .test_exec import ex

HW = r"80:00:00:[0-9A-F]{2}:FE:80(?::[0-9A-F]{2}){14}"


def neigh_line(lab, i: int, dst: str, dev: str = "ib0") -> str:
    """Host i's `ip neigh` line for dst (through the front end)."""
    out = ex(lab.name(i), "ip", "neigh", "show", "dev", dev).stdout
    return next((line for line in out.splitlines() if line.startswith(f"{dst} ")), "")


def lladdr(lab, i: int, dev: str = "ib0") -> str:
    return lab.host(i).attr(dev, "address").strip()


def test_probing_a_peer_prints_its_20_byte_address(lab):
    lab.up(2)
    result = ex(lab.name(1), "arping", "-c", "2", "-I", "ib0", "198.18.0.2")
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout + result.stderr
    assert lines[0] == "ARPING 198.18.0.2 from 198.18.0.1 ib0"
    peer = lladdr(lab, 2).upper()
    for line in lines[1:3]:
        assert re.fullmatch(rf"Unicast reply from 198\.18\.0\.2 \[{HW}\]  \d+\.\d{{3}}ms", line)
        assert f"[{peer}]" in line
    assert lines[3:] == ["Sent 2 probes (1 broadcast(s))", "Received 2 response(s)"]


def test_the_device_is_found_by_route_and_quiet_mode_prints_nothing(lab):
    lab.up(2)
    result = ex(lab.name(1), "arping", "-q", "-c", "1", "198.18.0.2")
    assert (result.returncode, result.stdout) == (0, "")
    result = ex(lab.name(1), "arping", "-f", "-w", "3", "198.18.0.2")
    assert result.returncode == 0 and "Received 1 response(s)" in result.stdout
    sourced = ex(lab.name(1), "arping", "-c", "1", "-s", "198.18.0.1", "198.18.0.2")
    assert sourced.returncode == 0 and sourced.stdout.startswith(
        "ARPING 198.18.0.2 from 198.18.0.1 ib0\n"
    )
    foreign = ex(lab.name(1), "arping", "-c", "1", "-s", "198.18.0.99", "198.18.0.2")
    assert (foreign.returncode, foreign.stderr) == (
        2,
        "arping: bind: Cannot assign requested address\n",
    )


def test_duplicate_address_detection_exit_codes(lab):
    lab.up(2)
    free = ex(lab.name(1), "arping", "-D", "-c", "2", "-I", "ib0", "198.18.0.77")
    assert free.returncode == 0, free.stdout + free.stderr
    assert free.stdout.splitlines() == [
        "ARPING 198.18.0.77 from 0.0.0.0 ib0", "Sent 2 probes (2 broadcast(s))",
        "Received 0 response(s)",
    ]  # fmt: skip
    taken = ex(lab.name(1), "arping", "-D", "-c", "2", "-I", "ib0", "198.18.0.2")
    assert taken.returncode == 1, taken.stdout + taken.stderr
    lines = taken.stdout.splitlines()
    assert re.fullmatch(rf"Unicast reply from 198\.18\.0\.2 \[{HW}\]  \d+\.\d{{3}}ms", lines[1])
    assert lines[2:] == ["Sent 1 probes (1 broadcast(s))", "Received 1 response(s)"]


def test_unsolicited_and_answer_modes_update_the_peers_entry(lab):
    """h1 announces its address from a second interface (-U), then from ib0 again (-A):
    h2's entry follows each, as arp_process does with arp_accept=0. (h1's ib0 hears the
    child's announcement of its own address and answers it, as a kernel's would: -b keeps
    arping broadcasting.)"""
    lab.up(2)
    h1 = lab.host(1)
    assert lab.ping(2, "198.18.0.1")
    assert lladdr(lab, 1) in neigh_line(lab, 2, "198.18.0.1")
    assert write(h1.net() / "create_child", "0x7fff") == 0  # same partition as ib0
    h1.up("ib0.7fff")
    h1.wait_carrier("ib0.7fff")
    child = lladdr(lab, 1, "ib0.7fff")
    result = ex(lab.name(1), "arping", "-U", "-b", "-c", "2", "-I", "ib0.7fff", "198.18.0.1")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "ARPING 198.18.0.1 from 198.18.0.1 ib0.7fff"
    assert lines[-2] == "Sent 2 probes (2 broadcast(s))", lines
    line = neigh_line(lab, 2, "198.18.0.1")
    assert child in line and line.endswith(" STALE "), line
    result = ex(lab.name(1), "arping", "-A", "-c", "2", "-I", "ib0", "198.18.0.1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[1:] == ["Sent 2 probes (2 broadcast(s))",
                                              "Received 0 response(s)"]  # fmt: skip
    assert lladdr(lab, 1) in neigh_line(lab, 2, "198.18.0.1")


def test_mistakes_and_other_interfaces_are_the_real_arpings(lab):
    lab.up(1)
    usage = ex(lab.name(1), "arping", "-c", "0", "198.18.0.2")  # strtol_or_err: EXIT_FAILURE
    assert usage.returncode == 1 and "invalid argument: '0': out of range" in usage.stderr
    assert ex(lab.name(1), "arping").returncode == 2  # usage()
    lo = ex(lab.name(1), "arping", "-c", "1", "-I", "lo", "127.0.0.1")
    assert lo.returncode == 2 and 'Interface "lo" is not ARPable' in lo.stdout
    down = ex(lab.name(1), "sh", "-c", "ip link set ib0 down; arping -c 1 -I ib0 198.18.0.2")
    assert (down.returncode, down.stdout) == (2, 'Interface "ib0" is down\n')
