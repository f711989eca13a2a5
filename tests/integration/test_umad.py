"""The umad surface under `ipoibfs exec` and the local port's agents: the stock
infiniband-diags tools (smpquery, perfquery, sminfo) against a lab host's own port, checked
against its sysfs, and the umad files' ioctl/errno behaviour from Python.

One lab serves the whole module (two hosts, h2 a limited member of a second partition).
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import json
import os
import re
import select
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from ipoibfs.wire.mad import common, sa, smp, umad

from .conftest import GUID, IPOIBFS, LabHandle, lab_handle, read, run, wait_for

pytestmark = pytest.mark.skipif(
    not os.path.exists("/usr/sbin/smpquery"), reason="infiniband-diags is not installed"
)

#: h2 is a limited member of green, h1 a full one
PARTITIONS = (
    "Default=0x7fff, ipoib : ALL=full ;\n"
    f"green=0x0003, ipoib, defmember=limited : ALL, {GUID.format(1)}=full ;\n"
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[LabHandle]:
    conf = tmp_path_factory.mktemp("umad") / "partitions.conf"
    conf.write_text(PARTITIONS)
    with lab_handle("u") as handle:
        handle.up(2, "--partitions", str(conf))
        yield handle


def tool(lab: LabHandle, i: int, *cmd: str, check: bool = True):
    result = run(IPOIBFS, "exec", lab.name(i), "--", *cmd, check=False)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def fields(text: str) -> dict[str, str]:
    """The `Name:.....value` lines the tools print."""
    return {m[1]: m[2] for m in re.finditer(r"^(\w+):\.+(.*)$", text, re.M)}


def sysfs(lab: LabHandle, i: int, *parts: str) -> str:
    value = read(lab.host(i).hca(*parts))
    assert isinstance(value, str), os.strerror(value)
    return value.strip()


def lid(lab: LabHandle, i: int) -> int:
    return int(sysfs(lab, i, "ports", "1", "lid"), 16)


def guid(text: str) -> int:
    return int(text.replace(":", ""), 16)


def test_smpquery_answers_from_the_port(lab):
    own = lid(lab, 1)
    node_guid = guid(sysfs(lab, 1, "node_guid"))
    port_gid = sysfs(lab, 1, "ports", "1", "gids", "0")
    port_guid = guid(port_gid.split(":", 4)[4])
    for args in (("nodeinfo", str(own)), ("-D", "nodeinfo", "0")):
        info = fields(tool(lab, 1, "smpquery", *args).stdout)
        assert int(info["Guid"], 16) == node_guid
        assert int(info["SystemGuid"], 16) == guid(sysfs(lab, 1, "sys_image_guid"))
        assert int(info["PortGuid"], 16) == port_guid
        assert info["NodeType"] == "Channel Adapter" and info["LocalPort"] == "1"
    port = fields(tool(lab, 1, "smpquery", "portinfo", str(own)).stdout)
    assert int(port["Lid"]) == own
    assert int(port["SMLid"]) == int(sysfs(lab, 1, "ports", "1", "sm_lid"), 16)
    assert int(port["CapMask"], 16) == int(sysfs(lab, 1, "ports", "1", "cap_mask"), 16)
    assert port["LinkState"] == "Active" and port["MtuCap"] == "4096"
    assert port["LinkWidthActive"] == "4X"
    assert int(port["GidPrefix"], 16) == guid(port_gid[:19])
    desc = tool(lab, 1, "smpquery", "nodedesc", str(own)).stdout
    assert desc.split(":.", 1)[1].lstrip(".").strip() == sysfs(lab, 1, "node_desc")


def pkeys_shown(text: str) -> list[int]:
    values = re.findall(r"0x[0-9a-f]{4}", text)
    return [int(v, 16) for v in values if int(v, 16)]


def test_smpquery_pkeys_show_the_partitions(lab):
    shown = {}
    for i in (1, 2):
        table = [int(sysfs(lab, i, "ports", "1", "pkeys", str(k)), 16) for k in range(8)]
        out = tool(lab, i, "smpquery", "pkeys", str(lid(lab, i))).stdout
        assert pkeys_shown(out) == [p for p in table if p], out
        assert "128 pkeys capacity for this port" in out
        shown[i] = set(pkeys_shown(out))
    assert {0xFFFF, 0x8003} <= shown[1]  # a full member of green
    assert 0x0003 in shown[2] and 0x8003 not in shown[2]  # limited only


def test_perfquery_counts_the_traffic_and_resets(lab):
    def counters(*args: str) -> dict[str, int]:
        out = tool(lab, 1, "perfquery", *args).stdout
        return {k: int(v) for k, v in fields(out).items() if v.isdigit()}

    before = counters()
    assert lab.ping(1, "198.18.0.2", count=5)
    after = counters()
    assert after["PortXmitPkts"] - before["PortXmitPkts"] >= 5
    assert after["PortRcvPkts"] - before["PortRcvPkts"] >= 5
    assert after["PortXmitData"] - before["PortXmitData"] >= 5 * 84 // 4  # ICMP echo: 84 bytes

    def tx_bytes() -> int:
        return int(read(lab.host(1).net() / "statistics" / "tx_bytes"))

    # the PMA shows the driver's count (the stack may send an IGMP or MLD report meanwhile)
    tx, data, tx_then = tx_bytes(), counters()["PortXmitData"], tx_bytes()
    assert tx // 4 <= data <= tx_then // 4, (tx, data, tx_then)
    tool(lab, 1, "perfquery", "-R")
    reset = counters()
    assert reset["PortXmitPkts"] < 3 and reset["PortXmitData"] < 100, reset
    assert tx_bytes() >= tx  # not zeroed
    ext = counters("-x")
    assert ext["PortXmitPkts"] < 3 and ext["PortUnicastXmitPkts"] < 3


def test_perfquery_counts_what_an_iperf3_run_sent(lab):
    """PortXmitData (4-octet words) grows by the run's bytes and their headers, and
    PortXmitPkts by the packets the interface counted sending (one per LSO super-packet,
    as the driver counts them)."""

    def counters() -> dict[str, int]:
        out = tool(lab, 1, "perfquery", "-x").stdout
        return {k: int(v) for k, v in fields(out).items() if v.isdigit()}

    def tx_packets() -> int:
        return int(read(lab.host(1).net() / "statistics" / "tx_packets"))

    server = subprocess.Popen(["ip", "netns", "exec", lab.name(2), "iperf3", "-s", "-1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for(lambda: "5201" in lab.host(2).netns.exec("ss", "-ltn").stdout, what="iperf3")
        before, packets = counters(), tx_packets()
        run_ = lab.host(1).netns.exec("iperf3", "-c", "198.18.0.2", "-n", "20M", "-J")
        after, packets_after = counters(), tx_packets()
    finally:
        server.wait(timeout=30)
    # iperf3 ends before its last data is acknowledged: what h2 had received by then crossed
    # the port for sure, and nothing beyond what h1 sent (with its headers) can have
    end = json.loads(run_.stdout)["end"]
    sent, received = end["sum_sent"]["bytes"], end["sum_received"]["bytes"]
    words = after["PortXmitData"] - before["PortXmitData"]
    assert received <= words * 4 <= sent * 1.1 + 100_000, (received, words * 4, sent)
    pkts = after["PortXmitPkts"] - before["PortXmitPkts"]
    assert packets_after - packets - 10 <= pkts <= packets_after - packets + 10
    assert pkts > 100


def test_sysfs_counters_are_the_pmas_and_follow_its_reset(lab):
    """ports/1/counters/ as the kernel lays it out for a PMA with extended counters, every
    read a PMA query: the same values perfquery shows, and perfquery -R resets both."""
    counters = Path(lab.host(1).hca("ports", "1", "counters"))
    assert sorted(p.name for p in counters.iterdir()) == sorted([
        "symbol_error", "link_error_recovery", "link_downed", "port_rcv_errors",
        "port_rcv_remote_physical_errors", "port_rcv_switch_relay_errors", "port_xmit_discards",
        "port_xmit_constraint_errors", "port_rcv_constraint_errors",
        "local_link_integrity_errors", "excessive_buffer_overrun_errors", "VL15_dropped",
        "port_xmit_data", "port_rcv_data", "port_xmit_packets", "port_xmit_wait",
        "port_rcv_packets", "unicast_rcv_packets", "unicast_xmit_packets",
        "multicast_rcv_packets", "multicast_xmit_packets"])  # fmt: skip
    assert oct(os.stat(counters / "port_xmit_data").st_mode & 0o777) == "0o444"

    def sysfs_count(name: str) -> int:
        return int((counters / name).read_text())

    assert lab.ping(1, "198.18.0.2", count=3)
    before = sysfs_count("port_xmit_packets")
    shown = fields(tool(lab, 1, "perfquery", "-x").stdout)
    after = sysfs_count("port_xmit_packets")
    assert before <= int(shown["PortXmitPkts"]) <= after  # the stack may send a report meanwhile

    def tx_bytes() -> int:
        return int(read(lab.host(1).net() / "statistics" / "tx_bytes"))

    data, tx = sysfs_count("port_xmit_data"), tx_bytes()
    assert lab.ping(1, "198.18.0.2", count=2)
    sent, now, sent_then = tx_bytes() - tx, sysfs_count("port_xmit_data"), tx_bytes() - tx
    assert sent // 4 - 1 <= now - data <= sent_then // 4 + 1  # 4-octet words, as the PMA counts
    tool(lab, 1, "perfquery", "-R")
    assert sysfs_count("port_xmit_packets") < 3 and sysfs_count("symbol_error") == 0


def test_another_hosts_port_answers_over_the_fabric(lab):
    """h1's smpquery and perfquery reach h2's SMA and PMA as MADs on QP0 and QP1."""
    other = lid(lab, 2)
    info = fields(tool(lab, 1, "smpquery", "nodeinfo", str(other)).stdout)
    assert int(info["Guid"], 16) == guid(sysfs(lab, 2, "node_guid"))
    port = fields(tool(lab, 1, "smpquery", "portinfo", str(other)).stdout)
    assert int(port["Lid"]) == other and port["LinkState"] == "Active"
    out = tool(lab, 1, "smpquery", "pkeys", str(other)).stdout
    assert 0x0003 in pkeys_shown(out) and 0x8003 not in pkeys_shown(out)  # h2's own table
    desc = tool(lab, 1, "smpquery", "nodedesc", str(other)).stdout
    assert desc.split(":.", 1)[1].lstrip(".").strip() == sysfs(lab, 2, "node_desc")
    counts = fields(tool(lab, 1, "perfquery", str(other), "1").stdout)
    received = int(read(lab.host(2).net() / "statistics" / "rx_packets"))
    assert 0 < int(counts["PortRcvPkts"]) <= received + 5, (counts, received)


def test_ibping_between_hosts(lab):
    cmd = [IPOIBFS, "exec", lab.name(2), "--", "ibping", "-S"]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # the server is up once it answers (its agent registered with the MAD layer)
        wait_for(lambda: " 0% packet loss" in tool(lab, 1, "ibping", "-c", "1", "-t", "300",
                                                   str(lid(lab, 2)), check=False).stdout,
                 timeout=10, what="ibping -S answering")  # fmt: skip
        out = tool(lab, 1, "ibping", "-c", "3", str(lid(lab, 2))).stdout
        by_guid = tool(lab, 1, "ibping", "-c", "1", "-G", GUID.format(2)).stdout  # SA path
        assert f"(Lid {lid(lab, 2)})" in by_guid and " 0% packet loss" in by_guid
        assert re.search(rf"Pong from {lab.name(2)}\S* \(Lid {lid(lab, 2)}\): time [\d.]+ ms", out)
        assert "3 packets transmitted, 3 received, 0% packet loss" in out
    finally:
        server.kill()
        server.wait()
    # nobody takes the vendor class now: ib_mad answers UNSUPPORTED_METHOD_ATTRIB at once
    out = tool(lab, 1, "ibping", "-c", "1", str(lid(lab, 2))).stdout
    assert "1 packets transmitted, 0 received, 100% packet loss" in out


def test_sminfo_and_saquery_reach_the_subnet_manager(lab):
    out = tool(lab, 1, "sminfo").stdout
    sm_lid = int(sysfs(lab, 1, "ports", "1", "sm_lid"), 16)
    assert re.match(rf"sminfo: sm lid {sm_lid} sm guid 0x2c90300000001, activity count \d+ "
                    r"priority 0 state 3 SMINFO_MASTER$", out), out  # fmt: skip
    # one NodeRecord, by LID: h2's node as h2's own SMA shows it
    rec = tool(lab, 1, "saquery", str(lid(lab, 2))).stdout
    assert f"lid.....................{lid(lab, 2)}" in rec
    assert f"port_guid...............0x{guid(sysfs(lab, 2, 'node_guid')) + 1:016x}" in rec
    assert f"NodeDescription.........{sysfs(lab, 2, 'node_desc')}" in rec


def test_a_lid_without_a_port_times_out(lab):
    start = time.monotonic()
    result = tool(lab, 1, "smpquery", "-t", "200", "nodeinfo", "0x50", check=False)
    said = result.stdout + result.stderr  # iberror goes to stdout, ibwarn to stderr
    assert result.returncode == 255
    assert "smpquery: iberror: failed: operation nodeinfo: node info query failed" in said
    # libibmad's poll and the kernel's send timeout both run `-t` ms: whichever ends first,
    # umad_recv fails ("recv failed: Connection timed out") or returns the timed-out send.
    assert "_do_madrpc failed" in said
    assert "dport (Lid 80)" in said
    assert time.monotonic() - start >= 0.2


# ---------------------------------------------------------------- the files from Python


def dev_file(lab: LabHandle, name: str, host: int = 1) -> str:
    from ipoibfs.state import state_file

    return f"{state_file(str(lab.host(host).mp), 'dev')}/{name}"


def ioctl(fd: int, cmd: int, arg: bytes | int = 0) -> bytes | int:
    if isinstance(arg, bytes):
        buf = bytearray(arg)
        fcntl.ioctl(fd, cmd, buf)
        return bytes(buf)
    return fcntl.ioctl(fd, cmd, arg)


def register(fd: int, mgmt_class: int, version: int = 1, qpn: int = 0, **kw) -> int:
    req = umad.RegReq(qpn=qpn, mgmt_class=mgmt_class, mgmt_class_version=version, **kw)
    out = ioctl(fd, umad.IB_USER_MAD_REGISTER_AGENT, req.pack())
    assert isinstance(out, bytes)
    return umad.RegReq.unpack(out).id


def wait_read(fd: int, size: int = 320, timeout: float = 3.0) -> bytes:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    assert poller.poll(timeout * 1000), "no MAD came"
    return os.read(fd, size)


def test_umad_file_errors_answers_and_timeouts(lab):
    fd = os.open(dev_file(lab, "umad0"), os.O_RDWR | os.O_NONBLOCK)
    try:
        ioctl(fd, umad.IB_USER_MAD_ENABLE_PKEY)
        agent = register(fd, common.IB_MGMT_CLASS_SUBN_DIRECTED_ROUTE)
        with pytest.raises(OSError) as e:
            ioctl(fd, umad.IB_USER_MAD_ENABLE_PKEY)  # after an agent exists
        assert e.value.errno == errno.EINVAL
        with pytest.raises(OSError) as e:
            ioctl(fd, umad.IB_USER_MAD_UNREGISTER_AGENT, struct.pack("<I", 5))
        assert e.value.errno == errno.EINVAL
        with pytest.raises(OSError) as e:  # an SMP class on QP1
            register(fd, common.IB_MGMT_CLASS_SUBN_LID_ROUTED, qpn=1)
        assert e.value.errno == errno.EINVAL
        with pytest.raises(BlockingIOError):
            os.read(fd, 320)
        request = smp.dr_smp([], attr_id=smp.IB_SMP_ATTR_NODE_INFO, tid=0x1234).pack()
        hdr = umad.UserMadHdr(id=7, timeout_ms=100, lid=0xFFFF)
        with pytest.raises(OSError) as e:  # no agent 7
            os.write(fd, hdr.pack() + request)
        assert e.value.errno == errno.EINVAL
        hdr = umad.UserMadHdr(id=agent, timeout_ms=100, lid=0xFFFF)
        assert os.write(fd, hdr.pack() + request) == 320
        answer = wait_read(fd)
        got = umad.UserMadHdr.unpack(answer)
        assert got.status == 0 and got.id == agent and got.length == 320
        reply = smp.Smp.unpack(answer[64:])
        assert reply.method == 0x81 and reply.direction and reply.tid & 0xFFFFFFFF == 0x1234
        node = smp.NodeInfo.unpack(reply.data)
        assert node.node_guid == guid(sysfs(lab, 1, "node_guid"))
        # LID-routed to the other host: its SMA answers over the fabric, from its LID
        lr = register(fd, common.IB_MGMT_CLASS_SUBN_LID_ROUTED)
        get = smp.Smp(attr_id=smp.IB_SMP_ATTR_NODE_INFO, tid=0x98).pack()
        os.write(fd, umad.UserMadHdr(id=lr, timeout_ms=1000, lid=lid(lab, 2)).pack() + get)
        other = wait_read(fd)
        assert umad.UserMadHdr.unpack(other).lid == lid(lab, 2)
        node = smp.NodeInfo.unpack(smp.Smp.unpack(other[64:]).data)
        assert node.node_guid == guid(sysfs(lab, 2, "node_guid"))
        # to a LID without a port: nobody answers, it times out with ETIMEDOUT
        get = smp.Smp(attr_id=smp.IB_SMP_ATTR_NODE_INFO, tid=0x99).pack()
        sent = time.monotonic()
        os.write(fd, umad.UserMadHdr(id=lr, timeout_ms=50, retries=1, lid=0x50).pack() + get)
        late = wait_read(fd)
        assert time.monotonic() - sent >= 0.1
        timed_out = umad.UserMadHdr.unpack(late)
        assert timed_out.status == errno.ETIMEDOUT and len(late) == 64 + 24
        assert common.MadHdr.unpack(late[64:]).tid & 0xFFFFFFFF == 0x99
        # an unsupported attribute: the SMA's status
        sl = smp.dr_smp([], attr_id=smp.IB_SMP_ATTR_VL_ARB_TABLE, tid=0x55).pack()
        os.write(fd, umad.UserMadHdr(id=agent, timeout_ms=100, lid=0xFFFF).pack() + sl)
        status = smp.Smp.unpack(wait_read(fd)[64:]).status
        assert status == common.IB_MGMT_MAD_STATUS_UNSUPPORTED_METHOD_ATTRIB
    finally:
        os.close(fd)


def test_issm_sets_is_sm_while_open(lab):
    cap = Path(lab.host(1).hca("ports", "1", "cap_mask"))

    def is_sm() -> bool:
        return bool(int(cap.read_text(), 16) & 2)

    assert not is_sm()
    fd = os.open(dev_file(lab, "issm0"), os.O_RDWR)
    try:
        assert is_sm()
        with pytest.raises(OSError) as e:
            os.open(dev_file(lab, "issm0"), os.O_RDWR | os.O_NONBLOCK)
        assert e.value.errno == errno.EAGAIN
        with pytest.raises(OSError) as e:
            os.open(dev_file(lab, "issm0"), os.O_RDWR)
        assert e.value.errno == errno.EBUSY
        port = fields(tool(lab, 1, "smpquery", "portinfo", str(lid(lab, 1))).stdout)
        assert int(port["CapMask"], 16) & 2
    finally:
        os.close(fd)
    wait_for(lambda: not is_sm(), what="IsSM cleared at close")


def test_an_rmpp_message_crosses_the_fabric_in_segments_and_is_read_whole(lab):
    """What an SA of one's own would do: a 600-byte RMPP request from h1 to h2, and a
    1,000-byte answer back; each file reads the whole message, the kernel's RMPP
    (segments, ACKs) between them."""
    sa_class, set_method, resp = common.IB_MGMT_CLASS_SUBN_ADM, 0x02, 0x81
    fds = [os.open(dev_file(lab, "umad0", i), os.O_RDWR | os.O_NONBLOCK) for i in (1, 2)]
    try:
        for fd in fds:
            ioctl(fd, umad.IB_USER_MAD_ENABLE_PKEY)
        client = register(fds[0], sa_class, version=2, qpn=1, rmpp_version=1)
        server = register(fds[1], sa_class, version=2, qpn=1, rmpp_version=1,
                          methods=frozenset({set_method}))  # fmt: skip

        def message(method: int, tid: int, data: bytes) -> bytes:
            head = common.MadHdr(mgmt_class=sa_class, class_version=2, method=method, tid=tid,
                                 attr_id=0x31).pack()  # fmt: skip
            return head + bytes([1, 1, 1, 0]) + bytes(8) + bytes(20) + data  # RMPP DATA, ACTIVE

        body = os.urandom(544)
        request = message(set_method, 0x4242, body)
        to_h2 = umad.UserMadHdr(id=client, timeout_ms=500, retries=2, lid=lid(lab, 2), qpn=1,
                                qkey=0x80010000)  # fmt: skip
        assert os.write(fds[0], to_h2.pack() + request) == 64 + 600
        got = wait_read(fds[1], 4096)
        assert umad.UserMadHdr.unpack(got).lid == lid(lab, 1)
        assert len(got) == 64 + 600 and got[64 + 56 :] == body
        answer_body = os.urandom(944)
        answer = message(resp, int.from_bytes(got[64 + 8 : 64 + 16], "big"), answer_body)
        to_h1 = umad.UserMadHdr(id=server, timeout_ms=500, lid=lid(lab, 1), qpn=1,
                                qkey=0x80010000)  # fmt: skip
        os.write(fds[1], to_h1.pack() + answer)
        whole = wait_read(fds[0], 4096)
        hdr = umad.UserMadHdr.unpack(whole)
        assert (hdr.status, hdr.length) == (0, 64 + 1000)
        assert whole[64 + 56 :] == answer_body
        with pytest.raises(OSError) as e:  # the same length without RMPP active
            os.write(fds[0], to_h2.pack() + request[:24] + bytes(12) + request[36:])
        assert e.value.errno == errno.EINVAL
    finally:
        for fd in fds:
            os.close(fd)


def test_a_join_through_the_sa_makes_a_group_that_saquery_shows(lab):
    """An MCMemberRecord Set and Delete written to umad0, as a program of one's own joins a
    group: the SM creates the group, `saquery -g` on the other host lists it, and it goes
    with its last member."""
    mgid = bytes.fromhex("ff12601bffff00000000000000004242")
    port_guid = guid(sysfs(lab, 1, "node_guid")) + 1
    gid = bytes.fromhex("fe80000000000000") + port_guid.to_bytes(8, "big")
    create = 1 << 0 | 1 << 1 | 1 << 2 | 1 << 6 | 1 << 7 | 1 << 12 | 1 << 13 | 1 << 16
    fd = os.open(dev_file(lab, "umad0"), os.O_RDWR | os.O_NONBLOCK)
    try:
        ioctl(fd, umad.IB_USER_MAD_ENABLE_PKEY)
        agent = register(fd, common.IB_MGMT_CLASS_SUBN_ADM, version=2, qpn=1, rmpp_version=1)

        def ask(method: int, tid: int) -> sa.SaMad:
            rec = sa.MCMemberRecord(mgid=mgid, port_gid=gid, qkey=0x1234, pkey=0xFFFF,
                                    join_state=1)  # fmt: skip
            req = sa.sa_request(method, sa.IB_SA_ATTR_MC_MEMBER_REC, rec, comp_mask=create,
                                tid=tid)  # fmt: skip
            hdr = umad.UserMadHdr(id=agent, timeout_ms=1000, lid=1, qpn=1, qkey=0x80010000)
            os.write(fd, hdr.pack() + req.pack())
            return sa.SaMad.unpack(wait_read(fd, 4096)[64:])

        joined = ask(common.IB_MGMT_METHOD_SET, 0x51)
        assert joined.status == 0
        record = sa.MCMemberRecord.unpack(joined.data)
        assert record.mgid == mgid and record.port_gid == gid and record.mlid >= 0xC000
        shown = tool(lab, 2, "saquery", "-g").stdout
        assert "ff12:601b:ffff::4242" in shown and f"0x{record.mlid:X}" in shown, shown
        left = ask(common.IB_MGMT_METHOD_DELETE, 0x52)
        assert (left.status, left.method) == (0, common.IB_MGMT_METHOD_DELETE_RESP)
        assert "ff12:601b:ffff::4242" not in tool(lab, 2, "saquery", "-g").stdout
    finally:
        os.close(fd)


def test_a_trap_subscription_gets_reports_of_a_port_going_out_and_back(lab):
    """SubnAdmSet(InformInfo) from h1's umad0 for every trap of the SM: `lab port h2 down`
    brings a Report of trap 65 (GID out of service) with h2's GID, `up` one of trap 64;
    `saquery IIR` lists the subscription until it is taken back."""
    fd = os.open(dev_file(lab, "umad0"), os.O_RDWR | os.O_NONBLOCK)
    h2_gid = bytes.fromhex("fe80000000000000") + (guid(sysfs(lab, 2, "node_guid")) + 1).to_bytes(
        8, "big"
    )
    try:
        ioctl(fd, umad.IB_USER_MAD_ENABLE_PKEY)
        agent = register(fd, common.IB_MGMT_CLASS_SUBN_ADM, version=2, qpn=1, rmpp_version=1,
                         methods=frozenset({common.IB_MGMT_METHOD_REPORT}))  # fmt: skip
        every = sa.InformInfo(lid_range_begin=0xFFFF, is_generic=1, subscribe=1, type=0xFFFF,
                              trap_num_or_dev_id=0xFFFF, producer_or_vendor=0xFFFFFF)  # fmt: skip

        def inform(info: sa.InformInfo, tid: int) -> sa.SaMad:
            req = sa.sa_request(common.IB_MGMT_METHOD_SET, sa.IB_SA_ATTR_INFORM_INFO, info,
                                tid=tid)  # fmt: skip
            hdr = umad.UserMadHdr(id=agent, timeout_ms=1000, lid=1, qpn=1, qkey=0x80010000)
            os.write(fd, hdr.pack() + req.pack())
            return sa.SaMad.unpack(wait_read(fd, 4096)[64:])

        def report() -> sa.Notice:
            mad = sa.SaMad.unpack(wait_read(fd, 4096, timeout=10)[64:])
            assert (mad.method, mad.attr_id) == (common.IB_MGMT_METHOD_REPORT, 0x0002)
            return sa.Notice.unpack(mad.data)

        assert inform(every, 0x61).status == 0
        h1_gid = bytes.fromhex("fe80000000000000") + (
            guid(sysfs(lab, 1, "node_guid")) + 1
        ).to_bytes(8, "big")
        listed = tool(lab, 2, "saquery", "IIR").stdout
        assert f"SubscriberGID...........{ipaddress.IPv6Address(h1_gid)}\n" in listed, listed
        assert lab.ipoibfs("port", "h2", "down").returncode == 0
        gone = report()
        assert (gone.trap_num_or_dev_id, gone.issuer_lid) == (65, 1)
        assert gone.data_details[6:22] == h2_gid
        assert lab.ipoibfs("port", "h2", "up").returncode == 0
        back = report()
        assert back.trap_num_or_dev_id == 64 and back.data_details[6:22] == h2_gid
        lab.host(2).wait_carrier()
        stop = replace(every, subscribe=0)
        assert inform(stop, 0x62).status == 0
        assert inform(stop, 0x63).status == sa.IB_SA_MAD_STATUS_REQ_INVALID  # none left
    finally:
        os.close(fd)
