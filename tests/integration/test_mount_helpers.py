"""mount/: `mount -t fuse.ipoibfs`, an fstab line, and the systemd unit."""

from __future__ import annotations

import os
import re
import shutil

from .conftest import REPO, daemon_pid, is_mounted, read, run, wait_for

UNIT = REPO / "mount" / "ipoibfs@.service"


def test_mount_t_fuse_ipoibfs_with_options(netns, mountpoint):
    result = run("mount", "-t", "fuse.ipoibfs", netns.name, str(mountpoint),
                 "-o", "ports=2,noauto,param=debug_level=1", check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert is_mounted(mountpoint)
    assert sorted(mountpoint.joinpath("class", "net").iterdir()) == [
        mountpoint / "class" / "net" / "ib0", mountpoint / "class" / "net" / "ib1"]  # fmt: skip
    assert read(mountpoint / "module" / "ib_ipoib" / "parameters" / "debug_level") == "1\n"
    assert {"ib0", "ib1"} <= set(netns.links())
    pid = daemon_pid(mountpoint)
    assert run("umount", str(mountpoint)).returncode == 0
    wait_for(lambda: set(netns.links()) == {"lo"}, what="interfaces removed by umount")
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), what="daemon exit")


def test_mount_helper_rejects_unknown_options(netns, mountpoint):
    result = run("mount", "-t", "fuse.ipoibfs", netns.name, str(mountpoint), "-o", "colour=blue",
                 check=False)  # fmt: skip
    assert result.returncode != 0
    assert "unknown option 'colour=blue'" in result.stderr
    assert not is_mounted(mountpoint)


def test_mount_helper_passes_the_fabric_key_file(netns, mountpoint, tmp_path):
    """key_file= reaches `ipoibfs mount --key-file`, which refuses it without a TCP fabric."""
    key = tmp_path / "fabric.key"
    result = run("mount", "-t", "fuse.ipoibfs", netns.name, str(mountpoint), "-o",
                 f"key_file={key}", check=False)  # fmt: skip
    assert result.returncode != 0 and "--key-file is for a HOST:PORT fabric" in result.stderr, (
        result.stderr
    )
    assert len(result.stderr.strip().splitlines()) == 1
    assert not is_mounted(mountpoint)


def test_fstab_line(netns, mountpoint, tmp_path):
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{netns.name}  {mountpoint}  fuse.ipoibfs  ports=1,noauto,nofail  0 0\n")
    result = run("mount", "-T", str(fstab), str(mountpoint), check=False)
    assert result.returncode == 0, result.stderr
    assert read(mountpoint / "class" / "net" / "ib0" / "mode") == "datagram\n"
    assert "ib0" in netns.links()
    assert run("umount", str(mountpoint)).returncode == 0
    wait_for(lambda: set(netns.links()) == {"lo"}, what="interfaces removed")


def unit_commands(text: str, key: str, mountpoint: str, instance: str) -> list[list[str]]:
    """The unit's command lines for `key`, with %f and %i expanded as systemd does."""
    out = []
    for line in text.splitlines():
        if line.startswith(f"{key}="):
            cmd = line.split("=", 1)[1].replace("%f", mountpoint).replace("%i", instance)
            out.append(cmd.split())
    return out


def test_systemd_unit_verifies_and_its_commands_run_the_host(netns, mountpoint, tmp_path):
    instance = run("systemd-escape", "--path", str(mountpoint)).stdout.strip()
    unit = tmp_path / f"ipoibfs@{instance}.service"
    shutil.copy(UNIT, unit)
    verify = run("systemd-analyze", "verify", str(unit), check=False)
    assert verify.returncode == 0, verify.stderr
    text = UNIT.read_text()
    assert re.search(r"^Type=forking$", text, re.M)
    netns_path = f"/run/netns/{netns.name}"
    # PID 1 is not systemd here: run ExecStartPre/ExecStart as the unit would, in the test's netns.
    for cmd in unit_commands(text, "ExecStartPre", str(mountpoint), instance):
        assert run(*cmd).returncode == 0
    for cmd in unit_commands(text, "ExecStart", str(mountpoint), instance):
        result = run("nsenter", f"--net={netns_path}", *cmd, check=False)
        assert result.returncode == 0, result.stderr
    pidfile = unit_commands(text, "PIDFile", str(mountpoint), instance)[0][0]
    pid = int(read(pidfile))
    assert daemon_pid(mountpoint) == pid
    assert "ib0" in netns.links()
    for cmd in unit_commands(text, "ExecStop", str(mountpoint), instance):
        assert run(*cmd).returncode == 0
    assert not is_mounted(mountpoint)
    assert set(netns.links()) == {"lo"}
