"""arping.py without a host: getopt as iputils calls it, recv_pack's filters and lines,
the time arithmetic and the exit codes of iputils 20221126; ip neigh's lines."""

from __future__ import annotations

import pytest

from ipoibfs import arping, frontends

ME = bytes.fromhex("80000048fe800000000000000002c90300000101")
PEER = bytes.fromhex("80000048fe800000000000000002c90300000201")


def probing(*argv: str) -> arping.Arping:
    ctl = arping.parse(list(argv))
    assert ctl is not None
    ctl.gdst, ctl.gsrc, ctl.me, ctl.he = bytes([198, 18, 0, 2]), bytes([198, 18, 0, 1]), ME, ME
    return ctl


def reply(sha: bytes = PEER, spa: str = "198.18.0.2", tpa: str = "198.18.0.1",
          tha: bytes = ME, pkttype: str = "host", op: int = 2,
          at: float = 100.0012345) -> dict:  # fmt: skip
    return {"op": op, "sha": sha.hex(), "spa": spa, "tpa": tpa, "tha": tha.hex(),
            "pkttype": pkttype, "time": at}  # fmt: skip


def test_options_are_parsed_as_getopt_does():
    ctl = arping.parse(["-qDc2", "198.18.0.2", "-I", "ib0", "-w3"])  # permuted, grouped
    assert ctl is not None and (ctl.quiet, ctl.dad, ctl.quit_on_reply) == (True, True, True)
    assert (ctl.count, ctl.timeout, ctl.device, ctl.target) == (2, 3, "ib0", "198.18.0.2")
    ctl = arping.parse(["-A", "-s", "198.18.0.1", "--", "198.18.0.1"])
    assert ctl is not None and ctl.advert and ctl.unsolicited and ctl.source == "198.18.0.1"


@pytest.mark.parametrize("argv", [[], ["a", "b"], ["-c", "0", "x"], ["-c", "1x", "x"],
                                  ["-h"], ["-V"], ["-x", "x"], ["x", "-c"]])  # fmt: skip
def test_what_arping_itself_must_answer(argv):
    assert arping.parse(argv) is None  # usage, version, or strtol_or_err's message


def test_a_reply_is_printed_as_recv_pack_prints_it(capsys):
    ctl = probing("-c", "2", "198.18.0.2")
    ctl.last = 100.0
    assert arping.recv_pack(ctl, reply()) == 1
    hexed = ":".join(f"{b:02X}" for b in PEER)
    assert capsys.readouterr().out == f"Unicast reply from 198.18.0.2 [{hexed}]  1.735ms\n"
    assert ctl.unicasting and ctl.he == PEER  # the next probes are unicast


def test_recv_pack_filters():
    ctl = probing("198.18.0.2")
    assert arping.recv_pack(ctl, reply(spa="198.18.0.3")) == 0  # not the target
    assert arping.recv_pack(ctl, reply(tha=PEER)) == 0  # not to us
    assert arping.recv_pack(ctl, reply(op=3)) == 0
    dad = probing("-D", "198.18.0.2")
    dad.gsrc = bytes(4)
    assert arping.recv_pack(dad, reply(sha=ME)) == 0  # our own probe
    assert arping.recv_pack(dad, reply(tpa="0.0.0.0", pkttype="broadcast")) == arping.FINAL


def test_the_time_uses_arpings_integer_arithmetic():
    # recv_pack's `usecs -= msecs * 1000 - 500`: 1235 us print as 1.735 ms, as arping does.
    assert arping._elapsed(100.0012345, 100.0) == " 1.735ms"
    assert arping._elapsed(100.5, 100.0) == " 500.500ms"


def test_exit_codes_of_iputils_20221126(capsys):
    dad = probing("-D", "198.18.0.77")
    dad.sent = dad.brd_sent = 2
    assert arping.finish(dad) == 0
    dad.received = 1
    assert arping.finish(dad) == 1
    plain = probing("-c", "3", "198.18.0.2")
    plain.sent, plain.received = 3, 2
    assert arping.finish(plain) == 1  # a probe unanswered
    plain.received = 3
    assert arping.finish(plain) == 0
    unsolicited = probing("-U", "198.18.0.1")
    unsolicited.sent = 2
    assert arping.finish(unsolicited) == 0
    out = capsys.readouterr().out
    assert "Sent 2 probes (2 broadcast(s))\nReceived 1 response(s)\n" in out


def test_the_summary_names_requests_and_broadcasts(capsys):
    ctl = probing("198.18.0.2")
    ctl.sent, ctl.brd_sent, ctl.received, ctl.req_recv, ctl.brd_recv = 2, 1, 2, 1, 1
    arping.finish(ctl)
    assert capsys.readouterr().out.splitlines()[1] == (
        "Received 2 response(s) (1 request(s), 1 broadcast(s))"
    )


ENTRY = {"dev": "ib0", "family": 4, "dst": "198.18.0.2", "state": 0x02, "used": 3.7,
         "confirmed": 1.2, "updated": 9.9, "probes": 4,
         "lladdr": "80:00:00:48:fe:80:00:00:00:00:00:00:00:02:c9:03:00:00:02:01"}  # fmt: skip


def test_ip_neigh_lines_are_print_neighs():
    lladdr = ENTRY["lladdr"]
    assert frontends._neigh_text(ENTRY, True, False, False) == (
        f"198.18.0.2 dev ib0 lladdr {lladdr} REACHABLE \n"
    )
    assert frontends._neigh_text(ENTRY, False, True, False) == (
        f"198.18.0.2 lladdr {lladdr}  used 3/1/9probes 4 REACHABLE \n"
    )
    failed = dict(ENTRY, state=0x20, lladdr=None)
    assert frontends._neigh_text(failed, True, False, False) == "198.18.0.2 dev ib0 FAILED \n"
    assert frontends._neigh_json(ENTRY, True, False, False) == {
        "dst": "198.18.0.2", "dev": "ib0", "lladdr": lladdr, "state": ["REACHABLE"],
    }  # fmt: skip
    assert frontends._neigh_text(ENTRY, True, False, True) == (
        f"{'198.18.0.2':<39} {'ib0':<16} {lladdr}\n"
    )


def test_nud_states_and_prefixes_parse_as_iproute2_does():
    assert frontends._nud_state("reach") == 0x02 and frontends._nud_state("stale") == 0x04
    assert frontends._nud_state("st") is None and frontends._nud_state("0x10") == 0x10
    prefix = frontends._prefix("198.18.0.0/24", 0)
    assert frontends._in_prefix("198.18.0.2", prefix)
    assert not frontends._in_prefix("198.18.1.2", prefix)
    assert not frontends._in_prefix("fd18::2", prefix)
    assert frontends._prefix("fd18::/64", 4) is None
