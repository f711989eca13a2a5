"""`ipoibfs exec` and `ipoibfs shell`: run any program as if on an emulated host.

The program runs in the host's network namespace, in a UTS namespace named after the host,
and in a private mount namespace where
- /sys is that namespace's own sysfs, with the mirror's merged views (sysfs/views.py) mounted
  over /sys/class, /sys/module, /sys/kernel/debug, /sys/devices and /sys/bus;
- `ip`, `ethtool`, `ifconfig` and `arping` (TOOLS) are the front ends of
  ipoibfs/frontends.py and ipoibfs/arping.py, bound over the real binaries (which stay
  reachable for them under the exec root): the launcher frontend.c, which hands each call to
  the front-end server started here (frontends_server.py), or without it a `python -I -S`
  script per tool.
Mounts are made only there: nothing reaches the caller's namespaces. Because this is done
with namespaces, not library interposition, it holds for static binaries too.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import shutil
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from . import frontends_server
from .errors import UsageError
from .lab import find_host
from .namespaces import (
    CLONE_NEWNS,
    MS_BIND,
    MS_PRIVATE,
    MS_REC,
    PR_SET_PDEATHSIG,
    NetnsError,
    enter_netns_file,
    libc,
    mount,
    unshare,
)
from .state import (
    EXEC_ROOT,
    REAL_DEBUG,
    REAL_SYS,
    check_host_name,
    open_dir,
    running_daemon,
    state_file,
)
from .umad import supervisor
from .umad.service import dev_dir

CLONE_NEWUTS = 0x04000000

#: The front ends, and where a Debian or Red Hat system keeps the real binaries.
TOOLS = {
    "ip": ("/usr/bin/ip", "/usr/sbin/ip", "/bin/ip", "/sbin/ip"),
    "ethtool": ("/usr/sbin/ethtool", "/sbin/ethtool", "/usr/bin/ethtool"),
    "ifconfig": ("/usr/sbin/ifconfig", "/sbin/ifconfig", "/usr/bin/ifconfig", "/bin/ifconfig"),
    "arping": ("/usr/bin/arping", "/usr/sbin/arping", "/bin/arping", "/sbin/arping"),
}
VIEWS = ("class", "module", "kernel/debug", "devices", "bus")


def resolve(host: str) -> tuple[Path, str]:
    """(mirror mountpoint, file naming its network namespace) of a lab host or a mountpoint."""
    lab_host = find_host(host)
    mountpoint = Path(lab_host.mountpoint if lab_host else host).resolve()
    try:
        netns = Path(state_file(str(mountpoint), "netns")).read_text().strip()
    except OSError:
        if lab_host is not None:
            raise UsageError(f"lab host {host} is not running (its daemon is gone)") from None
        raise UsageError(f"'{host}' is neither a lab host nor an ipoibfs mountpoint") from None
    daemon = running_daemon(str(mountpoint))  # the pid file's holder, not a reused pid
    if daemon is None:
        raise UsageError(f"the host at {mountpoint} is not running (its daemon is gone)")
    pid = daemon.pid
    daemon.close()
    if lab_host is not None:
        netns = lab_host.netns
    return mountpoint, f"/run/netns/{netns}" if netns else f"/proc/{pid}/ns/net"


#: The directory holding the ipoibfs package, which the front ends import from.
PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])
#: frontend.c, built by `make setup` next to the interpreter; without it each call starts
#: the Python front end itself.
LAUNCHER = str(Path(sys.executable).parent / "ipoibfs-frontend")


def _front_end(name: str, real: str, mountpoint: Path) -> str:
    """The script bound over a real tool: Python started isolated and without `site` (-I -S:
    no environment, no site-packages, bytecode cached), which imports only frontends.py and
    fronthost.py; the system's interpreter where there is one, which a caller that is not
    root may run too."""
    return (
        f"#!{frontends_server.interpreter()} -IS\n"
        "import sys\n"
        f"sys.path.insert(0, {PACKAGE_ROOT!r})\n"
        "from ipoibfs.frontends import shim\n"
        f"shim({name!r}, {real!r}, {str(mountpoint)!r})\n"
    )


def host_name(host: str, mountpoint: Path) -> str:
    """The name a host's programs see (`hostname`): a lab host's, or for a mountpoint the
    name it was mounted with (the first word of its HCA's node_desc)."""
    lab_host = find_host(host)
    if lab_host is not None:
        return lab_host.name
    hcas = mountpoint / "class" / "infiniband"
    try:
        for hca in sorted(os.listdir(hcas)):
            words = (hcas / hca / "node_desc").read_bytes().split()
            if words:
                return check_host_name(words[0].decode())
    except (OSError, UnicodeDecodeError, UsageError):
        pass
    return mountpoint.name


def sethostname(name: str) -> None:
    """sethostname(2), in the UTS namespace of the caller."""
    raw = name.encode()
    if libc.sethostname(raw, len(raw)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"sethostname({name}): {os.strerror(err)}")


def _enter(mountpoint: Path, netns: str, name: str) -> None:
    """Become the emulated host: called in the child, before exec."""
    unshare(CLONE_NEWNS | CLONE_NEWUTS, "CLONE_NEWNS|CLONE_NEWUTS")
    sethostname(name)
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    enter_netns_file(netns, f"the host's network namespace ({netns})")
    mount("sysfs", "/sys", "sysfs")  # this namespace's netdevs
    mount("ipoibfs-exec", EXEC_ROOT, "tmpfs", data="mode=0755")  # not tmpfs's 1777
    os.makedirs(REAL_SYS)
    os.makedirs(REAL_DEBUG)
    mount("sysfs", REAL_SYS, "sysfs")
    try:
        mount("debugfs", REAL_DEBUG, "debugfs")
    except OSError:
        pass  # no debugfs: the view lists only ipoib
    views = mountpoint / ".ipoibfs" / "sys"
    for view in VIEWS:
        mount(str(views / view), f"/sys/{view}", None, MS_BIND)
    umad_dir = state_file(str(mountpoint), "dev")  # umad.dev_dir, without importing trio
    if os.path.isdir(umad_dir):  # the running daemon's devfs mount (removed when it stops)
        _bind_dev_infiniband(umad_dir)
    seen = set()
    launcher = LAUNCHER if os.access(LAUNCHER, os.X_OK) else None
    kept_by_tool: dict[str, str] = {}
    for name, paths in TOOLS.items():
        for path in paths:
            real = os.path.realpath(path)
            # A multi-call binary (busybox) behind the name is left alone: binding over it
            # would replace every applet, /bin/sh included.
            if real in seen or not os.path.isfile(real) or os.path.basename(real) != name:
                continue
            seen.add(real)
            kept = f"{EXEC_ROOT}/real{len(seen)}-{name}"
            Path(kept).touch()
            mount(real, kept, None, MS_BIND)
            if name not in kept_by_tool:
                kept_by_tool[name] = kept
                shim = f"{EXEC_ROOT}/{name}.py"  # the launcher's fallback, or the front end
                Path(shim).write_text(_front_end(name, kept, mountpoint))
                os.chmod(shim, 0o755)
            mount(launcher or f"{EXEC_ROOT}/{name}.py", real, None, MS_BIND)
    if launcher is not None:
        frontends_server.start(EXEC_ROOT, str(mountpoint), kept_by_tool, PACKAGE_ROOT)


def _bind_dev_infiniband(source: str) -> None:
    """Bind the host's umad files at /dev/infiniband. Where /dev has no such directory, /dev
    becomes an overlay of itself (the real /dev below, an upper layer in the exec tmpfs)
    that gets one, with /dev's own submounts (pts, shm, mqueue) bound back: nothing is made
    in the real /dev, and every other entry stays the same file."""
    target = "/dev/infiniband"
    if not os.path.isdir(target):
        real, upper, work = (f"{EXEC_ROOT}/{d}" for d in ("dev", "dev-upper", "dev-work"))
        for d in (real, upper, work):
            os.makedirs(d)
        mount("/dev", real, None, MS_BIND | MS_REC)
        mount("overlay", "/dev", "overlay", data=f"lowerdir={real},upperdir={upper},workdir={work}")
        for sub in _submounts(real):
            mount(f"{real}/{sub}", f"/dev/{sub}", None, MS_BIND | MS_REC)
        os.mkdir(target, 0o755)
    mount(source, target, None, MS_BIND)


def _submounts(root: str) -> list[str]:
    """The mounts right below `root` (relative paths, outermost only), from mountinfo."""
    found: list[str] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")  # \040 and such
            if point.startswith(root + "/"):
                rel = point[len(root) + 1 :]
                if not any(rel == r or rel.startswith(r + "/") for r in found):
                    found.append(rel)
    return found


def _describe(e: OSError | NetnsError) -> str:
    """One line for what stopped `exec`: `unshare(CLONE_NEWNS): Operation not permitted`,
    `./x: Permission denied`, never `[Errno 1] ...`."""
    if not isinstance(e, OSError) or e.errno is None:
        return str(e)
    reason = os.strerror(e.errno)
    if e.filename is not None:
        return f"{e.filename}: {reason}"
    what = e.strerror or ""
    if not what or what == reason or what.endswith(f": {reason}"):
        return what or reason  # namespaces.mount's text already says why
    return f"{what}: {reason}"


def _prompt(shell: str, name: str) -> dict[str, str]:
    """The environment that marks an interactive shell's prompt with the host's name: PS1,
    and debian_chroot, which Debian's /etc/bash.bashrc puts in the PS1 it sets itself."""
    if os.path.basename(shell) == "bash":
        return {"PS1": f"({name})\\u@\\h:\\w\\$ ", "debian_chroot": name}
    return {"PS1": f"({name}) {'#' if os.geteuid() == 0 else '$'} "}


def _wait(pid: int, listener: int | None, devices: str) -> int:
    """The child's wait status; meanwhile what its seccomp filter hands over is answered
    (umad/supervisor.py)."""
    if listener is None:
        return os.waitpid(pid, 0)[1]
    sup = supervisor.Supervisor(listener, devices)
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    poller.register(listener, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    try:
        while True:
            for fd, _ in poller.poll():
                if fd == pidfd:
                    status = os.waitpid(pid, 0)[1]
                    _linger(sup)
                    return status
                sup.handle()
    finally:
        os.close(pidfd)
        os.close(listener)


def _linger(sup: supervisor.Supervisor) -> None:
    """The program ended, but what it started may still run under the filter (a daemon
    left behind): a process of exec's own answers for them until none is left, so that
    exec itself returns now."""
    ready = select.poll()
    ready.register(sup.listener, select.POLLIN)
    if any(events & select.POLLHUP for _, events in ready.poll(0)):
        return  # no one is left
    if os.fork() == 0:
        try:
            os.setsid()  # out of the terminal's process group: no Ctrl-C meant for exec
            null = os.open(os.devnull, os.O_RDWR)
            for std in (0, 1, 2):  # no pipe of the caller's is held open by it
                os.dup2(null, std)
            sup.serve_until_unused()
        finally:
            os._exit(0)


def run(host: str, argv: list[str], name: str | None = None, shell: bool = False) -> int:
    """Run argv on the host, in a UTS namespace named after it (or `name`); its exit status
    (128 + N for a signal, as a shell reports). `shell`: argv is an interactive shell, whose
    prompt is marked with the name."""
    mountpoint, netns = resolve(host)
    name = check_host_name(name) if name is not None else host_name(host, mountpoint)
    if not (mountpoint / ".ipoibfs" / "sys").is_dir():
        raise UsageError(f"{mountpoint}: the mirror has no exec views (is the daemon current?)")
    if shutil.which(argv[0]) is None and "/" not in argv[0]:
        print(f"ipoibfs exec: {argv[0]}: command not found", file=sys.stderr)
        return 127
    os.close(open_dir(EXEC_ROOT, managed=EXEC_ROOT))  # root's, 0755, whatever the umask
    sys.stdout.flush()
    sys.stderr.flush()
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGHUP)  # `ipoibfs exec` killed: hang up
            _enter(mountpoint, netns, name)
            if shell:
                os.environ.update(_prompt(argv[0], name))
            listener = supervisor.install()
            if listener is not None:  # to the parent, which answers what it hands over
                socket.send_fds(theirs, [b"L"], [listener])
                os.close(listener)
            theirs.close()
            os.execvp(argv[0], argv)
        except (OSError, NetnsError) as e:
            print(f"ipoibfs exec: {_describe(e)}", file=sys.stderr)
            code = 127 if getattr(e, "errno", None) == errno.ENOENT else 126
        finally:
            os._exit(code)
    # Ctrl-C reaches the program through the terminal; SIGTERM and SIGHUP are passed on.
    handlers: dict[signal.Signals, Any] = {signal.SIGINT: signal.SIG_IGN}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        handlers[sig] = lambda signum, frame: os.kill(pid, signum)
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    theirs.close()
    try:
        _, fds, _, _ = socket.recv_fds(ours, 1, 1)  # the listener, or nothing at exec
        ours.close()
        status = _wait(pid, fds[0] if fds else None, dev_dir(str(mountpoint)))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code
