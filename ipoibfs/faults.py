"""Faults injected into a running lab: `lab port HOST[:PORT] down|up|flap`,
`lab link HOST[:PORT] loss P% | delay MS [JITTER] | reorder P% | corrupt P% | clear`,
`lab sm stop|start|restart`, and `lab kill HOST` / `lab start HOST`.

A port is the host daemon's to change (it owns the HCA and the driver that reacts), so the
commands write their request to the host's control file `.ipoibfs/ports` and the daemon
does the rest: the port's state and phys_state, the driver's port event (carrier, joins,
paths), the kernel's messages; the impairments of what the port sends (fabric/impair.py).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import time
from pathlib import Path

from .errors import UsageError
from .fabric.impair import Netem
from .lab import (
    Lab,
    LabHost,
    Progress,
    clear_dead_host,
    no_lab,
    start_fabric,
    start_hosts,
    stop_fabric,
)
from .state import running_daemon


def _lab(prefix: str) -> Lab:
    lab = Lab.load(prefix)
    if lab is None:
        raise no_lab(prefix)
    return lab


def lab_host(prefix: str, name: str, lab: Lab | None = None) -> LabHost:
    """A host of the lab with this prefix, by the name `lab status` prints (`P-h2`) or, with
    a prefix, the short one (`h2`) too (decision 28)."""
    lab = lab or _lab(prefix)
    wanted = {name, f"{prefix}-{name}"} if prefix else {name}
    for host in lab.hosts:
        if host.name in wanted:
            return host
    names = ", ".join(h.name for h in lab.hosts[:4]) + ("…" if len(lab.hosts) > 4 else "")
    raise UsageError(f"no lab host '{name}' (hosts are {names})")


def parse_target(target: str) -> tuple[str, int]:
    """HOST or HOST:PORT (port 1 by default)."""
    name, sep, port = target.partition(":")
    if not sep:
        return name, 1
    if not port.isdigit() or int(port) < 1:
        raise UsageError(f"'{target}': the port is a number from 1, as in h2:1")
    return name, int(port)


def _write(host: LabHost, port: int, up: bool) -> None:
    _request(host, port, {"op": "link", "port": port, "up": up})


def _request(host: LabHost, port: int, fields: dict) -> None:
    path = Path(host.mountpoint) / ".ipoibfs" / "ports"
    request = json.dumps(fields).encode()
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as e:
        raise UsageError(
            f"lab host {host.name} is not running ({os.strerror(e.errno or 0)})"
        ) from None
    try:
        os.write(fd, request)
    except OSError as e:
        if e.errno == errno.ENODEV:
            raise UsageError(f"{host.name} has no port {port}") from None
        raise UsageError(f"{host.name}:{port}: {os.strerror(e.errno or 0)}") from None
    finally:
        os.close(fd)


def lab_port(prefix: str, target: str, action: str, period: float = 2.0, count: int = 1) -> str:
    """Take a host port's link down, bring it up, or flap it `count` times (each flap one
    full down+up cycle of `period` seconds, half down, half up: decision 29); what was done,
    in one line."""
    name, port = parse_target(target)
    host = lab_host(prefix, name)
    if action in ("down", "up"):
        _write(host, port, action == "up")
        return f"lab port: {host.name}:{port} {action}"
    if period <= 0 or count < 1:
        raise UsageError("flap needs --period above 0 and --count of 1 or more")
    for _ in range(count):
        _write(host, port, False)
        time.sleep(period / 2)
        _write(host, port, True)
        time.sleep(period / 2)
    return f"lab port: {host.name}:{port} flapped {count} time(s), period {period:g} s"


#: `lab link` impairments: their name, the control file's field, whether a percentage.
IMPAIRMENTS = {"loss": "loss", "reorder": "reorder", "corrupt": "corrupt"}


def _percent(kind: str, text: str) -> float:
    try:
        value = float(text.removesuffix("%"))
    except ValueError:
        raise UsageError(f"{kind} {text}: not a percentage (as in 10%)") from None
    if not 0 <= value <= 100:
        raise UsageError(f"{kind} {text}: a percentage is from 0 to 100")
    return value


def _ms(text: str) -> float:
    try:
        value = float(text.removesuffix("ms"))
    except ValueError:
        raise UsageError(f"delay {text}: not a time in milliseconds (as in 50 or 50ms)") from None
    if not 0 <= value <= 1e6:
        raise UsageError(f"delay {text}: milliseconds from 0 to 1000000")
    return value


def _current(host: LabHost, port: int) -> dict:
    try:
        ports = json.loads((Path(host.mountpoint) / ".ipoibfs" / "ports").read_text())
    except (OSError, ValueError):
        raise UsageError(f"lab host {host.name} is not running") from None
    for entry in ports:
        if entry.get("port") == port:
            return entry.get("netem") or {}
    raise UsageError(f"{host.name} has no port {port}")


def lab_link(prefix: str, target: str, kind: str, values: list[str]) -> str:
    """Set one impairment of what a host port sends, keeping the others (`tc qdisc change`
    of a netem qdisc), or clear them all; what is set now, in one line."""
    name, port = parse_target(target)
    host = lab_host(prefix, name)
    if kind == "clear":
        if values:
            raise UsageError("clear takes no value")
        _request(host, port, {"op": "netem", "port": port})
        return f"lab link: {host.name}:{port} cleared"
    netem = _current(host, port)
    if kind == "delay":
        if not 1 <= len(values) <= 2:
            raise UsageError("delay takes MS and an optional JITTER (as in delay 50 10)")
        netem["delay_ms"] = _ms(values[0])
        netem["jitter_ms"] = _ms(values[1]) if len(values) == 2 else 0.0
    else:
        if len(values) != 1:
            raise UsageError(f"{kind} takes one percentage (as in {kind} 10%)")
        netem[IMPAIRMENTS[kind]] = _percent(kind, values[0])
    _request(host, port, {"op": "netem", "port": port, **netem})
    return f"lab link: {host.name}:{port} {Netem(**netem).describe()}"


def lab_sm(prefix: str, action: str) -> str:
    """Stop the lab's subnet manager, start it again, or both. Hosts keep their data paths
    while it is away, reconnect on their own and register again (LIDs kept, from its
    guid2lid): the client reregister event makes each rejoin its groups."""
    lab = _lab(prefix)
    running = lab.fabric()
    if running is not None:
        running.close()
    if action == "stop":
        if not stop_fabric(lab):
            raise UsageError("the lab's subnet manager is not running")
        return f"lab sm: stopped (pid {lab.fabric_pid})"
    if action == "start" and running is not None:
        raise UsageError(f"the lab's subnet manager is already running (pid {lab.fabric_pid})")
    stop_fabric(lab)
    start_fabric(lab)
    return f"lab sm: {'re' if action == 'restart' else ''}started (pid {lab.fabric_pid})"


def lab_kill(prefix: str, name: str) -> str:
    """A host dies (SIGKILL of its daemon): its interfaces vanish with the process, the
    subnet manager sees it leave, its peers' paths and connections to it time out. Its
    namespace stays, for `lab start`."""
    lab = _lab(prefix)
    host = lab_host(prefix, name, lab)
    daemon = running_daemon(host.mountpoint)
    if daemon is None:
        raise UsageError(f"lab host {host.name} is not running")
    with daemon:
        daemon.signal(signal.SIGKILL)
        daemon.wait(5)
    clear_dead_host(lab, host)
    return f"lab kill: {host.name} (pid {daemon.pid}) killed"


def lab_start(prefix: str, name: str) -> str:
    """A dead host comes back as `lab up` started it: same name, so the same GUIDs, and
    the same LIDs from the subnet manager's guid2lid; its addresses again."""
    lab = _lab(prefix)
    host = lab_host(prefix, name, lab)
    daemon = running_daemon(host.mountpoint)
    if daemon is not None:
        daemon.close()
        raise UsageError(f"lab host {host.name} is running (pid {daemon.pid})")
    if not host.job:
        raise UsageError(f"lab host {host.name} was started by an older ipoibfs: run "
                         f"`{lab.down_command}` and `lab up` again")  # fmt: skip
    clear_dead_host(lab, host)
    start_hosts([host.job], Progress("lab start", 1, "hosts started", stream=None))
    return f"lab start: {host.name} up"
