"""`ipoibfs lab`: a fabric and N hosts on one machine, each host in its own network namespace.

The lab's registry (/run/ipoibfs/<prefix>lab.json) lists what `lab up` made, so `lab down`
removes exactly that, and a second `lab up` is refused.
"""

from __future__ import annotations

import glob
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import UsageError
from .state import pid_alive, state_file

RUN_DIR = Path("/run/ipoibfs")
LAB_NET4 = "198.18.0"
LAB_NET6 = "fd18::"
DEFAULT_PARTITIONS = "# OpenSM's default without a file\nDefault=0x7fff, ipoib : ALL=full ;\n"


@dataclass
class LabHost:
    name: str
    netns: str
    mountpoint: str
    index: int


@dataclass
class Lab:
    prefix: str
    fabric_address: str
    fabric_pid: int
    partitions: str | None
    hosts: list[LabHost] = field(default_factory=list)

    @staticmethod
    def registry(prefix: str) -> Path:
        return RUN_DIR / f"{prefix}{'-' if prefix else ''}lab.json"

    def save(self) -> None:
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        self.registry(self.prefix).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, prefix: str) -> Lab | None:
        try:
            data = json.loads(cls.registry(prefix).read_text())
        except FileNotFoundError:
            return None
        hosts = [LabHost(**h) for h in data.pop("hosts")]
        return cls(**data, hosts=hosts)


def find_host(name: str) -> LabHost | None:
    """A host of any lab that is up, by its name (`h1`, or `P-h1` in a lab with a prefix)."""
    for registry in sorted(RUN_DIR.glob("*lab.json")):
        try:
            hosts = json.loads(registry.read_text())["hosts"]
        except (OSError, ValueError, KeyError):
            continue
        for host in hosts:
            if host.get("name") == name:
                return LabHost(**host)
    return None


def _ipoibfs() -> list[str]:
    return [sys.executable, "-m", "ipoibfs"]


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True)


def _check(result: subprocess.CompletedProcess, what: str) -> None:
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        message = detail[-1] if detail else f"exit status {result.returncode}"
        raise UsageError(f"{what}: {message.removeprefix('ipoibfs: ')}")


def host_name(prefix: str, index: int) -> str:
    return f"{prefix}-h{index}" if prefix else f"h{index}"


def _listening(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _wait_for_socket(path: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            lines = log.read_text().strip().splitlines() if log.exists() else []
            raise UsageError(f"the fabric did not start: {lines[-1] if lines else proc.returncode}")
        if _listening(path):
            return
        time.sleep(0.05)
    raise UsageError("the fabric did not start within 10 s")


def lab_up(n_hosts: int, prefix: str, partitions: str | None, ports: int,
           no_cm: list[str], debug: bool = False) -> Lab:  # fmt: skip
    if Lab.load(prefix) is not None:
        label = f" with prefix '{prefix}'" if prefix else ""
        raise UsageError(f"a lab{label} is already up: run `ipoibfs lab down` first")
    if not 1 <= n_hosts <= 250:
        raise UsageError("--hosts must be between 1 and 250")
    names = [host_name(prefix, i) for i in range(1, n_hosts + 1)]
    for name in no_cm:
        if name not in names:
            raise UsageError(f"--no-cm {name}: no such lab host (hosts are {names[0]}…)")
    if partitions:
        from .fabric.partitions import load_partitions

        load_partitions(partitions)  # refuse a bad file before anything starts
    existing = set(_run("ip", "netns", "list").stdout.split())
    for name in names:
        if name in existing:
            raise UsageError(f"network namespace {name} already exists")
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    stem = f"{prefix}-" if prefix else ""
    address = str(RUN_DIR / f"{stem}fabric.sock")
    if _listening(address):
        raise UsageError(f"fabric address {address} is already in use")
    # The fabric always has a file, so that `lab partitions` can replace it later.
    lab_partitions = str(RUN_DIR / f"{stem}partitions.conf")
    if partitions:
        shutil.copyfile(partitions, lab_partitions)
    else:
        Path(lab_partitions).write_text(DEFAULT_PARTITIONS)
    log = RUN_DIR / f"{stem}fabric.log"
    # The SM's LIDs (OpenSM's guid2lid), so that a restarted SM gives each port its LID
    # again; a new lab starts without.
    guid2lid = RUN_DIR / f"{stem}guid2lid"
    guid2lid.unlink(missing_ok=True)
    cmd = [*_ipoibfs(), "fabric", "serve", address, "--partitions", lab_partitions,
           "--guid2lid", str(guid2lid)]  # fmt: skip
    with open(log, "a") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)  # fmt: skip
    lab = Lab(prefix, address, proc.pid, lab_partitions)
    lab.save()
    try:
        _wait_for_socket(address, proc, log)
        for i, name in enumerate(names, 1):
            _add_host(lab, i, name, ports, name in no_cm, debug)
    except BaseException:
        lab_down(prefix)
        raise
    return lab


def _add_host(lab: Lab, index: int, name: str, ports: int, no_cm: bool, debug: bool) -> None:
    _check(_run("ip", "netns", "add", name), f"{name}: ip netns add")
    mountpoint = RUN_DIR / name
    mountpoint.mkdir(exist_ok=True)
    lab.hosts.append(LabHost(name, name, str(mountpoint), index))
    lab.save()
    cmd = [*_ipoibfs(), "mount", "--netns", name, "--fabric", lab.fabric_address, "--name",
           name, "--ports", str(ports), str(mountpoint)]  # fmt: skip
    if no_cm:
        cmd.insert(-1, "--no-cm")
    if debug:
        cmd.insert(-1, "--debug")
    _check(_run(*cmd), f"{name}: mount")
    ip = ("ip", "-n", name)
    _check(_run(*ip, "link", "set", "lo", "up"), f"{name}: lo up")
    _check(_run(*ip, "addr", "add", f"{LAB_NET4}.{index}/24", "dev", "ib0"), f"{name}: address")
    _check(_run(*ip, "addr", "add", f"{LAB_NET6}{index}/64", "dev", "ib0", "nodad"),
           f"{name}: address")  # fmt: skip
    _check(_run(*ip, "link", "set", "ib0", "up"), f"{name}: ib0 up")


def lab_down(prefix: str) -> Lab:
    lab = Lab.load(prefix)
    if lab is None:
        label = f" with prefix '{prefix}'" if prefix else ""
        raise UsageError(f"no lab{label} is up")
    for host in lab.hosts:
        pid_file = Path(state_file(host.mountpoint, "pid"))
        _run(*_ipoibfs(), "umount", host.mountpoint)
        _kill(_read_pid(pid_file))  # a daemon that did not stop, or a killed one's leftovers
        _run("fusermount3", "-u", "-z", host.mountpoint)
        _run("ip", "netns", "del", host.netns)
        for kind in ("pid", "log", "netns"):
            Path(state_file(host.mountpoint, kind)).unlink(missing_ok=True)
        try:
            os.rmdir(host.mountpoint)
        except OSError:
            pass
    _kill(lab.fabric_pid, signal.SIGTERM)
    _kill(lab.fabric_pid)
    stem = f"{prefix}-" if prefix else ""
    leftovers = [lab.fabric_address, lab.partitions, str(RUN_DIR / f"{stem}fabric.log"),
                 str(RUN_DIR / f"{stem}guid2lid")]  # fmt: skip
    leftovers += glob.glob(glob.escape(lab.fabric_address) + ".*")  # hosts' data sockets
    for path in leftovers:
        if path:
            try:
                os.unlink(path)
            except OSError:
                pass
    Lab.registry(prefix).unlink(missing_ok=True)
    return lab


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def _kill(pid: int | None, sig: int = signal.SIGKILL) -> None:
    """Send `sig`, then wait up to 5 s for the process to go."""
    if pid is None or not pid_alive(pid):
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.05)


def lab_partitions(prefix: str, path: str) -> None:
    """Swap in a new partitions file: the fabric re-reads it on SIGHUP, as OpenSM would."""
    lab = Lab.load(prefix)
    if lab is None:
        raise UsageError("no lab is up")
    if lab.partitions is None:
        raise UsageError("this lab's fabric was started without a partitions file")
    from .fabric.partitions import load_partitions

    load_partitions(path)
    shutil.copyfile(path, lab.partitions)
    os.kill(lab.fabric_pid, signal.SIGHUP)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return "-"


def _peers(path_file: Path, hosts_by_gid: dict[bytes, str]) -> str:
    """The hosts `<if>_path` has complete paths to, each with RC or UD."""
    peers = []
    for entry in _read(path_file).split("\n\n"):
        fields = dict(line.strip().split(":", 1) for line in entry.splitlines() if ":" in line)
        if fields.get("complete", "").strip() != "yes":
            continue
        try:
            gid = ipaddress.IPv6Address(fields.get("GID", "").strip()).packed
        except ValueError:
            continue
        transport = "RC" if fields.get("RC", "").strip() == "yes" else "UD"
        peers.append(f"{hosts_by_gid.get(gid, fields['GID'].strip())} {transport}")
    return ", ".join(peers) or "-"


def lab_status(prefix: str) -> str:
    lab = Lab.load(prefix)
    if lab is None:
        raise UsageError("no lab is up")
    rows = [("HOST", "PORT", "LID", "GID", "IFACE", "CARRIER", "PKEY", "MODE", "PEERS")]
    hosts_by_gid = {}
    for host in lab.hosts:
        hca = Path(host.mountpoint) / "class" / "infiniband" / "ipoibfs0" / "ports"
        try:
            gids = [_read(gid) for gid in hca.glob("*/gids/0")]
        except OSError:
            continue  # the daemon is not running
        for gid in gids:
            try:
                hosts_by_gid[ipaddress.IPv6Address(gid).packed] = host.name
            except ValueError:
                pass  # unreadable ("-"): the daemon is going away
    for host in lab.hosts:
        mp = Path(host.mountpoint)
        hca = mp / "class" / "infiniband" / "ipoibfs0" / "ports"
        try:
            ports = sorted(os.listdir(hca), key=int)
            ifaces = sorted(os.listdir(mp / "class" / "net"))
        except OSError:
            rows.append((host.name, "-", "-", "-", "(daemon not running)") + ("-",) * 4)
            continue
        for port in ports:
            lid = _read(hca / port / "lid")
            gid = _read(hca / port / "gids" / "0")
            for iface in ifaces:
                dev = mp / "class" / "net" / iface
                parent = _read(dev / "parent")
                owner = mp / "class" / "net" / parent if parent != "-" else dev
                if _read(owner / "dev_port") != str(int(port) - 1):
                    continue
                carrier = {"1": "yes", "0": "no"}.get(_read(dev / "carrier"), "down")
                peers = _peers(mp / "kernel" / "debug" / "ipoib" / f"{iface}_path", hosts_by_gid)
                rows.append((host.name, port, lid, gid, iface, carrier, _read(dev / "pkey"),
                             _read(dev / "mode"), peers))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)  # fmt: skip
