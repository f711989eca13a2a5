"""`ipoibfs lab`: a fabric and N hosts on one machine, each host in its own network namespace.

The lab's registry (/run/ipoibfs/[P-]lab.json) lists what `lab up` made, so `lab down`
removes exactly that, and a second `lab up` is refused. Every file is made with the state.py
primitives (fixed modes, no symlink followed, in root's 0755 directories), and a process is
signalled only once it is known to be the one the lab started: a host by its locked pid file
(state.running_daemon), the fabric by its start time and command line (state.find_process).
A host found dead (`lab status`, `lab down`) loses its dead mount, pid, netns and data-socket
files at once; its log stays until `lab down`, which removes every file of the lab.
"""

from __future__ import annotations

import glob
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import UsageError
from .state import (
    Process,
    check_prefix,
    find_process,
    open_append,
    open_dir,
    process_start_time,
    process_stopped,
    read_file,
    remove_dead_sockets,
    remove_file,
    running_daemon,
    state_file,
    write_file,
)

RUN_DIR = Path("/run/ipoibfs")
LAB_NET4 = "198.18.0"
LAB_NET6 = "fd18::"
DEFAULT_PARTITIONS = "# OpenSM's default without a file\nDefault=0x7fff, ipoib : ALL=full ;\n"
#: Up to this many hosts keep 198.18.0.<i>/24; larger labs number hosts in 198.18.0.0/16.
SMALL_LAB = 250
MAX_HOSTS = 1000


def host_addresses(index: int, n_hosts: int) -> tuple[str, str]:
    """Host `index`'s ib0 addresses (with their prefix length) in a lab of `n_hosts`
    (decision 31): up to SMALL_LAB hosts `198.18.0.<i>/24`, larger labs one /16 for the
    whole lab, 198.18.0.0 + i (198.18.1.4 is host 260); `fd18::<i>/64` at every size."""
    if n_hosts <= SMALL_LAB:
        v4 = f"{LAB_NET4}.{index}/24"
    else:
        v4 = f"{ipaddress.IPv4Address(f'{LAB_NET4}.0') + index}/16"
    return v4, f"{LAB_NET6}{index}/64"


def addressing(n_hosts: int) -> str:
    """How a lab of `n_hosts` numbers its hosts, as `lab status` and `lab up` say it."""
    if n_hosts <= SMALL_LAB:
        return f"hN at {LAB_NET4}.N/24 and {LAB_NET6}N/64"
    return f"hN at {LAB_NET4}.0/16 + N (h300 at 198.18.1.44) and {LAB_NET6}N/64, one prefix each"


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
    #: /proc/PID/stat's start time of the fabric process, so that a reused pid is not it.
    fabric_start: int | None = None

    @staticmethod
    def registry(prefix: str) -> Path:
        return RUN_DIR / f"{prefix}{'-' if prefix else ''}lab.json"

    def save(self) -> None:
        write_file(str(self.registry(self.prefix)), json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, prefix: str) -> Lab | None:
        path = cls.registry(check_prefix(prefix))
        text = read_file(str(path))
        if text is None:
            return None
        try:
            data = json.loads(text)
            hosts = [LabHost(**h) for h in data.pop("hosts")]
            return cls(**data, hosts=hosts)
        except (ValueError, TypeError, KeyError, AttributeError):
            raise UsageError(f"{path}: not a lab registry ipoibfs can read; remove it (and "
                             "what it started) by hand") from None  # fmt: skip

    @property
    def down_command(self) -> str:
        return down_command(self.prefix)

    def fabric(self) -> Process | None:
        """The lab's fabric process, if it still runs (and is the one `lab up` started)."""
        return find_process(self.fabric_pid, self.fabric_start, ("fabric", "serve"))


def down_command(prefix: str) -> str:
    return "ipoibfs lab down" + (f" --prefix {prefix}" if prefix else "")


def labs_up() -> list[str]:
    """The prefixes of the labs with a registry ('' for the default lab)."""
    found = []
    for registry in sorted(RUN_DIR.glob("*lab.json")):
        if registry.name == "lab.json":
            found.append("")
        elif registry.name.endswith("-lab.json"):
            found.append(registry.name.removesuffix("-lab.json"))
    return found


def no_lab(prefix: str) -> UsageError:
    """`no lab is up`, naming the labs that are, with the option that reaches them."""
    others = [p for p in labs_up() if p != prefix]
    text = f"no lab with prefix '{prefix}' is up" if prefix else "no lab is up"
    if others:
        names = ", ".join(f"--prefix {p}" if p else "the default lab (no --prefix)"
                          for p in others)  # fmt: skip
        text += f" (up: {names})"
    return UsageError(text)


def find_host(name: str) -> LabHost | None:
    """A host of any lab that is up, by its name (`h1`, or `P-h1` in a lab with a prefix)."""
    for registry in sorted(RUN_DIR.glob("*lab.json")):
        try:
            hosts = json.loads(read_file(str(registry)) or "")["hosts"]
        except (OSError, ValueError, KeyError, TypeError):
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
            lines = (read_file(str(log)) or "").strip().splitlines()
            raise UsageError(f"the fabric did not start: {lines[-1] if lines else proc.returncode}")
        if _listening(path):
            return
        time.sleep(0.05)
    raise UsageError("the fabric did not start within 10 s")


def _alive(lab: Lab) -> bool:
    """Whether anything the lab started still runs: its fabric, or one of its hosts."""
    for found in [lab.fabric(), *(running_daemon(h.mountpoint) for h in lab.hosts)]:
        if found is not None:
            found.close()
            return True
    return False


def hca_profiles(specs: list[str], names: list[str], prefix: str = "") -> dict[str, str]:
    """`lab up --hca`: PROFILE for every host, HOST=PROFILE for one (the later wins); HOST
    as `lab status` names it, or hN with a prefix."""
    from .fabric.device import HCA_PROFILES

    chosen = dict.fromkeys(names, "ipoibfs")
    for spec in specs:
        host, sep, profile = spec.rpartition("=")
        if profile not in HCA_PROFILES:
            choices = ", ".join(HCA_PROFILES)
            raise UsageError(f"--hca {spec}: unknown HCA profile '{profile}' ({choices})")
        if sep and prefix and f"{prefix}-{host}" in chosen:
            host = f"{prefix}-{host}"
        if not sep:
            chosen = dict.fromkeys(names, profile)
        elif host in chosen:
            chosen[host] = profile
        else:
            raise UsageError(f"--hca {spec}: no such lab host (hosts are {names[0]}…)")
    return chosen


def no_offload_hosts(specs: list[str], names: list[str], prefix: str = "") -> set[str]:
    """`lab up --no-offload [HOST]`: without HOST every host, else that one (as `lab status`
    names it, or hN with a prefix)."""
    chosen: set[str] = set()
    for host in specs:
        if not host:
            chosen.update(names)
        elif host in names:
            chosen.add(host)
        elif prefix and f"{prefix}-{host}" in names:
            chosen.add(f"{prefix}-{host}")
        else:
            raise UsageError(f"--no-offload {host}: no such lab host (hosts are {names[0]}…)")
    return chosen


def lab_up(n_hosts: int, prefix: str, partitions: str | None, ports: int,
           no_cm: list[str], debug: bool = False, hca: list[str] | None = None,
           no_offload: list[str] | None = None) -> Lab:  # fmt: skip
    check_prefix(prefix)
    existing_lab = Lab.load(prefix)
    if existing_lab is not None:
        if _alive(existing_lab):
            label = f" with prefix '{prefix}'" if prefix else ""
            raise UsageError(f"a lab{label} is already up: run `{down_command(prefix)}` first")
        lab_down(prefix)  # everything it started is dead: its leftovers go first
    if not 1 <= n_hosts <= 250:
        raise UsageError("--hosts must be between 1 and 250")
    names = [host_name(prefix, i) for i in range(1, n_hosts + 1)]
    for name in no_cm:
        if name not in names:
            raise UsageError(f"--no-cm {name}: no such lab host (hosts are {names[0]}…)")
    profiles = hca_profiles(hca or [], names, prefix)
    plain = no_offload_hosts(no_offload or [], names, prefix)
    if partitions:
        from .fabric.partitions import load_partitions

        load_partitions(partitions)  # refuse a bad file before anything starts
    existing = set(_run("ip", "netns", "list").stdout.split())
    for name in names:
        if name in existing:
            raise UsageError(f"network namespace {name} already exists")
    os.close(open_dir(str(RUN_DIR)))
    stem = f"{prefix}-" if prefix else ""
    address = str(RUN_DIR / f"{stem}fabric.sock")
    if _listening(address):
        raise UsageError(f"fabric address {address} is already in use")
    # The fabric always has a file, so that `lab partitions` can replace it later.
    lab_partitions = str(RUN_DIR / f"{stem}partitions.conf")
    write_file(lab_partitions, Path(partitions).read_bytes() if partitions else DEFAULT_PARTITIONS)
    log = RUN_DIR / f"{stem}fabric.log"
    # The SM's LIDs (OpenSM's guid2lid), so that a restarted SM gives each port its LID
    # again; a new lab starts without.
    guid2lid = RUN_DIR / f"{stem}guid2lid"
    guid2lid.unlink(missing_ok=True)
    cmd = [*_ipoibfs(), "fabric", "serve", address, "--partitions", lab_partitions,
           "--guid2lid", str(guid2lid)]  # fmt: skip
    out = open_append(str(log), fresh=True)
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)  # fmt: skip
    finally:
        os.close(out)
    lab = Lab(prefix, address, proc.pid, lab_partitions, fabric_start=process_start_time(proc.pid))
    lab.save()
    try:
        _wait_for_socket(address, proc, log)
        for i, name in enumerate(names, 1):
            _add_host(lab, i, name, ports, name in no_cm, debug, profiles[name],
                      offload=name not in plain)  # fmt: skip
    except BaseException:
        lab_down(prefix)
        raise
    return lab


def _add_host(lab: Lab, index: int, name: str, ports: int, no_cm: bool, debug: bool,
              hca: str = "ipoibfs", offload: bool = True) -> None:  # fmt: skip
    _check(_run("ip", "netns", "add", name), f"{name}: ip netns add")
    mountpoint = RUN_DIR / name
    os.close(open_dir(str(mountpoint)))
    lab.hosts.append(LabHost(name, name, str(mountpoint), index))
    lab.save()
    cmd = [*_ipoibfs(), "mount", "--netns", name, "--fabric", lab.fabric_address, "--name",
           name, "--ports", str(ports), str(mountpoint)]  # fmt: skip
    if no_cm:
        cmd.insert(-1, "--no-cm")
    if debug:
        cmd.insert(-1, "--debug")
    if not offload:
        cmd.insert(-1, "--no-offload")
    cmd[-1:-1] = ["--hca", hca]
    _check(_run(*cmd), f"{name}: mount")
    ip = ("ip", "-n", name)
    _check(_run(*ip, "link", "set", "lo", "up"), f"{name}: lo up")
    _check(_run(*ip, "addr", "add", f"{LAB_NET4}.{index}/24", "dev", "ib0"), f"{name}: address")
    _check(_run(*ip, "addr", "add", f"{LAB_NET6}{index}/64", "dev", "ib0", "nodad"),
           f"{name}: address")  # fmt: skip
    _check(_run(*ip, "link", "set", "ib0", "up"), f"{name}: ib0 up")


def _data_sockets(lab: Lab, host: LabHost) -> list[str]:
    """The host's data sockets next to the fabric's (`<fabric>.<host>.<pid>.p<N>`)."""
    return glob.glob(glob.escape(f"{lab.fabric_address}.{host.name}.") + "*")


def _clear_dead_host(lab: Lab, host: LabHost, alive: bool = False) -> None:
    """What a killed host left: its dead mount, pid and netns files, and its data sockets
    (if the host runs, only the sockets nobody is bound to). The log stays, for `lab down`
    to remove with the lab."""
    if alive:
        remove_dead_sockets(_data_sockets(lab, host))
        return
    for path in _data_sockets(lab, host):
        remove_file(path)
    from .host import is_stale_mount, unmount_lazy

    if is_stale_mount(host.mountpoint):
        unmount_lazy(host.mountpoint)
    for kind in ("pid", "netns"):
        remove_file(state_file(host.mountpoint, kind))


def lab_down(prefix: str) -> Lab:
    """Stop every host (SIGTERM, as `umount` does; SIGKILL after 10 s) and the fabric, and
    remove the mounts, namespaces, sockets, logs and files of the lab, a killed host's too."""
    lab = Lab.load(prefix)
    if lab is None:
        raise no_lab(prefix)
    daemons = [running_daemon(host.mountpoint) for host in lab.hosts]
    for daemon in daemons:
        if daemon is not None:
            daemon.signal(signal.SIGTERM)  # all at once: they stop in parallel
    deadline = time.monotonic() + 10
    for daemon in daemons:
        if daemon is not None:
            with daemon:
                if not daemon.wait(deadline - time.monotonic()):
                    daemon.signal(signal.SIGKILL)
                    daemon.wait(5)
    for host in lab.hosts:
        _clear_dead_host(lab, host)
        if os.path.ismount(host.mountpoint):
            _run("fusermount3", "-u", "-z", host.mountpoint)
        _run("ip", "netns", "del", host.netns)
        for kind in ("log", "log.1"):
            remove_file(state_file(host.mountpoint, kind))
        try:
            os.rmdir(host.mountpoint)
        except OSError:
            pass
    fabric = lab.fabric()
    if fabric is not None:
        with fabric:
            fabric.stop(timeout=5, kill_after=5)
    stem = f"{prefix}-" if prefix else ""
    leftovers = [lab.fabric_address, lab.partitions, str(RUN_DIR / f"{stem}fabric.log"),
                 str(RUN_DIR / f"{stem}guid2lid")]  # fmt: skip
    leftovers += glob.glob(glob.escape(lab.fabric_address) + ".*")  # hosts' data sockets
    for path in leftovers:
        if path:
            remove_file(path)
    remove_file(str(Lab.registry(prefix)))
    return lab


def lab_partitions(prefix: str, path: str) -> None:
    """Swap in a new partitions file: the fabric re-reads it on SIGHUP, as OpenSM would."""
    lab = Lab.load(prefix)
    if lab is None:
        raise no_lab(prefix)
    if lab.partitions is None:
        raise UsageError("this lab's fabric was started without a partitions file")
    from .fabric.partitions import load_partitions

    load_partitions(path)
    fabric = lab.fabric()
    if fabric is None:
        raise UsageError(f"the lab's fabric (pid {lab.fabric_pid}) is not running: run "
                         f"`{lab.down_command}`")  # fmt: skip
    with fabric:
        write_file(lab.partitions, Path(path).read_bytes())
        fabric.signal(signal.SIGHUP)


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


def _hca_ports(mountpoint: Path) -> Path:
    """The ports/ of the host's HCA, whatever its profile names it (ipoibfs0, mlx5_0)."""
    hcas = sorted(glob.glob(str(mountpoint / "class" / "infiniband" / "*")))
    return Path(hcas[0] if hcas else mountpoint / "class" / "infiniband" / "-") / "ports"


def lab_status(prefix: str) -> str:
    """The table of `lab status`. A host whose daemon is gone shows as dead, and what it left
    (dead mount, pid, netns, data sockets) is removed; a fabric that is gone is said below."""
    lab = Lab.load(prefix)
    if lab is None:
        raise no_lab(prefix)
    rows = [("HOST", "PORT", "LID", "GID", "IFACE", "CARRIER", "PKEY", "MODE", "PEERS")]
    dead, stopped = set(), set()
    for host in lab.hosts:
        daemon = running_daemon(host.mountpoint)
        if daemon is None:
            dead.add(host.name)
        else:
            if process_stopped(daemon.pid):
                stopped.add(host.name)  # its mirror cannot answer: not read at all
            daemon.close()
        _clear_dead_host(lab, host, alive=daemon is not None)
    hosts_by_gid = {}
    for host in lab.hosts:
        if host.name in dead or host.name in stopped:
            continue
        hca = _hca_ports(Path(host.mountpoint))
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
        if host.name in stopped:
            rows.append((host.name, "-", "-", "-", "-", "stopped", "-", "-", "(daemon stopped)"))
            continue
        try:
            if host.name in dead:
                raise FileNotFoundError
            hca = _hca_ports(mp)
            ports = sorted(os.listdir(hca), key=int)
            ifaces = sorted(os.listdir(mp / "class" / "net"))
        except OSError:
            rows.append((host.name, "-", "-", "-", "-", "dead", "-", "-", "(daemon not running)"))
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
    table = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                      for r in rows)  # fmt: skip
    notes = []
    fabric = lab.fabric()
    if fabric is None:
        notes.append(f"the fabric (pid {lab.fabric_pid}) is not running")
    else:
        fabric.close()
    if dead:
        notes.append(f"{len(dead)} host(s) dead: their logs stay until `{lab.down_command}`")
    return table + "".join(f"\n({note})" for note in notes)
