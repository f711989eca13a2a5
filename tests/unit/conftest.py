"""The driver under test: the real rooms over the embedded fabric and the shared fakes; and
the mirror over them (`mirror_host`, for a given HCA profile)."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest
import trio
import trio.testing

from ipoibfs.driver.interface import Interface
from ipoibfs.driver.params import ModuleParams
from ipoibfs.driver.probe import IPoIBDriver
from ipoibfs.errors import KernelError
from ipoibfs.fabric.device import HcaDevice, HcaProfile
from ipoibfs.fabric.embedded import EmbeddedFabric
from ipoibfs.sysfs import Mirror
from ipoibfs.sysfs.nodes import Caller, Dir, File, serving

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


# ----------------------------------------------------------------- the mirror


@dataclass(frozen=True)
class GivenCaller(Caller):
    """A caller whose capability and name are given, not read from /proc."""

    admin: bool = True
    name: str = "probe-tool"

    def capable(self, cap: int) -> bool:
        return self.admin

    @property
    def comm(self) -> str:
        return self.name


ADMIN = GivenCaller(0, os.getpid())
USER = GivenCaller(0, os.getpid(), admin=False)


@dataclass
class Host:
    driver: IPoIBDriver
    device: HcaDevice
    netdevs: FakeNetdevs
    log: ListLog
    root: Dir

    def node(self, path: str):
        node = self.root
        for name in path.split("/"):
            assert isinstance(node, Dir), path
            child = node.child(name)
            if child is None:
                raise FileNotFoundError(path)
            node = child
        return node

    def names(self, path: str) -> list[str]:
        node = self.node(path)
        assert isinstance(node, Dir)
        return list(node.names())

    async def show(self, path: str, caller: Caller = ADMIN) -> str | int:
        """The file's text, or the errno its show refused with."""
        f = self.node(path)
        assert isinstance(f, File) and f.attr.show is not None, path
        with serving(caller):
            try:
                text = f.attr.show(f.ctx, f.dev)
                if not isinstance(text, str | bytes):
                    text = await text
            except KernelError as e:
                return e.errno
        return text if isinstance(text, str) else text.decode(errors="surrogateescape")

    async def store(self, path: str, buf: bytes, caller: Caller = ADMIN) -> int:
        """0, or the errno the store refused with."""
        f = self.node(path)
        assert isinstance(f, File) and f.attr.store is not None, path
        return await store(f, buf, caller)


async def store(f: File, buf: bytes, caller: Caller = ADMIN) -> int:
    assert f.attr.store is not None
    with serving(caller):
        try:
            result = f.attr.store(f.ctx, f.dev, caller, buf)
            if result is not None:
                await result
        except KernelError as e:
            return e.errno
    return 0


@pytest.fixture
def mirror_host(nursery) -> Callable[[HcaProfile], Awaitable[Host]]:
    """Makes a host of the given HCA profile: the driver started, its ports added, and the
    mirror's root over them."""

    async def make(profile: HcaProfile) -> Host:
        device = HcaDevice("h1", profile)
        netdevs = FakeNetdevs()
        log = ListLog()
        driver = IPoIBDriver(device, EmbeddedFabric(device).ports, netdevs, ModuleParams(), log)
        driver.start(nursery)
        await driver.add_ports()
        return Host(
            driver,
            device,
            netdevs,
            log,
            Mirror(driver, device, netdevs, driver.port_agents()).root(),
        )

    return make
