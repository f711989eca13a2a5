"""`ip`, `ethtool` and `ifconfig` for IPoIB interfaces, as iproute2, ethtool and net-tools
behave with ib_ipoib.

The kernel here has no `ipoib` link kind and no ipoib ethtool_ops: the interfaces are TUNs.
These front ends answer for the host's IPoIB interfaces through the mirror's control file
(sysfs/control.py) and hand everything else, unchanged, to the real tool. Inside
`ipoibfs exec` they are bound over the real binaries; outside, `ipoibfs link` and
`ipoibfs ethtool` run them for a named host.

This module is started for every `ip` call in a script (`python -I -S`, see hostexec.py), so
it imports only what the interpreter has loaded already: JSON goes through `_json` and
iproute2's own writer (below), processes through `os.posix_spawn`, and a call that is not
ours replaces the front end with the real tool (`os.execv`).
"""

from __future__ import annotations

import errno
import os
import sys

from .fronthost import Host, dumps, loads, write_text

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, NoReturn

# ------------------------------------------------------------------ ip


def matches(arg: str, word: str) -> bool:
    """iproute2's matches(): arg is a non-empty prefix of word."""
    return bool(arg) and word.startswith(arg)


def _option(arg: str, *words: str) -> bool:
    return arg.startswith("-") and any(matches(arg.lstrip("-"), w) for w in words)


class IpError(Exception):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _rtnl(err: int) -> IpError:
    return IpError(f"RTNETLINK answers: {os.strerror(err)}", 2)


def _get_u16(value: str, what: str) -> int:
    """get_u16(…, 0): C-style base prefixes, 0..0xffff, else invarg."""
    try:
        octal = len(value) > 1 and value[0] == "0" and value.isascii() and value.isdigit()
        number = int(value, 8) if octal else int(value, 0)
    except ValueError:
        number = -1
    if not 0 <= number <= 0xFFFF:
        raise IpError(f'Error: argument "{value}" is wrong: {what}', 255)
    return number


def _ipoib_options(args: list[str]) -> dict[str, int]:
    """ipoib_parse_opt: pkey, mode, umcast."""
    out: dict[str, int] = {}
    i = 0
    while i < len(args):
        key = args[i]
        if key in ("pkey", "mode", "umcast") and i + 1 >= len(args):
            raise IpError('Command line is not complete. Try option "help"', 255)
        if key == "pkey":
            out["pkey"] = _get_u16(args[i + 1], "pkey is invalid")
        elif key == "mode":
            if args[i + 1] not in ("datagram", "connected"):
                raise IpError('Error: argument of "mode" must be "datagram"or "connected"', 1)
            out["mode"] = 1 if args[i + 1] == "connected" else 0
        elif key == "umcast":
            out["umcast"] = _get_u16(args[i + 1], "umcast is invalid")
        elif key == "help":
            raise IpError(IPOIB_HELP, 1)
        else:
            raise IpError(f'ipoib: unknown option "{key}"?\n{IPOIB_HELP}', 1)
        i += 2
    return out


IPOIB_HELP = (
    "Usage: ... ipoib [ pkey PKEY ]\n"
    "                 [ mode {datagram | connected} ]\n"
    "                 [ umcast {0|1} ]\n"
    "\n"
    "PKEY  := 0x8001-0xffff"
)


def _split_type(args: list[str]) -> tuple[list[str], list[str] | None]:
    """(the generic arguments, the arguments after `type ipoib`, or None without it)."""
    for i, arg in enumerate(args[:-1]):
        if arg == "type" and args[i + 1] == "ipoib":
            return args[:i], args[i + 2 :]
    return args, None


#: iplink_parse's generic words that take a value (the ipoib ones come after `type ipoib`).
VALUED = {"mtu", "txqueuelen", "qlen", "txqlen", "address", "broadcast", "brd", "alias",
          "group", "numtxqueues", "numrxqueues", "gso_max_size", "gso_max_segs", "arp",
          "multicast", "allmulticast", "promisc", "addrgenmode", "netns", "master"}  # fmt: skip


def _parse_generic(words: list[str]) -> tuple[dict[str, str], list[str]]:
    """(link, name/dev) and the other generic arguments, as iplink_parse reads them."""
    named: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word in ("link", "name", "dev") or word in VALUED:
            if i + 1 >= len(words):
                raise IpError('Command line is not complete. Try option "help"', 255)
            if word in VALUED:
                rest += words[i : i + 2]
            else:
                named["name" if word == "dev" else word] = words[i + 1]
            i += 2
            continue
        if word in ("up", "down"):
            rest.append(word)
        elif "name" in named:
            raise IpError(f'Error: either "dev" is duplicate, or "{word}" is a garbage.', 255)
        else:
            named["name"] = word  # `ip link add NAME …`
        i += 1
    return named, rest


def _link_add(host: Host, args: list[str]) -> int:
    generic, ipoib = _split_type(args)
    assert ipoib is not None
    options = _ipoib_options(ipoib)
    named, rest = _parse_generic(generic)
    name, parent = named.get("name"), named.get("link")
    if name is not None and not _valid_ifname(name):
        raise IpError(f'Error: argument "{name}" is wrong: "name" not a valid ifname', 255)
    if parent is not None and parent not in host.links and not host.exists(parent):
        raise IpError(f'Cannot find device "{parent}"', 1)
    before = set(host.links)
    err = host.request(op="newlink", link=parent, name=name, **options)
    if err:
        raise _rtnl(err)
    if not rest:
        return 0
    # One RTM_NEWLINK does it all or nothing: the generic part failing undoes the link.
    made = name or next(iter(set(host.links) - before))
    try:
        status = _link_set(host, ["dev", made, *rest])
        if status is None:
            status = host.run_real(["link", "set", "dev", made, *rest]).returncode
    except IpError:
        host.request(op="dellink", dev=made)
        raise
    if status:
        host.request(op="dellink", dev=made)
    return status


def _valid_ifname(name: str) -> bool:
    """iproute2's check_ifname."""
    return 0 < len(name.encode()) < 16 and not any(c in name for c in "/: \t\n")


def _link_set(host: Host, args: list[str]) -> int | None:
    """`ip link set DEV … [type ipoib …]` for an IPoIB link; None to hand the command to the
    real ip. The MTU goes through the driver (ipoib_change_mtu), as on a kernel host."""
    generic, ipoib = _split_type(args)
    try:
        named, rest = _parse_generic(generic)
    except IpError:
        if ipoib is None:
            return None  # not ours to judge
        raise
    dev = named.get("name")
    if ipoib is None and (dev not in host.links or "mtu" not in rest):
        return None
    if dev is None:
        raise IpError('Not enough information: "dev" argument is required.', 255)
    if dev not in host.links:
        if not host.exists(dev):
            raise IpError(f'Cannot find device "{dev}"', 1)
        raise _rtnl(errno.EOPNOTSUPP)  # another kind's device
    if ipoib is not None:
        options = _ipoib_options(ipoib)
        options.pop("pkey", None)  # ipoib_changelink ignores it
        # rtnl_newlink on an existing device: the kind's changelink first, then the rest.
        err = host.request(op="changelink", dev=dev, **options)
        if err:
            raise _rtnl(err)
    if "mtu" in rest:
        at = rest.index("mtu")
        _set_mtu(host, dev, rest[at + 1])
        del rest[at : at + 2]
    return host.run_real(["link", "set", "dev", dev, *rest]).returncode if rest else 0


def _caller_errno(e: OSError) -> int:
    """What the kernel answers a caller for what the mirror answered: a caller who may not
    open the file (not root) is one without CAP_NET_ADMIN to rtnetlink and SIOCSIFMTU."""
    return errno.EPERM if e.errno == errno.EACCES else e.errno or errno.EINVAL


def _set_mtu(host: Host, dev: str, value: str) -> None:
    """dev_set_mtu on an IPoIB link: the device maximum, then the driver's rules."""
    try:
        mtu = int(value, 0)
    except ValueError:
        raise IpError(f'Error: argument "{value}" is wrong: Invalid "mtu" value', 255) from None
    if mtu > 65520:  # max_mtu = IPOIB_CM_MTU
        raise IpError("Error: mtu greater than device maximum.", 2)
    if mtu < 68:
        raise IpError("Error: mtu less than device minimum.", 2)
    try:
        write_text(host.path("class", "net", dev, "mtu"), f"{mtu}\n")
    except OSError as e:
        raise _rtnl(_caller_errno(e)) from None


def _link_del(host: Host, args: list[str]) -> int | None:
    words = [a for a in args if a not in ("dev", "type", "ipoib")]
    if len(words) != 1 or words[0] not in host.links:
        return None
    err = host.request(op="dellink", dev=words[0])
    if err:
        raise _rtnl(err)
    return 0


def _detail(link: dict) -> str:
    return f"ipoib pkey {link['pkey']:#06x} mode {link['mode']} umcast {link['umcast']:04x} "


#: iplink_tuntap's print_opt words after `tun type tun`, and whether each takes a value.
TUN_OPTIONS = (("pi", True), ("vnet_hdr", True), ("multi_queue", False), ("persist", True),
               ("user", True), ("group", True))  # fmt: skip


def _tun_detail(line: str, link: dict) -> str:
    """The TUN's `tun type tun pi off …` as ipoib_print_opt prints the link: `ipoib pkey …`."""
    at = line.find("tun type tun")
    words = line[at:].split(" ")
    i = 3
    for option, valued in TUN_OPTIONS:
        if i < len(words) and words[i] == option:
            i += 2 if valued else 1
    return line[:at] + _detail(link) + " ".join(words[i:])


#: IFLA_MIN_MTU and IFLA_MAX_MTU of an IPoIB netdev: ipoib_ndo_init sets max_mtu to
#: IPOIB_CM_MTU and leaves min_mtu 0 (no ether_setup); a TUN has 68 and 65535.
IPOIB_MIN_MTU, IPOIB_MAX_MTU = 0, 65520


def _mtu_range(line: str) -> str:
    """`minmtu 68 maxmtu 65535 ` (ip -d) with the IPoIB netdev's range."""
    words = line.split(" ")
    for i, word in enumerate(words[:-1]):
        if word in ("minmtu", "maxmtu") and words[i + 1].isdigit():
            words[i + 1] = str(IPOIB_MIN_MTU if word == "minmtu" else IPOIB_MAX_MTU)
    return " ".join(words)


def _with_addresses(line: str, link: dict) -> str:
    """`link/infiniband ` with the 20-byte address and broadcast, as ll_addr_n2a prints them
    (a TUN has addr_len 0, so the real ip prints neither), and with -d the MTU range."""
    at = line.find("link/infiniband ") + len("link/infiniband ")
    if line[at : at + 1] not in ("", " ", "\n"):
        return _mtu_range(line)  # an address is there already
    return _mtu_range(f"{line[:at]}{link['address']} brd {link['broadcast']}{line[at:]}")


#: The flags of print_link_flags (ip/ipaddress.c) that come before IFF_BROADCAST.
BEFORE_BROADCAST = ("NO-CARRIER", "LOOPBACK")
IFF_UP = 0x1
IFF_BROADCAST = 0x2
IFF_POINTOPOINT = 0x10
IFF_NOARP = 0x80


def _ipoib_flags(names: list[str], parent_down: bool) -> list[str]:
    """The TUN's flags as the IPoIB netdev has them (wire.netdev_flags): no POINTOPOINT or
    NOARP, BROADCAST set; M-DOWN last for a child whose parent is down (print_link_flags)."""
    kept = [n for n in names if n not in ("POINTOPOINT", "NOARP", "M-DOWN")]
    if "BROADCAST" not in kept:
        at = 0
        while at < len(kept) and kept[at] in BEFORE_BROADCAST:
            at += 1
        kept.insert(at, "BROADCAST")
    if parent_down:
        kept.append("M-DOWN")
    return kept


def _ioctl_ifreq(request: int, name: str) -> bytes | None:
    """One SIOCGIF* ioctl on `name` in this process's network namespace (None if it fails)."""
    import _socket
    import fcntl

    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        return fcntl.ioctl(sock.fileno(), request, name.encode()[:15].ljust(40, b"\0"))
    except OSError:
        return None
    finally:
        sock.close()


SIOCGIFFLAGS = 0x8913
SIOCGIFBRDADDR = 0x8919


def _parent_down(host: Host, link: dict) -> bool:
    """print_name_and_link's m_flag: the child's parent (IFLA_LINK) is not IFF_UP."""
    parent = link.get("parent")
    if not parent:
        return False
    if host.in_netns:
        ifreq = _ioctl_ifreq(SIOCGIFFLAGS, parent)
        if ifreq is not None:
            return not ifreq[16] & IFF_UP
    info = host.links.get(parent)
    return info is not None and not info.get("up", True)


def _full_name(link: dict) -> str:
    """print_name_and_link: NAME@PARENT for a child (its IFLA_LINK), NAME for a parent."""
    return f"{link['ifname']}@{link['parent']}" if link["parent"] else link["ifname"]


def _flags_text(host: Host, link: dict, text: str) -> str:
    """`<FLAGS> …` with the IPoIB flags."""
    close = text.find(">")
    if not text.startswith("<") or close < 0:
        return text
    names = text[1:close].split(",") if close > 1 else []
    return "<" + ",".join(_ipoib_flags(names, _parent_down(host, link))) + text[close:]


def _header(line: str) -> tuple[int, int] | None:
    """Where the name is in a link's first line, `%d: %s: ` (print_linkinfo)."""
    colon = line.find(": ")
    if colon <= 0 or not line[:colon].isdigit():
        return None
    end = line.find(": ", colon + 2)
    return (colon + 2, end) if end > colon + 2 else None


#: `ip -s link` columns and the driver's counters behind them.
STATS_TEXT = {
    "RX:": ("rx_bytes", "rx_packets", "rx_errors", "rx_dropped", "rx_missed_errors", "multicast"),
    "TX:": ("tx_bytes", "tx_packets", "tx_errors", "tx_dropped", "tx_carrier_errors",
            "collisions"),
}  # fmt: skip
STATS_JSON = {
    "rx": dict(zip(("bytes", "packets", "errors", "dropped", "over_errors", "multicast"),
                   ("rx_bytes", "rx_packets", "rx_errors", "rx_dropped", "rx_over_errors",
                    "multicast"), strict=True)),
    "tx": dict(zip(("bytes", "packets", "errors", "dropped", "carrier_errors", "collisions"),
                   ("tx_bytes", "tx_packets", "tx_errors", "tx_dropped", "tx_carrier_errors",
                    "collisions"), strict=True)),
}  # fmt: skip


def _rewrite_stats(lines: list[str], link: dict) -> list[str]:
    """The `RX:`/`TX:` blocks of `ip -s link` with the driver's counters: columns as wide
    as their widest entry, shared by both blocks, as iproute2 sizes them. With -o the lines
    are the pieces of one line (no newline of their own)."""
    blocks = []
    for i, line in enumerate(lines[:-1]):
        words = line.split()
        if words and words[0] in STATS_TEXT and len(words) == 7:
            values = [link["statistics"][name] for name in STATS_TEXT[words[0]]]
            blocks.append((i, words[0], words[1:], values, line[len(line.rstrip(" \n")) :]))
    if len(blocks) != 2:
        return lines
    widths = [max(len(b[2][c]) + (5 if c == 0 else 0) for b in blocks) for c in range(6)]
    for _, _, _, values, _ in blocks:
        widths = [max(w, len(str(v))) for w, v in zip(widths, values, strict=True)]
    out = list(lines)
    for i, label, names, values, tail in blocks:
        header = label + names[0].rjust(widths[0] - 3)
        header += "".join(" " + n.rjust(w) for n, w in zip(names[1:], widths[1:], strict=True))
        out[i] = "    " + header + tail
        numbers = " ".join(str(v).rjust(w) for v, w in zip(values, widths, strict=True))
        out[i + 1] = "    " + numbers + (" \n" if out[i + 1].endswith("\n") else " ")
    return out


def _rewrite_link(host: Host, lines: list[str], stats: bool = True) -> list[str]:
    """One link as print_linkinfo prints it (its lines, or with -o the pieces of its line),
    made the IPoIB link's: NAME@PARENT, the flags, the addresses, the ipoib detail line and
    the driver's counters."""
    span = _header(lines[0])
    link = host.links.get(lines[0][span[0] : span[1]]) if span else None
    if span is None or link is None:
        return lines
    head = lines[0]
    out = [head[: span[0]] + _full_name(link) + ": " + _flags_text(host, link, head[span[1] + 2 :])]
    for line in lines[1:]:
        stripped = line.lstrip()
        if stripped.startswith("link/infiniband "):
            line = _with_addresses(line, link)
        elif stripped.startswith("tun type tun"):
            line = _tun_detail(line, link)
        out.append(line)
    return _rewrite_stats(out, link) if stats else out


def _rewrite_brief(host: Host, line: str) -> str:
    """A line of `ip -br link` or `ip -br addr`: `%-16s ` NAME@PARENT, `%-14s ` state, and for
    links the address and the flags (print_linkinfo_brief)."""
    name = line.split(" ", 1)[0]
    link = host.links.get(name)
    if not link:
        return line
    rest = line[len(name) :].lstrip(" ")
    if "<" in rest:  # `ip -br link`: the address column comes before the flags
        state, flags = rest.split("<", 1)
        rest = f"{state.rstrip():<14} {link['address']} " + _flags_text(host, link, "<" + flags)
    return f"{_full_name(link):<16} {rest}"


def _rewrite_text(host: Host, out: str, brief: bool, oneline: bool = False,
                  stats: bool = True) -> str:  # fmt: skip
    """`ip link`/`ip addr` text with the IPoIB links as iproute2 prints ib_ipoib's."""
    lines = out.splitlines(keepends=True)
    if brief:
        return "".join(_rewrite_brief(host, line) for line in lines)
    if oneline:  # print_nl() writes `\` between a link's pieces
        return "".join("\\".join(_rewrite_link(host, line.split("\\"), stats)) for line in lines)
    result: list[str] = []
    block: list[str] = []
    for line in lines:
        if block and _header(line) is not None:
            result += _rewrite_link(host, block, stats)
            block = []
        block.append(line)
    if block:
        result += _rewrite_link(host, block, stats)
    return "".join(result)


def _json_link(host: Host, entry: dict, link: dict, brief: bool) -> dict:
    """One link object of `ip -j link`/`ip -j addr`, keys where print_linkinfo puts them."""
    out: dict[str, Any] = {}
    for key, value in entry.items():
        if key == "ifname" and link["parent"]:
            out["link"] = link["parent"]  # print_name_and_link: before ifname
        elif key == "flags" and isinstance(value, list):
            value = _ipoib_flags(value, _parent_down(host, link))
            if brief and "address" not in entry:
                out["address"] = link["address"]
        elif key in ("min_mtu", "max_mtu"):
            value = IPOIB_MIN_MTU if key == "min_mtu" else IPOIB_MAX_MTU
        elif key == "linkinfo":
            value = {"info_kind": "ipoib", "info_data": {
                "key": f"{link['pkey']:#06x}", "mode": link["mode"],
                "umcast": f"{link['umcast']:04x}"}}  # fmt: skip
        out[key] = value
        if key == "link_type" and "address" not in entry:
            out["address"], out["broadcast"] = link["address"], link["broadcast"]
    for direction, keys in STATS_JSON.items():
        counters = out.get("stats64", {}).get(direction)
        if counters is not None:
            counters.update({k: link["statistics"][v] for k, v in keys.items()})
    return out


def _rewrite_json(host: Host, out: str, pretty: bool, brief: bool = False) -> str:
    try:
        data = loads(out)
    except ValueError:
        return out
    if not isinstance(data, list):
        return out
    for i, entry in enumerate(data):
        link = host.links.get(str(entry.get("ifname"))) if isinstance(entry, dict) else None
        if link is not None:
            data[i] = _json_link(host, entry, link, brief)
    return dumps(data, pretty)


def _show(host: Host, argv: list[str], flags: set[str]) -> int:
    """`ip link show`/`ip addr show`: the real ip's answer with the IPoIB links rewritten. The
    control file is read while ip runs."""
    status, out = host.output(argv, meanwhile=host.shown_links)
    if status == 0 and host.links:
        if "json" in flags:
            out = _rewrite_json(host, out, "pretty" in flags, "brief" in flags)
        else:
            out = _rewrite_text(host, out, "brief" in flags, "oneline" in flags,
                                stats="human" not in flags)  # fmt: skip
    sys.stdout.write(out)
    return status


# ------------------------------------------------------------------ ip maddr


def _mc_map(group: bytes, broadcast: bytes) -> bytes:
    """ip_ib_mc_map / ipv6_ib_mc_map (include/net/ip.h, if_inet6.h): the 20-byte hardware
    address of an IP group on an IPoIB device, its scope and P_Key from the broadcast."""
    head = bytes((0, 0xFF, 0xFF, 0xFF, 0xFF, 0x10 | (broadcast[5] & 0xF)))
    if len(group) == 4:
        low = bytes((group[0] & 0xF,)) + group[1:]  # the low 28 bits of the group
        return head + b"\x40\x1b" + broadcast[8:10] + bytes(6) + low
    return head + b"\x60\x1b" + broadcast[8:10] + group[6:]


def _ip_groups() -> dict[str, tuple[list[bytes], list[bytes]]]:
    """The IPv4 and IPv6 groups of each device, as /proc/net/igmp and igmp6 list them (the
    newest first: ip_mc_inc_group and __ipv6_dev_mc_inc put a group at the list's head)."""
    groups: dict[str, tuple[list[bytes], list[bytes]]] = {}
    with open("/proc/net/igmp") as f:
        dev = ""
        for line in list(f)[1:]:
            if not line.startswith("\t"):
                dev = line.split()[1]
                groups.setdefault(dev, ([], []))
            elif dev:
                groups[dev][0].append(int(line.split()[0], 16).to_bytes(4, "little"))
    with open("/proc/net/igmp6") as f:
        for line in f:
            fields = line.split()
            groups.setdefault(fields[1], ([], []))[1].append(bytes.fromhex(fields[2]))
    return groups


def _dev_mc(link: dict, ipv4: list[bytes], ipv6: list[bytes]) -> list[tuple[bytes, int]]:
    """The interface's dev_mc list: the mapped address of every group the IP stack loaded
    (ip_mc_filter_add, igmp6_group_added, which skips groups below link-local scope), with
    its reference count, in the order they were added. That order is the kernel's history;
    this one is an interface's that came up with its addresses set: the IPv6 groups joined
    before it came up, then the IPv4 ones (ip_mc_up), then those joined from the link-local
    address on (addrconf makes it only with carrier)."""
    v6 = [g for g in reversed(ipv6) if g[1] & 0xF >= 2]
    hw = bytes.fromhex(link["address"].replace(":", ""))
    solicited = b"\xff\x02" + bytes(9) + b"\x01\xff" + hw[-3:]
    at = v6.index(solicited) if solicited in v6 else len(v6)
    broadcast = bytes.fromhex(link["broadcast"].replace(":", ""))
    entries: dict[bytes, int] = {}
    for group in v6[:at] + list(reversed(ipv4)) + v6[at:]:
        address = _mc_map(group, broadcast)
        entries[address] = entries.get(address, 0) + 1
    return list(entries.items())


def _maddr_entries(host: Host) -> dict[str, list[tuple[bytes, int]]]:
    groups = _ip_groups()
    return {name: _dev_mc(link, *groups.get(name, ([], []))) for name, link in host.links.items()}


def _maddr_line(address: bytes, users: int) -> str:
    """print_maddr's `link` entry: ll_addr_n2a, then ` users N` unless N is 1."""
    return "\tlink  " + ":".join(f"{b:02x}" for b in address) + (
        f" users {users}" if users != 1 else "") + "\n"  # fmt: skip


def _rewrite_maddr_text(host: Host, out: str) -> str:
    """`ip maddr` with an IPoIB device's `link` entries (the TUN's dev_mc list holds one
    zero-length address) replaced by the 20-byte ones of its dev_mc list."""
    entries = _maddr_entries(host)
    result: list[str] = []
    done: set[str] = set()
    dev = ""
    for line in out.splitlines(keepends=True):
        head, sl, entry = line.partition("\\")  # -o: `N:\tNAME\` before every entry
        if not sl:
            head, entry = "", line
            if not line.startswith("\t"):
                dev = line.rstrip("\n").partition("\t")[2]
        else:
            dev = head.partition("\t")[2]
        if dev not in entries or not entry.startswith("\tlink  "):
            result.append(line)
        elif dev not in done:
            done.add(dev)
            result += [head + sl + _maddr_line(a, n) for a, n in entries[dev]]
    return "".join(result)


def _rewrite_maddr_json(host: Host, out: str, pretty: bool) -> str:
    try:
        data = loads(out)
    except ValueError:
        return out
    entries = _maddr_entries(host)
    done: set[str] = set()
    for device in data if isinstance(data, list) else []:
        name = device.get("ifname") if isinstance(device, dict) else None
        if name not in entries or not isinstance(device.get("maddr"), list):
            continue
        maddr: list[dict] = []
        for item in device["maddr"]:
            if not isinstance(item, dict) or "link" not in item:
                maddr.append(item)
            elif name not in done:
                done.add(name)
                for address, users in entries[name]:
                    mapped: dict[str, object] = {"link": ":".join(f"{b:02x}" for b in address)}
                    if users != 1:
                        mapped["users"] = users
                    maddr.append(mapped)
        device["maddr"] = maddr
    return dumps(data, pretty)


def _ip_maddr(host: Host, argv: list[str], flags: set[str], args: list[str]) -> int | None:
    """`ip maddr [show [dev] NAME]` (do_multiaddr); add and del are the real ip's."""
    if args and not any(matches(args[0], w) for w in ("list", "show", "lst")):
        return None
    if not host.in_netns:
        return None  # the groups are read from this namespace's /proc/net
    status, out = host.output(argv, meanwhile=host.shown_links)
    if status == 0 and host.links:
        if "json" in flags:
            out = _rewrite_maddr_json(host, out, "pretty" in flags)
        else:
            out = _rewrite_maddr_text(host, out)
    sys.stdout.write(out)
    return status


# ------------------------------------------------------------------ ip's command line

#: ip's commands (ip/ip.c cmds[]), in the order a prefix is matched against them.
IP_COMMANDS = ("address", "addrlabel", "maddress", "route", "rule", "neighbor", "neighbour",
               "ntable", "ntbl", "link", "l2tp", "fou", "ila", "macsec", "tunnel", "tunl",
               "tuntap", "tap", "token", "tcpmetrics", "tcp_metrics", "monitor", "xfrm",
               "mroute", "mrule", "netns", "netconf", "vrf", "sr", "nexthop", "mptcp", "ioam",
               "help", "stats")  # fmt: skip

#: ip's options (ip/ip.c main) in the order they are matched: (option, what it sets, whether
#: it takes a value); "real" marks one that makes the call the real ip's (another namespace,
#: a batch, help or the version).
IP_OPTIONS = (("-loops", "", True), ("-family", "family", True), ("-human", "human", False),
              ("-human-readable", "human", False), ("-iec", "human", False),
              ("-stats", "stats", False), ("-statistics", "stats", False),
              ("-details", "details", False), ("-resolve", "", False),
              ("-oneline", "oneline", False), ("-timestamp", "", False), ("-tshort", "", False),
              ("-Version", "real", False), ("-force", "", False), ("-batch", "real", True),
              ("-brief", "brief", False), ("-json", "json", False),
              ("-pretty", "pretty", False), ("-rcvbuf", "", True))  # fmt: skip
IP_LATE_OPTIONS = (("-help", "real"), ("-netns", "real"), ("-Numeric", ""), ("-all", "real"))


def _ip_options(argv: list[str]) -> tuple[set[str], int] | None:
    """What ip's options ask for, and where the command starts; None if the call is not
    ours (an unknown option gets the real ip's own message)."""
    flags: set[str] = set()
    i = 0
    while i < len(argv):
        opt = argv[i]
        if opt == "--":
            return flags, i + 1
        if opt[:1] != "-":
            break
        if opt[1:2] == "-":
            opt = opt[1:]
        if opt in ("-4", "-6", "-0", "-M", "-B"):
            i += 1
            continue
        found = next(((what, valued) for word, what, valued in IP_OPTIONS
                      if word.startswith(opt)), None)  # fmt: skip
        if found is None and "-color".startswith(opt.partition("=")[0]) and opt != "-":
            found = ("", False)  # matches_color
        if found is None:
            found = next(((what, False) for word, what in IP_LATE_OPTIONS
                          if word.startswith(opt)), None)  # fmt: skip
        if found is None and opt == "-echo":
            found = ("real", False)
        if found is None or found[0] == "real":
            return None
        if found[0]:
            flags.add(found[0])
        i += 2 if found[1] else 1
    return flags, i


def _ip_command(word: str) -> str | None:
    return next((c for c in IP_COMMANDS if matches(word, c)), None)


def _ip_link(host: Host, argv: list[str], flags: set[str], args: list[str]) -> int | None:
    """`ip link` (do_iplink) for IPoIB links; None to hand the call to the real ip."""
    command, args = (args[0], args[1:]) if args else ("show", [])
    if matches(command, "add") and _split_type(args)[1] is not None:
        return _link_add(host, args)
    if matches(command, "set") or matches(command, "change"):
        return _link_set(host, args)
    if matches(command, "delete"):
        return _link_del(host, args)
    if any(matches(command, w) for w in ("show", "list", "lst")):
        return _show(host, argv, flags)
    return None


def _ip_addr(host: Host, argv: list[str], flags: set[str], args: list[str]) -> int | None:
    """`ip address [show …]` (do_ipaddr); its changes are the real ip's."""
    if args and (args[0] == "chg" or any(matches(args[0], w) for w in
                                         ("add", "change", "replace", "delete"))):  # fmt: skip
        return None
    if not args or any(matches(args[0], w) for w in ("list", "show", "lst")):
        return _show(host, argv, flags)
    return None


def ip_main(host: Host, argv: list[str]) -> int:
    """`ip ARGS`: link, address and maddress for IPoIB interfaces; anything else is the real
    ip's, which then replaces this process."""
    parsed = _ip_options(argv)
    if parsed is None:
        host.exec_real(argv)
    flags, i = parsed
    command = _ip_command(argv[i]) if i < len(argv) else None
    args = argv[i + 1 :]
    try:
        status = None
        if command == "link":
            status = _ip_link(host, argv, flags, args)
        elif command == "address":
            status = _ip_addr(host, argv, flags, args)
        elif command == "maddress":
            status = _ip_maddr(host, argv, flags, args)
        elif command in ("neighbor", "neighbour"):
            status = _ip_neigh(host, argv, flags, args)
    except IpError as e:
        print(e, file=sys.stderr)
        return e.status
    except PermissionError:  # the control file is root's: the kernel refuses such a caller
        print(_rtnl(errno.EPERM), file=sys.stderr)
        return 2
    if status is None:
        host.exec_real(argv)
    return status


# ------------------------------------------------------------------ ip neigh

#: NUD states (include/uapi/linux/neighbour.h) in print_neigh_state's order.
NUD_NAMES = (("INCOMPLETE", 0x01), ("REACHABLE", 0x02), ("STALE", 0x04), ("DELAY", 0x08),
             ("PROBE", 0x10), ("FAILED", 0x20), ("NOARP", 0x40), ("PERMANENT", 0x80))  # fmt: skip
NUD_PERMANENT, NUD_NOARP = 0x80, 0x40


def _nud_state(arg: str) -> int | None:
    """nud_state_a2n; None for a bad state."""
    for word, state in (("permanent", 0x80), ("reachable", 0x02)):
        if matches(arg, word):
            return state
    exact = {"noarp": 0x40, "none": 0, "stale": 0x04, "incomplete": 0x01, "delay": 0x08,
             "probe": 0x10}  # fmt: skip
    if arg in exact:
        return exact[arg]
    if matches(arg, "failed"):
        return 0x20
    try:
        state = int(arg, 0)
    except ValueError:
        return None
    return state if 0 <= state < 0x100 and not state & (state - 1) else None


def _family(argv: list[str]) -> int:
    """preferred_family from ip's options: 4, 6, or 0 for any."""
    family = 0
    for i, opt in enumerate(argv):
        if opt[:1] != "-" or opt == "--":
            break
        if opt == "-4":
            family = 4
        elif opt == "-6":
            family = 6
        elif opt in ("-f", "-family", "--family") and i + 1 < len(argv):
            family = {"inet": 4, "inet6": 6}.get(argv[i + 1], family)
    return family


def _prefix(arg: str, family: int) -> tuple[int, bytes, int] | None:
    """get_prefix: (family, network bytes, prefix length); "default"/"all"/"any" match all."""
    if arg in ("default", "all", "any"):
        return family, b"", 0
    addr, _, plen = arg.partition("/")
    fam = 6 if ":" in addr else 4
    if family and family != fam:
        return None
    try:
        import _socket

        raw = _socket.inet_pton(_socket.AF_INET6 if fam == 6 else _socket.AF_INET, addr)
        bits = int(plen) if plen else len(raw) * 8
    except (OSError, ValueError):
        return None
    if not 0 <= bits <= len(raw) * 8:
        return None
    return fam, raw, bits


def _in_prefix(dst: str, prefix: tuple[int, bytes, int] | None) -> bool:
    if prefix is None or not prefix[2]:
        return True
    import _socket

    fam, net, bits = prefix
    raw = _socket.inet_pton(_socket.AF_INET6 if ":" in dst else _socket.AF_INET, dst)
    if len(raw) != len(net):
        return False
    mask = (1 << len(raw) * 8) - (1 << (len(raw) * 8 - bits))
    return int.from_bytes(raw, "big") & mask == int.from_bytes(net, "big") & mask


def _neigh_json(entry: dict, with_dev: bool, stats: bool, brief: bool) -> dict:
    """print_neigh's (or print_neigh_brief's) JSON object."""
    out: dict[str, object] = {"dst": entry["dst"]}
    if with_dev:
        out["dev"] = entry["dev"]
    if entry["lladdr"] is not None:
        out["lladdr"] = entry["lladdr"]
    if brief:
        return out
    if stats:
        out.update(used=int(entry["used"]), confirmed=int(entry["confirmed"]),
                   updated=int(entry["updated"]), probes=entry["probes"])  # fmt: skip
    if entry["state"]:
        out["state"] = [name for name, bit in NUD_NAMES if entry["state"] & bit]
    return out


def _neigh_text(entry: dict, with_dev: bool, stats: bool, brief: bool) -> str:
    """print_neigh's (or print_neigh_brief's) line."""
    if brief:
        line = f"{entry['dst']:<39} " + (f"{entry['dev']:<16} " if with_dev else "")
        return line + (entry["lladdr"] or "") + "\n"
    line = f"{entry['dst']} " + (f"dev {entry['dev']} " if with_dev else "")
    if entry["lladdr"] is not None:
        line += f"lladdr {entry['lladdr']} "
    if stats:
        line += (f" used {int(entry['used'])}/{int(entry['confirmed'])}/"
                 f"{int(entry['updated'])}probes {entry['probes']} ")  # fmt: skip
    line += "".join(f"{name} " for name, bit in NUD_NAMES if entry["state"] & bit)
    return line + "\n"


def _neigh_filter(host: Host, argv: list[str], args: list[str], flush: bool,
                  ) -> tuple[str | None, Callable[[dict], bool]] | int | None:  # fmt: skip
    """do_show_or_flush's filter: (the `dev` given, a test of one entry), an exit status,
    or None for a call that is the real ip's (proxy entries, masters, VRFs)."""
    family = _family(argv)
    state = ~(NUD_PERMANENT | NUD_NOARP) if flush else 0xFF & ~NUD_NOARP
    state_given, dev, prefix, protocol = False, None, None, None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("dev", "nud", "master", "vrf", "protocol", "to") or matches(arg, "protocol"):
            if i + 1 >= len(args):
                print('Command line is not complete. Try option "help"', file=sys.stderr)
                return 255
            i += 1
        value = args[i]
        if arg == "dev":
            if dev is not None:
                print(f'Error: either "dev" is duplicate, or "{value}" is a garbage.',
                      file=sys.stderr)  # fmt: skip
                return 255
            dev = value
        elif arg in ("master", "vrf", "nomaster", "proxy"):
            return None
        elif arg == "unused":
            pass  # no entry of ours is held (ndm_refcnt 0)
        elif arg == "nud":
            bit = _nud_state(value)
            if not state_given:
                state_given, state = True, 0
            if bit is None:
                if value != "all":
                    print(f'Error: argument "{value}" is wrong: nud state is bad',
                          file=sys.stderr)  # fmt: skip
                    return 255
                bit = ~0 & ~NUD_NOARP if flush else ~0
            state |= bit or 0x100
        elif matches(arg, "protocol"):
            protocol = 0 if value == "all" else value
        else:
            if matches(value, "help"):
                return None
            prefix = _prefix(value, family)
            if prefix is None:
                print(f'Error: argument "{value}" is wrong: to value is invalid\n',
                      file=sys.stderr)  # fmt: skip
                return 255
            family = family or prefix[0]
        i += 1
    if dev is not None and not host.is_ipoib(dev):
        return None

    def wanted(entry: dict) -> bool:
        nud = entry["state"]
        if family and entry["family"] != family:
            return False
        if dev is not None and entry["dev"] != dev:
            return False
        if not state & nud and (nud or not state & 0x100):
            return False
        if protocol not in (None, 0):
            return False  # every entry of ours has protocol 0 (none given)
        return _in_prefix(entry["dst"], prefix)

    return dev, wanted


def _neigh_show(host: Host, argv: list[str], flags: set[str], args: list[str],
                flush: bool) -> int | None:  # fmt: skip
    if flush and not args:
        print("Flush requires arguments.", file=sys.stderr)
        return 255
    parsed = _neigh_filter(host, argv, args, flush)
    if not isinstance(parsed, tuple):
        return parsed
    dev, wanted = parsed
    stats, brief = "stats" in flags, "brief" in flags
    try:
        table = host.read_control("neigh")
    except PermissionError:  # the control file is root's: such a caller gets the real ip's
        if flush:
            raise
        return None
    # neigh_dump_info: the ARP table, then the ND table.
    ours = sorted((e for e in table if wanted(e)), key=lambda e: e["family"])
    if flush:
        by_dev: dict[str, list[str]] = {}
        for entry in ours:
            by_dev.setdefault(entry["dev"], []).append(entry["dst"])
        for name, dsts in by_dev.items():
            err = host.write_control("neigh", {"op": "flush", "dev": name, "dst": dsts})
            if err:
                print(f"Failed to send flush request: {os.strerror(err)}", file=sys.stderr)
                return 1
        if dev is None:
            status = host.run_real(argv).returncode  # the other interfaces' entries
            if status:
                return status
        if stats:
            if ours:
                print(f"\n*** Round 1, deleting {len(ours)} entries ***")
                print("*** Flush is complete after 1 round ***")
            elif dev is not None:
                print("Nothing to flush.")
        return 0
    real: str = ""
    if dev is None:
        status, real = host.output(argv)
        if status:
            sys.stdout.write(real)
            return status
    with_dev = dev is None
    if "json" in flags:
        theirs = [e for e in (loads(real) if real.strip() else [])
                  if not host.is_ipoib(e.get("dev", ""))]  # fmt: skip
        mine = [(e["family"], 1, _neigh_json(e, with_dev, stats, brief)) for e in ours]
        tagged = [(6 if ":" in e.get("dst", "") else 4, 0, e) for e in theirs] + mine
        entries = [e for _, _, e in sorted(tagged, key=lambda t: t[:2])]
        sys.stdout.write(dumps(entries, "pretty" in flags))
        return 0
    lines = [line for line in real.splitlines(keepends=True)
             if not host.is_ipoib(_dev_of(line, brief))]  # fmt: skip
    texted = [(6 if ":" in line.split(" ", 1)[0] else 4, 0, line) for line in lines]
    texted += [(e["family"], 1, _neigh_text(e, with_dev, stats, brief)) for e in ours]
    out = [line for _, _, line in sorted(texted, key=lambda t: t[:2])]  # ARP, then ND
    sys.stdout.write("".join(out))
    return 0


def _dev_of(line: str, brief: bool) -> str:
    """The device a line of the real `ip neigh` names."""
    words = line.split()
    if brief:
        return words[1] if len(words) > 1 else ""
    return words[words.index("dev") + 1] if "dev" in words[:-1] else ""


def _neigh_modify(host: Host, command: str, args: list[str]) -> int | None:
    """ipneigh_modify and ipneigh_get on an IPoIB interface: `del` and `get` from the
    daemon's table; adding entries by hand is not emulated."""
    dev = dst = None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("dev", "lladdr", "nud", "proxy", "protocol") and i + 1 < len(args):
            if arg == "dev":
                dev = args[i + 1]
            elif arg == "proxy":
                return None
            i += 2
            continue
        if arg not in ("router", "use", "managed", "extern_learn", "to"):
            dst = arg
        i += 1
    if dev is None or not host.is_ipoib(dev):
        return None
    if dst is None:
        print("Device and destination are required arguments." if command != "get" else
              "Device and address are required arguments.", file=sys.stderr)  # fmt: skip
        return 255
    if command in ("add", "change", "replace"):
        print(f"ip neigh {command}: entries set by hand on IPoIB interfaces are not emulated",
              file=sys.stderr)  # fmt: skip
        return 2
    prefix = _prefix(dst, 0)
    if prefix is None or not prefix[1]:
        print(f'Error: any valid address is expected rather than "{dst}".', file=sys.stderr)
        return 1
    exact = (prefix[0], prefix[1], len(prefix[1]) * 8)
    entry = next((e for e in host.read_control("neigh")
                  if e["dev"] == dev and _in_prefix(e["dst"], exact)), None)  # fmt: skip
    if entry is None:
        print("RTNETLINK answers: No such file or directory", file=sys.stderr)
        return 2 if command == "delete" else 254
    if command == "get":
        sys.stdout.write(_neigh_text(entry, True, False, False))
        return 0
    err = host.write_control("neigh", {"op": "delete", "dev": dev, "dst": entry["dst"]})
    if err:
        print(f"RTNETLINK answers: {os.strerror(err)}", file=sys.stderr)
        return 2
    return 0


def _ip_neigh(host: Host, argv: list[str], flags: set[str], args: list[str]) -> int | None:
    """`ip neigh` (do_ipneigh) with the daemon's table for IPoIB interfaces; None to hand
    the call to the real ip."""
    if not args:
        return _neigh_show(host, argv, flags, [], False)
    word = args[0]
    if any(matches(word, w) for w in ("show", "lst", "list")):
        return _neigh_show(host, argv, flags, args[1:], False)
    if matches(word, "flush"):
        return _neigh_show(host, argv, flags, args[1:], True)
    for command in ("add", "change", "replace", "delete", "get"):
        if matches(word, command) or (command == "change" and word == "chg"):
            return _neigh_modify(host, command, args[1:])
    return None


# ------------------------------------------------------------------ ethtool

COALESCE_KEYS = {"rx-usecs": "rx_usecs", "rx-frames": "rx_frames"}


def _ethtool_settings(link: dict) -> str:
    """ipoib_get_link_ksettings: without carrier it returns before filling autoneg, port and
    PHY address, which then read as zero (off, Twisted Pair, 0)."""
    up = bool(link["speed"])
    speed = f"{link['speed']}Mb/s" if up else "Unknown!"
    duplex = "Full" if up else "Unknown! (255)"
    return (
        f"Settings for {link['ifname']}:\n"
        "\tSupported ports: [  ]\n"
        "\tSupported link modes:   Not reported\n"
        "\tSupported pause frame use: No\n"
        "\tSupports auto-negotiation: No\n"
        "\tSupported FEC modes: Not reported\n"
        "\tAdvertised link modes:  Not reported\n"
        "\tAdvertised pause frame use: No\n"
        "\tAdvertised auto-negotiation: No\n"
        "\tAdvertised FEC modes: Not reported\n"
        f"\tSpeed: {speed}\n"
        f"\tDuplex: {duplex}\n"
        f"\tAuto-negotiation: {'on' if up else 'off'}\n"
        f"\tPort: {'Other' if up else 'Twisted Pair'}\n"
        f"\tPHYAD: {255 if up else 0}\n"
        "\tTransceiver: internal\n"
        f"\tLink detected: {'yes' if link['carrier'] else 'no'}\n"
    )


def _ethtool_coalesce(link: dict) -> str:
    c = link["coalesce"]
    return (
        f"Coalesce parameters for {link['ifname']}:\n"
        "Adaptive RX: n/a  TX: n/a\n"
        "stats-block-usecs: n/a\n"
        "sample-interval: n/a\n"
        "pkt-rate-low: n/a\n"
        "pkt-rate-high: n/a\n\n"
        f"rx-usecs: {c['rx_usecs']}\n"
        f"rx-frames: {c['rx_frames']}\n"
        "rx-usecs-irq: n/a\nrx-frames-irq: n/a\n\n"
        "tx-usecs: n/a\ntx-frames: n/a\ntx-usecs-irq: n/a\ntx-frames-irq: n/a\n\n"
        "rx-usecs-low: n/a\nrx-frame-low: n/a\ntx-usecs-low: n/a\ntx-frame-low: n/a\n\n"
        "rx-usecs-high: n/a\nrx-frame-high: n/a\ntx-usecs-high: n/a\ntx-frame-high: n/a\n\n"
        "CQE mode RX: n/a  TX: n/a\n"
    )


def ethtool_main(host: Host, argv: list[str]) -> int:
    """ethtool for IPoIB interfaces, as ipoib_ethtool_ops answers; the rest is the real one's."""
    words = [a for a in argv if a != "--"]
    if not words:
        host.exec_real(argv)
    json = words[0] == "--json" and len(words) > 1 and words[1] in FEATURE_OPTIONS
    if json:
        words = words[1:]
    if words[0] in FEATURE_OPTIONS:
        words = argv[argv.index(words[0]) :]  # -K's own `--` ends its NAME on|off list
        words = words[:1] + [a for a in words[1:2] if a != "--"] + words[2:]
    if words[0].startswith("-"):
        option, dev, args = words[0], (words[1] if len(words) > 1 else ""), words[2:]
    else:
        option, dev, args = "", words[0], words[1:]
    if not host.is_ipoib(dev):
        host.exec_real(argv)
    link = host.shown_links().get(dev)
    if link is None:
        host.exec_real(argv)  # also for a caller that may not read the control file
    if option == "" and not args:
        sys.stdout.write(_ethtool_settings(link))
        return 0
    if option in ("-i", "--driver"):
        sys.stdout.write(
            # The ethtool core puts the kernel release in an empty version.
            f"driver: {link['driver']}\nversion: {os.uname().release}\n"
            f"firmware-version: {link['fw_version']}\n"
            "expansion-rom-version: \n"
            f"bus-info: {link['bus_info']}\nsupports-statistics: yes\nsupports-test: no\n"
            "supports-eeprom-access: no\nsupports-register-dump: no\n"
            "supports-priv-flags: no\n"
        )
        return 0
    if option in ("-S", "--statistics"):
        stats = "".join(f"     {k}: {v}\n" for k, v in link["stats"].items())
        sys.stdout.write("NIC statistics:\n" + stats)
        return 0
    if option in ("-c", "--show-coalesce"):
        sys.stdout.write(_ethtool_coalesce(link))
        return 0
    if option in ("-C", "--coalesce"):
        return _ethtool_set_coalesce(host, link, args)
    if option in FEATURE_OPTIONS:
        return _ethtool_features(host, link, option, args, json)
    # ipoib_ethtool_ops has nothing else: the kernel refuses the request.
    print(f"netlink error: {os.strerror(errno.EOPNOTSUPP)}", file=sys.stderr)
    return 1


#: -k and -K under all their names (ethtool.c's args[]).
FEATURE_OPTIONS = ("-k", "--show-features", "--show-offload", "-K", "--features", "--offload")


def _features_model() -> Any:
    """driver/features.py (pure), without the driver package, which needs trio: the front
    ends run without site-packages (`python -I -S`)."""
    name = "ipoibfs.driver.features"
    module = sys.modules.get(name)
    if module is None:
        import importlib.util

        path = os.path.join(os.path.dirname(__file__), "driver", "features.py")
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module


def _ethtool_features(host: Host, link: dict, option: str, args: list[str], json: bool) -> int:
    """`ethtool [--json] -k|-K IFNAME ...` as ethtool 6.1 runs them over netlink: -k shows
    the interface's features (ETHTOOL_MSG_FEATURES_GET) in ethtool's layout; -K parses its
    arguments as ethtool does and sends the bits to the driver (ETHTOOL_MSG_FEATURES_SET,
    the control file's "features" request), which applies them with the kernel's rules
    under RTNL. ethtool's answer is computed from the state read, with the same rules, as
    ethtool computes it from the kernel's reply (driver/features.py)."""
    F = _features_model()
    info = link["features"]
    names = info["names"]
    dev = F.Features(*(frozenset(info[k]) for k in ("hw", "wanted", "active", "nochange")))
    fix = F.ipoib_fixer(link["mode"] == "connected")
    ifname = link["ifname"]
    new, result = F.ethtool_features(dev, option, args, names, ifname, fix, json=json)
    if option in F.SET_OPTIONS and not json and result.status != F.EXIT_NETLINK:
        parsed = F.parse_sfeatures_args(args, names)
        if not isinstance(parsed, F.EthtoolResult):  # ethtool sends the request
            bits = [[name, on] for name, on in parsed[0]]
            err = host.request(op="features", dev=ifname, bits=bits)
            if err:
                print(f"netlink error: {os.strerror(err)}", file=sys.stderr)
                return F.EXIT_NETLINK
    sys.stdout.write(result.stdout)
    sys.stdout.flush()
    sys.stderr.write(result.stderr)
    return result.status


def _ethtool_set_coalesce(host: Host, link: dict, args: list[str]) -> int:
    request: dict[str, object] = {"op": "coalesce", "dev": link["ifname"]}
    if len(args) % 2 or not args:
        print("ethtool: bad command line argument(s)", file=sys.stderr)
        return 1
    for key, value in zip(args[::2], args[1::2], strict=True):
        if key not in COALESCE_KEYS:
            # The ethtool core refuses what supported_coalesce_params does not list.
            print(f"netlink error: {os.strerror(errno.EOPNOTSUPP)}", file=sys.stderr)
            return 1
        try:
            request[COALESCE_KEYS[key]] = int(value, 0)
        except ValueError:
            print(f'ethtool: bad command line argument(s)\nbad value "{value}"', file=sys.stderr)
            return 1
    err = host.request(**request)
    if err:
        print(f"netlink error: {os.strerror(err)}", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------ ifconfig (net-tools)

#: ife_print_long's flag words and ife_print_short's letters, in their order (lib/interface.c).
IFCONFIG_FLAGS = ((0x1, "UP"), (0x2, "BROADCAST"), (0x4, "DEBUG"), (0x8, "LOOPBACK"),
                  (0x10, "POINTOPOINT"), (0x20, "NOTRAILERS"), (0x40, "RUNNING"),
                  (0x80, "NOARP"), (0x100, "PROMISC"), (0x200, "ALLMULTI"), (0x800, "SLAVE"),
                  (0x400, "MASTER"), (0x1000, "MULTICAST"), (0x8000, "DYNAMIC"))  # fmt: skip
IFCONFIG_LETTERS = ((0x200, "A"), (0x2, "B"), (0x4, "D"), (0x8, "L"), (0x1000, "M"),
                    (0x8000, "d"), (0x100, "P"), (0x20, "N"), (0x80, "O"), (0x10, "P"),
                    (0x800, "s"), (0x400, "m"), (0x40, "R"), (0x1, "U"))  # fmt: skip
#: lib/ib.c pr_ib writes this to stderr every time it prints an address.
PR_IB_WARNING = ("Infiniband hardware address can be incorrect! Please read BUGS section in "
                 "ifconfig(8).\n")  # fmt: skip


def _ipoib_iff(flags: int) -> int:
    """SIOCGIFFLAGS of the IPoIB netdev from the TUN's (wire.netdev_flags)."""
    return flags & ~(IFF_POINTOPOINT | IFF_NOARP) | IFF_BROADCAST


def _ifconfig_flags(flags: int) -> str:
    """`flags=4163<UP,BROADCAST,RUNNING,MULTICAST>`"""
    names = ",".join(name for bit, name in IFCONFIG_FLAGS if flags & bit)
    return f"flags={flags}<{names}>" if flags else f"flags={flags}>"


def _size(count: int) -> str:
    """ife_print_long's `(12.3 KiB)`: tenths, truncated, in the largest unit exceeded."""
    tenths, unit = count * 10, "B"
    for limit, name in ((1 << 50, "PiB"), (1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"),
                        (1 << 10, "KiB")):  # fmt: skip
        if count > 1 << 60:
            tenths, unit = count // 115292150460684697, "EiB"
            break
        if count > limit:
            tenths, unit = tenths // limit, name
            break
    return f"{tenths // 10}.{tenths % 10} {unit}"


def _ifconfig_stats(link: dict) -> list[str]:
    """The RX/TX lines from the driver's counters, combined as /proc/net/dev combines them
    (dev_seq_printf_stats) and printed as ife_print_long prints them."""
    s = link["statistics"]
    frame = s["rx_length_errors"] + s["rx_over_errors"] + s["rx_crc_errors"] + (
        s["rx_frame_errors"])  # fmt: skip
    carrier = s["tx_carrier_errors"] + s["tx_aborted_errors"] + s["tx_window_errors"] + (
        s["tx_heartbeat_errors"])  # fmt: skip
    return [
        f"        RX packets {s['rx_packets']}  bytes {s['rx_bytes']} ({_size(s['rx_bytes'])})\n",
        f"        RX errors {s['rx_errors']}  dropped {s['rx_dropped'] + s['rx_missed_errors']}"
        f"  overruns {s['rx_fifo_errors']}  frame {frame}\n",
        f"        TX packets {s['tx_packets']}  bytes {s['tx_bytes']} ({_size(s['tx_bytes'])})\n",
        f"        TX errors {s['tx_errors']}  dropped {s['tx_dropped']} overruns "
        f"{s['tx_fifo_errors']}  carrier {carrier}  collisions {s['collisions']}\n",
    ]


def _pr_ib(link: dict) -> str:
    """lib/ib.c pr_ib on what if_fetch kept of SIOCGIFHWADDR: it copies 8 bytes of sa_data
    into a zeroed buffer and pr_ib prints INFINIBAND_ALEN (20) of it, upper case."""
    kept = link["address"].split(":")[:8] + ["00"] * 12
    return ":".join(kept).upper()


def _ifconfig_block(lines: list[str], link: dict) -> list[str]:
    """One interface of `ifconfig` (ife_print_long) as net-tools prints an IPoIB one."""
    name = link["ifname"]
    out = []
    for line in lines:
        stripped = line.strip()
        if line.startswith(f"{name}: flags="):
            rest = line[len(name) + 8 :]
            number = rest[: len(rest) - len(rest.lstrip("-0123456789"))]
            tail = rest[rest.find(">") + 1 :] if ">" in rest else rest[len(number) :]
            line = f"{name}: {_ifconfig_flags(_ipoib_iff(int(number)))}{tail}"
        elif stripped.startswith("inet ") and "  destination " in line:
            ifreq = _ioctl_ifreq(SIOCGIFBRDADDR, name)
            brd = ".".join(str(b) for b in ifreq[20:24]) if ifreq else "0.0.0.0"
            line = line[: line.index("  destination ")] + f"  broadcast {brd}\n"
        elif stripped.startswith(("unspec ", "infiniband ")) and stripped.endswith(")"):
            qlen = line[line.index("  txqueuelen") :] if "  txqueuelen" in line else "  "
            qlen = qlen[: qlen.rindex("  (")] if "  (" in qlen else ""
            sys.stderr.write(PR_IB_WARNING)
            line = f"        infiniband {_pr_ib(link)}{qlen}  (InfiniBand)\n"
        elif stripped.startswith(("RX packets ", "RX errors ", "TX packets ", "TX errors ")):
            continue  # the driver's counters go after the hardware line
        out.append(line)
        if stripped.endswith("(InfiniBand)") or line.endswith("(InfiniBand)\n"):
            out += _ifconfig_stats(link)
    return out


def _ifconfig_short(host: Host, line: str) -> str:
    """A line of `ifconfig -s` (ife_print_short) for an IPoIB interface."""
    words = line.split()
    link = host.links.get(words[0]) if words else None
    if link is None or len(words) < 3 or not words[1].isdigit():
        return line
    ifreq = _ioctl_ifreq(SIOCGIFFLAGS, link["ifname"])
    flags = _ipoib_iff(int.from_bytes(ifreq[16:18], "little")) if ifreq else 0
    letters = "".join(c for bit, c in IFCONFIG_LETTERS if flags & bit) or "[NO FLAGS]"
    s = link["statistics"]
    return (f"{words[0][:15]:<15} {int(words[1]):5d} {s['rx_packets']:8d} {s['rx_errors']:6d} "
            f"{s['rx_dropped'] + s['rx_missed_errors']:6d} {s['rx_fifo_errors']:<6d} "
            f"{s['tx_packets']:8d} {s['tx_errors']:6d} {s['tx_dropped']:6d} "
            f"{s['tx_fifo_errors']:6d} {letters}\n")  # fmt: skip


def _atoi(text: str) -> int:
    """C's atoi: blanks, a sign, the digits up to the first other character."""
    text = text.lstrip(" \t\n\v\f\r")
    sign = -1 if text[:1] == "-" else 1
    text = text[1:] if text[:1] in "+-" and text else text
    digits = text[: len(text) - len(text.lstrip("0123456789"))] if text else ""
    return sign * int(digits) if digits else 0


def _ifconfig_mtu(host: Host, dev: str, value: str) -> int:
    """SIOCSIFMTU on an IPoIB netdev: dev_set_mtu's range, then the driver (0 or an errno)."""
    mtu = _atoi(value)
    if not IPOIB_MIN_MTU <= mtu <= IPOIB_MAX_MTU:  # dev_validate_mtu; the driver does the rest
        return errno.EINVAL
    try:
        write_text(host.path("class", "net", dev, "mtu"), f"{mtu}\n")
    except OSError as e:
        return _caller_errno(e)
    return 0


def ifconfig_main(host: Host, argv: list[str]) -> int:
    """net-tools ifconfig for IPoIB interfaces: what it shows, and `mtu N` through the driver."""
    i = 0
    while i < len(argv) and argv[i][:1] == "-":
        if argv[i] not in ("-a", "-s", "-v"):
            host.exec_real(argv)  # -V, --help, or an option it refuses itself
        i += 1
    words = argv[i:]
    if len(words) > 1:
        dev, settings = words[0], words[1:]
        if "mtu" not in settings[:-1] or not host.is_ipoib(dev):
            host.exec_real(argv)
        at = settings.index("mtu")
        err = _ifconfig_mtu(host, dev, settings[at + 1])
        if err:
            print(f"SIOCSIFMTU: {os.strerror(err)}", file=sys.stderr)
        rest = settings[:at] + settings[at + 2 :]
        status = host.run_real([*argv[:i], dev, *rest]).returncode if rest else 0
        return status or (1 if err else 0)
    if words and not host.is_ipoib(words[0]):
        host.exec_real(argv)
    status, out = host.output(argv, meanwhile=host.shown_links)
    if not host.links:
        sys.stdout.write(out)
        return status
    lines = out.splitlines(keepends=True)
    if "-s" in argv[:i]:
        sys.stdout.write("".join(_ifconfig_short(host, line) for line in lines))
        return status
    result: list[str] = []
    block: list[str] = []
    for line in [*lines, ""]:
        if line.strip() and block and not block[-1].strip():
            name = block[0].split(": ", 1)[0]
            result += _ifconfig_block(block, host.links[name]) if name in host.links else block
            block = []
        if line:
            block.append(line)
    if block:
        name = block[0].split(": ", 1)[0]
        result += _ifconfig_block(block, host.links[name]) if name in host.links else block
    sys.stdout.write("".join(result))
    return status


# ------------------------------------------------------------------ entry points

TOOLS = {"ip": ip_main, "ethtool": ethtool_main, "ifconfig": ifconfig_main}
TOOLS["arping"] = lambda host, argv: __import__("ipoibfs.arping").arping.arping_main(host, argv)


def shim(tool: str, real: str, mirror: str) -> NoReturn:
    """What the front ends `ipoibfs exec` binds over the real binaries run (hostexec.py):
    `python -I -S` with this module's directory on the path, in the host's namespace."""
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(errors="surrogateescape")  # type: ignore[union-attr]
    # A script's argv[0] is its path: the launcher (frontend.c) says what the caller's was.
    argv0 = os.environ.pop("IPOIBFS_ARGV0", sys.argv[0])
    code = _run(tool, Host(mirror, [real], in_netns=True, argv0=argv0), sys.argv[1:])
    os._exit(code)  # flushed already; no interpreter teardown


#: What a shell reports for a tool killed by SIGPIPE, as ip is when its reader goes away.
SIGPIPE_STATUS = 128 + 13


def _run(tool: str, host: Host, argv: list[str]) -> int:
    """The front end of `tool`, its output flushed: its exit status."""
    try:
        code = TOOLS[tool](host, argv)
        sys.stdout.flush()
    except BrokenPipeError:
        code = SIGPIPE_STATUS
    except (OSError, ValueError, KeyError) as e:
        print(f"{tool}: the emulated host does not answer: {e!r}", file=sys.stderr)
        code = 1
    try:
        sys.stderr.flush()
    except OSError:
        pass
    return code
