"""The client controller against our concentrator, both in-process over loopback UDP.

Tier 4 of DESIGN.md with the real asyncio client: ``client.controller.Controller``
(thread-mode data plane, a socket-pair TUN behind an in-memory host network,
sockets on 127.77.0.2) and ``concentrator.service.Concentrator`` (the same
set-up on 127.77.0.1, ports 500 and 4500, which need root). The test plays
both kernels: it writes inner packets into one TUN's kernel side and reads
them from the other's, so ESP crosses both real data planes both ways.

Checked: CONNECTED with a pool address and the tunnel's facts; an echo
request and its reply cross; a Child SA rekey started by the client while
packets flow loses none of them; ``disconnect`` deletes the tunnel at the
concentrator and leaves no address or route on the client's host; a
stopped gateway puts the client in RECONNECTING ("no answer ..."), and the
restarted one (same store) gives it back the same address; a wrong PSK
ends in FAILED with plain words and no retry.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest
import pytest_asyncio

from client.controller import Controller
from client.dns import DnsEnvironment
from client.hoststate import state_path
from client.profile import AuthSettings, GatewaySettings, Profile, TunnelSettings
from client.state import LogLine, TunnelState
from common.hostnet.memory import MemoryHostNetwork
from common.ike.policy import Identity
from concentrator.config import load_config
from concentrator.control import control_request
from concentrator.service import Concentrator
from concentrator.store import MemoryStore
from tests.helpers.concentrator_config import ALICE_PSK, base_document, write_config
from tests.helpers.packets import ipv4_icmp_echo

pytestmark = [pytest.mark.privileged, pytest.mark.asyncio]

# A loopback /24 of this process's own, so two test runs on one machine do not
# collide on ports 500 and 4500 (the IPv6 case still shares ::1).
LOOPBACK = f"127.77.{os.getpid() % 250}"
GATEWAY_IP = f"{LOOPBACK}.1"
CLIENT_IP = f"{LOOPBACK}.2"
LAN_HOST = "10.99.0.10"
POOL = ipaddress.IPv4Network("10.99.100.0/24")
TIMEOUT_S = 15.0


class SocketpairTun:
    """A TUN whose kernel side is the test: one end of an AF_UNIX datagram pair."""

    offload = False

    def __init__(self, name: str, mtu: int, on_close: Callable[[], None]) -> None:
        self.name = name
        self._on_close = on_close
        self.mtu = mtu
        self.device, self.kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.kernel.setblocking(False)
        self.closed = False

    def fileno(self) -> int:
        return self.device.fileno()

    def read(self) -> bytes:
        return self.device.recv(65535)

    def write(self, packet: bytes) -> int:
        return self.device.send(packet)

    def close(self) -> None:
        self.closed = True
        self._on_close()  # the in-memory device: its link, addresses and routes go
        self.device.close()
        self.kernel.close()


class SocketpairHost(MemoryHostNetwork):
    """The in-memory host network, with socket-pair TUNs the data plane can read."""

    def __init__(self) -> None:
        super().__init__()
        self.tun: SocketpairTun | None = None

    def create_tun(self, name: str, *, mtu: int, offload: bool = False) -> SocketpairTun:  # type: ignore[override]
        device = super().create_tun(name, mtu=mtu, offload=offload)
        self.tun = SocketpairTun(device.name, mtu, device.close)
        return self.tun


class Gateway:
    """Our concentrator on 127.77.0.1, restartable on the same store."""

    def __init__(self, tmp_path: Path) -> None:
        document = base_document()
        document["server"] = {"listen": [GATEWAY_IP], "identity": "vpn.example.com", "tun": "gw0"}
        document["pool"] = {"ipv4": str(POOL), "dns": ["10.99.0.53"]}
        document["lan"] = {"subnets": ["10.99.0.0/24", "10.99.1.0/24"]}
        self.config = load_config(write_config(tmp_path, document))
        self.store = MemoryStore()
        self.host = SocketpairHost()
        self.service: Concentrator | None = None

    async def start(self) -> Concentrator:
        self.host = SocketpairHost()
        self.service = Concentrator(
            self.config, host=self.host, dataplane_mode="thread", store=self.store
        )
        await self.service.start()
        return self.service

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()
            self.service = None

    @property
    def kernel(self) -> socket.socket:
        assert self.host.tun is not None
        return self.host.tun.kernel


@pytest_asyncio.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    gateway = Gateway(tmp_path)
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


def make_profile(tmp_path: Path, psk: str = ALICE_PSK) -> Profile:
    return Profile(
        name="office",
        source=tmp_path / "office.toml",
        gateway=GatewaySettings(GATEWAY_IP, Identity.fqdn("vpn.example.com")),
        auth=AuthSettings(id="alice@example.com", psk=psk.encode()),
        tunnel=TunnelSettings(mode="split", subnets=(ipaddress.ip_network("10.99.7.0/24"),)),
        dpd_interval=30.0,
        max_backoff=2.0,
    )


def no_commands(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """No ``ip netns``, no systemd-resolved: DNS goes to the test's resolv.conf."""
    return subprocess.CompletedProcess(list(argv), 1, "", "")


def dns_environment(tmp_path: Path) -> DnsEnvironment:
    (tmp_path / "etc").mkdir(exist_ok=True)
    (tmp_path / "etc" / "resolv.conf").write_text("nameserver 192.0.2.53\n")
    return DnsEnvironment(root=tmp_path, runner=no_commands, which=lambda _name: None)


@pytest_asyncio.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[Controller, SocketpairHost]]:
    host = SocketpairHost()
    controller = Controller(
        make_profile(tmp_path),
        host=host,
        dataplane_mode="thread",
        local_address=CLIENT_IP,
        tun_name="outpost-c0",
        status_socket=tmp_path / "client.sock",
        state_dir=tmp_path / "run",
        dns_env=dns_environment(tmp_path),
        handshake_give_up_s=3.0,
    )
    try:
        yield controller, host
    finally:
        await controller.close()


async def until(predicate: Callable[[], object], timeout_s: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)


def drain(sock: socket.socket) -> list[bytes]:
    packets = []
    while True:
        try:
            packets.append(sock.recv(65535))
        except BlockingIOError:
            return packets


def collect(into: list[bytes], sock: socket.socket, count: int) -> bool:
    """Move what ``sock`` has into ``into``; True once it holds ``count`` packets."""
    into.extend(drain(sock))
    return len(into) >= count


async def receive(sock: socket.socket, count: int = 1) -> list[bytes]:
    got: list[bytes] = []
    await until(lambda: collect(got, sock, count))
    return got


async def test_connect_ping_rekey_and_disconnect(
    gateway: Gateway, client: tuple[Controller, SocketpairHost], tmp_path: Path
) -> None:
    controller, host = client
    events = controller.events()
    await controller.connect()
    await until(lambda: controller.status().state is TunnelState.CONNECTED)

    status = controller.status()
    assert status.error is None
    tunnel = status.tunnel
    assert tunnel is not None
    assert tunnel.inner_ipv4 is not None
    inner = ipaddress.IPv4Address(tunnel.inner_ipv4)
    assert inner in POOL
    assert tunnel.gateway == f"{GATEWAY_IP}:4500"
    assert tunnel.gateway_identity == "vpn.example.com"
    assert tunnel.dns == ("10.99.0.53",)
    # The gateway's two /24s collapse into one /23, plus the profile's own subnet.
    assert tunnel.routes == ("10.99.0.0/23", "10.99.7.0/24")
    assert tunnel.esp_suite == "aes256gcm16"
    assert tunnel.ike_suite
    assert tunnel.inbound_spi
    assert tunnel.outbound_spi
    assert tunnel.next_rekey_at is not None
    assert tunnel.next_rekey_at > time.time()
    assert host.addresses("outpost-c0") == [ipaddress.ip_interface(f"{inner}/32")]
    assert {str(r.network) for r in host.routes()} == set(tunnel.routes)
    state_file = state_path(tmp_path / "run", "office")
    assert state_file.exists()
    resolv_conf = tmp_path / "etc" / "resolv.conf"
    assert "nameserver 10.99.0.53" in resolv_conf.read_text()

    # The status socket answers outside the loop's thread.
    loop = asyncio.get_running_loop()
    answer = await loop.run_in_executor(None, control_request, tmp_path / "client.sock", "status")
    assert answer["state"] == "connected"
    assert answer["tunnel"]["inner_ipv4"] == str(inner)

    # Laptop -> LAN and back, through both data planes.
    assert host.tun is not None
    laptop = host.tun.kernel
    request = ipv4_icmp_echo(str(inner), LAN_HOST, seq=1)
    laptop.send(request)
    assert await receive(gateway.kernel) == [request]
    reply = ipv4_icmp_echo(LAN_HOST, str(inner), seq=1, reply=True)
    gateway.kernel.send(reply)
    assert await receive(laptop) == [reply]

    # A rekey started by the client while pings flow both ways, one every
    # 0.2 ms from a thread (so some are in flight at every step of the switch),
    # loses none: each side keeps the old inbound SA until its Delete.
    old_spi = tunnel.inbound_spi
    stop = threading.Event()
    sent = [0, 0]  # laptop -> LAN, LAN -> laptop

    def blast() -> None:
        seq = 0
        while not stop.is_set():
            seq += 1
            for index, (sock, packet) in enumerate(
                (
                    (laptop, ipv4_icmp_echo(str(inner), LAN_HOST, seq=seq & 0xFFFF)),
                    (
                        gateway.kernel,
                        ipv4_icmp_echo(LAN_HOST, str(inner), seq=seq & 0xFFFF, reply=True),
                    ),
                )
            ):
                while not stop.is_set():
                    try:
                        sock.send(packet)
                    except BlockingIOError:
                        time.sleep(0.001)
                        continue
                    sent[index] += 1
                    break
            time.sleep(0.0002)

    received_lan: list[bytes] = []
    received_laptop: list[bytes] = []
    blaster = threading.Thread(target=blast, daemon=True)
    blaster.start()
    try:
        await asyncio.sleep(0.1)
        controller.rekey()

        def rekeyed() -> bool:
            received_lan.extend(drain(gateway.kernel))
            received_laptop.extend(drain(laptop))
            now = controller.status().tunnel
            return now is not None and now.inbound_spi != old_spi

        await until(rekeyed)
        await asyncio.sleep(0.2)  # the old SAs' Deletes, with traffic still flowing
    finally:
        stop.set()
        blaster.join()
    await until(lambda: collect(received_lan, gateway.kernel, sent[0]))
    assert len(received_lan) == sent[0]
    assert min(sent) > 200
    # LAN -> laptop: the concentrator, as the rekey's responder, keeps sending on
    # the old SA until the client's Delete of it (``defer_outbound``), so no
    # packet meets an SPI the client cannot decrypt yet: none is lost.
    await until(lambda: collect(received_laptop, laptop, sent[1]))
    assert len(received_laptop) == sent[1]
    assert controller.status().traffic.drops.get("unknown_spi", 0) == 0
    # The one-second tick publishes the data plane's counters.
    await until(lambda: controller.status().traffic.packets_out >= sent[0] + 1)
    assert controller.status().traffic.packets_in >= len(received_laptop) + 1

    # Disconnect: the gateway saw the Delete, the host is as it was.
    service = gateway.service
    assert service is not None
    assert service.manager is not None
    assert len(list(service.manager.established())) == 1
    await controller.disconnect()
    assert controller.status().state is TunnelState.IDLE
    assert not service.manager.tunnels
    assert service.manager.closures["deleted by peer"] == 1
    assert host.routes() == []
    assert "outpost-c0" not in host.links
    assert host.tun.closed
    assert not state_file.exists()
    assert resolv_conf.read_text() == "nameserver 192.0.2.53\n"

    lines = []
    while True:
        try:
            event = await asyncio.wait_for(events.__anext__(), 0.1)
        except TimeoutError:
            break
        if isinstance(event, LogLine):
            lines.append(event.message)
    assert f"connecting to {GATEWAY_IP}:500" in lines
    assert f"address {inner} leased" in lines
    assert any(line.startswith("tunnel up: aes256gcm16, routes ") for line in lines)
    assert "rekeyed Child SA" in lines


async def test_gateway_restart_reconnects_with_the_same_address(
    gateway: Gateway, client: tuple[Controller, SocketpairHost]
) -> None:
    controller, host = client
    await controller.connect()
    await until(lambda: controller.status().state is TunnelState.CONNECTED)
    tunnel = controller.status().tunnel
    assert tunnel is not None
    address = tunnel.inner_ipv4

    await gateway.stop()
    await until(lambda: controller.status().state is TunnelState.RECONNECTING)
    # The TUN, address and routes stay while reconnecting: no route flap.
    assert host.addresses("outpost-c0")
    assert host.routes()
    await until(lambda: (controller.status().error or "").startswith("no answer from"))
    status = controller.status()
    assert status.error == f"no answer from {GATEWAY_IP}:500"
    assert status.reconnect_attempt >= 2
    assert status.next_retry_at is not None

    await gateway.start()
    await until(lambda: controller.status().state is TunnelState.CONNECTED)
    tunnel = controller.status().tunnel
    assert tunnel is not None
    assert tunnel.inner_ipv4 == address
    assert controller.status().reconnect_attempt == 0
    assert host.addresses("outpost-c0") == [ipaddress.ip_interface(f"{address}/32")]

    # Traffic flows on the new SAs.
    assert host.tun is not None
    request = ipv4_icmp_echo(str(address), LAN_HOST, seq=7)
    host.tun.kernel.send(request)
    assert await receive(gateway.kernel) == [request]


async def test_wrong_psk_fails_without_retry(gateway: Gateway, tmp_path: Path) -> None:
    host = SocketpairHost()
    controller = Controller(
        make_profile(tmp_path, psk="a-wrong-psk-of-decent-length"),
        host=host,
        dataplane_mode="thread",
        local_address=CLIENT_IP,
        tun_name="outpost-c0",
        serve_status=False,
        state_dir=tmp_path / "run",
        dns_env=dns_environment(tmp_path),
        handshake_give_up_s=3.0,
    )
    try:
        await controller.connect()
        await until(lambda: controller.status().state is TunnelState.FAILED)
        status = controller.status()
        assert status.error == "the gateway refused your credentials"
        assert status.reconnect_attempt == 0
        assert status.next_retry_at is None
        await asyncio.sleep(1.5)  # no retry comes
        assert controller.status().state is TunnelState.FAILED
        assert host.tun is None
        assert host.routes() == []
        service = gateway.service
        assert service is not None
        assert service.manager is not None
        assert service.manager.handshakes["failed: AUTHENTICATION_FAILED"] == 1
    finally:
        await controller.close()
