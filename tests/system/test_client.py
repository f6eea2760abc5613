"""Our client (``outpost up``) against our concentrator, both real processes (issue 5, "Proof").

Topology in tests/helpers/client_lab.py: the laptop reaches the office LAN
host 10.99.0.10 only through the tunnel (the Internet router knows no route
to the LAN), and a web host 198.51.100.10 "on the Internet" tells, by the
source address it sees, whether a packet came straight from the laptop
(192.0.2.2) or through the tunnel and the gateway (the inner address).

One lab and one concentrator serve the module; each test starts its own
client(s) and stops them. Users: alice is a split-tunnel user (the office
LAN only), bob a full-tunnel user (``subnets = 0.0.0.0/0``, so the
concentrator's traffic selectors let everything through). The concentrator
leases DNS server 10.99.0.53 ([pool] dns); inside a named namespace the
client writes it to ``/etc/netns/<namespace>/resolv.conf`` (client/dns.py).

What would fail if the feature broke: routes are read from the laptop's
kernel (``ip route get``), traffic must cross (ping, iperf3 both ways), the
resolv.conf content is compared byte for byte with what was there, a kill -9
must leave stale state behind (checked) which the next start removes, and a
SIGKILLed gateway must put the client into "reconnecting" and get the same
address back after its restart without anyone touching the client.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from client.dns import BACKUP_SUFFIX, MARKER
from tests.helpers.client_lab import (
    INTERNET,
    LAB_DNS,
    WWW_IP,
    ClientLab,
    ClientProcess,
    build_client_lab,
    iperf,
    links,
    netns_resolv_conf,
    ping,
    profile_text,
    route_get,
    routes,
    send_udp,
    wait_until,
    write_profile,
)
from tests.helpers.concentrator_lab import (
    GATEWAY_IP,
    LAN,
    LAN_HOST_IP,
    LAPTOP_IPS,
    POOL,
    POOL_GATEWAY,
    ConcentratorProcess,
    UdpSink,
    concentrator_document,
    write_document,
)
from tests.helpers.netns import Host, NetnsLab

pytestmark = [pytest.mark.privileged, pytest.mark.needs_tool("iperf3")]

ALICE, BOB = "alice@lab.example", "bob@lab.example"
PSKS = {ALICE: "alice-client-psk-0123456789abcdef", BOB: "bob-client-psk-fedcba9876543210"}
USERS: list[dict[str, Any]] = [
    {"id": ALICE, "psk": PSKS[ALICE], "subnets": [LAN]},
    {"id": BOB, "psk": PSKS[BOB], "subnets": ["0.0.0.0/0"]},
]
SINK_PORT = 9999
ORIGINAL_RESOLV = "# the laptop's own resolver (test)\nnameserver 192.0.2.53\n"
HALF_DEFAULTS = ("0.0.0.0/1", "128.0.0.0/1")


@dataclass
class Gateway:
    """The concentrator in ``gw``: one config and one store, restarted in place when killed."""

    lab: ClientLab
    workdir: Path
    config: Path
    process: ConcentratorProcess | None = None
    starts: int = 0

    def start(self) -> ConcentratorProcess:
        self.starts += 1
        process = ConcentratorProcess(
            self.lab.gw, self.config, log_path=self.workdir / f"concentrator-{self.starts}.log"
        )
        process.start()
        self.process = process
        return process

    def kill(self) -> None:
        """SIGKILL: no Delete reaches the client, which must notice by itself."""
        assert self.process is not None
        self.process.process.kill()  # type: ignore[union-attr]
        self.process.process.wait(timeout=10)  # type: ignore[union-attr]

    def stop(self) -> int | None:
        if self.process is None or not self.process.alive():
            return None
        return self.process.stop()


@dataclass
class Env:
    lab: ClientLab
    gateway: Gateway
    tmp: Path
    clients: list[ClientProcess] = field(default_factory=list)

    @property
    def laptop(self) -> Host:
        return self.lab.laptops[0]

    def client(
        self, name: str, *, user: str = ALICE, run_dir: Path | None = None, **settings: Any
    ) -> ClientProcess:
        """Start ``outpost up`` in the laptop with profile ``name`` (settings: profile_text's)."""
        profile = write_profile(
            self.tmp / "profiles" / f"{name}.toml",
            profile_text(user=user, psk=PSKS[user], **settings),
        )
        client = ClientProcess(
            self.laptop,
            profile,
            run_dir or self.tmp / f"run-{len(self.clients)}",
            log_path=self.tmp / f"client-{len(self.clients)}-{name}.log",
        )
        self.clients.append(client)
        client.start()
        return client


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """The lab, iperf3 on the LAN host, and the concentrator; resolv.conf files removed after."""
    tmp = tmp_path_factory.mktemp("client")
    with NetnsLab() as netns_lab:
        lab = build_client_lab(netns_lab, laptops=1)
        lab.lan.popen(
            ["iperf3", "-s", "-B", LAN_HOST_IP],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        document = concentrator_document(tmp / "gw", USERS)
        document["lan"] = {"subnets": ["0.0.0.0/0"]}  # bob's full tunnel must be allowed
        config = write_document(tmp / "gw" / "concentrator.toml", document)
        gateway = Gateway(lab, tmp / "gw", config)
        environment = Env(lab, gateway, tmp)
        try:
            gateway.start()
            yield environment
        finally:
            for client in environment.clients:
                if client.alive():
                    client.stop()
            gateway.stop()
            shutil.rmtree(netns_resolv_conf(lab.laptops[0]).parent, ignore_errors=True)


@pytest.fixture
def resolv(env: Env) -> Iterator[Path]:
    """The laptop namespace's resolv.conf path, absent at the start and removed at the end."""
    path = netns_resolv_conf(env.laptop)
    shutil.rmtree(path.parent, ignore_errors=True)
    try:
        yield path
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


@pytest.fixture
def sink(env: Env, tmp_path: Path) -> Iterator[UdpSink]:
    """A UDP listener on the web host: which source each datagram came from."""
    udp = UdpSink(env.lab.www, WWW_IP, SINK_PORT, tmp_path / "sink.txt")
    udp.start()
    try:
        yield udp
    finally:
        if udp.process is not None:
            udp.process.terminate()
            udp.process.wait(timeout=5)


def source_seen_by_www(env: Env, sink: UdpSink, payload: str) -> str | None:
    """Send ``payload`` from the laptop to the web host; the source address it saw."""
    send_udp(env.laptop, WWW_IP, SINK_PORT, payload)
    return sink.wait_for(payload.encode())


def tun_of(status: dict[str, Any], env: Env) -> str:
    """The client's TUN device: the one the office LAN is routed into."""
    device: str = route_get(env.laptop, LAN_HOST_IP)["dev"]
    assert device.startswith("outpost"), f"{LAN_HOST_IP} not routed into a TUN: {device}"
    assert status["state"] == "connected", status
    return device


def assert_connected(status: dict[str, Any]) -> str:
    """The status is "connected" with an inner address from the pool; that address."""
    assert status["state"] == "connected", status
    inner = status["tunnel"]["inner_ipv4"]
    assert ipaddress.ip_address(inner) in ipaddress.ip_network(POOL), status
    assert inner != POOL_GATEWAY, status
    return str(inner)


def assert_host_restored(env: Env, run_dir: Path) -> None:
    """No TUN, no route into one, no stale-state file left once the client is gone."""
    wait_until(
        lambda: not any(name.startswith("outpost") for name in links(env.laptop)),
        timeout=10,
        what="the TUN device to go",
    )
    left = [r for r in routes(env.laptop) if str(r.get("dev", "")).startswith("outpost")]
    assert not left, left
    assert not [r for r in routes(env.laptop) if r["dst"] in (*HALF_DEFAULTS, GATEWAY_IP)]
    assert route_get(env.laptop, LAN_HOST_IP)["dev"] == "to-inet"  # the default, no tunnel
    assert not list(run_dir.rglob("client-*.json")), list(run_dir.rglob("*"))


# --- tests ------------------------------------------------------------------------------


def test_internet_is_not_routed_to_the_lan(env: Env) -> None:
    """The lab's premise: without a client the laptop cannot reach the LAN at all."""
    assert route_get(env.laptop, LAN_HOST_IP)["dev"] == "to-inet"
    result = env.laptop.run(["ping", "-n", "-c", "1", "-W", "1", LAN_HOST_IP], check=False)
    assert result.returncode != 0, result.stdout
    assert ipaddress.ip_address(WWW_IP) in ipaddress.ip_network(INTERNET)


def test_split_tunnel(env: Env, resolv: Path, sink: UdpSink) -> None:
    """The office through the tunnel, everything else around it; DNS set where none was."""
    client = env.client("office", mode="split")
    status = client.wait_state("connected")
    inner = assert_connected(status)
    tun = tun_of(status, env)
    assert status["tunnel"]["routes"] == [LAN], status
    assert status["tunnel"]["dns"] == [LAB_DNS], status

    # The laptop's kernel: the LAN into the TUN, the Internet not.
    assert route_get(env.laptop, LAN_HOST_IP)["dev"] == tun
    assert route_get(env.laptop, LAN_HOST_IP)["prefsrc"] == inner
    assert route_get(env.laptop, WWW_IP)["dev"] == "to-inet"
    assert not [r for r in routes(env.laptop) if r["dst"] in HALF_DEFAULTS]
    ping(env.laptop, LAN_HOST_IP)
    assert source_seen_by_www(env, sink, "split") == LAPTOP_IPS[0]  # not through the gateway

    sent = iperf(env.laptop, LAN_HOST_IP, seconds=2)
    received = iperf(env.laptop, LAN_HOST_IP, seconds=2, reverse=True)
    assert sent > 1_000_000, sent
    assert received > 1_000_000, received
    traffic = client.status()["traffic"]  # type: ignore[index]
    assert traffic["packets_in"] > 100, traffic
    assert traffic["packets_out"] > 100, traffic

    # No resolv.conf existed: ours while up, none again after.
    text = resolv.read_text()
    assert text.startswith(MARKER), text
    assert f"nameserver {LAB_DNS}\n" in text, text
    seen = env.laptop.run(["cat", "/etc/resolv.conf"]).stdout  # what programs in it read
    assert f"nameserver {LAB_DNS}" in seen, seen

    assert client.stop() == 0, client.log_text()
    assert not resolv.exists()
    assert not resolv.parent.exists()
    assert_host_restored(env, client.run_dir)


def test_dns_set_and_restored(env: Env, resolv: Path) -> None:
    """An existing resolv.conf is replaced while up and comes back byte for byte after."""
    resolv.parent.mkdir(parents=True)
    resolv.write_text(ORIGINAL_RESOLV)
    client = env.client("office-dns", mode="split")
    client.wait_state("connected")
    text = resolv.read_text()
    assert text.startswith(MARKER), text
    assert f"nameserver {LAB_DNS}\n" in text, text
    assert "192.0.2.53" not in text, text
    backup = Path(str(resolv) + BACKUP_SUFFIX)
    assert backup.read_text() == ORIGINAL_RESOLV
    # ip netns exec bound the file over /etc/resolv.conf at start: written in place, it shows.
    assert f"nameserver {LAB_DNS}" in env.laptop.run(["cat", "/etc/resolv.conf"]).stdout

    assert client.stop() == 0, client.log_text()
    assert resolv.read_text() == ORIGINAL_RESOLV
    assert not backup.exists()
    assert_host_restored(env, client.run_dir)


def test_full_tunnel(env: Env, resolv: Path, sink: UdpSink) -> None:
    """Everything through the gateway; the gateway itself keeps its original path."""
    client = env.client("everything", user=BOB, mode="full")
    status = client.wait_state("connected")
    inner = assert_connected(status)
    assert sorted(status["tunnel"]["routes"]) == sorted(HALF_DEFAULTS), status
    tun = tun_of(status, env)

    by_dst = {r["dst"]: r for r in routes(env.laptop)}
    for half in HALF_DEFAULTS:
        assert by_dst[half]["dev"] == tun, by_dst
    # The host route pinning the gateway to the physical path: ESP does not loop.
    assert by_dst[GATEWAY_IP]["dev"] == "to-inet", by_dst
    assert route_get(env.laptop, GATEWAY_IP)["dev"] == "to-inet"
    assert route_get(env.laptop, WWW_IP)["dev"] == tun
    assert route_get(env.laptop, WWW_IP)["prefsrc"] == inner

    ping(env.laptop, WWW_IP)
    ping(env.laptop, LAN_HOST_IP)
    # The web host sees the inner address: the packet left the tunnel at the gateway.
    assert source_seen_by_www(env, sink, "full") == inner

    assert client.stop() == 0, client.log_text()
    assert_host_restored(env, client.run_dir)
    assert route_get(env.laptop, WWW_IP)["dev"] == "to-inet"
    assert source_seen_by_www(env, sink, "after") == LAPTOP_IPS[0]


def test_kill_9_is_repaired_at_the_next_start(env: Env, resolv: Path) -> None:
    """A SIGKILLed client leaves DNS and the gateway's host route; the next start undoes them."""
    resolv.parent.mkdir(parents=True)
    resolv.write_text(ORIGINAL_RESOLV)
    run_dir = env.tmp / "run-kill9"  # shared by both clients: the same /run/outpost
    killed = env.client("killed", user=BOB, mode="full", run_dir=run_dir)
    killed.wait_state("connected")
    killed.kill()

    # What a kill -9 leaves behind (the test would prove nothing if nothing were left).
    assert f"nameserver {LAB_DNS}" in resolv.read_text()
    assert [r for r in routes(env.laptop) if r["dst"] == GATEWAY_IP], routes(env.laptop)
    assert (killed.state_dir / "client-killed.json").exists()
    # The TUN (and the routes through it) go with the last descriptor: the
    # data-plane workers must exit when their control channel closes.
    wait_until(
        lambda: not any(name.startswith("outpost") for name in links(env.laptop)),
        timeout=10,
        what="the killed client's TUN to vanish",
    )

    # Another profile, no DNS of its own: what is restored afterwards is the repair.
    repairing = env.client("after", user=ALICE, mode="split", dns=False, run_dir=run_dir)
    repairing.wait_log(r"removed the stale route 192\.0\.2\.1")
    repairing.wait_log(r"restored DNS \(netns\)")
    repairing.wait_state("connected")
    assert resolv.read_text() == ORIGINAL_RESOLV
    assert not Path(str(resolv) + BACKUP_SUFFIX).exists()
    assert not [r for r in routes(env.laptop) if r["dst"] in (GATEWAY_IP, *HALF_DEFAULTS)]
    assert not (killed.state_dir / "client-killed.json").exists()
    ping(env.laptop, LAN_HOST_IP)
    assert route_get(env.laptop, WWW_IP)["dev"] == "to-inet"

    assert repairing.stop() == 0, repairing.log_text()
    assert_host_restored(env, run_dir)
    assert resolv.read_text() == ORIGINAL_RESOLV


def test_gateway_killed_then_back(env: Env, resolv: Path) -> None:
    """SIGKILLed concentrator: "reconnecting", then connected again by itself, same address."""
    client = env.client("roaming", mode="split", dpd_interval=2, max_backoff=2)
    inner = assert_connected(client.wait_state("connected"))
    ping(env.laptop, LAN_HOST_IP)

    env.gateway.kill()
    # DPD after 2 s without inbound ESP, then up to 10 s of retransmissions.
    lost = client.wait_status(
        lambda s: s["state"] == "reconnecting", timeout=40, what="reconnecting"
    )
    assert lost["reconnect_attempt"] >= 1, lost
    assert lost["next_retry_at"] is not None, lost
    assert lost["error"], lost
    # The TUN and its routes stay while reconnecting (applications see no route flap).
    assert route_get(env.laptop, LAN_HOST_IP)["dev"].startswith("outpost")

    env.gateway.start()  # same configuration, same store
    back = client.wait_state("connected", timeout=60)
    assert back["tunnel"]["inner_ipv4"] == inner, (inner, back)
    ping(env.laptop, LAN_HOST_IP)
    assert client.stop() == 0, client.log_text()
    assert_host_restored(env, client.run_dir)
