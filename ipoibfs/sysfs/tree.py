"""The mirror's tree: the driver's sysfs and debugfs files, declared as the kernel declares them.

The tables are module-level (net.py: class/net/<if>; infiniband.py: the HCA and its ports;
below: the module parameters and debugfs); Mirror binds them to one host's context. Every
show reads the driver or the live netdev when it is called; every store calls the driver
through the context (context.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .. import wire
from ..fabric.device import HcaDevice
from ..fabric.sma import PortAgents
from ..state import REAL_DEBUG, REAL_SYS
from .context import DEBUGFS, PARAMS, Interface, IPoIBDriver, MirrorContext, MirrorNetdevs
from .control import ARP, LINKS, NEIGH, PORTS
from .infiniband import HCA
from .net import INTERFACES
from .nodes import Attribute, Caller, Dir, File, Node, Table, TableDir, ro, rw, static
from .pci import pci_tree
from .umad import umad_class
from .views import listing, merged, merged_tree

# ----------------------------------------------------------------- module parameters


def param_attr(name: str, mode: int) -> Attribute:
    """module_param(NAME, int, MODE): shown by param_get_int, set by param_set_int."""

    def present(params) -> bool:
        return name in params.values

    def show(ctx: MirrorContext, params) -> str:
        return f"{params[name]}\n"

    async def store(ctx: MirrorContext, params, caller: Caller, buf: bytes) -> None:
        """param_attr_store -> param_set_int: kstrtoint(val, 0, ...) of the C string."""
        await ctx.set_param(name, wire.kstrtoint(buf))

    return rw(name, show, store, present) if mode & 0o200 else ro(name, show, present)


#: module/ib_ipoib/parameters/ (dev = the driver's ModuleParams; the debug-data ones only
#: in a --debug build).
PARAMETERS = Table(param_attr(spec.name, spec.mode) for spec in PARAMS)


# ----------------------------------------------------------------- debugfs


def debugfs_attr(suffix: str) -> Attribute:
    """ipoib_create_debug_files: `<if>_mcg` and `<if>_path`, seq files."""
    text = DEBUGFS[suffix]

    def show(ctx: MirrorContext, iface: Interface) -> str:
        return text(iface)

    return Attribute(suffix, 0o444, show=show, size=0, sysfs=False)


#: The per-interface debugfs files, by suffix (dev = the interface).
DEBUGFS_ATTRS = Table(debugfs_attr(suffix) for suffix in DEBUGFS)


class DebugfsDir(Dir):
    """kernel/debug/ipoib/: DEBUGFS_ATTRS for every interface, named `<if><suffix>`."""

    __slots__ = ("ctx",)
    volatile = True

    def __init__(self, ctx: MirrorContext) -> None:
        self.ctx = ctx

    def names(self) -> Iterable[str]:
        suffixes = DEBUGFS_ATTRS.index
        return [f"{name}{suffix}" for name in self.ctx.interfaces for suffix in suffixes]

    def child(self, name: str) -> Node | None:
        ifname, sep, suffix = name.rpartition("_")
        iface = self.ctx.interfaces.get(ifname)
        attr = DEBUGFS_ATTRS.index.get(f"{sep}{suffix}")
        if iface is None or attr is None:
            return None
        return attr.node(self.ctx, iface)


# ----------------------------------------------------------------- the whole tree


class Mirror:
    """The tree of one host: the tables bound to its driver, HCA and netdevs."""

    def __init__(self, driver: IPoIBDriver, device: HcaDevice, netdevs: MirrorNetdevs,
                 agents: Mapping[int, PortAgents]) -> None:  # fmt: skip
        self.ctx = MirrorContext(driver, device, netdevs, agents)

    def root(self) -> Dir:
        ctx = self.ctx
        net = INTERFACES.node(ctx, None)
        infiniband = static({ctx.device.name: TableDir(HCA, ctx, ctx.device)})
        infiniband_mad = umad_class(ctx)
        debug = static({"ipoib": DebugfsDir(ctx)}, mode=0o700)  # debugfs is root's only
        parameters = TableDir(PARAMETERS, ctx, ctx.params)
        devices, bus, driver_module = pci_tree(ctx)  # the HCA's function, bus and driver
        driver = ctx.device.profile.pci.driver
        module = static({"ib_ipoib": static({"parameters": parameters}), driver: driver_module})
        # What `ipoibfs exec` mounts over /sys (sysfs/views.py), and the control file.
        real_net = merged(net, ctx.netdevs.names, f"{REAL_SYS}/class/net")
        exec_views = static(
            {
                "class": merged(
                    static(
                        {
                            "net": real_net,
                            "infiniband": infiniband,
                            "infiniband_mad": infiniband_mad,
                        }
                    ),  # fmt: skip
                    listing("/sys/class"),
                    f"{REAL_SYS}/class",
                ),
                "module": merged(module, listing("/sys/module"), f"{REAL_SYS}/module"),
                "kernel": static(
                    {"debug": merged(debug, listing("/sys/kernel/debug"), REAL_DEBUG)}
                ),
                "devices": merged(devices, listing("/sys/devices"), f"{REAL_SYS}/devices"),
                "bus": merged_tree(bus, "bus"),
            }
        )
        links: Node = File(LINKS, ctx, None)
        return static({
            "class": static({"net": net, "infiniband": infiniband,
                             "infiniband_mad": infiniband_mad}),
            "devices": devices,
            "bus": bus,
            "kernel": static({"debug": debug}),
            "module": module,
            ".ipoibfs": static({"sys": exec_views, "links": links,
                                "neigh": File(NEIGH, ctx, None), "arp": File(ARP, ctx, None),
                                "ports": File(PORTS, ctx, None)}),
        })  # fmt: skip
