"""The scripts in examples/ run unchanged against a mount (SYSFS points at it)."""

from __future__ import annotations

from .conftest import REPO, wait_for

EXAMPLES = REPO / "examples"


def run_example(host, name: str, *args: str):
    return host.netns.exec("env", f"SYSFS={host.mp}", "sh", str(EXAMPLES / name), *args,
                           check=False)  # fmt: skip


def test_create_pkey_child_in_connected_mode(host):
    result = run_example(host, "create-pkey-child.sh", "ib0", "0x8001", "connected")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ib0.8001: pkey 0x8001 mode connected mtu 65520\n"
    link = host.netns.links()["ib0.8001"]
    assert link["mtu"] == 65520 and "UP" in link["flags"]
    # Run again: the child exists, so the script only re-applies the mode.
    result = run_example(host, "create-pkey-child.sh", "ib0", "0x8001", "datagram")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ib0.8001: pkey 0x8001 mode datagram mtu 4092\n"


def test_create_pkey_child_reports_the_driver_error(host):
    result = run_example(host, "create-pkey-child.sh", "ib0", "0x8000")
    assert result.returncode != 0
    assert result.stderr  # dash reports any write error as "I/O error"
    assert host.interfaces() == ["ib0"]
    assert set(host.netns.links()) == {"lo", "ib0"}


def test_report_lists_every_ipoib_interface(host):
    assert run_example(host, "create-pkey-child.sh", "ib0", "0x7fff").returncode == 0
    host.up()
    host.wait_carrier()
    host.wait_carrier("ib0.7fff")
    result = run_example(host, "ipoib-report.sh")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["IFACE", "MODE", "MTU", "PKEY", "STATE", "PARENT"]
    assert lines[1].split() == ["ib0", "datagram", "2044", "0xffff", "up", "-"]
    assert lines[2].split() == ["ib0.7fff", "datagram", "2044", "0xffff", "up", "ib0"]
    assert len(lines) == 3


def test_mcast_groups_summary(host):
    result = run_example(host, "mcast-groups.sh", "ib0")
    assert result.stdout == "no groups (interface down?)\n"
    host.up()
    host.wait_carrier()
    wait_for(lambda: "ff12:601b:ffff:0:0:0:0:1" in run_example(host, "mcast-groups.sh").stdout,
             what="IPv6 all-nodes group")  # fmt: skip
    lines = run_example(host, "mcast-groups.sh").stdout.splitlines()
    assert "ff12:401b:ffff:0:0:0:ffff:ffff           joined" in lines
    for line in lines:
        sent_only = line.split()[0] in ("ff12:601b:ffff:0:0:0:0:2", "ff12:601b:ffff:0:0:0:0:16")
        assert line.endswith("joined (send-only)" if sent_only else "joined"), line
