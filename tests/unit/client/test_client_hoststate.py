"""Stale repair: what a client killed with -9 left (routes, DNS) is undone at the next start."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from ipaddress import ip_address, ip_interface, ip_network
from pathlib import Path

import pytest

from client.dns import MARKER, DnsEnvironment, DnsSettings, apply_dns
from client.hoststate import (
    HostState,
    HostStateBusy,
    process_alive,
    process_start_time,
    repair_stale,
    state_path,
)
from client.routes import apply_routes, plan_routes
from common.hostnet.memory import MemoryHostNetwork
from tests.unit.client.test_client_dns import ORIGINAL, FakeRunner, environment

GATEWAY = ip_address("198.51.100.7")
SETTINGS = DnsSettings(servers=(ip_address("10.0.0.53"),))


@pytest.fixture
def host() -> MemoryHostNetwork:
    net = MemoryHostNetwork()
    net.add_link("eth0", addresses=("192.168.1.20/24",))
    net.add_route(ip_network("0.0.0.0/0"), gateway=ip_address("192.168.1.1"))
    return net


@pytest.fixture
def victim() -> Iterator[subprocess.Popen[bytes]]:
    """A real process to play the client that gets killed with -9."""
    process = subprocess.Popen(["sleep", "60"])
    yield process
    process.kill()
    process.wait()


def run_client(tmp_path: Path, host: MemoryHostNetwork, env: DnsEnvironment, pid: int) -> HostState:
    """What the controller does, in order, recording before each change."""
    state = HostState(tmp_path / "run", "office", pid=pid)
    state.begin()
    state.set_tun("outpost0")
    host.create_tun("outpost0", mtu=1400)
    plan = plan_routes("full", GATEWAY, (), (), [ip_interface("10.99.0.5/32")])
    apply_routes(host, "outpost0", plan, before_change=state.add_routes)
    apply_dns(SETTINGS, "outpost0", env=env, before_change=state.set_dns)
    return state


def kill(process: subprocess.Popen[bytes], host: MemoryHostNetwork) -> None:
    process.kill()
    process.wait()
    host.tuns["outpost0"].close()  # the kernel removes the non-persistent TUN with the process


@pytest.mark.parametrize("backend", ["resolv.conf", "netns"])
def test_repair_after_kill_with_a_file_backend(
    tmp_path: Path, host: MemoryHostNetwork, victim: subprocess.Popen[bytes], backend: str
) -> None:
    env = environment(tmp_path, FakeRunner(namespace="lab" if backend == "netns" else ""))
    conf = tmp_path / "etc" / ("netns/lab/resolv.conf" if backend == "netns" else "resolv.conf")
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(ORIGINAL)
    before = host.routes()
    state = run_client(tmp_path, host, env, victim.pid)
    saved = json.loads(state.path.read_text())
    assert saved["pid"] == victim.pid
    assert saved["start_time"] == process_start_time(victim.pid)
    assert saved["dns"]["backend"] == backend
    assert len(saved["routes"]) == 3
    assert repair_stale(tmp_path / "run", host, dns_env=env) == []  # still alive: left alone
    kill(victim, host)
    lines = repair_stale(tmp_path / "run", host, dns_env=env, sys_class_net=tmp_path / "sys")
    assert host.routes() == before  # the bypass via eth0 is gone too
    assert conf.read_text() == ORIGINAL
    assert not state.path.exists()
    assert lines == [
        f"removed the stale route 198.51.100.7/32 via 192.168.1.1 dev eth0 of client "
        f"{victim.pid} (profile office)",
        f"restored DNS ({backend}) changed by client {victim.pid} (profile office)",
    ]


def test_repair_after_kill_with_resolved(
    tmp_path: Path, host: MemoryHostNetwork, victim: subprocess.Popen[bytes]
) -> None:
    runner = FakeRunner(resolved=True)
    env = environment(tmp_path, runner, resolvectl=True)
    run_client(tmp_path, host, env, victim.pid)
    kill(victim, host)
    repair_stale(tmp_path / "run", host, dns_env=env, sys_class_net=tmp_path / "sys")
    assert runner.resolvectl()[-1] == ["resolvectl", "revert", "outpost0"]


def test_a_normal_exit_leaves_no_state(tmp_path: Path, host: MemoryHostNetwork) -> None:
    env = environment(tmp_path, FakeRunner())
    state = HostState(tmp_path / "run", "office")
    state.begin()
    plan = plan_routes("split", GATEWAY, [ip_network("10.1.0.0/16")], (), [ip_address("10.9.0.1")])
    host.create_tun("outpost0", mtu=1400)
    routes = apply_routes(host, "outpost0", plan, before_change=state.add_routes)
    dns = apply_dns(SETTINGS, "outpost0", env=env, before_change=state.set_dns)
    dns.undo()
    routes.undo()
    state.finish()
    assert not state.path.exists()
    assert repair_stale(tmp_path / "run", host) == []


def test_a_running_client_holds_its_profile(
    tmp_path: Path, victim: subprocess.Popen[bytes]
) -> None:
    HostState(tmp_path, "office", pid=victim.pid).begin()
    with pytest.raises(HostStateBusy, match=f"already connected by process {victim.pid}"):
        HostState(tmp_path, "office").begin()
    HostState(tmp_path, "lab").begin()  # another profile is fine


def test_pid_reuse_counts_as_dead(victim: subprocess.Popen[bytes]) -> None:
    start = process_start_time(victim.pid)
    assert start is not None
    assert process_alive(victim.pid, start)
    assert not process_alive(victim.pid, start + 1)  # same pid, another process


def test_leftover_tun_and_failures_are_reported_and_kept(
    tmp_path: Path, host: MemoryHostNetwork, victim: subprocess.Popen[bytes]
) -> None:
    env = environment(tmp_path, FakeRunner())
    (tmp_path / "etc" / "resolv.conf").write_text(ORIGINAL)
    state = run_client(tmp_path, host, env, victim.pid)
    victim.kill()
    victim.wait()  # the TUN is still held (say, by a worker that did not exit)
    (tmp_path / "sys" / "outpost0").mkdir(parents=True)
    backup = tmp_path / "etc" / "resolv.conf.outpost-backup"
    backup.unlink()
    backup.mkdir()  # restoring from it will fail
    lines = repair_stale(tmp_path / "run", host, dns_env=env, sys_class_net=tmp_path / "sys")
    assert any("stale DNS" in line and "by hand" in line for line in lines)
    assert any("TUN device outpost0" in line and "still exists" in line for line in lines)
    assert state.path.exists()  # kept for a later try


def test_garbage_state_files_are_removed(tmp_path: Path, host: MemoryHostNetwork) -> None:
    (tmp_path / "client-a.json").write_text("{not json")
    (tmp_path / "client-b.json").write_text(json.dumps({"pid": 1 << 22, "routes": [{"x": 1}]}))
    lines = repair_stale(tmp_path, host)
    assert len(lines) == 2
    assert list(tmp_path.iterdir()) == []


def test_state_path_is_safe() -> None:
    assert state_path(Path("/run/outpost"), "../etc/x y") == Path(
        "/run/outpost/client-.._etc_x_y.json"
    )
    assert MARKER.startswith("#")
