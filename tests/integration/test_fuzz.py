"""A bounded fuzz of every writable file of a mounted host (about 20 s).

Random inputs, drawn around each store's grammar (numbers in every base with signs, white
space, NULs and garbage around them; the mode strings; uevent actions, UUIDs and KEY=VALUE
pairs; aliases around IFALIASZ; JSON for the control file; raw and overlong bytes), are
written to every writable file. Each write is checked:

* against the table's models (tests/unit/test_parsers.py): the errno, and what the file
  shows after an accepted write;
* for the generic files, against a real TUN's own sysfs file in the same namespace, set up
  as the host's (a queue attached): the same refusals from the parsers, and for the files
  whose semantics a TUN shares, the same result and the same value shown;
* for a refused write: nothing changed (the host's files and interfaces);
* and the daemon logs no traceback.

IPOIBFS_FUZZ_SECONDS (default 20) and IPOIBFS_FUZZ_SEED change the budget and the seed.
"""

from __future__ import annotations

import collections
import errno
import json
import os
import random
import subprocess
import sys
import time
import uuid

import pytest

from tests.unit.test_parsers import FILES, ROWS, Err, State, expect, ref_kstrtoul, taken

from .conftest import wait_for, write

SECONDS = float(os.environ.get("IPOIBFS_FUZZ_SECONDS", "20"))
SEED = int(os.environ.get("IPOIBFS_FUZZ_SEED", "11"))
PROBE = "probe0"
#: The child that is always there (delete_child's target), and how many others a run makes.
KEPT_CHILD = 0x8001
MAX_CHILDREN = 12
#: Parser refusals, which a TUN's generic file must give too.
PARSE_ERRNOS = (errno.EINVAL, errno.ERANGE)

ORACLE = r"""
import fcntl, json, os, struct, sys
TUNSETIFF, IFF_TUN, IFF_NO_PI, IFF_VNET_HDR = 0x400454CA, 0x0001, 0x1000, 0x4000
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", sys.argv[1].encode(),
                                       IFF_TUN | IFF_NO_PI | IFF_VNET_HDR))
print("ready", flush=True)
for line in sys.stdin:
    name, _, data = line.rstrip("\n").partition(" ")
    data = bytes.fromhex(data)
    path = f"/sys/class/net/{sys.argv[1]}/{name}"
    out = {}
    w = os.open(path, os.O_WRONLY)
    try:
        out["result"] = os.write(w, data) if data else 0
    except OSError as e:
        out["result"] = -e.errno
    os.close(w)
    try:
        with open(path, "rb") as f:
            out["shown"] = f.read().hex()
    except OSError as e:
        out["shown"] = None
    print(json.dumps(out), flush=True)
"""


class Oracle:
    """A real TUN in the host's namespace with a queue attached, as the host's TUNs are,
    whose own sysfs files (the kernel's net-sysfs) are written as the host's are."""

    def __init__(self, netns: str) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-c", ORACLE, PROBE],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None and self.proc.stdout.readline() == "ready\n"

    def write(self, name: str, data: bytes) -> tuple[int, bytes | None]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{name} {data.hex()}\n")
        self.proc.stdin.flush()
        out = json.loads(self.proc.stdout.readline())
        shown = out["shown"]
        return out["result"], None if shown is None else bytes.fromhex(shown)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


# ----------------------------------------------------------------- inputs

SPACES = ["", "", "", " ", "\t", "\xa0", "\n", "\v", "\x85", "  "]
SIGNS = ["", "", "", "", "+", "-", "+-", "-+", "++", "--"]
SUFFIXES = ["", "", "\n", "\n", "\n\n", " ", "\0", "\0junk", "x", "\r\n", "\xff", " \n", "0x"]
SPECIAL = [0, 1, 2, 67, 68, 71, 72, 1500, 2044, 4092, 4093, 65520, 65521, 0x7FFF, 0x8000,
           KEPT_CHILD, 0xFFFF, 0x10000, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63, 2**64 - 1,
           2**64, 10**20]  # fmt: skip


def number(rng: random.Random) -> bytes:
    n = rng.choice(
        [rng.choice(SPECIAL) + rng.randrange(-2, 3), rng.randrange(0, 100),
         rng.randrange(0, 70000), rng.randrange(0, 2**33), rng.randrange(0, 2**65)]
    )  # fmt: skip
    n = abs(n)
    text = rng.choice([str(n), str(n), f"0x{n:x}", f"0X{n:X}", f"0{n:o}", f"{n:x}"])
    raw = rng.choice(SPACES) + rng.choice(SIGNS) + text + rng.choice(SUFFIXES)
    return raw.encode("latin-1")


def mode_string(rng: random.Random) -> bytes:
    word = rng.choice(["connected", "datagram", "connected", "datagram", "CONNECTED",
                       "connect", "datagramx", ""])  # fmt: skip
    return (rng.choice(SPACES[:4]) + word + rng.choice(SUFFIXES)).encode("latin-1")


def uevent_string(rng: random.Random) -> bytes:
    action = rng.choice([b"add", b"remove", b"change", b"move", b"online", b"offline",
                         b"bind", b"unbind", b"ADD", b"ad", b"", b"changes"])  # fmt: skip
    parts = [action]
    if rng.random() < 0.6:
        u = str(uuid.UUID(int=rng.getrandbits(128))).encode()
        u = rng.choice([u, u, u.upper(), u[:-1], u.replace(b"-", b"_", 1), u + b"0"])
        parts.append(b" " + u)
        for _ in range(rng.choice([0, 0, 1, 2, 3])):
            key = rng.choice([b"A", b"KEY1", b"k\xe9y", b"", b"A-B", b"x y"])
            value = rng.choice([b"b", b"V2", b"\xc0\xff", b"", b"v=w", b"\xd7"])
            parts.append(b" " + key + b"=" + value)
    raw = rng.choice([b"", b"", b" "]) + b"".join(parts)
    return raw + rng.choice([b"", b"", b"\n", b"\0", b" ", b"  ", b"\n\n", b"\0 x"])


def alias_string(rng: random.Random) -> bytes:
    n = rng.choice([0, 1, 10, 254, 255, 256, 257, rng.randrange(0, 300)])
    body = bytes(rng.choice(b"abcXYZ019 -_.\xe9\xff\x80\0") for _ in range(n))
    return body + rng.choice([b"", b"\n", b"\n\n", b"\0"])


def json_string(rng: random.Random) -> bytes:
    choice = rng.random()
    if choice < 0.3:
        return rng.choice([b"{", b"[]", b"null", b"{}", b'"x"', b"[" * 3000, b"\xff{}"])
    request: dict = {"op": rng.choice(["dellink", "changelink", "coalesce", "bogus", None])}
    if rng.random() < 0.7:
        request["dev"] = rng.choice(["nope", "ib9", "", "ib0 "])
    for key in ("mode", "umcast"):
        if rng.random() < 0.3:
            request[key] = rng.choice([-1, 0x10000, "1", 1.5, True, None])
    return json.dumps(request).encode()


#: Names dev_valid_name (or dev_alloc_name) refuses. (An explicit empty name is refused by
#: the kernel too, but the driver's new_link takes it for no name: not listed.)
BAD_NAMES = ["ok\u0000junk", "a/b", "a:b", "a b", "a\tb", "a\u00a0b", "\ud800", ".", "..",
             "x" * 16, "a%s", "a%d%d"]  # fmt: skip


def raw_bytes(rng: random.Random) -> bytes:
    choice = rng.random()
    if choice < 0.1:
        return bytes([rng.choice(b"0123456789")]) * rng.randrange(4000, 5000)
    if choice < 0.2:
        return rng.randbytes(rng.randrange(4090, 4200))
    return rng.randbytes(rng.randrange(0, 24))


SPECIALIZED = {
    "mode": mode_string,
    "uevent": uevent_string,
    "ifalias": alias_string,
    "node_desc": alias_string,
    "links": json_string,
}


def draw(rng: random.Random, name: str) -> bytes:
    r = rng.random()
    if name in SPECIALIZED and r < 0.6:
        return SPECIALIZED[name](rng)
    if r < 0.75:
        return number(rng)
    if r < 0.88:
        return rng.choice(ROWS).data
    return raw_bytes(rng)


# ----------------------------------------------------------------- the host as the models see it


def raw_write(path, data: bytes) -> int:
    fd = os.open(path, os.O_WRONLY)
    try:
        return os.write(fd, data) if data else 0
    except OSError as e:
        return -e.errno
    finally:
        os.close(fd)


def show(path) -> bytes | int:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        return -e.errno


class Target:
    def __init__(self, host) -> None:
        self.host = host

    def path(self, name: str):
        return self.host.mp / FILES[name].path

    def state(self) -> State:
        names = set(self.host.interfaces())
        children = {}
        for n in names:
            if n.startswith("ib0."):
                children[int(n[4:], 16) | 0x8000] = n
        mtu = show(self.path("mtu"))
        return State(
            mode=show(self.path("mode")).decode().strip(),  # type: ignore[union-attr]
            mtu=int(mtu) if isinstance(mtu, bytes) else -1,
            children=children,
            interfaces=names,
        )

    def snapshot(self, name: str, full: bool) -> dict:
        """The written file's show and the interfaces; every file's show if `full`."""
        names = SHOWN if full else [n for n in SHOWN if n == name]
        out: dict = {n: show(self.path(n)) for n in names}
        out["interfaces"] = sorted(self.host.interfaces())
        return out


SHOWN = ("mode", "mtu", "umcast", "ifalias", "tx_queue_len", "netdev_group", "flags",
         "gro_flush_timeout", "napi_defer_hard_irqs", "threaded", "proto_down", "node_desc",
         "debug_level", "mcast_debug_level")  # fmt: skip


def netns_links(netns: str) -> set[bytes]:
    """The namespace's netdev names (as bytes: an alias need not be UTF-8)."""
    out = subprocess.run(["ip", "-n", netns, "-br", "link"], capture_output=True, check=True)
    return {line.split()[0].split(b"@")[0] for line in out.stdout.splitlines() if line.strip()}


def put_back_kept_child(host) -> None:
    kept = f"ib0.{KEPT_CHILD:04x}"
    wait_for(lambda: kept not in host.interfaces(), what="the child to go")
    wait_for(lambda: write(host.net() / "create_child", f"{KEPT_CHILD:#x}") == 0,
             what="the child to come back")  # fmt: skip


@pytest.fixture
def oracle(host):
    o = Oracle(host.netns.name)
    yield o
    o.close()


def test_fuzz_every_writable_file(host, oracle):
    rng = random.Random(SEED)
    target = Target(host)
    assert write(host.net() / "create_child", f"{KEPT_CHILD:#x}") == 0
    writes: collections.Counter = collections.Counter()
    skipped: collections.Counter = collections.Counter()
    spent: collections.Counter = collections.Counter()
    mismatches: list[str] = []
    oracle_checked = 0
    children_made = 0
    names = list(FILES)
    deadline = time.monotonic() + SECONDS

    def mismatch(kind: str, name: str, data: bytes, detail: object) -> None:
        mismatches.append(f"{kind} {name} {data[:48]!r}: {detail}")

    i = refusals = 0
    st = target.state()
    while time.monotonic() < deadline:
        name = names[i % len(names)]
        i += 1
        started = time.monotonic()
        data = draw(rng, name)
        err, shown = expect(name, data, st)
        parsed = ref_kstrtoul(data[:4096])
        if name == "flags" and not isinstance(parsed, Err) and parsed & 1:
            skipped[name] += 1  # IFF_UP: the models keep ib0 down
            continue
        if name == "create_child" and not err and children_made >= MAX_CHILDREN:
            skipped[name] += 1
            continue
        if name == "links" and rng.random() < 0.1:
            # newlink with a name dev_valid_name refuses: EINVAL, and no netdev
            bad = rng.choice(BAD_NAMES)
            data = json.dumps({"op": "newlink", "link": "ib0", "name": bad}).encode()
            err, shown = errno.EINVAL, None
            netdevs = netns_links(host.netns.name)
        full = err != 0 and refusals % 10 == 0
        before = target.snapshot(name, full) if err else None
        refusals += err != 0
        got = raw_write(target.path(name), data)
        writes[name] += 1
        want = -err if err else taken(name, data) if data else 0
        model = FILES[name]
        tun_result = None
        if model.tun is not None:
            oracle_checked += 1
            tun_result, tun_shown = oracle.write(name, data)
            if model.tun == "all":
                if got != tun_result:
                    mismatch("tun", name, data, (got, tun_result))
                elif got >= 0 and name != "uevent" and show(target.path(name)) != tun_shown:
                    mismatch("tun-shown", name, data, (show(target.path(name)), tun_shown))
            elif data and isinstance(parsed, Err) and got != tun_result:
                mismatch("tun-parse", name, data, (got, tun_result))
        environment_refusal = model.tun == "all" and got == tun_result and got < 0
        if got != want and not (environment_refusal and -err not in PARSE_ERRNOS):
            mismatch("model", name, data, (got, want))
        if got < 0:
            after = target.snapshot(name, full)
            if before is not None and after != before:
                mismatch("state", name, data, "changed on a refusal")
        elif shown is not None and show(target.path(name)) != shown:
            mismatch("shown", name, data, (show(target.path(name)), shown))
        if name == "links" and b'"newlink"' in data and netns_links(host.netns.name) != netdevs:
            mismatch("ghost", name, data, netns_links(host.netns.name) ^ netdevs)
        # put back what an accepted write made or removed
        if name == "create_child" and got > 0:
            children_made += 1
            made = set(host.interfaces()) - st.interfaces
            for child in made:
                request = json.dumps({"op": "dellink", "dev": child}).encode()
                assert raw_write(host.mp / ".ipoibfs" / "links", request) > 0
        if name == "delete_child" and got > 0:
            put_back_kept_child(host)
        if got >= 0:
            st = target.state()  # what an accepted write may have changed
        spent[name] += time.monotonic() - started
        if i % 200 == 0:
            assert "Traceback" not in host.log, host.log[-4000:]
    total = sum(writes.values())
    print(
        f"\nfuzz: {total} writes in {SECONDS:.0f} s (seed {SEED}), {total - refusals} accepted, "
        f"{refusals} refused, {oracle_checked} also to a TUN's sysfs, {len(mismatches)} "
        f"mismatches; skipped {dict(skipped)}\n"
        f"per file: {dict(writes)}\n"
        f"seconds per file: { {k: round(v, 1) for k, v in spent.items()} }"
    )
    assert "Traceback" not in host.log, host.log[-4000:]
    assert not mismatches, "\n".join(mismatches[:40])
    assert all(writes[n] > 0 for n in FILES), writes
