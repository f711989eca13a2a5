"""The HCA profile, the subnet manager and the module parameters."""

from __future__ import annotations

import errno

import pytest

from ipoibfs import wire
from ipoibfs.driver.params import ModuleParams
from ipoibfs.errors import KernelError, UsageError
from ipoibfs.fabric.device import HcaDevice, HcaProfile, node_guid_for
from ipoibfs.fabric.sm import SubnetManager


def test_guids_are_deterministic():
    assert node_guid_for("h1") == 0x0002C90300000100
    assert node_guid_for("lab-h12") == 0x0002C90300000C00
    assert node_guid_for("somehost") == node_guid_for("somehost")
    dev = HcaDevice("h1", HcaProfile(ports=2))
    assert [p.guid for p in dev.ports] == [0x0002C90300000101, 0x0002C90300000102]
    assert dev.ports[0].gid == bytes.fromhex("fe800000000000000002c90300000101")


def test_port_rate_text():
    dev = HcaDevice("h1", HcaProfile())
    assert dev.ports[0].rate_text == "100 Gb/sec (4X EDR)"
    assert HcaDevice("h1", HcaProfile(speed="SDR", width=1)).ports[0].rate_text == (
        "2.5 Gb/sec (1X SDR)"
    )


def test_sm_programs_lids_and_the_default_partition():
    sm = SubnetManager()
    dev = HcaDevice("h1", HcaProfile(ports=2))
    for port in dev.ports:
        sm.attach(port)
    assert [p.lid for p in dev.ports] == [2, 3]
    assert dev.ports[0].sm_lid == 1 and dev.ports[0].state == 4
    assert dev.ports[0].pkeys[:2] == [0xFFFF, 0]
    assert dev.ports[0].pkey_index(0xFFFF) == 0
    assert dev.ports[0].pkey_index(0x7FFF) == 0
    assert dev.ports[0].pkey_index(0x8001) is None
    (group,) = sm.groups.values()
    assert group.mgid == wire.broadcast_mgid(0xFFFF) and group.mtu == 4 and group.qkey == 0x0B1B


def test_sm_joins_create_and_delete_groups():
    sm = SubnetManager()
    port = HcaDevice("h1", HcaProfile()).ports[0]
    sm.attach(port)
    bcast = wire.broadcast_mgid(0xFFFF)
    member = sm.join(port.lid, 0x48, bcast, 0xFFFF, send_only=False, create=False)
    assert member.mtu == 2048 and member.mlid == 0xC000
    mgid = wire.ipv4_mc_mgid("224.0.0.1", wire.broadcast_addr(0xFFFF))
    with pytest.raises(KernelError) as e:
        sm.join(port.lid, 0x48, mgid, 0xFFFF, send_only=False, create=False)
    assert e.value.errno == errno.ENOENT
    sm.join(port.lid, 0x48, mgid, 0xFFFF, send_only=False, create=True)
    assert mgid in sm.groups
    sm.leave(port.lid, 0x48, mgid)
    assert mgid not in sm.groups  # the last member left
    sm.leave(port.lid, 0x48, bcast)
    assert bcast in sm.groups  # broadcast groups stay, as OpenSM keeps them
    with pytest.raises(KernelError):
        sm.join(port.lid, 0x48, wire.broadcast_mgid(0x8001), 0x8001, send_only=False, create=True)


def test_module_parameters_are_normalised_as_at_load():
    p = ModuleParams({"send_queue_size": 100, "recv_queue_size": 3, "max_nonsrq_conn_qp": -5})
    assert p["send_queue_size"] == 128
    assert p["recv_queue_size"] == 4
    assert p["max_nonsrq_conn_qp"] == 0
    assert ModuleParams({"send_queue_size": 100000})["send_queue_size"] == 8192
    assert [s.name for s in ModuleParams().specs] == [
        "send_queue_size", "recv_queue_size", "debug_level", "mcast_debug_level",
        "max_nonsrq_conn_qp",
    ]  # fmt: skip
    assert "data_debug_level" in [s.name for s in ModuleParams(debug_data=True).specs]


def test_module_parameter_assignments():
    assert ModuleParams.parse_assignments(["debug_level=1", "send_queue_size=0x100"]) == {
        "debug_level": 1, "send_queue_size": 256}  # fmt: skip
    with pytest.raises(UsageError, match="unknown parameter 'nope'"):
        ModuleParams.parse_assignments(["nope=1"])
    with pytest.raises(UsageError, match="'x' invalid for parameter 'debug_level'"):
        ModuleParams.parse_assignments(["debug_level=x"])
