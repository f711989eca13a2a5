"""make bench: every figure of the project in one run, one summary table and a JSON copy.

The sections run one after the other, each in interleaved rounds against its own baseline
(the machine is shared and noisy: only ratios within one run mean something):

- the data path (bench/datapath.py): throughput and ping RTT against the relays and veth;
- the control surface (bench/run.py): create_child latency, mirror reads against real sysfs
  and the FUSE floor;
- the front ends of `ipoibfs exec` (bench/frontends.py);
- one `saquery -p` and one `perfquery` under `ipoibfs exec` (bench/mad.py);
- scale (bench/scale.py): lab up/down times and memory per host daemon at 16 and 64 hosts,
  and 256 with BENCH_SCALE=256 (it takes minutes).

Each section prints its details as it ends; the summary table follows, each row with the
issue's goal where it has one, and the whole is written as JSON to BENCH_JSON (default
bench/results.json).
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import datapath  # noqa: E402
import frontends  # noqa: E402
import mad  # noqa: E402
import run  # noqa: E402
import scale  # noqa: E402

JSON_PATH = Path(os.environ.get("BENCH_JSON", Path(__file__).resolve().parent / "results.json"))
SCALES = (16, 64, 256) if os.environ.get("BENCH_SCALE") == "256" else (16, 64)
#: MIRROR_FILES whose value the mirror reads live (goal 5,000/s); the others 10,000/s.
LIVE = ("operstate", "carrier", "statistics")


class Row:
    """One line of the summary: a figure, its baseline, their ratio and the goal it has."""

    def __init__(self, figure: str, value: float, unit: str, baseline: str = "",
                 base: float | None = None, goal: str = "",
                 met: Callable[[float, float], bool] | None = None) -> None:  # fmt: skip
        self.figure, self.value, self.unit = figure, value, unit
        self.baseline, self.base, self.goal = baseline, base, goal
        self.ratio = value / base if base else None
        self.met = met(value, self.ratio or 0.0) if met else None

    def json(self) -> dict:
        return {"figure": self.figure, "value": self.value, "unit": self.unit,
                "baseline": self.baseline, "baseline_value": self.base, "ratio": self.ratio,
                "goal": self.goal, "met": self.met}  # fmt: skip

    def line(self) -> str:
        base = f"{self.baseline} {_num(self.base)}" if self.base is not None else ""
        ratio = f"{self.ratio:.2f}x" if self.ratio is not None else ""
        verdict = {True: "met", False: "MISSED", None: ""}[self.met]
        return (f"{self.figure:<40} {_num(self.value):>9} {self.unit:<8} {base:<28} "
                f"{ratio:>7}  {self.goal:<12} {verdict}")  # fmt: skip


def _num(x: float | None) -> str:
    if x is None:
        return ""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def summary(data: dict, control: dict, fe: list[dict], mads: dict,
            scales: list[dict]) -> list[Row]:  # fmt: skip
    g, ping, mod = data["gbps"], data["ping_ms"], data["moderated_ping_ms"]
    rows = [
        Row(
            "ping RTT, datagram",
            ping["ud"],
            "ms",
            "relay",
            ping["relay"],
            "<= 1.5x",
            lambda v, r: r <= 1.5,
        ),
        Row(
            "ping RTT, connected",
            ping["cm"],
            "ms",
            "relay 65520",
            ping["relay_cm"],
            "<= 1.2x",
            lambda v, r: r <= 1.2,
        ),
        Row("ping RTT, rx-usecs 1000 at both", mod[1000], "ms", "rx-usecs 0", mod[0]),
        Row(
            "datagram, offloads on",
            g["ud"],
            "Gbit/s",
            "relay",
            g["relay"],
            ">= 5x",
            lambda v, r: r >= 5,
        ),
        Row(
            "datagram, offloads on",
            g["ud"],
            "Gbit/s",
            "super-packet relay",
            g["vrelay"],
            ">= 0.9x",
            lambda v, r: r >= 0.9,
        ),
        Row("datagram, TSO off, GRO on", g["ud_tso_off"], "Gbit/s", "relay", g["relay"]),
        Row("datagram, TSO off, GRO/LRO off", g["ud_all_off"], "Gbit/s", "relay", g["relay"]),
        Row(
            "connected, MTU 65520",
            g["cm"],
            "Gbit/s",
            "relay 65520",
            g["relay_cm"],
            ">= 1.0x",
            lambda v, r: (
                statistics.median(data["cm_per_relay"]) >= 1.0 and min(data["cm_per_relay"]) >= 0.8
            ),
        ),
        Row(
            "create_child -> live netdev",
            control["create_child_s"] * 1e3,
            "ms",
            "TUN by hand",
            control["tun_by_hand_s"] * 1e3,
        ),
    ]
    reads = control["reads_per_s"]
    rows.append(Row("reads/s, FUSE floor", reads["floor"], "/s", "real sysfs", reads["real"]))
    for rel, rate in reads.items():
        if rel in ("real", "floor"):
            continue
        goal = 5000 if any(word in rel for word in LIVE) else 10000
        rows.append(Row(f"reads/s, {rel.removeprefix('class/net/')}", rate, "/s", "FUSE floor",
                        reads["floor"], f">= {goal:,}/s", lambda v, r, g=goal: v >= g))  # fmt: skip
    for row in fe:
        rows.append(Row(f"exec {row['command']}", row["front_end_s"] * 1e3, "ms", "real tool",
                        row["real_s"] * 1e3))  # fmt: skip
    for name in ("saquery -p", "perfquery"):
        rows.append(Row(f"exec {name} (MADs)", mads[name] * 1e3, "ms", "exec ibstat -l",
                        mads["ibstat -l"] * 1e3))  # fmt: skip
    for s in scales:
        n = s["hosts"]
        big = n >= 256
        rows += [
            Row(
                f"lab up, {n} hosts",
                s["up_s"],
                "s",
                goal="<= 60 s" if big else "",
                met=(lambda v, r: v <= 60) if big else None,
            ),
            Row(
                f"lab down, {n} hosts",
                s["down_s"],
                "s",
                goal="<= 30 s" if big else "",
                met=(lambda v, r: v <= 30) if big else None,
            ),
            Row(
                f"PSS per host daemon, {n} hosts",
                s["pss_mb_median"],
                "MB",
                goal="<= 25 MB",
                met=lambda v, r: v <= 25,
            ),
            Row(
                f"pairs that ping, {n} hosts",
                s["pairs_ok"],
                "pairs",
                "checked",
                s["pairs_checked"],
                "all",
                lambda v, r: r == 1.0,
            ),
        ]
    return rows


def main() -> int:
    if os.geteuid() != 0:
        print("bench: must be run as root", file=sys.stderr)
        return 1
    print("== data path", flush=True)
    data = datapath.collect()
    datapath.report(data)
    print("\n== control surface", flush=True)
    control = run.collect()
    run.report(control)
    print("\n== front ends", flush=True)
    fe = frontends.collect()
    frontends.report(fe)
    print("\n== MAD tools", flush=True)
    mads = mad.collect()
    mad.report(mads)
    print("\n== scale", flush=True)
    scales = []
    for n in SCALES:
        scales.append(scale.measure(n))
        print(f"  {n} hosts: {scales[-1]}", flush=True)
    rows = summary(data, control, fe, mads, scales)
    print(f"\n== summary ({datetime.date.today()}, ratios against baselines of this run)")
    print(f"{'figure':<40} {'ipoibfs':>9} {'unit':<8} {'baseline':<28} {'ratio':>7}  goal")
    for row in rows:
        print(row.line())
    JSON_PATH.write_text(json.dumps({
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "summary": [row.json() for row in rows],
        "datapath": data, "control": control, "frontends": fe, "mad": mads, "scale": scales,
    }, indent=1) + "\n")  # fmt: skip
    print(f"\nJSON: {JSON_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
