"""`ipoibfs capture`: a lab host's or the whole fabric's traffic as a pcap file.

The daemon side (capture_server.CaptureServer, started by host.py) listens on an abstract
Unix socket named after the mountpoint, for root's processes only (SO_PEERCRED). While a
client is attached, each of the host's FabricPorts has a tap (fabric/tap.py) that copies
what the port sends and receives into a bounded queue; the server drains it on the trio
thread and streams it to every client. With no client, the taps are None and cost the data
path one attribute check.

The stream is frames of a type byte and a 4-byte length: first HELLO (JSON: the host's
ports, interfaces and RC connections), then RECORDS (how many records the host dropped so
far, then tap records). The client (`main`) turns records into IB packets with
wire/capture.py: the conversion costs the capture process, not the daemon.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any

from . import wire
from .errors import UsageError
from .fabric.tap import MAD, MAD_HEADER, PLACED, RECEIVED
from .wire.capture import (
    LINKTYPE_ERF,
    LINKTYPE_IPOIB,
    QP1,
    IbFilter,
    IbRoute,
    PsnCounter,
    erf_record,
    ipoib_records,
    mad_packet,
    pcap_header,
    pcap_record,
    sending_qp,
)

HELLO, RECORDS = ord("H"), ord("R")
FRAME = struct.Struct("!BI")
DROPS = struct.Struct("!Q")
#: A tap record on the stream: time (ns), kind, port number, DLID, length, then the bytes.
RECORD = struct.Struct("!QBBHI")
#: A fabric capture holds records this long to merge the hosts' streams in time order.
MERGE_WINDOW_NS = 50_000_000
#: An abstract Unix socket's name holds 107 bytes after its leading NUL.
UNIX_NAME_MAX = 107


def socket_path(mountpoint: str) -> str:
    """The abstract socket a host's capture server listens on: `@ipoibfs/capture` and the
    mountpoint (`ss -xl` shows it), hashed when that is too long. `mountpoint` is taken as
    it is (the caller resolved it): the daemon must not stat its own mount."""
    path = os.path.abspath(mountpoint)
    name = "ipoibfs/capture" + path
    if len(name.encode()) > UNIX_NAME_MAX:
        name = "ipoibfs/capture#" + hashlib.sha256(path.encode()).hexdigest()
    return "\0" + name


# ---------------------------------------------------------------- the client: hosts


@dataclass
class _Iface:
    name: str
    port: int
    qpn: int
    pkey: int


@dataclass
class _HostView:
    """What a client knows of one host: its ports and interfaces, and which interface
    each of its RC QPNs and CM communication IDs belongs to (from HELLO, then the CM
    messages it sees)."""

    name: str
    sock: socket.socket
    peer: bool  # only for what it places into the captured hosts
    ports: dict[int, dict[str, Any]] = field(default_factory=dict)
    ifaces: dict[tuple[int, int], _Iface] = field(default_factory=dict)  # (port, UD QPN)
    rc: dict[int, _Iface] = field(default_factory=dict)  # our RC QPN
    comm: dict[int, _Iface] = field(default_factory=dict)  # our REQ's comm ID
    dropped: int = 0
    lost: int = 0  # dropped since the last ERF record written for this host
    buffer: bytearray = field(default_factory=bytearray)

    def learn(self, info: dict[str, Any]) -> None:
        self.ports = {p["num"]: p for p in info["ports"]}
        for i in info["interfaces"]:
            iface = _Iface(i["name"], i["port"], i["qpn"], i["pkey"])
            self.ifaces[(iface.port, iface.qpn)] = iface
        by_name = {i.name: i for i in self.ifaces.values()}
        for qpn, name in info["rc"]:
            if name in by_name:
                self.rc[qpn] = by_name[name]

    def iface(self, name: str) -> _Iface | None:
        return next((i for i in self.ifaces.values() if i.name == name), None)

    def cm_iface(self, kind: int, port: int, cm: wire.CmMessage) -> _Iface | None:
        """The interface of ours a CM message is for, learning its RC QPN."""
        sent = kind != RECEIVED
        if isinstance(cm, wire.CmReq):
            if not sent:
                return self.ifaces.get((port, cm.service_id & 0xFFFFFF))
            iface = self.ifaces.get((port, cm.private.qpn))
            if iface is not None:
                self.rc[cm.qpn] = iface
                self.comm[cm.local_comm_id] = iface
            return iface
        if isinstance(cm, wire.CmRep):
            if not sent:
                return self.comm.get(cm.remote_comm_id)
            iface = self.ifaces.get((port, cm.private.qpn))
            if iface is not None:
                self.rc[cm.qpn] = iface
            return iface
        if sent:  # RTU, REJ, DREQ name our RC QPN (DREP none)
            return self.rc.get(getattr(cm, "qpn", 0)) or self.comm.get(cm.local_comm_id)
        return self.comm.get(cm.remote_comm_id) or self.rc.get(cm.remote_comm_id)


class Converter:
    """Tap records to pcap records, with the filter and the interface selection."""

    def __init__(self, *, ipoib: bool, ib_filter: IbFilter, iface: str | None) -> None:
        self.ipoib = ipoib
        self.filter = ib_filter
        self.iface = iface
        self.psns = PsnCounter()
        self.mad_psns: dict[int, int] = {}
        self.seen = 0  # packets the filter looked at

    def convert(self, host: _HostView, kind: int, port_num: int, dlid: int,
                data: bytes, ts: int) -> list[bytes]:  # fmt: skip
        port = host.ports.get(port_num) or {"lid": 0, "gid": "00" * 16, "guid": 0, "mtu": 4096}
        if kind == MAD:
            return self._mad(host, port_num, data, ts)
        if not data or kind == RECEIVED and data[2:4] == port["lid"].to_bytes(2, "big"):
            return []  # a port's own multicast, looped back inside the HCA: not on its link
        iface = self._owner(host, kind, port_num, data)
        if self.iface is not None and (iface is None or iface.name != self.iface):
            return []
        pkey = iface.pkey if iface is not None else wire.DEFAULT_PKEY
        gid = bytes.fromhex(port["gid"])
        if kind == RECEIVED:
            route = IbRoute(pkey=pkey, dlid=port["lid"], dgid=gid)
        else:
            route = IbRoute(pkey=pkey, dlid=dlid, sgid=gid, ca_guid=port["guid"])
        packets = self.psns.packets(data, mtu=port["mtu"], route=route)
        qp = sending_qp(data)
        src_qp = qp[1] if qp is not None else None
        self.seen += len(packets)
        matched = [p for p in packets if self.filter.matches(p, src_qp=src_qp)]
        if self.ipoib:
            return [pcap_record(r, ts) for r in ipoib_records(data)] if matched else []
        interface = 1 if kind == RECEIVED else 0
        out = []
        for p in matched:
            out.append(pcap_record(erf_record(p, ts, interface=interface, lost=host.lost), ts))
            host.lost = 0
        return out

    def _owner(self, host: _HostView, kind: int, port: int, data: bytes) -> _Iface | None:
        """The interface of `host` a message belongs to, if known."""
        sent = kind != RECEIVED
        if data[0] == wire.KIND_UD and len(data) >= wire.UdHeader.SIZE:
            ud = wire.UdHeader.unpack_from(data)
            if sent:
                return host.ifaces.get((port, ud.src_qpn))
            if ud.dst_qpn == wire.MCAST_QPN:
                want = ud.pkey & wire.PKEY_MASK
                found = [i for i in host.ifaces.values()
                         if i.port == port and i.pkey & wire.PKEY_MASK == want]  # fmt: skip
                return found[0] if found else None
            return host.ifaces.get((port, ud.dst_qpn))
        if data[0] == wire.KIND_RC and len(data) >= wire.RcHeader.SIZE:
            rc = wire.RcHeader.unpack_from(data)
            return host.rc.get(rc.src_qpn if sent else rc.dst_qpn)
        if data[0] == wire.KIND_CM:
            cm = wire.unpack_cm(data)
            return None if cm is None else host.cm_iface(kind, port, cm)
        return None

    def _mad(self, host: _HostView, port: int, data: bytes, ts: int) -> list[bytes]:
        if self.ipoib or len(data) < MAD_HEADER.size:
            return []
        slid, dlid, src_qp, dest_qp, pkey = MAD_HEADER.unpack_from(data)
        if self.iface is not None:
            iface = host.iface(self.iface)
            if iface is None or iface.port != port or (
                    iface.pkey & wire.PKEY_MASK != pkey & wire.PKEY_MASK):  # fmt: skip
                return []
        psn = self.mad_psns.get(slid, 0)
        self.mad_psns[slid] = psn + 1
        # GSI MADs go with the default P_Key (P_Key index 0); `pkey` is the partition asked
        packet = mad_packet(data[MAD_HEADER.size :], slid=slid, dlid=dlid, src_qp=src_qp,
                            dest_qp=dest_qp, psn=psn)  # fmt: skip
        self.seen += 1
        if not self.filter.matches(packet, src_qp=QP1):
            return []
        record = pcap_record(erf_record(packet, ts, lost=host.lost), ts)
        host.lost = 0
        return [record]


# ---------------------------------------------------------------- the client: command line


def _number(text: str, what: str, limit: int) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise UsageError(f"capture: {what} {text!r} is not a number") from None
    if not 0 <= value <= limit:
        raise UsageError(f"capture: {what} {text} is out of range (0 to {limit:#x})")
    return value


Target = tuple[str, str]  # a host's name and mountpoint


def _hosts(args: argparse.Namespace) -> tuple[list[Target], list[Target]]:
    """The hosts to capture, and (for a lab host) the other hosts of its lab: what they
    place straight into the captured host's stack is only in their streams."""
    from .lab import Lab, labs_up, no_lab

    prefix = args.prefix
    if args.fabric or prefix:
        lab = Lab.load(prefix)
        if lab is None:
            raise no_lab(prefix)
        everyone = [(h.name, h.mountpoint) for h in lab.hosts]
        if args.fabric:
            return everyone, []
        for name, mountpoint in everyone:
            if name in (args.host, f"{prefix}-{args.host}"):
                return [(name, mountpoint)], [t for t in everyone if t[0] != name]
        names = ", ".join(h.name for h in lab.hosts)
        raise UsageError(f"capture: no host {args.host} in the lab with prefix '{prefix}' "
                         f"(hosts: {names})")  # fmt: skip
    for other in labs_up():
        lab = Lab.load(other)
        everyone = [(h.name, h.mountpoint) for h in lab.hosts] if lab else []
        for name, mountpoint in everyone:
            if name == args.host:
                return [(name, mountpoint)], [t for t in everyone if t[0] != name]
    if os.path.isdir(args.host):
        return [(args.host, os.path.realpath(args.host))], []
    raise UsageError(f"capture: '{args.host}' is neither a lab host nor an ipoibfs mountpoint")


def _connect(name: str, mountpoint: str, *, peer: bool = False) -> _HostView:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(socket_path(mountpoint))
    except OSError:
        sock.close()
        raise UsageError(f"capture: no ipoibfs host is running at {mountpoint} ({name})") from None
    host = _HostView(name, sock, peer)
    kind, payload = _read_frame(host, block=True)
    if kind != HELLO or payload is None:
        raise UsageError(f"capture: host {name} closed the capture")
    host.learn(json.loads(payload))
    return host


def _read_frame(host: _HostView, *, block: bool = False) -> tuple[int, bytes | None]:
    """The next whole frame in the host's buffer, reading when `block`; (0, None) when
    none is whole yet; (-1, None) at the end of the stream."""
    while True:
        buf = host.buffer
        if len(buf) >= FRAME.size:
            kind, length = FRAME.unpack_from(buf)
            if len(buf) >= FRAME.size + length:
                payload = bytes(buf[FRAME.size : FRAME.size + length])
                del buf[: FRAME.size + length]
                return kind, payload
        if not block:
            return 0, None
        chunk = host.sock.recv(1 << 20)
        if not chunk:
            return -1, None
        buf += chunk


def _records(payload: bytes) -> tuple[int, list[tuple[int, int, int, int, bytes]]]:
    dropped = DROPS.unpack_from(payload)[0]
    out = []
    at = DROPS.size
    while at + RECORD.size <= len(payload):
        ts, kind, port, dlid, length = RECORD.unpack_from(payload, at)
        at += RECORD.size
        out.append((ts, kind, port, dlid, payload[at : at + length]))
        at += length
    return dropped, out


class _Stop(Exception):
    """SIGINT or SIGTERM: the capture ends cleanly (set even where SIGINT was ignored, as
    for a background job of a script, as tcpdump sets its own)."""


def _on_signal(signum: int, frame: object) -> None:
    raise _Stop


def main(args: argparse.Namespace) -> int:
    if bool(args.fabric) == bool(args.host):
        raise UsageError("capture: give a HOST or --fabric (one of them)")
    if args.fabric and args.interface:
        raise UsageError("capture: -i is for one host's interface, not with --fabric")
    if args.count is not None and args.count <= 0:
        raise UsageError(f"capture: -c {args.count}: the count must be positive")
    ib_filter = IbFilter(
        lid=None if args.lid is None else _number(args.lid, "LID", 0xFFFF),
        qpn=None if args.qpn is None else _number(args.qpn, "QPN", 0xFFFFFF),
        pkey=None if args.pkey is None else _number(args.pkey, "P_Key", 0xFFFF),
    )
    targets, others = _hosts(args)
    if not targets:
        raise UsageError("capture: the lab has no hosts")
    hosts = [_connect(name, mountpoint) for name, mountpoint in targets]
    peers = []
    for name, mountpoint in others:
        try:
            peers.append(_connect(name, mountpoint, peer=True))
        except UsageError:
            pass  # a host that is gone places nothing
    if args.interface and hosts[0].iface(args.interface) is None:
        known = ", ".join(sorted(i.name for i in hosts[0].ifaces.values()))
        raise UsageError(f"capture: {hosts[0].name} has no interface {args.interface} "
                         f"(it has {known})")  # fmt: skip
    if args.write == "-":
        out: IO[bytes] = sys.stdout.buffer
    else:
        try:
            out = open(args.write, "wb")  # noqa: SIM115 (closed below)
        except OSError as e:
            raise UsageError(f"capture: cannot write {args.write}: {e.strerror}") from None
    linktype = LINKTYPE_IPOIB if args.ipoib else LINKTYPE_ERF
    converter = Converter(ipoib=args.ipoib, ib_filter=ib_filter, iface=args.interface)
    what = "the fabric" if args.fabric else hosts[0].name + (
        f" {args.interface}" if args.interface else "")  # fmt: skip
    link = "IPOIB (IP over InfiniBand)" if args.ipoib else "ERF (Extensible Record Format)"
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    captured = 0
    try:
        out.write(pcap_header(linktype))
        out.flush()
        print(f"capture: listening on {what}, link-type {link}, snapshot length 262144 bytes",
              file=sys.stderr, flush=True)  # fmt: skip
        captured = _loop(hosts, peers, converter, out, fabric=args.fabric, count=args.count)
    except (BrokenPipeError, _Stop):
        pass  # the reader went away (tshark -r - quit), or a signal came early
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for host in hosts + peers:
            host.sock.close()
        try:
            out.flush()
        except BrokenPipeError:
            pass
        if out is not sys.stdout.buffer:
            out.close()
    dropped = sum(h.dropped for h in hosts)
    print(f"{captured} packets captured\n{converter.seen} packets received by filter\n"
          f"{dropped} packets dropped by kernel", file=sys.stderr)  # fmt: skip
    return 0


def _placed_into(hosts: list[_HostView], data: bytes) -> tuple[_HostView, int] | None:
    """The captured host and port an RC message or UD datagram placed by a peer went to,
    if any."""
    if data[:1] == bytes([wire.KIND_RC]) and len(data) >= wire.RcHeader.SIZE:
        dlid = wire.RcHeader.unpack_from(data).dlid
    elif data[:1] == bytes([wire.KIND_UD]) and len(data) >= wire.UdHeader.SIZE:
        dlid = wire.UdHeader.unpack_from(data).dlid
    else:
        return None
    for host in hosts:
        for num, port in host.ports.items():
            if port["lid"] == dlid:
                return host, num
    return None


class _Merger:
    """The hosts' streams in, pcap records out in time order: a host's records wait
    MERGE_WINDOW_NS when other streams could still bring earlier ones."""

    def __init__(self, hosts: list[_HostView], peers: list[_HostView], converter: Converter,
                 *, fabric: bool) -> None:  # fmt: skip
        self.hosts, self.peers, self.converter, self.fabric = hosts, peers, converter, fabric
        self.pending: list[tuple[int, int, bytes]] = []  # (time, arrival, pcap record)
        self.order = 0
        self.window = MERGE_WINDOW_NS if len(hosts) + len(peers) > 1 else 0

    def read(self, host: _HostView) -> bool:
        """What the host's socket holds now; False at the end of its stream."""
        while True:
            try:
                chunk = host.sock.recv(1 << 20)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                return False
            host.buffer += chunk
        while True:
            kind, payload = _read_frame(host)
            if payload is None:
                return True
            if kind == RECORDS:
                dropped, records = _records(payload)
                # ERF's loss counter on the next record: Wireshark flags the gap
                host.lost += dropped - host.dropped
                host.dropped = dropped
                for record in records:
                    self._take(host, *record)

    def _take(self, host: _HostView, ts: int, kind: int, port: int, dlid: int,
              data: bytes) -> None:  # fmt: skip
        if host.peer:
            placed = _placed_into(self.hosts, data) if kind == PLACED else None
            if placed is None:
                return
            (host, port), kind = placed, RECEIVED
        elif self.fabric and kind == RECEIVED:
            return  # each message once: what leaves a port
        for rec in self.converter.convert(host, kind, port, dlid, data, ts):
            heapq.heappush(self.pending, (ts, self.order, rec))
            self.order += 1

    def ready(self, *, final: bool = False) -> list[bytes]:
        """The records whose time has come (all of them when `final`)."""
        horizon = time.time_ns() - self.window
        out = []
        while self.pending and (final or self.pending[0][0] <= horizon):
            out.append(heapq.heappop(self.pending)[2])
        return out


def _loop(hosts: list[_HostView], peers: list[_HostView], converter: Converter,
          out: IO[bytes], *, fabric: bool, count: int | None) -> int:  # fmt: skip
    """Read the hosts' streams until each ended, COUNT records are written, or SIGINT;
    the records written. Of the peers' streams only what they placed into the hosts
    counts, as received there. On a signal, what the sockets already hold is kept."""
    merger = _Merger(hosts, peers, converter, fabric=fabric)
    selector = selectors.DefaultSelector()
    for host in hosts + peers:
        host.sock.setblocking(False)
        selector.register(host.sock, selectors.EVENT_READ, host)
    open_streams = len(hosts)
    written = 0
    final = False
    try:
        while open_streams and not final:
            try:
                events = selector.select(timeout=0.02 if merger.pending else None)
                for key, _ in events:
                    if not merger.read(key.data):
                        selector.unregister(key.fileobj)
                        open_streams -= not key.data.peer
            except _Stop:
                for key in list(selector.get_map().values()):
                    merger.read(key.data)
                final = True
            for rec in merger.ready(final=final or not open_streams):
                out.write(rec)
                written += 1
                if count is not None and written >= count:
                    break
            out.flush()
            if count is not None and written >= count:
                break
    finally:
        selector.close()
    return written


def add_parser(sub: Any) -> None:
    """The `capture` subcommand's arguments."""
    c = sub.add_parser(
        "capture",
        help="record a lab host's or the fabric's InfiniBand traffic as a pcap file",
        description="Record what HOST's ports send and receive (or, with --fabric, what "
        "leaves every port of the lab) as InfiniBand packets: LRH, GRH for multicast, BTH, "
        "DETH, the IPoIB header and the packet; RC sends in connected mode, CM and SA "
        "MADs. The file is LINKTYPE_ERF (type 21, InfiniBand), which Wireshark and tshark "
        "decode; --ipoib writes LINKTYPE_IPOIB for tcpdump. Stops at -c COUNT, when the "
        "host stops, or on SIGINT/SIGTERM, then prints tcpdump's summary on stderr. "
        "`ipoibfs capture h1 -w - | tshark -r -` is live.",
    )
    c.add_argument(
        "host",
        metavar="HOST",
        nargs="?",
        help="a lab host (h1, or P-h1 in a lab with a prefix) or a mountpoint",
    )
    c.add_argument(
        "--fabric", action="store_true", help="every host of the lab, merged in time order"
    )
    c.add_argument("--prefix", default="", metavar="P", help="the lab with prefix P")
    c.add_argument(
        "-w",
        dest="write",
        metavar="FILE",
        required=True,
        help="the pcap file to write; - for stdout",
    )
    c.add_argument(
        "-i",
        dest="interface",
        metavar="IFACE",
        help="only this interface's messages (its QPNs and P_Key)",
    )
    c.add_argument("-c", dest="count", type=int, metavar="COUNT", help="stop after COUNT packets")
    c.add_argument(
        "--ipoib",
        action="store_true",
        help="LINKTYPE_IPOIB (242) with the 40-byte pseudo-header: IP packets only",
    )
    c.add_argument("--lid", metavar="LID", help="packets with this SLID or DLID")
    c.add_argument("--qpn", metavar="QPN", help="packets from or to this QPN")
    c.add_argument(
        "--pkey", metavar="PKEY", help="packets of this partition (0x7fff matches 0xffff)"
    )
