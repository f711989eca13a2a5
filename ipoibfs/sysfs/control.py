"""The mirror's control file, `.ipoibfs/links`, behind the `ip` and `ethtool` front ends
(`ipoibfs link` and `ipoibfs ethtool`, and the shims inside `ipoibfs exec`).

The kernel answers those tools over rtnetlink and the ethtool ioctls, which a TUN cannot
carry for an emulated driver. Reading the file gives one JSON object per IPoIB interface,
with what ipoib_fill_info and ipoib_ethtool_ops report. Writing one JSON request runs
rtnl_link_ops, set_coalesce or `ethtool -K`'s ETHTOOL_MSG_FEATURES_SET ({"op": "features",
"dev": D, "bits": [[name, on], ...]}, which the front end reads back as ethtool reads the
kernel's reply), and the write fails with the errno the kernel returns.
"""

from __future__ import annotations

import errno
import ipaddress
import json

import trio

from .. import wire
from ..errors import KernelError
from ..fabric.impair import Netem
from .context import NUD_VALID, STAT_NAMES, Interface, MirrorContext, ethtool
from .nodes import Attribute, Caller


def link_info(ctx: MirrorContext, iface: Interface) -> dict:
    port = iface.port
    return {
        "ifname": iface.name,
        "ifindex": iface.link.ifindex,
        "address": wire.format_lladdr(iface.hw_addr),
        "broadcast": wire.format_lladdr(iface.broadcast),
        "parent": iface.parent.name if iface.parent else None,
        "child_type": iface.child_type.value,
        "pkey": iface.pkey,
        "mode": "connected" if iface.admin_cm else "datagram",
        "umcast": int(iface.umcast),
        "carrier": iface.carrier,
        "up": iface.opened,  # IFF_UP as the driver saw it (M-DOWN on a child's `ip link`)
        "speed": ethtool.speed(iface),
        "driver": ethtool.DRIVER_NAME,
        "fw_version": port.profile.fw_ver,
        "bus_info": ctx.device.profile.pci.slot_name,  # dev_name(ca->dev.parent)
        "coalesce": {"rx_usecs": iface.coalesce_usecs, "rx_frames": iface.coalesce_frames},
        "features": _features(ctx, iface),
        "stats": ethtool.stats(iface),
        "statistics": {name: iface.statistic(name) for name in STAT_NAMES},
    }


def _features(ctx: MirrorContext, iface: Interface) -> dict:
    """What `ethtool -k` asks the kernel (ETHTOOL_MSG_FEATURES_GET and the ETH_SS_FEATURES
    strings): the names in bit order, and hw, wanted, active and nochange as name lists."""
    f = iface.features
    return {"names": ctx.feature_names(), "hw": sorted(f.hw), "wanted": sorted(f.wanted),
            "active": sorted(f.active), "nochange": sorted(f.nochange)}  # fmt: skip


def _feature_bits(value: object) -> list[tuple[str, bool]]:
    """ETHTOOL_A_FEATURES_WANTED's bits: [[name, true|false], ...]."""
    if not isinstance(value, list):
        raise KernelError(errno.EINVAL)
    bits = []
    for bit in value:
        if not (isinstance(bit, list) and len(bit) == 2 and isinstance(bit[0], str)
                and isinstance(bit[1], bool)):  # fmt: skip
            raise KernelError(errno.EINVAL)
        bits.append((bit[0], bit[1]))
    return bits


def _optional_u16(request: dict, key: str) -> int | None:
    """An NLA_U16 attribute, if present."""
    value = request.get(key)
    if value is not None and (type(value) is not int or not 0 <= value <= 0xFFFF):
        raise KernelError(errno.EINVAL)
    return value


def _name(request: dict, key: str) -> str | None:
    value = request.get(key)
    if value is not None and not isinstance(value, str):
        raise KernelError(errno.EINVAL)
    return value


def _interface(ctx: MirrorContext, name: str | None) -> Interface:
    iface = ctx.interfaces.get(name) if name is not None else None
    if iface is None:
        raise KernelError(errno.ENODEV)
    return iface


async def store_links(ctx: MirrorContext, dev: None, caller: Caller, buf: bytes) -> None:
    try:
        request = json.loads(buf)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deep
        raise KernelError(errno.EINVAL) from None
    if not isinstance(request, dict):
        raise KernelError(errno.EINVAL)
    if not caller.net_admin:
        raise KernelError(errno.EPERM)  # rtnetlink and ethtool set operations need it
    op = request.get("op")
    mode, umcast = _optional_u16(request, "mode"), _optional_u16(request, "umcast")
    if op == "newlink":
        parent = _name(request, "link")
        if parent is None:
            raise KernelError(errno.EINVAL)  # ipoib_new_child_link needs IFLA_LINK
        await ctx.new_link(parent, _name(request, "name"), _optional_u16(request, "pkey"),
                           mode, umcast)  # fmt: skip
    elif op == "changelink":
        await ctx.change_link(_interface(ctx, _name(request, "dev")), mode, umcast)
    elif op == "dellink":
        await ctx.del_link(_interface(ctx, _name(request, "dev")))
    elif op == "coalesce":
        usecs, frames = request.get("rx_usecs"), request.get("rx_frames")
        if any(v is not None and type(v) is not int for v in (usecs, frames)):
            raise KernelError(errno.EINVAL)
        await ctx.set_coalesce(_interface(ctx, _name(request, "dev")), usecs, frames)
    elif op == "features":
        iface = _interface(ctx, _name(request, "dev"))
        await ctx.set_features(iface, _feature_bits(request.get("bits")))
    else:
        raise KernelError(errno.EOPNOTSUPP)


def show_links(ctx: MirrorContext, dev: None) -> str:
    return json.dumps([link_info(ctx, i) for i in ctx.interfaces.values()]) + "\n"


#: `.ipoibfs/links` (dev = None): root's only, with debugfs's semantics.
LINKS = Attribute("links", 0o600, show=show_links, store=store_links, size=0, sysfs=False)


# ----------------------------------------------------------------- `.ipoibfs/neigh`, `.ipoibfs/arp`
# The daemon's neighbour table (what RTM_GETNEIGH/RTM_DELNEIGH would reach for `ip neigh`) and
# a packet socket's view of ARP (what `arping` sends and hears), which a TUN cannot give.


def _request(buf: bytes, caller: Caller) -> dict:
    try:
        request = json.loads(buf)
    except (ValueError, RecursionError):
        raise KernelError(errno.EINVAL) from None
    if not isinstance(request, dict):
        raise KernelError(errno.EINVAL)
    if not caller.net_admin:
        raise KernelError(errno.EPERM)
    return request


def _ip(value: object, length: int) -> bytes:
    """An IPv4 (length 4) or IPv6 (16) address given as text."""
    if not isinstance(value, str):
        raise KernelError(errno.EINVAL)
    try:
        packed = ipaddress.ip_address(value).packed
    except ValueError:
        raise KernelError(errno.EINVAL) from None
    if length and len(packed) != length:
        raise KernelError(errno.EINVAL)
    return packed


def _hw(value: object) -> bytes:
    """A 20-byte hardware address given as hex (colons allowed)."""
    if not isinstance(value, str):
        raise KernelError(errno.EINVAL)
    try:
        raw = bytes.fromhex(value.replace(":", ""))
    except ValueError:
        raise KernelError(errno.EINVAL) from None
    if len(raw) != wire.INFINIBAND_ALEN:
        raise KernelError(errno.EINVAL)
    return raw


def show_neigh(ctx: MirrorContext, dev: None) -> str:
    """Every neighbour of every IPoIB interface: its NUD state (the kernel's bits), its
    hardware address while valid, and the cacheinfo ages in seconds."""
    now = trio.current_time()
    entries = []
    for iface in ctx.interfaces.values():
        for addr, neigh in list(iface.neighbours.items()):
            valid = neigh.nud & NUD_VALID and neigh.hwaddr
            entries.append({
                "dev": iface.name,
                "family": 4 if len(addr) == 4 else 6,
                "dst": str(ipaddress.ip_address(addr)),
                "lladdr": wire.format_lladdr(neigh.hwaddr) if valid else None,
                "state": neigh.nud,
                "used": max(0.0, now - neigh.last_used),
                "confirmed": max(0.0, now - neigh.last_confirmed),
                "updated": max(0.0, now - neigh.updated),
                "probes": neigh.probes,
            })  # fmt: skip
    return json.dumps(entries) + "\n"


async def store_neigh(ctx: MirrorContext, dev: None, caller: Caller, buf: bytes) -> None:
    """{"op": "delete", "dev": D, "dst": A}: RTM_DELNEIGH (ENOENT if there is none);
    {"op": "flush", "dev": D, "dst": [A, ...]}: the same for each, those gone meanwhile skipped."""
    request = _request(buf, caller)
    iface = _interface(ctx, _name(request, "dev"))
    op, dst = request.get("op"), request.get("dst")
    if op == "delete":
        ctx.neigh_delete(iface, _ip(dst, 0))
    elif op == "flush":
        if not isinstance(dst, list):
            raise KernelError(errno.EINVAL)
        for addr in [_ip(a, 0) for a in dst]:
            try:
                ctx.neigh_delete(iface, addr)
            except KernelError as e:
                if e.errno != errno.ENOENT:
                    raise
    else:
        raise KernelError(errno.EOPNOTSUPP)


def show_arp(ctx: MirrorContext, dev: None) -> str:
    """The ARP packets the interfaces received lately, oldest first, numbered (`seq`), with
    CLOCK_MONOTONIC at reception and skb->pkt_type."""
    seen: list[tuple[int, dict]] = []
    for iface in ctx.interfaces.values():
        for arp in list(iface.arp_seen):
            seen.append((arp.seq, {
                "seq": arp.seq, "dev": iface.name, "time": arp.time, "op": arp.op,
                "sha": arp.sha.hex(), "spa": str(ipaddress.IPv4Address(arp.spa)),
                "tha": arp.tha.hex(), "tpa": str(ipaddress.IPv4Address(arp.tpa)),
                "pkttype": arp.pkttype,
            }))  # fmt: skip
    seen.sort(key=lambda pair: pair[0])
    return json.dumps([entry for _, entry in seen]) + "\n"


async def store_arp(ctx: MirrorContext, dev: None, caller: Caller, buf: bytes) -> None:
    """{"op": "send", "dev": D, "arpop": 1|2, "spa": A, "tpa": A, "tha": HW, "dest": HW}: one
    ARP packet with the interface's own hardware address as sender, as a packet socket's
    sendto would put it on the link: to the broadcast group when `dest` is the broadcast
    address, else unicast (ENETDOWN while the interface is down)."""
    request = _request(buf, caller)
    if request.get("op") != "send":
        raise KernelError(errno.EOPNOTSUPP)
    iface = _interface(ctx, _name(request, "dev"))
    op = request.get("arpop")
    if op not in (wire.ARPOP_REQUEST, wire.ARPOP_REPLY):
        raise KernelError(errno.EINVAL)
    arp = (op, _ip(request.get("spa"), 4), _hw(request.get("tha")), _ip(request.get("tpa"), 4))
    ctx.arp_send(iface, *arp, _hw(request.get("dest")))


#: `.ipoibfs/neigh` and `.ipoibfs/arp` (dev = None): root's only, like `links`.
NEIGH = Attribute("neigh", 0o600, show=show_neigh, store=store_neigh, size=0, sysfs=False)
ARP = Attribute("arp", 0o600, show=show_arp, store=store_arp, size=0, sysfs=False)


# ----------------------------------------------------------------- `.ipoibfs/ports`
# The HCA's ports as fault injection sees them. `lab port HOST[:PORT] down|up` writes
# {"op": "link", "port": N, "up": false|true}; `lab link` writes {"op": "netem", "port": N,
# "loss": P, "delay_ms": MS, "jitter_ms": MS, "reorder": P, "corrupt": P} (the whole setting)
# or {"op": "netem", "port": N} to clear it. A read gives each port's state, its
# impairments and what they did.


def show_ports(ctx: MirrorContext, dev: None) -> str:
    ports = []
    for p in ctx.device.ports:
        impair = ctx.port(p.num).impair
        ports.append({"port": p.num, "lid": p.lid, "state": p.state, "phys_state": p.phys_state,
                      "netem": impair.netem.__dict__ if impair else None,
                      "netem_counts": impair.counts.as_dict() if impair else None})  # fmt: skip
    return json.dumps(ports) + "\n"


def _netem(request: dict) -> Netem | None:
    fields = {k: request[k] for k in NETEM_FIELDS if k in request}
    if not fields:
        return None
    for key, value in fields.items():
        if type(value) not in (int, float) or not 0 <= value <= (100 if key in PERCENT else 1e6):
            raise KernelError(errno.EINVAL)
    return Netem(**{k: float(v) for k, v in fields.items()})


async def store_ports(ctx: MirrorContext, dev: None, caller: Caller, buf: bytes) -> None:
    request = _request(buf, caller)
    num, op = request.get("port"), request.get("op")
    if type(num) is not int:
        raise KernelError(errno.EINVAL)
    if op == "link":
        up = request.get("up")
        if type(up) is not bool:
            raise KernelError(errno.EINVAL)
        await ctx.set_port_link(num, up)
    elif op == "netem":
        port = ctx.port(num)
        port.set_impairment(_netem(request))
    else:
        raise KernelError(errno.EOPNOTSUPP)


NETEM_FIELDS = ("loss", "delay_ms", "jitter_ms", "reorder", "corrupt")
PERCENT = ("loss", "reorder", "corrupt")
PORTS = Attribute("ports", 0o600, show=show_ports, store=store_ports, size=0, sysfs=False)
