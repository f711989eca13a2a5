"""Faults injected into a running lab: `lab port HOST[:PORT] down|up|flap`.

A port's link is the host daemon's to change (it owns the HCA and the driver that reacts),
so the command writes the request to the host's control file `.ipoibfs/ports` and the
daemon does the rest: the port's state and phys_state, the driver's port event (carrier,
joins, paths), the kernel's messages.
"""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

from .errors import UsageError
from .lab import Lab, LabHost, no_lab


def lab_host(prefix: str, name: str) -> LabHost:
    """A host of the lab with this prefix, by the name `lab status` prints (`P-h2`) or, with
    a prefix, the short one (`h2`) too (decision 28)."""
    lab = Lab.load(prefix)
    if lab is None:
        raise no_lab(prefix)
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
    path = Path(host.mountpoint) / ".ipoibfs" / "ports"
    request = json.dumps({"op": "link", "port": port, "up": up}).encode()
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
