"""Faults on a running lab: a host port's link going down, coming back, flapping."""

from __future__ import annotations

import json
import time

from .conftest import IPOIBFS, no_reply, read, run, wait_for, write


def _mcg_groups(h) -> list[str]:
    text = read(h.debugfs("ib0_mcg"))
    assert isinstance(text, str)
    return [line.split()[1] for line in text.splitlines() if line.startswith("GID:")]


def test_a_port_down_drops_carrier_and_joins_and_up_restores_them(lab):
    lab.up(2)
    h2 = lab.host(2)
    write(h2.param("debug_level"), "1")
    assert lab.ping(1, "198.18.0.2")
    assert _mcg_groups(h2)

    down = lab.ipoibfs("port", "h2", "down", check=False)
    assert down.returncode == 0, down.stderr
    assert down.stdout == f"lab port: {lab.name(2)}:1 down\n"
    assert h2.attr("ib0", "carrier") == "0\n"
    assert read(h2.hca("ports", "1", "state")) == "1: DOWN\n"
    assert read(h2.hca("ports", "1", "phys_state")) == "2: Polling\n"
    assert _mcg_groups(h2) == []
    lid = read(h2.hca("ports", "1", "lid"))
    no_reply(lab, 1, "198.18.0.2")
    assert "ib0: port state is not ACTIVE (state = 1) suspending join task" in h2.log

    started = time.monotonic()
    up = lab.ipoibfs("port", f"{lab.name(2)}:1", "up", check=False)
    assert up.returncode == 0, up.stderr
    h2.wait_carrier()
    assert read(h2.hca("ports", "1", "state")) == "4: ACTIVE\n"
    assert read(h2.hca("ports", "1", "phys_state")) == "5: LinkUp\n"
    assert read(h2.hca("ports", "1", "lid")) == lid  # the SM kept its LID
    wait_for(lambda: lab.ping(1, "198.18.0.2", count=1), timeout=5, what="ping after up")
    assert time.monotonic() - started < 5
    assert "ff12:401b:ffff:0:0:0:ffff:ffff" in _mcg_groups(h2)
    ports = json.loads(read(h2.mp / ".ipoibfs" / "ports"))  # type: ignore[arg-type]
    assert ports == [{"port": 1, "lid": int(str(lid), 16), "state": 4, "phys_state": 5}]


def test_a_flap_ends_up_and_bad_targets_change_nothing(lab):
    lab.up(2)
    flap = lab.ipoibfs("port", "h2", "flap", "--period", "0.4", "--count", "2", check=False)
    assert flap.returncode == 0, flap.stderr
    assert "flapped 2 time(s)" in flap.stdout
    lab.host(2).wait_carrier()
    wait_for(lambda: lab.ping(1, "198.18.0.2", count=1), timeout=5, what="ping after flap")
    for args, message in (
        (("h9", "down"), "no lab host 'h9'"),
        (("h2:3", "down"), f"{lab.name(2)} has no port 3"),
        (("h2:x", "down"), "the port is a number from 1"),
        (("h2", "flap", "--count", "0"), "flap needs --period above 0 and --count of 1 or more"),
    ):
        result = lab.ipoibfs("port", *args, check=False)
        assert result.returncode == 1, result
        assert message in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr
    assert lab.host(2).attr("ib0", "carrier") == "1\n"
    bad = run(IPOIBFS, "lab", "port", "h2", "sideways", "--prefix", lab.prefix, check=False)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
