"""The front-end server without a host: its message format, the calls it refuses ("F"),
a client that says nothing, its end with the program, and a served front end's answers
and signals, over socketpairs and a socket in a temporary directory (no root)."""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipoibfs import frontends, frontends_server, fronthost
from ipoibfs.frontends_server import _handle, _identity, _parse, _serve


def message(tool: str, argv: list[str], env: list[str]) -> bytes:
    """What frontend.c sends: tool NUL, argc, argv NUL each, envc, environ NUL each."""
    data = tool.encode() + b"\0" + struct.pack("=I", len(argv))
    data += b"".join(a.encode() + b"\0" for a in argv)
    return data + struct.pack("=I", len(env)) + b"".join(e.encode() + b"\0" for e in env)


def pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def answer(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """The next message the server (or front end) sends; b"" at EOF."""
    assert select.select([sock], [], [], timeout)[0], "no answer"
    return sock.recv(65536)


class Streams:
    """stdin, stdout, stderr and a working directory for a request, as the launcher's."""

    def __init__(self, tmp: Path) -> None:
        self.stdin = os.open(os.devnull, os.O_RDONLY)
        self.out_r, self.out_w = os.pipe()
        self.err_r, self.err_w = os.pipe()
        self.cwd = os.open(tmp, os.O_PATH | os.O_DIRECTORY)

    def fds(self) -> list[int]:
        return [self.stdin, self.out_w, self.err_w, self.cwd]

    def sent(self) -> None:
        """The request is out: only the front end writes to the pipes now."""
        for fd in self.fds():
            os.close(fd)

    def read(self, fd: int) -> str:
        chunks = []
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
        os.close(fd)
        return b"".join(chunks).decode()

    def line(self) -> str:
        """One line of stdout (the fake tools print their pid first)."""
        data = b""
        while not data.endswith(b"\n"):
            chunk = os.read(self.out_r, 1)
            assert chunk, "the front end closed its stdout"
            data += chunk
        return data.decode()


@pytest.fixture
def streams(tmp_path: Path) -> Iterator[Streams]:
    s = Streams(tmp_path)
    yield s
    for fd in (s.out_r, s.err_r, *s.fds()):
        try:
            os.close(fd)
        except OSError:
            pass


def refused(data: bytes, fds: list[int], own: tuple | None = None,
            real: dict[str, str] | None = None) -> bytes:  # fmt: skip
    """What _handle answers a request it must not run (and that it did not fork)."""
    client, conn = pair()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with client, conn, listener:
        if data or fds:
            socket.send_fds(client, [data], fds)
        own = _identity(os.getpid()) if own is None else own
        _handle(listener, conn, own, "/nonexistent", real or {"ip": "/bin/true"})
        return answer(client, timeout=1.0)


# ------------------------------------------------------------------ the message


def test_a_request_parses_into_tool_argv_and_environment():
    data = message("ip", ["ip", "-o", "link"], ["PATH=/bin", "A=b=c", "junk"])
    assert _parse(data) == ("ip", ["ip", "-o", "link"], {"PATH": "/bin", "A": "b=c"})


@pytest.mark.parametrize("data", [
    b"ip",  # no NUL
    b"ip\0\x01\0\0",  # a count cut short
    message("ip", ["ip"], [])[:-1],  # the environment cut short
    message("ip", ["ip"], []) + b"more",  # something after it
    message("ip", [], []),  # no argv[0]
    struct.pack("=I", 1),
])  # fmt: skip
def test_a_malformed_request_is_an_error(data: bytes):
    with pytest.raises((ValueError, struct.error)):
        _parse(data)


def test_a_caller_with_no_new_privs_is_not_like_the_server():
    """What the server compares: a child like us reads the same; NoNewPrivs (setpriv's,
    as a sandbox sets it) makes it another caller."""
    code = "import sys; sys.stdout.write('ready\\n'); sys.stdout.flush(); sys.stdin.read()"
    same = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)  # fmt: skip
    sandboxed = subprocess.Popen(["setpriv", "--no-new-privs", sys.executable, "-c", code],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    try:
        for child in (same, sandboxed):
            assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        assert _identity(same.pid) == _identity(os.getpid())
        assert _identity(sandboxed.pid) != _identity(os.getpid())
    finally:
        for child in (same, sandboxed):
            child.kill()
            child.wait()


# ------------------------------------------------------------------ "F": the Python front end


def test_calls_the_server_must_not_run_get_F(streams: Streams):
    good = message("ip", ["ip", "link"], [])
    assert refused(message("ls", ["ls"], []), streams.fds()) == b"F"  # not a front end
    assert refused(good, streams.fds()[:3]) == b"F"  # no working directory
    assert refused(good, []) == b"F"  # no streams at all
    assert refused(good[:-1], streams.fds()) == b"F"  # malformed
    assert refused(good, streams.fds(), own=("someone", "else")) == b"F"  # not like us
    assert refused(b"", []) == b"F"  # nothing to read: not waited for
    # the descriptors received are closed whatever the answer: only ours remain open
    before = sorted(os.listdir("/proc/self/fd"))
    assert refused(good, streams.fds(), own=("x",)) == b"F"
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_a_request_too_long_for_the_server_gets_F(streams: Streams):
    big = message("ip", ["ip", "x" * frontends_server.MESSAGE_MAX], [])
    client, conn = pair()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * len(big))
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * len(big))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with client, conn, listener:
        try:
            socket.send_fds(client, [big], streams.fds())
        except OSError:
            pytest.skip("this kernel will not queue a message that long")
        _handle(listener, conn, _identity(os.getpid()), "/nonexistent", {"ip": "/bin/true"})
        assert answer(client, timeout=1.0) == b"F"  # MSG_TRUNC


# ------------------------------------------------------------------ the loop


class Server:
    """_serve in a thread, on a socket in a temporary directory."""

    def __init__(self, tmp: Path, alive: int, timeout: float) -> None:
        self.path = str(tmp / "frontends.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(self.path)
        self.listener.listen(8)
        self.thread = threading.Thread(target=_serve, daemon=True, args=(
            self.listener, alive, "/nonexistent", {"ip": "/bin/true"}, timeout))  # fmt: skip
        self.thread.start()

    def connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.connect(self.path)
        return sock


def test_a_silent_client_holds_up_no_other_and_gets_F_in_time(tmp_path: Path,
                                                              streams: Streams):  # fmt: skip
    read, write = os.pipe()  # the program: "ends" when the write end is closed
    server = Server(tmp_path, read, timeout=0.5)
    try:
        silent = server.connect()
        started = time.monotonic()
        for _ in range(3):  # each is answered at once, the silent one still waiting
            with server.connect() as other:
                socket.send_fds(other, [message("ls", ["ls"], [])], streams.fds())
                assert answer(other, timeout=0.3) == b"F"
        assert time.monotonic() - started < 0.45
        assert answer(silent, timeout=2.0) == b"F"  # its time is up
        assert 0.4 < time.monotonic() - started < 2.0
        assert silent.recv(16) == b""  # and it is hung up on
        silent.close()
    finally:
        os.close(write)
        server.thread.join(5)
        os.close(read)
    assert not server.thread.is_alive()


def test_the_server_ends_when_the_program_ends(tmp_path: Path):
    program = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    pidfd = os.pidfd_open(program.pid)
    try:
        server = Server(tmp_path, pidfd, timeout=1.0)
        waiting = server.connect()  # a connection still waiting does not keep it
        server.thread.join(0.2)
        assert server.thread.is_alive()
        program.kill()
        program.wait()
        server.thread.join(5)
        assert not server.thread.is_alive()
        assert answer(waiting, timeout=1.0) == b""  # closed, not left open
        waiting.close()
    finally:
        program.kill()
        program.wait()
        os.close(pidfd)


# ------------------------------------------------------------------ a served front end


def sleeper(host: fronthost.Host, argv: list[str]) -> int:
    """A fake tool: its pid, then a long wait."""
    print(os.getpid(), flush=True)
    time.sleep(30)
    return 0


def hand_over(host: fronthost.Host, argv: list[str]) -> int:
    """A fake tool for which the call is the real tool's."""
    host.exec_real(argv)


def failing(host: fronthost.Host, argv: list[str]) -> int:
    """A fake tool that writes and then fails unexpectedly."""
    sys.stdout.write("partial output")
    raise RuntimeError("unexpected")


def serve(monkeypatch: pytest.MonkeyPatch, streams: Streams, tool: str,
          argv: list[str]) -> socket.socket:  # fmt: skip
    """Fork a front end for `tool` (one of the fakes) and return the launcher's end."""
    monkeypatch.setitem(frontends.TOOLS, tool, globals()[tool])
    client, conn = pair()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with conn, listener:
        socket.send_fds(client, [message(tool, argv, ["LANG=C"])], streams.fds())
        streams.sent()
        # (the launcher's end is not the front end's to keep open, as the others waiting)
        _handle(listener, conn, _identity(os.getpid()), "/nonexistent", {tool: "/bin/echo"},
                [client])  # fmt: skip
    said = answer(client)  # first, where it is: its process group, for Ctrl-Z
    assert said[:1] == b"P" and len(said) == 5
    (pid,) = struct.unpack("=i", said[1:])
    assert os.getpgid(pid) == pid  # a group of its own, for the tools it runs
    return client


def ended(pid: int) -> int:
    """The forked front end's wait status, once it has exited."""
    pidfd = os.pidfd_open(pid)
    try:
        assert select.select([pidfd], [], [], 5)[0], "the front end is still running"
    finally:
        os.close(pidfd)
    return os.waitpid(pid, 0)[1]


def test_a_signal_passed_on_interrupts_the_front_end(monkeypatch, streams: Streams):
    client = serve(monkeypatch, streams, "sleeper", ["sleeper"])
    with client:
        pid = int(streams.line())
        client.send(b"K" + struct.pack("=i", signal.SIGINT))
        # it dies of SIGINT, as the tool would: the launcher is told to do the same
        assert answer(client) == b"S" + struct.pack("=i", -signal.SIGINT)
    assert os.waitstatus_to_exitcode(ended(pid)) == 0


def test_a_signal_that_kills_ends_it_without_an_answer(monkeypatch, streams: Streams):
    client = serve(monkeypatch, streams, "sleeper", ["sleeper"])
    with client:
        pid = int(streams.line())
        client.send(b"K" + struct.pack("=i", signal.SIGTERM))
        assert answer(client) == b""  # the launcher ends by the signal it passed on
    assert os.waitstatus_to_exitcode(ended(pid)) == -signal.SIGTERM


def test_the_launchers_end_hangs_up_the_front_end(monkeypatch, streams: Streams):
    client = serve(monkeypatch, streams, "sleeper", ["sleeper"])
    pid = int(streams.line())
    client.send(b"K" + struct.pack("=i", signal.SIGKILL))  # not one it passes on
    client.close()  # the launcher died (SIGKILL)
    assert os.waitstatus_to_exitcode(ended(pid)) == -signal.SIGHUP


def test_a_call_not_ours_is_handed_back_with_the_callers_argv0(monkeypatch, streams):
    client = serve(monkeypatch, streams, "hand_over", ["/usr/sbin/myname", "-x", "y"])
    with client:
        assert answer(client) == b"E/bin/echo\0/usr/sbin/myname\0-x\0y\0"
        assert answer(client) == b""


def test_an_unexpected_error_keeps_the_output_written(monkeypatch, streams: Streams):
    client = serve(monkeypatch, streams, "failing", ["failing"])
    with client:
        assert answer(client) == b"S" + struct.pack("=i", 1)
    assert streams.read(streams.out_r) == "partial output"
    assert "the ipoibfs front end failed: RuntimeError('unexpected')" in streams.read(
        streams.err_r)  # fmt: skip
