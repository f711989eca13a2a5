"""The driver under test: the real rooms over the embedded fabric and the shared fakes."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import trio
import trio.testing

from ipoibfs.driver import IPoIBDriver, ModuleParams
from ipoibfs.driver.interface import Interface
from ipoibfs.fabric import EmbeddedFabric, HcaDevice, HcaProfile

from .fakes import FakeNetdevs, ListLog


@dataclass
class Env:
    driver: IPoIBDriver
    ib0: Interface
    netdevs: FakeNetdevs
    log: ListLog

    async def up(self, iface: Interface) -> None:
        """`ip link set IFACE up`, the event the driver follows, and the work it queued
        (the broadcast join and carrier on) run to completion."""
        self.netdevs.links[iface.name].up = True
        await self.driver.main.link_event(iface.link.ifindex)
        await trio.testing.wait_all_tasks_blocked()

    async def down(self, iface: Interface) -> None:
        self.netdevs.links[iface.name].up = False
        await self.driver.main.link_event(iface.link.ifindex)
        await trio.testing.wait_all_tasks_blocked()


def make_driver(
    profile: HcaProfile | None = None,
    netdevs: FakeNetdevs | None = None,
    params: ModuleParams | None = None,
) -> tuple[IPoIBDriver, FakeNetdevs, ListLog]:
    device = HcaDevice("h1", profile or HcaProfile(ports=1))
    netdevs = netdevs or FakeNetdevs()
    log = ListLog()
    driver = IPoIBDriver(device, EmbeddedFabric(device).ports, netdevs, params or ModuleParams(),
                         log)  # fmt: skip
    return driver, netdevs, log


@pytest.fixture
async def env(nursery) -> Env:
    driver, netdevs, log = make_driver()
    driver.start(nursery)
    (ib0,) = await driver.add_ports()
    return Env(driver, ib0, netdevs, log)
