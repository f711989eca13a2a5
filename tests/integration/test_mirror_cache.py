"""The kernel caches the mirror's names and attributes (sysfs/fs.py), never its values: a value
read just after a change is the new one, and a name that went is gone at once.

Each test first reads the files it checks, so that the kernel holds their names and
attributes when the change comes (what a monitoring loop has)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

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
