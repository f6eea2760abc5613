"""DNS while the tunnel is up: each backend sets, and restores exactly, in a fake root."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from ipaddress import ip_address
from pathlib import Path

import pytest

from client.dns import (
    MARKER,
    DnsEnvironment,
    DnsError,
    DnsRecord,
    DnsSettings,
    apply_dns,
    choose_backend,
    clean_domains,
    restore_dns,
)

SETTINGS = DnsSettings(
    servers=(ip_address("10.0.0.53"), ip_address("fd00::53")), domains=("corp.example",)
)
ORIGINAL = "nameserver 192.168.1.1\nsearch home.lan\n"


class FakeRunner:
    """Plays ``ip netns identify``, ``systemctl is-active`` and ``resolvectl``."""

    def __init__(self, *, namespace: str = "", resolved: bool = False) -> None:
        self.namespace = namespace
        self.resolved = resolved
        self.calls: list[list[str]] = []
        self.fail: str | None = None  # a resolvectl verb that fails

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        argv = list(argv)
        self.calls.append(argv)
        if argv[:3] == ["ip", "netns", "identify"]:
            return subprocess.CompletedProcess(argv, 0, self.namespace + "\n", "")
        if argv[0] == "systemctl":
            return subprocess.CompletedProcess(argv, 0 if self.resolved else 3, "", "")
        if argv[0] == "resolvectl" and argv[1] == self.fail:
            return subprocess.CompletedProcess(argv, 1, "", "Failed to set DNS: Access denied\n")
        return subprocess.CompletedProcess(argv, 0, "", "")

    def resolvectl(self) -> list[list[str]]:
        return [c for c in self.calls if c[0] == "resolvectl"]


def environment(root: Path, runner: FakeRunner, *, resolvectl: bool = False) -> DnsEnvironment:
    (root / "etc").mkdir(exist_ok=True)
    return DnsEnvironment(
        root=root,
        runner=runner,
        which=lambda name: "/usr/bin/resolvectl" if resolvectl else None,
        pid=4242,
    )


# --- /etc/resolv.conf -----------------------------------------------------------------------


def test_resolv_conf_file_backed_up_written_in_place_and_restored(tmp_path: Path) -> None:
    env = environment(tmp_path, FakeRunner())
    conf = tmp_path / "etc" / "resolv.conf"
    conf.write_text(ORIGINAL)
    conf.chmod(0o640)
    inode = conf.stat().st_ino
    recorded: list[DnsRecord] = []
    applied = apply_dns(
        SETTINGS, "outpost0", env=env, label="office", before_change=recorded.append
    )
    assert recorded == [applied.record]
    assert recorded[0].backend == "resolv.conf"
    text = conf.read_text()
    assert text.startswith(MARKER)
    assert "profile office" in text
    assert "nameserver 10.0.0.53\nnameserver fd00::53\nsearch corp.example\n" in text
    assert conf.stat().st_ino == inode  # in place: a bind mount keeps showing it
    backup = tmp_path / "etc" / "resolv.conf.outpost-backup"
    assert backup.read_text() == ORIGINAL
    applied.undo()
    assert conf.read_text() == ORIGINAL
    assert conf.stat().st_ino == inode
    assert conf.stat().st_mode & 0o777 == 0o640
    assert not backup.exists()
    applied.undo()  # once only
    assert conf.read_text() == ORIGINAL


def test_resolv_conf_symlink_backed_up_as_a_link(tmp_path: Path) -> None:
    env = environment(tmp_path, FakeRunner())
    conf = tmp_path / "etc" / "resolv.conf"
    target = "../run/systemd/resolve/stub-resolv.conf"
    conf.symlink_to(target)
    applied = apply_dns(SETTINGS, "outpost0", env=env)
    assert applied.record is not None
    assert applied.record.original == "symlink"
    assert not conf.is_symlink()
    assert conf.read_text().startswith(MARKER)
    backup = tmp_path / "etc" / "resolv.conf.outpost-backup"
    assert os.readlink(backup) == target
    applied.undo()
    assert os.readlink(conf) == target
    assert not os.path.lexists(backup)


def test_resolv_conf_absent_is_created_and_deleted(tmp_path: Path) -> None:
    env = environment(tmp_path, FakeRunner())
    conf = tmp_path / "etc" / "resolv.conf"
    applied = apply_dns(SETTINGS, "outpost0", env=env)
    assert conf.read_text().startswith(MARKER)
    applied.undo()
    assert not os.path.lexists(conf)
    assert not (tmp_path / "etc" / "resolv.conf.outpost-backup").exists()


def test_a_newer_file_written_by_someone_else_wins(tmp_path: Path) -> None:
    env = environment(tmp_path, FakeRunner())
    conf = tmp_path / "etc" / "resolv.conf"
    conf.write_text(ORIGINAL)
    applied = apply_dns(SETTINGS, "outpost0", env=env)
    conf.write_text("nameserver 172.16.0.1\n")  # DHCP on a new network, say
    applied.undo()
    assert conf.read_text() == "nameserver 172.16.0.1\n"
    assert not (tmp_path / "etc" / "resolv.conf.outpost-backup").exists()


def test_an_existing_backup_is_not_overwritten(tmp_path: Path) -> None:
    env = environment(tmp_path, FakeRunner())
    conf = tmp_path / "etc" / "resolv.conf"
    conf.write_text(ORIGINAL)
    (tmp_path / "etc" / "resolv.conf.outpost-backup").write_text("older\n")
    with pytest.raises(DnsError, match="already exists"):
        apply_dns(SETTINGS, "outpost0", env=env)
    assert conf.read_text() == ORIGINAL


def test_no_servers_changes_nothing(tmp_path: Path) -> None:
    env = environment(tmp_path, FakeRunner())
    applied = apply_dns(DnsSettings(servers=()), "outpost0", env=env)
    assert applied.record is None
    applied.undo()
    assert list((tmp_path / "etc").iterdir()) == []


def test_gateway_domains_cannot_inject_lines(tmp_path: Path) -> None:
    assert clean_domains(
        ["Corp.Example.", "evil\nnameserver 6.6.6.6", "a b", "", "corp.example"]
    ) == ("corp.example",)
    env = environment(tmp_path, FakeRunner())
    settings = DnsSettings(servers=SETTINGS.servers, domains=("x\nnameserver 6.6.6.6",))
    apply_dns(settings, "outpost0", env=env)
    text = (tmp_path / "etc" / "resolv.conf").read_text()
    assert "6.6.6.6" not in text
    assert "search" not in text


# --- /etc/netns/NAME/resolv.conf --------------------------------------------------------------


def test_namespace_file_created_with_its_directory_and_removed(tmp_path: Path) -> None:
    runner = FakeRunner(namespace="laptop-1", resolved=True)
    env = environment(tmp_path, runner, resolvectl=True)  # resolved must not be used here
    applied = apply_dns(SETTINGS, "outpost0", env=env)
    assert applied.record is not None
    assert applied.record.backend == "netns"
    conf = tmp_path / "etc" / "netns" / "laptop-1" / "resolv.conf"
    assert conf.read_text().startswith(MARKER)
    assert runner.calls[0] == ["ip", "netns", "identify", "4242"]
    assert runner.resolvectl() == []
    applied.undo()
    assert not (tmp_path / "etc" / "netns" / "laptop-1").exists()
    assert (tmp_path / "etc" / "netns").is_dir()


def test_namespace_file_that_existed_is_restored(tmp_path: Path) -> None:
    env = environment(tmp_path, FakeRunner(namespace="lab"))
    folder = tmp_path / "etc" / "netns" / "lab"
    folder.mkdir(parents=True)
    conf = folder / "resolv.conf"
    conf.write_text(ORIGINAL)
    applied = apply_dns(SETTINGS, "outpost0", env=env)
    assert (folder / "resolv.conf.outpost-backup").read_text() == ORIGINAL
    assert (tmp_path / "etc" / "resolv.conf").exists() is False  # the host's is untouched
    applied.undo()
    assert conf.read_text() == ORIGINAL
    assert sorted(p.name for p in folder.iterdir()) == ["resolv.conf"]


# --- systemd-resolved ----------------------------------------------------------------------------


def test_resolved_full_tunnel_takes_every_query(tmp_path: Path) -> None:
    runner = FakeRunner(resolved=True)
    env = environment(tmp_path, runner, resolvectl=True)
    settings = DnsSettings(SETTINGS.servers, ("corp.example",), full_tunnel=True)
    applied = apply_dns(settings, "outpost0", env=env)
    assert applied.record == DnsRecord("resolved", link="outpost0")
    assert runner.resolvectl() == [
        ["resolvectl", "dns", "outpost0", "10.0.0.53", "fd00::53"],
        ["resolvectl", "domain", "outpost0", "~.", "corp.example"],
    ]
    applied.undo()
    assert runner.resolvectl()[-1] == ["resolvectl", "revert", "outpost0"]
    assert list((tmp_path / "etc").iterdir()) == []  # no file touched


def test_resolved_split_tunnel_routes_only_the_domains(tmp_path: Path) -> None:
    runner = FakeRunner(resolved=True)
    env = environment(tmp_path, runner, resolvectl=True)
    apply_dns(SETTINGS, "outpost0", env=env)
    assert runner.resolvectl()[1] == ["resolvectl", "domain", "outpost0", "corp.example"]
    runner.calls.clear()
    apply_dns(DnsSettings(SETTINGS.servers), "outpost0", env=env)
    assert runner.resolvectl() == [["resolvectl", "dns", "outpost0", "10.0.0.53", "fd00::53"]]


def test_resolved_failure_reverts_and_says_why(tmp_path: Path) -> None:
    runner = FakeRunner(resolved=True)
    runner.fail = "domain"
    env = environment(tmp_path, runner, resolvectl=True)
    settings = DnsSettings(SETTINGS.servers, full_tunnel=True)
    with pytest.raises(DnsError, match=r"resolvectl domain outpost0 ~\. failed: Failed to set DNS"):
        apply_dns(settings, "outpost0", env=env)
    assert runner.resolvectl()[-1] == ["resolvectl", "revert", "outpost0"]


def test_resolved_installed_but_not_running_falls_back_to_the_file(tmp_path: Path) -> None:
    env = environment(tmp_path, FakeRunner(resolved=False), resolvectl=True)
    assert choose_backend("outpost0", env).backend == "resolv.conf"
    env = environment(tmp_path, FakeRunner(resolved=True), resolvectl=False)
    assert choose_backend("outpost0", env).backend == "resolv.conf"


# --- Restoring from a record alone (what stale repair does) -----------------------------------


@pytest.mark.parametrize("original", ["file", "symlink", "absent"])
def test_restore_from_the_record_after_a_kill(tmp_path: Path, original: str) -> None:
    env = environment(tmp_path, FakeRunner())
    conf = tmp_path / "etc" / "resolv.conf"
    if original == "file":
        conf.write_text(ORIGINAL)
    elif original == "symlink":
        conf.symlink_to("stub-resolv.conf")
    applied = apply_dns(SETTINGS, "outpost0", env=env)
    record = DnsRecord.from_json(applied.record.to_json() if applied.record else {})
    # The process dies here: only the record survives.
    restore_dns(record, env)
    if original == "file":
        assert conf.read_text() == ORIGINAL
    elif original == "symlink":
        assert os.readlink(conf) == "stub-resolv.conf"
    else:
        assert not os.path.lexists(conf)
    assert not os.path.lexists(str(conf) + ".outpost-backup")


def test_restore_when_killed_before_the_backup_was_made(tmp_path: Path) -> None:
    env = environment(tmp_path, FakeRunner())
    conf = tmp_path / "etc" / "resolv.conf"
    conf.write_text(ORIGINAL)
    record = choose_backend("outpost0", env)  # recorded, then killed before any change
    restore_dns(record, env)
    assert conf.read_text() == ORIGINAL


def test_record_json_refuses_garbage() -> None:
    with pytest.raises(ValueError, match="not a DNS record"):
        DnsRecord.from_json({"backend": "rm -rf"})
