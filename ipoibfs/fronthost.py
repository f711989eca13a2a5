"""What every front end of `ipoibfs exec` shares (frontends.py's `ip`, `ethtool` and
`ifconfig`, arping.py's `arping`): JSON without the json module, the emulated host's mirror
and control files, and running the real tool in its namespace.

Imported by every front-end call (`python -I -S`, see hostexec.py), so, like the front ends,
it imports only what the interpreter has loaded already.
"""

from __future__ import annotations

import errno
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, NoReturn

# ------------------------------------------------------------------ JSON without the json module


class _Decoder:
    """What `_json.make_scanner` asks of a decoder (json.JSONDecoder's attributes)."""

    strict = False  # iproute2 writes control characters raw
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> float:
        return float(name.replace("Infinity", "inf"))


def loads(text: str) -> Any:
    """json.loads, on the C scanner alone (the json package would import re and enum)."""
    import _json

    start = len(text) - len(text.lstrip())
    try:
        value, end = _json.make_scanner(_Decoder)(text, start)  # type: ignore[arg-type]
    except StopIteration:
        raise ValueError("not JSON") from None
    if text[end:].strip():
        raise ValueError("extra data after the JSON value")
    return value


#: jsonw_puts (lib/json_writer.c): these and nothing else are escaped.
_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r", "\f": "\\f", "\b": "\\b", "\\": "\\\\",
            '"': '\\"'}  # fmt: skip
_TRANSLATE = str.maketrans(_ESCAPES)


class _JsonWriter:
    """iproute2's json_writer (lib/json_writer.c): its separators, its pretty layout (4
    spaces a level, `[ {`, `[ "a","b" ]`) and its escapes, so that a value read from `ip -j`
    and written back is byte for byte what ip printed."""

    def __init__(self, pretty: bool) -> None:
        self.pretty = pretty
        self.out: list[str] = []
        self.depth = 0
        self.sep = ""

    def _eol(self) -> None:
        if self.pretty:
            self.out.append("\n" + "    " * self.depth)

    def _eor(self) -> None:
        if self.sep:
            self.out.append(self.sep)
        self.sep = ","

    def _begin(self, c: str) -> None:
        self._eor()
        self.out.append(c)
        self.depth += 1
        self.sep = ""

    def _end(self, c: str) -> None:
        self.depth -= 1
        if self.sep:
            self._eol()
        self.out.append(c)
        self.sep = ","

    def value(self, v: object) -> None:
        if isinstance(v, dict):
            self._begin("{")
            for key, item in v.items():
                self._eor()
                self._eol()
                self.sep = ""
                colon = ": " if self.pretty else ":"
                self.out.append(f'"{str(key).translate(_TRANSLATE)}"{colon}')
                self.value(item)
            self._end("}")
        elif isinstance(v, list):
            self._begin("[")
            if self.pretty:
                self.out.append(" ")
            for item in v:
                self.value(item)
            if self.pretty and self.sep:
                self.out.append(" ")
            self.sep = ""
            self._end("]")
        else:
            self._eor()
            if isinstance(v, str):
                self.out.append(f'"{v.translate(_TRANSLATE)}"')
            elif v is None or isinstance(v, bool):
                self.out.append({None: "null", True: "true", False: "false"}[v])
            else:
                self.out.append(repr(v))


def dumps(value: object, pretty: bool = False) -> str:
    """`value` as iproute2 prints JSON (new_json_obj … delete_json_obj: a final newline)."""
    writer = _JsonWriter(pretty)
    writer.value(value)
    return "".join(writer.out) + "\n"


# ------------------------------------------------------------------ the host


class Result:
    """What a run of the real tool gave (subprocess.CompletedProcess's fields)."""

    __slots__ = ("returncode", "stdout", "stderr")

    def __init__(self, returncode: int, stdout: str = "", stderr: str = "") -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def write_text(path: str, text: str) -> None:
    """One open and one write(), as `echo text > path` does."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def read_fd(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def text_of(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


class Host:
    """The mirror of one emulated host, and how to run the real tools in its namespace."""

    def __init__(self, mirror: str | os.PathLike[str], real: list[str],
                 in_netns: bool = False, argv0: str | None = None) -> None:  # fmt: skip
        self.mirror = os.fspath(mirror) if mirror is not None else ""
        self.real = real  # the real binary, possibly behind nsenter
        self.in_netns = in_netns  # this process is in the host's network namespace
        self.argv0 = argv0  # the caller's argv[0], which the real tool gets in place of its path
        #: frontends_server's: (path, argv) for the launcher to exec
        self.exec_hook: Callable[[str, list[str]], None] | None = None
        self._links: dict[str, dict] | None = None

    def path(self, *parts: str) -> str:
        """A file of the mirror."""
        return "/".join((self.mirror, *parts))

    def read_control(self, name: str) -> Any:
        """What the mirror's control file `.ipoibfs/NAME` says (links, neigh, arp)."""
        fd = os.open(self.path(".ipoibfs", name), os.O_RDONLY | os.O_CLOEXEC)
        try:
            return loads(text_of(read_fd(fd)))
        finally:
            os.close(fd)

    def write_control(self, name: str, request: dict[str, object]) -> int:
        """One request to the control file `.ipoibfs/NAME`, in one write(): 0 or the errno
        the driver failed it with."""
        try:
            fd = os.open(self.path(".ipoibfs", name), os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, dumps(request).encode())
            finally:
                os.close(fd)
        except OSError as e:
            return e.errno or errno.EIO
        return 0

    @property
    def links(self) -> dict[str, dict]:
        if self._links is None:
            self._links = {link["ifname"]: link for link in self.read_control("links")}
        return self._links

    def shown_links(self) -> dict[str, dict]:
        """The links, for a command that only shows: a caller that may not read the control
        file (it is root's, as debugfs is) gets the real tool's answer unchanged."""
        try:
            return self.links
        except PermissionError:
            self._links = {}
            return self._links

    def is_ipoib(self, name: str) -> bool:
        """Whether `name` is one of the host's IPoIB interfaces, without reading them all."""
        if self._links is not None:
            return name in self._links
        return bool(name) and "/" not in name and name not in (".", "..") and (
            os.path.isdir(self.path("class", "net", name)))  # fmt: skip

    def request(self, **request: object) -> int:
        """Run one request in the driver (`.ipoibfs/links`): 0 or the errno it failed with."""
        err = self.write_control("links", request)
        if not err:
            self._links = None
        return err

    def _argv(self, args: list[str]) -> tuple[str, list[str]]:
        """The real tool's path and argv: argv[0] the caller's (its messages name the tool
        as the caller did, not as the kept binary under the exec root)."""
        argv = [*self.real, *args]
        if self.argv0 is not None and len(self.real) == 1:
            argv[0] = self.argv0
        return self.real[0], argv

    def _spawn(self, args: list[str], actions: list) -> int:
        path, argv = self._argv(args)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.posix_spawnp(path, argv, os.environ, file_actions=actions)
        status = os.waitpid(pid, 0)[1]
        code = os.waitstatus_to_exitcode(status)
        return 128 - code if code < 0 else code

    def run_real(self, args: list[str], capture: bool = False) -> Result:
        """The real tool on `args`; with `capture`, its stdout and stderr are returned."""
        if not capture:
            return Result(self._spawn(args, []))
        out, err = os.memfd_create("stdout"), os.memfd_create("stderr")
        try:
            dup = os.POSIX_SPAWN_DUP2
            code = self._spawn(args, [(dup, out, 1), (dup, err, 2)])
            return Result(code, text_of(os.pread(out, os.fstat(out).st_size, 0)),
                          text_of(os.pread(err, os.fstat(err).st_size, 0)))  # fmt: skip
        finally:
            os.close(out)
            os.close(err)

    def output(self, args: list[str], meanwhile: Callable[[], object] | None = None,
               ) -> tuple[int, str]:  # fmt: skip
        """The real tool's status and stdout; its stderr goes where ours goes. `meanwhile`
        runs while the tool does (both CPUs work)."""
        path, argv = self._argv(args)
        sys.stdout.flush()
        sys.stderr.flush()
        read, write = os.pipe()
        try:
            try:
                pid = os.posix_spawnp(path, argv, os.environ,
                                      file_actions=[(os.POSIX_SPAWN_DUP2, write, 1)])  # fmt: skip
            finally:
                os.close(write)
            try:
                if meanwhile is not None:
                    meanwhile()
            finally:
                data = read_fd(read)
                code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        finally:
            os.close(read)
        return (128 - code if code < 0 else code), text_of(data)

    def exec_real(self, args: list[str]) -> NoReturn:
        """Become the real tool: a call that is not ours costs no more than an exec."""
        path, argv = self._argv(args)
        sys.stdout.flush()
        sys.stderr.flush()
        if self.exec_hook is not None:
            self.exec_hook(path, argv)  # the launcher execs it, in the caller's own process
        os.execvp(path, argv)

    def exists(self, name: str) -> bool:
        """Whether a netdev of that name exists in the host's namespace (ours or not)."""
        return self.run_real(["link", "show", "dev", name], capture=True).returncode == 0
