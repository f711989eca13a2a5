"""Hosts joined to a fabric by HOST:PORT, as across machines: the SM over TCP, data over UDP.

The daemons and the subnet manager run in a carrier namespace of the test's own (entered
with nsenter, which keeps the mount namespace so the mirrors stay visible), on an address
assigned there; the interfaces live in one namespace per host.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import IPOIBFS, Host, Netns, cleanup_mount, run, wait_for, write
from .test_fabric import tcp_transfer

CARRIER_IP = "198.18.0.254"
SM_PORT = 4791


class TcpLab:
    def __init__(self, prefix: str, tmp: Path) -> None:
        self.prefix = prefix
        self.tmp = tmp
        self.carrier = Netns(f"{prefix}-c")

    def name(self, i: int) -> str:
        return f"{self.prefix}-h{i}"

    def host(self, i: int) -> Host:
        return Host(Netns(self.name(i)), self.tmp / self.name(i))

    def in_carrier(self, *cmd: str) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.carrier.name}", *cmd]

    def ping(self, src: int, dst: str, *args: str) -> bool:
        cmd = ["ping", "-c", "2", "-W", "2", "-i", "0.2", *args, dst]
        return self.host(src).netns.exec(*cmd, check=False).returncode == 0


@pytest.fixture
def tcp_lab(tmp_path: Path) -> Iterator[TcpLab]:
    lab = TcpLab(f"tt{uuid.uuid4().hex[:6]}", tmp_path)
    sm = None
    try:
        run("ip", "netns", "add", lab.carrier.name)
        lab.carrier.ip("link", "set", "lo", "up")
        lab.carrier.ip("addr", "add", f"{CARRIER_IP}/32", "dev", "lo")
        sm = subprocess.Popen(lab.in_carrier(IPOIBFS, "fabric", "serve",
                                             f"{CARRIER_IP}:{SM_PORT}"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        wait_for(lambda: f":{SM_PORT}" in lab.carrier.exec("ss", "-ltn").stdout, what="SM up")
        for i in (1, 2):
            h = lab.host(i)
            run("ip", "netns", "add", h.netns.name)
            h.mp.mkdir()
            run(*lab.in_carrier(IPOIBFS, "mount", "--netns", h.netns.name, "--name", f"h{i}",
                                "--fabric", f"{CARRIER_IP}:{SM_PORT}", str(h.mp)))  # fmt: skip
            h.netns.ip("link", "set", "lo", "up")
            h.netns.ip("addr", "add", f"198.18.0.{i}/24", "dev", "ib0")
            h.up()
            h.wait_carrier()
        yield lab
    finally:
        for i in (1, 2):
            h = lab.host(i)
            if h.mp.exists():
                run(IPOIBFS, "umount", str(h.mp), check=False)
                cleanup_mount(h.mp)
            run("ip", "netns", "del", h.netns.name, check=False)
        if sm is not None:
            sm.kill()
            sm.wait()
        run("ip", "netns", "del", lab.carrier.name, check=False)


def test_large_messages_cross_a_udp_wire_in_both_modes(tcp_lab):
    lab = tcp_lab
    # Datagram mode: LSO sends of up to 64 KiB are bigger than a UDP datagram.
    tcp_transfer(lab, 2, 1, "198.18.0.2", 16 << 20)
    for i in (1, 2):
        assert write(lab.host(i).net() / "mode", "connected\n") == 0
    # Connected mode: RC messages of up to 65520 bytes, no shared queues across machines.
    assert lab.ping(1, "198.18.0.2", "-s", "65000", "-M", "do")  # two UDP segments
    tcp_transfer(lab, 2, 1, "198.18.0.2", 16 << 20)
    assert "RC:          yes" in lab.host(1).debugfs("ib0_path").read_text()
