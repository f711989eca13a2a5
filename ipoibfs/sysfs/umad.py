"""class/infiniband_mad/: ib_umad's class (drivers/infiniband/core/user_mad.c).

`abi_version` (IB_USER_MAD_ABI_VERSION), and for every HCA port, in the kernel's
numbering (the first free number, so port N of the one HCA is umad<N-1>), the devices
`umadN` and `issmN` with `ibdev`, `port`, and `dev`/`uevent` of their char devices:
major 231, umadN at minor N, issmN at minor 64 + N (IB_UMAD_NUM_FIXED_MINOR). The files
themselves are served at /dev/infiniband by the daemon's devfs mount (ipoibfs/umad/).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..fabric.device import Port
from ..wire.mad.umad import IB_USER_MAD_ABI_VERSION
from .context import MirrorContext
from .nodes import Dir, File, Table, TableDir, const, ro, static

IB_UMAD_MAJOR = 231
IB_UMAD_NUM_FIXED_MINOR = 64


@dataclass(frozen=True)
class UmadDevice:
    """umadN or issmN of one port."""

    kind: str  # "umad" or "issm"
    index: int
    port: Port

    @property
    def name(self) -> str:
        return f"{self.kind}{self.index}"

    @property
    def minor(self) -> int:
        return self.index + (IB_UMAD_NUM_FIXED_MINOR if self.kind == "issm" else 0)


def show_ibdev(ctx: MirrorContext, dev: UmadDevice) -> str:
    return f"{ctx.device.name}\n"


def show_port(ctx: MirrorContext, dev: UmadDevice) -> str:
    return f"{dev.port.num}\n"


def show_dev(ctx: MirrorContext, dev: UmadDevice) -> str:
    return f"{IB_UMAD_MAJOR}:{dev.minor}\n"


def show_uevent(ctx: MirrorContext, dev: UmadDevice) -> str:
    """dev_uevent: MAJOR, MINOR and DEVNAME (umad_devnode: infiniband/<name>)."""
    return f"MAJOR={IB_UMAD_MAJOR}\nMINOR={dev.minor}\nDEVNAME=infiniband/{dev.name}\n"


#: class/infiniband_mad/umadN/ and issmN/ (dev = a UmadDevice)
UMAD_DEVICE = Table(
    (
        ro("dev", show_dev),
        ro("ibdev", show_ibdev),
        ro("port", show_port),
        ro("uevent", show_uevent),
    )
)

ABI_VERSION = ro("abi_version", const(IB_USER_MAD_ABI_VERSION))


def umad_class(ctx: MirrorContext) -> Dir:
    """class/infiniband_mad/ of the host's HCA."""
    entries: dict[str, Dir | File] = {"abi_version": File(ABI_VERSION, ctx, None)}
    for kind in ("umad", "issm"):
        for index, port in enumerate(ctx.device.ports):
            dev = UmadDevice(kind, index, port)
            entries[dev.name] = TableDir(UMAD_DEVICE, ctx, dev)
    return static(entries)
