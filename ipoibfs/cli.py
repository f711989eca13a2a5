"""The `ipoibfs` command: argument parsing, daemon lifetime, one-line errors."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import NoReturn

from .driver.params import PARAMS, ModuleParams
from .errors import UsageError
from .fabric.device import HCA_PROFILES

PROG = "ipoibfs"
TRY_NEXT = """\
ipoibfs: emulated host up, mirror of the driver's sysfs at {mp}
  ip -d link show ib0
  cat {mp}/class/net/ib0/{{mode,pkey,mtu,address}}
  ip link set ib0 up; cat {mp}/kernel/debug/ipoib/ib0_mcg
  echo 0x8001 > {mp}/class/net/ib0/create_child; ip link show ib0.8001
  echo connected > {mp}/class/net/ib0/mode; cat {mp}/class/net/ib0/mtu
Stop with Ctrl-C (or: ipoibfs umount {mp})."""


def _guid(text: str) -> int:
    try:
        return int(text.replace(":", ""), 16)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid GUID '{text}'") from None


def _ports(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= 16:
        raise argparse.ArgumentTypeError(f"invalid port count '{text}' (1-16)")
    return n


def prog() -> str:
    """The name errors start with: `mount.fuse.ipoibfs` under mount(8), else `ipoibfs`."""
    return os.environ.get("IPOIBFS_PROG") or PROG


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("ipoibfs")
    except PackageNotFoundError:
        return "unknown (not installed)"


class _Version(argparse.Action):
    """--version, reading the installed version only when asked (importlib.metadata costs
    every other command's start)."""

    def __init__(self, option_strings: list[str], dest: str) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="show the version and exit")  # fmt: skip

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(f"{parser.prog} {version()}")
        parser.exit()


class Parser(argparse.ArgumentParser):
    """argparse, except that under mount(8) (IPOIBFS_PROG set by the helper) a bad argument
    is one line and exit status 1 (mount's "incorrect invocation"), without the usage."""

    def error(self, message: str) -> NoReturn:
        if os.environ.get("IPOIBFS_PROG"):
            self.exit(1, f"{prog()}: {message}\n")
        super().error(message)


#: Why each command needs root, said before anything else is tried.
NEEDS_ROOT = {
    "mount": "it creates network interfaces and a FUSE mount",
    "umount": "it stops a daemon run by root",
    "lab": "a lab is network namespaces, FUSE mounts and daemons run by root",
    "exec": "it makes a mount namespace and enters the host's network namespace",
    "shell": "it makes a mount namespace and enters the host's network namespace",
    "link": "it enters the host's network namespace and drives its links",
    "ethtool": "it enters the host's network namespace and drives its links",
    "capture": "a host's capture socket is root's (mode 0600)",
}


def need_root(command: str) -> None:
    if os.geteuid() != 0 and command in NEEDS_ROOT:
        raise UsageError(f"must be run as root: {NEEDS_ROOT[command]}")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG,
        description="A userspace IPoIB driver: live InfiniBand-typed netdevs on an emulated "
        "fabric, and a FUSE mirror of ib_ipoib's sysfs and debugfs files.",
    )
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    m = sub.add_parser(
        "mount",
        help="start an emulated host and mount its sysfs mirror",
        description="Start one emulated host: an HCA with N ports on an embedded single-host "
        "fabric (its own subnet manager, default partition only), an IPoIB interface ib0, "
        "ib1, ... per port, and the mirror of the driver's files at MOUNTPOINT "
        "(class/net, class/infiniband, the HCA's PCI function under devices/ and bus/, "
        "kernel/debug/ipoib, module/). Without "
        "--foreground the command returns once the mount and the interfaces are ready.",
    )
    m.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing directory")
    m.add_argument(
        "--read-only",
        "-r",
        action="store_true",
        help="mount the mirror read-only (mount -o ro): every write fails with EROFS",
    )
    m.add_argument(
        "--netns",
        metavar="NAME",
        help="create the interfaces in this network namespace (as `ip netns` "
        "names it); the mount stays in the caller's mount namespace",
    )
    m.add_argument(
        "--ports",
        type=_ports,
        default=1,
        metavar="N",
        help="number of HCA ports, one ib<N> interface each (default 1)",
    )
    m.add_argument(
        "--foreground",
        action="store_true",
        help="stay in the foreground and log to stderr; Ctrl-C stops the host",
    )
    m.add_argument(
        "--name",
        metavar="HOST",
        help="host name: node_desc and the GUIDs derive from it (default: hostname; "
        "hN gives GUIDs ending in N)",
    )
    m.add_argument(
        "--guid",
        type=_guid,
        metavar="GUID",
        help="node GUID, e.g. 0002:c903:0000:0100 (port GUID = node GUID + port)",
    )
    m.add_argument(
        "--node-desc",
        metavar="TEXT",
        help="the HCA's node description (node_desc, at most 64 bytes; default: "
        "'<name> <HCA>', e.g. 'h1 ipoibfs0')",
    )
    m.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an ib_ipoib module parameter, as modprobe takes it (repeatable): "
        + ", ".join(p.name for p in PARAMS if not p.needs_debug_data),
    )
    m.add_argument(
        "--hca",
        choices=list(HCA_PROFILES),
        default="ipoibfs",
        metavar="PROFILE",
        help="the HCA's identity: " + ", ".join(HCA_PROFILES) + " (default ipoibfs: the "
        "neutral ipoibfs0; connectx6: a ConnectX-6, mlx5_0, driven by mlx5_core)",
    )
    m.add_argument(
        "--no-cm",
        dest="cm",
        action="store_false",
        help="emulate an HCA without connected mode (no RC flag; `connected` "
        "is refused with EINVAL)",
    )
    m.add_argument(
        "--no-srq",
        dest="srq",
        action="store_false",
        help="emulate an HCA without SRQ: at most max_nonsrq_conn_qp passive connected-mode "
        "connections per interface; more are rejected",
    )
    m.add_argument(
        "--no-offload",
        dest="offload",
        action="store_false",
        help="emulate an HCA without stateless offloads (no UD IP checksum, TSO or LRO): "
        "the interfaces advertise none, and `ethtool -K` cannot turn them on",
    )
    m.add_argument(
        "--debug",
        action="store_true",
        help="a driver built with CONFIG_INFINIBAND_IPOIB_DEBUG_DATA: adds the data_debug_level "
        "and cm_data_debug_level parameters and their per-packet messages",
    )
    m.add_argument(
        "--fabric",
        metavar="ADDRESS",
        help="join the fabric of `ipoibfs fabric serve ADDRESS` (a Unix socket path "
        "or HOST:PORT) instead of the embedded single-host one",
    )
    m.add_argument(
        "--key-file",
        metavar="FILE",
        help="the key of a HOST:PORT fabric (the file `fabric serve` made; mode 0600, "
        "owned by root); default: the one `fabric serve HOST:PORT` keeps on this machine, "
        "/run/ipoibfs/fabric-HOST-PORT.key",
    )

    f = sub.add_parser(
        "fabric",
        help="run a subnet manager that several hosts join",
        description="The emulated fabric's subnet manager as its own process.",
    )
    fsub = f.add_subparsers(dest="fabric_command", metavar="COMMAND", required=True)
    fs = fsub.add_parser(
        "serve",
        help="run the subnet manager in the foreground",
        description="Run the subnet manager: it assigns LIDs (it holds LID 1), programs P_Key "
        "tables from an OpenSM partitions.conf, keeps the multicast groups and answers path "
        "queries. Hosts join with `ipoibfs mount --fabric ADDRESS`; their data goes host to "
        "host (Unix datagram sockets, or UDP for a HOST:PORT address), never through here. "
        "SIGHUP re-reads the partitions file.",
    )
    fs.add_argument("address", metavar="ADDRESS", help="a Unix socket path, or HOST:PORT (TCP)")
    fs.add_argument(
        "--partitions",
        metavar="FILE",
        help="OpenSM-format partitions.conf (default: `Default=0x7fff, ipoib : ALL=full ;`)",
    )
    fs.add_argument(
        "--guid2lid",
        metavar="FILE",
        help="keep the LIDs given in FILE (OpenSM's guid2lid format), loaded at start and "
        "saved as they are given, so that a restarted subnet manager gives each port its LID "
        "again and never gives one LID twice",
    )
    fs.add_argument(
        "--topology",
        metavar="FILE",
        help="the switches and cables of an ibnetdiscover topology file (the node with LID 1, "
        "a switch or a CA's port, runs the SM; each CA's ports get the LIDs the file gives "
        "them); default: one switch with every host cabled as it joins",
    )
    fs.add_argument(
        "--key-file",
        metavar="FILE",
        help="HOST:PORT only: the fabric's key, which every host must prove (read, or made "
        "with mode 0600 if missing; default /run/ipoibfs/fabric-HOST-PORT.key, made and "
        "removed by this process)",
    )
    fs.add_argument(
        "--group",
        metavar="NAME",
        help="Unix socket only: besides root, members of group NAME may use the fabric "
        "(its sockets are then 0660 and of that group, else 0600)",
    )

    lab = sub.add_parser(
        "lab",
        help="a fabric and several hosts, each in its own namespace",
        description="Start, inspect and remove a lab on this machine.",
    )
    lsub = lab.add_subparsers(dest="lab_command", metavar="COMMAND", required=True)
    lu = lsub.add_parser(
        "up",
        help="start a fabric and N hosts",
        description="Start a fabric and hosts h1..hN, each in a network namespace of that "
        "name with its mirror at /run/ipoibfs/<host> and ib0 up as 198.18.0.<i>/24 and "
        "fd18::<i>/64 (more than 250 hosts: 198.18.0.0/16 + i for the whole lab). Hosts "
        "start in parallel, forked from one warm parent; progress goes to stderr (on a "
        "terminal one updating line, else a line per phase), a summary to stdout.",
    )
    lu.add_argument("--hosts", type=int, metavar="N",
                    help="how many hosts (1-1000; with --topology, default: its CAs)")  # fmt: skip
    lu.add_argument("--switches", type=int, metavar="K",
                    help="a two-level tree: K leaf switches, the hosts shared out among them "
                    "in order, and one spine (LID 1, where the SM runs) with every leaf's "
                    "last port cabled to it (default: one switch)")  # fmt: skip
    lu.add_argument("--topology", metavar="FILE",
                    help="the switches, cables, GUIDs, node descriptions and LIDs of an "
                    "ibnetdiscover topology file: host i is its i-th CA by LID (with "
                    "--hosts N, the first N; the others stay off, their switch ports Down); "
                    "the node with LID 1, a switch or a CA's port, runs the SM")  # fmt: skip
    lu.add_argument("--partitions", metavar="FILE", help="OpenSM-format partitions.conf")
    lu.add_argument("--ports", type=_ports, default=1, metavar="P", help="HCA ports per host")
    lu.add_argument(
        "--no-cm",
        action="append",
        default=[],
        metavar="HOST",
        help="this host's HCA has no connected mode (repeatable)",
    )
    lu.add_argument(
        "--no-offload",
        action="append",
        nargs="?",
        const="",
        default=[],
        metavar="HOST",
        help="every host's HCA, or this host's (repeatable), offers no stateless offloads "
        "(mount --no-offload)",
    )
    lu.add_argument(
        "--hca",
        action="append",
        default=[],
        metavar="[HOST=]PROFILE",
        help=f"the HCA profile of every host, or of one (repeatable): "
        f"{', '.join(HCA_PROFILES)} (default ipoibfs)",
    )
    lu.add_argument("--debug", action="store_true",
                    help="start every host with `mount --debug` (data-path tracing)")  # fmt: skip
    for name, text in (
        ("down", "stop every host and the fabric, remove the namespaces"),
        (
            "status",
            "a table of hosts, ports, LIDs, GIDs, interfaces, carrier, P_Keys, modes, "
            "and the peers each interface reaches, over RC or UD",
        ),
    ):
        lsub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
    lp = lsub.add_parser(
        "partitions",
        help="swap in a new partitions file (live)",
        description="Replace the fabric's partitions.conf; P_Key tables change "
        "live and interfaces gain or lose carrier.",
    )
    lp.add_argument("file", metavar="FILE")
    # `lab up` runs it: the warm parent its hosts fork from (no help: not listed)
    lsub.add_parser("mount", description="The warm parent of a lab's hosts (lab up runs it).")
    lpo = lsub.add_parser(
        "port",
        help="take a host port's link down, bring it up, or flap it",
        description="Fault injection: the physical link of HOST's port PORT (default 1) goes "
        "down (state DOWN, phys_state Polling; every IPoIB interface on the port loses its "
        "carrier and its joins) or comes back (same LID; the interfaces rejoin and get carrier "
        "again). `flap` does COUNT full down+up cycles of PERIOD seconds each.",
    )
    lpo.add_argument("target", metavar="HOST[:PORT]")
    lpo.add_argument("action", choices=("down", "up", "flap"))
    lpo.add_argument("--period", type=float, default=2.0, metavar="S",
                     help="flap: one down+up cycle, in seconds (default 2)")  # fmt: skip
    lpo.add_argument("--count", type=int, default=1, metavar="N",
                     help="flap: how many cycles (default 1)")  # fmt: skip
    lli = lsub.add_parser(
        "link",
        help="impair what a host port sends: loss, delay, reordering, corruption",
        description="Fault injection, as netem on the port's egress: `loss P%%` loses P%% of "
        "the UD datagrams and CM MADs the port sends (RC messages are retransmitted by the "
        "HCA: they arrive late but in order), `delay MS [JITTER]` holds every message MS "
        "milliseconds (plus or minus JITTER), `reorder P%%` sends P%% ahead of the others, "
        "`corrupt P%%` flips a bit in P%% of the UD payloads, `clear` removes every "
        "impairment. Each command changes one impairment and keeps the others.",
    )
    lli.add_argument("target", metavar="HOST[:PORT]")
    lli.add_argument("kind", choices=("loss", "delay", "reorder", "corrupt", "clear"))
    lli.add_argument("values", nargs="*", metavar="VALUE")
    lsm = lsub.add_parser(
        "sm",
        help="stop, start or restart the lab's subnet manager",
        description="Fault injection: stop the lab's subnet manager (hosts keep their data "
        "paths, and reconnect with back-off), start it again (each port gets its LID again "
        "from its guid2lid; each host registers again and, on the client reregister event, "
        "rejoins its multicast groups), or both.",
    )
    lsm.add_argument("action", choices=("stop", "start", "restart"))
    lki = lsub.add_parser(
        "kill",
        help="kill a host's daemon (a dead host)",
        description="Fault injection: HOST's daemon is killed (SIGKILL): its interfaces go "
        "with it, the subnet manager sees it leave, and its peers' paths and connections to it "
        "time out. Its network namespace stays for `lab start`.",
    )
    lst = lsub.add_parser(
        "start",
        help="start a dead host again, as `lab up` started it",
        description="Start a killed lab host again with the options `lab up` gave it: the same "
        "name, so the same GUIDs, the same LIDs, and its addresses.",
    )
    for p in (lki, lst):
        p.add_argument("host", metavar="HOST")
    for p in (lu, lp, lpo, lli, lsm, lki, lst, *[lsub.choices[n] for n in ("down", "status")]):
        p.add_argument(
            "--prefix",
            default="",
            metavar="P",
            help="name hosts P-h1... (a separate lab; tests use their own)",
        )

    u = sub.add_parser(
        "umount",
        help="stop the host behind a mount",
        description="Stop the emulated host mounted at MOUNTPOINT: its interfaces are "
        "removed, the mirror is unmounted and the daemon exits.",
    )
    u.add_argument("mountpoint", metavar="MOUNTPOINT")

    host_help = "a lab host name (h1, or P-h1 in a lab with a prefix) or an ipoibfs mountpoint"
    e = sub.add_parser(
        "exec",
        help="run a program as if on an emulated host",
        description="Run COMMAND in HOST's network namespace and in a private mount namespace "
        "where /sys shows HOST's IPoIB interfaces, class/infiniband, kernel/debug/ipoib and "
        "module/ib_ipoib next to the real entries, and where `ip` and `ethtool` know IPoIB "
        "links. Scripts written for kernel IPoIB run unchanged. Exit status, stdin, stdout "
        "and stderr pass through; nothing is mounted in the caller's namespaces.",
    )
    name_help = (
        "the host name its programs see (`hostname`, a UTS namespace of their own; "
        "default: the lab host's name, or the name the host was mounted with)"
    )
    e.add_argument("--name", metavar="NAME", help=name_help)
    e.add_argument("host", metavar="HOST", help=host_help)
    e.add_argument("argv", metavar="COMMAND [ARGS]", nargs=argparse.REMAINDER,
                   help="the program and its arguments (after `--`)")  # fmt: skip
    sh = sub.add_parser(
        "shell",
        help="an interactive shell on an emulated host",
        description="`ipoibfs exec HOST -- $SHELL`: a shell that sees HOST's /sys, ip and ethtool.",
    )
    sh.add_argument("--name", metavar="NAME", help=name_help + "; the prompt shows it")
    sh.add_argument("host", metavar="HOST", help=host_help)
    lk = sub.add_parser(
        "link",
        help="`ip link` for a host's IPoIB links (add/set/del/show)",
        description="`ip [OPTIONS] link ARGS` run for HOST, with the ipoib link kind of "
        "ib_ipoib's rtnl_link_ops: `ipoibfs link h1 add link ib0 name ib0.8001 type ipoib "
        "pkey 0x8001 [mode datagram|connected] [umcast 0|1]`, `set DEV type ipoib mode "
        "connected`, `del DEV`, `-d show`. Anything else goes to the real ip.",
    )
    lk.add_argument("host", metavar="HOST", help=host_help)
    lk.add_argument("argv", metavar="[OPTIONS] ARGS", nargs=argparse.REMAINDER,
                    help="as after `ip link` (options such as -d, -j first)")  # fmt: skip
    et = sub.add_parser(
        "ethtool",
        help="ethtool for a host's IPoIB interfaces",
        description="ethtool run for HOST, answering for IPoIB interfaces as ib_ipoib's "
        "ethtool_ops do: plain (speed, link), -i, -S, -c, -C rx-usecs N rx-frames N, and "
        "[--json] -k and -K NAME on|off ... on the driver's features.",
    )
    et.add_argument("host", metavar="HOST", help=host_help)
    et.add_argument("argv", metavar="ARGS", nargs=argparse.REMAINDER, help="as for ethtool")
    from .capture import add_parser as add_capture_parser

    add_capture_parser(sub)
    return parser


def cmd_mount(args: argparse.Namespace) -> int:
    from .fabric.service import tcp_address
    from .host import Host, HostConfig, check_environment, prepare_mountpoint
    from .state import check_host_name, check_netns_name

    check_environment()
    if args.name is not None:
        check_host_name(args.name)
    if args.netns is not None:
        check_netns_name(args.netns)
    if args.node_desc is not None and len(args.node_desc.encode()) > 64:
        raise UsageError("--node-desc: at most 64 bytes (IB_DEVICE_NODE_DESC_MAX)")
    if args.key_file and not (args.fabric and tcp_address(args.fabric)):
        raise UsageError("--key-file is for a HOST:PORT fabric (--fabric HOST:PORT)")
    config = HostConfig(
        mountpoint=os.path.realpath(args.mountpoint),
        netns=args.netns,
        ports=args.ports,
        params=ModuleParams.parse_assignments(args.param),
        cm=args.cm,
        guid=args.guid,
        fabric=args.fabric,
        key_file=args.key_file,
        srq=args.srq,
        debug=args.debug,
        hca=args.hca,
        offload=args.offload,
        node_desc=args.node_desc,
    )
    if args.name:
        config.name = args.name
    ModuleParams(config.params, debug_data=config.debug)  # refuse bad ones before forking
    config.mountpoint = prepare_mountpoint(config.mountpoint)
    _check_state_name(config.mountpoint)
    if config.fabric:
        _remove_dead_data_sockets(config.fabric, config.name)
    if args.foreground:
        return _run_foreground(Host(config), config.mountpoint, args.read_only)
    return _run_daemon(config, args.read_only)


def _remove_dead_data_sockets(fabric: str, name: str) -> None:
    """The data sockets a killed daemon of this host left next to a Unix fabric socket
    (`<fabric>.<host>.<pid>.p<N>`, made by fabric/client.py): those nobody is bound to."""
    import glob

    from .fabric.service import tcp_address
    from .state import remove_dead_sockets

    if not tcp_address(fabric):
        remove_dead_sockets(glob.glob(glob.escape(f"{os.path.abspath(fabric)}.{name}.") + "*"))


def _check_state_name(mountpoint: str) -> None:
    """The state files are named after the mountpoint: refuse one too long for a file name."""
    from .state import state_file

    if len(os.path.basename(state_file(mountpoint, "log.1"))) > 255:
        raise UsageError(f"mount point {mountpoint}: path too long for its state files")


def _run_foreground(host, mountpoint: str, read_only: bool = False) -> int:
    import trio

    from .host import Mount

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(host.run)
            if read_only:
                Mount.make_read_only(mountpoint)
            print(TRY_NEXT.format(mp=mountpoint), file=sys.stderr, flush=True)

    trio.run(main)
    return 0


def _run_daemon(config, read_only: bool = False) -> int:
    """Fork a daemon; return once it reports ready (0) or its error (1). Its log is
    /run/ipoibfs/daemons/<mountpoint>.log, rotated at state.LOG_LIMIT to `.log.1`."""
    from .host import Host, Mount
    from .state import STATE_DIR, open_dir, open_log, state_file

    os.close(open_dir(STATE_DIR))  # made 0755, or refused, before the fork
    log_path = state_file(config.mountpoint, "log")
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_fd)
        with os.fdopen(read_fd) as status:
            message = status.read().strip()
        if message == "ready":
            return 0
        if not message:
            message = f"the daemon exited before it was ready (see {log_path})"
        raise UsageError(message)

    os.close(read_fd)
    os.setsid()
    log = open_log(log_path)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log  # Python's writes go through the rotation check
    code = 1
    try:
        import trio

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                await nursery.start(Host(config, log_stream=log).run)
                if read_only:
                    Mount.make_read_only(config.mountpoint)
                print(f"ipoibfs: host up at {config.mountpoint}", file=log, flush=True)
                os.write(write_fd, b"ready\n")
                os.close(write_fd)

        trio.run(main)
        code = 0
    except BaseException as e:  # reported to the waiting parent; details go to the log
        found = usage_error(e)
        if found is None:
            import traceback

            traceback.print_exc(file=log)
        message = str(found) if found else f"daemon failed: {e!r} (see {log_path})"
        try:
            os.write(write_fd, f"{message}\n".encode())
        except OSError:
            pass
    finally:
        log.flush()
        os._exit(code)


def cmd_umount(args: argparse.Namespace) -> int:
    """Stop the daemon behind MOUNTPOINT. A pid is acted on only while its daemon holds the
    pid file's lock (state.running_daemon): after a SIGKILL, the stale mount and the dead
    daemon's files are removed, and whatever process has its pid now is left alone."""
    from .namespaces import is_stale_mount, unmount_lazy
    from .state import remove_stale_state, running_daemon

    mountpoint = os.path.realpath(args.mountpoint)
    daemon = running_daemon(mountpoint)
    if daemon is None:
        stale = remove_stale_state(mountpoint)
        if is_stale_mount(mountpoint):
            unmount_lazy(mountpoint)
            return 0
        if stale:
            return 0  # a dead daemon's pid file, its mount already gone: cleaned
        raise UsageError(f"{mountpoint}: no ipoibfs host is mounted there")
    with daemon:
        daemon.signal(signal.SIGTERM)
        if daemon.wait(15):
            return 0
    raise UsageError(f"{mountpoint}: the daemon (pid {daemon.pid}) did not stop within 15 s")


def cmd_fabric(args: argparse.Namespace) -> int:
    import trio

    from .fabric.service import (
        FabricService,
        create_or_read_key,
        default_key_file,
        tcp_address,
    )
    from .state import remove_file

    key, made, key_file = None, None, None
    if tcp_address(args.address):
        key_file = args.key_file or default_key_file(args.address)
        key, created = create_or_read_key(key_file)
        made = key_file if created and not args.key_file else None
    elif args.key_file:
        raise UsageError("--key-file is for a HOST:PORT fabric; a Unix one checks who connects")
    try:
        service = FabricService(args.address, args.partitions, guid2lid_file=args.guid2lid,
                                topology_file=args.topology, key=key,
                                key_file=key_file if key else None, group=args.group)  # fmt: skip

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                await nursery.start(service.serve)
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        break

        trio.run(main)
    finally:
        if made:  # a key this process made for itself goes with it
            remove_file(made)
    return 0


def cmd_lab(args: argparse.Namespace) -> int:
    from . import lab

    if args.lab_command == "up":
        progress = lab.Progress("lab up", 0, "hosts started", sys.stderr)
        up = lab.lab_up(args.hosts, args.prefix, args.partitions, args.ports, args.no_cm,
                        args.debug, hca=args.hca, no_offload=args.no_offload,
                        switches=args.switches, topology=args.topology,
                        progress=progress)  # fmt: skip
        progress.end()
        n = len(up.hosts)
        print(f"lab up: {lab.host_list([h.name for h in up.hosts])}; fabric at "
              f"{up.fabric_address} ({n} host(s) in {progress.elapsed():.1f} s)")  # fmt: skip
        if n > lab.SMALL_LAB:
            print(f"  addresses: {lab.addressing(n)}")
        last = lab.host_addresses(n, n)[0].split("/")[0]
        print(f"  ip netns exec {up.hosts[0].name} ping {last}")
        print(f"  cat {up.hosts[0].mountpoint}/kernel/debug/ipoib/ib0_mcg")
    elif args.lab_command == "down":
        progress = lab.Progress("lab down", 0, "hosts stopped", sys.stderr)
        down = lab.lab_down(args.prefix, progress)
        progress.end()
        print(f"lab down: removed {len(down.hosts)} host(s) and the fabric "
              f"in {progress.elapsed():.1f} s")  # fmt: skip
    elif args.lab_command == "mount":
        from . import host  # noqa: F401  (the warm part: what every forked daemon runs)

        return lab.serve_hosts(lambda argv: cmd_mount(build_parser().parse_args(argv)),
                               usage_error)  # fmt: skip
    elif args.lab_command == "status":
        print(lab.lab_status(args.prefix))
    elif args.lab_command == "partitions":
        lab.lab_partitions(args.prefix, args.file)
    elif args.lab_command == "port":
        from .faults import lab_port

        print(lab_port(args.prefix, args.target, args.action, args.period, args.count))
    elif args.lab_command == "link":
        from .faults import lab_link

        print(lab_link(args.prefix, args.target, args.kind, args.values))
    elif args.lab_command in ("sm", "kill", "start"):
        from . import faults

        if args.lab_command == "sm":
            print(faults.lab_sm(args.prefix, args.action))
        else:
            fault = faults.lab_kill if args.lab_command == "kill" else faults.lab_start
            print(fault(args.prefix, args.host))
    return 0


def _argv(args: argparse.Namespace) -> list[str]:
    return args.argv[1:] if args.argv[:1] == ["--"] else args.argv


def cmd_exec(args: argparse.Namespace) -> int:
    from . import hostexec

    argv = _argv(args) if args.command == "exec" else [os.environ.get("SHELL", "/bin/sh")]
    if not argv:
        raise UsageError("exec: no command given (ipoibfs exec HOST -- COMMAND [ARGS])")
    return hostexec.run(args.host, argv, args.name, shell=args.command == "shell")


def cmd_frontend(args: argparse.Namespace) -> int:
    from . import frontends, fronthost, hostexec

    mountpoint, netns = hostexec.resolve(args.host)
    tool = "ip" if args.command == "link" else "ethtool"
    host = fronthost.Host(mountpoint, ["nsenter", f"--net={netns}", tool])
    argv = _argv(args)
    if tool == "ip":
        first = next((i for i, a in enumerate(argv) if not a.startswith("-")), len(argv))
        options, argv = argv[:first], argv[first:]
        return frontends.ip_main(host, [*options, "link", *argv])
    return frontends.ethtool_main(host, argv)


def cmd_capture(args: argparse.Namespace) -> int:
    from . import capture

    return capture.main(args)


COMMANDS = {
    "mount": cmd_mount, "umount": cmd_umount, "fabric": cmd_fabric, "lab": cmd_lab,
    "exec": cmd_exec, "shell": cmd_exec, "link": cmd_frontend, "ethtool": cmd_frontend,
    "capture": cmd_capture,
}  # fmt: skip


def usage_error(exc: BaseException) -> UsageError | None:
    """The UsageError inside an exception (trio wraps task errors in groups)."""
    if isinstance(exc, UsageError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = usage_error(inner)
            if found is not None:
                return found
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        need_root(args.command)
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        print(
            f"{prog()}: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""),
            file=sys.stderr,
        )
        return 1
    except BaseException as e:
        found = usage_error(e)
        if found is None:
            raise
        print(f"{prog()}: {found}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
