"""A stopped subnet manager never blocks the driver: with `fabric serve` SIGSTOPped and ib0
bounced, every store returns at once with the kernel's result, and the joins complete once
the SM runs again (issue 11: the kernel never holds RTNL while waiting on the SA)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from .conftest import IPOIBFS, daemon_pid, read, run, wait_for, write

#: What "at once" means here: a store does local work only (a netlink call, a TUN ioctl).
PROMPT = 1.0


def timed(fn):
    start = time.monotonic()
    result = fn()
    return result, time.monotonic() - start


def test_stores_stay_prompt_while_the_sm_is_stopped(lab):
    lab.up(2)
    h1 = lab.host(1)
    registry = json.loads(Path(f"/run/ipoibfs/{lab.prefix}-lab.json").read_text())
    sm = registry["fabric_pid"]
    os.kill(sm, signal.SIGSTOP)
    try:
        h1.netns.exec("ip", "link", "set", "ib0", "down")
        wait_for(lambda: read(h1.net() / "operstate") == "down\n", what="ib0 down")
        h1.netns.exec("ip", "link", "set", "ib0", "up")
        wait_for(lambda: "  complete:        no" in read(h1.debugfs("ib0_mcg")),
                 what="the broadcast join pending in ib0_mcg")  # fmt: skip
        stores = [
            (h1.net() / "mode", "connected\n"),
            (h1.net() / "mtu", "9000\n"),
            (h1.net() / "umcast", "1\n"),
            (h1.net() / "create_child", "0x8001\n"),
            (h1.net() / "mode", "datagram\n"),
        ]
        for path, value in stores:
            result, took = timed(lambda p=path, v=value: write(p, v))
            assert result == 0 and took < PROMPT, (
                f"{path.name} <- {value!r}: {result}, {took:.2f} s"
            )
        assert read(h1.net() / "mode") == "datagram\n"
        assert (h1.net("ib0.8001") / "pkey").exists()
        link = [IPOIBFS, "link", lab.name(1), "add", "link", "ib0", "name", "blue", "type",
                "ipoib", "pkey", "0x8002"]  # fmt: skip
        result, took = timed(lambda: run(*link, check=False))
        assert result.returncode == 0 and took < PROMPT + 0.5, (result.stderr, took)
        assert read(h1.net() / "carrier") == "0\n"  # no join has completed
    finally:
        os.kill(sm, signal.SIGCONT)
    # The joins complete once the SM answers: at the latest after the join task's longest
    # back-off (16 s) and one request's timeout.
    wait_for(lambda: read(h1.net() / "carrier") == "1\n", timeout=30, what="carrier after SIGCONT")
    assert lab.ping(1, "198.18.0.2")


def test_lab_status_answers_with_a_host_stopped(lab):
    lab.up(2)
    pid = daemon_pid(Path("/run/ipoibfs") / lab.name(2))
    os.kill(pid, signal.SIGSTOP)
    try:
        result, took = timed(lambda: lab.ipoibfs("status", check=False))
    finally:
        os.kill(pid, signal.SIGCONT)
    assert result.returncode == 0 and took < PROMPT + 1, (result.stderr, took)
    rows = [line.split() for line in result.stdout.splitlines()]
    assert [lab.name(2), "-", "-", "-", "-", "stopped", "-", "-", "(daemon", "stopped)"] in rows
    assert any(row[0] == lab.name(1) and row[5] == "yes" for row in rows)
