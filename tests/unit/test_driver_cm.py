"""driver/cm.py: connected mode's listener, its REQ/REP/RTU/REJ/DREQ and the RC route."""

from __future__ import annotations

import trio
import trio.testing

from ipoibfs import wire
from ipoibfs.driver.cm import RcRoute

from .test_driver_neigh import PEER_IP, ipv4, resolved_peer


def capture(port) -> list[bytes]:
    sent: list[bytes] = []
    port.send = lambda dlid, parts, fds=(): sent.append(b"".join(parts)) or 0
    return sent


async def test_a_req_for_no_listener_is_rejected(env):
    cm, ib0 = env.driver.main.cm, env.ib0
    sent = capture(ib0.port)
    req = wire.CmReq(
        slid=9,
        local_comm_id=5,
        service_id=wire.IPOIB_CM_IETF_ID | 0x777,
        qpn=0x300,
        private=wire.CmData(0x99),
    )
    cm.receive(ib0.port, memoryview(req.pack()), ())
    (rej,) = [wire.unpack_cm(m) for m in sent]
    assert isinstance(rej, wire.CmRej)
    assert rej.remote_comm_id == 5 and rej.reason == wire.IB_CM_REJ_INVALID_SERVICE_ID


async def test_a_req_to_our_qpn_is_accepted(env):
    cm, ib0 = env.driver.main.cm, env.ib0
    sent = capture(ib0.port)
    req = wire.CmReq(
        slid=9,
        local_comm_id=5,
        service_id=wire.IPOIB_CM_IETF_ID | ib0.qpn,
        qpn=0x300,
        private=wire.CmData(0x99),
    )
    cm.receive(ib0.port, memoryview(req.pack()), ())
    (rep,) = [wire.unpack_cm(m) for m in sent]
    assert isinstance(rep, wire.CmRep) and rep.remote_comm_id == 5
    assert rep.private == wire.CmData(ib0.qpn, wire.IPOIB_CM_BUF_SIZE)


async def test_connected_mode_connects_then_publishes_an_rc_route(env):
    main, ib0 = env.driver.main, env.ib0
    peer = await resolved_peer(env)
    await main.set_mode(ib0, b"connected\n")
    peer = await main.neigh.learn(ib0, PEER_IP, peer.hwaddr)
    assert PEER_IP not in ib0.routes  # RC-capable, no connection yet: the trio path
    sent = capture(ib0.port)
    main.neigh.xmit(ib0, ipv4(PEER_IP))
    await trio.testing.wait_all_tasks_blocked()
    req = wire.unpack_cm(sent[0])
    assert isinstance(req, wire.CmReq)
    rep = wire.CmRep(
        slid=ib0.port.port.lid,
        local_comm_id=0x500,
        remote_comm_id=req.local_comm_id,
        service_id=req.service_id,
        qpn=0x501,
        private=wire.CmData(0x99),
    )
    main.cm.receive(ib0.port, memoryview(rep.pack()), ())
    assert isinstance(wire.unpack_cm(sent[1]), wire.CmRtu)
    assert sent[2][0] == wire.KIND_RC  # the queued packet went out on the connection
    route = ib0.routes[PEER_IP]
    assert route is peer.rc_route and isinstance(route, RcRoute)
    dreq = wire.CmDreq(
        slid=ib0.port.port.lid, local_comm_id=0x501, remote_comm_id=req.local_comm_id, qpn=0x501
    )
    main.cm.receive(ib0.port, memoryview(dreq.pack()), ())
    assert PEER_IP not in ib0.routes and peer.cm is None


async def test_the_rc_route_leaves_oversize_packets_to_the_full_path(env):
    sent = capture(env.ib0.port)
    route = RcRoute(env.ib0.port, 2, b"hdr", 1000, None)
    assert route.send(ipv4(PEER_IP, size=1000)) == 1004
    assert route.send(ipv4(PEER_IP, size=1001)) == 0
    assert len(sent) == 1
