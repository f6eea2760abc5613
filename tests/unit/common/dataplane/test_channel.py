"""The control channel between the control plane and a data-plane worker.

What ``DataPlane`` relies on: one message per ``send`` (SOCK_SEQPACKET keeps
boundaries), ``None`` once the other side has closed (a worker exits on it),
and a non-blocking send that says ``False`` when the peer stops reading
instead of stalling the packet loop's notices.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from common.dataplane.channel import MAX_MESSAGE, channel_pair, receive_message, send_message
from common.dataplane.messages import (
    Applied,
    CountersReport,
    InstallSa,
    PeerAddressChanged,
    Request,
    SaCounters,
    SaPair,
)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    parent, child = channel_pair()
    yield parent, child
    parent.close()
    child.close()


def test_messages_keep_their_boundaries_and_order(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    parent, child = pair
    sa = SaPair(
        peer_id=3,
        suite="aes256gcm16",
        inbound_spi=0x1001,
        outbound_spi=0x2002,
        peer_address=("192.0.2.1", 4500),
        inner_networks=("10.1.0.0/24",),
        inbound_keymat=b"\x01" * 36,
        outbound_keymat=b"\x02" * 36,
    )
    messages: list[object] = [
        Request(1, InstallSa(sa)),
        Applied(1),
        PeerAddressChanged(3, 0x1001, ("198.51.100.7", 61000)),
        CountersReport(
            2,
            "inbound",
            {"packets": 5, "octets": 500},
            (SaCounters(0x1001, 3, "inbound", 5, 500, {"replayed": 1}, 6),),
        ),
    ]
    for message in messages:
        assert send_message(parent, message)

    received = [receive_message(child) for _ in messages]

    assert received == messages
    first = received[0]
    assert isinstance(first, Request)
    assert isinstance(first.command, InstallSa)
    assert first.command.pair.inbound_keymat == b"\x01" * 36  # keys do cross the channel


def test_receive_returns_none_once_the_other_end_closed(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    parent, child = pair
    send_message(parent, Applied(9))
    parent.close()

    assert receive_message(child) == Applied(9)  # what was sent before the close still arrives
    assert receive_message(child) is None


def test_a_large_message_arrives_whole(pair: tuple[socket.socket, socket.socket]) -> None:
    """A concentrator's counters report (thousands of SAs) is one message, not a stream."""
    parent, child = pair
    sas = tuple(SaCounters(0x1000 + i, i, "outbound", i, i * 100, {}, i) for i in range(3000))
    report = CountersReport(7, "outbound", {"packets": 1}, sas)

    assert send_message(parent, report)

    assert receive_message(child) == report


def test_non_blocking_send_reports_a_full_peer_without_raising(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    parent, child = pair
    chunk = Applied(0), b"x" * (MAX_MESSAGE // 4)
    sent = 0
    while send_message(child, chunk, block=False):
        sent += 1
        assert sent < 1000, "the channel never filled up"

    assert sent >= 1
    assert receive_message(parent) == chunk  # draining makes room again
    assert send_message(child, chunk, block=False)
