"""The kernel caches the mirror's names and attributes (sysfs/fs.py), never its values: a value
read just after a change is the new one, and a name that went is gone at once.

Each test first reads the files it checks, so that the kernel holds their names and
attributes when the change comes (what a monitoring loop has)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

from ipoibfs import wire

from .conftest import IPOIBFS, Host, read, run, wait_for, write


def warm(*paths: Path) -> None:
    """Walk and read each path a few times, as a scraper does."""
    for _ in range(3):
        for path in paths:
            os.stat(path)
            read(path)


def netlink_link(host: Host, ifname: str = "ib0") -> dict:
    return json.loads(host.netns.ip("-j", "link", "show", ifname).stdout)[0]


def test_mtu_read_right_after_ip_link_set_is_the_new_one(host):
    mtu = host.net() / "mtu"
    warm(mtu)
    for value in (1500, 2044, 1280, 4092, 2000):
        host.netns.ip("link", "set", "ib0", "mtu", str(value))
        assert read(mtu) == f"{value}\n"  # no waiting: ip has returned


def test_a_store_is_seen_by_the_next_read(host):
    net = host.net()
    warm(net / "mode", net / "mtu", net / "tx_queue_len", net / "ifalias")
    assert write(net / "mode", "connected\n") == 0
    assert read(net / "mode") == "connected\n"
    assert read(net / "mtu") == "65520\n"
    assert write(net / "mode", "datagram\n") == 0
    assert read(net / "mode") == "datagram\n"
    assert write(net / "tx_queue_len", "300\n") == 0
    assert read(net / "tx_queue_len") == "300\n"
    assert write(net / "ifalias", "scraped\n") == 0
    assert read(net / "ifalias") == "scraped\n"


def test_operstate_and_carrier_follow_the_link_at_once(host):
    net = host.net()
    warm(net / "operstate", net / "carrier", net / "flags")
    host.up()
    # Carrier comes when the broadcast group is joined: wait for it on netlink, not in the
    # mirror, then the mirror's first read must already show it.
    wait_for(lambda: "LOWER_UP" in netlink_link(host)["flags"], what="carrier on netlink")
    assert read(net / "carrier") == "1\n"
    assert read(net / "operstate") == "up\n"
    assert read(net / "flags") == "0x1003\n"
    host.netns.ip("link", "set", "ib0", "down")
    assert read(net / "operstate") == "down\n"
    assert read(net / "carrier") == errno.EINVAL  # carrier_show on a down netdev
    assert read(net / "flags") == "0x1002\n"


def test_flags_and_tx_queue_len_read_right_after_ip_link_set_are_the_new_ones(host):
    net = host.net()
    warm(net / "flags", net / "tx_queue_len")
    for value in (300, 1, 4096, 256):
        host.netns.ip("link", "set", "ib0", "txqlen", str(value))
        assert read(net / "tx_queue_len") == f"{value}\n"
    for _ in range(2):
        host.netns.ip("link", "set", "ib0", "up")
        assert read(net / "flags") == "0x1003\n"
        host.netns.ip("link", "set", "ib0", "down")
        assert read(net / "flags") == "0x1002\n"
    host.netns.ip("link", "set", "ib0", "multicast", "off")
    assert read(net / "flags") == "0x2\n"


#: Reads the TUN's own sysfs files (the kernel's net-sysfs, in the TUN's namespace), one
#: line of names in, one JSON object of texts (or -errno) out.
REAL_SYSFS = r"""
import json, sys
for line in sys.stdin:
    out = {}
    for name in line.split():
        try:
            with open(f"/sys/class/net/ib0/{name}") as f:
                out[name] = f.read()
        except OSError as e:
            out[name] = -e.errno
    print(json.dumps(out), flush=True)
"""


class RealSysfs:
    """The TUN's own sysfs, read from inside its namespace."""

    def __init__(self, host: Host) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", host.netns.name, sys.executable, "-c", REAL_SYSFS],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    def read(self, *names: str) -> dict[str, str | int]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(" ".join(names) + "\n")
        self.proc.stdin.flush()
        return {
            k: -v if isinstance(v, int) else v
            for k, v in json.loads(self.proc.stdout.readline()).items()
        }

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def mirror_view(name: str, real: str | int) -> str | int:
    """What the mirror must show for the TUN's own `real` value of `name`: the same, but
    for flags, which the mirror shows as an IPoIB netdev's (wire.ipoib_flags)."""
    if name == "flags" and isinstance(real, str):
        return f"{wire.ipoib_flags(int(real, 16)):#x}\n"
    return real


def agree(host: Host, real: RealSysfs, name: str, step: str) -> str | int:
    """The mirror's `name` read between two reads of the TUN's own file that agree (the
    kernel's linkwatch may apply a carrier change at any moment: only a mirror read that
    two equal kernel reads enclose must equal them); the value they agree on."""
    for _ in range(50):
        before = real.read(name)[name]
        shown = read(host.net() / name)
        after = real.read(name)[name]
        if before == after:
            assert shown == mirror_view(name, before), (step, name, shown, before)
            return before
    raise AssertionError(f"{step}: the TUN's {name} kept changing")


def test_live_files_match_the_tuns_own_sysfs_across_up_down_and_carrier(host):
    """operstate, carrier, flags, mtu and tx_queue_len against the kernel's own files of the
    same TUN, right after each change (no waiting before the first comparison) and once
    the change has settled: down, up without carrier, carrier from the broadcast join,
    carrier off and on from outside (`ip link set ib0 carrier`, which a TUN allows), down,
    up again."""
    real = RealSysfs(host)
    names = ("operstate", "carrier", "flags", "mtu", "tx_queue_len")
    seen: list[tuple[str, str | int, str | int]] = []

    def check(step: str) -> None:
        values = {name: agree(host, real, name, step) for name in names}
        seen.append((step, values["operstate"], values["carrier"]))

    try:
        warm(*(host.net() / name for name in names))
        check("down")
        assert seen[-1][1:] == ("down\n", errno.EINVAL)
        host.up()
        check("up")  # carrier may be on its way: the join is quick
        wait_for(lambda: read(host.net() / "carrier") == "1\n", what="carrier")
        check("carrier")
        assert seen[-1][1:] == ("up\n", "1\n")
        host.netns.ip("link", "set", "ib0", "carrier", "off")
        check("carrier off")  # operstate may still be up until linkwatch runs, as the kernel's
        wait_for(lambda: real.read("operstate")["operstate"] == "down\n", what="linkwatch")
        check("carrier off, applied")
        assert seen[-1][1:] == ("down\n", "0\n")
        host.netns.ip("link", "set", "ib0", "carrier", "on")
        check("carrier on")
        assert real.read("carrier")["carrier"] == "1\n"  # carrier_show applies linkwatch
        check("carrier on, applied")
        assert seen[-1][1:] == ("up\n", "1\n")
        host.netns.ip("link", "set", "ib0", "down")  # ipoib_stop takes carrier away
        check("down")
        assert seen[-1][1:] == ("down\n", errno.EINVAL)
        host.up()
        check("up again")
        wait_for(lambda: read(host.net() / "carrier") == "1\n", what="carrier again")
        check("carrier again")
        assert seen[-1][1:] == ("up\n", "1\n")
    finally:
        real.close()


def test_a_deleted_childs_directory_is_gone_at_once(host):
    child = host.net("ib0.8001")
    mcg = host.debugfs("ib0.8001_mcg")
    for _ in range(2):  # twice: the second child is made where the first one's names were
        assert write(host.net() / "create_child", "0x8001") == 0
        warm(child / "mtu", child / "pkey", child / "statistics" / "rx_packets", mcg)
        assert child.is_dir()
        held = os.open(child / "pkey", os.O_RDONLY)
        try:
            assert write(host.net() / "delete_child", "0x8001") == 0
            # ipoib_vlan_delete unregisters the child from a work item: once a listing
            # lacks it, every name under it is gone too.
            wait_for(lambda: "ib0.8001" not in host.interfaces(), what="child unlisted")
            assert not child.exists()
            assert not (child / "mtu").exists()
            assert not (child / "statistics" / "rx_packets").exists()
            assert not mcg.exists()
            try:
                os.pread(held, 4096, 0)
                raise AssertionError("a read through a deleted interface's file succeeded")
            except OSError as e:
                assert e.errno == errno.ENODEV
        finally:
            os.close(held)
    # A name that was gone is found again as soon as it exists (no negative caching).
    assert write(host.net() / "create_child", "0x8001") == 0
    assert read(child / "pkey") == "0x8001\n"


def test_an_interface_deleted_over_netlink_is_gone_once_unlisted(host):
    child = host.net("ib0.8002")
    assert write(host.net() / "create_child", "0x8002") == 0
    warm(child / "mtu", child / "operstate")
    host.netns.ip("link", "del", "ib0.8002")
    # The driver hears of it from a link event; once a listing lacks it, so does a walk.
    wait_for(lambda: "ib0.8002" not in host.interfaces(), what="child unlisted")
    assert not child.exists()
    assert not (child / "mtu").exists()


def set_mode(host: Host, mode: str) -> None:
    result = run(IPOIBFS, "link", str(host.mp), "set", "blue", "type", "ipoib", "mode", mode,
                 check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_queues_of_a_mode_come_and_go_at_once(host):
    """An `ip link add` child has a TX queue per possible CPU in datagram mode, and only
    tx-0 in connected mode (ipoib_set_mode): the others go as the change returns."""
    result = run(IPOIBFS, "link", str(host.mp), "add", "link", "ib0", "name", "blue",
                 "type", "ipoib", "pkey", "0x8003", check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    queues = host.net("blue") / "queues"
    txs = sorted(n for n in os.listdir(queues) if n.startswith("tx-"))
    warm(*(queues / tx / "tx_maxrate" for tx in txs))
    set_mode(host, "connected")
    assert (queues / "tx-0" / "tx_maxrate").exists()
    for tx in txs[1:]:
        assert not (queues / tx).exists()
        assert not (queues / tx / "tx_maxrate").exists()
    set_mode(host, "datagram")
    for tx in txs:  # back at once: no name stays missing
        assert read(queues / tx / "tx_maxrate") == "0\n"
