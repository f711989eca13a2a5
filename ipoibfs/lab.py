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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TextIO

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

if TYPE_CHECKING:
    from .fabric.topology import CaNode

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


def progress_line(verb: str, what: str, elapsed: float) -> str:
    """`lab up: 37/256 hosts started, 12.3 s`."""
    return f"{verb}: {what}, {elapsed:.1f} s"


class Progress:
    """What `lab up`/`lab down` have done so far, on `stream` (stderr; None: silent). On a
    terminal one line, rewritten as hosts start or stop; else one line per phase, so that
    logs stay readable."""

    def __init__(self, verb: str, total: int, noun: str, stream: TextIO | None,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.verb, self.total, self.noun = verb, total, noun
        self.stream = stream
        self.tty = stream is not None and stream.isatty()
        self.clock = clock
        self.started = clock()
        self._shown = False  # a terminal line is showing

    def elapsed(self) -> float:
        return self.clock() - self.started

    def count(self, done: int) -> str:
        return f"{done}/{self.total} {self.noun}"

    def _write(self, text: str) -> None:
        assert self.stream is not None
        self.stream.write(text)
        self.stream.flush()

    def step(self, done: int) -> None:
        """`done` hosts so far: the terminal's line follows; a log sees it at the phase."""
        if self.tty:
            self._write("\r" + progress_line(self.verb, self.count(done), self.elapsed())
                        + "\x1b[K")  # fmt: skip
            self._shown = True

    def phase(self, what: str) -> None:
        """A phase ended (`fabric started`, `64/64 hosts started`)."""
        if self.stream is None:
            return
        line = progress_line(self.verb, what, self.elapsed())
        if self.tty:
            self._write("\r" + line + "\x1b[K")
            self._shown = True
        else:
            self._write(line + "\n")

    def end(self) -> None:
        """Clear the terminal's line, for the summary to take its place."""
        if self._shown:
            self._write("\r\x1b[K")
            self._shown = False

    def abandon(self) -> None:
        """A failure: the terminal's line stays, and what follows starts a line of its own."""
        if self._shown:
            self._write("\n")
            self._shown = False


def host_list(names: list[str]) -> str:
    """`h1, h2, h3`, or `h1 … h256` for a long list."""
    return ", ".join(names) if len(names) <= 8 else f"{names[0]} … {names[-1]}"


@dataclass
class LabHost:
    name: str
    netns: str
    mountpoint: str
    index: int
    #: How `lab up` started it (its warm parent's job: mount arguments, `ip` lines), for
    #: `lab start` to start it again the same way.
    job: dict = field(default_factory=dict)


@dataclass
class Lab:
    prefix: str
    fabric_address: str
    fabric_pid: int
    partitions: str | None
    hosts: list[LabHost] = field(default_factory=list)
    #: /proc/PID/stat's start time of the fabric process, so that a reused pid is not it.
    fabric_start: int | None = None
    #: The fabric's ibnetdiscover topology file (`--switches`, `--topology`); None: one switch.
    topology: str | None = None

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


def topology_cas(path: str) -> list[CaNode]:
    """The hosts of a topology file, by LID (lab host i is the i-th)."""
    from .fabric.service import load_topology

    cas = load_topology(path).cas
    if not cas:
        raise UsageError(f"topology file {path}: no CA to make a host of")
    return cas


def lab_topology(names: list[str], ports: int, switches: int | None,
                 topology: tuple[str, list[CaNode]] | None,
                 profiles: dict[str, str]) -> tuple[list[CaNode], str | None]:  # fmt: skip
    """The lab's hosts as the fabric has them (GUIDs, descriptions, LIDs), and the
    ibnetdiscover file the fabric is started with (None: the default one switch). A
    topology file (its path and CAs) may name more CAs than there are hosts: the others
    stay down, their switch ports Down/Polling, as hosts that are powered off."""
    from .fabric import topology as topo

    if topology is not None:
        path, cas = topology
        if len(cas) < len(names):
            raise UsageError(f"--hosts {len(names)}, but {path} has {len(cas)} CA(s)")
        return cas[: len(names)], Path(path).read_text(errors="replace")
    cas = _lab_cas(names, ports, topo.SM_LID + (switches or 0), profiles)
    if switches is None:
        return cas, None
    tree = topo.tree(switches, [[c.guid + p for p in range(1, ports + 1)] for c in cas])
    return cas, topo.format_ibnetdiscover(tree, cas)


def lab_up(n_hosts: int | None, prefix: str, partitions: str | None, ports: int,
           no_cm: list[str], debug: bool = False, hca: list[str] | None = None,
           no_offload: list[str] | None = None, switches: int | None = None,
           topology: str | None = None,
           progress: Progress | None = None) -> Lab:  # fmt: skip
    progress = progress or Progress("lab up", 0, "hosts started", stream=None)
    check_prefix(prefix)
    if switches is not None and topology is not None:
        raise UsageError("--switches and --topology: the file says what the switches are")
    file = None if topology is None else (topology, topology_cas(topology))
    if n_hosts is None:
        if file is None:
            raise UsageError("--hosts N is needed (or --topology FILE)")
        n_hosts = len(file[1])
    progress.total = n_hosts
    existing_lab = Lab.load(prefix)
    if existing_lab is not None:
        if _alive(existing_lab):
            label = f" with prefix '{prefix}'" if prefix else ""
            raise UsageError(f"a lab{label} is already up: run `{down_command(prefix)}` first")
        lab_down(prefix)  # everything it started is dead: its leftovers go first
    if not 1 <= n_hosts <= MAX_HOSTS:
        raise UsageError(f"--hosts must be between 1 and {MAX_HOSTS}")
    names = [host_name(prefix, i) for i in range(1, n_hosts + 1)]
    for name in no_cm:
        if name not in names:
            raise UsageError(f"--no-cm {name}: no such lab host (hosts are {names[0]}…)")
    profiles = hca_profiles(hca or [], names, prefix)
    plain = no_offload_hosts(no_offload or [], names, prefix)
    cas, topology_text = lab_topology(names, ports, switches, file, profiles)
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
    # The SM's LIDs (OpenSM's guid2lid), so that a restarted SM gives each port its LID
    # again; a new lab's are decided here (_lab_cas), so hosts starting in parallel get them.
    write_file(str(RUN_DIR / f"{stem}guid2lid"), _lab_lids(cas))
    lab = Lab(prefix, address, 0, lab_partitions)
    if topology_text is not None:
        lab.topology = str(RUN_DIR / f"{stem}topology")
        write_file(lab.topology, topology_text)
    try:
        start_fabric(lab, fresh_log=True)
        progress.phase("fabric started")
        # Every host is in the registry before any starts, so that `lab down` (and the
        # cleanup below) finds whatever a half-started one left.
        lab.hosts = [LabHost(name, name, str(RUN_DIR / name), i) for i, name in enumerate(names, 1)]
        lab.save()
        for host, ca in zip(lab.hosts, cas, strict=True):
            host.job = _host_job(lab, host, n_hosts, ports, host.name in no_cm, debug,
                                 profiles[host.name], offload=host.name not in plain,
                                 ca=ca if topology is not None else None)  # fmt: skip
        lab.save()
        jobs = [host.job for host in lab.hosts]
        start_hosts(jobs, progress)
        progress.phase(progress.count(len(jobs)))
    except BaseException:
        progress.abandon()
        lab_down(prefix)
        raise
    return lab


def start_fabric(lab: Lab, *, fresh_log: bool = False) -> None:
    """Start the lab's fabric (`fabric serve` with its partitions file and guid2lid, so
    that each port gets its LID again), record it in the registry and wait until it
    listens; UsageError with its last log line if it does not."""
    stem = f"{lab.prefix}-" if lab.prefix else ""
    log = RUN_DIR / f"{stem}fabric.log"
    cmd = [*_ipoibfs(), "fabric", "serve", lab.fabric_address, "--guid2lid",
           str(RUN_DIR / f"{stem}guid2lid")]  # fmt: skip
    if lab.partitions:
        cmd += ["--partitions", lab.partitions]
    if lab.topology:
        cmd += ["--topology", lab.topology]
    out = open_append(str(log), fresh=fresh_log)
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)  # fmt: skip
    finally:
        os.close(out)
    lab.fabric_pid, lab.fabric_start = proc.pid, process_start_time(proc.pid)
    lab.save()
    _wait_for_socket(lab.fabric_address, proc, log)


def stop_fabric(lab: Lab) -> bool:
    """Stop the lab's fabric (SIGTERM, SIGKILL after 5 s); False if it was not running."""
    fabric = lab.fabric()
    if fabric is None:
        return False
    with fabric:
        fabric.stop(timeout=5, kill_after=5)
    return True


def _lab_lids(cas: list[CaNode]) -> str:
    """The guid2lid file that gives the hosts' ports their LIDs."""
    from .fabric.sm import format_guid2lid

    return format_guid2lid({c.guid + n: lid for c in cas for n, lid in enumerate(c.lids, 1)})


def _lab_cas(names: list[str], ports: int, last_switch_lid: int,
             profiles: dict[str, str]) -> list[CaNode]:  # fmt: skip
    """The lab's hosts, decided before any starts: hosts start in parallel and join in any
    order, yet host i's port p has LID last_switch_lid + (i-1)*P + p, as if they had joined
    one by one after the switches."""
    from .fabric.device import hca_profile, node_guid_for
    from .fabric.topology import CaNode

    cas = []
    for i, name in enumerate(names):
        first = last_switch_lid + i * ports
        desc = f"{name} {hca_profile(profiles[name]).name}".encode()
        cas.append(
            CaNode(node_guid_for(name), ports, desc, tuple(range(first + 1, first + ports + 1)))
        )
    return cas


#: Hosts the warm parent starts at once: each waits on the fabric and its netns worker part
#: of the time, so a few more than the CPUs keep them busy.
PARALLEL = 8


def _host_job(lab: Lab, host: LabHost, n_hosts: int, ports: int, no_cm: bool, debug: bool,
              hca: str = "ipoibfs", offload: bool = True,
              ca: CaNode | None = None) -> dict:  # fmt: skip
    """What the warm parent does for one host: the `mount` arguments, the `ip -batch` lines;
    a topology file's CA gives the HCA its GUID, description and ports."""
    if ca is not None:
        ports = ca.ports
    argv = ["mount", "--netns", host.netns, "--fabric", lab.fabric_address, "--name",
            host.name, "--ports", str(ports), "--hca", hca]  # fmt: skip
    if ca is not None:
        argv += ["--guid", f"{ca.guid:016x}", "--node-desc", ca.desc.decode(errors="replace")]
    if no_cm:
        argv.append("--no-cm")
    if debug:
        argv.append("--debug")
    if not offload:
        argv.append("--no-offload")
    v4, v6 = host_addresses(host.index, n_hosts)
    ip = [("lo up", "link set lo up"), ("address", f"addr add {v4} dev ib0"),
          ("address", f"addr add {v6} dev ib0 nodad"), ("ib0 up", "link set ib0 up")]  # fmt: skip
    return {"name": host.name, "netns": host.netns, "mountpoint": host.mountpoint,
            "argv": [*argv, host.mountpoint], "ip": ip}  # fmt: skip


def start_hosts(jobs: list[dict], progress: Progress) -> None:
    """Start the hosts from one warm parent (`ipoibfs lab mount`, which has imported
    everything once and forks each host), PARALLEL at a time. The first failure stops it
    (the hosts already going finish) and is raised once the parent has exited."""
    proc = subprocess.Popen([*_ipoibfs(), "lab", "mount"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    error = None
    try:
        proc.stdin.write(json.dumps({"jobs": jobs, "parallel": PARALLEL}))
        proc.stdin.close()
        done = 0
        for line in proc.stdout:
            result = json.loads(line)
            if result["error"]:
                error = error or result["error"]
            else:
                done += 1
                progress.step(done)
    finally:
        # Interrupted: the parent starts no more hosts, and those going finish (their
        # daemons write their pid files) before `lab down` looks for them.
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait()
    if error:
        raise UsageError(error)
    if proc.returncode != 0 or done != len(jobs):
        raise UsageError(f"the hosts' parent failed (exit status {proc.returncode})")


def serve_hosts(mount: Callable[[list[str]], object],
                usage_error: Callable[[BaseException], Exception | None]) -> int:  # fmt: skip
    """`ipoibfs lab mount`, run by `lab up`: read the hosts to start (JSON on stdin), start
    them PARALLEL at a time, each in a forked worker, and report each (a JSON line on
    stdout). Everything a host daemon needs is imported here once, and frozen out of the
    garbage collector's reach, so that the forked daemons share those pages. Daemons are
    forked by the worker as `mount` forks them, so each is a daemon of its own (session,
    pid file, log, signals); they keep this command line, `ipoibfs lab mount`."""
    import gc

    request = json.loads(sys.stdin.read())
    pending, parallel = list(request["jobs"]), int(request["parallel"])
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # lab up decides (and sends SIGTERM)
    gc.freeze()
    running: dict[int, tuple[str, int]] = {}
    failed = False
    while pending or running:
        while pending and len(running) < parallel and not (stopping or failed):
            job = pending.pop(0)
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(read_fd)
                _host_worker(job, write_fd, mount, usage_error)
            os.close(write_fd)
            running[pid] = (job["name"], read_fd)
        if not running:
            break
        pid, status = os.wait()
        name, read_fd = running.pop(pid)
        os.set_blocking(read_fd, False)  # the worker has exited: what it wrote is there
        try:
            message = os.read(read_fd, 65536).decode(errors="replace").strip()
        except BlockingIOError:
            message = ""
        os.close(read_fd)
        if os.waitstatus_to_exitcode(status) != 0 and not message:
            message = f"{name}: exit status {os.waitstatus_to_exitcode(status)}"
        failed = failed or bool(message)
        print(json.dumps({"name": name, "error": message}), flush=True)
    return 0


def _host_worker(job: dict, error_fd: int, mount: Callable[[list[str]], object],
                 usage_error: Callable[[BaseException], Exception | None]) -> NoReturn:  # fmt: skip
    """One host, in a child of the warm parent: its namespace, its mount (the daemon forks
    from here), its addresses. A failure is one line on `error_fd`."""
    code = 1
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        # The error goes on fd 2: the daemon forked from here replaces it with its log
        # (a pipe of ours it kept open would hold the parent's read).
        os.dup2(error_fd, 2)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        message = _start_host(job, mount, usage_error)
        if message:
            os.write(2, message.encode())
        else:
            code = 0
    except BaseException as e:
        os.write(2, f"{job['name']}: {e!r}".encode())
    finally:
        os._exit(code)


def _start_host(
    job: dict, mount: Callable[[list[str]], object],
    usage_error: Callable[[BaseException], Exception | None],
) -> str | None:  # fmt: skip
    """The host's error, or None once it is up. `mount` is `ipoibfs mount ARGV` run here
    (the daemon forks from it), `usage_error` the one line a failure of it says."""
    name = job["name"]
    if not os.path.exists(f"/run/netns/{job['netns']}"):  # `lab start` keeps a killed one's
        result = _run("ip", "netns", "add", job["netns"])
        if result.returncode != 0:
            return _failure(result, f"{name}: ip netns add")
    try:
        os.close(open_dir(job["mountpoint"]))
    except (OSError, UsageError) as e:
        return f"{name}: mount point {job['mountpoint']}: {getattr(e, 'strerror', None) or e}"
    try:
        mount(job["argv"])
    except OSError as e:
        return f"{name}: mount: {e.strerror or e}"
    except BaseException as e:
        found = usage_error(e)
        if found is None:
            raise
        return f"{name}: mount: {found}"
    batch = "".join(line + "\n" for _, line in job["ip"])
    result = subprocess.run(["ip", "-n", job["netns"], "-batch", "-"], input=batch,
                            capture_output=True, text=True)  # fmt: skip
    if result.returncode != 0:
        # "Command failed -:N" names the line; its error is the line before.
        what = "address"
        for word in result.stderr.split():
            if word.startswith("-:") and word[2:].isdigit():
                what = job["ip"][min(int(word[2:]), len(job["ip"])) - 1][0]
        lines = [
            x for x in result.stderr.strip().splitlines() if not x.startswith("Command failed")
        ]
        return f"{name}: {what}: {lines[-1] if lines else f'exit status {result.returncode}'}"
    return None


def _failure(result: subprocess.CompletedProcess, what: str) -> str:
    detail = (result.stderr or result.stdout).strip().splitlines()
    message = detail[-1] if detail else f"exit status {result.returncode}"
    return f"{what}: {message.removeprefix('ipoibfs: ')}"


def _data_sockets(lab: Lab, host: LabHost) -> list[str]:
    """The host's data sockets next to the fabric's (`<fabric>.<host>.<pid>.p<N>`)."""
    return glob.glob(glob.escape(f"{lab.fabric_address}.{host.name}.") + "*")


def clear_dead_host(lab: Lab, host: LabHost, alive: bool = False) -> None:
    """What a killed host left: its dead mount, pid and netns files, and its data sockets
    (if the host runs, only the sockets nobody is bound to). The log stays, for `lab down`
    to remove with the lab."""
    if alive:
        remove_dead_sockets(_data_sockets(lab, host))
        return
    for path in _data_sockets(lab, host):
        remove_file(path)
    from .namespaces import is_stale_mount, unmount_lazy

    # its mirror, and its /dev/infiniband (the devfs mount by its state files)
    for mount in (host.mountpoint, state_file(host.mountpoint, "dev")):
        if is_stale_mount(mount):
            unmount_lazy(mount)
    try:
        os.rmdir(state_file(host.mountpoint, "dev"))
    except OSError:
        pass
    for kind in ("pid", "netns"):
        remove_file(state_file(host.mountpoint, kind))


def lab_down(prefix: str, progress: Progress | None = None) -> Lab:
    """Stop every host (SIGTERM, as `umount` does; SIGKILL after 10 s) and the fabric, and
    remove the mounts, namespaces, sockets, logs and files of the lab, a killed host's too."""
    lab = Lab.load(prefix)
    if lab is None:
        raise no_lab(prefix)
    progress = progress or Progress("lab down", len(lab.hosts), "hosts stopped", stream=None)
    progress.total = len(lab.hosts)
    daemons = [running_daemon(host.mountpoint) for host in lab.hosts]
    for daemon in daemons:
        if daemon is not None:
            daemon.signal(signal.SIGTERM)  # all at once: they stop in parallel
    deadline = time.monotonic() + 10
    for done, daemon in enumerate(daemons, 1):
        if daemon is not None:
            with daemon:
                if not daemon.wait(deadline - time.monotonic()):
                    daemon.signal(signal.SIGKILL)
                    daemon.wait(5)
        progress.step(done)
    progress.phase(progress.count(len(daemons)))
    for host in lab.hosts:
        clear_dead_host(lab, host)
        if os.path.ismount(host.mountpoint):
            _run("fusermount3", "-u", "-z", host.mountpoint)
        for kind in ("log", "log.1"):
            remove_file(state_file(host.mountpoint, kind))
        try:
            os.rmdir(host.mountpoint)
        except OSError:
            pass
    # One `ip` for every namespace; -force goes on past one that is already gone.
    netns = [h.netns for h in lab.hosts if os.path.exists(f"/run/netns/{h.netns}")]
    if netns:
        subprocess.run(["ip", "-force", "-batch", "-"], capture_output=True, text=True,
                       input="".join(f"netns del {n}\n" for n in netns))  # fmt: skip
    progress.phase("mounts and namespaces removed")
    stop_fabric(lab)
    stem = f"{prefix}-" if prefix else ""
    leftovers = [lab.fabric_address, lab.partitions, str(RUN_DIR / f"{stem}fabric.log"),
                 str(RUN_DIR / f"{stem}guid2lid"), lab.topology]  # fmt: skip
    leftovers += glob.glob(glob.escape(lab.fabric_address) + ".*")  # hosts' data sockets
    for path in leftovers:
        if path:
            remove_file(path)
    remove_file(str(Lab.registry(prefix)))
    progress.phase("fabric stopped")
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
        clear_dead_host(lab, host, alive=daemon is not None)
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
    faults = [note for host in lab.hosts if host.name not in dead | stopped
              for note in _faults(host)]  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    table = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                      for r in rows)  # fmt: skip
    notes = []
    fabric = lab.fabric()
    if fabric is None:
        notes.append(f"the fabric (pid {lab.fabric_pid}) is not running")
    else:
        fabric.close()
    if len(lab.hosts) > SMALL_LAB:
        notes.append(f"addresses: {addressing(len(lab.hosts))}")
    if dead:
        notes.append(f"{len(dead)} host(s) dead: their logs stay until `{lab.down_command}`")
    return table + "".join(f"\n({note})" for note in faults + notes)


def _faults(host: LabHost) -> list[str]:
    """The host's ports whose link is down or impaired (`lab port`, `lab link`), with what
    the impairments did so far."""
    from .fabric.impair import Netem
    from .fabric.port import PORT_ACTIVE

    try:
        ports = json.loads((Path(host.mountpoint) / ".ipoibfs" / "ports").read_text())
    except (OSError, ValueError):
        return []
    notes = []
    for port in ports:
        where = f"{host.name}:{port.get('port')}"
        if port.get("state") != PORT_ACTIVE:
            notes.append(f"{where} link down")
        netem, counts = port.get("netem"), port.get("netem_counts") or {}
        if netem:
            done = ", ".join(f"{n} {what}" for what, n in counts.items())
            notes.append(f"{where} link {Netem(**netem).describe()}: {done}")
    return notes
