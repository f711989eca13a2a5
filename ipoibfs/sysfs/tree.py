"""The mirror's tree: the driver's sysfs and debugfs files, declared as the kernel declares them.

Every show reads the driver or the live netdev when it is called; every store calls the
driver. Formats and errno values follow net/core/net-sysfs.c, drivers/infiniband/core/sysfs.c
and ib_ipoib (shared/reference/linux-ipoib-driver.md).
"""

from __future__ import annotations

import errno

from .. import wire
from ..driver import STAT_NAMES, ChildType, Interface, IPoIBDriver
from ..driver.fs import DEBUGFS
from ..errors import KernelError
from ..fabric import HcaDevice, Port
from ..fabric.device import PHYS_STATES, PORT_STATES
from ..netdev import LiveNetdevs
from .control import links_file
from .nodes import Attr, Caller, Dir, Node, Symlink, const, fails, ro, rw, static, wo
from .views import REAL_DEBUG, REAL_SYS, listing, merged

UEVENT_ACTIONS = {b"add", b"remove", b"change", b"move", b"online", b"offline", b"bind", b"unbind"}
IFALIASZ = 256
CAP_MASK = 0x2651E848


class Mirror:
    """Builds the tree for one host from its driver, HCA and netdevs."""

    def __init__(self, driver: IPoIBDriver, device: HcaDevice, netdevs: LiveNetdevs) -> None:
        self.driver = driver
        self.device = device
        self.netdevs = netdevs
        self._netdev_dirs: dict[str, tuple[Interface, Dir]] = {}

    def root(self) -> Dir:
        net = Dir(self.driver.interfaces.keys, self._netdev_dir_named, volatile=True)
        infiniband = static({self.device.name: self._hca_dir()})
        debug = static(
            {
                "ipoib": Dir(self._debugfs_names, self._debugfs_file, volatile=True),
            },
            mode=0o700,
        )  # debugfs is root's only
        module = static({"ib_ipoib": static({"parameters": self._params_dir()})})
        # What `ipoibfs exec` mounts over /sys (sysfs/views.py), and the control file.
        real_net = merged(net, self.netdevs.names, f"{REAL_SYS}/class/net")
        exec_views = static(
            {
                "class": merged(
                    static({"net": real_net, "infiniband": infiniband}),
                    listing("/sys/class"),
                    f"{REAL_SYS}/class",
                ),
                "module": merged(module, listing("/sys/module"), f"{REAL_SYS}/module"),
                "kernel": static(
                    {"debug": merged(debug, listing("/sys/kernel/debug"), REAL_DEBUG)}
                ),
            }
        )
        return static({
            "class": static({"net": net, "infiniband": infiniband}),
            "kernel": static({"debug": debug}),
            "module": module,
            ".ipoibfs": static({"sys": exec_views, "links": links_file(self.driver)}),
        })  # fmt: skip

    # ------------------------------------------------------------- class/net

    def _netdev_dir_named(self, name: str) -> Dir | None:
        """The directory of a registered interface; its table is built once per interface."""
        iface = self.driver.interfaces.get(name)
        if iface is None:
            return None
        cached = self._netdev_dirs.get(name)
        if cached is None or cached[0] is not iface:
            cached = self._netdev_dirs[name] = (iface, self._netdev_dir(iface))
        return cached[1]

    def _live(self, iface: Interface) -> Interface:
        """The interface if it is still registered (netdev_show's dev_isalive)."""
        if self.driver.interfaces.get(iface.name) is not iface:
            raise KernelError(errno.EINVAL)
        return iface

    def _netdev_dir(self, iface: Interface) -> Dir:
        entries: dict[str, Node] = self._generic_attrs(iface)
        entries["statistics"] = static(
            {name: ro(lambda c, n=name: f"{iface.statistic(n)}\n") for name in STAT_NAMES}
        )
        entries["device"] = Symlink(f"../../infiniband/{self.device.name}")
        entries["subsystem"] = Symlink("../../net")
        if iface.child_type is not ChildType.RTNL:
            entries.update(self._ipoib_attrs(iface))
        return static(entries)

    def _ipoib_attrs(self, iface: Interface) -> dict[str, Node]:
        """The files ib_ipoib adds: mode, pkey, umcast; create/delete_child or parent."""
        d = self.driver
        attrs: dict[str, Node] = {
            "mode": rw(lambda c: "connected\n" if iface.admin_cm else "datagram\n",
                       lambda c, buf: d.set_mode(iface, buf)),
            "pkey": ro(lambda c: f"0x{iface.pkey:04x}\n"),
            "umcast": rw(lambda c: f"{int(iface.umcast)}\n",
                         lambda c, buf: d.set_umcast(iface, buf)),
        }  # fmt: skip
        if iface.is_child:
            attrs["parent"] = ro(lambda c: f"{iface.parent.name}\n")
        else:
            attrs["create_child"] = wo(
                lambda c, buf: d.create_child(iface, buf, net_admin=c.net_admin)
            )
            attrs["delete_child"] = wo(
                lambda c, buf: d.delete_child(iface, buf, net_admin=c.net_admin)
            )
        return attrs

    def _generic_attrs(self, iface: Interface) -> dict[str, Node]:
        """The files net-sysfs shows for every netdev, live or derived for IPoIB."""
        nd = self.netdevs

        async def state(caller: Caller):
            return await nd.state(self._live(iface).link)

        async def running_state(caller: Caller):
            st = await state(caller)
            if not st.flags & wire.IFF_UP:
                raise KernelError(errno.EINVAL)
            return st

        async def show_operstate(c: Caller) -> str:
            st = await state(c)
            up = bool(st.flags & wire.IFF_UP)
            return self.driver.operstate(iface, st.operstate, up, bool(st.carrier)) + "\n"

        async def show_flags(c: Caller) -> str:
            return f"{wire.ipoib_flags((await state(c)).flags):#x}\n"

        def show_dev_id(c: Caller) -> str:
            self.driver.dev_id_read(iface, c.comm)
            return f"{iface.dev_id:#x}\n"

        async def show_carrier(c: Caller) -> str:
            return f"{(await running_state(c)).carrier}\n"

        async def show_speed(c: Caller) -> str:
            st = await running_state(c)
            return f"{iface.port.port.speed_mbps if st.carrier else -1}\n"

        async def show_duplex(c: Caller) -> str:
            st = await running_state(c)
            return "full\n" if st.carrier else "unknown\n"

        def store_carrier(c: Caller, buf: bytes) -> None:
            raise KernelError(errno.EOPNOTSUPP)  # no ndo_change_carrier, checked first

        async def store_mtu(c: Caller, buf: bytes) -> None:
            value = netdev_store_value(c, buf)
            await self.driver.change_mtu(self._live(iface), wire.c_int(value))

        async def store_flags(c: Caller, buf: bytes) -> None:
            value = netdev_store_value(c, buf) & 0xFFFFFFFF
            await self.driver.set_link_attrs(
                iface, flags=value & wire.IFF_CHANGEABLE, change=wire.IFF_CHANGEABLE
            )

        async def store_txqlen(c: Caller, buf: bytes) -> None:
            value = netdev_store_value(c, buf)
            if value > 0xFFFFFFFF:
                raise KernelError(errno.ERANGE)
            await self.driver.set_link_attrs(iface, txqlen=value)

        async def store_group(c: Caller, buf: bytes) -> None:
            value = netdev_store_value(c, buf)
            await self.driver.set_link_attrs(iface, group=wire.c_int(value))

        def store_proto_down(c: Caller, buf: bytes) -> None:
            netdev_store_value(c, buf)
            raise KernelError(errno.EOPNOTSUPP)

        async def show_ifalias(c: Caller) -> str:
            alias = (await state(c)).ifalias
            return f"{alias}\n" if alias else ""

        async def store_ifalias(c: Caller, buf: bytes) -> None:
            if not c.net_admin:
                raise KernelError(errno.EPERM)
            alias = buf[:-1] if buf.endswith(b"\n") else buf
            if len(alias) >= IFALIASZ:
                raise KernelError(errno.EINVAL)
            await self.driver.set_link_attrs(iface, ifalias=alias.decode(errors="replace"))

        def store_napi(c: Caller, buf: bytes, name: str) -> None:
            """NAPI tuning: kept and shown as the kernel does, with no effect on a daemon."""
            value = netdev_store_value(c, buf)
            if name == "napi_defer_hard_irqs" and value > 0x7FFFFFFF:
                raise KernelError(errno.ERANGE)
            if name == "threaded" and value not in (0, 1):
                raise KernelError(errno.EINVAL)
            iface.napi[name] = value

        def store_uevent(c: Caller, buf: bytes) -> None:
            if buf.strip().split(b" ")[0] not in UEVENT_ACTIONS:
                raise KernelError(errno.EINVAL)

        def field(name: str):
            async def show(c: Caller) -> str:
                return f"{getattr(await state(c), name)}\n"

            return show

        return {
            "uevent": rw(lambda c: f"INTERFACE={iface.name}\nIFINDEX={iface.link.ifindex}\n",
                         store_uevent),
            "address": ro(lambda c: wire.format_lladdr(self._live(iface).hw_addr) + "\n"),
            "broadcast": ro(lambda c: wire.format_lladdr(self._live(iface).broadcast) + "\n"),
            "addr_len": ro(const(wire.INFINIBAND_ALEN)),
            "type": ro(const(wire.ARPHRD_INFINIBAND)),
            "dev_id": ro(show_dev_id),
            "dev_port": ro(lambda c: f"{iface.dev_id}\n"),
            "ifindex": ro(lambda c: f"{iface.link.ifindex}\n"),
            "iflink": ro(lambda c: f"{(iface.parent or iface).link.ifindex}\n"),
            "link_mode": ro(const(0)),
            "addr_assign_type": ro(const(0)),
            "name_assign_type": ro(fails(errno.EINVAL)),
            "mtu": rw(lambda c: f"{nd.mtu(self._live(iface).link)}\n", store_mtu),
            "flags": rw(show_flags, store_flags),
            "tx_queue_len": rw(field("txqlen"), store_txqlen),
            "operstate": ro(show_operstate),
            "carrier": rw(show_carrier, store_carrier),
            "carrier_changes": ro(field("carrier_changes")),
            "carrier_up_count": ro(field("carrier_up_count")),
            "carrier_down_count": ro(field("carrier_down_count")),
            "dormant": ro(lambda c: running_zero(running_state, c)),
            "testing": ro(lambda c: running_zero(running_state, c)),
            "speed": ro(show_speed),
            "duplex": ro(show_duplex),
            "ifalias": rw(show_ifalias, store_ifalias),
            "netdev_group": rw(field("group"), store_group),
            "proto_down": rw(field("proto_down"), store_proto_down),
            **{name: rw(lambda c, n=name: f"{iface.napi[n]}\n",
                        lambda c, buf, n=name: store_napi(c, buf, n))
               for name in iface.napi},
        }  # fmt: skip

    # ------------------------------------------------------------- class/infiniband

    def _hca_dir(self) -> Dir:
        dev = self.device

        return static({
            "node_type": ro(const("1: CA")),
            "node_guid": ro(const(wire.format_guid(dev.node_guid))),
            "sys_image_guid": ro(const(wire.format_guid(dev.node_guid))),
            "fw_ver": ro(const(dev.profile.fw_ver)),
            "hca_type": ro(const(dev.profile.hca_type)),
            "hw_rev": ro(const(dev.profile.hw_rev)),
            "board_id": ro(const(dev.profile.board_id)),
            "node_desc": rw(lambda c: dev.node_desc.split(b"\0")[0].decode(errors="replace")
                            + "\n", lambda c, buf: dev.set_node_desc(buf)),
            "ports": static({str(p.num): self._port_dir(p) for p in dev.ports}),
        })  # fmt: skip

    def _port_dir(self, port: Port) -> Dir:
        def gid_attr(c: Caller, i: int, show: str | None) -> str:
            """rdma_get_gid_attr: ENODATA for an empty entry; an IB GID has no netdev."""
            if not any(port.gids[i]):
                raise KernelError(errno.ENODATA)
            if show is None:
                raise KernelError(errno.EINVAL)
            return show

        n_gids = range(len(port.gids))
        return static({
            "lid": ro(lambda c: f"0x{port.lid:x}\n"),
            "sm_lid": ro(lambda c: f"0x{port.sm_lid:x}\n"),
            "lid_mask_count": ro(const(0)),
            "sm_sl": ro(const(0)),
            "state": ro(lambda c: f"{port.state}: {PORT_STATES.get(port.state, 'UNKNOWN')}\n"),
            "phys_state": ro(lambda c: f"{port.phys_state}: "
                                       f"{PHYS_STATES.get(port.phys_state, '<unknown>')}\n"),
            "rate": ro(lambda c: port.rate_text + "\n"),
            "cap_mask": ro(const(f"0x{CAP_MASK:08x}")),
            "link_layer": ro(const("InfiniBand")),
            "gids": static({str(i): ro(lambda c, i=i: wire.format_gid_sysfs(port.gids[i]) + "\n")
                            for i in n_gids}),
            "pkeys": static({str(i): ro(lambda c, i=i: f"0x{port.pkeys[i]:04x}\n")
                             for i in range(len(port.pkeys))}),
            "gid_attrs": static({
                "types": static({str(i): ro(lambda c, i=i: gid_attr(c, i, "IB/RoCE v1\n"))
                                 for i in n_gids}),
                "ndevs": static({str(i): ro(lambda c, i=i: gid_attr(c, i, None))
                                 for i in n_gids}),
            }),
        })  # fmt: skip

    # ------------------------------------------------------------- debugfs

    def _debugfs_names(self) -> list[str]:
        return [f"{name}{suffix}" for name in self.driver.interfaces for suffix in DEBUGFS]

    def _debugfs_file(self, filename: str) -> Attr | None:
        name, sep, suffix = filename.rpartition("_")
        iface = self.driver.interfaces.get(name)
        show = DEBUGFS.get(f"{sep}{suffix}")
        if iface is None or show is None:
            return None
        return Attr(0o444, show=lambda c: show(iface), size=0, sysfs=False)

    # ------------------------------------------------------------- module parameters

    def _params_dir(self) -> Dir:
        params = self.driver.params

        def entry(name: str, mode: int) -> Attr:
            def store(c: Caller, buf: bytes) -> None:
                params[name] = wire.kstrtoint(buf)

            show = lambda c: f"{params[name]}\n"  # noqa: E731
            return rw(show, store) if mode & 0o200 else ro(show)

        return static({spec.name: entry(spec.name, spec.mode) for spec in params.specs})


# ----------------------------------------------------------------- helpers


def netdev_store_value(caller: Caller, buf: bytes) -> int:
    """netdev_store: CAP_NET_ADMIN first, then kstrtoul."""
    if not caller.net_admin:
        raise KernelError(errno.EPERM)
    return wire.kstrtoul(buf)


async def running_zero(running_state, caller: Caller) -> str:
    await running_state(caller)
    return "0\n"
