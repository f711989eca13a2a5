"""The netdev features of an IPoIB interface and `ethtool -k`/`-K` on them (no I/O).

Three layers, each after the code it mirrors:

- the core: features as sets of the kernel's feature names (netdev_features_strings), with
  hw_features, wanted_features and features as in struct net_device; netdev_fix_features'
  dependency rules and __netdev_update_features (net/core/dev.c); ethnl_set_features
  (net/ethtool/features.c), the kernel side of `ethtool -K` over netlink;
- the driver: ipoib_setup_common, ipoib_set_dev_features and ipoib_transport_dev_init's SG,
  as register_netdevice completes them, and ipoib_fix_features (ipoib_main.c), with the
  emulated HCA's offloads (decisions 18 and 33: IP checksum, TSO and LRO; LRO starts off and
  only with RX checksum, as the driver documentation says);
- ethtool 6.1's netlink front end (netlink/features.c, common.c): -K's arguments with the
  legacy names of off_flag_def, its messages and exit codes, and -k's layout.

Feature names are the kernel's, in the kernel's bit order (`names`): the list a caller reads
at run time from any netdev (SIOCETHTOOL ETHTOOL_GSTRINGS of ETH_SS_FEATURES, read by
netdev/links.py), or recovers from the real `ethtool -k` of a TUN (`names_from_dump`).
The driver's rules name only features every 6.x kernel has.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from ..errors import KernelError

# ------------------------------------------------------------------ feature names (NETIF_F_*)

SG = "tx-scatter-gather"
IP_CSUM = "tx-checksum-ipv4"
HW_CSUM = "tx-checksum-ip-generic"
IPV6_CSUM = "tx-checksum-ipv6"
HIGHDMA = "highdma"
FRAGLIST = "tx-scatter-gather-fraglist"
VLAN_CHALLENGED = "vlan-challenged"
GSO = "tx-generic-segmentation"
GRO = "rx-gro"
LRO = "rx-lro"
TSO = "tx-tcp-segmentation"
TSO_ECN = "tx-tcp-ecn-segmentation"
TSO_MANGLEID = "tx-tcp-mangleid-segmentation"
TSO6 = "tx-tcp6-segmentation"
RXCSUM = "rx-checksum"
NOCACHE_COPY = "tx-nocache-copy"
RXFCS = "rx-fcs"
GRO_HW = "rx-gro-hw"
GRO_FRAGLIST = "rx-gro-list"
GRO_UDP_FWD = "rx-udp-gro-forwarding"
HW_TLS_TX = "tls-hw-tx-offload"
HW_TLS_RX = "tls-hw-rx-offload"

#: NETIF_F_NEVER_CHANGE on 6.12 and later (LLTX and NETNS_LOCAL became private flags).
NEVER_CHANGE = frozenset({VLAN_CHALLENGED})
#: NETIF_F_SOFT_FEATURES and NETIF_F_SOFT_FEATURES_OFF (register_netdevice).
SOFT_FEATURES = frozenset({GSO, GRO})
SOFT_FEATURES_OFF = frozenset({GRO_FRAGLIST, GRO_UDP_FWD})
ALL_TSO = frozenset({TSO, TSO6, TSO_ECN, TSO_MANGLEID})

Names = frozenset[str]
#: An ndo_fix_features: the features the driver can have, given the ones wanted.
FixFeatures = Callable[[Names], Names]


@dataclass(frozen=True, slots=True)
class Features:
    """A netdev's hw_features (what ethtool may change), wanted_features (what was asked
    for) and features (what is on), as kernel feature names; `nochange` is what
    ETHTOOL_A_FEATURES_NOCHANGE reports (NETIF_F_NEVER_CHANGE)."""

    hw: Names
    wanted: Names
    active: Names
    nochange: Names = NEVER_CHANGE

    def on(self, name: str) -> bool:
        return name in self.active


# ------------------------------------------------------------------ the core (net/core/dev.c)


def netdev_fix_features(features: Iterable[str], gso_partial: Names = frozenset()) -> Names:
    """netdev_fix_features: the core's dependency rules, in its order."""
    f = set(features)
    if HW_CSUM in f and f & {IP_CSUM, IPV6_CSUM}:  # "mixed HW and IP checksum settings."
        f -= {IP_CSUM, IPV6_CSUM}
    if f & ALL_TSO and SG not in f:  # "Dropping TSO features since no SG feature."
        f -= ALL_TSO
    if TSO in f and HW_CSUM not in f and IP_CSUM not in f:
        f -= {TSO, TSO_ECN}
    if TSO6 in f and HW_CSUM not in f and IPV6_CSUM not in f:
        f.discard(TSO6)
    if TSO_MANGLEID in f and TSO not in f:
        f.discard(TSO_MANGLEID)
    if TSO_ECN in f and not f & (ALL_TSO - {TSO_ECN}):
        f.discard(TSO_ECN)
    if GSO in f and SG not in f:  # "Dropping NETIF_F_GSO since no SG feature."
        f.discard(GSO)
    if f & gso_partial and "tx-gso-partial" not in f:
        f -= gso_partial
    if RXCSUM not in f:  # "Dropping NETIF_F_GRO_HW since no RXCSUM feature."
        f.discard(GRO_HW)
    if RXFCS in f:  # "LRO/HW-GRO features cannot be combined with RX-FCS"
        f -= {LRO, GRO_HW}
    if GRO_HW in f:  # "Dropping LRO feature since HW-GRO is requested."
        f.discard(LRO)
    if HW_TLS_TX in f and not ({IP_CSUM, IPV6_CSUM} <= f or HW_CSUM in f):
        f.discard(HW_TLS_TX)
    if HW_TLS_RX in f and RXCSUM not in f:
        f.discard(HW_TLS_RX)
    return frozenset(f)


def netdev_get_wanted_features(dev: Features) -> Names:
    """netdev_get_wanted_features: the fixed features plus the wanted changeable ones."""
    return (dev.active - dev.hw) | dev.wanted


def netdev_update_features(dev: Features, fix: FixFeatures | None = None) -> Features:
    """__netdev_update_features: wanted → the driver's ndo_fix_features → the core's rules.
    (IPoIB has no ndo_set_features, so the result is taken as it is.)"""
    features = netdev_get_wanted_features(dev)
    if fix is not None:
        features = fix(features)
    return replace(dev, active=netdev_fix_features(features))


def register_netdevice(hw: Iterable[str], features: Iterable[str],
                       fix: FixFeatures | None = None) -> Features:  # fmt: skip
    """What register_netdevice does to the features ndo_init left: soft features on (GSO,
    GRO) and changeable with the -OFF ones, wanted = features & hw, NOCACHE_COPY and (with
    TSO) TSO_MANGLEID changeable but off, then __netdev_update_features."""
    hw_set = set(hw) | SOFT_FEATURES | SOFT_FEATURES_OFF
    active = frozenset(features) | SOFT_FEATURES
    wanted = active & hw_set
    hw_set.add(NOCACHE_COPY)  # not IFF_LOOPBACK
    if TSO in hw_set:
        hw_set.add(TSO_MANGLEID)
    return netdev_update_features(Features(frozenset(hw_set), wanted, active), fix)


# ------------------------------------------------------------------ the driver (ipoib_main.c)


@dataclass(frozen=True, slots=True)
class HcaOffloads:
    """What the emulated HCA offers IPoIB: IB_DEVICE_UD_IP_CSUM, IBK_UD_TSO and LRO (the
    driver documentation's "Large Receive (LRO) offloading", only on checksum-capable HCAs)."""

    ud_ip_csum: bool = True
    ud_tso: bool = True
    lro: bool = True


DEFAULT_HCA = HcaOffloads()
#: `--no-offload`: an HCA that offers none.
NO_OFFLOAD_HCA = HcaOffloads(ud_ip_csum=False, ud_tso=False, lro=False)


def ipoib_fix_features(features: Names, connected: bool) -> Names:
    """ipoib_fix_features: connected mode (IPOIB_FLAG_ADMIN_CM) removes IP_CSUM and TSO
    (RXCSUM stays); and, the driver documentation's rule, LRO only with RX checksum."""
    if connected:
        features = features - {IP_CSUM, TSO}
    if RXCSUM not in features:
        features = features - {LRO}
    return features


def ipoib_fixer(connected: bool) -> FixFeatures:
    """The interface's ndo_fix_features in its current mode."""
    return lambda features: ipoib_fix_features(features, connected)


def ipoib_features(hca: HcaOffloads = DEFAULT_HCA, connected: bool = False,
                   max_send_sge: int = 2) -> Features:  # fmt: skip
    """The features of a new IPoIB netdev (a parent or a child: children are probed on
    their parent's HCA): ipoib_setup_common (VLAN_CHALLENGED, HIGHDMA), ipoib_set_dev_features
    (IP_CSUM and RXCSUM with UD IP checksum, TSO with UD TSO, all on; and here LRO,
    changeable but off), ipoib_transport_dev_init (SG, fixed on with more than one send
    SGE), then register_netdevice."""
    features = {VLAN_CHALLENGED, HIGHDMA}
    hw: set[str] = set()
    if hca.ud_ip_csum:
        hw |= {IP_CSUM, RXCSUM}
        if hca.ud_tso:
            hw.add(TSO)
        features |= hw
        if hca.lro:
            hw.add(LRO)  # decision 33: offered, off until asked for
    if max_send_sge > 1:
        features.add(SG)
    return register_netdevice(hw, features, ipoib_fixer(connected))


def ipoib_set_mode(dev: Features, connected: bool) -> Features:
    """The netdev_update_features of ipoib_set_mode: what the mode forbids goes off, what
    was wanted comes back on return to datagram mode (wanted_features is untouched)."""
    return netdev_update_features(dev, ipoib_fixer(connected))


#: include/uapi/linux/if_tun.h
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN = 0x01, 0x02, 0x04, 0x08


def tun_offload_flags(dev: Features) -> int:
    """The TUNSETOFFLOAD flags that make the stack hand the TUN what the IPoIB interface
    accepts: partial checksums with TX checksum on, TCPv4 super-packets with TSO on (TSO
    is only ever on with IP_CSUM; IPoIB has no TSO6 or TSO_ECN)."""
    flags = 0
    if dev.on(IP_CSUM):
        flags |= TUN_F_CSUM
        if dev.on(TSO):
            flags |= TUN_F_TSO4
    return flags


# ------------------------------------------------------------------ ethtool -K, kernel side


class NetlinkError(KernelError):
    """An ethtool netlink request the kernel refused: errno, the extack message and the
    offset of the offending attribute in the request (NLMSGERR_ATTR_OFFS), if any."""

    def __init__(self, err: int, extack: str, offset: int | None = None) -> None:
        super().__init__(err, extack)
        self.extack = extack
        self.offset = offset


@dataclass(frozen=True, slots=True)
class SetFeaturesReply:
    """ETHTOOL_MSG_FEATURES_SET_REPLY: WANTED (requested values that were not met:
    value and mask) and ACTIVE (features that changed: new value and mask)."""

    wanted: Names
    wanted_mask: Names
    active: Names
    active_mask: Names


#: One ETHTOOL_A_BITSET_BITS_BIT of a request: name and value, in the order sent.
Request = tuple[str, bool]


def ethnl_set_features(dev: Features, bits: Sequence[Request], names: Sequence[str],
                       fix: FixFeatures | None = None, offsets: Sequence[int] = (),
                       ) -> tuple[Features, SetFeaturesReply]:  # fmt: skip
    """ethnl_set_features: the requested bits change wanted_features within hw_features,
    then __netdev_update_features; the reply says what differs from the request and what
    changed. A name the kernel does not know fails with EOPNOTSUPP ("bit name not found",
    at offsets[i] when given); one outside NETIF_F_ETHTOOL_BITS with EINVAL."""
    req_wanted: set[str] = set()
    req_mask: set[str] = set()
    for i, (name, value) in enumerate(bits):
        if name not in names:
            raise NetlinkError(errno.EOPNOTSUPP, "bit name not found",
                               offsets[i] if i < len(offsets) else None)  # fmt: skip
        req_mask.add(name)
        (req_wanted.add if value else req_wanted.discard)(name)
    if req_mask & dev.nochange:
        raise NetlinkError(errno.EINVAL, "attempt to change non-ethtool features")
    new_wanted = frozenset(req_wanted | (dev.wanted - req_mask))
    new = dev
    if new_wanted != dev.wanted:
        wanted = (dev.wanted - dev.hw) | (new_wanted & dev.hw)
        new = netdev_update_features(replace(dev, wanted=wanted), fix)
    wanted_mask = (new_wanted ^ new.active) & req_mask
    active_mask = dev.active ^ new.active
    reply = SetFeaturesReply(new_wanted & wanted_mask, frozenset(wanted_mask),
                             new.active & active_mask, active_mask)  # fmt: skip
    return new, reply


# ------------------------------------------------------------------ ethtool (netlink/features.c)


@dataclass(frozen=True, slots=True)
class OffFlag:
    """An entry of ethtool's off_flag_def: the legacy short and long names and the kernel
    names they stand for (a pattern with at most one `*`)."""

    short: str
    long: str
    pattern: str


#: off_flag_def (ethtool 6.1 common.c), in its order.
OFF_FLAG_DEF = (
    OffFlag("rx", "rx-checksumming", "rx-checksum"),
    OffFlag("tx", "tx-checksumming", "tx-checksum-*"),
    OffFlag("sg", "scatter-gather", "tx-scatter-gather*"),
    OffFlag("tso", "tcp-segmentation-offload", "tx-tcp*-segmentation"),
    OffFlag("ufo", "udp-fragmentation-offload", "tx-udp-fragmentation"),
    OffFlag("gso", "generic-segmentation-offload", "tx-generic-segmentation"),
    OffFlag("gro", "generic-receive-offload", "rx-gro"),
    OffFlag("lro", "large-receive-offload", "rx-lro"),
    OffFlag("rxvlan", "rx-vlan-offload", "rx-vlan-hw-parse"),
    OffFlag("txvlan", "tx-vlan-offload", "tx-vlan-hw-insert"),
    OffFlag("ntuple", "ntuple-filters", "rx-ntuple-filter"),
    OffFlag("rxhash", "receive-hashing", "rx-hashing"),
)
#: "no kernel with netlink interface supports UFO": -k never shows it.
_UFO = "udp-fragmentation-offload"

#: The ethtool exit status for a failed netlink exchange (nl_sfeatures).
EXIT_NETLINK = 92


def flag_pattern_match(name: str, pattern: str) -> bool:
    """flag_pattern_match: `*` stands for any run of characters, the empty one included."""
    star = pattern.find("*")
    if star < 0:
        return name == pattern
    head, tail = pattern[:star], pattern[star + 1 :]
    return len(name) + 1 >= len(pattern) and name.startswith(head) and name.endswith(tail)


@dataclass(frozen=True, slots=True)
class EthtoolResult:
    """What the real ethtool would print and exit with."""

    stdout: str = ""
    stderr: str = ""
    status: int = 0


def _nla(payload: int) -> int:
    """NLA_ALIGN(NLA_HDRLEN + payload)."""
    return (4 + payload + 3) & ~3


def bit_name_offsets(ifname: str, bits: Sequence[Request]) -> list[int]:
    """The offset in ethtool's ETHTOOL_MSG_FEATURES_SET request of each bit's
    ETHTOOL_A_BITSET_BIT_NAME, which the kernel reports when it does not know the name:
    nlmsghdr and genlmsghdr, the header nest (DEV_NAME, FLAGS=COMPACT_BITSETS), the WANTED
    and BITS nests, then one BIT nest per bit (NAME, and VALUE only when on)."""
    offset = 16 + 4 + 4 + _nla(len(ifname.encode()) + 1) + _nla(4) + 4 + 4
    offsets = []
    for name, value in bits:
        offsets.append(offset + 4)
        offset += 4 + _nla(len(name.encode()) + 1) + (4 if value else 0)
    return offsets


def parse_sfeatures_args(args: Sequence[str], names: Sequence[str],
                         ) -> tuple[list[Request], frozenset[str]] | EthtoolResult:  # fmt: skip
    """fill_sfeatures_bitmap: NAME on|off pairs up to an optional `--`; a legacy short or
    long name stands for every kernel name its pattern matches (none for ufo), any other
    name is sent as it is. Returns the bits sent and ethtool's req_mask (the known names
    asked for), or the error ethtool prints without asking the kernel."""
    bits: list[Request] = []
    mask: set[str] = set()
    i = 0
    while i < len(args):
        if args[i] == "--":
            break
        value = args[i + 1] if i + 1 < len(args) else None
        if value not in ("on", "off"):
            shown = "(null)" if value is None else value
            return EthtoolResult(stderr=f"ethtool (-K): flag '{shown}' for parameter '(null)' "
                                 "is not followed by 'on' or 'off'\n", status=1)  # fmt: skip
        on = value == "on"
        legacy = next((d for d in OFF_FLAG_DEF if args[i] in (d.short, d.long)), None)
        if legacy is not None:
            for name in names:
                if name and flag_pattern_match(name, legacy.pattern):
                    bits.append((name, on))
                    mask.add(name)
        else:
            bits.append((args[i], on))
            if args[i] in names:
                mask.add(args[i])
        i += 2
    return bits, frozenset(mask)


def show_feature_changes(reply: SetFeaturesReply, req_mask: Names,
                         names: Sequence[str]) -> tuple[str, bool]:  # fmt: skip
    """show_feature_changes: the "Actual changes:" listing, when the result is not exactly
    what was asked, and whether nothing asked for happened (nothing_changed)."""
    nothing_changed = reply.wanted_mask == req_mask
    if not reply.wanted_mask and not reply.active_mask - req_mask:
        return "", nothing_changed
    lines = ["Actual changes:\n"]
    for name in names:
        if name in reply.wanted_mask:
            want = name in reply.wanted
            lines.append(f"{name}: {'off' if want else 'on'} [requested {_onoff(want)}]\n")
        elif name in reply.active_mask:
            state = _onoff(name in reply.active)
            tag = "" if name in req_mask else " [not requested]"
            lines.append(f"{name}: {state}{tag}\n")
    return "".join(lines), nothing_changed


def _onoff(value: bool) -> str:
    return "on" if value else "off"


def ethtool_set_features(dev: Features, args: Sequence[str], names: Sequence[str],
                         ifname: str, fix: FixFeatures | None = None,
                         ) -> tuple[Features, EthtoolResult]:  # fmt: skip
    """`ethtool -K IFNAME ARGS...` as ethtool 6.1 runs it over netlink (nl_sfeatures with
    the kernel's ethnl_set_features): the new features, and the output and exit status.

    - refused arguments: the message, status 1, nothing sent;
    - a name the kernel does not know: "netlink error: bit name not found (offset N)" and
      "netlink error: Operation not supported", status 92, nothing changed;
    - vlan-challenged (NETIF_F_NEVER_CHANGE): "netlink error: attempt to change non-ethtool
      features" and "netlink error: Invalid argument", status 92;
    - otherwise the kernel applies what it can; stdout lists "Actual changes:" when the
      result differs from the request, and when no requested feature took the requested
      value (or nothing was requested) stderr says "Could not change any device features"
      and the status is 1; else 0.
    """
    parsed = parse_sfeatures_args(args, names)
    if isinstance(parsed, EthtoolResult):
        return dev, parsed
    bits, req_mask = parsed
    try:
        new, reply = ethnl_set_features(dev, bits, names, fix, bit_name_offsets(ifname, bits))
    except NetlinkError as e:
        where = f" (offset {e.offset})" if e.offset is not None else ""
        stderr = f"netlink error: {e.extack}{where}\nnetlink error: {os.strerror(e.errno)}\n"
        return dev, EthtoolResult(stderr=stderr, status=EXIT_NETLINK)
    stdout, nothing_changed = show_feature_changes(reply, req_mask, names)
    if nothing_changed:
        return new, EthtoolResult(stdout, "Could not change any device features\n", 1)
    return new, EthtoolResult(stdout)


@dataclass(frozen=True, slots=True)
class _Line:
    """One feature line of dump_features: its label, indent and feature, or a legacy
    group's summary line (feature None, members listed)."""

    label: str
    prefix: str = ""
    feature: str | None = None
    members: tuple[str, ...] = field(default=())


def _dump_layout(names: Sequence[str]) -> list[_Line]:
    """dump_features' order: each legacy flag (but UFO) with its matching features (one
    match: under the legacy name; several: the legacy name with the OR of them, then each,
    indented with a tab), then every other named feature in bit order."""
    owner: dict[str, int] = {}
    for name in names:
        if name and name not in owner:
            for j, d in enumerate(OFF_FLAG_DEF):
                if flag_pattern_match(name, d.pattern):
                    owner[name] = j
                    break
    lines: list[_Line] = []
    for j, d in enumerate(OFF_FLAG_DEF):
        if d.long == _UFO:
            continue
        members = tuple(n for n in names if n and owner.get(n) == j)
        if len(members) != 1:
            lines.append(_Line(d.long, members=members))
        if len(members) == 1:
            lines.append(_Line(d.long, "", members[0]))
        elif members:
            lines.extend(_Line(n, "\t", n) for n in members)
    lines.extend(_Line(n, "", n) for n in names if n and n not in owner)
    return lines


def _dedup(names: Sequence[str]) -> list[str]:
    """Bit order, a name only at its first bit (as the kernel looks names up)."""
    seen: set[str] = set()
    out = []
    for n in names:
        if n and n in seen:
            n = ""
        seen.add(n)
        out.append(n)
    return out


def ethtool_show_features(dev: Features, names: Sequence[str], ifname: str) -> str:
    """`ethtool -k IFNAME` (dump_features): "Features for IFNAME:", then each feature as
    "name: on|off" with " [fixed]" when not in hw_features (or NEVER_CHANGE), else
    " [requested on|off]" when wanted differs from active; legacy group lines have no
    suffix."""
    out = [f"Features for {ifname}:\n"]
    for line in _dump_layout(_dedup(names)):
        if line.feature is None:
            out.append(f"{line.label}: {_onoff(any(dev.on(m) for m in line.members))}\n")
            continue
        name = line.feature
        active = dev.on(name)
        suffix = ""
        if name not in dev.hw or name in dev.nochange:
            suffix = " [fixed]"
        elif active != (name in dev.wanted):
            suffix = f" [requested {_onoff(name in dev.wanted)}]"
        out.append(f"{line.prefix}{line.label}: {_onoff(active)}{suffix}\n")
    return "".join(out)


def ethtool_show_features_json(dev: Features, names: Sequence[str], ifname: str) -> str:
    """`ethtool --json -k IFNAME`: the same entries, through ethtool's json_writer (a group
    line has "fixed" and "requested" null)."""
    entries = [f'        "ifname": "{ifname}"']
    for line in _dump_layout(_dedup(names)):
        if line.feature is None:
            active = any(dev.on(m) for m in line.members)
            fixed, requested = "null", "null"
        else:
            name = line.feature
            active = dev.on(name)
            fixed = _json_bool(name not in dev.hw or name in dev.nochange)
            requested = _json_bool(name in dev.wanted)
        entries.append(f'        "{line.label}": {{\n'
                       f'            "active": {_json_bool(active)},\n'
                       f'            "fixed": {fixed},\n'
                       f'            "requested": {requested}\n'
                       "        }")  # fmt: skip
    return "[ {\n" + ",\n".join(entries) + "\n    } ]\n"


def _json_bool(value: bool) -> str:
    return "true" if value else "false"


SHOW_OPTIONS = ("-k", "--show-features", "--show-offload")
SET_OPTIONS = ("-K", "--features", "--offload")
#: exit_bad_args (ethtool.c), e.g. for --json with -K, which has no JSON output.
BAD_ARGS = "ethtool: bad command line argument(s)\nFor more information run ethtool -h\n"


def ethtool_features(dev: Features, option: str, args: Sequence[str], names: Sequence[str],
                     ifname: str, fix: FixFeatures | None = None, json: bool = False,
                     ) -> tuple[Features, EthtoolResult]:  # fmt: skip
    """`ethtool [--json] OPTION IFNAME ARGS...` for OPTION in SHOW_OPTIONS or SET_OPTIONS
    (nl_gfeatures, nl_sfeatures), with the interface's ndo_fix_features (for IPoIB,
    ipoib_fixer(connected)): the new features and what to print and exit with."""
    if option in SHOW_OPTIONS:
        if args:
            return dev, EthtoolResult(stderr=f"ethtool: unexpected parameter '{args[0]}'\n",
                                      status=1)  # fmt: skip
        show = ethtool_show_features_json if json else ethtool_show_features
        return dev, EthtoolResult(show(dev, names, ifname))
    if option not in SET_OPTIONS:
        raise ValueError(f"not a features option: {option}")
    if json:
        return dev, EthtoolResult(stderr=BAD_ARGS, status=1)
    return ethtool_set_features(dev, args, names, ifname, fix)


# ------------------------------------------------------------------ reading the real tool


def parse_dump(text: str) -> tuple[list[str], Features]:
    """A real `ethtool -k` output read back: feature names (in dump order: legacy groups
    first, which gives the same -k layout as bit order) and the features it shows
    ([fixed]: not in hw_features; otherwise wanted = active unless [requested ...]).
    A legacy line followed by indented ones heads a group and names no feature; a lone
    legacy line names its pattern (exact for every such flag a 6.x kernel has)."""
    by_long = {d.long: d for d in OFF_FLAG_DEF}
    lines = text.splitlines()[1:]
    names: list[str] = []
    hw: set[str] = set()
    wanted: set[str] = set()
    active: set[str] = set()
    for i, raw in enumerate(lines):
        label, _, rest = raw.strip().partition(": ")
        state, _, suffix = rest.partition(" ")
        if not raw.startswith("\t") and label in by_long:
            if i + 1 < len(lines) and lines[i + 1].startswith("\t"):
                continue
            label = by_long[label].pattern
        names.append(label)
        on = state == "on"
        if on:
            active.add(label)
        if suffix != "[fixed]":
            hw.add(label)
            if suffix.startswith("[requested"):
                on = suffix == "[requested on]"
            if on:
                wanted.add(label)
    return names, Features(frozenset(hw), frozenset(wanted), frozenset(active))


def names_from_dump(text: str) -> list[str]:
    """The feature names a real `ethtool -k` shows (see parse_dump)."""
    return parse_dump(text)[0]


def render_show_features(real_output: str, dev: Features, ifname: str) -> str:
    """`ethtool -k IFNAME` for an IPoIB interface from the real tool's `ethtool -k` of
    any netdev on this kernel (its TUN): the same lines in the same layout, each with the
    model's on/off and [fixed]/[requested] marks, under "Features for IFNAME:"."""
    return ethtool_show_features(dev, names_from_dump(real_output), ifname)


def feature_bits(names: Sequence[str]) -> Mapping[str, int]:
    """Each feature name's bit (NETIF_F_*_BIT), for a caller that needs masks."""
    return {n: i for i, n in reversed(list(enumerate(names))) if n}
