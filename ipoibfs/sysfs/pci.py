"""The HCA's PCI function, its driver and the driver's module, as a kernel lays them out:

    devices/pci<domain>:<bus>/<slot>/      drivers/pci/pci-sysfs.c's files (dev = HcaDevice)
        driver -> ../../../bus/pci/drivers/<driver>   subsystem -> ../../../bus/pci
        infiniband/<hca> -> ../../../../class/infiniband/<hca>
        net/<if> -> ../../../../class/net/<if>        (every IPoIB netdev of the HCA)
    bus/pci/devices/<slot> -> ../../../devices/pci<domain>:<bus>/<slot>
    bus/pci/drivers/<driver>/              <slot> -> the function,
                                           module -> ../../../../module/<driver>
    module/<driver>/                       drivers/pci:<driver> -> the driver, holders/,
                                           initstate, refcnt

so that class/net/<if>/device and class/infiniband/<hca>/device both resolve to the function.
The back-references are links into class/, where the mirror keeps the directories (the
kernel keeps them under the device and links class/ to them).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from functools import cache

from .. import wire
from ..errors import KernelError
from ..fabric.device import HcaDevice
from ..wire.bitmap import bitmap_list_string, bitmap_string
from .context import MirrorContext, cpu_list, cpu_online_mask, nr_cpu_ids
from .nodes import (
    CAP_SYS_ADMIN,
    Attribute,
    Caller,
    Dir,
    FnDir,
    Link,
    Members,
    Node,
    Symlink,
    Table,
    TableDir,
    const,
    current,
    ro,
    rw,
    static,
    wo,
)

MAX_NUMNODES = 1 << 10  # CONFIG_NODES_SHIFT 10 (Debian amd64)


def function_path(dev: HcaDevice) -> str:
    """The function's directory, from the mirror's root (the kernel's /sys)."""
    return f"devices/{dev.profile.pci.root_bus}/{dev.profile.pci.slot_name}"


def device_link(levels: int) -> Link:
    """A `device` link to the HCA's function from a directory `levels` below the root."""
    up = "../" * levels
    return Link("device", lambda ctx, dev: up + function_path(ctx.device))


# ----------------------------------------------------------------- the function's files


@cache
def resource_lines() -> int:
    """PCI_BRIDGE_RESOURCES on the running kernel (7, or 13 with CONFIG_PCI_IOV): as many
    lines as a real endpoint's `resource` shows; 13 (Debian's kernel) without one."""
    base = "/sys/bus/pci/devices"
    try:
        names = sorted(os.listdir(base))
    except OSError:
        names = []
    for name in names:
        try:
            with open(f"{base}/{name}/class") as f:
                if int(f.read(), 16) >> 8 == 0x0604:
                    continue  # a bridge shows its windows too
            with open(f"{base}/{name}/resource") as f:
                return len(f.read().splitlines())
        except (OSError, ValueError):
            continue
    return 13


def _hex(name: str, width: int) -> Attribute:
    """pci_config_attr(FIELD, "0x%0Nx\\n")."""
    return ro(name, lambda ctx, dev: f"0x{getattr(dev.profile.pci, name):0{width}x}\n")


def show_class(ctx: MirrorContext, dev: HcaDevice) -> str:
    return f"0x{dev.profile.pci.pci_class:06x}\n"


def show_modalias(ctx: MirrorContext, dev: HcaDevice) -> str:
    return dev.profile.pci.modalias + "\n"


def show_resource(ctx: MirrorContext, dev: HcaDevice) -> str:
    return dev.profile.pci.resource_text(resource_lines())


def show_config(ctx: MirrorContext, dev: HcaDevice) -> bytes:
    """pci_read_config: the whole configuration space to CAP_SYS_ADMIN, the first 64 bytes
    to anyone else."""
    cfg = dev.profile.pci.config_space()
    return cfg if current().capable(CAP_SYS_ADMIN) else cfg[:64]


def show_uevent(ctx: MirrorContext, dev: HcaDevice) -> str:
    return dev.profile.pci.uevent_text()


def store_uevent(ctx: MirrorContext, dev: object, caller: Caller, buf: bytes) -> None:
    """uevent_store: kobject_synth_uevent's grammar; the event itself is not sent."""
    wire.kobject_synth_uevent(buf)


def _local_mask(dev: HcaDevice) -> int:
    """pci_dev_show_local_cpu: cpu_online_mask for NUMA_NO_NODE (the emulated HCA's node),
    else the node's CPUs."""
    if dev.numa_node < 0 or not _node_online(dev.numa_node):
        return cpu_online_mask()
    return cpu_list(f"/sys/devices/system/node/node{dev.numa_node}/cpulist")


def show_local_cpus(ctx: MirrorContext, dev: HcaDevice) -> str:
    """cpumap_print_to_pagebuf(false): "%*pb\\n" over nr_cpu_ids."""
    return bitmap_string(_local_mask(dev), nr_cpu_ids()) + "\n"


def show_local_cpulist(ctx: MirrorContext, dev: HcaDevice) -> str:
    """cpumap_print_to_pagebuf(true): "%*pbl\\n"."""
    return bitmap_list_string(_local_mask(dev), nr_cpu_ids()) + "\n"


def show_numa_node(ctx: MirrorContext, dev: HcaDevice) -> str:
    return f"{dev.numa_node}\n"


def _node_online(node: int) -> bool:
    return os.path.isdir(f"/sys/devices/system/node/node{node}")


def store_numa_node(ctx: MirrorContext, dev: HcaDevice, caller: Caller, buf: bytes) -> None:
    """numa_node_store: capable(CAP_SYS_ADMIN), kstrtoint(buf, 0) (any failure EINVAL);
    EINVAL for a node below -1, from MAX_NUMNODES on, or not online; the same node changes
    nothing; else the taint, the firmware-bug alert and the new node (ctx.set_numa_node)."""
    if not caller.capable(CAP_SYS_ADMIN):
        raise KernelError(errno.EPERM)
    try:
        node = wire.kstrtoint(buf, 0)
    except KernelError:
        raise KernelError(errno.EINVAL) from None
    if (node < 0 and node != -1) or node >= MAX_NUMNODES:
        raise KernelError(errno.EINVAL)
    if node != -1 and not _node_online(node):
        raise KernelError(errno.EINVAL)
    if node == dev.numa_node:
        return
    ctx.set_numa_node(node)


def _hca_names(ctx: MirrorContext, dev: HcaDevice) -> Iterable[str]:
    return [dev.name]


def _hca_member(ctx: MirrorContext, dev: HcaDevice, name: str) -> str | None:
    return name if name == dev.name else None


def _net_names(ctx: MirrorContext, dev: HcaDevice) -> Iterable[str]:
    return list(ctx.interfaces)


def _net_member(ctx: MirrorContext, dev: HcaDevice, name: str) -> str | None:
    return name if name in ctx.interfaces else None


#: The function's directory (dev = the HcaDevice): pci_dev_attrs and what the driver core
#: adds (uevent, driver, subsystem), then the class devices under it.
PCI_FUNCTION = Table(
    (
        _hex("vendor", 4),
        _hex("device", 4),
        _hex("subsystem_vendor", 4),
        _hex("subsystem_device", 4),
        _hex("revision", 2),
        ro("class", show_class),
        ro("irq", const(0)),  # MSI-X only: no legacy interrupt line
        ro("modalias", show_modalias),
        rw("numa_node", show_numa_node, store_numa_node),
        ro("local_cpus", show_local_cpus),
        ro("local_cpulist", show_local_cpulist),
        ro("resource", show_resource),
        ro("enable", const(1)),
        ro("dma_mask_bits", const(64)),
        ro("consistent_dma_mask_bits", const(64)),
        ro("power_state", const("D0")),
        ro("config", show_config, size=256),  # read-only here: see the README
        rw("uevent", show_uevent, store_uevent),
        Link("driver", lambda ctx, dev: f"../../../bus/pci/drivers/{dev.profile.pci.driver}"),
        Link("subsystem", lambda ctx, dev: "../../../bus/pci"),
        Members(
            "infiniband",
            _hca_names,
            _hca_member,
            Link("hca", lambda ctx, name: f"../../../../class/infiniband/{name}"),
        ),
        Members(
            "net",
            _net_names,
            _net_member,
            Link("netdev", lambda ctx, name: f"../../../../class/net/{name}"),
            volatile=True,
        ),
    )
)

# ----------------------------------------------------------------- driver and module

#: bus/pci/drivers/<driver>/ (dev = the HcaDevice): the bound function and the module.
PCI_DRIVER = Table(
    (
        Members(
            "slot",
            lambda ctx, dev: [dev.profile.pci.slot_name],
            lambda ctx, dev, name: dev if name == dev.profile.pci.slot_name else None,
            Link("function", lambda ctx, dev: f"../../../../{function_path(dev)}"),
        ),
        Link("module", lambda ctx, dev: f"../../../../module/{dev.profile.pci.driver}"),
        wo("uevent", store_uevent),
    )
)

#: module/<driver>/ (dev = the HcaDevice): a loaded module's files.
MODULE = Table(
    (
        Members(
            "drivers",
            lambda ctx, dev: [f"pci:{dev.profile.pci.driver}"],
            lambda ctx, dev, name: dev if name == f"pci:{dev.profile.pci.driver}" else None,
            Link("driver", lambda ctx, dev: f"../../../bus/pci/drivers/{dev.profile.pci.driver}"),
        ),
        Members(
            "holders",
            lambda ctx, dev: (),
            lambda ctx, dev, name: None,
            Link("holder", lambda ctx, dev: ""),
        ),
        ro("initstate", const("live")),
        ro("refcnt", const(0)),
        wo("uevent", store_uevent),
    )
)


def _inline(table: Table, inline: str, ctx: MirrorContext, dev: HcaDevice) -> Dir:
    """A TableDir of `table` where the Members row `inline` lists its members in place of
    itself (bus/pci/drivers/<driver>/<slot>, not …/slot/<slot>)."""
    tdir = TableDir(table, ctx, dev)
    row = table.index[inline]
    assert isinstance(row, Members)
    members = row.node(ctx, dev)

    def names() -> list[str]:
        return [*members.names(), *(n for n in tdir.names() if n != inline)]

    def child(name: str) -> Node | None:
        if name == inline:
            return None
        node = tdir.child(name)
        return node if node is not None else members.child(name)

    return FnDir(names, child)


def pci_tree(ctx: MirrorContext) -> tuple[Dir, Dir, Dir]:
    """The mirror's devices/ and bus/, and the driver's module/ entry, for the root."""
    dev = ctx.device
    pci = dev.profile.pci
    function = TableDir(PCI_FUNCTION, ctx, dev)
    devices = static({pci.root_bus: static({pci.slot_name: function})})
    driver = _inline(PCI_DRIVER, "slot", ctx, dev)
    bus_pci = static(
        {
            "devices": static({pci.slot_name: Symlink(f"../../../{function_path(dev)}")}),
            "drivers": static({pci.driver: driver}),
        }
    )
    module = TableDir(MODULE, ctx, dev)
    return devices, static({"pci": bus_pci}), module
