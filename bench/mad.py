"""make bench: what one MAD tool costs under `ipoibfs exec` (issue 15): `saquery -p` between
two hosts (a PathRecord from the SM, through exec's read supervisor) and `perfquery` of the
other host's port (PMA MADs over the fabric), against `ibstat -l` (the same process start and
sysfs walk, no MAD) measured in the same exec, interleaved, MAD_ROUNDS times (default 30).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IPOIBFS = str(REPO / ".venv" / "bin" / "ipoibfs")
ROUNDS = int(os.environ.get("MAD_ROUNDS", "30"))

#: Runs inside `ipoibfs exec` on h1: medians of each command, interleaved, as JSON.
INNER = r"""
import json, statistics, subprocess, sys, time
commands, rounds = json.loads(sys.argv[1]), int(sys.argv[2])
def timed(argv):
    t0 = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if done.returncode:
        raise SystemExit(f"{argv} exited {done.returncode}")
    return time.perf_counter() - t0
times = {name: [] for name, _ in commands}
for name, argv in commands:
    timed(argv)  # warm
for _ in range(rounds):
    for name, argv in commands:
        times[name].append(timed(argv))
print(json.dumps({name: statistics.median(v) for name, v in times.items()}))
"""


def collect() -> dict:
    """Median seconds of `saquery -p`, `perfquery` and the `ibstat -l` baseline."""
    prefix = f"benchmad{uuid.uuid4().hex[:4]}"
    up = subprocess.run([IPOIBFS, "lab", "up", "--hosts", "2", "--prefix", prefix],
                        capture_output=True, text=True)  # fmt: skip
    try:
        if up.returncode:
            raise SystemExit(f"bench: lab up failed: {up.stderr.strip()}")
        lids = [int(Path(f"/run/ipoibfs/{prefix}-h{i}/class/infiniband/ipoibfs0/ports/1/lid")
                    .read_text(), 16) for i in (1, 2)]  # fmt: skip
        commands = [
            ("ibstat -l", ["ibstat", "-l"]),
            ("saquery -p", ["saquery", "-p", "--src-to-dst", f"{lids[0]}:{lids[1]}"]),
            ("perfquery", ["perfquery", str(lids[1]), "1"]),
        ]
        result = subprocess.run(
            [IPOIBFS, "exec", f"{prefix}-h1", "--", sys.executable, "-c", INNER,
             json.dumps(commands), str(ROUNDS)],
            capture_output=True, text=True)  # fmt: skip
        if result.returncode:
            raise SystemExit(f"bench: the MAD tools' timing failed: {result.stderr.strip()}")
        return json.loads(result.stdout)
    finally:
        subprocess.run([IPOIBFS, "lab", "down", "--prefix", prefix], capture_output=True)


def report(times: dict) -> None:
    base = times["ibstat -l"]
    print(f"MAD tools under ipoibfs exec, median of {ROUNDS} (interleaved)")
    for name, value in times.items():
        print(
            f"  {name:<12} {value * 1e3:7.2f} ms  ({(value - base) * 1e3:+.2f} ms over ibstat -l)"
        )


def main() -> int:
    report(collect())
    return 0


if __name__ == "__main__":
    sys.exit(main())
