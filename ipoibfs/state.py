"""The files ipoibfs keeps under /run/ipoibfs, made so that they cannot be turned against root,
and the daemons they announce.

Every file here is created with a fixed mode whatever the umask, never through a symlink (a
new file is written under a fresh name with O_EXCL and renamed over the old one, inside a
directory opened with O_NOFOLLOW), in a directory owned by root and writable by root only
(`open_dir` refuses one owned by someone else and repairs a group- or world-writable one).
A daemon's pid file is locked (a POSIX record lock) for as long as the daemon lives, so a
pid is acted on only while its daemon holds that lock: a pid left behind by a SIGKILLed daemon
and reused by an unrelated process is never signalled (`running_daemon`). Processes without a
pid file (the lab's fabric) are identified by their start time in /proc/PID/stat and their
command line (`find_process`). Signals go through a pidfd, so they cannot reach a process
that took the pid after the check.

What the other layers use:
- `open_dir(path)`: a directory fd, the path made (0755) and checked component by component.
- `write_file(path, data, mode)`: replace a file atomically; `read_file(path)`,
  `remove_file(path)`.
- `write_private_file(path, data)` / `read_private_file(path)`: 0600 secrets (keys); a file
  that others can read, or that root does not own, is refused.
- `open_append(path, mode)`: an fd for appending (a log), never a symlink's target;
  `open_log(path)`: a line-buffered log that rotates at `LOG_LIMIT` to `path.1`.
- `unix_socket_path(sock, path, mode, group)` (a context manager around the bind, for trio
  sockets too) and `bind_unix(...)`: a Unix socket with exactly that mode and group (set on
  the socket before bind, so there is no moment with the umask's mode).
- `check_name(text, what)`, `check_prefix(text)`, `check_host_name(text)`,
  `check_netns_name(text)`: the names that become file and namespace names.
- `unix_socket_dead(path)`, `remove_dead_sockets(paths)`: sockets a killed process left.
- `PidFile.create(path)` (the daemon), `running_daemon(mountpoint)`, `find_process(pid, ...)`,
  `Process.signal`/`Process.wait`, `remove_stale_state(mountpoint)`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import io
import os
import re
import secrets
import select
import signal
import socket
import stat
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import UsageError

RUN_DIR = "/run/ipoibfs"
STATE_DIR = f"{RUN_DIR}/daemons"
#: Where `ipoibfs exec` mounts its private tmpfs, with the real sysfs and debugfs inside
#: (hostexec.py mounts them; the mirror's exec views, sysfs/views.py, link their real
#: entries there).
EXEC_ROOT = "/run/ipoibfs-exec"
REAL_SYS = f"{EXEC_ROOT}/sys"
REAL_DEBUG = f"{EXEC_ROOT}/debug"

DIR_MODE = 0o755
FILE_MODE = 0o644
PRIVATE_MODE = 0o600
#: A daemon log is moved to `<log>.1` (replacing the one before) when it grows past this, at
#: the daemon's start and while it runs: at most two such sizes per mountpoint.
LOG_LIMIT = 1 << 20
#: Longest `--prefix`: the lab's data sockets are named after the fabric socket and the host
#: (/run/ipoibfs/P-fabric.sock.P-h250.<pid>.p16), and a Unix socket path holds 107 bytes.
PREFIX_MAX = 24
HOST_NAME_MAX = 64

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FLOCK = "hhqqi4x"  # struct flock on x86-64 and arm64: type, whence, start, len, pid


# ------------------------------------------------------------------------------ names

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_name(text: str, what: str, max_len: int = PREFIX_MAX, *, dots: bool = False) -> str:
    """`text` if it is a plain name (a letter or digit, then letters, digits, '-', '_', and
    '.' if `dots`; at most `max_len`), else a UsageError naming `what`."""
    pattern = _HOST if dots else _NAME
    if pattern.fullmatch(text) and len(text) <= max_len:
        return text
    allowed = "letters, digits, '.', '-' and '_'" if dots else "letters, digits, '-' and '_'"
    raise UsageError(f"invalid {what} '{text}': use {allowed}, starting with a letter or "
                     f"digit, at most {max_len} characters")  # fmt: skip


def check_prefix(text: str) -> str:
    """A lab prefix ('' for the default lab)."""
    return text and check_name(text, "--prefix", PREFIX_MAX)


def check_host_name(text: str) -> str:
    """A host name (`--name`): it becomes part of socket paths and node_desc."""
    return check_name(text, "host name", HOST_NAME_MAX, dots=True)


def check_netns_name(text: str) -> str:
    """A network namespace name as `ip netns` takes it: a file name in /run/netns."""
    if not text or "/" in text or text in (".", "..") or len(text) > 255 or "\0" in text:
        raise UsageError(f"invalid network namespace name '{text}' (a name as `ip netns` "
                         "lists it, without '/')")  # fmt: skip
    return text


# ------------------------------------------------------------------------------ directories


def _refuse(path: str, why: str) -> UsageError:
    return UsageError(f"{path} {why}: refusing to use it (remove it, or fix its owner and "
                      "mode, and retry)")  # fmt: skip


def open_dir(path: str, managed: str | None = RUN_DIR, *, create: bool = True) -> int:
    """An fd of directory `path` (the caller closes it), walked from / without following a
    symlink. Each component must be owned by root (or the caller). `managed` (by default
    RUN_DIR) and what is below it are ipoibfs's own: missing ones are made (if `create`)
    with mode 0755 whatever the umask, and a group- or world-writable one is repaired to
    0755. Any other component (/, /run, /tmp) must exist, and one that others can write is
    accepted only with the sticky bit."""
    path = os.path.abspath(path)
    base = os.path.abspath(managed) if managed is not None else None
    owners = {0, os.geteuid()}
    fd = os.open("/", _O_DIR)
    here = ""
    try:
        for part in [p for p in path.split("/") if p]:
            here += "/" + part
            ours = base is not None and (here == base or here.startswith(base.rstrip("/") + "/"))
            try:
                child = os.open(part, _O_DIR, dir_fd=fd)
            except FileNotFoundError:
                if not (ours and create):
                    raise
                try:
                    os.mkdir(part, 0o700, dir_fd=fd)
                except FileExistsError:
                    pass  # made meanwhile: checked below like any other
                child = os.open(part, _O_DIR, dir_fd=fd)
                os.fchmod(child, DIR_MODE)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _refuse(here, "is not a directory (a symlink?)") from None
                raise
            os.close(fd)
            fd = child
            st = os.fstat(fd)
            if st.st_uid not in owners:
                raise _refuse(here, f"is owned by uid {st.st_uid}, not root")
            if st.st_mode & 0o022:
                if ours:
                    os.fchmod(fd, DIR_MODE)
                elif not st.st_mode & stat.S_ISVTX:
                    raise _refuse(here, "is writable by others")
        return fd
    except BaseException:
        os.close(fd)
        raise


def _managed(path: str) -> str | None:
    """RUN_DIR for a path below it (ipoibfs's own directories); None elsewhere: a directory
    the user named (a fabric address's, a key file's) is checked, never made or changed."""
    path = os.path.abspath(path)
    return RUN_DIR if path.startswith(RUN_DIR + "/") else None


@contextlib.contextmanager
def _parent(path: str, managed: str | None = None, create: bool = True
            ) -> Iterator[tuple[int, str]]:  # fmt: skip
    """(fd of the checked parent directory, base name) of `path`."""
    path = os.path.abspath(path)
    head, name = os.path.split(path)
    if not name:
        raise UsageError(f"{path}: not a file name")
    fd = open_dir(head, managed if managed is not None else _managed(path), create=create)
    try:
        yield fd, name
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------ files


def write_file(path: str, data: bytes | str, mode: int = FILE_MODE, *,
               managed: str | None = None) -> None:  # fmt: skip
    """Replace `path` with `data`, mode `mode` exactly: written under a fresh name (O_EXCL,
    O_NOFOLLOW) in the checked directory, then renamed over whatever was at `path` (a
    planted symlink is replaced, its target untouched). Readers see the old file or the new
    one, never a part."""
    _write(path, data.encode() if isinstance(data, str) else data, mode, managed, keep=False)


def _write(path: str, data: bytes, mode: int, managed: str | None, keep: bool) -> int | None:
    with _parent(path, managed) as (dir_fd, name):
        tmp = f".{name}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dir_fd)  # fmt: skip
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if keep:
                _lock(fd)
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
        if keep:
            return fd
        os.close(fd)
        return None


def write_private_file(path: str, data: bytes | str) -> None:
    """A secret (a fabric key): `write_file` with mode 0600."""
    write_file(path, data, PRIVATE_MODE)


def _open_regular(dir_fd: int, name: str, flags: int) -> int:
    fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", name)
    return fd


def read_file(path: str, limit: int = 1 << 20) -> str | None:
    """The text of a state file, or None if there is none (or it is a symlink, not a
    regular file, or not owned by root: nothing ipoibfs made)."""
    try:
        with _parent(path, create=False) as (dir_fd, name):
            fd = _open_regular(dir_fd, name, os.O_RDONLY)
    except (OSError, UsageError):
        return None
    try:
        if os.fstat(fd).st_uid not in {0, os.geteuid()}:
            return None
        return os.read(fd, limit).decode(errors="replace")
    finally:
        os.close(fd)


def read_private_file(path: str, limit: int = 1 << 16) -> bytes:
    """A secret's bytes. Refused with one line unless it is a regular file owned by root
    (or the caller) that neither group nor others can read or write, as ssh does."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{path}: not a regular file")
        if st.st_uid not in {0, os.geteuid()} or st.st_mode & 0o077:
            raise UsageError(f"{path}: must be owned by root and readable by its owner only "
                             f"(it is uid {st.st_uid}, mode {st.st_mode & 0o7777:04o}; "
                             "chmod 600)")  # fmt: skip
        return os.read(fd, limit)
    finally:
        os.close(fd)


def remove_file(path: str) -> bool:
    """Unlink `path` (a symlink itself, never its target). Whether something was there."""
    try:
        with _parent(path, create=False) as (dir_fd, name):
            os.unlink(name, dir_fd=dir_fd)
        return True
    except (OSError, UsageError):
        return False


def open_append(path: str, mode: int = FILE_MODE, *, fresh: bool = False) -> int:
    """An fd appending to `path` (mode `mode` exactly). What is at `path` is replaced by a new
    file if it is not a regular file of root's with one link (a planted symlink, FIFO or hard
    link), or if `fresh`."""
    with _parent(path) as (dir_fd, name):
        fd = None
        if not fresh:
            try:
                fd = _open_regular(dir_fd, name, os.O_WRONLY | os.O_APPEND)
                st = os.fstat(fd)
                if st.st_uid not in {0, os.geteuid()} or st.st_nlink != 1:
                    os.close(fd)
                    fd = None
            except OSError:
                fd = None
        if fd is None:
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                os.unlink(name, dir_fd=dir_fd)
            fd = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)  # fmt: skip
        os.fchmod(fd, mode)
        os.set_blocking(fd, True)
        return fd


class BoundedLog(io.TextIOWrapper):
    """A daemon's log: line-buffered text appended to `path`. When it grows past `limit` it
    is renamed to `path.1` (replacing the previous one) and a new `path` is started; fds 1
    and 2, if they are the same file, move to the new one too."""

    def __init__(self, path: str, limit: int = LOG_LIMIT) -> None:
        self.path = path
        self.limit = limit
        fd = open_append(path)
        if os.fstat(fd).st_size >= limit:
            os.close(fd)
            self._rename_away()
            fd = open_append(path)
        super().__init__(io.BufferedWriter(io.FileIO(fd, "a")), encoding="utf-8",
                         errors="backslashreplace", line_buffering=True)  # fmt: skip

    def _rename_away(self) -> None:
        with _parent(self.path) as (dir_fd, name):
            with contextlib.suppress(FileNotFoundError):
                os.rename(name, f"{name}.1", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)

    def write(self, s: str) -> int:
        n = super().write(s)
        try:
            if os.fstat(self.fileno()).st_size >= self.limit:
                self.rotate()
        except (OSError, ValueError):
            pass  # a log that cannot rotate still logs
        return n

    def rotate(self) -> None:
        self.flush()
        old = os.fstat(self.fileno())
        self._rename_away()
        new = open_append(self.path)
        try:
            for fd in (1, 2, self.fileno()):
                with contextlib.suppress(OSError):
                    st = os.fstat(fd)
                    if (st.st_dev, st.st_ino) == (old.st_dev, old.st_ino):
                        os.dup2(new, fd, inheritable=fd != self.fileno())
        finally:
            os.close(new)


def open_log(path: str, limit: int = LOG_LIMIT) -> BoundedLog:
    return BoundedLog(path, limit)


@contextlib.contextmanager
def unix_socket_path(sock: Any, path: str, mode: int = PRIVATE_MODE,
                     group: str | int | None = None) -> Iterator[str]:  # fmt: skip
    """Bind a Unix socket at `path` with exactly `mode` (and `group`, a name or gid), for
    sync and trio code alike:

        with unix_socket_path(sock, path, 0o600) as target:
            await sock.bind(target)      # or sock.bind(target)
        sock.listen()

    The mode is set on the socket before bind(), so the file never has the umask's
    permissions, and the group and exact mode after it; a stream socket should listen()
    only then. A stale socket at `path` is replaced; anything else there (a regular file,
    a symlink) is refused."""
    with _parent(path) as (dir_fd, name):
        try:
            st = os.lstat(name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise UsageError(f"{path} exists and is not a socket")
            os.unlink(name, dir_fd=dir_fd)
        os.fchmod(sock.fileno(), mode)
        yield os.path.abspath(path)
        st = os.lstat(name, dir_fd=dir_fd)
        if not stat.S_ISSOCK(st.st_mode):
            raise UsageError(f"{path}: replaced while it was bound")
        if group is not None:
            gid = group if isinstance(group, int) else grp.getgrnam(group).gr_gid
            os.chown(name, -1, gid, dir_fd=dir_fd, follow_symlinks=False)
        os.chmod(name, mode, dir_fd=dir_fd)  # the umask may have taken bits away


def bind_unix(sock: Any, path: str, mode: int = PRIVATE_MODE,
              group: str | int | None = None) -> None:  # fmt: skip
    """`unix_socket_path` for a socket.socket."""
    with unix_socket_path(sock, path, mode, group) as target:
        sock.bind(target)


def unix_socket_dead(path: str) -> bool:
    """Whether `path` is a Unix socket file nobody is bound to any more (what a killed
    process leaves): connecting to it is refused. A datagram probe sends nothing; a stream
    one is tried only for a stream socket."""
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return False
    except OSError:
        return False
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM, socket.SOCK_SEQPACKET):
        with socket.socket(socket.AF_UNIX, kind) as probe:
            try:
                probe.connect(path)
                return False
            except ConnectionRefusedError:
                return True
            except OSError as e:
                if e.errno != errno.EPROTOTYPE:
                    return False
    return False


def remove_dead_sockets(paths: Sequence[str]) -> list[str]:
    """Unlink those of `paths` that are dead Unix sockets (see `unix_socket_dead`)."""
    return [p for p in paths if unix_socket_dead(p) and remove_file(p)]


# ------------------------------------------------------------------------------ processes


def state_file(mountpoint: str, suffix: str) -> str:
    """/run/ipoibfs/daemons/<escaped mountpoint>.<suffix>, escaped as systemd-escape --path."""
    escaped = os.path.abspath(mountpoint).strip("/").replace("-", "\\x2d").replace("/", "-")
    return os.path.join(STATE_DIR, f"{escaped or '-'}.{suffix}")


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (field 3, the state, first), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_stopped(pid: int) -> bool:
    """Whether a process is stopped (SIGSTOP, or a tracer's stop)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] in ("T", "t")


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: when the process started, in clock ticks after boot.
    With the pid it names one process for the whole uptime (None: no such process)."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def process_cmdline(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]]


def is_ipoibfs(argv: Sequence[str] | None, *words: str) -> bool:
    """Whether a command line is ipoibfs's (`.../ipoibfs ...`, `python -m ipoibfs ...`), with
    each of `words` as one of its arguments (`mount`; `fabric`, `serve`)."""
    if not argv:
        return False
    is_ours = any(os.path.basename(a) == "ipoibfs" or a == "ipoibfs" for a in argv[:3])
    return is_ours and all(w in argv[1:] for w in words)


class Process:
    """A process held by a pidfd: signals reach this one process or none."""

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self.pidfd = pidfd

    def signal(self, sig: int) -> bool:
        """Send `sig`; False if the process has gone."""
        try:
            signal.pidfd_send_signal(self.pidfd, sig)
            return True
        except ProcessLookupError:
            return False

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the process to exit (the pidfd polls readable then).
        Whether it has."""
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        return bool(poller.poll(max(0, int(timeout * 1000))))

    def stop(self, timeout: float = 10.0, kill_after: float = 5.0) -> bool:
        """SIGTERM, wait `timeout` s, then SIGKILL and wait `kill_after` s. Whether it exited."""
        if self.signal(signal.SIGTERM) and self.wait(timeout):
            return True
        self.signal(signal.SIGKILL)
        return self.wait(kill_after)

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return None


def find_process(pid: int | None, start_time: int | None = None,
                 words: Sequence[str] = ()) -> Process | None:  # fmt: skip
    """The process `pid` if it is the one that was recorded: started at `start_time` (from
    `process_start_time`, when it was recorded) and with an ipoibfs command line carrying
    `words`. None if it has gone or the pid now belongs to another process."""
    if not pid or pid <= 0:
        return None
    pidfd = _open_pidfd(pid)
    if pidfd is None:
        return None
    # Checked after the pidfd is open: if the pid was reused before, the check sees the new
    # process and fails; the pidfd then stays with the process that passed.
    ok = is_ipoibfs(process_cmdline(pid), *words)
    if ok and start_time is not None:
        ok = process_start_time(pid) == start_time
    if not ok or process_start_time(pid) is None:
        os.close(pidfd)
        return None
    return Process(pid, pidfd)


def _lock(fd: int) -> None:
    """A POSIX write lock on the whole file, held by this process until it exits or closes
    the fd (F_GETLK tells others its pid)."""
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def lock_holder(path: str) -> int | None:
    """The pid of the process holding a lock on `path` (None: nobody, or no file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        query = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        l_type, _, _, _, l_pid = struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, query))
    except OSError:
        return None
    finally:
        os.close(fd)
    return None if l_type == fcntl.F_UNLCK else l_pid


@dataclass
class PidFile:
    """A daemon's pid file: written (0644) under a fresh name, locked, then renamed into
    place, so it never exists unlocked while its daemon lives. The lock goes with the
    daemon, whatever ends it."""

    path: str
    fd: int

    @classmethod
    def create(cls, path: str) -> PidFile:
        fd = _write(path, f"{os.getpid()}\n".encode(), FILE_MODE, None, keep=True)
        assert fd is not None
        return cls(path, fd)

    def remove(self) -> None:
        """Unlink, then release the lock. Idempotent."""
        if self.fd < 0:
            return
        remove_file(self.path)
        os.close(self.fd)
        self.fd = -1


def daemon_from_pid_file(path: str, words: Sequence[str] = ("mount",)) -> Process | None:
    """The daemon a pid file names, if it is still the one that wrote it: the process that
    holds the file's lock, whose pid is the file's and whose command line is ipoibfs's.
    None for a stale file (its daemon gone, the pid free or someone else's)."""
    text = read_file(path)
    try:
        pid = int((text or "").split()[0])
    except (ValueError, IndexError):
        return None
    if lock_holder(path) != pid:
        return None
    found = find_process(pid, None, words)
    # The lock is checked again with the pidfd held: the holder is the process it names.
    if found is not None and lock_holder(path) != pid:
        found.close()
        return None
    return found


def running_daemon(mountpoint: str) -> Process | None:
    """The live daemon serving `mountpoint` (see `daemon_from_pid_file`)."""
    return daemon_from_pid_file(state_file(mountpoint, "pid"))


def remove_stale_state(mountpoint: str) -> list[str]:
    """Remove the pid and netns files of `mountpoint` unless its daemon still holds them.
    The files removed."""
    pid_path = state_file(mountpoint, "pid")
    daemon = running_daemon(mountpoint)
    if daemon is not None:
        daemon.close()
        return []
    return [p for p in (pid_path, state_file(mountpoint, "netns")) if remove_file(p)]
