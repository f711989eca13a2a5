"""`arping` for IPoIB interfaces, as iputils' arping behaves on a kernel IPoIB host.

iputils arping (Debian 12: 20221126) opens a packet socket on the interface, which on a TUN
has no link-layer address ("Interface ... is not ARPable"). This front end does what arping
does through the mirror instead: it sends RFC 4391 ARP on the fabric by writing to
`.ipoibfs/arp` (the daemon puts the interface's own hardware address in it, as the packet
socket's bound address would) and reads the ARP packets the interface received from the
same file, numbered, with the time they arrived. Options, output and exit codes are
arping.c's; any other interface, and a command line arping would refuse, go to the real
arping unchanged.

Started for every `arping` under `ipoibfs exec`, like frontends.py it imports only what the
interpreter has loaded already (and the C modules _socket and _signal).
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # signal.py would import enum
import os
import sys
import time

from .fronthost import Host

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

OPTIONS = "bfDUAqc:w:i:s:I:"  # what we answer; -h, -? and -V are the real arping's
ARPOP_REQUEST, ARPOP_REPLY = 1, 2
INT_MAX = 2**31 - 1
#: How often the received packets are read: soon after a send, then less often.
POLL_FAST, POLL_SLOW, FAST_FOR = 0.002, 0.02, 0.1
RTF_UP = 0x1


class Stop(Exception):
    """SIGINT, SIGQUIT or SIGTERM: arping's loop ends and it reports."""


class Arping:
    """struct run_state."""

    def __init__(self) -> None:
        self.device: str | None = None
        self.source: str | None = None
        self.target = ""
        self.gsrc = bytes(4)
        self.gdst = bytes(4)
        self.count = -1
        self.timeout = 0
        self.interval = 1
        self.sent = self.brd_sent = self.received = self.brd_recv = self.req_recv = 0
        self.last = 0.0  # CLOCK_MONOTONIC of the last probe sent, 0 before any
        self.me = self.he = b""
        self.advert = self.broadcast_only = self.dad = self.quiet = False
        self.quit_on_reply = self.unicasting = self.unsolicited = False


def _number(text: str, low: int) -> int | None:
    """strtol_or_err's accepted input (base 10, the whole string, in range), else None."""
    body = text.lstrip(" \t\n\v\f\r")
    digits = body[1:] if body[:1] in "+-" else body
    if not digits.isascii() or not digits.isdigit():
        return None
    value = int(body)
    return value if low <= value <= INT_MAX else None


def parse(argv: list[str]) -> Arping | None:
    """getopt(argc, argv, "h?bfDUAqc:w:i:s:I:V") with glibc's permutation; None for a
    command line arping itself must answer (help, version, a mistake)."""
    ctl = Arping()
    operands: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            operands += argv[i:]
            break
        if arg[:1] != "-" or arg == "-":
            operands.append(arg)
            continue
        j = 1
        while j < len(arg):
            c = arg[j]
            j += 1
            spec = OPTIONS.find(c)
            if spec < 0 or c == ":":
                return None
            value = ""
            if OPTIONS[spec + 1 : spec + 2] == ":":
                if j < len(arg):
                    value = arg[j:]
                elif i < len(argv):
                    value = argv[i]
                    i += 1
                else:
                    return None
                j = len(arg)
            if not _option(ctl, c, value):
                return None
    if len(operands) != 1:
        return None
    ctl.target = operands[0]
    return ctl


def _option(ctl: Arping, c: str, value: str) -> bool:
    if c == "b":
        ctl.broadcast_only = True
    elif c == "D":
        ctl.dad = ctl.quit_on_reply = True
    elif c == "U":
        ctl.unsolicited = True
    elif c == "A":
        ctl.advert = ctl.unsolicited = True
    elif c == "q":
        ctl.quiet = True
    elif c == "f":
        ctl.quit_on_reply = True
    elif c == "I":
        ctl.device = value
    elif c == "s":
        ctl.source = value
    else:
        number = _number(value, 1 if c == "c" else 0)
        if number is None:
            return False
        if c == "c":
            ctl.count = number
        elif c == "w":
            ctl.timeout = number
        else:
            ctl.interval = number
    return True


def _error(status: int, message: str) -> int:
    """glibc error(): `arping: MESSAGE` on stderr; the status to exit with."""
    sys.stdout.flush()
    print(f"arping: {message}", file=sys.stderr)
    return status


def _inet_aton(text: str) -> bytes | None:
    import _socket

    try:
        return _socket.inet_aton(text)
    except OSError:
        return None


def _ntoa(addr: bytes) -> str:
    return ".".join(str(b) for b in addr)


def _hex(raw: bytes) -> str:
    """print_hex: upper-case bytes joined by colons."""
    return ":".join(f"{b:02X}" for b in raw)


def _route_device(dst: bytes) -> str | None:
    """guess_device: the interface of the most specific route to dst (/proc/net/route)."""
    want = int.from_bytes(dst, "little")
    best: tuple[int, int, str] | None = None
    try:
        with open("/proc/net/route") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) < 8:
            continue
        dev, dest, flags, metric, mask = fields[0], fields[1], fields[3], fields[6], fields[7]
        try:
            d, m, fl, me = int(dest, 16), int(mask, 16), int(flags, 16), int(metric)
        except ValueError:
            continue
        if not fl & RTF_UP or want & m != d:
            continue
        key = (bin(m).count("1"), -me, dev)
        if best is None or key[:2] > best[:2]:
            best = key
    return best[2] if best is not None else None


def _source(ctl: Arping) -> int | None:
    """main()'s probe socket: the source address the kernel would choose, or an error."""
    import _socket

    probe = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        if ctl.device:
            try:
                probe.setsockopt(_socket.SOL_SOCKET, _socket.SO_BINDTODEVICE,
                                 ctl.device.encode() + b"\0")  # fmt: skip
            except OSError as e:
                _error(0, f"WARNING: interface is ignored: {os.strerror(e.errno or 0)}")
        if ctl.source or any(ctl.gsrc):
            try:
                probe.bind((_ntoa(ctl.gsrc), 0))
            except OSError as e:
                return _error(2, f"bind: {os.strerror(e.errno or 0)}")
        elif not ctl.dad:
            if not ctl.unsolicited:
                try:
                    probe.setsockopt(_socket.SOL_SOCKET, _socket.SO_DONTROUTE, 1)
                except OSError as e:
                    _error(0, f"WARNING: setsockopt(SO_DONTROUTE): {os.strerror(e.errno or 0)}")
                try:
                    probe.connect((_ntoa(ctl.gdst), 1025))
                except OSError as e:
                    return _error(2, f"connect: {os.strerror(e.errno or 0)}")
                ctl.gsrc = _socket.inet_aton(probe.getsockname()[0])
            else:
                ctl.gsrc = ctl.gdst
    finally:
        probe.close()
    return None


class Link:
    """The interface as arping's packet socket sees it, through the mirror."""

    def __init__(self, host: Host, name: str) -> None:
        self.host, self.name = host, name
        self.seen = 0  # the last received packet already looked at

    def received(self) -> list[dict[str, Any]]:
        entries = self.host.read_control("arp")
        new = [e for e in entries if e["seq"] > self.seen]
        if entries:
            self.seen = max(self.seen, entries[-1]["seq"])
        return [e for e in new if e["dev"] == self.name]

    def send(self, request: dict[str, object]) -> int:
        """0, or the errno sendto would have failed with."""
        return self.host.write_control("arp", request)


def send_pack(ctl: Arping, link: Link) -> None:
    now = time.monotonic()
    err = link.send({
        "op": "send", "dev": ctl.device, "arpop": ARPOP_REPLY if ctl.advert else ARPOP_REQUEST,
        "spa": _ntoa(ctl.gsrc), "tpa": _ntoa(ctl.gdst),
        "tha": (ctl.me if ctl.advert else ctl.he).hex(), "dest": ctl.he.hex(),
    })  # fmt: skip
    if not err:
        ctl.last = now
        ctl.sent += 1
        if not ctl.unicasting:
            ctl.brd_sent += 1


def _elapsed(ts: float, last: float) -> str:
    """recv_pack's time since the last probe, with arping.c's integer arithmetic."""
    ts_ns, last_ns = round(ts * 1e9), round(last * 1e9)
    nsec = ts_ns % 10**9 - last_ns % 10**9 + 500
    usecs = (ts_ns // 10**9 - last_ns // 10**9) * 1000000 + int(nsec / 1000)
    msecs = int((usecs + 500) / 1000)
    usecs -= msecs * 1000 - 500
    return f" {msecs}.{usecs:03d}ms"


FINAL = 2


def recv_pack(ctl: Arping, entry: dict[str, Any]) -> int:
    """recv_pack: 0 to ignore, 1 taken, FINAL to stop."""
    op, host = entry["op"], entry["pkttype"] == "host"
    if op not in (ARPOP_REQUEST, ARPOP_REPLY):
        return 0
    sha, tha = bytes.fromhex(entry["sha"]), bytes.fromhex(entry["tha"])
    src_ip, dst_ip = _inet_aton(entry["spa"]) or bytes(4), _inet_aton(entry["tpa"]) or bytes(4)
    if src_ip != ctl.gdst:
        return 0
    if not ctl.dad:
        if ctl.gsrc != dst_ip or tha != ctl.me:
            return 0
    elif sha == ctl.me or (any(ctl.gsrc) and ctl.gsrc != dst_ip):
        return 0
    if not ctl.quiet:
        text = f"{'Unicast' if host else 'Broadcast'} "
        text += f"{'reply' if op == ARPOP_REPLY else 'request'} from "
        text += f"{_ntoa(src_ip)} [{_hex(sha)}] "
        printed = False
        if dst_ip != ctl.gsrc:
            text += f"for {_ntoa(dst_ip)} "
            printed = True
        if tha != ctl.me:
            text += ("" if printed else "for ") + f"[{_hex(tha)}]"
        text += _elapsed(entry["time"], ctl.last) + "\n" if ctl.last else " UNSOLICITED?\n"
        sys.stdout.write(text)
        sys.stdout.flush()
    ctl.received += 1
    if ctl.timeout and ctl.received == ctl.count:
        return FINAL
    if not host:
        ctl.brd_recv += 1
    if op == ARPOP_REQUEST:
        ctl.req_recv += 1
    if ctl.quit_on_reply or (ctl.count == 0 and ctl.received == ctl.sent):
        return FINAL
    if not ctl.broadcast_only:
        ctl.he = sha
        ctl.unicasting = True
    return 1


def finish(ctl: Arping) -> int:
    """finish() and event_loop()'s exit status (iputils 20221126)."""
    if not ctl.quiet:
        text = f"Sent {ctl.sent} probes ({ctl.brd_sent} broadcast(s))\n"
        text += f"Received {ctl.received} response(s)"
        if ctl.brd_recv or ctl.req_recv:
            text += " ("
            if ctl.req_recv:
                text += f"{ctl.req_recv} request(s)"
            if ctl.brd_recv:
                text += f"{', ' if ctl.req_recv else ''}{ctl.brd_recv} broadcast(s)"
            text += ")"
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    if ctl.dad:
        rc = int(bool(ctl.received))
    elif ctl.unsolicited:
        rc = 0
    else:
        rc = int(not ctl.received)
    if ctl.unsolicited:
        pass
    elif ctl.dad and ctl.quit_on_reply:
        rc |= int(not (ctl.brd_sent != ctl.received))
    elif ctl.timeout and not ctl.count > 0:
        rc |= int(not ctl.received > 0)
    else:
        rc |= int(ctl.sent != ctl.received)
    return rc


def event_loop(ctl: Arping, link: Link) -> int:
    """event_loop: a probe now and every interval, replies as they come, until the count,
    the timeout, a final reply or a signal."""
    start = time.monotonic()
    next_tick = start + ctl.interval if ctl.interval else float("inf")
    deadline = start + ctl.timeout if ctl.timeout else float("inf")
    total_expires = 1
    try:
        link.received()  # what came before us is not ours
        send_pack(ctl, link)
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            if now >= next_tick:
                expired = int((now - next_tick) // ctl.interval) + 1
                total_expires += expired
                next_tick += expired * ctl.interval
                if 0 < ctl.count < total_expires:
                    break
                send_pack(ctl, link)
            if any(recv_pack(ctl, entry) == FINAL for entry in link.received()):
                break
            pause = POLL_FAST if now - ctl.last < FAST_FOR else POLL_SLOW
            time.sleep(max(0.0, min(pause, next_tick - now, deadline - now)))
    except (Stop, KeyboardInterrupt):
        pass
    # arping reads its signals from a signalfd, blocked: one more does not cut the summary.
    for sig in (_signal.SIGINT, _signal.SIGQUIT, _signal.SIGTERM):
        _signal.signal(sig, _signal.SIG_IGN)
    return finish(ctl)


def _on_signal(signum: int, frame: object) -> None:
    raise Stop


def arping_main(host: Host, argv: list[str]) -> int:
    """`arping ARGS` on an IPoIB interface; anything else is the real arping's."""
    ctl = parse(argv)
    if ctl is None:
        host.exec_real(argv)
    gdst = _inet_aton(ctl.target)
    if gdst is None:
        import _socket

        try:
            infos = _socket.getaddrinfo(ctl.target, None, _socket.AF_INET, _socket.SOCK_RAW)
        except _socket.gaierror as e:
            return _error(2, f"{ctl.target}: {e.args[1]}")
        gdst = _socket.inet_aton(str(infos[0][4][0]))
    ctl.gdst = gdst
    if ctl.device == "":
        ctl.device = None
    if ctl.device is None:
        ctl.device = _route_device(gdst)
    if ctl.device is None or not host.is_ipoib(ctl.device):
        host.exec_real(argv)
    try:
        info = host.links.get(ctl.device)
    except PermissionError:  # the control file is root's, as a packet socket needs CAP_NET_RAW
        info = None
    if info is None:
        host.exec_real(argv)
    if not info["up"]:
        if not ctl.quiet:
            print(f'Interface "{ctl.device}" is down')
        return 2
    if ctl.source is not None:
        source = _inet_aton(ctl.source)
        if source is None:
            return _error(2, f"invalid source {ctl.source}")
        ctl.gsrc = source
    if not ctl.dad and ctl.unsolicited and ctl.source is None:
        ctl.gsrc = ctl.gdst
    if not ctl.dad or ctl.source:
        failed = _source(ctl)
        if failed is not None:
            return failed
    ctl.me = bytes.fromhex(info["address"].replace(":", ""))
    ctl.he = bytes.fromhex(info["broadcast"].replace(":", ""))
    if not ctl.quiet:
        print(f"ARPING {_ntoa(ctl.gdst)} from {_ntoa(ctl.gsrc)} {ctl.device}")
    if not ctl.source and not any(ctl.gsrc) and not ctl.dad:
        return _error(2, "no source address in not-DAD mode")
    for sig in (_signal.SIGINT, _signal.SIGQUIT, _signal.SIGTERM):
        _signal.signal(sig, _on_signal)
    sys.stdout.flush()
    return event_loop(ctl, Link(host, ctl.device))
