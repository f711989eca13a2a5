"""kernfs's rules on a mounted host, each checked against a real TUN's own sysfs file in the
same namespace where the file is a generic one (decision 34): a store gets at most a page, a
NUL ends its input, reads honour offsets, bytes round-trip; a handle belongs to the device it
opened; the writer's credentials count; no input leaves a traceback or a ghost."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import uuid

import pytest

from ipoibfs.errors import KernelError
from ipoibfs.netdev import links as netdev_links
from ipoibfs.netdev.links import LiveNetdevs
from ipoibfs.netdev.netns import NetnsWorker

from .conftest import read, run, wait_for, write

ORACLE = "probe0"


@pytest.fixture
def oracle(host):
    """A real TUN in the host's namespace, and a way to write its sysfs files as ours are."""
    host.netns.ip("tuntap", "add", "dev", ORACLE, "mode", "tun")
    return Oracle(host.netns.name)


class Oracle:
    """Writes and reads /sys/class/net/probe0/* inside the namespace (its own sysfs)."""

    SCRIPT = r"""
import os, sys, json, errno
path, data = sys.argv[1], bytes.fromhex(sys.argv[2])
out = {}
try:
    fd = os.open(path, os.O_WRONLY)
    try:
        out["wrote"] = os.write(fd, data)
    except OSError as e:
        out["errno"] = e.errno
    os.close(fd)
except OSError as e:
    out["errno"] = e.errno
try:
    with open(path, "rb") as f:
        out["reads"] = f.read().hex()
except OSError as e:
    out["reads_errno"] = e.errno
print(json.dumps(out))
"""

    def __init__(self, netns: str) -> None:
        self.netns = netns

    def write(self, name: str, data: bytes) -> dict:
        result = run("ip", "netns", "exec", self.netns, "python3", "-c", self.SCRIPT,
                     f"/sys/class/net/{ORACLE}/{name}", data.hex())  # fmt: skip
        return json.loads(result.stdout)


def raw_write(path, data: bytes) -> int:
    """os.write's result (the count taken), or -errno."""
    fd = os.open(path, os.O_WRONLY)
    try:
        return os.write(fd, data)
    except OSError as e:
        return -e.errno
    finally:
        os.close(fd)


def read_bytes(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def no_traceback(host) -> None:
    assert "Traceback" not in host.log, host.log[-3000:]


# ----------------------------------------------------------------- kernfs


def test_a_store_gets_at_most_a_page_and_the_write_is_short(host, oracle):
    # The store sees 4096 digits, which overflow: ERANGE, as on the TUN.
    assert raw_write(host.net() / "mtu", b"1" * 5000) == -errno.ERANGE
    assert oracle.write("mtu", b"1" * 5000)["errno"] == errno.ERANGE
    assert raw_write(host.net() / "ifalias", b"x" * 5000) == -errno.EINVAL
    assert oracle.write("ifalias", b"x" * 5000)["errno"] == errno.EINVAL
    # A store that takes anything takes a page: the write is short.
    assert raw_write(host.net() / "umcast", b"0" * 6000) == 4096
    assert raw_write(host.hca("node_desc"), b"n" * 5000) == 4096
    assert read_bytes(host.hca("node_desc")) == b"n" * 64 + b"\n"
    # Writing the rest, as a shell's echo does, is a second store.
    fd = os.open(host.net() / "umcast", os.O_WRONLY)
    with os.fdopen(fd, "wb", buffering=0) as f:
        assert f.write(b"1" + b"\n" * 5000) == 4096
    assert host.attr("ib0", "umcast") == "1\n"
    no_traceback(host)


def test_a_nul_ends_the_input(host, oracle):
    assert raw_write(host.net() / "mtu", b"1400\0junk") == 9
    assert host.attr("ib0", "mtu") == "1400\n"
    assert oracle.write("mtu", b"1400\0junk") == {"wrote": 9, "reads": b"1400\n".hex()}
    assert raw_write(host.net() / "mode", b"connected\n\0junk") == 15
    assert host.attr("ib0", "mode") == "connected\n"
    assert raw_write(host.net() / "create_child", b"0x8001\0") == 7
    assert "ib0.8001" in host.interfaces()
    assert raw_write(host.net() / "uevent", b"change\0") == 7
    assert raw_write(host.net() / "uevent", b"change\0 x") == -errno.EINVAL
    assert oracle.write("uevent", b"change\0 x")["errno"] == errno.EINVAL
    no_traceback(host)


def test_reads_honour_offsets(host, oracle):
    path = host.net() / "uevent"
    text = read_bytes(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.pread(fd, 100, 3) == text[3:]  # a fresh handle, read at an offset
        assert os.read(fd, 4) == text[:4]
        assert os.read(fd, 100) == text[4:]  # goes on where the last read ended
        assert os.read(fd, 100) == b""
    finally:
        os.close(fd)
    fd = os.open(host.net() / "mtu", os.O_RDONLY)
    try:
        assert os.read(fd, 100) == b"4092\n"
        assert write(host.net() / "mtu", "1500") == 0
        assert os.read(fd, 100) == b""  # the buffer is used up
        assert os.pread(fd, 100, 0) == b"1500\n"  # from 0 again: shown afresh
        assert os.pread(fd, 100, 2) == b"00\n"
    finally:
        os.close(fd)
    result = oracle.write("uevent", b"")  # the TUN's, for the same layout
    assert bytes.fromhex(result["reads"]).startswith(b"INTERFACE=probe0\n")


def test_ifalias_bytes_round_trip(host, oracle):
    cases = [
        (b"a" * 255, b"a" * 255 + b"\n"),
        (b"a" * 255 + b"\n", b"a" * 255 + b"\n"),
        (bytes(range(0x80, 0x100)) + b"\n", None),  # 128 bytes: fine
        (b"\xff\xfe\n", b"\xff\xfe\n"),
        (b"ab\0cd\n", b"ab\n"),
        (b"\n", b""),
    ]
    for data, shown in cases:
        ours = raw_write(host.net() / "ifalias", data)
        theirs = oracle.write("ifalias", data)
        assert ours == len(data) == theirs["wrote"], data
        expect = bytes.fromhex(theirs["reads"])
        assert read_bytes(host.net() / "ifalias") == expect, data
        if shown is not None:
            assert expect == shown
    assert raw_write(host.net() / "ifalias", b"a" * 256) == -errno.EINVAL
    assert oracle.write("ifalias", b"a" * 256)["errno"] == errno.EINVAL
    assert read_bytes(host.net() / "ifalias") == b""  # a refusal changes nothing
    no_traceback(host)


def test_unsigned_values_the_kernel_prints_signed(host, oracle):
    cases = [("netdev_group", b"4294967295"), ("netdev_group", b"4294967296"),
             ("netdev_group", b"2147483648"), ("tx_queue_len", b"1000\n"),
             ("tx_queue_len", b"4294967296")]  # fmt: skip
    for name, data in cases:
        theirs = oracle.write(name, data)
        ours = raw_write(host.net() / name, data)
        assert ours == theirs.get("wrote", -theirs.get("errno", 0)), (name, data)
        assert read_bytes(host.net() / name) == bytes.fromhex(theirs["reads"]), (name, data)
    assert host.attr("ib0", "netdev_group") == "-2147483648\n"
    # A TUN with a queue attached cannot size its ring for 2**32 - 1 packets: its notifier
    # refuses (EPERM), where the oracle (no queue attached) takes it and prints "-1".
    assert raw_write(host.net() / "tx_queue_len", b"4294967295") == -errno.EPERM
    assert host.attr("ib0", "tx_queue_len") == "1000\n"
    no_traceback(host)


# ----------------------------------------------------------------- a handle belongs to one device


def offloads(host, ifname: str) -> str:
    out = host.netns.exec("ethtool", "-k", ifname).stdout
    return "".join(
        line for line in out.splitlines(True) if line.startswith(("tx-check", "tcp-seg"))
    )


def test_a_handle_of_a_removed_child_fails_and_touches_nothing(host):
    net = host.net()
    assert write(net / "create_child", "0x8002") == 0
    mode = os.open(net.parent / "ib0.8002" / "mode", os.O_WRONLY)
    mtu = os.open(net.parent / "ib0.8002" / "mtu", os.O_RDWR)
    try:
        assert write(net / "delete_child", "0x8002") == 0
        wait_for(lambda: "ib0.8002" not in host.interfaces(), what="the child to go")
        assert write(net / "create_child", "0x8002") == 0
        before = offloads(host, "ib0.8002")
        assert "tx-checksumming: on" in before
        for fd, data in ((mode, b"connected\n"), (mtu, b"1500\n")):
            with pytest.raises(OSError) as e:
                os.write(fd, data)
            assert e.value.errno == errno.ENODEV
        with pytest.raises(OSError) as e:
            os.pread(mtu, 100, 0)
        assert e.value.errno == errno.ENODEV
        assert offloads(host, "ib0.8002") == before
        assert host.attr("ib0.8002", "mode") == "datagram\n"
        assert host.attr("ib0.8002", "mtu") == "4092\n"
    finally:
        os.close(mode)
        os.close(mtu)
    no_traceback(host)


def test_the_writers_capability_counts_not_the_openers(host):
    create = host.net() / "create_child"
    script = (
        f"exec 3>{create}; "
        "capsh --drop=cap_net_admin -- -c 'echo 0x8005 >&3' && echo dropped-ok; "
        "echo 0x8006 >&3 && echo kept-ok"
    )
    result = run("bash", "-c", script, check=False)
    assert "Operation not permitted" in result.stderr
    assert "dropped-ok" not in result.stdout and "kept-ok" in result.stdout
    assert "ib0.8005" not in host.interfaces()
    assert "ib0.8006" in host.interfaces()


# ----------------------------------------------------------------- tracebacks and ghosts


def test_a_nul_in_an_rtnl_name_is_refused_before_any_netdev(host):
    links = host.mp / ".ipoibfs" / "links"
    for name in ("ok\u0000junk", "a/b", "a:b", "a\u00a0b", "\ud800x", ".", "x" * 16):
        request = {"op": "newlink", "link": "ib0", "name": name, "pkey": 0x8003}
        data = json.dumps(request).encode()
        assert raw_write(links, data) == -errno.EINVAL, name
    assert host.interfaces() == ["ib0"]
    assert set(host.netns.links()) == {"lo", "ib0"}
    no_traceback(host)


def test_tunsetlink_busy_gives_a_clean_errno_and_leaves_nothing(netns, monkeypatch):
    real_ioctl = fcntl.ioctl

    def busy(fd, request, *args):
        if request == netdev_links.TUNSETLINK:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        return real_ioctl(fd, request, *args)

    monkeypatch.setattr(netdev_links.fcntl, "ioctl", busy)
    worker = NetnsWorker(netns.name)
    netdevs = LiveNetdevs(worker)
    try:
        with pytest.raises(KernelError) as e:
            worker.run_blocking(netdevs._create, "ib0.8009", 4092, 256, 0)
        assert e.value.errno == errno.EBUSY
    finally:
        netdevs.close()
    assert "ib0.8009" not in netns.links()


def test_no_traceback_after_odd_writes_everywhere(host):
    """One of each input class to every writable file; the daemon logs no traceback."""
    some_uuid = str(uuid.uuid4()).encode()
    inputs = [b"", b"\0", b"\n", b" ", b"+", b"-", b"0x", b"-0", b"\xa01", b"\xff\xfe",
              b"4294967295", b"18446744073709551616", b"9" * 4096, b"{" * 3000,
              some_uuid, b"add " + some_uuid + b" A=b"]  # fmt: skip
    files = [p for p in host.net().iterdir() if p.is_file() and os.stat(p).st_mode & 0o200]
    files += [host.hca("node_desc"), host.param("debug_level"), host.mp / ".ipoibfs" / "links"]
    for path in files:
        if path.name in ("create_child", "flags"):
            continue  # would make children or bring ib0 up: covered by the fuzz test
        for data in inputs:
            raw_write(path, data)
    no_traceback(host)
    assert read(host.net() / "mode") in ("datagram\n", "connected\n")
