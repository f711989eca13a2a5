"""IPoIB netdevs as TUN devices typed ARPHRD_INFINIBAND, driven through netlink and ioctls."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import itertools
import os
import select
import socket
import struct
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Sized
from dataclasses import dataclass
from typing import Any

import trio
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from ..errors import KernelError, report_bug
from ..fabric.flag import Flag
from ..wire import ARPHRD_INFINIBAND, IFF_NOARP, IFF_UP
from .flows import FlowTable
from .netns import NetnsWorker

TUNSETIFF = 0x400454CA
TUNSETLINK = 0x400454CD
TUNSETCARRIER = 0x400454E2
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_TUN_EXCL = 0x8000
IFF_VNET_HDR = 0x4000
TUNSETOFFLOAD = 0x400454D0
SIOCGIFFLAGS = 0x8913
SIOCGIFMTU = 0x8921
SIOCGIFTXQLEN = 0x8942
ETHTOOL_GLINK = 0x0000000A
ETHTOOL_VALUE = struct.Struct("=II")  # struct ethtool_value: cmd, data
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
#: What `link_events` reports of a link.
LINK_CHANGED, LINK_DELETED, ADDRESSES_CHANGED = "changed", "deleted", "addresses"
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLM_F_EXCL, NLM_F_CREATE = 0x200, 0x400
IFLA_IFNAME = 3
IFLA = {"mtu": 4, "txqlen": 13, "ifalias": 20, "group": 27}
IFA_ADDRESS, IFA_LOCAL = 1, 2
U32 = struct.Struct("=I")
NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, index
OPERSTATES = ("unknown", "notpresent", "down", "lowerlayerdown", "testing", "dormant", "up")


@dataclass
class LiveLink:
    """A TUN netdev that lives as long as its fd is open."""

    ifindex: int
    name: str
    fd: int


@dataclass(slots=True)
class PumpStats:
    """What a link's reader thread counts (LiveNetdevs.pump). Only that thread writes it."""

    #: Packets dropped because `limit` packets were already waiting for the trio thread:
    #: a full TX ring's drop (tx_dropped).
    dropped: int = 0
    #: The link's flow table, when the reader runs its C loop (netdev/flows.py).
    flows: FlowTable | None = None


#: Packets the reader takes before its batch ends even if more wait (NAPI_POLL_WEIGHT).
BATCH = 64


class PacketReader:
    """The thread that reads one TUN (LiveNetdevs.pump).

    It blocks in read(), as a plain relay does: a packet costs one system call to take, and
    a wake-up costs nothing more. It ends when the netdev is deleted (the kernel detaches
    the queue and the read fails), which `LiveNetdevs.destroy` and `close` do before they
    stop it.

    Packets `fast` does not take wait in a deque for the trio thread, at most `limit` of
    them. The reader schedules one `_drain` on the trio thread when the queue goes from idle
    to busy; `_drain` clears that flag before it takes the first packet, so a packet the
    reader adds meanwhile is either seen by this drain or schedules the next one.
    """

    def __init__(self, fd: int, fast: Callable[[bytes], bool], slow: Callable[[bytes], None],
                 token: trio.lowlevel.TrioToken, limit: int,
                 held: Sized = (), fast_end: Callable[[], None] | None = None,
                 slow_end: Callable[[], None] | None = None,
                 flows_ok: Flag | None = None) -> None:  # fmt: skip
        self._fd, self._fast, self._slow, self._token = fd, fast, slow, token
        self._held, self._fast_end, self._slow_end = held, fast_end, slow_end
        self._limit = limit
        self._queue: deque[bytes] = deque()
        self._scheduled = False  # a _drain is pending on the trio thread
        self.stats = PumpStats(flows=None if flows_ok is None else FlowTable(fd, flows_ok))
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"tun-{fd}")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Wait for the thread, once the netdev is deleted, so that the fd can be closed
        safely."""
        self._thread.join(timeout=5)

    def _run(self) -> None:
        fd, fast, read = self._fd, self._fast, os.read
        queue, limit, stats = self._queue, self._limit, self.stats
        drain, run_sync_soon = self._drain, self._token.run_sync_soon
        held, fast_end = self._held, self._fast_end
        # The C loop reads while nothing is held here (what it sends itself, or merges for
        # a peer's GRO, never reaches us; what it held and hands back comes first); while
        # the Python GRO holds frames, the batch's end is ours to find, with poll().
        flows = stats.flows.run if stats.flows is not None else None
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poll = poller.poll

        def batch_end() -> None:
            try:
                if fast_end is not None:
                    fast_end()
            except Exception:
                report_bug("the fast path's batch end failed")

        os.set_blocking(fd, True)
        count = 0
        try:
            while True:
                # What `fast` holds goes when nothing more waits (a NAPI poll's end) or
                # after BATCH packets (its weight): only then is poll() asked.
                if not held:
                    count = 0
                elif count >= BATCH or not poll(0):
                    batch_end()
                    count = 0
                packets = [read(fd, 65536)] if flows is None or held else flows()
                for packet in packets:
                    if not packet:
                        return  # end of file: not a TUN's (tests stand a socket in for one)
                    count += 1
                    try:
                        taken = fast(packet)
                    except Exception:  # a bug must not silence the link: log, go the slow way
                        report_bug("the fast path failed; the packet goes the slow way")
                        taken = False
                    if taken:
                        continue
                    if len(queue) >= limit:
                        stats.dropped += 1
                        continue
                    queue.append(packet)
                    if not self._scheduled:
                        self._scheduled = True
                        run_sync_soon(drain)
        except (OSError, trio.RunFinishedError):
            return  # the link or the daemon is going away

    def _drain(self) -> None:
        """On the trio thread: `slow` for each packet waiting now, in order; those that come
        meanwhile have scheduled the next drain, so trio's other work runs in between (as
        trio bounds its own callback batches), then `slow_end`. An Exception `slow` raises is
        printed with its traceback and the next packet goes on."""
        self._scheduled = False
        slow, popleft = self._slow, self._queue.popleft
        for _ in range(len(self._queue)):
            try:
                slow(popleft())
            except Exception:
                report_bug("a packet's slow path failed")
        if self._slow_end is not None:
            try:
                self._slow_end()
            except Exception:
                report_bug("the slow path's batch end failed")


@dataclass(frozen=True)
class LinkState:
    """What netlink reports about a link right now."""

    flags: int
    mtu: int
    operstate: str
    carrier: int
    carrier_changes: int
    carrier_up_count: int
    carrier_down_count: int
    txqlen: int
    ifalias: str
    group: int
    proto_down: int


def _attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    attr = struct.pack("=HH", 4 + len(payload), kind) + payload
    return attr + bytes(-len(attr) % 4)


class RtnlQueries:
    """rtnetlink on a socket of our own: link and address queries parsed with pyroute2's
    marshal, and the few changes the daemon makes (RTM_NEWLINK as `ip link set` sends it,
    RTM_DELLINK, RTM_NEWADDR), built by hand. pyroute2's IPRoute keeps memory for every
    request it serves (measured: about 1.6 KB a get_links; 12,000 `operstate` reads grew a
    daemon by 19 MB). Used on the namespace worker's thread only."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        self.sock.bind((0, 0))
        self._seq = itertools.count(1)
        self._marshal = MarshalRtnl()

    def _ask(self, kind: int, flags: int, payload: bytes) -> list[Any]:
        """The replies to one request: one message, or a dump up to NLMSG_DONE."""
        seq = next(self._seq) & 0xFFFFFFFF
        self.sock.send(NLMSGHDR.pack(NLMSGHDR.size + len(payload), kind, flags, seq, 0) + payload)
        out: list[Any] = []
        while True:
            for msg in self._marshal.parse(self.sock.recv(1 << 16)):
                header = msg["header"]
                if header["sequence_number"] != seq:
                    continue  # a late answer to a request given up on
                if header["type"] == NLMSG_DONE:
                    return out
                if header["type"] == NLMSG_ERROR:
                    error = header.get("error")
                    raise KernelError(getattr(error, "code", errno.EIO))
                out.append(msg)
                if not flags & NLM_F_DUMP:
                    return out

    def link(self, ifindex: int) -> Any:
        return self._ask(RTM_GETLINK, NLM_F_REQUEST, IFINFOMSG.pack(0, 0, ifindex, 0, 0))[0]

    def lookup(self, name: str) -> int:
        """The ifindex of a netdev by name (ENODEV if there is none)."""
        body = IFINFOMSG.pack(0, 0, 0, 0, 0) + _attr(IFLA_IFNAME, name.encode() + b"\0")
        return int(self._ask(RTM_GETLINK, NLM_F_REQUEST, body)[0]["index"])

    def _change(self, kind: int, flags: int, body: bytes) -> None:
        """A change, acknowledged: NLMSG_ERROR's errno, 0 for success, as a KernelError."""
        seq = next(self._seq) & 0xFFFFFFFF
        head = NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK | flags,
                             seq, 0)  # fmt: skip
        self.sock.send(head + body)
        while True:
            data = self.sock.recv(1 << 16)
            off = 0
            while off + NLMSGHDR.size + 4 <= len(data):
                length, reply, _, reply_seq, _ = NLMSGHDR.unpack_from(data, off)
                if reply == NLMSG_ERROR and reply_seq == seq:
                    error = -struct.unpack_from("=i", data, off + NLMSGHDR.size)[0]
                    if error:
                        raise KernelError(error)
                    return
                off += max((length + 3) & ~3, NLMSGHDR.size)

    def set_link(self, index: int, *, flags: int = 0, change: int = 0,
                 **attrs: int | bytes) -> None:  # fmt: skip
        """`ip link set`: flags under the mask `change`, then u32 attributes (mtu, txqlen,
        group) and ifalias as its exact bytes (empty removes it)."""
        body = IFINFOMSG.pack(0, 0, index, flags & 0xFFFFFFFF, change & 0xFFFFFFFF)
        for name, value in attrs.items():
            payload = value if isinstance(value, bytes) else U32.pack(value & 0xFFFFFFFF)
            body += _attr(IFLA[name], payload)
        self._change(RTM_NEWLINK, 0, body)

    def del_link(self, index: int) -> None:
        self._change(RTM_DELLINK, 0, IFINFOMSG.pack(0, 0, index, 0, 0))

    def add_address(self, index: int, address: str, prefixlen: int) -> None:
        """`ip addr add ADDRESS/PREFIXLEN dev INDEX` (EEXIST if it is there)."""
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        raw = socket.inet_pton(family, address)
        body = IFADDRMSG.pack(family, prefixlen, 0, 0, index)
        body += _attr(IFA_LOCAL, raw) + _attr(IFA_ADDRESS, raw)
        self._change(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body)

    def addresses(self) -> list[Any]:
        return self._ask(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, IFADDRMSG.pack(0, 0, 0, 0, 0))

    def close(self) -> None:
        self.sock.close()


ETH_GSTRING_LEN = 32


def parse_gstrings(data: bytes) -> list[str]:
    """The strings of an ETHTOOL_GSTRINGS answer's data (ETH_GSTRING_LEN bytes each,
    NUL-padded): for ETH_SS_FEATURES, the kernel's feature names in bit order."""
    return [data[i : i + ETH_GSTRING_LEN].split(b"\0", 1)[0].decode()
            for i in range(0, len(data) - ETH_GSTRING_LEN + 1, ETH_GSTRING_LEN)]  # fmt: skip


#: SIOCETHTOOL, ETHTOOL_GSSET_INFO, ETHTOOL_GSTRINGS and ETH_SS_FEATURES, to read the
#: kernel's feature names from a netdev: struct ethtool_sset_info with its one data word (the
#: count), then struct ethtool_gstrings' header followed by count * ETH_GSTRING_LEN bytes.
SIOCETHTOOL, ETHTOOL_GSSET_INFO, ETHTOOL_GSTRINGS, ETH_SS_FEATURES = 0x8946, 0x37, 0x1B, 4
SSET_INFO = struct.Struct("IIQI")
GSTRINGS_HEADER = struct.Struct("III")


def _ethtool_ioctl(sock: socket.socket, ifname: str, data: bytearray) -> None:
    """SIOCETHTOOL with ifr_data pointing at `data` (changed in place)."""
    buf = (ctypes.c_char * len(data)).from_buffer(data)
    ifr = struct.pack("16sP", ifname.encode(), ctypes.addressof(buf)).ljust(40, b"\0")
    try:
        fcntl.ioctl(sock, SIOCETHTOOL, ifr)
    except OSError as e:
        raise KernelError(e.errno or errno.EIO, f"SIOCETHTOOL on {ifname}: {e.strerror}") from None
    finally:
        del buf


def ethtool_feature_names(sock: socket.socket, ifname: str) -> list[str]:
    """ETH_SS_FEATURES' strings (struct ethtool_sset_info, then struct ethtool_gstrings)."""
    info = bytearray(SSET_INFO.pack(ETHTOOL_GSSET_INFO, 0, 1 << ETH_SS_FEATURES, 0))
    _ethtool_ioctl(sock, ifname, info)
    count = struct.unpack_from("=I", info, SSET_INFO.size - 4)[0]
    header = GSTRINGS_HEADER.pack(ETHTOOL_GSTRINGS, ETH_SS_FEATURES, count)
    strings = bytearray(header + bytes(count * ETH_GSTRING_LEN))
    _ethtool_ioctl(sock, ifname, strings)
    return parse_gstrings(bytes(strings[len(header) :]))


class LiveNetdevs:
    """The Netdevs the driver uses, for one network namespace."""

    def __init__(self, worker: NetnsWorker) -> None:
        self.worker = worker
        self._ctl = worker.run_blocking(socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
        self._rtnl = worker.run_blocking(RtnlQueries)
        self.links: dict[int, LiveLink] = {}
        self._readers: dict[int, PacketReader] = {}
        self._feature_names: list[str] | None = None

    def close(self) -> None:
        """Delete every link and stop its reader. Idempotent."""
        for link in list(self.links.values()):
            self.worker.run_blocking(self._delete, link)
            self._close(link)
        self.links.clear()
        self._ctl.close()
        self._rtnl.close()

    # ------------------------------------------------------------- creation

    def _create(self, name: str, mtu: int, txqlen: int, offload: int) -> LiveLink:
        """A TUN typed ARPHRD_INFINIBAND, down, without carrier, with ARP on, taking what
        the interface's features accept (`offload`: TUNSETOFFLOAD flags). Any refusal
        after TUNSETIFF (TUNSETLINK gives EBUSY if someone set the new netdev up in
        between) is a KernelError, and the fd is closed, which removes the netdev."""
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            flags = IFF_TUN | IFF_NO_PI | IFF_TUN_EXCL | IFF_VNET_HDR
            ifr = struct.pack("16sH22x", name.encode(), flags)
            try:
                fcntl.ioctl(fd, TUNSETIFF, ifr)
            except OSError as e:
                if e.errno == errno.EBUSY:
                    raise KernelError(errno.EEXIST, f"{name} already exists") from None
                raise KernelError(
                    e.errno or errno.EIO, f"cannot create {name}: {e.strerror}"
                ) from None
            try:
                fcntl.ioctl(fd, TUNSETLINK, ARPHRD_INFINIBAND)
                fcntl.ioctl(fd, TUNSETOFFLOAD, offload)
                fcntl.ioctl(fd, TUNSETCARRIER, struct.pack("i", 0))
                try:
                    # RTM_GETLINK runs linkwatch_sync_dev: the carrier-off event is applied
                    # now, so dev->operstate goes from the UNKNOWN of registration to DOWN
                    # (it may otherwise wait up to a second), and is UP or DOWN from here on
                    # (`flags`, which the mirror's operstate relies on).
                    index = self._rtnl.lookup(name)
                except KernelError:
                    raise KernelError(errno.ENODEV, f"{name} went away while it was made") from None
                self._rtnl.set_link(index, flags=0, change=IFF_NOARP, mtu=mtu, txqlen=txqlen)
            except OSError as e:
                why = f"cannot set up {name}: {e.strerror}"
                raise KernelError(e.errno or errno.EIO, why) from None
            except KernelError as e:
                raise KernelError(e.errno or errno.EIO, f"cannot set up {name}: {e}") from None
        except BaseException:
            os.close(fd)
            raise
        return LiveLink(index, name, fd)

    async def create(self, name: str, *, mtu: int, txqlen: int, offload: int) -> LiveLink:
        link = await self.worker.run(self._create, name, mtu, txqlen, offload)
        self.links[link.ifindex] = link
        return link

    def _delete(self, link: LiveLink) -> None:
        """Delete the netdev before its fd is closed: a peer may hold a copy of the fd as
        its RC receive sink (fabric.placement), which must not keep the netdev alive."""
        try:
            self._rtnl.del_link(link.ifindex)
        except KernelError:
            pass  # already gone

    def _close(self, link: LiveLink) -> None:
        self._stop_pump(link)
        trio.lowlevel.notify_closing(link.fd)
        os.close(link.fd)

    async def destroy(self, link: LiveLink) -> None:
        if self.links.pop(link.ifindex, None) is not None:
            await self.worker.run(self._delete, link)
            self._close(link)

    def sink(self, link: LiveLink) -> int:
        """The fd whose writes the stack receives as packets from the link."""
        return link.fd

    # ------------------------------------------------------------- packets

    def pump(
        self,
        link: LiveLink,
        fast: Callable[[bytes], bool],
        slow: Callable[[bytes], None],
        *,
        limit: int,
        held: Sized = (),
        fast_end: Callable[[], None] | None = None,
        slow_end: Callable[[], None] | None = None,
        flows_ok: Flag | None = None,
    ) -> PumpStats:
        """Read every packet the stack sends on the link, on a thread of the link's own.

        `fast` runs on that thread and says whether it took the packet (an Exception it
        raises is printed and the packet goes the slow way). While `held` is not empty
        (what `fast` keeps back, for GRO), `fast_end` runs there too each time the link has
        nothing more to read, or after BATCH packets (the end of a batch, as a NAPI poll
        ends); the others go to `slow` on
        the trio thread, in order, each call guarded the same way: a raising `slow` is
        printed with its traceback and the next packet goes on; `slow_end` runs there after
        the packets that waited together (one callback's batch). At most `limit` packets
        wait for the trio thread; beyond that a packet is dropped and counted in the
        returned PumpStats, as a full TX ring drops (the interface's send queue).

        With `flows_ok`, the reader reads in C, and sends the packets its flow table (the
        PumpStats' `flows`) was programmed for itself, while the flag is set; `fast` sees
        the others.

        A thread blocked in read() costs one wake-up per burst where trio costs a scheduler
        pass and an epoll re-arm per packet, which on a small machine is most of connected
        mode's time (README, Benchmarks); the hand-off to trio costs one callback per burst.

        Each packet starts with its 10-byte virtio_net_hdr (checksum and GSO metadata):
        a TCP/IPv4 packet may be a super-packet of up to 64 KiB, as LSO hands it to an HCA.
        The reader ends when the netdev is deleted, before its fd is closed (`destroy`,
        `close`).
        """
        reader = PacketReader(link.fd, fast, slow, trio.lowlevel.current_trio_token(), limit,
                              held, fast_end, slow_end, flows_ok)  # fmt: skip
        self._readers[link.ifindex] = reader
        reader.start()
        return reader.stats

    def _stop_pump(self, link: LiveLink) -> None:
        reader = self._readers.pop(link.ifindex, None)
        if reader is not None:
            reader.stop()

    def write(self, link: LiveLink, packet: bytes | memoryview) -> bool:
        """Give a received packet, virtio_net_hdr first, to the stack (never blocks).

        False when the stack refused it (a malformed packet or offload header)."""
        try:
            os.write(link.fd, packet)
        except OSError:
            return False
        return True

    async def add_address(self, link: LiveLink, address: str, prefixlen: int) -> None:
        def add() -> None:
            try:
                self._rtnl.add_address(link.ifindex, address, prefixlen)
            except KernelError as e:
                if e.errno != errno.EEXIST:
                    raise

        await self.worker.run(add)

    def _addresses(self) -> dict[int, list[tuple[int, str, int]]]:
        out: dict[int, list[tuple[int, str, int]]] = {}
        for msg in self._rtnl.addresses():
            out.setdefault(msg["index"], []).append(
                (msg["family"], msg.get("IFA_ADDRESS"), msg["prefixlen"])
            )
        return out

    async def addresses(self) -> dict[int, list[tuple[int, str, int]]]:
        """Every address of the namespace: ifindex -> [(family, address, prefix length)]."""
        return await self.worker.run(self._addresses)

    @staticmethod
    def _read_sysctls(paths: list[str]) -> list[int | None]:
        values: list[int | None] = []
        for path in paths:
            try:
                with open(f"/proc/sys/net/{path}") as f:
                    values.append(int(f.read().split()[0]))
            except (OSError, ValueError, IndexError):
                values.append(None)
        return values

    async def sysctls(self, paths: list[str]) -> list[int | None]:
        """/proc/sys/net/PATH of the namespace: procfs shows the sysctls of the reading
        thread's namespace, so the worker reads them (a few small files per call)."""
        return await self.worker.run(self._read_sysctls, paths)

    # ------------------------------------------------------------- control

    def _netlink(self, index: int, state: str | None = None, **attrs: int | bytes) -> None:
        """RTM_NEWLINK of link `index` on the namespace worker, as `ip link set` sends it:
        up or down, flags/change, mtu, txqlen, group, ifalias."""
        flags, change = int(attrs.pop("flags", 0)), int(attrs.pop("change", 0))
        if state is not None:
            flags, change = (IFF_UP if state == "up" else 0), IFF_UP
        self._rtnl.set_link(index, flags=flags, change=change, **attrs)

    async def set_mtu(self, link: LiveLink, mtu: int) -> None:
        await self.worker.run(lambda: self._netlink(index=link.ifindex, mtu=mtu))

    async def set_up(self, link: LiveLink, up: bool) -> None:
        await self.worker.run(
            lambda: self._netlink(index=link.ifindex, state="up" if up else "down")
        )

    async def set_attrs(self, link: LiveLink, **attrs) -> None:
        """Other generic link attributes: txqlen, group (u32s, as IFLA_TXQLEN and IFLA_GROUP
        carry them), flags/change, and ifalias (bytes, up to IFALIASZ - 1, no NUL)."""
        for name in ("txqlen", "group", "flags", "change"):
            if name in attrs:
                attrs[name] = int(attrs[name]) & 0xFFFFFFFF
        if "ifalias" in attrs:
            alias = attrs["ifalias"]
            attrs["ifalias"] = alias.encode() if isinstance(alias, str) else bytes(alias)
        await self.worker.run(lambda: self._netlink(index=link.ifindex, **attrs))

    async def set_offload(self, link: LiveLink, flags: int) -> None:
        """TUNSETOFFLOAD: the TUN_F_* flags of what the interface's features accept."""
        fcntl.ioctl(link.fd, TUNSETOFFLOAD, flags)

    def feature_names(self) -> list[str]:
        """The kernel's netdev feature names in bit order: SIOCETHTOOL's ETHTOOL_GSSET_INFO
        and ETHTOOL_GSTRINGS of ETH_SS_FEATURES (the core answers them for any netdev; asked
        of the namespace's `lo` once)."""
        if self._feature_names is None:
            self._feature_names = ethtool_feature_names(self._ctl, "lo")
        return self._feature_names

    def set_carrier(self, link: LiveLink, on: bool) -> None:
        fcntl.ioctl(link.fd, TUNSETCARRIER, struct.pack("i", 1 if on else 0))

    # ------------------------------------------------------------- live reads
    #
    # mtu, flags, txqlen and carrier are ioctls on the calling (trio) thread, on the control
    # socket the worker made in the namespace: an ioctl names its netdev in the socket's
    # namespace, whichever thread calls it. SIOCGIF* look the netdev up under RCU and never
    # wait; ETHTOOL_GLINK takes RTNL, as the kernel's own carrier_show does (and as
    # TUNSETCARRIER does). The rest of the link's state is netlink, on the worker (`state`).

    def _ifreq(self, link: LiveLink, request: int, fmt: str = "i") -> int:
        try:
            out = fcntl.ioctl(self._ctl, request, struct.pack("16s24x", link.name.encode()))
        except OSError as e:
            raise KernelError(e.errno or errno.EIO) from None
        return struct.unpack_from(fmt, out, 16)[0]

    def mtu(self, link: LiveLink) -> int:
        return self._ifreq(link, SIOCGIFMTU)

    def flags(self, link: LiveLink) -> int:
        """SIOCGIFFLAGS: dev_get_flags cut to ifr_flags' 16 bits, so IFF_LOWER_UP and
        IFF_DORMANT are not in it. IFF_RUNNING is netif_oper_up while the netdev runs:
        dev->operstate, which operstate_show reads, is UP (not UNKNOWN: `create` has
        settled it), so it follows carrier as linkwatch last applied it, as operstate does."""
        return self._ifreq(link, SIOCGIFFLAGS, "H")

    def is_up(self, link: LiveLink) -> bool:
        return bool(self.flags(link) & IFF_UP)

    def txqlen(self, link: LiveLink) -> int:
        """SIOCGIFTXQLEN: dev->tx_queue_len as a C int."""
        return self._ifreq(link, SIOCGIFTXQLEN)

    def carrier(self, link: LiveLink) -> bool:
        """ETHTOOL_GLINK: netif_running && ethtool_op_get_link, which first applies a
        pending linkwatch event (linkwatch_sync_dev, as carrier_show and rtnl_getlink do),
        then reads netif_carrier_ok. False while the netdev is down."""
        data = bytearray(ETHTOOL_VALUE.pack(ETHTOOL_GLINK, 0))
        _ethtool_ioctl(self._ctl, link.name, data)
        return bool(ETHTOOL_VALUE.unpack(data)[1])

    def _state(self, ifindex: int) -> LinkState:
        msg = self._rtnl.link(ifindex)
        return LinkState(
            flags=msg["flags"],
            mtu=msg.get("IFLA_MTU"),
            operstate=msg.get("IFLA_OPERSTATE", "UNKNOWN").lower(),
            carrier=msg.get("IFLA_CARRIER", 0),
            carrier_changes=msg.get("IFLA_CARRIER_CHANGES", 0),
            carrier_up_count=msg.get("IFLA_CARRIER_UP_COUNT", 0),
            carrier_down_count=msg.get("IFLA_CARRIER_DOWN_COUNT", 0),
            txqlen=msg.get("IFLA_TXQLEN", 0),
            ifalias=msg.get("IFLA_IFALIAS") or "",
            group=msg.get("IFLA_GROUP", 0),
            proto_down=msg.get("IFLA_PROTO_DOWN", 0),
        )

    async def state(self, link: LiveLink) -> LinkState:
        """All netlink says of the link (RTM_GETLINK on the worker's socket): what no ioctl
        gives, the carrier counters, ifalias, group, proto_down."""
        return await self.worker.run(self._state, link.ifindex)

    # ------------------------------------------------------------- events

    def _monitor_socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR))
        return sock

    async def link_events(self) -> AsyncIterator[tuple[int, str]]:
        """(ifindex, LINK_CHANGED or LINK_DELETED) for every RTM_NEWLINK/RTM_DELLINK of our
        links, and (ifindex, ADDRESSES_CHANGED) for every IPv4 address added to or removed
        from one.

        After an overflow (ENOBUFS) every link is reported once, with its addresses, so
        nothing is missed.
        """
        sock = await self.worker.run(self._monitor_socket)
        marshal = MarshalRtnl()
        with sock:
            while True:
                await trio.lowlevel.wait_readable(sock)
                try:
                    data = sock.recv(1 << 16)
                except BlockingIOError:
                    continue
                except OSError as e:
                    if e.errno != errno.ENOBUFS:
                        raise
                    for ifindex in list(self.links):
                        yield ifindex, LINK_CHANGED
                        yield ifindex, ADDRESSES_CHANGED
                    continue
                for msg in marshal.parse(data):
                    kind = msg["header"]["type"]
                    if msg.get("index") not in self.links:
                        continue
                    if kind in (RTM_NEWLINK, RTM_DELLINK):
                        yield msg["index"], LINK_DELETED if kind == RTM_DELLINK else LINK_CHANGED
                    elif kind in (RTM_NEWADDR, RTM_DELADDR):
                        yield msg["index"], ADDRESSES_CHANGED

    def names(self) -> list[str]:
        """Every netdev of the namespace, ours or not."""
        with open(self.worker.proc_net("dev")) as f:
            return [line.split(":", 1)[0].strip() for line in list(f)[2:]]

    # ------------------------------------------------------------- IP multicast

    def _read_memberships(self) -> dict[str, tuple[list[str], list[str]]]:
        groups: dict[str, tuple[list[str], list[str]]] = {}
        dev = None
        with open(self.worker.proc_net("igmp")) as f:
            next(f)
            for line in f:
                if not line.startswith("\t"):
                    dev = line.split()[1]
                    groups.setdefault(dev, ([], []))
                elif dev is not None:
                    raw = int(line.split()[0], 16)
                    groups[dev][0].append(socket.inet_ntoa(struct.pack("<I", raw)))
        with open(self.worker.proc_net("igmp6")) as f:
            for line in f:
                fields = line.split()
                addr = bytes.fromhex(fields[2])
                groups.setdefault(fields[1], ([], []))[1].append(
                    socket.inet_ntop(socket.AF_INET6, addr)
                )
        return groups

    async def ip_memberships(self) -> dict[str, tuple[list[str], list[str]]]:
        """The IPv4 and IPv6 groups the IP stack joined, per device name."""
        return self._read_memberships()
