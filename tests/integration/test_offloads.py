"""Stateless offloads on lab hosts: `ethtool -k`/`-K` on IPoIB interfaces under `exec` and
through `ipoibfs ethtool`, against a real TUN's `ethtool` in the same namespace; the mode's
effect on them; a `--no-offload` HCA; and TSO's real effect on what the TUNs carry."""

from __future__ import annotations

import json
import subprocess
from typing import NamedTuple

import pytest

from ipoibfs.driver import features as F

from .conftest import IPOIBFS, LabHandle, Netns, counter, run, wait_for

CSUM, TCP = "\ttx-checksum-ipv4", "\ttx-tcp-segmentation"


def sh(host: str, script: str) -> subprocess.CompletedProcess:
    return run(IPOIBFS, "exec", host, "--", "sh", "-c", script, check=False)


def ethtool(host: str, args: str) -> subprocess.CompletedProcess:
    """The front end under exec."""
    return run(IPOIBFS, "exec", host, "--", "ethtool", *args.split(), check=False)


def real_tun(netns: Netns, name: str = "tn0") -> None:
    """A plain TUN in the host's namespace, for the real ethtool's answers (a 3-letter name
    like ib0's, so that netlink offsets agree)."""
    netns.ip("tuntap", "add", "dev", name, "mode", "tun")


def real(netns: Netns, args: str) -> subprocess.CompletedProcess:
    return netns.exec("ethtool", *args.split(), check=False)


def line(text: str, label: str) -> str:
    """The line of `ethtool -k` output for `label` (tab included for a group member)."""
    (found,) = [entry for entry in text.splitlines() if entry.split(":")[0] == label]
    return found


@pytest.fixture
def offload_lab(lab: LabHandle) -> LabHandle:
    """h1 with the default HCA, h2 with `--no-offload` (named as hN with the prefix)."""
    lab.up(2, "--no-offload", "h2")
    return lab


def test_ethtool_k_shows_the_drivers_features_in_ethtools_layout(offload_lab):
    lab = offload_lab
    h1, h2 = lab.name(1), lab.name(2)
    netns = lab.host(1).netns
    real_tun(netns)
    tun_dump = real(netns, "-k tn0").stdout
    datagram = F.ipoib_features()
    shown = ethtool(h1, "-k ib0")
    assert shown.returncode == 0 and shown.stderr == ""
    # the real tool's layout and lines, with the driver's values and marks
    assert shown.stdout == F.render_show_features(tun_dump, datagram, "ib0")
    labels = [entry.split(":")[0] for entry in shown.stdout.splitlines()[1:]]
    assert labels == [entry.split(":")[0] for entry in tun_dump.splitlines()[1:]]
    for label, text in (("rx-checksumming", "on"), ("tx-checksumming", "on"), (CSUM, "on"),
                        ("tcp-segmentation-offload", "on"), (TCP, "on"),
                        ("generic-receive-offload", "on"), ("large-receive-offload", "off"),
                        ("\ttx-scatter-gather", "on [fixed]"), ("vlan-challenged", "on [fixed]"),
                        ("\ttx-checksum-ipv6", "off [fixed]")):  # fmt: skip
        assert line(shown.stdout, label) == f"{label}: {text}"
    # outside exec, the same answer
    outside = run(IPOIBFS, "ethtool", h1, "-k", "ib0", check=False)
    assert (outside.returncode, outside.stdout) == (0, shown.stdout)
    for option in ("--show-features", "--show-offload"):
        assert ethtool(h1, f"{option} ib0").stdout == shown.stdout
    # --json -k: ethtool's JSON, the same values
    as_json = json.loads(ethtool(h1, "--json -k ib0").stdout)
    assert as_json[0]["ifname"] == "ib0"
    assert as_json[0]["tx-checksum-ipv4"] == {"active": True, "fixed": False, "requested": True}
    assert as_json[0]["large-receive-offload"] == {
        "active": False, "fixed": False, "requested": False}  # fmt: skip
    assert ethtool(h1, "-k ib0 extra").stderr == "ethtool: unexpected parameter 'extra'\n"

    # connected mode: IP checksum and TSO off, remembered as requested; RX checksum stays
    assert sh(h1, "echo connected > /sys/class/net/ib0/mode").returncode == 0
    connected = ethtool(h1, "-k ib0").stdout
    assert connected == F.render_show_features(tun_dump, F.ipoib_set_mode(datagram, True), "ib0")
    assert line(connected, "tx-checksumming") == "tx-checksumming: off"
    assert line(connected, CSUM) == f"{CSUM}: off [requested on]"
    assert line(connected, TCP) == f"{TCP}: off [requested on]"
    assert line(connected, "rx-checksumming") == "rx-checksumming: on"
    # ... and back: what was requested is restored
    assert sh(h1, "ip link set ib0 type ipoib mode datagram").returncode == 0
    assert ethtool(h1, "-k ib0").stdout == shown.stdout

    # a --no-offload HCA: nothing to offload, and nothing can be turned on
    plain = ethtool(h2, "-k ib0").stdout
    assert plain == F.render_show_features(tun_dump, F.ipoib_features(F.NO_OFFLOAD_HCA), "ib0")
    for label in ("rx-checksumming", CSUM, TCP, "large-receive-offload"):
        assert line(plain, label) == f"{label}: off [fixed]"
    assert line(plain, "generic-receive-offload") == "generic-receive-offload: on"


def test_ethtool_K_follows_the_kernels_rules(offload_lab):
    lab = offload_lab
    h1, h2 = lab.name(1), lab.name(2)
    netns = lab.host(1).netns
    real_tun(netns)

    def k(host: str) -> str:
        return ethtool(host, "-k ib0").stdout

    # TSO off in datagram mode stays off across a round trip through connected mode
    off = ethtool(h1, "-K ib0 tso off")
    assert (off.returncode, off.stdout, off.stderr) == (0, "", "")
    assert line(k(h1), TCP) == f"{TCP}: off"
    assert sh(h1, "echo connected > /sys/class/net/ib0/mode").returncode == 0
    assert line(k(h1), TCP) == f"{TCP}: off" and line(k(h1), CSUM) == f"{CSUM}: off [requested on]"
    assert sh(h1, "echo datagram > /sys/class/net/ib0/mode").returncode == 0
    after = k(h1)
    assert line(after, TCP) == f"{TCP}: off" and line(after, CSUM) == f"{CSUM}: on"
    # a request the mode forbids is remembered, and granted on return to datagram mode
    assert sh(h1, "echo connected > /sys/class/net/ib0/mode").returncode == 0
    forbidden = ethtool(h1, "-K ib0 tso on")
    assert forbidden.returncode == 1
    assert forbidden.stdout.startswith(f"Actual changes:\n{TCP[1:]}: off [requested on]\n")
    assert forbidden.stderr == "Could not change any device features\n"
    assert sh(h1, "echo datagram > /sys/class/net/ib0/mode").returncode == 0
    assert line(k(h1), TCP) == f"{TCP}: on"

    # LRO needs RX checksum: with it off, LRO is only requested, and nothing is on
    assert ethtool(h1, "-K ib0 rx off").returncode == 0
    before = k(h1)
    lro = ethtool(h1, "-K ib0 lro on")
    assert (lro.returncode, lro.stdout, lro.stderr) == (
        1, "Actual changes:\nrx-lro: off [requested on]\n",
        "Could not change any device features\n")  # fmt: skip
    after = k(h1)
    assert line(after, "large-receive-offload") == "large-receive-offload: off [requested on]"
    assert after.replace(" [requested on]", "") == before  # nothing else changed, nothing on
    rx = ethtool(h1, "-K ib0 rx on")  # the request is granted with RX checksum
    assert (rx.returncode, rx.stdout) == (
        0, "Actual changes:\nrx-lro: on [not requested]\nrx-checksum: on\n")  # fmt: skip
    assert line(k(h1), "large-receive-offload") == "large-receive-offload: on"

    # what the kernel refuses outright: the real tool's words on a real TUN, nothing changed
    before = k(h1)
    for args in ("no-such-feature on", "lro off no-such-feature on", "vlan-challenged off",
                 "tso", "tso maybe"):  # fmt: skip
        ours, theirs = ethtool(h1, f"-K ib0 {args}"), real(netns, f"-K tn0 {args}")
        assert (ours.returncode, ours.stdout, ours.stderr) == (
            theirs.returncode, theirs.stdout, theirs.stderr), args  # fmt: skip
        assert ours.returncode != 0
        assert k(h1) == before, args
    unknown = ethtool(h1, "-K ib0 no-such-feature on")
    assert unknown.returncode == F.EXIT_NETLINK
    assert unknown.stderr == ("netlink error: bit name not found (offset 52)\n"
                              "netlink error: Operation not supported\n")  # fmt: skip
    bad_json = ethtool(h1, "--json -K ib0 lro off")
    assert (bad_json.returncode, bad_json.stderr) == (1, F.BAD_ARGS)

    # a --no-offload HCA: any offload fails as for a fixed feature, and nothing changes
    plain = k(h2)
    for args, changes in (("tso on", TCP[1:]), ("tx on", CSUM[1:]), ("rx on", "rx-checksum"),
                          ("lro on", "rx-lro")):  # fmt: skip
        refused = ethtool(h2, f"-K ib0 {args}")
        assert refused.returncode == 1, args
        assert f"\n{changes}: off [requested on]\n" in refused.stdout, args
        assert refused.stderr == "Could not change any device features\n"
        assert k(h2) == plain
    # the same through `ipoibfs ethtool`
    outside = run(IPOIBFS, "ethtool", h2, "-K", "ib0", "lro", "on", check=False)
    assert (outside.returncode, outside.stderr) == (1, "Could not change any device features\n")
    assert k(h2) == plain
    ok = run(IPOIBFS, "ethtool", h1, "-K", "ib0", "gro", "off", check=False)
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "", "")
    assert line(k(h1), "generic-receive-offload") == "generic-receive-offload: off"


def tun_counts(netns: Netns, direction: str) -> tuple[int, int]:
    """The TUN's own counters (not the driver's): packets and bytes the stack handed us
    ("tx") or we wrote into it ("rx")."""
    (link,) = json.loads(netns.ip("-s", "-j", "link", "show", "ib0").stdout)
    stats = link["stats64"][direction]
    return stats["packets"], stats["bytes"]


class Run(NamedTuple):
    """What one iperf3 run moved: packets and bytes h1's TUN gave us (sent) and those we
    wrote into h2's (received), the driver's tx_packets of h1 and rx_packets of h2, and the
    bytes iperf3's server had received when the test ended (iperf3 ends before its last
    data is acknowledged, so only those crossed for sure)."""

    sent: tuple[int, int]
    received: tuple[int, int]
    tx_packets: int
    rx_packets: int
    delivered: int


def iperf(lab: LabHandle, nbytes: int) -> Run:
    """h1 sends `nbytes` to h2 with iperf3."""
    h1, h2 = lab.host(1).netns, lab.host(2).netns
    server = subprocess.Popen(["ip", "netns", "exec", h2.name, "iperf3", "-s", "-1", "-B",
                               "198.18.0.2"], stdout=subprocess.DEVNULL)  # fmt: skip

    def now() -> tuple:
        return (tun_counts(h1, "tx"), tun_counts(h2, "rx"),
                counter(lab.host(1), "tx_packets"), counter(lab.host(2), "rx_packets"))  # fmt: skip

    try:
        wait_for(lambda: ":5201 " in h2.exec("ss", "-Hltn").stdout, what="iperf3 listening")
        before = now()
        client = h1.exec("iperf3", "-c", "198.18.0.2", "-n", str(nbytes), "-J")
        assert server.wait(timeout=30) == 0
    finally:
        server.kill()
        server.wait()
    after = now()
    return Run((after[0][0] - before[0][0], after[0][1] - before[0][1]),
               (after[1][0] - before[1][0], after[1][1] - before[1][1]),
               after[2] - before[2], after[3] - before[3],
               json.loads(client.stdout)["end"]["sum_received"]["bytes"])  # fmt: skip


MTU = 2044


def test_tso_off_hands_the_tun_mtu_sized_packets(lab):
    """TUNSETOFFLOAD follows -K: with TSO off the stack gives the sender's TUN MTU-sized
    packets, one per segment, and the receiver (GRO off, so that nothing is merged) writes
    one per segment into its TUN; with TSO on, super-packets cross whole and far fewer
    packets are counted."""
    lab.up(2)
    assert ethtool(lab.name(2), "-K ib0 gro off").returncode == 0
    nbytes = 16 << 20
    mss = MTU - 20 - 20 - 12  # IPv4 and TCP headers with timestamps
    run1 = iperf(lab, nbytes)
    segments = run1.delivered // mss
    (sent, sent_bytes), (received, _) = run1.sent, run1.received
    assert sent_bytes / sent > 4 * MTU, (sent, sent_bytes)  # super-packets
    assert sent < segments / 4 and received < segments / 4, (sent, received, segments)
    # the driver counts what it posted (one LSO send each) and what the HCA delivered
    assert run1.tx_packets < segments / 4 and run1.rx_packets >= 0.8 * segments, run1
    assert ethtool(lab.name(1), "-K ib0 tso off").returncode == 0
    run2 = iperf(lab, nbytes)
    segments = run2.delivered // mss
    (sent, sent_bytes), (received, received_bytes) = run2.sent, run2.received
    assert sent_bytes / sent <= MTU and received_bytes / received <= MTU
    assert sent >= 0.8 * segments and received >= 0.8 * segments, (sent, received, segments)
    assert received >= 0.9 * sent  # what the reader or the wire dropped is retransmitted
    assert run2.tx_packets >= 0.8 * segments and run2.rx_packets >= 0.8 * segments, run2


def test_the_tun_is_made_with_the_interfaces_offloads(netns, mountpoint):
    """`mount -o no_offload`: the interfaces advertise no offload and their TUN is made
    without TUN_F_CSUM/TUN_F_TSO4 (the real ethtool on the TUN shows what the stack may
    hand it); a default host's TUN takes both."""
    result = run("mount", "-t", "fuse.ipoibfs", netns.name, str(mountpoint), "-o", "no_offload",
                 check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    (link,) = json.loads((mountpoint / ".ipoibfs" / "links").read_text())
    assert set(link["features"]["hw"]).isdisjoint({F.IP_CSUM, F.TSO, F.RXCSUM, F.LRO})
    tun = real(netns, "-k ib0").stdout
    assert "\ttx-checksum-ip-generic: off\n" in tun and "\ttx-tcp-segmentation: off\n" in tun
    assert run("umount", str(mountpoint)).returncode == 0
    wait_for(lambda: set(netns.links()) == {"lo"}, what="interfaces removed by umount")
    result = run(IPOIBFS, "mount", "--netns", netns.name, str(mountpoint), check=False)
    assert result.returncode == 0, result.stderr
    tun = real(netns, "-k ib0").stdout
    assert "\ttx-checksum-ip-generic: on\n" in tun and "\ttx-tcp-segmentation: on\n" in tun
    # a child made through sysfs gets its parent's HCA's offers, and its TUN the flags
    (mountpoint / "class" / "net" / "ib0" / "create_child").write_text("0x8001")
    wait_for(lambda: "ib0.8001" in netns.links(), what="the child's netdev")
    tun = real(netns, "-k ib0.8001").stdout
    assert "\ttx-checksum-ip-generic: on\n" in tun and "\ttx-tcp-segmentation: on\n" in tun
