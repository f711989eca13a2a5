"""The front-end server of `ipoibfs exec`: front ends that cost a fork, not a Python start.

`ipoibfs exec` starts it in the host's namespaces before the program (hostexec.py); it lives
until the program's first process exits. The launcher bound over ip, ethtool, ifconfig and
arping (frontend.c) sends it each call: arguments, environment, stdin/stdout/stderr and
working directory. The server runs a call only for a caller it could stand in for: one that
shares all its namespaces, root directory, ids, groups, capabilities, NoNewPrivs, seccomp
mode, cgroup and LSM label (`_identity`), checked against the process that connected
(SO_PEERPIDFD pins it). It then forks; the child becomes the caller's front end
(frontends.py, already imported), in a process group of its own that gets the signals the
launcher passes on ("K") and that the launcher stops and continues (it says its group: "P"),
and answers with its exit status, or with the real tool's argv for the launcher to exec when
the call is not ours. A call it will not take ("F"), a client
that says nothing within REQUEST_TIMEOUT, or no server at all, gets the Python front end.
"""

from __future__ import annotations

import _thread
import array
import os
import select
import signal
import socket
import struct
import sys
import time

from . import frontends, fronthost

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

MESSAGE_MAX = 256 * 1024  # frontend.c's
SOCKET_NAME = "frontends.sock"
#: How long a connected client may take to send its request before it is told "F".
REQUEST_TIMEOUT = 1.0
#: Connections waiting for their request at most; the oldest is refused beyond.
PENDING_MAX = 256
SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)  # Linux 6.5
#: What the launcher passes on, and the front end raises in its process group.
FORWARDED = frozenset((signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT))
NAMESPACES = ("net", "mnt", "user", "pid", "uts", "ipc", "cgroup", "time")
STATUS_KEPT = ("Uid:", "Gid:", "Groups:", "CapInh:", "CapPrm:", "CapEff:", "CapBnd:",
               "CapAmb:", "NoNewPrivs:", "Seccomp:", "Seccomp_filters:")  # fmt: skip


def _read(path: str) -> bytes | None:
    """A /proc file's bytes, None if it cannot be read (no LSM: attr/current is EINVAL)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return fronthost.read_fd(fd)
    except OSError:
        return None
    finally:
        os.close(fd)


def _inode(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None  # a namespace this kernel does not have
    return st.st_dev, st.st_ino


def _identity(pid: int) -> tuple:
    """What a caller must share with the server: namespaces, root, ids, groups,
    capabilities, NoNewPrivs, seccomp, cgroup and LSM label (/proc/PID)."""
    proc = f"/proc/{pid}"
    with open(f"{proc}/status") as f:
        status = tuple(line for line in f if line.startswith(STATUS_KEPT))
    spaces = tuple(_inode(f"{proc}/ns/{ns}") for ns in NAMESPACES)
    root = os.stat(f"{proc}/root")
    return (spaces, (root.st_dev, root.st_ino), status, _read(f"{proc}/cgroup"),
            _read(f"{proc}/attr/current"))  # fmt: skip


def _peer_identity(conn: socket.socket) -> tuple:
    """The identity of the process that connected: read from /proc, then checked to be
    that process still (its pidfd), so a reused pid cannot pass for it."""
    pid = struct.unpack("=3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
    try:
        pidfd = conn.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError:
        pidfd = -1  # before Linux 6.5: the pid, as SO_PEERCRED gave it
    try:
        identity = _identity(pid)
        if pidfd >= 0:
            signal.pidfd_send_signal(pidfd, 0)  # ProcessLookupError: gone, the pid may be reused
        return identity
    finally:
        if pidfd >= 0:
            os.close(pidfd)


def _parse(data: bytes) -> tuple[str, list[str], dict[str, str]]:
    """frontend.c's message: tool NUL, argc, argv NUL each, envc, environ NUL each."""
    tool, at = data.split(b"\0", 1)[0], data.index(b"\0") + 1
    values: list[list[bytes]] = []
    for _ in range(2):
        (count,) = struct.unpack_from("=I", data, at)
        at += 4
        items = []
        for _ in range(count):
            end = data.index(b"\0", at)
            items.append(data[at:end])
            at = end + 1
        values.append(items)
    if at != len(data) or not values[0]:
        raise ValueError("not a front end's request")
    env = {}
    for item in values[1]:
        key, eq, value = item.partition(b"=")
        if eq:
            env[os.fsdecode(key)] = os.fsdecode(value)
    return os.fsdecode(tool), [os.fsdecode(a) for a in values[0]], env


def _forward_signals(conn: socket.socket, answered: list[bool]) -> None:
    """The served front end's thread: raise what the launcher passes on ("K" + signo) in
    this process group (the real tool it runs too, as a terminal's Ctrl-C would), and
    SIGHUP when the launcher is gone (EOF)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)  # delivered to the main thread
    while True:
        try:
            data = conn.recv(16)
        except InterruptedError:
            continue
        except OSError:
            data = b""
        if answered:
            return
        if not data:
            os.killpg(0, signal.SIGHUP)
            return
        if len(data) == 5 and data[:1] == b"K":
            (signo,) = struct.unpack("=i", data[1:])
            if signo in FORWARDED:
                os.killpg(0, signo)


def _answer(conn: socket.socket, answered: list[bool], message: bytes) -> None:
    """The one answer; the signal thread stops passing signals on."""
    answered.append(True)
    conn.send(message)


def _front_end(conn: socket.socket, fds: list[int], tool: str, argv: list[str],
               env: dict[str, str], mirror: str, real: str) -> None:  # fmt: skip
    """In the forked child: become the caller's front end, answer, exit."""
    code = 1
    answered: list[bool] = []
    try:
        try:
            os.setpgid(0, 0)  # the signals passed on reach it and the tools it runs
            conn.send(b"P" + struct.pack("=i", os.getpid()))  # Ctrl-Z stops this group
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            conn.setblocking(True)
            _thread.start_new_thread(_forward_signals, (conn, answered))
            for target, fd in enumerate(fds[:3]):
                os.dup2(fd, target)
            os.fchdir(fds[3])
            for fd in fds:
                if fd > 2:
                    os.close(fd)
            os.environ.clear()
            os.environ.update(env)
            sys.argv = argv
            # New streams: the server's were made for /dev/null, and cache that it seeks.
            sys.stdout = open(1, "w", encoding="utf-8", errors="surrogateescape", closefd=False)
            sys.stderr = open(2, "w", encoding="utf-8", errors="surrogateescape",
                              closefd=False, buffering=1)  # fmt: skip
            host = fronthost.Host(mirror, [real], in_netns=True, argv0=argv[0])

            def hand_over(path: str, real_argv: list[str]) -> None:
                _answer(conn, answered, b"E" + b"".join(
                    os.fsencode(a) + b"\0" for a in (path, *real_argv)))  # fmt: skip
                os._exit(0)

            host.exec_hook = hand_over
            code = frontends._run(tool, host, argv[1:])
        except KeyboardInterrupt:
            code = -signal.SIGINT  # the launcher dies of it, as the tool would have
        except SystemExit as e:
            code = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
        except BaseException as e:  # noqa: BLE001 - the caller gets a status whatever happens
            print(f"{tool}: the ipoibfs front end failed: {e!r}", file=sys.stderr)
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
    except KeyboardInterrupt:
        code = -signal.SIGINT  # while flushing
    finally:
        try:
            _answer(conn, answered, b"S" + struct.pack("=i", code))
        finally:
            os._exit(0)


def _refuse(conn: socket.socket) -> None:
    """ "F": the launcher runs the Python front end; never blocks on the client."""
    try:
        conn.send(b"F", socket.MSG_DONTWAIT)
    except OSError:
        pass


def _handle(listener: socket.socket, conn: socket.socket, own: tuple, mirror: str,
            real: dict[str, str], others: Iterable[socket.socket] = ()) -> None:  # fmt: skip
    """One readable connection: fork its front end, or refuse it. Never blocks. `others`:
    the connections still waiting, which the front end does not keep open."""
    fds = array.array("i")
    try:
        data, ancdata, flags, _ = conn.recvmsg(
            MESSAGE_MAX, socket.CMSG_SPACE(4 * fds.itemsize),
            socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC)  # fmt: skip
    except OSError:
        _refuse(conn)
        return
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    try:
        tool, argv, env = _parse(data)
        if (len(fds) != 4 or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC)
                or tool not in real or _peer_identity(conn) != own):  # fmt: skip
            _refuse(conn)
            return
        if os.fork() == 0:
            listener.close()
            for other in others:
                other.close()
            _front_end(conn, list(fds), tool, argv, env, mirror, real[tool])
    except (OSError, ValueError, struct.error):
        _refuse(conn)
    finally:
        for fd in fds:
            os.close(fd)


def _serve(listener: socket.socket, alive: int, mirror: str, real: dict[str, str],
           timeout: float = REQUEST_TIMEOUT) -> None:  # fmt: skip
    """The server's loop, until the program `ipoibfs exec` runs exits (`alive`: its pidfd,
    readable then). No client holds up another: each request is read when it is there, and
    one that is not there within `timeout` is refused."""
    own = _identity(os.getpid())
    listener.setblocking(False)
    pending: dict[int, tuple[socket.socket, float]] = {}  # fd: connection, deadline
    try:
        while True:
            now = time.monotonic()
            for fd, (conn, deadline) in list(pending.items()):
                if deadline <= now:
                    del pending[fd]
                    _refuse(conn)
                    conn.close()
            wait = min(d for _, d in pending.values()) - now if pending else None
            ready = select.select([listener.fileno(), alive, *pending], [], [], wait)[0]
            if alive in ready:
                return
            for fd in ready:
                if fd in pending:
                    conn = pending.pop(fd)[0]
                    with conn:
                        _handle(listener, conn, own, mirror, real,
                                [c for c, _ in pending.values()])  # fmt: skip
            if listener.fileno() in ready:
                _accept(listener, pending, time.monotonic() + timeout)
    finally:
        for conn, _ in pending.values():
            conn.close()


def _accept(listener: socket.socket, pending: dict[int, tuple[socket.socket, float]],
            deadline: float) -> None:  # fmt: skip
    """Take what is waiting on the listener, to be read when its request is there."""
    while True:
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # ECONNABORTED, EMFILE: the next round
        conn.setblocking(False)
        if len(pending) >= PENDING_MAX:
            oldest = min(pending, key=lambda fd: pending[fd][1])
            old = pending.pop(oldest)[0]
            _refuse(old)
            old.close()
        pending[conn.fileno()] = (conn, deadline)


def main(argv: list[str]) -> None:
    """`python -I -S` running the server: LISTENER_FD PIDFD MIRROR TOOL=REAL..."""
    listener = socket.socket(fileno=int(argv[0]))
    alive = int(argv[1])
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # front ends are reaped by the kernel
    # ethtool -k/-K's feature model costs ~20 ms to load and 0.2 ms more per fork: loaded
    # once here, every front end has it.
    frontends._features_model()
    try:
        _serve(listener, alive, argv[2], dict(a.split("=", 1) for a in argv[3:]))
    finally:
        os._exit(0)


#: How the server starts: a fresh interpreter with only frontends.py imported, since a
#: fork costs what the forked process maps (3.9 ms for `ipoibfs exec`, 0.8 ms for this).
BOOTSTRAP = ("import sys; sys.path.insert(0, {root!r}); "
             "from ipoibfs.frontends_server import main; main(sys.argv[1:])")  # fmt: skip


def interpreter() -> str:
    """The system's build of this Python version if there is one (Debian's is built with
    PGO and LTO, and runs the front ends faster than a --enable-shared build; anyone may run
    it, where a venv's interpreter can live in root's home), else this one."""
    system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    return system if os.access(system, os.X_OK) else sys.executable


def start(root: str, mirror: str, real: dict[str, str], package_root: str) -> None:
    """Start the server for this process (which is about to exec the program); its socket
    listens when this returns. `real` is each tool's real binary."""
    path = f"{root}/{SOCKET_NAME}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    os.chmod(path, 0o600)
    listener.listen(64)
    alive = os.pidfd_open(os.getpid())  # this process, which becomes the program
    pid = os.fork()
    if pid == 0:
        try:
            if os.fork() == 0:  # reparented: not a child the program could wait for
                os.setsid()  # no terminal signals: it ends with the program
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)  # holds none of the caller's pipes open
                os.set_inheritable(listener.fileno(), True)
                os.set_inheritable(alive, True)
                code = BOOTSTRAP.format(root=package_root)
                python = interpreter()
                os.execv(python, [python, "-IS", "-c", code,
                                          str(listener.fileno()), str(alive), mirror,
                                          *(f"{t}={r}" for t, r in real.items())])  # fmt: skip
        finally:
            os._exit(0)
    listener.close()
    os.close(alive)
    os.waitpid(pid, 0)
