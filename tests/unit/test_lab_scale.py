"""The lab's pure parts: progress lines, the addressing of decision 31, GUIDs and LIDs."""

from __future__ import annotations

import io

from ipoibfs.fabric.device import node_guid_for
from ipoibfs.fabric.sm import parse_guid2lid
from ipoibfs.fabric.topology import SM_LID
from ipoibfs.lab import (
    Progress,
    _lab_cas,
    _lab_lids,
    addressing,
    host_addresses,
    host_list,
    progress_line,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line() -> None:
    assert progress_line("lab up", "37/256 hosts started", 12.345) == (
        "lab up: 37/256 hosts started, 12.3 s"
    )


def test_without_a_terminal_one_line_per_phase() -> None:
    out, clock = io.StringIO(), Clock()
    p = Progress("lab up", 3, "hosts started", out, clock)
    clock.now += 0.4
    p.phase("fabric started")
    for done in (1, 2, 3):
        clock.now += 1
        p.step(done)
    p.phase(p.count(3))
    p.end()
    assert out.getvalue() == "lab up: fabric started, 0.4 s\nlab up: 3/3 hosts started, 3.4 s\n"


def test_on_a_terminal_one_updating_line_cleared_at_the_end() -> None:
    out, clock = Tty(), Clock()
    p = Progress("lab down", 2, "hosts stopped", out, clock)
    clock.now += 1.25
    p.step(1)
    assert out.getvalue() == "\rlab down: 1/2 hosts stopped, 1.2 s\x1b[K"
    p.step(2)
    p.end()
    assert "\n" not in out.getvalue()
    assert out.getvalue().endswith("\rlab down: 2/2 hosts stopped, 1.2 s\x1b[K\r\x1b[K")


def test_a_failure_leaves_the_terminal_line_and_starts_a_new_one() -> None:
    out = Tty()
    p = Progress("lab up", 2, "hosts started", out, Clock())
    p.step(1)
    p.abandon()
    assert out.getvalue().endswith("\x1b[K\n")


def test_silent_without_a_stream() -> None:
    p = Progress("lab up", 2, "hosts started", None)
    p.phase("fabric started")
    p.step(1)
    p.end()


def test_up_to_250_hosts_keep_their_slash_24() -> None:
    assert host_addresses(5, 12) == ("198.18.0.5/24", "fd18::5/64")
    assert host_addresses(250, 250) == ("198.18.0.250/24", "fd18::250/64")
    assert "198.18.0.N/24" in addressing(250)


def test_larger_labs_number_hosts_in_one_slash_16() -> None:
    assert host_addresses(1, 251) == ("198.18.0.1/16", "fd18::1/64")
    assert host_addresses(255, 300) == ("198.18.0.255/16", "fd18::255/64")
    assert host_addresses(256, 300) == ("198.18.1.0/16", "fd18::256/64")
    assert host_addresses(300, 300) == ("198.18.1.44/16", "fd18::300/64")
    assert host_addresses(1000, 1000) == ("198.18.3.232/16", "fd18::1000/64")
    addresses = {host_addresses(i, 1000)[0] for i in range(1, 1001)}
    assert len(addresses) == 1000
    assert "198.18.0.0/16" in addressing(251)


def test_guids_stay_unique_past_255_hosts() -> None:
    guids = [node_guid_for(f"sc-h{i}") + port for i in range(1, 1001) for port in (1, 2)]
    assert len(set(guids)) == len(guids)
    assert node_guid_for("h256") == node_guid_for("h1") + (255 << 8)


def test_lids_follow_host_order_whatever_order_hosts_join() -> None:
    names = [f"p-h{i}" for i in range(1, 301)]
    lids = parse_guid2lid(_lab_lids(_lab_cas(names, 2, SM_LID, dict.fromkeys(names, "ipoibfs"))))
    assert lids[node_guid_for("p-h1") + 1] == 2
    assert lids[node_guid_for("p-h1") + 2] == 3
    assert lids[node_guid_for("p-h2") + 1] == 4
    assert lids[node_guid_for("p-h300") + 2] == 601
    assert len(set(lids.values())) == 600


def test_long_host_lists_are_shortened() -> None:
    assert host_list(["h1", "h2"]) == "h1, h2"
    assert host_list([f"h{i}" for i in range(1, 257)]) == "h1 … h256"
