"""One emulated host: its HCA on a fabric, its driver, its live netdevs and its FUSE mirror."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
from contextlib import closing
from dataclasses import dataclass, field
from typing import TextIO

import pyfuse3
import trio

from .driver import IPoIBDriver, ModuleParams
from .errors import KernelError, UsageError
from .fabric import EmbeddedFabric, Fabric, HcaDevice, HcaProfile
from .fabric.client import RemoteFabric
from .klog import KernelLog
from .netdev import LiveNetdevs, NetnsError, NetnsWorker
from .state import STATE_DIR, state_file
from .sysfs import FUSE_OPTIONS, Mirror, SysfsOperations


@dataclass
class HostConfig:
    mountpoint: str
    netns: str | None = None
    ports: int = 1
    name: str = field(default_factory=socket.gethostname)
    guid: int | None = None
    params: dict[str, int] = field(default_factory=dict)
    cm: bool = True
    srq: bool = True
    fabric: str | None = None  # `fabric serve` address; None for the embedded fabric
    debug: bool = False  # CONFIG_INFINIBAND_IPOIB_DEBUG_DATA


def check_environment() -> None:
    if os.geteuid() != 0:
        raise UsageError("must be run as root: it creates network interfaces and a FUSE mount")
    if not os.path.exists("/dev/fuse"):
        raise UsageError("/dev/fuse does not exist: load the fuse module (modprobe fuse)")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise UsageError("/dev/fuse is not accessible")


def is_stale_mount(path: str) -> bool:
    try:
        os.stat(path)
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return False


def unmount_lazy(path: str) -> None:
    subprocess.run(["fusermount3", "-u", "-z", path], capture_output=True, check=False)


def prepare_mountpoint(path: str) -> str:
    """Refuse a missing or busy mountpoint; clear what a killed daemon left behind."""
    path = os.path.abspath(path)
    if is_stale_mount(path):
        unmount_lazy(path)
    if not os.path.exists(path):
        raise UsageError(f"mount point {path} does not exist")
    if not os.path.isdir(path):
        raise UsageError(f"mount point {path} is not a directory")
    if os.path.ismount(path):
        raise UsageError(f"{path} is already mounted")
    return path


class Mount:
    """The FUSE mirror at its mount point, and the state files that announce it (`pid`,
    `netns`, for `ipoibfs exec` and `umount`).

    The host makes it before the fabric, although it mounts only once the driver is up, so
    that it is unmounted after the fabric is closed; closing it before `mount` does nothing.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.mounted = False

    def mount(self, ops: SysfsOperations) -> None:
        try:
            pyfuse3.init(ops, self.path, FUSE_OPTIONS)
        except RuntimeError as e:
            raise UsageError(f"cannot mount {self.path}: {e}") from None
        self.mounted = True

    def publish(self, netns: str | None) -> None:
        os.makedirs(STATE_DIR, exist_ok=True)
        with open(state_file(self.path, "netns"), "w") as f:
            f.write(f"{netns or ''}\n")  # for `ipoibfs exec`; empty: the daemon's
        with open(state_file(self.path, "pid"), "w") as f:
            f.write(f"{os.getpid()}\n")

    def close(self) -> None:
        """Unmount and remove the state files. Idempotent."""
        if not self.mounted:
            return
        self.mounted = False
        pyfuse3.close(unmount=True)
        for kind in ("pid", "netns"):
            try:
                os.unlink(state_file(self.path, kind))
            except OSError:
                pass


async def _shut_down(driver: IPoIBDriver) -> None:
    """Module unload, whatever cancelled the host."""
    with trio.CancelScope(shield=True):
        await driver.shutdown()


class Host:
    driver: IPoIBDriver  # once the fabric is open

    def __init__(self, config: HostConfig, *, log_stream: TextIO = sys.stderr) -> None:
        self.config = config
        self.log_stream = log_stream

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Bring the host up, report readiness, serve until unmounted or signalled, clean up.

        Each resource registers its cleanup on one exit stack as it is made, so they are
        released in reverse on every exit path: the driver (module unload, after the nursery
        has ended), the fabric, the mount and its state files, the netdevs, the namespace
        worker, the kernel log.
        """
        cfg = self.config
        check_environment()
        mountpoint = prepare_mountpoint(cfg.mountpoint)
        params = ModuleParams(cfg.params, debug_data=cfg.debug)
        async with contextlib.AsyncExitStack() as stack:
            # Hosts of one fabric usually share this machine's kernel log: name the host there.
            prefix = cfg.name if cfg.fabric else ""
            klog = stack.enter_context(closing(KernelLog(params, stream=self.log_stream,
                                                       prefix=prefix)))  # fmt: skip
            try:
                worker = stack.enter_context(closing(NetnsWorker(cfg.netns)))
            except NetnsError as e:
                raise UsageError(str(e)) from None
            netdevs = stack.enter_context(closing(LiveNetdevs(worker)))
            mount = stack.enter_context(closing(Mount(mountpoint)))
            profile = HcaProfile(ports=cfg.ports, cm=cfg.cm, srq=cfg.srq)
            device = HcaDevice(cfg.name, profile, cfg.guid)
            fabric: Fabric
            if cfg.fabric:
                fabric = RemoteFabric(device, cfg.fabric, log=klog.daemon)
            else:
                fabric = EmbeddedFabric(device)
            stack.callback(fabric.close)
            async with trio.open_nursery() as nursery:
                ports = await fabric.open(nursery)
                driver = IPoIBDriver(device, ports, netdevs, params, klog)
                self.driver = driver
                stack.push_async_callback(_shut_down, driver)
                driver.start(nursery)
                try:
                    await driver.add_ports()
                except KernelError as e:
                    where = f'network namespace "{cfg.netns}"' if cfg.netns else "this namespace"
                    raise UsageError(
                        f"cannot create the IPoIB interfaces in {where}: {e}"
                    ) from None
                mount.mount(SysfsOperations(Mirror(driver, device, netdevs).root()))
                nursery.start_soon(self._serve, nursery.cancel_scope)
                nursery.start_soon(self._signals, nursery.cancel_scope)
                mount.publish(cfg.netns)
                task_status.started(mountpoint)

    async def _serve(self, scope: trio.CancelScope) -> None:
        """pyfuse3's loop returns when the mirror is unmounted from outside: then stop."""
        await pyfuse3.main()
        scope.cancel()

    async def _signals(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for _ in signals:
                scope.cancel()
                return
