"""A simulated client's bookkeeping: failures by reason from IKE events, timeouts, lost tunnels.

The client is driven through its event handler and timer exactly as its
worker drives it; its socket is a real loopback UDP socket nobody answers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from common.ike.constants import NotifyType
from common.ike.events import (
    AddressAssigned,
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    ChildSaRekeyed,
    IkeSaDeleted,
    IkeSaFailed,
    PeerUnreachable,
)
from common.ike.policy import Identity, IkeConfiguration
from loadtest.client import SimClient, TrafficPlan
from loadtest.stats import Tally
from loadtest.worker import is_cookie, source_addresses

TARGET = ipaddress.IPv4Address("10.99.0.10")


@pytest.fixture
def client() -> Iterator[SimClient]:
    configuration = IkeConfiguration(
        local_id=Identity.rfc822("user-1@loadtest"),
        remote_id=Identity.fqdn("vpn.example.com"),
        psk=b"0123456789abcdef",
        force_encapsulation=True,
    )
    sim = SimClient(1, configuration, "127.0.0.1", None, TrafficPlan(TARGET, pps=2), Tally())
    try:
        yield sim
    finally:
        sim.sock.close()


def child() -> ChildSaEstablished:
    return ChildSaEstablished(0x1001, 0x2002, "aes256gcm16", False, bytes(36), bytes(36), (), ())


def up(client: SimClient, now: float = 1.0) -> None:
    client.start(0.0, timeout_s=5)
    client._on_event(AddressAssigned(ipaddress.IPv4Address("10.99.100.2"), (), ()), now)
    client._on_event(child(), now)


def test_establishment_is_timed_and_starts_probes(client: SimClient) -> None:
    up(client, now=0.25)
    assert client.tally.established == 1
    assert client.tally.establish_ms == [250.0]
    assert client.up
    assert client.next_probe is not None
    assert client.next_probe <= 0.25 + 1 / 2
    client.on_timer(client.next_probe)
    assert client.tally.packets_sent == 1


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (IkeSaFailed("refused", NotifyType.AUTHENTICATION_FAILED), "AUTHENTICATION_FAILED"),
        (IkeSaFailed("peer unreachable", None), "timeout"),
        (
            ChildSaFailed("no address", NotifyType.INTERNAL_ADDRESS_FAILURE),
            "INTERNAL_ADDRESS_FAILURE",
        ),
        (IkeSaFailed("no proposal", NotifyType.NO_PROPOSAL_CHOSEN), "NO_PROPOSAL_CHOSEN"),
    ],
)
def test_failures_are_counted_once_by_reason(
    client: SimClient, event: IkeSaFailed | ChildSaFailed, reason: str
) -> None:
    client.start(0.0, timeout_s=5)
    client._on_event(event, 0.5)
    client._on_event(IkeSaFailed("peer unreachable", None), 0.6)  # a second fact: not recounted
    assert client.tally.failed == 1
    assert client.tally.failures == {reason: 1}
    assert client.tally.established == 0


def test_no_answer_within_the_timeout_is_a_timeout(client: SimClient) -> None:
    client.start(0.0, timeout_s=5)
    deadline = client.deadline()
    assert deadline is not None
    client.on_timer(5.0)
    assert client.closed
    assert client.tally.failures == {"timeout": 1}


def test_a_tunnel_dropped_by_the_gateway_is_lost_and_ours_is_closed(client: SimClient) -> None:
    up(client)
    client._on_event(PeerUnreachable(), 3.0)
    assert client.tally.lost == 1
    assert client.tally.failed == 0


def test_our_own_delete_is_not_a_loss(client: SimClient) -> None:
    up(client)
    client.delete(5.0)
    client._on_event(IkeSaDeleted(by_peer=False), 5.1)
    assert client.tally.closed == 1
    assert client.tally.lost == 0
    assert client.closed


def test_cookie_answer_is_recognised() -> None:
    header = bytes(16) + bytes([41]) + bytes(11)
    notify = bytes([0, 0, 0, 8, 0, 0]) + (16390).to_bytes(2, "big")
    assert is_cookie(header + notify)
    assert not is_cookie(header + bytes(6) + (14).to_bytes(2, "big"))
    assert not is_cookie(b"short")


def test_source_addresses_are_hosts_of_the_cidr() -> None:
    assert source_addresses("198.51.100.0/30", 10) == ("198.51.100.1", "198.51.100.2")
    assert len(source_addresses("198.51.100.0/22", 1000)) == 1000
    assert source_addresses(None, 5) == ()


def rekeyed(*, initiated_by_us: bool) -> ChildSaRekeyed:
    return ChildSaRekeyed(
        0x1001,
        0x2002,
        0x1003,
        0x2004,
        "aes256gcm16",
        False,
        bytes(36),
        bytes(36),
        (),
        (),
        initiated_by_us=initiated_by_us,
    )


def test_a_rekey_the_gateway_started_keeps_sending_on_the_old_sa_until_it_is_deleted(
    client: SimClient,
) -> None:
    """The gateway installs its new inbound half only when our answer arrives."""
    up(client)
    client._on_event(rekeyed(initiated_by_us=False), 2.0)
    assert client.tally.child_rekeys == 1
    assert set(client.inbound) == {0x1001, 0x1003}  # both received on
    assert client.outbound is not None
    assert client.outbound.spi == 0x2002  # still the old one
    client._on_event(ChildSaDeleted(0x1001, 0x2002), 2.1)
    assert set(client.inbound) == {0x1003}
    assert client.outbound.spi == 0x2004
    assert client.deferred == {}


def test_a_rekey_we_started_sends_on_the_new_sa_at_once(client: SimClient) -> None:
    up(client)
    client._on_event(rekeyed(initiated_by_us=True), 2.0)
    assert client.outbound is not None
    assert client.outbound.spi == 0x2004
    assert client.deferred == {}
