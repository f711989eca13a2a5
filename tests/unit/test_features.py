"""driver.features: the IPoIB feature model, and ethtool -k/-K against the real ethtool's
output for a TUN (tests/unit/data, captured by capture_ethtool.py on Debian 12's ethtool 6.1
with kernel 6.18)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from ipoibfs.driver import features as F
from ipoibfs.netdev import links

DATA = Path(__file__).parent / "data"
DUMP = (DATA / "ethtool-k-tun0.txt").read_text()
NAMES = (DATA / "eth-ss-features.txt").read_text().split("\n")[:-1]
RUNS = json.loads((DATA / "ethtool-K-tun0.json").read_text())["runs"]
#: TUN_USER_FEATURES, which tun_net_fix_features keeps off until TUNSETOFFLOAD allows them.
TUN_USER = frozenset({F.HW_CSUM, F.TSO_ECN, F.TSO, F.TSO6, "tx-udp-segmentation",
                      "tx-udp_tnl-segmentation", "tx-udp_tnl-csum-segmentation"})  # fmt: skip


def tun_fix(features: F.Names) -> F.Names:
    return features - TUN_USER


def lines(text: str) -> set[str]:
    return set(text.splitlines())


def K(dev: F.Features, args: str, connected: bool = False,
      ifname: str = "ib0") -> tuple[F.Features, F.EthtoolResult]:  # fmt: skip
    return F.ethtool_set_features(dev, args.split(), NAMES, ifname, F.ipoib_fixer(connected))


# ------------------------------------------------------------------ against the real tool


def test_show_features_reproduces_the_real_dump() -> None:
    names, tun = F.parse_dump(DUMP)
    assert F.ethtool_show_features(tun, NAMES, "tun0") == DUMP
    assert F.ethtool_show_features(tun, names, "tun0") == DUMP  # names recovered from -k
    assert (
        F.ethtool_show_features_json(tun, NAMES, "tun0")
        == (DATA / "ethtool-json-k-tun0.txt").read_text()
    )


@pytest.mark.parametrize("i", range(len(RUNS)), ids=[r["args"] or "(none)" for r in RUNS])
def test_set_features_replays_the_real_ethtool(i: int) -> None:
    """Each `ethtool -K tun0 ...` of the capture, from the state the ones before it left:
    the same stdout, stderr, exit status and `ethtool -k` after it."""
    _, dev = F.parse_dump(DUMP)
    for run in RUNS[:i]:
        dev, _ = F.ethtool_set_features(dev, run["args"].split(), NAMES, "tun0", tun_fix)
    run = RUNS[i]
    dev, result = F.ethtool_set_features(dev, run["args"].split(), NAMES, "tun0", tun_fix)
    assert (result.stdout, result.stderr, result.status) == (
        run["stdout"],
        run["stderr"],
        run["status"],
    )
    assert F.ethtool_show_features(dev, NAMES, "tun0") == run["after"]


def test_render_from_the_real_tuns_output() -> None:
    ib = F.ipoib_features()
    rendered = F.render_show_features(DUMP, ib, "ib0")
    assert rendered == F.ethtool_show_features(ib, NAMES, "ib0")
    assert rendered.startswith("Features for ib0:\n")
    assert [line.split(":")[0] for line in rendered.splitlines()[1:]] == [
        line.split(":")[0] for line in DUMP.splitlines()[1:]
    ]


def test_gstrings_and_bits() -> None:
    data = b"".join(n.encode().ljust(links.ETH_GSTRING_LEN, b"\0") for n in NAMES)
    assert links.parse_gstrings(data) == NAMES
    bits = F.feature_bits(NAMES)
    assert (bits[F.SG], bits[F.IP_CSUM], bits[F.LRO], bits[F.TSO]) == (0, 1, 15, 16)
    assert "" not in bits


def test_unknown_name_offsets_follow_the_request_layout() -> None:
    assert F.bit_name_offsets("tun0", [("foo", True)]) == [56]
    assert F.bit_name_offsets("ib0", [("foo", True)]) == [52]
    assert F.bit_name_offsets("ib0.8001", [("rx-gro", True), ("foo", True)]) == [60, 80]
    _, result = K(F.ipoib_features(), "gro off foo on")
    stderr = (
        "netlink error: bit name not found (offset 68)\nnetlink error: Operation not supported\n"
    )
    assert result == F.EthtoolResult(stderr=stderr, status=92)


# ------------------------------------------------------------------ the core's rules


@pytest.mark.parametrize("wanted, dropped", [
    ({F.HW_CSUM, F.IP_CSUM, F.IPV6_CSUM, F.SG}, {F.IP_CSUM, F.IPV6_CSUM}),
    ({F.TSO, F.TSO6, F.TSO_ECN, F.TSO_MANGLEID, F.IP_CSUM, F.IPV6_CSUM}, F.ALL_TSO),
    ({F.SG, F.TSO, F.TSO_ECN}, {F.TSO, F.TSO_ECN}),  # TSO needs TX checksum
    ({F.SG, F.TSO6, F.IP_CSUM}, {F.TSO6}),
    ({F.SG, F.TSO_MANGLEID, F.IP_CSUM}, {F.TSO_MANGLEID}),  # MANGLEID needs TSO
    ({F.SG, F.TSO_ECN, F.IP_CSUM}, {F.TSO_ECN}),  # ECN needs another TSO
    ({F.GSO}, {F.GSO}),  # software GSO needs SG
    ({F.GRO_HW}, {F.GRO_HW}),  # HW GRO needs RX checksum
    ({F.RXFCS, F.LRO, F.GRO_HW, F.RXCSUM}, {F.LRO, F.GRO_HW}),
    ({F.GRO_HW, F.LRO, F.RXCSUM}, {F.LRO}),
    ({F.HW_TLS_TX, F.IP_CSUM}, {F.HW_TLS_TX}),
    ({F.HW_TLS_RX}, {F.HW_TLS_RX}),
])  # fmt: skip
def test_netdev_fix_features(wanted: set[str], dropped: set[str]) -> None:
    assert F.netdev_fix_features(wanted) == frozenset(wanted - dropped)


def test_fix_features_keeps_what_holds() -> None:
    ok = {F.SG, F.IP_CSUM, F.TSO, F.TSO_MANGLEID, F.GSO, F.GRO, F.RXCSUM, F.LRO, F.HIGHDMA}
    assert F.netdev_fix_features(ok) == frozenset(ok)


# ------------------------------------------------------------------ the IPoIB interface


def test_default_hca_features() -> None:
    ib = F.ipoib_features()
    assert ib.hw == {F.IP_CSUM, F.RXCSUM, F.TSO, F.LRO, F.GSO, F.GRO, F.GRO_FRAGLIST,
                     F.GRO_UDP_FWD, F.NOCACHE_COPY, F.TSO_MANGLEID}  # fmt: skip
    assert ib.active == {F.VLAN_CHALLENGED, F.HIGHDMA, F.SG, F.IP_CSUM, F.RXCSUM, F.TSO,
                         F.GSO, F.GRO}  # fmt: skip
    assert ib.wanted == {F.IP_CSUM, F.RXCSUM, F.TSO, F.GSO, F.GRO}
    shown = lines(F.ethtool_show_features(ib, NAMES, "ib0"))
    assert {"rx-checksumming: on", "tx-checksumming: on", "\ttx-checksum-ipv4: on",
            "\ttx-checksum-ip-generic: off [fixed]", "scatter-gather: on",
            "\ttx-scatter-gather: on [fixed]", "tcp-segmentation-offload: on",
            "\ttx-tcp-segmentation: on", "\ttx-tcp-mangleid-segmentation: off",
            "generic-segmentation-offload: on", "generic-receive-offload: on",
            "large-receive-offload: off", "highdma: on [fixed]", "vlan-challenged: on [fixed]",
            "tx-nocache-copy: off", "rx-gro-list: off", "tx-vlan-offload: off [fixed]",
            "loopback: off [fixed]"} <= shown  # fmt: skip
    assert F.tun_offload_flags(ib) == F.TUN_F_CSUM | F.TUN_F_TSO4


def test_lro_toggles_and_needs_rx_checksum() -> None:
    ib, result = K(F.ipoib_features(), "lro on")
    assert result == F.EthtoolResult() and ib.on(F.LRO)
    ib, result = K(ib, "rx off")
    assert result.stdout == "Actual changes:\nrx-lro: off [not requested]\nrx-checksum: off\n"
    assert result.status == 0 and not ib.on(F.LRO)
    assert "large-receive-offload: off [requested on]" in lines(
        F.ethtool_show_features(ib, NAMES, "ib0")
    )
    ib, result = K(ib, "large-receive-offload on")
    assert result == F.EthtoolResult("Actual changes:\nrx-lro: off [requested on]\n",
                                     "Could not change any device features\n", 1)  # fmt: skip
    ib, result = K(ib, "rx on")
    assert ib.on(F.LRO) and ib.on(F.RXCSUM)  # the request was kept


def test_tso_needs_tx_checksum() -> None:
    ib, result = K(F.ipoib_features(), "tx off")
    assert result.stdout == ("Actual changes:\ntx-checksum-ipv4: off\n"
                             "tx-tcp-segmentation: off [not requested]\n")  # fmt: skip
    assert not ib.on(F.TSO) and F.tun_offload_flags(ib) == 0
    ib, result = K(ib, "tso on")
    assert result.status == 1 and "tx-tcp-segmentation: off [requested on]\n" in result.stdout
    ib, result = K(ib, "tx-checksumming on")
    assert ib.on(F.IP_CSUM) and ib.on(F.TSO)
    ib, result = K(ib, "tso off")
    assert result == F.EthtoolResult() and F.tun_offload_flags(ib) == F.TUN_F_CSUM


def test_fixed_features_cannot_change() -> None:
    ib, result = K(F.ipoib_features(), "sg off")
    # partly refused (only tx-scatter-gather-fraglist, off anyway, took the value): status 0
    assert result == F.EthtoolResult("Actual changes:\ntx-scatter-gather: on [requested off]\n")
    _, result = K(ib, "highdma off")
    assert result.status == 1 and result.stderr == "Could not change any device features\n"
    _, result = K(ib, "vlan-challenged off")
    stderr = "netlink error: attempt to change non-ethtool features\n"
    assert result == F.EthtoolResult(stderr=stderr + "netlink error: Invalid argument\n", status=92)


def test_gro_and_gso_are_the_cores() -> None:
    ib, result = K(F.ipoib_features(), "gro off gso off")
    assert result == F.EthtoolResult() and not ib.on(F.GRO) and not ib.on(F.GSO)
    assert {"generic-receive-offload: off", "generic-segmentation-offload: off"} <= lines(
        F.ethtool_show_features(ib, NAMES, "ib0")
    )


def test_connected_mode_removes_checksum_and_tso_and_datagram_restores() -> None:
    ib, _ = K(F.ipoib_features(), "lro on")
    cm = F.ipoib_set_mode(ib, connected=True)
    assert not cm.on(F.IP_CSUM) and not cm.on(F.TSO)
    assert cm.on(F.RXCSUM) and cm.on(F.LRO) and cm.wanted == ib.wanted
    shown = lines(F.ethtool_show_features(cm, NAMES, "ib0"))
    assert {"tx-checksumming: off", "\ttx-checksum-ipv4: off [requested on]",
            "tcp-segmentation-offload: off", "\ttx-tcp-segmentation: off [requested on]",
            "rx-checksumming: on"} <= shown  # fmt: skip
    assert F.tun_offload_flags(cm) == 0
    cm2, result = K(cm, "tx on", connected=True)
    assert result.status == 1 and "tx-checksum-ipv4: off [requested on]\n" in result.stdout
    assert F.ipoib_set_mode(cm2, connected=False) == ib


def test_a_request_made_in_connected_mode_is_kept_for_datagram() -> None:
    cm = F.ipoib_set_mode(F.ipoib_features(), connected=True)
    cm, result = K(cm, "tso off", connected=True)
    assert result == F.EthtoolResult()  # it was off already: nothing to report
    dgram = F.ipoib_set_mode(cm, connected=False)
    assert dgram.on(F.IP_CSUM) and not dgram.on(F.TSO)
    assert F.ipoib_features(connected=True) == F.ipoib_set_mode(F.ipoib_features(), True)


def test_no_offload_hca_refuses_every_offload() -> None:
    no = F.ipoib_features(F.NO_OFFLOAD_HCA)
    assert not no.active & {F.IP_CSUM, F.RXCSUM, F.TSO, F.LRO}
    assert F.tun_offload_flags(no) == 0
    shown = lines(F.ethtool_show_features(no, NAMES, "ib0"))
    assert {"rx-checksumming: off [fixed]", "tx-checksumming: off",
            "\ttx-checksum-ipv4: off [fixed]", "tcp-segmentation-offload: off",
            "\ttx-tcp-segmentation: off [fixed]", "large-receive-offload: off [fixed]",
            "generic-receive-offload: on"} <= shown  # fmt: skip
    expected = {
        "rx on": "rx-checksum: off [requested on]\n",
        "lro on": "rx-lro: off [requested on]\n",
        "tx-checksum-ipv4 on": "tx-checksum-ipv4: off [requested on]\n",
        "tx on": "".join(f"{n}: off [requested on]\n" for n in NAMES
                         if n.startswith("tx-checksum-")),
        "tso on": "".join(f"{n}: off [requested on]\n" for n in NAMES
                          if F.flag_pattern_match(n, "tx-tcp*-segmentation")),
    }  # fmt: skip
    for args, changes in expected.items():
        after, result = K(no, args)
        assert result == F.EthtoolResult(
            "Actual changes:\n" + changes, "Could not change any device features\n", 1
        ), args
        assert after == no
    after, result = K(no, "gro off")
    assert result == F.EthtoolResult() and not after.on(F.GRO)


def test_hca_without_tso_or_lro() -> None:
    ib = F.ipoib_features(F.HcaOffloads(ud_ip_csum=True, ud_tso=False, lro=False))
    assert F.TSO not in ib.hw and F.TSO_MANGLEID not in ib.hw and F.LRO not in ib.hw
    assert ib.on(F.IP_CSUM) and F.tun_offload_flags(ib) == F.TUN_F_CSUM
    # LRO is only offered with checksum offload
    assert F.LRO not in F.ipoib_features(F.HcaOffloads(False, False, True)).hw


def test_argument_errors_send_nothing() -> None:
    ib = F.ipoib_features()
    for args, shown in (("gro maybe", "'maybe'"), ("gro", "'(null)'")):
        after, result = K(ib, args)
        assert after == ib and result == F.EthtoolResult(
            stderr=f"ethtool (-K): flag {shown} for parameter '(null)' is not followed by "
                   "'on' or 'off'\n", status=1)  # fmt: skip
    for args in ("", "--", "-- gro off", "ufo on"):
        assert K(ib, args)[1] == F.EthtoolResult(
            stderr="Could not change any device features\n", status=1
        )


def test_flag_patterns() -> None:
    assert F.flag_pattern_match("tx-checksum-ipv4", "tx-checksum-*")
    assert F.flag_pattern_match("tx-scatter-gather", "tx-scatter-gather*")
    assert F.flag_pattern_match("tx-tcp6-segmentation", "tx-tcp*-segmentation")
    assert F.flag_pattern_match("tx-tcp-segmentation", "tx-tcp*-segmentation")
    assert not F.flag_pattern_match("tx-gre-segmentation", "tx-tcp*-segmentation")
    assert not F.flag_pattern_match("rx-gro-hw", "rx-gro")


def test_ethnl_set_features_reply() -> None:
    ib = F.ipoib_features()
    new, reply = F.ethnl_set_features(ib, [(F.RXCSUM, False), (F.LRO, True)], NAMES,
                                      F.ipoib_fixer(False))  # fmt: skip
    assert reply == F.SetFeaturesReply(frozenset({F.LRO}), frozenset({F.LRO}), frozenset(),
                                       frozenset({F.RXCSUM}))  # fmt: skip
    assert new.wanted == ib.wanted - {F.RXCSUM} | {F.LRO}
    with pytest.raises(F.NetlinkError) as e:
        F.ethnl_set_features(ib, [("nope", True)], NAMES, offsets=[52])
    assert (e.value.errno, e.value.extack, e.value.offset) == (95, "bit name not found", 52)


def test_sset_structs() -> None:
    # struct ethtool_sset_info with the one data word ETH_SS_FEATURES asks for; the
    # header of struct ethtool_gstrings
    assert links.SSET_INFO.size == 16 + 4 and links.GSTRINGS_HEADER.size == 12
    info = links.SSET_INFO.pack(links.ETHTOOL_GSSET_INFO, 0, 1 << links.ETH_SS_FEATURES, 64)
    assert struct.unpack_from("<I", info, 16) == (64,)


def test_ethtool_features_dispatch() -> None:
    ib = F.ipoib_features()
    fix = F.ipoib_fixer(False)
    for option in F.SHOW_OPTIONS:
        assert F.ethtool_features(ib, option, [], NAMES, "ib0", fix) == (
            ib,
            F.EthtoolResult(F.ethtool_show_features(ib, NAMES, "ib0")),
        )
    shown = F.ethtool_features(ib, "-k", [], NAMES, "ib0", fix, json=True)[1].stdout
    assert shown.startswith('[ {\n        "ifname": "ib0",\n')
    assert F.ethtool_features(ib, "-k", ["extra"], NAMES, "ib0", fix) == (
        ib,
        F.EthtoolResult(stderr="ethtool: unexpected parameter 'extra'\n", status=1),
    )
    new, result = F.ethtool_features(ib, "--offload", ["lro", "on"], NAMES, "ib0", fix)
    assert result == F.EthtoolResult() and new.on(F.LRO)
    assert F.ethtool_features(ib, "-K", ["lro", "on"], NAMES, "ib0", fix, json=True) == (
        ib,
        F.EthtoolResult(stderr=F.BAD_ARGS, status=1),
    )
    with pytest.raises(ValueError):
        F.ethtool_features(ib, "-i", [], NAMES, "ib0")
