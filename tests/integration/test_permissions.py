"""Who may change what: sysfs modes for other users, CAP_NET_ADMIN where the kernel checks it."""

from __future__ import annotations

import errno

from .conftest import read, run

NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")


def as_nobody(*cmd: str):
    return run(*NOBODY, *cmd, check=False)


def without_net_admin(shell: str):
    return run("capsh", "--drop=cap_net_admin", "--", "-c", shell, check=False)


def test_others_can_read_everything(host):
    files = [host.net() / "mode", host.net() / "pkey", host.hca("ports", "1", "lid"),
             host.param("debug_level")]  # fmt: skip
    result = as_nobody("cat", *map(str, files))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "datagram\n0xffff\n0x2\n0\n"


def test_debugfs_is_root_only(host):
    result = as_nobody("cat", str(host.debugfs("ib0_mcg")))
    assert "Permission denied" in result.stderr
    assert read(host.debugfs("ib0_mcg")) == ""


def test_others_cannot_write(host):
    for name, value in (("mode", "connected"), ("create_child", "0x8001"), ("mtu", "1500"),
                        ("umcast", "1")):  # fmt: skip
        result = as_nobody("sh", "-c", f"echo {value} > {host.net() / name}")
        assert result.returncode != 0
        assert "Permission denied" in result.stderr, name
    assert host.interfaces() == ["ib0"]
    assert host.attr("ib0", "mode") == "datagram\n"
    assert host.attr("ib0", "mtu") == "4092\n"


def test_root_without_cap_net_admin_gets_eperm_where_the_kernel_checks(host):
    net = host.net()
    result = without_net_admin(f"echo 0x8001 > {net}/create_child")
    assert "Operation not permitted" in result.stderr
    assert host.interfaces() == ["ib0"]
    # The EINVAL checks come first, as in create_child_store.
    assert "Invalid argument" in without_net_admin(f"echo junk > {net}/create_child").stderr
    assert "Operation not permitted" in without_net_admin(f"echo 1500 > {net}/mtu").stderr
    assert host.attr("ib0", "mtu") == "4092\n"
    assert (
        "Operation not permitted" in without_net_admin(f"echo 0x8001 > {net}/delete_child").stderr
    )
    # mode and umcast have no capability check.
    assert without_net_admin(f"echo connected > {net}/mode").returncode == 0
    assert host.attr("ib0", "mode") == "connected\n"
    assert without_net_admin(f"echo 1 > {net}/umcast").returncode == 0
    assert host.attr("ib0", "umcast") == "1\n"


def test_write_to_a_read_only_file_as_root_is_eacces(host):
    from .conftest import write

    assert write(host.net() / "pkey", "0x8001") == errno.EACCES
    assert write(host.hca("ports", "1", "lid"), "0x9") == errno.EACCES
