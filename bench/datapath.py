"""The data-path benchmark: TCP throughput (iperf3) and ping latency between two namespaces,

- over ipoibfs: two lab hosts, ib0 in datagram mode (MTU 2044) and connected mode (65520);
- over a veth pair with offloads off, at both MTUs;
- through a minimal relay at both MTUs: two TUNs, one thread per direction doing
  os.read -> os.write;
- through the super-packet relay at MTU 2044: the same relay with IFF_VNET_HDR and
  TUNSETOFFLOAD (checksum, TSO), passing the 10-byte virtio_net_hdr and GSO super-packets
  through whole;
- over ipoibfs in datagram mode with the sender's TSO off (GRO/LRO on at the receiver),
  with TSO off and the receiver's GRO and LRO off, and ping RTT with rx-usecs 0 and 1000.

All run in the same invocation, in interleaved rounds (BENCH_ROUNDS, default 5: connected
mode is judged over at least 5) whose medians are compared: only the ratios are meaningful on
a shared machine.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import statistics
import struct
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from ipoibfs.namespaces import enter_netns

REPO = Path(__file__).resolve().parents[1]
IPOIBFS = [str(REPO / ".venv" / "bin" / "ipoibfs")]
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
MTU = 2044
CM_MTU = 65520
#: BENCH_OFFLOADS_ONLY=1: only the datagram offload figures and their baselines.
OFFLOADS_ONLY = os.environ.get("BENCH_OFFLOADS_ONLY") == "1"


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def iperf(server_ns: str, client_ns: str, address: str) -> float:
    server = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-B", address],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        out = sh(
            "ip", "netns", "exec", client_ns, "iperf3", "-c", address, "-t", str(SECONDS), "-J"
        ).stdout
        result = json.loads(out)
        return result["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        server.kill()
        server.wait()


def ping(client_ns: str, address: str) -> float:
    out = sh(
        "ip", "netns", "exec", client_ns, "ping", "-c", "20", "-i", "0.05", "-q", address
    ).stdout
    return float(re.search(r"= [\d.]+/([\d.]+)/", out).group(1))


def measure(name: str, server_ns: str, client_ns: str, address: str) -> dict:
    ping(client_ns, address)  # warm up resolution
    result = {
        "name": name,
        "gbps": iperf(server_ns, client_ns, address),
        "ping_ms": ping(client_ns, address),
    }
    print(f"{name:34s} {result['gbps']:6.2f} Gbit/s   ping {result['ping_ms']:.3f} ms", flush=True)
    return result


def veth(a: str, b: str, mtu: int) -> dict:
    sh("ip", "link", "add", "bva", "netns", a, "type", "veth", "peer", "name", "bvb", "netns", b)
    for ns, dev, ip in ((a, "bva", "198.18.0.1"), (b, "bvb", "198.18.0.2")):
        sh("ip", "-n", ns, "link", "set", dev, "mtu", str(mtu), "up")
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
        sh(
            "ip",
            "netns",
            "exec",
            ns,
            "ethtool",
            "-K",
            dev,
            "tso",
            "off",
            "gso",
            "off",
            "gro",
            "off",
            "tx",
            "off",
            "rx",
            "off",
            check=False,
        )
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    try:
        return measure(f"veth, MTU {mtu}, offloads off", b, a, "198.18.0.2")
    finally:
        sh("ip", "-n", a, "link", "del", "bva", check=False)


IFF_TUN, IFF_NO_PI, IFF_VNET_HDR = 0x0001, 0x1000, 0x4000
TUNSETIFF, TUNSETOFFLOAD = 0x400454CA, 0x400454D0
TUN_F_CSUM, TUN_F_TSO4 = 0x01, 0x02


def _tun_in(ns: str, name: str, vnet: bool = False) -> int:
    box: list[int] = []

    def make() -> None:
        enter_netns(ns)
        fd = os.open("/dev/net/tun", os.O_RDWR)
        flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if vnet else 0)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
        if vnet:
            fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4)
        box.append(fd)

    t = threading.Thread(target=make)
    t.start()
    t.join()
    return box[0]


def relay(a: str, b: str, mtu: int, vnet: bool = False) -> dict:
    """The relay; with `vnet`, the super-packet relay (virtio_net_hdr and TSO passed
    through, as decision 18 lets ipoibfs do)."""
    fa, fb = _tun_in(a, "rta", vnet), _tun_in(b, "rtb", vnet)
    for ns, dev, ip in ((a, "rta", "198.18.0.1"), (b, "rtb", "198.18.0.2")):
        sh("ip", "-n", ns, "link", "set", dev, "mtu", str(mtu), "txqueuelen", "1000", "up")
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
        sh("ip", "-n", ns, "link", "set", "lo", "up")

    def pump(src: int, dst: int) -> None:
        try:
            while True:
                os.write(dst, os.read(src, 65536))
        except OSError:
            pass

    for src, dst in ((fa, fb), (fb, fa)):
        threading.Thread(target=pump, args=(src, dst), daemon=True).start()
    name = "super-packet relay" if vnet else "minimal two-thread TUN relay"
    try:
        return measure(f"{name}, MTU {mtu}", b, a, "198.18.0.2")
    finally:
        os.close(fa)
        os.close(fb)


class Lab:
    """Two lab hosts whose ib0 is measured in either mode."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        sh(*IPOIBFS, "lab", "up", "--hosts", "2", "--prefix", prefix)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if Path(f"/run/ipoibfs/{prefix}-h2/class/net/ib0/carrier").read_text() == "1\n":
                break
            time.sleep(0.1)

    def measure(self, mode: str) -> dict:
        h1, h2 = f"{self.prefix}-h1", f"{self.prefix}-h2"
        for h in (h1, h2):
            Path(f"/run/ipoibfs/{h}/class/net/ib0/mode").write_text(f"{mode}\n")
        mtu = Path(f"/run/ipoibfs/{h1}/class/net/ib0/mtu").read_text().strip()
        return measure(f"ipoibfs lab, ib0 {mode}, MTU {mtu}", h2, h1, "198.18.0.2")

    def offloads(self, tso: bool, gro: bool) -> dict:
        """Datagram mode with the sender's TSO (the TUN's own: its stack then cuts MTU-sized
        segments) and the receiver's GRO and LRO (the driver's, through ethtool -K)."""
        h1, h2 = f"{self.prefix}-h1", f"{self.prefix}-h2"
        for h in (h1, h2):
            Path(f"/run/ipoibfs/{h}/class/net/ib0/mode").write_text("datagram\n")
        sh("ip", "netns", "exec", h1, "ethtool", "-K", "ib0", "tso", "on" if tso else "off")
        state = "on" if gro else "off"
        result = sh(*IPOIBFS, "exec", h2, "--", "ethtool", "-K", "ib0", "gro", state, "lro",
                    state, check=False)  # fmt: skip
        try:
            if result.returncode != 0 and not gro:
                print(f"  (ethtool -K gro/lro off refused: {result.stderr.strip()})", flush=True)
                return {"name": "n/a", "gbps": float("nan"), "ping_ms": float("nan")}
            name = f"ipoibfs datagram, TSO {'on' if tso else 'off'}, GRO/LRO {state}"
            return measure(name, h2, h1, "198.18.0.2")
        finally:
            sh("ip", "netns", "exec", h1, "ethtool", "-K", "ib0", "tso", "on")
            sh(*IPOIBFS, "exec", h2, "--", "ethtool", "-K", "ib0", "gro", "on", check=False)

    def moderated_ping(self, usecs: int) -> float:
        """Ping RTT, datagram mode, with rx-usecs at both hosts."""
        h1, h2 = f"{self.prefix}-h1", f"{self.prefix}-h2"
        for h in (h1, h2):
            Path(f"/run/ipoibfs/{h}/class/net/ib0/mode").write_text("datagram\n")
            sh(*IPOIBFS, "ethtool", h, "-C", "ib0", "rx-usecs", str(usecs))
        try:
            rtt = ping(h1, "198.18.0.2")
        finally:
            for h in (h1, h2):
                sh(*IPOIBFS, "ethtool", h, "-C", "ib0", "rx-usecs", "0")
        print(f"ping, datagram, rx-usecs {usecs:5d} at both hosts   {rtt:.3f} ms", flush=True)
        return rtt

    def close(self) -> None:
        sh(*IPOIBFS, "lab", "down", "--prefix", self.prefix, check=False)


def collect() -> dict:
    """Every data-path figure of one invocation, in interleaved rounds (as JSON-able dicts):
    medians of throughput and ping per path, the paired per-round ratios, moderated pings."""
    tag = uuid.uuid4().hex[:6]
    runs: dict[str, list[dict]] = {}
    moderated: dict[int, list[float]] = {}
    pairs = [(f"bench-{tag}-va", f"bench-{tag}-vb"), (f"bench-{tag}-ra", f"bench-{tag}-rb"),
             (f"bench-{tag}-sa", f"bench-{tag}-sb")]  # fmt: skip
    lab = None
    try:
        for ns in (n for pair in pairs for n in pair):
            sh("ip", "netns", "add", ns)
        lab = Lab(f"bench{tag}")
        offload_runs = (
            ("ud", lambda: lab.measure("datagram")),
            ("relay", lambda: relay(*pairs[1], MTU)),
            ("vrelay", lambda: relay(*pairs[2], MTU, vnet=True)),
            ("ud_tso_off", lambda: lab.offloads(tso=False, gro=True)),
            ("ud_all_off", lambda: lab.offloads(tso=False, gro=False)),
        )
        other_runs = (
            ("veth", lambda: veth(*pairs[0], MTU)),
            ("cm", lambda: lab.measure("connected")),
            ("veth_cm", lambda: veth(*pairs[0], CM_MTU)),
            ("relay_cm", lambda: relay(*pairs[1], CM_MTU)),
        )
        # Rounds interleave the paths, so that a noisy minute hits all of them alike.
        for _ in range(ROUNDS):
            for key, run in offload_runs + (() if OFFLOADS_ONLY else other_runs):
                runs.setdefault(key, []).append(run())
            for usecs in (0, 1000):
                moderated.setdefault(usecs, []).append(lab.moderated_ping(usecs))
    finally:
        if lab is not None:
            lab.close()
        for ns in (n for pair in pairs for n in pair):
            sh("ip", "netns", "del", ns, check=False)

    def paired(a: str, b: str) -> list[float]:
        return (
            [x["gbps"] / y["gbps"] for x, y in zip(runs[a], runs[b], strict=True)]
            if b in runs
            else []
        )

    return {
        "rounds": ROUNDS,
        "names": {k: v[0]["name"] for k, v in runs.items()},
        "gbps": {k: statistics.median(x["gbps"] for x in v) for k, v in runs.items()},
        "ping_ms": {k: statistics.median(x["ping_ms"] for x in v) for k, v in runs.items()},
        "ud_per_vrelay": paired("ud", "vrelay"),
        "cm_per_relay": paired("cm", "relay_cm"),
        "moderated_ping_ms": {u: statistics.median(v) for u, v in moderated.items()},
    }


def report(d: dict) -> None:
    """The data-path section of the bench's output."""
    r, ping, rtt = d["gbps"], d["ping_ms"], d["moderated_ping_ms"]
    print(f"medians of {d['rounds']} interleaved rounds:")
    for key, value in r.items():
        print(f"  {d['names'][key]:34s} {value:6.2f} Gbit/s   ping {ping[key]:.3f} ms")
    print(
        f"  datagram, offloads on: ipoibfs / relay {r['ud'] / r['relay']:.2f}x (goal >= 5x), "
        f"/ super-packet relay {r['ud'] / r['vrelay']:.2f}x (goal >= 0.9x); "
        f"super-packet relay / relay {r['vrelay'] / r['relay']:.2f}x"
    )
    for key, what in (("ud_tso_off", "TSO off, GRO on"), ("ud_all_off", "TSO off, GRO/LRO off")):
        print(f"  datagram, {what}: / relay {r[key] / r['relay']:.2f}x, "
              f"/ offloads on {r[key] / r['ud']:.2f}x")  # fmt: skip
    print("  datagram / super-packet relay, round by round: "
          + ", ".join(f"{x:.2f}" for x in d["ud_per_vrelay"]))  # fmt: skip
    print(f"  ping, datagram: rx-usecs 0 {rtt[0]:.3f} ms, rx-usecs 1000 {rtt[1000]:.3f} ms "
          f"(+{rtt[1000] - rtt[0]:.3f} ms; each host holds its receive 1 ms)")  # fmt: skip
    if "cm" in r:
        print(f"  datagram / veth {r['ud'] / r['veth']:.2f}x")
        print(
            f"  connected: ipoibfs / relay {r['cm'] / r['relay_cm']:.2f}x (goal >= 1.0x), "
            f"/ veth {r['cm'] / r['veth_cm']:.2f}x"
        )
        print(
            "  connected / relay, round by round: "
            + ", ".join(f"{x:.2f}" for x in d["cm_per_relay"])
            + f" (median {statistics.median(d['cm_per_relay']):.2f}x)"
        )
        print(f"  throughput datagram / connected: {r['ud'] / r['cm']:.2f}x")
        print(
            f"  ping datagram / relay: {ping['ud'] / ping['relay']:.2f}x"
            f", connected / relay: {ping['cm'] / ping['relay_cm']:.2f}x"
        )


def main() -> int:
    if os.geteuid() != 0:
        print("bench: must be run as root", file=sys.stderr)
        return 1
    report(collect())
    return 0


if __name__ == "__main__":
    sys.exit(main())
