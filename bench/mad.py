"""make bench: what one MAD tool costs under `ipoibfs exec` (issue 15): `saquery -p` between
two hosts (a PathRecord from the SM, through exec's read supervisor) and `perfquery` of the
other host's port (PMA MADs over the fabric), against `ibstat -l` (the same process start and
sysfs walk, no MAD) measured in the same exec, interleaved, MAD_ROUNDS times (default 30).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from execlab import lab, run_timed

ROUNDS = int(os.environ.get("MAD_ROUNDS", "30"))

#: Medians of each command, interleaved (after execlab.TIMED).
INNER = r"""
commands, rounds = json.loads(sys.argv[1]), int(sys.argv[2])
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
    with lab(2, "mad") as prefix:
        lids = [int(Path(f"/run/ipoibfs/{prefix}-h{i}/class/infiniband/ipoibfs0/ports/1/lid")
                    .read_text(), 16) for i in (1, 2)]  # fmt: skip
        commands = [
            ("ibstat -l", ["ibstat", "-l"]),
            ("saquery -p", ["saquery", "-p", "--src-to-dst", f"{lids[0]}:{lids[1]}"]),
            ("perfquery", ["perfquery", str(lids[1]), "1"]),
        ]
        return run_timed(prefix, INNER, "the MAD tools' timing", json.dumps(commands),
                         str(ROUNDS))  # fmt: skip


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
