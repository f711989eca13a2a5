"""`ipoibfs capture`: a real lab, real pings, the files read back by real tshark and tcpdump.

One lab serves the whole module (starting one costs seconds); the tests that change it
(connected mode) come last.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio

from ipoibfs.capture import socket_path
from ipoibfs.capture_server import CaptureServer
from ipoibfs.fabric.tap import SENT, Tap

from .conftest import IPOIBFS, LabHandle, lab_handle, read, run, wait_for, write

MGID_BROADCAST = "ff12:401b:ffff::ffff:ffff"
UD_SEND_ONLY, RC_SEND_ONLY = "100", "4"
CM_REQ, CM_REP = "0x0010", "0x0013"


@pytest.fixture(scope="module")
def lab() -> Iterator[LabHandle]:
    with lab_handle() as handle:
        handle.up(2)
        yield handle


def lid(lab: LabHandle, i: int) -> int:
    text = read(lab.host(i).hca("ports", "1", "lid"))
    assert isinstance(text, str)
    return int(text, 16)


def qpn(lab: LabHandle, i: int) -> int:
    address = lab.host(i).attr("ib0", "address")
    assert isinstance(address, str)
    return int(address.replace(":", "")[2:8], 16)


class Capture:
    """`ipoibfs capture ARGS` running until stop(); started once it listens."""

    def __init__(self, lab: LabHandle, *args: str, stdout: int | None = None) -> None:
        cmd = [IPOIBFS, "capture", *args, "--prefix", lab.prefix]
        self.proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE, text=False)
        assert self.proc.stderr is not None
        first = self.proc.stderr.readline().decode()
        assert "listening on" in first, first + self.proc.stderr.read().decode()

    def stop(self, sig: int = signal.SIGINT) -> str:
        """Signal it, then its stderr after the first line; it must exit 0."""
        self.proc.send_signal(sig)
        return self.wait()

    def wait(self, timeout: float = 10) -> str:
        assert self.proc.stderr is not None
        err = self.proc.stderr.read().decode()
        assert self.proc.wait(timeout) == 0, err
        return err


def fields(path: Path, *names: str, where: str = "") -> list[list[str]]:
    cmd = ["tshark", "-r", str(path), "-T", "fields"]
    cmd += [a for n in names for a in ("-e", n)]
    result = run(*cmd, *(["-Y", where] if where else []))
    return [line.split("\t") for line in result.stdout.splitlines()]


def written(path: Path, count: int, where: str = "icmp") -> None:
    """Wait until the capture wrote `count` packets matching `where` (it writes what its
    socket holds when stopped, but the host may still be streaming the last ones)."""
    wait_for(lambda: len(fields(path, "frame.number", where=where)) >= count,
             what=f"{count} packets in {path.name}")  # fmt: skip


def ping(lab: LabHandle, src: int, dst: int, count: int = 2) -> None:
    assert lab.ping(src, f"198.18.0.{dst}", count=count)


def test_ping_decodes_as_infiniband_then_ipoib_ipv4_icmp(lab: LabHandle, tmp_path: Path) -> None:
    out = tmp_path / "ping.pcap"
    cap = Capture(lab, lab.name(1), "-w", str(out))
    lab.host(1).netns.ip("neigh", "flush", "dev", "ib0")
    ping(lab, 1, 2)
    written(out, 4)
    err = cap.stop()
    assert "packets captured" in err and "0 packets dropped by kernel" in err, err

    names = ("infiniband.lrh.slid", "infiniband.lrh.dlid", "infiniband.bth.opcode",
             "infiniband.bth.p_key", "infiniband.bth.destqp", "infiniband.deth.q_key",
             "infiniband.deth.srcqp", "icmp.type")  # fmt: skip
    icmp = fields(out, *names, where="icmp")
    h1, h2, q1, q2 = lid(lab, 1), lid(lab, 2), qpn(lab, 1), qpn(lab, 2)
    request = [str(h1), str(h2), UD_SEND_ONLY, "65535", f"0x{q2:06x}", "0x0000000000000b1b",
               f"0x{q1:08x}", "8"]  # fmt: skip
    reply = [str(h2), str(h1), UD_SEND_ONLY, "65535", f"0x{q1:06x}", "0x0000000000000b1b",
             f"0x{q2:08x}", "0"]  # fmt: skip
    assert icmp == [request, reply, request, reply], icmp

    # the ARP request is broadcast: a GRH with the broadcast group's MGID; the reply unicast
    arp = fields(out, "arp.opcode", "infiniband.grh.dgid", "infiniband.lrh.dlid", where="arp")
    assert ["1", MGID_BROADCAST, str(0xC000)] in arp, arp
    assert ["2", "", str(h1)] in arp, arp

    # the path query behind the first unicast, as SA MADs between the port and the SM
    sa = fields(out, "infiniband.lrh.slid", "infiniband.lrh.dlid", "infiniband.bth.destqp",
                "infiniband.mad.method", "infiniband.mad.attributeid",
                where="infiniband.mad.mgmtclass == 3")  # fmt: skip
    if sa:  # the path is cached after the module's first query
        assert sa[0] == [str(h1), "1", "0x000001", "0x01", "0x0035"], sa
        assert sa[1] == ["1", str(h1), "0x000001", "0x81", "0x0035"], sa


def test_ipoib_linktype_decodes_with_tcpdump(lab: LabHandle, tmp_path: Path) -> None:
    out = tmp_path / "ipoib.pcap"
    cap = Capture(lab, lab.name(1), "--ipoib", "-w", str(out))
    ping(lab, 1, 2)
    cap.stop()
    text = run("tcpdump", "-n", "-r", str(out)).stdout
    assert "198.18.0.1 > 198.18.0.2: ICMP echo request" in text, text
    assert "198.18.0.2 > 198.18.0.1: ICMP echo reply" in text, text


def test_count_stops_after_count_packets(lab: LabHandle, tmp_path: Path) -> None:
    out = tmp_path / "five.pcap"
    cap = Capture(lab, lab.name(1), "-c", "5", "-w", str(out))
    pinger = lab.host(1).netns
    cmd = ["ping", "-c", "10", "-i", "0.1", "-W", "2", "198.18.0.2"]
    pinging = subprocess.Popen(["ip", "netns", "exec", pinger.name, *cmd],
                               stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        err = cap.wait()  # it ends by itself
    finally:
        pinging.kill()
        pinging.wait()
    assert err.startswith("5 packets captured\n"), err
    assert len(fields(out, "frame.number")) == 5


def test_stdout_streams_into_tshark(lab: LabHandle) -> None:
    cap = Capture(lab, lab.name(2), "-w", "-", stdout=subprocess.PIPE)
    cmd = ["tshark", "-l", "-r", "-", "-Y", "icmp"]
    tshark = subprocess.Popen(cmd, stdin=cap.proc.stdout, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    assert cap.proc.stdout is not None and tshark.stdout is not None
    cap.proc.stdout.close()  # tshark holds the pipe now
    ping(lab, 1, 2, count=1)
    # live: tshark prints the ping before the capture stops
    line = tshark.stdout.readline()
    assert line.split()[2:6] == ["198.18.0.1", "→", "198.18.0.2", "ICMP"], line
    assert "Echo (ping) request" in line, line
    err = cap.stop()
    assert "packets captured" in err
    tshark.communicate(timeout=10)


def test_filters_on_pkey_lid_and_interface(lab: LabHandle, tmp_path: Path) -> None:
    assert write(lab.host(1).net() / "create_child", "0x8001\n") == 0
    wait_for(lambda: "ib0.8001" in lab.host(1).interfaces(), what="ib0.8001")
    other, limited, by_lid, ib0, child = (tmp_path / f"{n}.pcap" for n in (
        "other", "limited", "lid", "ib0", "child"))  # fmt: skip
    caps = [Capture(lab, lab.name(1), "--pkey", "0x8001", "-w", str(other)),
            Capture(lab, lab.name(1), "--pkey", "0x7fff", "-w", str(limited)),
            Capture(lab, lab.name(1), "--lid", str(lid(lab, 2)), "-w", str(by_lid)),
            Capture(lab, "h1", "-i", "ib0", "-w", str(ib0)),
            Capture(lab, "h1", "-i", "ib0.8001", "-w", str(child))]  # fmt: skip
    ping(lab, 1, 2)
    written(limited, 4)
    written(ib0, 4)
    for cap in caps:
        cap.stop()
    assert fields(other, "frame.number") == []
    assert len(fields(ib0, "frame.number", where="icmp")) == 4
    assert fields(child, "frame.number", where="icmp") == []
    # 0x7fff is the default partition's limited membership: the same partition
    assert len(fields(limited, "frame.number", where="icmp")) == 4
    lids = fields(by_lid, "infiniband.lrh.slid", "infiniband.lrh.dlid")
    assert lids and all(str(lid(lab, 2)) in row for row in lids), lids


def test_fabric_capture_has_each_message_once_in_time_order(lab: LabHandle, tmp_path: Path,
                                                            ) -> None:  # fmt: skip
    out = tmp_path / "fabric.pcap"
    cap = Capture(lab, "--fabric", "-w", str(out))
    ping(lab, 2, 1)
    written(out, 4)
    err = cap.stop(signal.SIGTERM)
    assert "packets captured" in err
    rows = fields(out, "frame.time_epoch", "ip.src", "icmp.type", where="icmp")
    assert [r[1:] for r in rows] == [["198.18.0.2", "8"], ["198.18.0.1", "0"]] * 2, rows
    times = [float(r[0]) for r in fields(out, "frame.time_epoch")]
    assert times == sorted(times)


def test_leave_and_join_are_sa_mads(lab: LabHandle, tmp_path: Path) -> None:
    out = tmp_path / "sa.pcap"
    cap = Capture(lab, lab.name(2), "-w", str(out))
    h2 = lab.host(2)
    h2.netns.ip("link", "set", "ib0", "down")
    h2.up()
    h2.wait_carrier()
    mcmember = "infiniband.mad.attributeid == 0x0038"
    written(out, 4, where=mcmember)
    cap.stop()
    rows = fields(out, "infiniband.lrh.slid", "infiniband.lrh.dlid", "infiniband.mad.method",
                  "infiniband.mcmemberrecord.mgid", where=mcmember)  # fmt: skip
    me = str(lid(lab, 2))
    assert [me, "1", "0x15", MGID_BROADCAST] in rows, rows  # SubnAdmDelete
    assert ["1", me, "0x95", MGID_BROADCAST] in rows, rows  # its DeleteResp
    assert [me, "1", "0x02", MGID_BROADCAST] in rows, rows  # SubnAdmSet: the join
    assert ["1", me, "0x81", MGID_BROADCAST] in rows, rows  # GetResp


def test_bad_input_is_one_line_and_exit_1(lab: LabHandle) -> None:
    cases = [
        (["capture", "h9", "--prefix", lab.prefix, "-w", "/dev/null"], "no host h9"),
        (["capture", "h1", "--prefix", "nosuchlab", "-w", "/dev/null"], "no lab"),
        (["capture", "nosuchhost", "-w", "/dev/null"], "neither a lab host"),
        (["capture", "h1", "--prefix", lab.prefix, "--lid", "0x10000", "-w", "/dev/null"],
         "LID 0x10000 is out of range"),
        (["capture", "h1", "--prefix", lab.prefix, "--qpn", "abc", "-w", "/dev/null"],
         "QPN 'abc' is not a number"),
        (["capture", "h1", "--prefix", lab.prefix, "-i", "ib7", "-w", "/dev/null"],
         "has no interface ib7"),
    ]  # fmt: skip
    for argv, message in cases:
        result = run(IPOIBFS, *argv, check=False)
        assert result.returncode == 1, (argv, result.stderr)
        assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    usage = run(IPOIBFS, "capture", "h1", check=False)  # no -w
    assert usage.returncode == 2 and "usage:" in usage.stderr


def test_connected_mode_shows_rc_sends_and_cm_mads(lab: LabHandle, tmp_path: Path) -> None:
    for i in (1, 2):
        assert write(lab.host(i).net() / "mode", "connected\n") == 0
        wait_for(lambda i=i: lab.host(i).attr("ib0", "mode") == "connected\n", what="mode")
    out, host = tmp_path / "connected.pcap", tmp_path / "h1.pcap"
    cap = Capture(lab, "--fabric", "-w", str(out))
    one = Capture(lab, lab.name(1), "-w", str(host))
    ping(lab, 1, 2)
    written(out, 4)
    written(host, 4)
    cap.stop()
    one.stop()
    h1, h2 = lid(lab, 1), lid(lab, 2)
    rc = fields(out, "infiniband.lrh.slid", "infiniband.bth.opcode", "infiniband.bth.p_key",
                "ip.src", where="icmp")  # fmt: skip
    assert [str(h1), RC_SEND_ONLY, "65535", "198.18.0.1"] in rc, rc
    assert [str(h2), RC_SEND_ONLY, "65535", "198.18.0.2"] in rc, rc
    assert all(row[1] == RC_SEND_ONLY for row in rc), rc
    cm = fields(out, "infiniband.lrh.slid", "infiniband.mad.attributeid",
                where="infiniband.mad.mgmtclass == 7")  # fmt: skip
    assert [str(h1), CM_REQ] in cm and [str(h2), CM_REP] in cm, cm
    # h2 places its replies straight into h1's stack: h1's capture shows them received
    mine = fields(host, "erf.flags.cap", "infiniband.lrh.slid", "infiniband.bth.opcode",
                  "ip.src", where="icmp")  # fmt: skip
    assert ["1", str(h2), RC_SEND_ONLY, "198.18.0.2"] in mine, mine
    assert ["0", str(h1), RC_SEND_ONLY, "198.18.0.1"] in mine, mine


# ---------------------------------------------------------------- the tap is off unless used


def test_a_lossy_link_shows_tcp_retransmissions(lab: LabHandle, tmp_path: Path) -> None:
    """`lab link h1 loss 20%`: the capture of h1 has what it sent, before the loss, so the
    segments TCP sends again decode as sent again."""
    out = tmp_path / "lossy.pcap"
    # sent again: tshark calls a resend that follows the original within the first RTT (long
    # when the SYN itself was lost) out-of-order rather than retransmission
    resent = "(tcp.analysis.retransmission || tcp.analysis.out_of_order) && tcp.len > 0"
    cap = Capture(lab, lab.name(1), "-w", str(out))
    lab.ipoibfs("link", "h1", "loss", "20%")
    try:
        # the loss is random: a run whose losses TCP recovers without a resend of data (a lost
        # SYN, ACK or FIN only) is followed by another, at most three in all
        for _ in range(3):
            server = subprocess.Popen(["ip", "netns", "exec", lab.name(2), "iperf3", "-s", "-1"],
                                      stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)  # fmt: skip
            try:
                wait_for(lambda: "5201" in lab.host(2).netns.exec("ss", "-ltn").stdout,
                         what="iperf3")  # fmt: skip
                tcp = lab.host(1).netns.exec("iperf3", "-c", "198.18.0.2", "-n", "2M",
                                             check=False)  # fmt: skip
                assert tcp.returncode == 0, tcp.stdout + tcp.stderr
            finally:
                server.kill()
                server.wait()
            try:
                written(out, 1, where=resent)
                break
            except AssertionError as e:  # what the capture saw instead, and what it dropped
                failure = e
        else:
            seen = fields(out, "_ws.expert.message", where="tcp.analysis.flags")
            raise AssertionError(f"{failure}: analysis {seen[:8]}, {cap.stop().strip()}")
        cap.stop()
    finally:
        lab.ipoibfs("link", "h1", "clear", check=False)


def test_taps_are_none_until_a_client_attaches_and_after_it_leaves(tmp_path: Path) -> None:
    ports = [SimpleNamespace(num=1, lid=2, gid=bytes(16), port=SimpleNamespace(sm_lid=1),
                             profile=SimpleNamespace(max_mtu=4096), tap=None)]  # fmt: skip
    ctx = SimpleNamespace(ports=ports, interfaces={},
                          device=SimpleNamespace(host="t", node_guid=1))  # fmt: skip
    driver = SimpleNamespace(ctx=ctx, main=SimpleNamespace(cm=SimpleNamespace(
        connections=lambda: [])))  # fmt: skip
    server = CaptureServer(driver, str(tmp_path))
    seen: list[object] = []

    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            assert ports[0].tap is None  # no capture: the data path checks one attribute
            stream = await trio.open_unix_socket(socket_path(str(tmp_path)))
            hello = await stream.receive_some(65536)
            seen.append(hello[:1])
            assert ports[0].tap is server.tap
            # a reader thread's record reaches the client
            thread = threading.Thread(target=server.tap.record, args=(SENT, 1, 3, [b"\0xyz"]))
            thread.start()
            thread.join()
            batch = await stream.receive_some(65536)
            seen.append(batch[:1])
            await stream.aclose()
            with trio.fail_after(5):
                while ports[0].tap is not None:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()

    trio.run(scenario)
    assert seen == [b"H", b"R"]
    with socket.socket(socket.AF_UNIX) as gone, pytest.raises(ConnectionRefusedError):
        gone.connect(socket_path(str(tmp_path)))  # nothing is left behind


def test_a_full_tap_drops_and_counts() -> None:
    woken: list[int] = []
    tap = Tap(lambda: woken.append(1), limit=2)
    for _ in range(3):
        tap.record(SENT, 1, 3, [b"\0", b"xyz"])
    assert tap.dropped == 1 and woken == [1]  # woken once: when the queue stopped being empty
    assert [r[4] for r in tap.drain()] == [b"\0xyz"] * 2
