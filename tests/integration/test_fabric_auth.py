"""A fabric that checks who is talking: on a Unix socket root only (SO_PEERCRED, fixed socket
modes), over TCP a key that hosts prove and UDP data authenticated with it; a port's LID
belongs to its registrant; received data whose source or P_Key is not its sender's is
dropped before it reaches any host."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import (
    CARRIER_IP,
    GUID,
    IPOIBFS,
    REPO,
    Host,
    Netns,
    TcpFabric,
    read,
    run,
    tcp_fabric,
    wait_for,
    write,
)

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
PYTHON = str(REPO / ".venv" / "bin" / "python")

#: A port that speaks the SM's protocol and the wire itself, as a stranger would: run as
#: `python -c RAW + snippet`, with the snippet using RawPort.
RAW = r'''
import json, os, secrets, socket, sys
from ipoibfs import wire
from ipoibfs.fabric.service import data_key, hello_proof, read_key, tcp_address
from ipoibfs.fabric.transport import DataPlane

class RawPort:
    """A registered port: its SM connection, its LID, its own data socket."""

    def __init__(self, address, guid, data, key_file=None):
        tcp = tcp_address(address)
        if tcp:
            self.sm = socket.create_connection(tcp, timeout=10)
        else:
            self.sm = socket.socket(socket.AF_UNIX)
            self.sm.settimeout(10)
            self.sm.connect(address)
        self.lines = self.sm.makefile("rb")
        self.key = read_key(key_file) if key_file else None
        self.plane = DataPlane(data, key=data_key(self.key) if self.key else None)
        hello = {"host": "raw", "ports": [{"num": 1, "guid": guid, "address": self.plane.address,
                 "speed": 100000, "width": 4, "max_mtu": 5}]}
        if tcp:
            challenge = self.next_push("challenge")
            nonce = secrets.token_bytes(16)
            mac = hello_proof(self.key, bytes.fromhex(challenge["nonce"]), nonce)
            hello["auth"] = {"nonce": nonce.hex(), "mac": mac}
        reply = self.request("hello", **hello)
        assert "errno" not in reply, reply
        self.lid = reply["ports"][0]["lid"]
        self.routes = {int(k): v for k, v in reply["routes"].items()}

    def next_push(self, op):
        while True:
            msg = json.loads(self.lines.readline())
            if msg.get("op") == op:
                return msg

    def request(self, op, **fields):
        msg_id = secrets.randbits(31)
        self.sm.sendall(json.dumps({"op": op, "id": msg_id, **fields}).encode() + b"\n")
        while True:
            msg = json.loads(self.lines.readline())
            if msg.get("id") == msg_id:
                return msg

def echo_request(src, dst):
    """An IPv4 ICMP echo request, checksums right."""
    icmp = bytearray(b"\x08\x00\x00\x00" + os.urandom(4) + b"forged?" * 4)
    icmp[2:4] = wire.ip_checksum(bytes(icmp)).to_bytes(2, "big")
    ip = bytearray(b"\x45\x00" + (20 + len(icmp)).to_bytes(2, "big") + b"\x00\x00\x40\x00\x40\x01"
                   + b"\x00\x00" + socket.inet_aton(src) + socket.inet_aton(dst))
    ip[10:12] = wire.ip_checksum(bytes(ip)).to_bytes(2, "big")
    return bytes(ip + icmp)

def ud(slid, dlid, dst_qpn, pkey, packet):
    """A UD datagram as a port puts it on the wire: header, IPoIB header, no offload."""
    header = wire.UdHeader(slid=slid, dlid=dlid, src_qpn=0x99, dst_qpn=dst_qpn, pkey=pkey,
                           qkey=wire.IPOIB_QKEY, sgid=bytes(16), dgid=bytes(16))
    return header.pack() + wire.ETH_P_IP.to_bytes(2, "big") + bytes(2) + wire.NO_OFFLOAD + packet
'''


def _raw_cmd(snippet: str, args: tuple[str, ...], netns: str | None, user: list[str] | None,
             ) -> list[str]:  # fmt: skip
    cmd = [*(user or []), PYTHON, "-c", RAW + snippet, *args]
    return ["nsenter", f"--net=/run/netns/{netns}", *cmd] if netns else cmd


def raw(snippet: str, *args: str, netns: str | None = None, user: list[str] | None = None,
        ) -> subprocess.CompletedProcess:  # fmt: skip
    result = subprocess.run(_raw_cmd(snippet, args, netns, user), capture_output=True,
                            text=True, cwd=REPO, timeout=60)  # fmt: skip
    assert "Traceback" not in result.stderr, result.stderr
    return result


@contextlib.contextmanager
def raw_port(snippet: str, *args: str, netns: str | None = None,
             ) -> Iterator[subprocess.Popen]:  # fmt: skip
    """A raw port that stays registered for the block, driven over its stdin."""
    proc = subprocess.Popen(_raw_cmd(snippet, args, netns, None), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO)  # fmt: skip
    try:
        yield proc
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        assert "Traceback" not in err, err


def drive(proc: subprocess.Popen, command: str) -> str:
    """One command to a raw port run with `serve()`: its answer line."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(command + "\n")
    proc.stdin.flush()
    return proc.stdout.readline()


def forged_then_genuine(proc: subprocess.Popen, netns: Netns) -> None:
    """The raw port's genuine echoes reach the target (retried until the target has learnt
    the port's route from the SM); then its forged datagrams and one more genuine one
    are sent back to back, in order on one wire: only the genuine one arrives."""
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    for _ in range(5):
        before = echoes(netns)
        assert drive(proc, "genuine") == "[0]\n"
        try:
            wait_for(lambda before=before: echoes(netns) > before, timeout=2, what="an echo")
            break
        except AssertionError:
            continue  # sent before the target knew the port: dropped
    else:
        raise AssertionError("no genuine echo reached the target")
    base = echoes(netns)
    sent = drive(proc, "forged")
    assert set(json.loads(sent)) == {0}, sent  # every one was put on the wire
    wait_for(lambda: echoes(netns) > base, what="the genuine echo after the forged ones")
    assert echoes(netns) == base + 1  # the forged ones never arrived


#: The command loop of a raw port: `genuine` and `forged` send what SENDS holds.
SERVE = r"""
print("ready", flush=True)
for line in sys.stdin:
    print(json.dumps([send() for send in SENDS[line.strip()]]), flush=True)
"""


def echoes(netns: Netns) -> int:
    """IcmpInEchos of the namespace: the echo requests its stack received."""
    lines = [line.split() for line in netns.exec("cat", "/proc/net/snmp").stdout.splitlines()]
    names, values = [line for line in lines if line[0] == "Icmp:"][:2]
    return int(values[names.index("InEchos")])


def qpn(h: Host, ifname: str = "ib0") -> int:
    address = read(h.net(ifname) / "address")
    assert isinstance(address, str)
    return int("".join(address.split(":")[1:4]), 16)


def lid(h: Host) -> int:
    value = read(h.hca("ports", "1", "lid"))
    assert isinstance(value, str)
    return int(value, 16)


def mode(path: str | Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# ---------------------------------------------------------------- a Unix-socket fabric


def test_a_unix_fabric_admits_root_only_whatever_the_umask(lab):
    result = run("sh", "-c", f"umask 000; exec {IPOIBFS} lab up --hosts 2 --prefix {lab.prefix}",
                 check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    for i in (1, 2):
        lab.host(i).wait_carrier()
    sock = f"/run/ipoibfs/{lab.prefix}-fabric.sock"
    data = sorted(Path("/run/ipoibfs").glob(f"{lab.prefix}-fabric.sock.*"))
    assert len(data) == 2
    for path in [Path(sock), *data]:
        st = os.lstat(path)
        assert stat.S_ISSOCK(st.st_mode) and st.st_uid == 0 and mode(path) == 0o600, path
    # A stranger can neither reach the SM nor send to a host's port.
    probe = (
        "import socket, sys\n"
        "for kind, path in ((socket.SOCK_STREAM, sys.argv[1]), (socket.SOCK_DGRAM, sys.argv[2])):\n"
        "    s = socket.socket(socket.AF_UNIX, kind)\n"
        "    try:\n"
        "        s.connect(path) if kind == socket.SOCK_STREAM else s.sendto(b'x', path)\n"
        "        print('reached')\n"
        "    except PermissionError:\n"
        "        print('EACCES')\n"
    )
    out = run(*NOBODY, sys.executable, "-c", probe, sock, str(data[0])).stdout
    assert out == "EACCES\nEACCES\n"
    # Were the socket open to all, the SM would still refuse a stranger (SO_PEERCRED).
    os.chmod(sock, 0o666)
    try:
        ask = (  # the SM speaks first, refusing, and closes
            "import socket, sys\n"
            "s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sys.argv[1])\n"
            "f = s.makefile('rb')\n"
            "print(f.readline().decode().strip()); print(repr(f.readline()))\n"
        )
        out = run(*NOBODY, sys.executable, "-c", ask, sock).stdout.splitlines()
    finally:
        os.chmod(sock, 0o600)
    refusal = json.loads(out[0])
    assert (
        refusal["errno"] == errno.EACCES
        and "uid 65534 may not use this fabric" in (refusal["error"])
    )
    assert out[1] == "b''"  # and closed the connection, answering nothing
    assert "refused uid 65534" in Path(f"/run/ipoibfs/{lab.prefix}-fabric.log").read_text()
    assert lab.ping(1, "198.18.0.2")


def test_a_group_may_be_let_in_besides_root():
    """`fabric serve --group nogroup`: the socket is 0660 root:nogroup, and a process whose
    groups have nogroup (primary or supplementary: SO_PEERCRED, SO_PEERGROUPS) is
    answered; one without it is refused even when the file would let it connect."""
    import grp
    import signal
    import tempfile

    where = Path(tempfile.mkdtemp(prefix="ipoibfs-group-", dir="/tmp"))
    where.chmod(0o755)  # reachable by the unprivileged clients below
    address = where / "fabric.sock"
    fabric = subprocess.Popen([IPOIBFS, "fabric", "serve", str(address), "--group", "nogroup"],
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    ask = (  # a PathRecord query: answered (no such port) once admitted
        "import json, socket, sys\n"
        "s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sys.argv[1])\n"
        's.sendall(b\'{"op": "path", "id": 7, "dgid": "\' + b\'fe\' * 16'
        ' + b\'", "pkey": 65535}\\n\')\n'
        "print(json.loads(s.makefile('rb').readline())['errno'])\n"
    )
    listen = (  # what the SM says first, unasked
        "import json, socket, sys\n"
        "s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sys.argv[1])\n"
        "print(json.loads(s.makefile('rb').readline())['error'])\n"
    )
    nobody = ["setpriv", "--reuid=65534"]
    try:
        assert "root and group nogroup only" in fabric.stderr.readline()
        st = os.lstat(address)
        assert mode(address) == 0o660 and st.st_gid == grp.getgrnam("nogroup").gr_gid
        for groups in (["--regid=65534", "--clear-groups"], ["--regid=100", "--groups=65534"]):
            out = run(*nobody, *groups, sys.executable, "-c", ask, str(address)).stdout
            assert out == f"{errno.EHOSTUNREACH}\n", groups
        os.chmod(address, 0o666)  # the file would let anyone in: the SM still does not
        out = run(*nobody, "--regid=100", "--clear-groups", sys.executable, "-c", listen,
                  str(address)).stdout  # fmt: skip
        assert out == "uid 65534 may not use this fabric (only root and group nogroup)\n"
    finally:
        fabric.send_signal(signal.SIGTERM)
        fabric.wait(timeout=10)
        address.unlink(missing_ok=True)
        where.rmdir()


def test_a_port_is_its_registrants_only(lab, tmp_path):
    """A registered stranger cannot leave, join or query paths in another port's name."""
    lab.up(2)
    h1, h2 = lab.host(1), lab.host(2)
    snippet = r"""
port = RawPort(sys.argv[1], 0x0002c903deadbe01, "unix:" + sys.argv[2])
victim, victim_qpn = int(sys.argv[3]), int(sys.argv[4])
bcast = wire.broadcast_mgid(0xFFFF).hex()
for op, fields in (
    ("leave", {"lid": victim, "qpn": victim_qpn, "mgid": bcast}),
    ("join", {"lid": victim, "qpn": 0x99, "mgid": bcast, "pkey": 0xFFFF, "send_only": False,
              "create": False}),
    ("path", {"lid": victim, "dgid": "fe" * 16, "pkey": 0xFFFF}),
    ("leave", {"lid": port.lid, "qpn": 0x99, "mgid": bcast}),  # its own: allowed
):
    print(op, port.request(op, **fields).get("errno", 0))
"""
    out = raw(snippet, f"/run/ipoibfs/{lab.prefix}-fabric.sock", str(tmp_path / "raw.p1"),
              str(lid(h1)), str(qpn(h1))).stdout  # fmt: skip
    assert out.split("\n") == [f"leave {errno.EPERM}", f"join {errno.EPERM}",
                               f"path {errno.EPERM}", "leave 0", ""]  # fmt: skip
    # h1 is still a member of the broadcast group: h2's ARP reaches it after a flush.
    assert write(h2.net() / "mode", "connected\n") == 0
    assert lab.ping(2, "198.18.0.1")


def test_forged_datagrams_are_dropped_before_any_host(lab, tmp_path):
    """Right format, wrong source (another port's SLID, an unregistered socket) or a P_Key
    the sender does not hold: nothing reaches h2's stack; a genuine echo after them does."""
    conf = tmp_path / "partitions.conf"
    blue = f"blue=0x0001, ipoib : {GUID.format(1)}=full, {GUID.format(2)}=full ;\n"
    conf.write_text("Default=0x7fff, ipoib : ALL=full ;\n" + blue)
    lab.up(2, "--partitions", str(conf))
    h1, h2 = lab.host(1), lab.host(2)
    assert write(h2.net() / "create_child", "0x8001") == 0
    h2.netns.ip("addr", "add", "198.18.1.2/24", "dev", "ib0.8001")
    h2.up("ib0.8001")
    h2.wait_carrier("ib0.8001")
    target = sorted(Path("/run/ipoibfs").glob(f"{lab.prefix}-fabric.sock.{lab.name(2)}.*"))[0]
    snippet = (
        r"""
port = RawPort(sys.argv[1], 0x0002c903deadbe01, "unix:" + sys.argv[2])
stranger = DataPlane("unix:" + sys.argv[3])
target, h1_lid, h2_lid, qpn, child_qpn = sys.argv[4], *map(int, sys.argv[5:9])
to = "unix:" + target
echo, blue = echo_request("198.18.0.99", "198.18.0.2"), echo_request("198.18.1.99", "198.18.1.2")
genuine = lambda: port.plane.send(to, [ud(port.lid, h2_lid, qpn, 0xFFFF, echo)])
SENDS = {"genuine": [genuine], "forged": [
    lambda: stranger.send(to, [ud(h1_lid, h2_lid, qpn, 0xFFFF, echo)]),  # not a port's
    lambda: port.plane.send(to, [ud(h1_lid, h2_lid, qpn, 0xFFFF, echo)]),  # claims h1's SLID
    lambda: port.plane.send(to, [ud(port.lid, h2_lid, child_qpn, 0x8001, blue)]),  # not blue
    genuine]}
"""
        + SERVE
    )
    args = [f"/run/ipoibfs/{lab.prefix}-fabric.sock", str(tmp_path / "raw.p1"),
            str(tmp_path / "stranger"), str(target), str(lid(h1)), str(lid(h2)), str(qpn(h2)),
            str(qpn(h2, "ib0.8001"))]  # fmt: skip
    with raw_port(snippet, *args) as proc:
        forged_then_genuine(proc, h2.netns)
    assert int(read(h2.net("ib0.8001") / "statistics" / "rx_packets")) == 0


# ---------------------------------------------------------------- a TCP/UDP fabric

SM_PORT = 4792


@pytest.fixture
def keyed_lab(tmp_path: Path) -> Iterator[TcpFabric]:
    default = Path(f"/run/ipoibfs/fabric-{CARRIER_IP}-{SM_PORT}.key")
    default.unlink(missing_ok=True)  # hosts must not find a key by default
    key = tmp_path / "fabric.key"
    with tcp_fabric(f"tk{uuid.uuid4().hex[:6]}", tmp_path, SM_PORT, key) as lab:
        yield lab


def test_a_tcp_fabric_wants_its_key(keyed_lab):
    lab = keyed_lab
    assert mode(lab.key) == 0o600 and len(lab.key.read_text().strip()) == 64
    assert lab.host(1).netns.exec("ping", "-c", "1", "-W", "2", "198.18.0.2",
                                  check=False).returncode == 0  # fmt: skip
    # Root without the key, or with a wrong one: one clear line each, and no host.
    result = lab.mount(3)
    assert result.returncode == 1
    assert result.stderr == (f"ipoibfs: the fabric at {lab.address} refused this host: "
                             "this fabric needs its key (mount --key-file FILE)\n")  # fmt: skip
    wrong = lab.tmp / "wrong.key"
    wrong.write_text(os.urandom(32).hex())
    wrong.chmod(0o600)
    result = lab.mount(3, "--key-file", str(wrong))
    assert result.stderr == (f"ipoibfs: the fabric at {lab.address} refused this host: "
                             "wrong fabric key\n")  # fmt: skip
    wrong.chmod(0o644)
    result = lab.mount(3, "--key-file", str(wrong))
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "must be owned by root and readable by its owner only" in result.stderr
    # A stranger (uid 65534) who waits, then guesses: hears nothing while a host joins,
    # is refused and disconnected.
    guess = r"""
s = socket.create_connection(tcp_address(sys.argv[1]), timeout=10)
f = s.makefile("rb")
assert json.loads(f.readline())["op"] == "challenge"
print("ready", flush=True)
sys.stdin.readline()
s.sendall(json.dumps({"op": "hello", "id": 1, "host": "x", "ports": [],
                      "auth": {"nonce": "00" * 16, "mac": "00" * 32}}).encode() + b"\n")
print(f.readline().decode().strip()); print(repr(f.readline()), flush=True)
s = socket.create_connection(tcp_address(sys.argv[1]), timeout=10)
f = s.makefile("rb")
f.readline()
s.sendall(b'{"op": "path", "id": 2, "dgid": "' + b"fe" * 16 + b'", "pkey": 65535}\n')
print(f.readline().decode().strip()); print(repr(f.readline()))
"""
    stranger = subprocess.Popen(_raw_cmd(guess, (lab.address,), lab.carrier.name, NOBODY),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                cwd=REPO)  # fmt: skip
    try:
        assert stranger.stdout is not None and stranger.stdin is not None
        assert stranger.stdout.readline() == "ready\n"
        result = lab.mount(3, "--key-file", str(lab.key))  # a join: routes pushed to hosts
        assert result.returncode == 0, result.stderr
        out, _ = stranger.communicate("go\n", timeout=30)
    finally:
        stranger.kill()
    lines = out.splitlines()
    assert json.loads(lines[0]) == {"id": 1, "errno": errno.EACCES, "error": "wrong fabric key"}
    assert lines[1] == "b''"
    assert json.loads(lines[2])["errno"] == errno.EACCES and lines[3] == "b''"


def test_udp_data_without_the_key_never_reaches_a_host(keyed_lab):
    lab = keyed_lab
    h2 = lab.host(2)
    snippet = (
        r"""
port = RawPort(sys.argv[1], 0x0002c903deadbe01, f"udp:{sys.argv[2]}:0", sys.argv[3])
h2_lid, qpn = int(sys.argv[4]), int(sys.argv[5])
to = port.routes[h2_lid]
echo = ud(port.lid, h2_lid, qpn, 0xFFFF, echo_request("198.18.0.99", "198.18.0.2"))
import hashlib, hmac
host, _, number = to.removeprefix("udp:").rpartition(":")
def from_the_port(mac_key):
    # The message as one segment from the port's own socket (so its source is right),
    # without a MAC or with one under another key.
    datagram = b"".join(wire.segments(secrets.randbits(32), [echo])[0])
    if mac_key is not None:
        datagram += hmac.new(mac_key, datagram, hashlib.sha256).digest()[:16]
    port.plane.sock.sendto(datagram, (host, int(number)))
    return 0
unkeyed = DataPlane(f"udp:{sys.argv[2]}:0")  # and from sockets that are no port's
wrong = DataPlane(f"udp:{sys.argv[2]}:0", key=data_key(b"not the key at all"))
genuine = lambda: port.plane.send(to, [echo])
SENDS = {"genuine": [genuine], "forged": [
    lambda: from_the_port(None), lambda: from_the_port(data_key(b"not the key at all")),
    lambda: unkeyed.send(to, [echo]), lambda: wrong.send(to, [echo]), genuine]}
"""
        + SERVE
    )
    args = [lab.address, CARRIER_IP, str(lab.key), str(lid(h2)), str(qpn(h2))]
    with raw_port(snippet, *args, netns=lab.carrier.name) as proc:
        forged_then_genuine(proc, h2.netns)
