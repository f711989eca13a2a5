"""make bench: what the `ip` and `ethtool` front ends of `ipoibfs exec` cost over the real tools.

A one-host lab; inside one `ipoibfs exec` the same command runs through the front end (bound
over /usr/bin/ip and ethtool) and through the real binary the front end keeps under the exec
root, interleaved, FRONTEND_ROUNDS times each (default 50). Medians, and the difference.
"""

from __future__ import annotations

import json
import os
import sys

from execlab import lab, run_timed

ROUNDS = int(os.environ.get("FRONTEND_ROUNDS", "50"))
COMMANDS = (
    ("ip", "link", "show", "ib0"),
    ("ip", "addr"),
    ("ip", "-d", "addr", "show", "ib0"),
    ("ip", "route"),
    ("ethtool", "ib0"),
    ("ethtool", "-i", "ib0"),
    ("ethtool", "-k", "ib0"),
)

#: Times each command both ways (after execlab.TIMED).
INNER = r"""
root = "/run/ipoibfs-exec"
real = {}
for name in sorted(os.listdir(root)):
    if name.startswith("real") and "-" in name:
        real.setdefault(name.split("-", 1)[1], os.path.join(root, name))
commands, rounds = json.loads(sys.argv[1]), int(sys.argv[2])
out = []
for argv in commands:
    ours, theirs = [], []
    for _ in range(3):  # warm both (page cache, bytecode)
        timed(argv); timed([real[argv[0]], *argv[1:]])
    for _ in range(rounds):
        ours.append(timed(argv))
        theirs.append(timed([real[argv[0]], *argv[1:]]))
    out.append([argv, statistics.median(ours), statistics.median(theirs)])
print(json.dumps(out))
"""


def collect() -> list[dict]:
    """Per command: its front end's and the real tool's median times in seconds."""
    with lab(1, "fe") as prefix:
        rows = run_timed(prefix, INNER, "the front ends' timing", json.dumps(COMMANDS),
                         str(ROUNDS))  # fmt: skip
    return [{"command": " ".join(argv), "front_end_s": ours, "real_s": theirs}
            for argv, ours, theirs in rows]  # fmt: skip


def report(rows: list[dict]) -> None:
    print(f"front ends under ipoibfs exec, median of {ROUNDS} (interleaved with the real tool)")
    print(f"  {'command':<28} {'front end':>10} {'real tool':>10} {'difference':>11}")
    for row in rows:
        ours, theirs = row["front_end_s"], row["real_s"]
        print(f"  {row['command']:<28} {ours * 1e3:>7.2f} ms {theirs * 1e3:>7.2f} ms "
              f"{(ours - theirs) * 1e3:>+8.2f} ms")  # fmt: skip


def main() -> int:
    report(collect())
    return 0


if __name__ == "__main__":
    sys.exit(main())
