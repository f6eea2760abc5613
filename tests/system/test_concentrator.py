"""The concentrator as an admin runs it, against strongSwan road warriors (issue 4, "Proof").

``outpost-concentrator run --config FILE`` runs in a ``gw`` namespace; road
warriors are Debian's charon with kernel-libipsec (``vips = 0.0.0.0``,
``encap = yes``) in ``laptop`` namespaces; a ``lan`` host sits behind the
gateway (topology in tests/helpers/concentrator_lab.py)::

    [laptop1..3] 192.0.2.2-4 --- br0 --- 192.0.2.1 [gw] outpost-concentrator --- [lan] 10.99.0.10
                 charon + ipsec0 (virtual IP from 10.99.100.0/24)                 routes the pool
                                                                                  via 10.99.0.1

One lab and one concentrator serve the whole module (building them costs
seconds a test would otherwise repeat); a test that needs another
configuration (certificates) or a fresh process (restart, DPD failure)
asks :class:`Gateway` for it. Every test connects its own charons and
terminates them at the end, so no test leans on another's tunnels.

Each test checks an outcome that a broken feature would change: the
address comes from the pool and ping/iperf3 get through only through the
tunnel (the laptop has no other route to the LAN); a forged inner source is
sealed in the SA that charon negotiated, beside a genuine packet that must
arrive, so the drop is the anti-spoof check and not a bad packet; after a
restart, the client whose address is *not* the pool's first is reconnected
first, so only a persisted lease gives it back.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import random
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.helpers.concentrator_config import Document
from tests.helpers.concentrator_lab import (
    GATEWAY_ID,
    GATEWAY_IP,
    LAN_HOST_IP,
    LAPTOP_IPS,
    POOL,
    POOL_GATEWAY,
    ConcentratorLab,
    ConcentratorProcess,
    RoadWarrior,
    UdpSink,
    build_lab,
    concentrator_document,
    esp_in_udp,
    metric_value,
    road_warrior,
    send_raw,
    write_document,
)
from tests.helpers.netns import Host, NetnsLab
from tests.helpers.packets import ipv4_header, ipv4_udp
from tests.helpers.pki import make_ca, make_leaf

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.needs_tool("/usr/lib/ipsec/charon", "swanctl", "iperf3", "tcpdump"),
]

ALICE, BOB, MALLORY, DAVE, CAROL = (
    f"{name}@lab.example" for name in ("alice", "bob", "mallory", "dave", "carol")
)
PSKS = {
    ALICE: "alice-lab-psk-0123456789abcdef",
    BOB: "bob-lab-psk-fedcba9876543210xy",
    MALLORY: "mallory-lab-psk-0011223344556677",
    DAVE: "dave-lab-psk-8899aabbccddeeff00",
}
WRONG_PSK = "not-mallorys-psk-at-all-0123456"
DPD_INTERVAL_S = 3
DPD_TIMEOUT_S = 10
HOUSEKEEPING_S = 5  # concentrator/service.py: counters (status, metrics, DPD activity) refresh
ESP_LISTED = {"aes256gcm16": "ESP:AES_GCM_16-256", "chacha20poly1305": "ESP:CHACHA20_POLY1305"}
SINK_PORT = 9999


# --- the module's lab and concentrator ----------------------------------------------------


@dataclass
class Gateway:
    """The concentrator in ``gw``: started on demand, restarted when a test needs another config.

    Every exit status of a stopped concentrator is kept in :attr:`exits`;
    the module's teardown asserts they were all 0 (a graceful SIGTERM stop).
    """

    lab: ConcentratorLab
    workdir: Path
    process: ConcentratorProcess | None = None
    config_name: str | None = None
    starts: int = 0
    exits: list[int] = field(default_factory=list)

    def ensure(self, name: str = "psk", document: Document | None = None) -> ConcentratorProcess:
        """The running concentrator with configuration ``name`` (PSK users by default)."""
        if self.process is not None and self.process.alive() and self.config_name == name:
            return self.process
        self.stop()
        config = write_document(
            self.workdir / f"{name}.toml", document or concentrator_document(self.workdir, USERS)
        )
        self.starts += 1
        process = ConcentratorProcess(
            self.lab.gw, config, log_path=self.workdir / f"concentrator-{self.starts}.log"
        )
        process.start()
        self.process, self.config_name = process, name
        return process

    def stop(self) -> int | None:
        """SIGTERM the running concentrator, if any; its exit status."""
        if self.process is None:
            return None
        process, self.process, self.config_name = self.process, None, None
        status = process.stop()
        self.exits.append(status)
        return status


USERS: list[dict[str, Any]] = [{"id": user, "psk": psk} for user, psk in PSKS.items()]


@dataclass
class Env:
    """What the module's tests share."""

    lab: ConcentratorLab
    gateway: Gateway
    tmp: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """The lab, an iperf3 server on the LAN host, and the concentrator (stopped last)."""
    tmp = tmp_path_factory.mktemp("concentrator")
    with NetnsLab() as netns_lab:
        lab = build_lab(netns_lab, laptops=3)
        lab.lan.popen(
            ["iperf3", "-s", "-B", LAN_HOST_IP],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        gateway = Gateway(lab, tmp / "gw")
        gateway.workdir.mkdir()
        try:
            yield Env(lab, gateway, tmp)
        finally:
            gateway.stop()
    assert all(status == 0 for status in gateway.exits), f"exit statuses {gateway.exits}"


class Swans:
    """The charons a test started; each is terminated (Delete sent) and stopped afterwards."""

    def __init__(self, env: Env, tmp_path: Path) -> None:
        self.env = env
        self.tmp_path = tmp_path
        self.started: list[RoadWarrior] = []

    def start(self, laptop: int, identity: str, **kwargs: Any) -> RoadWarrior:
        """A charon in ``laptop<laptop+1>`` for ``identity`` (``kwargs``: road_warrior's)."""
        kwargs.setdefault("psk", PSKS.get(identity, ""))
        files = kwargs.pop("files", None)
        host = self.env.lab.laptops[laptop]
        swan = RoadWarrior(host, self.tmp_path / f"swan-{host.label}-{len(self.started)}")
        self.started.append(swan)
        swan.start(road_warrior(LAPTOP_IPS[laptop], identity, **kwargs), files=files)
        return swan

    def connect(self, laptop: int, identity: str, **kwargs: Any) -> tuple[RoadWarrior, str]:
        """Start, initiate and check one ESTABLISHED/INSTALLED SA; the charon and its VIP."""
        swan = self.start(laptop, identity, **kwargs)
        initiate(swan)
        return swan, swan.virtual_ip()

    def close(self) -> None:
        for swan in self.started:
            if swan.process is not None and swan.process.poll() is None:
                swan.swanctl("--terminate", "--ike", "home", "--timeout", "3", check=False)
                swan.stop()


@pytest.fixture
def swans(env: Env, tmp_path: Path) -> Iterator[Swans]:
    started = Swans(env, tmp_path)
    try:
        yield started
    finally:
        started.close()


def initiate(swan: RoadWarrior) -> None:
    """``swanctl --initiate`` must succeed with one ESTABLISHED IKE SA and INSTALLED Child SA."""
    error = swan.initiate(timeout_s=10)
    assert error is None, f"{error}\n{swan.logs()}"
    sas = swan.sas()
    assert len(sas) == 1, swan.list_sas()
    assert sas[0].state == "ESTABLISHED", swan.list_sas()
    assert [c.state for c in sas[0].children] == ["INSTALLED"], swan.list_sas()


def in_pool(address: str) -> bool:
    """A leasable pool address: in 10.99.100.0/24 and not the gateway's own."""
    return ipaddress.ip_address(address) in ipaddress.ip_network(POOL) and address != POOL_GATEWAY


def ping(host: Host, count: int = 3) -> None:
    """Ping the LAN host from ``host``: every echo must be answered."""
    result = host.run(
        ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "2", LAN_HOST_IP], check=False
    )
    assert f"{count} received" in result.stdout, result.stdout + result.stderr


def iperf(host: Host, *, seconds: int = 3, reverse: bool = False) -> int:
    """Bytes the receiving end counted in an iperf3 TCP run (laptop -> LAN, or back with -R)."""
    argv = ["iperf3", "-c", LAN_HOST_IP, "-t", str(seconds), "-J", *(["-R"] if reverse else [])]
    for attempt in range(20):  # the module's server may still be starting
        result = host.run(argv, check=False, timeout=seconds + 30)
        if result.returncode == 0:
            break
        if "refused" not in result.stdout + result.stderr or attempt == 19:
            raise AssertionError(f"iperf3 failed:\n{result.stdout}\n{result.stderr}")
        time.sleep(0.25)
    report = json.loads(result.stdout)
    received: int = report["end"]["sum_received"]["bytes"]
    return received


def wait_until(condition: Callable[[], Any], *, timeout: float, what: str) -> Any:
    """Poll ``condition`` until it returns something true; raise naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.25)


def inbound_drops(concentrator: ConcentratorProcess) -> dict[str, int]:
    """The data plane's inbound drops by reason (``status --json``)."""
    drops: dict[str, int] = concentrator.status()["dataplane"]["inbound"]["drops"]
    return drops


# --- 1. a PSK road warrior: address, ping, iperf3 both ways, both AEADs -------------------


@pytest.mark.parametrize("esp", ["aes256gcm16", "chacha20poly1305"])
def test_psk_road_warrior_reaches_the_lan(env: Env, swans: Swans, esp: str) -> None:
    """strongSwan gets a pool address, pings the LAN host and moves data both ways.

    [laptop1] charon alice (PSK, esp_proposals = ESP) ==> [gw] concentrator ==> [lan] iperf3 -s
    """
    concentrator = env.gateway.ensure()
    mark = concentrator.mark()
    swan, vip = swans.connect(0, ALICE, esp=esp)
    assert in_pool(vip), vip
    sas = swan.sas()
    assert sas[0].children[0].mode == "TUNNEL-in-UDP", swan.list_sas()
    assert sas[0].children[0].proposal == ESP_LISTED[esp], swan.list_sas()
    concentrator.wait_log(
        rf"tunnel up {re.escape(ALICE)} from 192\.0\.2\.2:4500 inner {re.escape(vip)} suite {esp}",
        since=mark,
    )
    laptop = env.lab.laptops[0]
    ping(laptop)
    assert iperf(laptop) > 2_000_000
    assert iperf(laptop, reverse=True) > 2_000_000
    child = swan.list_sas()
    packets = [
        int(n) for n in re.findall(r"^\s+(?:in|out)\s+[0-9a-f]{8},.*?(\d+) packets", child, re.M)
    ]
    assert len(packets) == 2, child
    assert min(packets) > 1000, child  # it all went through the SA


# --- 3. two clients at once, and a wrong PSK beside them ----------------------------------


def test_two_clients_and_a_refused_wrong_psk(env: Env, swans: Swans) -> None:
    """Two laptops get different addresses and reach the LAN; a wrong PSK changes nothing for them.

    [laptop1] alice ==+
    [laptop2] bob   ==+==> [gw] <-- [laptop3] mallory (wrong PSK): AUTHENTICATION_FAILED
    """
    concentrator = env.gateway.ensure()
    mark = concentrator.mark()
    alice, alice_vip = swans.connect(0, ALICE)
    bob, bob_vip = swans.connect(1, BOB)
    assert in_pool(alice_vip), alice_vip
    assert in_pool(bob_vip), bob_vip
    assert alice_vip != bob_vip
    before = {name: swan.sas()[0] for name, swan in (("alice", alice), ("bob", bob))}

    pings = [
        host.popen(
            ["ping", "-n", "-c", "25", "-i", "0.2", "-W", "2", LAN_HOST_IP],
            stdout=subprocess.PIPE,
            text=True,
        )
        for host in env.lab.laptops[:2]
    ]
    mallory = swans.start(2, MALLORY, psk=WRONG_PSK)
    assert mallory.initiate(timeout_s=5) is not None, mallory.list_sas()
    assert "received AUTHENTICATION_FAILED notify error" in mallory.log.read_text(), mallory.logs()
    concentrator.wait_log(
        r"handshake from 192\.0\.2\.4:\d+ failed: AUTHENTICATION_FAILED", since=mark
    )
    assert "ESTABLISHED" not in mallory.list_sas()
    for process in pings:
        output, _ = process.communicate(timeout=20)
        assert "25 received" in output, output

    for name, swan in (("alice", alice), ("bob", bob)):
        after = swan.sas()[0]
        assert (after.state, after.spi_i, after.spi_r) == (
            "ESTABLISHED",
            before[name].spi_i,
            before[name].spi_r,
        ), swan.list_sas()
    assert not concentrator.find(r"tunnel down", since=mark), concentrator.log_text(mark)


# --- 4. anti-spoof ---------------------------------------------------------------------------


def test_forged_inner_source_is_dropped(env: Env, swans: Swans) -> None:
    """An authentic ESP packet of alice's SA with bob's inner source never reaches the LAN.

    [laptop1] raw socket: ESP(alice's SA){ src=bob's VIP -> 10.99.0.10:9999 "forged" }
                          ESP(alice's SA){ src=alice's VIP -> 10.99.0.10:9999 "genuine" }
    [lan] UDP sink: "genuine" from alice's VIP arrives (the crafting is right), "forged" never does
    """
    concentrator = env.gateway.ensure()
    mark = concentrator.mark()
    alice, alice_vip = swans.connect(0, ALICE)
    _, bob_vip = swans.connect(1, BOB)
    sink = UdpSink(env.lab.lan, LAN_HOST_IP, SINK_PORT, env.tmp / f"sink-{time.monotonic_ns()}")
    sink.start()
    spoofed_before = inbound_drops(concentrator).get("spoofed_source", 0)

    spi, sent, keymat = alice.outbound_sa()
    token = os.urandom(8).hex().encode()
    forged, genuine = b"forged-" + token, b"genuine-" + token

    def sealed(seq: int, source: str, payload: bytes) -> bytes:
        inner = ipv4_udp(source, LAN_HOST_IP, sport=40000, dport=SINK_PORT, data=payload)
        return esp_in_udp(
            suite="aes256gcm16", keymat=keymat, spi=spi, seq=seq, inner=inner, source=LAPTOP_IPS[0]
        )

    # Sequence numbers a little ahead of charon's: inside the replay window for both.
    send_raw(
        env.lab.laptops[0],
        [sealed(sent + 50, bob_vip, forged), sealed(sent + 51, alice_vip, genuine)],
    )
    assert sink.wait_for(genuine) == alice_vip, sink.received()
    assert all(data != forged for _, data in sink.received()), sink.received()
    ping(env.lab.laptops[0])  # alice's tunnel survived the forgery
    ping(env.lab.laptops[1])
    assert not concentrator.find(r"tunnel down", since=mark), concentrator.log_text(mark)

    # The drop is counted (status --json; the housekeeping tick refreshes it).
    wait_until(
        lambda: inbound_drops(concentrator).get("spoofed_source", 0) > spoofed_before,
        timeout=HOUSEKEEPING_S + 5,
        what="the spoofed_source drop counter to rise",
    )


# --- 7. garbage, truncated and replayed datagrams during a transfer -----------------------


def _capture_esp(host: Host, path: Path, count: int, traffic: Callable[[], None]) -> list[bytes]:
    """``count`` ESP-in-UDP datagrams ``host`` sends to the gateway while ``traffic`` runs."""
    capture = host.popen(
        [
            *("tcpdump", "-n", "-U", "-i", "to-inet", "-c", str(count), "-w", str(path)),
            f"src host {host_ip(host)} and udp dst port 4500 and udp[8:4] != 0 and greater 100",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # tcpdump attaches its filter
    traffic()
    capture.wait(timeout=10)
    from scapy.layers.inet import IP
    from scapy.utils import rdpcap

    return [bytes(packet[IP]) for packet in rdpcap(str(path))]


def host_ip(host: Host) -> str:
    """A laptop's address on the shared segment (``laptopN`` is ``LAPTOP_IPS[N-1]``)."""
    return LAPTOP_IPS[int(host.label.removeprefix("laptop")) - 1]


def _from(packet: bytes, source: str) -> bytes:
    """The same UDP payload in a new outer IPv4 header from ``source`` (checksum 0)."""
    udp = bytearray(packet[20:])
    udp[6:8] = b"\0\0"
    return ipv4_header(source, GATEWAY_IP, 17, len(udp)) + bytes(udp)


def _udp(source: str, port: int, payload: bytes, sport: int = 40001) -> bytes:
    """An IPv4 UDP datagram from ``source`` to the gateway's ``port`` (checksum 0)."""
    header = sport.to_bytes(2, "big") + port.to_bytes(2, "big")
    header += (8 + len(payload)).to_bytes(2, "big") + b"\0\0"
    return ipv4_header(source, GATEWAY_IP, 17, 8 + len(payload)) + header + payload


def test_garbage_truncated_and_replayed_datagrams_change_nothing(env: Env, swans: Swans) -> None:
    """A transfer completes while 500 and 4500 are pelted; the tunnel and the process stay.

    [laptop1] alice: iperf3 -> LAN, and replays of its own ESP from 192.0.2.2:4500
    [laptop2] (no tunnel) random bytes, non-ESP-marker garbage, truncated ESP, replays of
              alice's ESP from 192.0.2.3:4500 (a replay must not move alice's tunnel)
    """
    concentrator = env.gateway.ensure()
    mark = concentrator.mark()
    alice, _ = swans.connect(0, ALICE)
    laptop, other = env.lab.laptops[0], env.lab.laptops[1]
    before = alice.sas()[0]
    recorded = _capture_esp(laptop, env.tmp / "alice-esp.pcap", 10, lambda: ping(laptop, 15))
    assert len(recorded) == 10
    drops_before = inbound_drops(concentrator)

    rng = random.Random(4)
    attacker = LAPTOP_IPS[1]
    garbage = [
        *(_udp(attacker, 500, rng.randbytes(rng.randrange(0, 600))) for _ in range(40)),
        *(_udp(attacker, 4500, rng.randbytes(rng.randrange(1, 600))) for _ in range(40)),
        *(
            _udp(attacker, 4500, b"\0\0\0\0" + rng.randbytes(rng.randrange(0, 300)))
            for _ in range(20)
        ),
        *(_udp(attacker, 4500, b"\xff") for _ in range(5)),  # NAT keepalive
        *(_from(p[: rng.randrange(20 + 8, len(p))], attacker) for p in recorded),  # truncated
        *(_from(p, attacker) for p in recorded),  # replays from elsewhere
    ]
    own_replays = recorded  # from alice's own address and port

    transfer = laptop.popen(
        ["iperf3", "-c", LAN_HOST_IP, "-t", "4", "-J"], stdout=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 3.5
    rounds = 0
    while time.monotonic() < deadline:
        send_raw(other, garbage)
        send_raw(laptop, own_replays)
        rounds += 1
    output, _ = transfer.communicate(timeout=30)
    assert transfer.returncode == 0, output
    assert json.loads(output)["end"]["sum_received"]["bytes"] > 2_000_000
    assert rounds >= 3

    assert concentrator.alive(), concentrator.log_text(mark)
    after = alice.sas()[0]
    assert (after.state, after.spi_i, after.spi_r) == ("ESTABLISHED", before.spi_i, before.spi_r)
    assert after.children[0].spi_in == before.children[0].spi_in
    assert not concentrator.find(r"tunnel down|moved", since=mark), concentrator.log_text(mark)
    ping(laptop)

    def replays_counted() -> dict[str, int] | None:
        drops = inbound_drops(concentrator)
        return drops if drops.get("replayed", 0) > drops_before.get("replayed", 0) else None

    drops = wait_until(
        replays_counted, timeout=HOUSEKEEPING_S + 5, what="the 'replayed' drop counter to rise"
    )
    assert sum(drops.values()) > sum(drops_before.values()) + len(recorded), drops


# --- 8. the admin's view: status, sessions, metrics ---------------------------------------


def test_status_sessions_and_metrics_show_the_tunnel(env: Env, swans: Swans) -> None:
    """``status --json`` and ``sessions --json`` name alice and her address; metrics count 1."""
    concentrator = env.gateway.ensure()
    _, vip = swans.connect(0, ALICE)
    assert concentrator.status()["tunnels"] == 1
    sessions = concentrator.sessions()
    assert [(s["identity"], s["inner"]) for s in sessions] == [(ALICE, [vip])], sessions
    assert sessions[0]["outer"].startswith(LAPTOP_IPS[0]), sessions
    table = concentrator.cli("sessions").stdout
    assert ALICE in table, table
    assert vip in table, table
    wait_until(
        lambda: metric_value(concentrator.metrics(), "outpost_tunnels") == 1,
        timeout=HOUSEKEEPING_S + 5,
        what="outpost_tunnels 1",
    )


# --- 6. restart: Delete on SIGTERM, the same addresses afterwards ------------------------


def test_restart_deletes_and_gives_back_the_same_addresses(env: Env, swans: Swans) -> None:
    """SIGTERM deletes every tunnel (strongSwan logs it); after a restart each gets its old VIP.

    The client with the higher address reconnects first: a pool that forgot
    its leases would hand it the lowest free address instead.
    """
    concentrator = env.gateway.ensure()
    clients = [swans.connect(0, ALICE), swans.connect(1, BOB)]
    assert clients[0][1] != clients[1][1]

    assert env.gateway.stop() == 0, concentrator.log_text()
    concentrator.wait_log(r"stopped: 2 tunnels deleted, 0 did not answer")
    for swan, _ in clients:
        assert "received DELETE for IKE_SA home" in swan.log.read_text(), swan.logs()
        assert swan.sas() == [], swan.list_sas()

    concentrator = env.gateway.ensure()
    mark = concentrator.mark()
    by_address = sorted(clients, key=lambda c: ipaddress.ip_address(c[1]), reverse=True)
    for swan, vip in by_address:
        initiate(swan)
        assert swan.virtual_ip() == vip, swan.list_sas()
        ping(swan.host)
    assert len(concentrator.find(r"tunnel up", since=mark)) == 2


# --- 5. DPD finds a vanished client ---------------------------------------------------------


def test_vanished_client_is_found_dead(env: Env, swans: Swans) -> None:
    """A charon killed with SIGKILL is declared dead within DPD interval + timeout (+ slack).

    [laptop3] charon dave --SIGKILL-->  (silence)   [gw] DPD every 3 s, dead after 10 s
    """
    concentrator = env.gateway.ensure()
    mark = concentrator.mark()
    dave, _ = swans.connect(2, DAVE)
    assert dave.process is not None
    os.kill(dave.process.pid, signal.SIGKILL)
    dave.process.wait(timeout=5)
    killed = time.monotonic()
    slack = HOUSEKEEPING_S + 2  # idle is noticed on the housekeeping tick
    try:
        concentrator.wait_log(
            rf"tunnel down {re.escape(DAVE)} from 192\.0\.2\.4:4500 .*dead peer",
            since=mark,
            timeout=DPD_INTERVAL_S + DPD_TIMEOUT_S + slack,
        )
    except AssertionError:
        env.gateway.stop()  # the dead tunnel must not linger into other tests
        raise
    elapsed = time.monotonic() - killed
    assert elapsed <= DPD_INTERVAL_S + DPD_TIMEOUT_S + slack, elapsed


# --- 2. a certificate user --------------------------------------------------------------------


def test_certificate_user_connects_and_pings(env: Env, swans: Swans) -> None:
    """An ECDSA certificate from the configured CA admits a listed user; she pings the LAN.

    "Outpost Lab CA" --+-- vpn.lab.example  ([server] certificate/private_key)
                       +-- carol@lab.example (strongSwan, auth = pubkey)
    """
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    end = start + datetime.timedelta(days=30)
    ca = make_ca("Outpost Lab CA", not_before=start)
    server = make_leaf(
        ca,
        GATEWAY_ID,
        dns_names=(GATEWAY_ID,),
        eku=(ExtendedKeyUsageOID.SERVER_AUTH,),
        not_before=start,
        not_after=end,
    )
    carol = make_leaf(ca, "carol", emails=(CAROL,), not_before=start, not_after=end)
    workdir = env.gateway.workdir
    ca.write_pem(workdir / "ca.pem")
    server.write_pem(workdir / "server.pem", workdir / "server.key")
    (workdir / "server.key").chmod(0o600)
    document = concentrator_document(workdir, [{"id": CAROL}])
    document["server"] |= {"certificate": "server.pem", "private_key": "server.key"}
    document["ca"] = {"certificate": "ca.pem", "authorize": "listed"}
    document["store"]["path"] = str(workdir / "cert-state.db")

    concentrator = env.gateway.ensure("cert", document)
    mark = concentrator.mark()
    files = {
        "x509ca/ca.pem": ca.pem,
        "x509/carol.pem": carol.pem,
        "private/carol.pem": carol.key_pem,
    }
    swan, vip = swans.connect(0, CAROL, cert="carol.pem", files=files)
    assert in_pool(vip), vip
    log = swan.log.read_text()
    assert "authentication of 'vpn.lab.example' with ECDSA" in log, swan.logs()
    concentrator.wait_log(
        rf"tunnel up {re.escape(CAROL)} from 192\.0\.2\.2:4500 inner {re.escape(vip)}", since=mark
    )
    ping(env.lab.laptops[0])


# --- the log line of a tunnel's end -------------------------------------------------------------


def test_tunnel_down_line_names_the_inner_address(env: Env, swans: Swans) -> None:
    """The admin's log says which address a closed tunnel had (issue 4: one line per event)."""
    concentrator = env.gateway.ensure()
    mark = concentrator.mark()
    swan, vip = swans.connect(0, ALICE)
    swan.terminate("home")
    line = concentrator.wait_log(rf"tunnel down {re.escape(ALICE)} .*", since=mark)
    assert f" inner {vip}:" in line.group(0), line.group(0)
