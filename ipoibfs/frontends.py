"""`ip` and `ethtool` for IPoIB interfaces, as iproute2 and ethtool behave with ib_ipoib.

The kernel here has no `ipoib` link kind and no ipoib ethtool_ops: the interfaces are TUNs.
These front ends answer for the host's IPoIB interfaces through the mirror's control file
(sysfs/control.py) and hand everything else, unchanged, to the real tool. Inside
`ipoibfs exec` they are bound over the real binaries; outside, `ipoibfs link` and
`ipoibfs ethtool` run them for a named host.

This module is started for every `ip` call in a script, so it imports nothing heavy.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path


class Host:
    """The mirror of one emulated host, and how to run the real tools in its namespace."""

    def __init__(self, mirror: Path, real: list[str]) -> None:
        self.mirror = mirror
        self.real = real  # the real binary, possibly behind nsenter
        self._links: dict[str, dict] | None = None

    @property
    def links(self) -> dict[str, dict]:
        if self._links is None:
            data = json.loads((self.mirror / ".ipoibfs" / "links").read_text())
            self._links = {link["ifname"]: link for link in data}
        return self._links

    def request(self, **request: object) -> int:
        """Run one request in the driver: 0 or the errno it failed with."""
        try:
            fd = os.open(self.mirror / ".ipoibfs" / "links", os.O_WRONLY)
            try:
                os.write(fd, json.dumps(request).encode())
            finally:
                os.close(fd)
        except OSError as e:
            return e.errno or errno.EIO
        self._links = None
        return 0

    def run_real(self, args: list[str], capture: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run([*self.real, *args], capture_output=capture, text=True)

    def exists(self, name: str) -> bool:
        """Whether a netdev of that name exists in the host's namespace (ours or not)."""
        return self.run_real(["link", "show", "dev", name], capture=True).returncode == 0


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
        number = int(value, 0) if not re.fullmatch(r"0\d+", value) else int(value, 8)
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
        (host.mirror / "class" / "net" / dev / "mtu").write_text(f"{mtu}\n")
    except OSError as e:
        raise _rtnl(e.errno or errno.EINVAL) from None


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


TUN_DETAIL = re.compile(r"tun type tun(?: pi \w+)?(?: vnet_hdr \w+)?(?: multi_queue)?"
                        r"(?: persist \w+)?(?: user \S+)?(?: group \S+)? ?")  # fmt: skip
HEADER = re.compile(r"^(\d+): ([^:@\s]+)(@\S+)?: ")
LINK_TYPE = re.compile(r"link/infiniband (?= |$)")


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
    as their widest entry, shared by both blocks, as iproute2 sizes them."""
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
        out[i + 1] = "    " + numbers + " \n"
    return out


def _rewrite_text(host: Host, out: str, brief: bool) -> str:
    lines: list[str] = []
    current = None
    block_start = 0
    for line in out.splitlines(keepends=True):
        if brief:
            name = line.split(" ", 1)[0]
            link = host.links.get(name)
            if link:
                full = f"{name}@{link['parent']}" if link["parent"] else name
                rest = line[len(name) :].lstrip(" ")
                if "<" in rest:  # `ip -br link`: the address column comes before the flags
                    state, flags = rest.split("<", 1)
                    rest = f"{state.rstrip():<14} {link['address']} <{flags}"
                line = f"{full:<16} {rest}"
            lines.append(line)
            continue
        m = HEADER.match(line)
        if m:
            if current is not None:
                lines[block_start:] = _rewrite_stats(lines[block_start:], current)
            block_start = len(lines)
            current = host.links.get(m.group(2))
            if current and current["parent"]:
                line = f"{m.group(1)}: {m.group(2)}@{current['parent']}: " + line[m.end() :]
        elif current is not None and line.lstrip().startswith("link/infiniband "):
            # A TUN has no address: show the IPoIB one, as ll_addr_n2a prints it.
            addresses = f"link/infiniband {current['address']} brd {current['broadcast']}"
            line = LINK_TYPE.sub(addresses, line, count=1)
        elif current is not None and line.lstrip().startswith("tun type tun"):
            line = TUN_DETAIL.sub(_detail(current), line, count=1)
        lines.append(line)
    if current is not None:
        lines[block_start:] = _rewrite_stats(lines[block_start:], current)
    return "".join(lines)


def _rewrite_json(host: Host, out: str, pretty: bool) -> str:
    try:
        data = json.loads(out)
    except ValueError:
        return out
    for entry in data if isinstance(data, list) else []:
        link = host.links.get(entry.get("ifname"))
        if link is None:
            continue
        if link["parent"]:
            entry["link"] = link["parent"]
        if "address" not in entry:
            entry["address"], entry["broadcast"] = link["address"], link["broadcast"]
        for direction, keys in STATS_JSON.items():
            counters = entry.get("stats64", {}).get(direction)
            if counters is not None:
                counters.update({k: link["statistics"][v] for k, v in keys.items()})
        if "linkinfo" in entry:
            entry["linkinfo"] = {"info_kind": "ipoib", "info_data": {
                "key": f"{link['pkey']:#06x}", "mode": link["mode"],
                "umcast": f"{link['umcast']:04x}"}}  # fmt: skip
    return json.dumps(data, indent=4 if pretty else None,
                      separators=None if pretty else (",", ":")) + "\n"  # fmt: skip


def _link_show(host: Host, argv: list[str], flags: set[str]) -> int:
    result = host.run_real(argv, capture=True)
    sys.stderr.write(result.stderr)
    out = result.stdout
    if result.returncode == 0 and host.links:
        if "json" in flags:
            out = _rewrite_json(host, out, "pretty" in flags)
        else:
            out = _rewrite_text(host, out, "brief" in flags)
    sys.stdout.write(out)
    return result.returncode


def ip_main(host: Host, argv: list[str]) -> int:
    """`ip ARGS`: the link commands for IPoIB interfaces; anything else is the real ip's."""
    flags: set[str] = set()
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-":
        arg = argv[i]
        if _option(arg, "details"):
            flags.add("details")
        elif _option(arg, "json"):
            flags.add("json")
        elif _option(arg, "pretty"):
            flags.add("pretty")
        elif arg in ("-br", "-brief"):
            flags.add("brief")
        elif _option(arg, "netns", "batch", "force", "Version", "help"):
            return host.run_real(argv).returncode  # another namespace, a batch: not ours
        elif arg in ("-f", "-family", "-l", "-loops", "-rc", "-rcvbuf", "-c", "-color"):
            i += 1 if arg in ("-f", "-family", "-l", "-loops", "-rc", "-rcvbuf") else 0
        i += 1
    rest = argv[i:]
    if len(rest) < 1 or not matches(rest[0], "link"):
        return host.run_real(argv).returncode
    command, args = (rest[1], rest[2:]) if len(rest) > 1 else ("show", [])
    try:
        if matches(command, "add") and _split_type(args)[1] is not None:
            return _link_add(host, args)
        if matches(command, "set") or matches(command, "change"):
            status = _link_set(host, args)
            if status is not None:
                return status
        elif matches(command, "delete"):
            status = _link_del(host, args)
            if status is not None:
                return status
        elif any(matches(command, w) for w in ("show", "list", "lst")):
            return _link_show(host, argv, flags)
    except IpError as e:
        print(e, file=sys.stderr)
        return e.status
    return host.run_real(argv).returncode


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
        return host.run_real(argv).returncode
    if words[0].startswith("-"):
        option, dev, args = words[0], (words[1] if len(words) > 1 else ""), words[2:]
    else:
        option, dev, args = "", words[0], words[1:]
    link = host.links.get(dev)
    if link is None:
        return host.run_real(argv).returncode
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
    if option in ("-k", "--show-features", "--show-offload"):
        print(f"Features for {dev}: not emulated yet. The emulated HCA offers IPv4 checksum, "
              "RX checksum and IPv4 TSO in datagram mode; connected mode clears checksum and "
              "TSO, as ipoib_fix_features does. Nothing else is supported.")  # fmt: skip
        return 0
    if option in ("-K", "--features", "--offload"):
        print(f"Cannot change features of {dev}: not emulated yet (they follow the mode)",
              file=sys.stderr)  # fmt: skip
        return 1
    # ipoib_ethtool_ops has nothing else: the kernel refuses the request.
    print(f"netlink error: {os.strerror(errno.EOPNOTSUPP)}", file=sys.stderr)
    return 1


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


def main() -> int:
    """Entry point of the shims `ipoibfs exec` binds over /usr/bin/ip and ethtool."""
    tool, argv = sys.argv[1], sys.argv[2:]
    host = Host(Path(os.environ["IPOIBFS_MIRROR"]), [os.environ["IPOIBFS_REAL"]])
    try:
        return (ip_main if tool == "ip" else ethtool_main)(host, argv)
    except (OSError, ValueError, KeyError) as e:
        print(f"{tool}: the emulated host does not answer: {e!r}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
