"""The concentrator service in-process: real UDP on loopback, a thread-mode data plane.

Tier 4 of DESIGN.md: the asyncio service with its sockets, timer and data
plane, against IKEv2 clients made of our initiator core and ESP made by
``common.esp`` in the test. The TUN is a socket pair (the test is the
kernel) behind an in-memory host network, so nothing but loopback UDP is
touched. Ports 500 and 4500 on 127.77.0.1 need root (CI is root).

Checked: IKE_SA_INIT on 500 then IKE_AUTH on 4500 with an address leased
from the pool; an ESP packet from the client comes out of the TUN; a packet
the "kernel" routes to the leased address reaches the client encrypted from
port 4500; a forged inner source is dropped; garbage on both ports changes
nothing; reload and graceful stop (a Delete reaches the client).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from common.esp.natt import NON_ESP_MARKER
from common.esp.sa import InboundSa, OutboundSa
from common.esp.suites import suite_by_name
from common.hostnet.memory import MemoryHostNetwork
from common.ike.events import (
    AddressAssigned,
    ChildSaEstablished,
    IkeEvent,
    IkeSaDeleted,
    IkeSaFailed,
)
from common.ike.policy import Identity, IkeConfiguration
from common.ike.session import IkeSession
from concentrator.config import load_config
from concentrator.control import ControlError, control_request
from concentrator.service import Concentrator
from concentrator.store import MemoryStore
from tests.helpers.concentrator_config import (
    ALICE_PSK,
    BOB_PSK,
    LOAD_PSK,
    base_document,
    write_config,
)
from tests.helpers.packets import ipv4_icmp_echo, ipv4_udp

pytestmark = [pytest.mark.privileged, pytest.mark.asyncio]

# A loopback /24 of this process's own, so two test runs on one machine do not
# collide on ports 500 and 4500 (the IPv6 case still shares ::1).
LOOPBACK = f"127.77.{os.getpid() % 250}"
GATEWAY_IP = f"{LOOPBACK}.1"
TIMEOUT_S = 10.0


class SocketpairTun:
    """A TUN whose kernel side is the test: one end of an AF_UNIX datagram pair."""

    offload = False

    def __init__(self, name: str, mtu: int) -> None:
        self.name = name
        self.mtu = mtu
        self.device, self.kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.kernel.setblocking(False)

    def fileno(self) -> int:
        return self.device.fileno()

    def close(self) -> None:
        self.device.close()
        self.kernel.close()


class SocketpairHost(MemoryHostNetwork):
    """The in-memory host network, with socket-pair TUNs the data plane can read."""

    def __init__(self) -> None:
        super().__init__()
        self.tun: SocketpairTun | None = None

    def create_tun(self, name: str, *, mtu: int, offload: bool = False) -> SocketpairTun:  # type: ignore[override]
        super().create_tun(name, mtu=mtu, offload=offload)
        self.tun = SocketpairTun(name, mtu)
        return self.tun


@dataclass
class Client:
    """An IKEv2 initiator core on two loopback UDP sockets (its own ports 500 and 4500)."""

    session: IkeSession
    ike: socket.socket
    natt: socket.socket
    events: list[IkeEvent] = field(default_factory=list)

    @classmethod
    def make(cls, address: str, identity: str, psk: str, gateway: str = GATEWAY_IP) -> Client:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        ike = socket.socket(family, socket.SOCK_DGRAM)
        natt = socket.socket(family, socket.SOCK_DGRAM)
        # IPv6 loopback has one address, which the gateway holds: take free ports.
        ike.bind((address, 500 if family == socket.AF_INET else 0))
        natt.bind((address, 4500 if family == socket.AF_INET else 0))
        for sock in (ike, natt):
            sock.setblocking(False)
        config = IkeConfiguration(
            local_id=Identity.rfc822(identity),
            remote_id=Identity.fqdn("vpn.example.com"),
            psk=psk.encode(),
            ike_proposals=("aes256gcm16-prfsha256-x25519",),
            esp_proposals=("aes256gcm16",),
        )
        session = IkeSession(
            config,
            is_initiator=True,
            local_addr=ike.getsockname()[:2],
            remote_addr=(gateway, 500),
        )
        return cls(session, ike, natt)

    def pump(self, now: float) -> None:
        for data, address in self.session.datagrams_to_send(now):
            if self.session.use_nat_t:
                self.natt.sendto(NON_ESP_MARKER + data, address)
            else:
                self.ike.sendto(data, address)
        while (event := self.session.next_event()) is not None:
            self.events.append(event)

    def receive(self, now: float) -> list[bytes]:
        """Feed waiting IKE to the session; return ESP datagrams that arrived on 4500."""
        esp: list[bytes] = []
        for sock in (self.ike, self.natt):
            while True:
                try:
                    data, source = sock.recvfrom(65535)
                except BlockingIOError:
                    break
                if sock is self.natt:
                    if not data.startswith(NON_ESP_MARKER):
                        esp.append(data)
                        continue
                    data = data[len(NON_ESP_MARKER) :]
                self.session.receive_datagram(data, source[:2], now)
        self.pump(now)
        return esp

    def child(self) -> ChildSaEstablished | None:
        return next((e for e in self.events if isinstance(e, ChildSaEstablished)), None)

    def address(self) -> ipaddress.IPv4Address | None:
        event = next((e for e in self.events if isinstance(e, AddressAssigned)), None)
        return None if event is None else event.address

    def close(self) -> None:
        self.ike.close()
        self.natt.close()


async def until(predicate: Callable[[], object], client: Client | None = None) -> None:
    """Poll (driving ``client``) until ``predicate()`` holds, for at most ``TIMEOUT_S``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT_S
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("timed out")
        if client is not None:
            client.receive(loop.time())
            timer = client.session.get_timer()
            if timer is not None and timer <= loop.time():
                client.session.handle_timer(loop.time())
                client.pump(loop.time())
        await asyncio.sleep(0.01)


@pytest_asyncio.fixture
async def service(tmp_path: Path) -> AsyncIterator[tuple[Concentrator, SocketpairHost]]:
    document = service_document()
    config = load_config(write_config(tmp_path, document))
    host = SocketpairHost()
    concentrator = Concentrator(config, host=host, dataplane_mode="thread", store=MemoryStore())
    await concentrator.start()
    try:
        yield concentrator, host
    finally:
        await concentrator.stop()


def service_document() -> dict[str, Any]:
    document = base_document()
    document["server"] = {
        "listen": [GATEWAY_IP, "::1"],
        "identity": "vpn.example.com",
        "tun": "outpost-test0",
    }
    document["pool"] = {"ipv4": "10.99.100.0/24", "dns": ["10.99.0.53"]}
    document["lan"] = {"subnets": ["10.99.0.0/24", "10.99.1.0/24"]}
    return document


@contextlib.contextmanager
def client_at(address: str, identity: str, psk: str, gateway: str = GATEWAY_IP) -> Iterator[Client]:
    client = Client.make(address, identity, psk, gateway)
    try:
        yield client
    finally:
        client.close()


async def connect(client: Client) -> None:
    loop = asyncio.get_running_loop()
    client.session.initiate(loop.time())
    client.pump(loop.time())
    await until(lambda: client.child() is not None or _failed(client), client)


def _failed(client: Client) -> bool:
    return any(isinstance(e, IkeSaFailed) for e in client.events)


def esp_pair(child: ChildSaEstablished) -> tuple[OutboundSa, InboundSa]:
    suite = suite_by_name(child.esp_suite)
    return (
        OutboundSa(child.outbound_spi, suite, child.outbound_keymat),
        InboundSa(child.inbound_spi, suite, child.inbound_keymat),
    )


async def test_client_gets_an_address_and_traffic_flows_both_ways(
    service: tuple[Concentrator, SocketpairHost],
) -> None:
    concentrator, host = service
    assert host.tun is not None
    kernel = host.tun.kernel
    with client_at(f"{LOOPBACK}.2", "alice@example.com", ALICE_PSK) as alice:
        await connect(alice)
        child, address = alice.child(), alice.address()
        assert child is not None
        assert address is not None
        assert address in ipaddress.IPv4Network("10.99.100.0/24")
        assert address != ipaddress.IPv4Address("10.99.100.1")  # the gateway's own
        # The first move went to 500, the rest to 4500 (encapsulation is forced).
        assert alice.session.use_nat_t
        outbound, inbound = esp_pair(child)

        # Laptop -> LAN: ESP in, the inner packet out of the TUN.
        ping = ipv4_icmp_echo(str(address), "10.99.0.10", seq=1)
        packet = outbound.encapsulate(ping)
        assert isinstance(packet, bytes)
        alice.natt.sendto(packet, (GATEWAY_IP, 4500))
        loop = asyncio.get_running_loop()
        got = await loop.run_in_executor(None, _recv, kernel)
        assert got == ping

        # LAN -> laptop: the kernel routes a reply into the TUN, ESP reaches the client.
        reply = ipv4_icmp_echo("10.99.0.10", str(address), seq=1, reply=True)
        kernel.send(reply)
        received: list[bytes] = []
        await until(lambda: bool(received) or bool(received.extend(alice.receive(loop.time()))))
        assert inbound.decapsulate(received[0]) == reply

        # A forged inner source (not the leased address) is dropped and counted.
        forged = outbound.encapsulate(ipv4_udp("10.99.100.200", "10.99.0.10", data=b"x"))
        assert isinstance(forged, bytes)
        alice.natt.sendto(forged, (GATEWAY_IP, 4500))
        assert concentrator.dataplane is not None
        await until(lambda: _drops(concentrator) > 0)
        with pytest.raises(BlockingIOError):
            kernel.recv(65535)

        # Garbage at both ports: counted, nothing else changes.
        junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with junk:
            for port in (500, 4500):
                for data in (b"", b"\x00" * 3, os.urandom(40), NON_ESP_MARKER + os.urandom(60)):
                    junk.sendto(data, (GATEWAY_IP, port))
        manager = concentrator.manager
        assert manager is not None
        await until(lambda: sum(manager.ike_drops.values()) >= 2)
        assert len(list(manager.established())) == 1
        assert concentrator.stats.ike_received >= 2

        # The control socket answers from the running service (off the loop's thread).
        path = concentrator.config.control.socket
        status = await loop.run_in_executor(None, control_request, path, "status")
        assert status["tunnels"] == 1
        sessions = await loop.run_in_executor(None, control_request, path, "sessions")
        assert [(s["identity"], s["inner"]) for s in sessions] == [
            ("alice@example.com", [str(address)])
        ]


async def test_wrong_psk_is_refused_and_the_other_tunnel_stays(
    service: tuple[Concentrator, SocketpairHost],
) -> None:
    concentrator, _host = service
    manager = concentrator.manager
    assert manager is not None
    with (
        client_at(f"{LOOPBACK}.2", "alice@example.com", ALICE_PSK) as alice,
        client_at(f"{LOOPBACK}.3", "bob@example.com", "a-wrong-psk-of-decent-length") as bob,
    ):
        await connect(alice)
        await connect(bob)
        assert _failed(bob)
        assert alice.child() is not None
        assert [str(t.identity) for t in manager.established()] == ["alice@example.com"]
        assert manager.handshakes["failed: AUTHENTICATION_FAILED"] == 1


async def test_stop_sends_delete_to_every_client(tmp_path: Path) -> None:
    document = base_document()
    document["server"] = {"listen": [GATEWAY_IP], "identity": "vpn.example.com", "tun": "opt1"}
    document["pool"] = {"ipv4": "10.99.100.0/24"}
    document["lan"] = {"subnets": ["10.99.0.0/24", "10.99.1.0/24"]}
    config = load_config(write_config(tmp_path, document))
    concentrator = Concentrator(
        config, host=SocketpairHost(), dataplane_mode="thread", store=MemoryStore()
    )
    await concentrator.start()
    loop = asyncio.get_running_loop()
    with (
        client_at(f"{LOOPBACK}.2", "alice@example.com", ALICE_PSK) as alice,
        client_at(f"{LOOPBACK}.3", "bob@example.com", BOB_PSK) as bob,
    ):
        try:
            await connect(alice)
            await connect(bob)
            stopping = asyncio.ensure_future(concentrator.stop())
            # The clients answer the Deletes while the service waits for them.
            while not stopping.done():
                alice.receive(loop.time())
                bob.receive(loop.time())
                await asyncio.sleep(0.01)
        finally:
            await concentrator.stop()
        for client in (alice, bob):
            assert any(isinstance(e, IkeSaDeleted) and e.by_peer for e in client.events)
    assert concentrator.manager is not None
    assert not concentrator.manager.tunnels
    assert concentrator.manager.closures["shutdown"] == 2


def _recv(sock: socket.socket) -> bytes:
    sock.settimeout(TIMEOUT_S)
    try:
        return sock.recv(65535)
    finally:
        sock.setblocking(False)


def _drops(concentrator: Concentrator) -> int:
    assert concentrator.dataplane is not None
    counters = concentrator.dataplane.counters()
    return sum(v for k, v in counters.inbound.items() if "spoof" in k or "selector" in k)


async def test_a_client_over_ipv6_gets_its_tunnel_from_the_ipv6_socket(
    service: tuple[Concentrator, SocketpairHost],
) -> None:
    concentrator, host = service
    assert host.tun is not None
    with client_at("::1", "alice@example.com", ALICE_PSK, gateway="::1") as alice:
        await connect(alice)
        child, address = alice.child(), alice.address()
        assert child is not None
        assert address is not None
        outbound, inbound = esp_pair(child)
        gateway_natt = ("::1", 4500)
        ping = ipv4_icmp_echo(str(address), "10.99.0.10", seq=7)
        packet = outbound.encapsulate(ping)
        assert isinstance(packet, bytes)
        alice.natt.sendto(packet, gateway_natt)
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, _recv, host.tun.kernel) == ping
        reply = ipv4_icmp_echo("10.99.0.10", str(address), seq=7, reply=True)
        host.tun.kernel.send(reply)
        received: list[bytes] = []
        await until(lambda: bool(received) or bool(received.extend(alice.receive(loop.time()))))
        assert inbound.decapsulate(received[0]) == reply
        (session,) = concentrator.sessions()
        assert session["outer"].startswith("[::1]:")


async def test_reload_disconnects_removed_users_and_keeps_the_others(
    service: tuple[Concentrator, SocketpairHost],
) -> None:
    concentrator, _host = service
    manager = concentrator.manager
    assert manager is not None
    loop = asyncio.get_running_loop()
    with (
        client_at(f"{LOOPBACK}.2", "alice@example.com", ALICE_PSK) as alice,
        client_at(f"{LOOPBACK}.3", "bob@example.com", BOB_PSK) as bob,
    ):
        await connect(alice)
        await connect(bob)
        document = service_document()
        document["users"] = [u for u in document["users"] if u["id"] != "bob@example.com"]
        write_config(concentrator.config.source.parent, document)
        path = concentrator.config.control.socket
        report = await loop.run_in_executor(None, control_request, path, "reload")
        assert report["removed"] == ["bob@example.com"]
        assert report["disconnected"] == 1
        await until(lambda: any(isinstance(e, IkeSaDeleted) for e in bob.events), bob)
        assert [str(t.identity) for t in manager.established()] == ["alice@example.com"]
        alice.session.check_liveness(loop.time())
        alice.pump(loop.time())
        await until(lambda: not alice.session.exchanging, alice)
        # A broken config is refused and the running one stays.
        concentrator.config.source.write_text("[server\n")
        with pytest.raises(ControlError, match=r"concentrator\.toml"):
            await loop.run_in_executor(None, control_request, path, "reload")
        assert [str(t.identity) for t in manager.established()] == ["alice@example.com"]


async def test_many_clients_add_no_task_and_no_loop_timer(
    service: tuple[Concentrator, SocketpairHost],
) -> None:
    """Issue 6: no per-tunnel task or timer object; one heap entry per tunnel at most."""
    concentrator, _host = service
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(client_at(f"{LOOPBACK}.10", "user-1@loadtest", LOAD_PSK))
        await connect(first)
        one = concentrator.status()["loop"]
        clients = [
            stack.enter_context(client_at(f"{LOOPBACK}.{10 + n}", f"user-{n}@loadtest", LOAD_PSK))
            for n in range(2, 31)
        ]
        for client in clients:
            await connect(client)
        assert all(c.child() is not None for c in clients)
        many = concentrator.status()["loop"]
    assert concentrator.status()["tunnels"] == 30
    assert many["scheduled_tunnels"] == 30  # each tunnel's DPD deadline, in one heap
    assert many["tasks"] <= one["tasks"]
    assert many["timer_handles"] <= one["timer_handles"] + 1
