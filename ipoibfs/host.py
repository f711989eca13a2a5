"""One emulated host: its HCA on a fabric, its driver, its live netdevs and its FUSE mirror."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import sys
from contextlib import closing
from dataclasses import dataclass, field
from typing import TextIO

import pyfuse3
import trio

from .capture_server import CaptureServer
from .driver.params import ModuleParams
from .driver.probe import IPoIBDriver
from .errors import KernelError, UsageError
from .fabric.backend import Fabric
from .fabric.client import RemoteFabric
from .fabric.device import HcaDevice, hca_profile
from .fabric.embedded import EmbeddedFabric
from .klog import KernelLog
from .namespaces import MS_BIND, is_stale_mount, unmount_lazy
from .namespaces import mount as mount_syscall
from .netdev import LiveNetdevs, NetnsError, NetnsWorker
from .state import PidFile, remove_file, remove_stale_state, state_file, write_file
from .sysfs import FUSE_OPTIONS, Mirror, SysfsOperations
from .umad import UmadService


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
    key_file: str | None = None  # a HOST:PORT fabric's key (RemoteFabric)
    debug: bool = False  # CONFIG_INFINIBAND_IPOIB_DEBUG_DATA
    hca: str = "ipoibfs"  # the HCA profile (fabric.device.HCA_PROFILES)
    offload: bool = True  # False: `--no-offload`, an HCA without stateless offloads
    node_desc: str | None = None  # None: "<name> <HCA>"


def check_environment() -> None:
    if os.geteuid() != 0:
        raise UsageError("must be run as root: it creates network interfaces and a FUSE mount")
    if not os.path.exists("/dev/fuse"):
        raise UsageError("/dev/fuse does not exist: load the fuse module (modprobe fuse)")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise UsageError("/dev/fuse is not accessible")


def prepare_mountpoint(path: str) -> str:
    """The mountpoint, resolved (symlinks followed, absolute). Refuse a missing or busy
    one; clear what a killed daemon left behind (its dead mount, pid and netns files)."""
    path = os.path.realpath(path)
    if is_stale_mount(path):
        unmount_lazy(path)
    remove_stale_state(path)
    if not os.path.exists(path):
        raise UsageError(f"mount point {path} does not exist")
    if not os.path.isdir(path):
        raise UsageError(f"mount point {path} is not a directory")
    if os.path.ismount(path):
        raise UsageError(f"{path} is already mounted")
    return path


MS_RDONLY, MS_REMOUNT = 1, 32


class Mount:
    """The FUSE mirror at its mount point, and the state files that announce it (`pid`,
    `netns`, for `ipoibfs exec` and `umount`).

    The pid file stays locked by the daemon for its whole life (state.PidFile), so that a
    pid left behind by a killed daemon is never taken for it. The host makes the Mount
    before the fabric, although it mounts only once the driver is up, so that it is
    unmounted after the fabric is closed; closing it before `mount` does nothing.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.mounted = False
        self.pid_file: PidFile | None = None

    def mount(self, ops: SysfsOperations) -> None:
        try:
            pyfuse3.init(ops, self.path, FUSE_OPTIONS)
        except RuntimeError as e:
            raise UsageError(f"cannot mount {self.path}: {e}") from None
        self.mounted = True

    def publish(self, netns: str | None) -> None:
        # for `ipoibfs exec`; empty: the daemon's own namespace
        write_file(state_file(self.path, "netns"), f"{netns or ''}\n")
        self.pid_file = PidFile.create(state_file(self.path, "pid"))

    @staticmethod
    def make_read_only(path: str) -> None:
        """Remount the mirror read-only (`mount -o ro`): writes then fail with EROFS, in
        this mount and in the views `ipoibfs exec` binds from it."""
        try:
            mount_syscall(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
        except OSError as e:
            raise UsageError(f"cannot make {path} read-only: {os.strerror(e.errno or 0)}") from None

    def close(self) -> None:
        """Unmount, then remove the state files (the pid file's lock goes last). Idempotent."""
        if self.mounted:
            self.mounted = False
            pyfuse3.close(unmount=True)
        if self.pid_file is not None:
            remove_file(state_file(self.path, "netns"))
            self.pid_file.remove()
            self.pid_file = None


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
            profile = hca_profile(cfg.hca, ports=cfg.ports, cm=cfg.cm, srq=cfg.srq,
                                  offload=cfg.offload)  # fmt: skip
            device = HcaDevice(cfg.name, profile, cfg.guid)
            if cfg.node_desc is not None:
                device.set_node_desc(cfg.node_desc.encode())
            fabric: Fabric
            if cfg.fabric:
                fabric = RemoteFabric(device, cfg.fabric, log=klog.daemon,
                                      key_file=cfg.key_file)  # fmt: skip
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
                # the ports' SMA and PMA: the umad files' and the mirror's counters/
                agents = driver.port_agents()
                mirror = Mirror(driver, device, netdevs, agents)
                ops = SysfsOperations(mirror.root())
                mount.mount(ops)
                # The mirror hears of interfaces coming and going until the driver stops.
                stack.callback(ops.follow(mirror.ctx.watch))
                nursery.start_soon(self._serve, nursery.cancel_scope)
                nursery.start_soon(self._signals, nursery.cancel_scope)
                nursery.start_soon(_release_free_memory)
                # /dev/infiniband (umadN, issmN) for `ipoibfs exec`: a devfs mount by the pid file
                await nursery.start(UmadService(device, agents, mountpoint, ports).run)
                # `ipoibfs capture`: a socket next to the state files, taps off until used
                await nursery.start(CaptureServer(driver, mountpoint).run)
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


#: How often the daemon hands freed heap back to the system.
TRIM_INTERVAL = 30.0


async def _release_free_memory() -> None:
    """Give freed malloc memory back to the kernel, so RSS follows what the host holds.

    Interfaces come and go with their threads, buffers and tables; glibc keeps the freed
    chunks inside its heap (only the top can shrink by itself), so a churned daemon's RSS
    would keep its high-water mark. malloc_trim(0) releases every free page of every arena.
    """
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is None:  # not glibc
        return
    while True:
        await trio.sleep(TRIM_INTERVAL)
        trim(0)
