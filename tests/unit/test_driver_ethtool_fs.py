"""driver/ethtool.py and driver/fs.py: coalesce and statistics; the debugfs texts."""

from __future__ import annotations

import errno

import pytest

from ipoibfs.driver import ethtool
from ipoibfs.driver.fs import DEBUGFS
from ipoibfs.errors import KernelError


async def test_coalesce_keeps_values_up_to_0xffff(env):
    ib0 = env.ib0
    ethtool.set_coalesce(ib0, 10, None)
    ethtool.set_coalesce(ib0, None, 0xFFFF)
    assert (ib0.coalesce_usecs, ib0.coalesce_frames) == (10, 0xFFFF)
    with pytest.raises(KernelError) as e:
        ethtool.set_coalesce(ib0, 0x10000, 1)
    assert e.value.errno == errno.EINVAL
    assert (ib0.coalesce_usecs, ib0.coalesce_frames) == (10, 0xFFFF)


async def test_statistics_in_the_drivers_order_and_speed_with_carrier(env):
    assert list(ethtool.stats(env.ib0)) == list(ethtool.ETHTOOL_STATS)
    assert ethtool.speed(env.ib0) is None
    await env.up(env.ib0)
    assert ethtool.speed(env.ib0) == 100000


async def test_mcg_shows_the_broadcast_group_in_the_kernels_layout(env):
    await env.up(env.ib0)
    text = DEBUGFS["_mcg"](env.ib0)
    lines = text.splitlines()
    assert lines[0] == "GID: ff12:401b:ffff:0:0:0:ffff:ffff"
    assert lines[2:5] == ["  queuelen:         0", "  complete:       yes", "  send_only:       no"]
    assert text.endswith("\n\n")


async def test_path_shows_complete_paths(env):
    from .test_driver_neigh import resolved_peer

    await resolved_peer(env)
    lines = DEBUGFS["_path"](env.ib0).splitlines()
    assert lines[0] == "GID: fe80:0:0:0:2:c903:0:101"
    assert lines[1:4] == ["  complete:    yes", "  DLID:     0x0002", "  SL:            0"]
