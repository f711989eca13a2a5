"""Hosts joined to a fabric by HOST:PORT, as across machines: the SM over TCP, data over UDP.

The daemons and the subnet manager run in a carrier namespace of the test's own (entered
with nsenter, which keeps the mount namespace so the mirrors stay visible), on an address
assigned there; the interfaces live in one namespace per host.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import TcpFabric, tcp_fabric, write
from .test_fabric import tcp_transfer

SM_PORT = 4791


@pytest.fixture
def tcp_lab(tmp_path: Path) -> Iterator[TcpFabric]:
    with tcp_fabric(f"tt{uuid.uuid4().hex[:6]}", tmp_path, SM_PORT) as lab:
        yield lab


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
