"""Status and sessions builders over a real TunnelManager with in-memory clients.

The tunnels are made by ``test_manager.Lab`` (real IKEv2 initiators, no
sockets); the data-plane counters are fabricated, since what is checked is
that each number lands where ``status``/``sessions``/metrics read it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys

from common.dataplane.control import DataPlaneCounters
from common.dataplane.messages import SaCounters
from concentrator.pool import AddressPool
from concentrator.status import (
    build_sessions,
    build_status,
    format_address,
    process_memory,
    reload_report,
    resident_bytes,
    split_handshakes,
)
from concentrator.store import MemoryStore
from concentrator.users import ReloadReport
from tests.unit.concentrator.test_manager import GATEWAY, Lab

WALL = 1_700_000_000.0


def _pool() -> AddressPool:
    pool = AddressPool(
        MemoryStore(),
        ipaddress.IPv4Network("10.99.0.0/24"),
        ipaddress.IPv6Network("fd00:99::/120"),
    )
    first = pool.lease("alice")
    assert first is not None
    pool.lease("bob")
    pool.release(first)
    pool.lease("carol", 6)
    return pool


def _counters(*sas: SaCounters) -> DataPlaneCounters:
    return DataPlaneCounters(
        inbound={
            "packets": 120,
            "octets": 64_000,
            "drop_replayed": 3,
            "drop_unknown_spi": 2,
            "keepalives": 4,
            "ike_datagrams": 9,
        },
        outbound={"packets": 80, "octets": 90_000, "drop_no_route": 5},
        sas=sas,
    )


def _lab_with_tunnels() -> Lab:
    lab = Lab()
    lab.connect(lab.client("alice@example.org"))
    lab.connect(lab.client("bob@example.org"))
    lab.connect(lab.client("mallory@example.org", psk=b"not the right key at all"))
    lab.manager.receive_ike(b"\x00" * 3, ("203.0.113.9", 500), GATEWAY, lab.now)
    return lab


def test_status_counts_tunnels_failures_drops_pool_and_traffic() -> None:
    lab = _lab_with_tunnels()
    status = build_status(
        lab.manager,
        _counters(),
        _pool(),
        listen=[ipaddress.ip_address("192.0.2.1"), "::1"],
        uptime_s=12.3456,
        memory={"concentrator": 50_000_000, "inbound": 30_000_000},
        version="9.9",
    )
    assert status == {
        "version": "9.9",
        "uptime_s": 12.346,
        "listen": ["192.0.2.1", "::1"],
        "tunnels": 2,
        "half_open": 0,
        "pool": {
            "ipv4": {"size": 253, "active": 1, "released": 1, "free": 252},
            "ipv6": {"size": 254, "active": 1, "released": 0, "free": 253},
        },
        "handshakes": {"established": 2, "failed": 1},
        "handshake_failures": {"AUTHENTICATION_FAILED": 1},
        "closures": {},
        "ike_drops": {"malformed": 1},
        "dataplane": {
            "inbound": {
                "packets": 120,
                "bytes": 64_000,
                "drops": {"replayed": 3, "unknown_spi": 2},
                "other": {"ike_datagrams": 9, "keepalives": 4},
            },
            "outbound": {
                "packets": 80,
                "bytes": 90_000,
                "drops": {"no_route": 5},
                "other": {},
            },
        },
        "memory": {"concentrator": 50_000_000, "inbound": 30_000_000},
    }
    assert json.loads(json.dumps(status)) == status


def test_status_before_any_counters_and_after_closures() -> None:
    lab = Lab()
    lab.connect(lab.client())
    (tunnel,) = lab.manager.established()
    lab.manager.disconnect(tunnel.tunnel_id, lab.now)
    lab.flush()
    status = build_status(lab.manager, None, _pool(), listen=[], uptime_s=0)
    assert status["tunnels"] == 0
    assert status["closures"] == {"disconnected": 1}
    assert status["dataplane"]["inbound"] == {"packets": 0, "bytes": 0, "drops": {}, "other": {}}
    assert status["memory"] == {}
    assert isinstance(status["version"], str)


def test_split_handshakes_keeps_child_failures_apart() -> None:
    results, failures = split_handshakes(
        {
            "established": 5,
            "failed: AUTHENTICATION_FAILED": 2,
            "child failed: TS_UNACCEPTABLE": 1,
            "half-open timeout": 3,
            "failed: NO_PROPOSAL_CHOSEN": 0,
        }
    )
    assert results == {"established": 5, "failed": 6}
    assert failures == {
        "AUTHENTICATION_FAILED": 2,
        "child failed: TS_UNACCEPTABLE": 1,
        "half-open timeout": 3,
    }


def test_sessions_show_each_tunnel_with_its_child_sa_counters() -> None:
    lab = _lab_with_tunnels()
    alice_tunnel, bob_tunnel = sorted(lab.manager.established(), key=lambda t: t.tunnel_id)
    (child,) = alice_tunnel.children.values()
    established_at = alice_tunnel.established_at
    assert established_at is not None
    lab.now += 90.0
    counters = _counters(
        SaCounters(child.inbound_spi, alice_tunnel.tunnel_id, "inbound", 10, 1000, {}, 10),
        SaCounters(child.outbound_spi, alice_tunnel.tunnel_id, "outbound", 7, 2000, {}, 7),
        # Another peer's outbound SA whose SPI equals alice's inbound one: it
        # must not be counted as alice's inbound traffic.
        SaCounters(child.inbound_spi, bob_tunnel.tunnel_id, "outbound", 999, 99_999, {}, 1),
    )
    sessions = build_sessions(lab.manager, counters, now=lab.now, wall_now=WALL)
    assert [s["id"] for s in sessions] == [alice_tunnel.tunnel_id, bob_tunnel.tunnel_id]
    alice = sessions[0]
    assert alice == {
        "id": alice_tunnel.tunnel_id,
        "identity": "alice@example.org",
        "outer": f"{alice_tunnel.remote[0]}:{alice_tunnel.remote[1]}",
        "local": f"{alice_tunnel.local[0]}:{alice_tunnel.local[1]}",
        "inner": [str(lab.clients[0].assigned)],
        "ike_suite": alice_tunnel.ike_suite,
        "esp_suite": child.suite,
        "established_at": WALL - 90.0,
        "uptime_s": 90.0,
        "state": "established",
        "child_sas": [
            {
                "inbound_spi": f"{child.inbound_spi:08x}",
                "outbound_spi": f"{child.outbound_spi:08x}",
                "suite": child.suite,
                "inner_networks": [str(n) for n in child.inner_networks],
                "packets_in": 10,
                "bytes_in": 1000,
                "packets_out": 7,
                "bytes_out": 2000,
            }
        ],
        "packets_in": 10,
        "bytes_in": 1000,
        "packets_out": 7,
        "bytes_out": 2000,
    }
    assert alice["ike_suite"]
    assert alice["esp_suite"]
    assert alice["outer"].startswith("192.0.2.")
    bob = sessions[1]
    assert bob["identity"] == "bob@example.org"
    assert bob["packets_in"] == 0  # its SA is not in the counters
    assert json.loads(json.dumps(sessions)) == sessions


def test_sessions_show_half_open_and_closing_states() -> None:
    lab = Lab()
    alice = lab.client()
    lab.connect(alice)
    (tunnel,) = lab.manager.established()
    carol = lab.client("carol@example.org")
    carol.session.initiate(lab.now)
    for data, _address in carol.session.datagrams_to_send(lab.now):
        lab.manager.receive_ike(data, (carol.address, 500), GATEWAY, lab.now)
    lab.manager.disconnect(tunnel.tunnel_id, lab.now)  # Delete sent, answer not read yet
    sessions = build_sessions(lab.manager, None, now=lab.now, wall_now=WALL)
    by_state = {s["state"]: s for s in sessions}
    assert set(by_state) == {"closing", "half-open"}
    half_open = by_state["half-open"]
    assert half_open["identity"] is None
    assert half_open["established_at"] is None
    assert half_open["uptime_s"] is None
    assert half_open["child_sas"] == []
    # The lease went back at once; the address is still shown until the tunnel is gone.
    assert by_state["closing"]["inner"] == ["10.99.0.2"]


def test_format_address_brackets_ipv6() -> None:
    assert format_address(("192.0.2.1", 4500)) == "192.0.2.1:4500"
    assert format_address(("2001:db8::1", 4500)) == "[2001:db8::1]:4500"
    assert format_address(("fe80::1%eth0", 500)) == "[fe80::1%eth0]:500"


def test_reload_report_as_json() -> None:
    report = ReloadReport(
        added=("bob",), removed=(), changed=("a", "b"), restart_required=("pool",)
    )
    assert reload_report(report) == {
        "added": ["bob"],
        "removed": [],
        "changed": ["a", "b"],
        "restart_required": ["pool"],
    }


def test_resident_memory_of_us_and_of_worker_processes() -> None:
    own = resident_bytes()
    assert own is not None
    assert own > 1 << 20  # a Python with cryptography loaded is well above 1 MiB
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=-1)
    try:
        child_rss = resident_bytes(child.pid)
        assert child_rss is not None
        assert 0 < child_rss < own * 4
        memory = process_memory({"inbound": child.pid, "outbound": 2**22 + 12345})
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()
    assert set(memory) == {"concentrator", "inbound"}  # an unreadable pid is left out
    assert resident_bytes(child.pid) is None  # reaped: gone
    assert resident_bytes(os.getpid()) is not None
