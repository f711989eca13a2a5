"""The front-end server of `ipoibfs exec`: front ends that cost a fork, not a Python start.

`ipoibfs exec` starts it in the host's namespaces before the program (hostexec.py); it lives
until the program's first process exits. The launcher bound over ip, ethtool and ifconfig
(frontend.c) sends it each call: arguments, environment, stdin/stdout/stderr and working
directory. The server checks that the caller shares its namespaces, user and capabilities
(so the driver sees the same writer as a front end of the caller's own would show it), then
forks; the child becomes the caller's front end (frontends.py, already imported) and answers
with its exit status, or with the real tool's argv for the launcher to exec when the call is
not ours. A call it will not take ("F"), or no server at all, gets the Python front end.
"""

from __future__ import annotations

import array
import os
import select
import signal
import socket
import struct
import sys

from . import frontends

MESSAGE_MAX = 256 * 1024
SOCKET_NAME = "frontends.sock"


def _identity(pid: int) -> tuple:
    """What a caller must share with the server: namespaces, ids, groups and capabilities."""
    keep = ("Uid:", "Gid:", "Groups:", "CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:")
    with open(f"/proc/{pid}/status") as f:
        status = tuple(line for line in f if line.startswith(keep))
    spaces = tuple(os.stat(f"/proc/{pid}/ns/{ns}").st_ino for ns in ("net", "mnt", "user"))
    return spaces, status


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
    env = {}
    for item in values[1]:
        key, eq, value = item.partition(b"=")
        if eq:
            env[os.fsdecode(key)] = os.fsdecode(value)
    return os.fsdecode(tool), [os.fsdecode(a) for a in values[0]], env


def _front_end(conn: socket.socket, fds: list[int], tool: str, argv: list[str],
               env: dict[str, str], mirror: str, real: str) -> None:  # fmt: skip
    """In the forked child: become the caller's front end, answer, exit."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
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
        sys.stderr = open(2, "w", encoding="utf-8", errors="surrogateescape", closefd=False,
                          buffering=1)  # fmt: skip
        host = frontends.Host(mirror, [real], in_netns=True)

        def hand_over(real_argv: list[str]) -> None:
            conn.send(b"E" + b"\0".join(os.fsencode(a) for a in real_argv))
            os._exit(0)

        host.exec_hook = hand_over
        code = frontends._run(tool, host, argv[1:])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException as e:  # noqa: BLE001 - the caller gets a status whatever happens
        print(f"{tool}: the ipoibfs front end failed: {e!r}", file=sys.stderr)
    finally:
        try:
            conn.send(b"S" + struct.pack("=i", code))
        finally:
            os._exit(0)


def _handle(listener: socket.socket, conn: socket.socket, own: tuple, mirror: str,
            real: dict[str, str]) -> None:  # fmt: skip
    fds = array.array("i")
    data, ancdata, flags, _ = conn.recvmsg(MESSAGE_MAX, socket.CMSG_SPACE(4 * fds.itemsize))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    try:
        pid = struct.unpack("=3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
        tool, argv, env = _parse(data)
        if (len(fds) != 4 or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC)
                or tool not in real or _identity(pid) != own):  # fmt: skip
            conn.send(b"F")
            return
        if os.fork() == 0:
            listener.close()
            _front_end(conn, list(fds), tool, argv, env, mirror, real[tool])
    except (OSError, ValueError, struct.error):
        conn.send(b"F")
    finally:
        for fd in fds:
            os.close(fd)


def _serve(listener: socket.socket, alive: int, mirror: str, real: dict[str, str]) -> None:
    """The server's loop, until the program `ipoibfs exec` runs exits (`alive`: its pidfd)."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # front ends are reaped by the kernel
    own = _identity(os.getpid())
    while True:
        ready = select.select([listener.fileno(), alive], [], [])[0]
        if alive in ready:
            return
        try:
            conn, _ = listener.accept()
        except OSError:
            continue
        with conn:
            try:
                _handle(listener, conn, own, mirror, real)
            except OSError:
                pass


def main(argv: list[str]) -> None:
    """`python -I -S` running the server: LISTENER_FD PIDFD MIRROR TOOL=REAL..."""
    listener = socket.socket(fileno=int(argv[0]))
    alive = int(argv[1])
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
