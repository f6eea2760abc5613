"""Every ESP packet strongSwan 5.9.8 sent in the lab captures, through our InboundSa and back.

Both captures (AES-GCM-256 and ChaCha20-Poly1305), both Child SAs (the one from
IKE_AUTH and its rekeyed successor), both directions. Decapsulation proves we
read a real peer's packets; re-encapsulating the inner packet with the same
sequence number and IV and getting the captured bytes back proves we build
exactly what strongSwan builds, padding included. Provenance of the files:
tests/vectors/strongswan/README.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from common.esp.natt import NAT_T_PORT, DatagramKind, classify
from common.esp.sa import DROP_COUNT, Drop, InboundSa, OutboundSa
from common.esp.suites import suite_by_name
from tests.helpers.packets import ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, parse_ipv4_icmp_echo
from tests.helpers.vectors import UdpDatagram, load_json_vectors, udp_datagrams, vector_path

CAPTURES = ("strongswan-gcm-psk", "strongswan-chacha-psk")
CLIENT_INNER = "10.99.100.1"  # the initiator's virtual IP
LAN_HOST = "10.99.0.10"


@dataclass(frozen=True)
class EspDirection:
    """One direction of one Child SA, as the JSON describes it."""

    capture: str
    child: int
    direction: str  # "i_to_r" or "r_to_i"
    suite_name: str
    spi: int
    keymat: bytes
    outer_src: str
    outer_dst: str
    frames: tuple[int, ...]

    @property
    def id(self) -> str:
        return f"{self.capture}-child{self.child}-{self.direction}"


def _directions() -> list[EspDirection]:
    found = []
    for capture in CAPTURES:
        data: dict[str, Any] = load_json_vectors(f"strongswan/{capture}.json")
        assert data["suite"]["esn"] is False
        for child_index, child in enumerate(data["child_sas"]):
            for direction in ("i_to_r", "r_to_i"):
                sa = child[direction]
                assert bytes.fromhex(sa["key_salt"]) == bytes.fromhex(sa["key"] + sa["salt"])
                found.append(
                    EspDirection(
                        capture=capture,
                        child=child_index,
                        direction=direction,
                        suite_name=data["suite"]["esp_encr"],
                        spi=int(sa["spi"], 16),
                        keymat=bytes.fromhex(sa["key_salt"]),
                        outer_src=sa["outer_src"],
                        outer_dst=sa["outer_dst"],
                        frames=tuple(sa["frames"]),
                    )
                )
    return found


DIRECTIONS = _directions()


def _esp_datagrams(capture: str) -> dict[int, UdpDatagram]:
    """Frame number -> datagram, for every ESP-in-UDP datagram of the capture."""
    return {
        datagram.frame: datagram
        for datagram in udp_datagrams(vector_path("strongswan", f"{capture}.pcap"))
        if NAT_T_PORT in (datagram.sport, datagram.dport)
        and classify(datagram.payload) is DatagramKind.ESP
    }


@pytest.mark.parametrize("capture", CAPTURES)
def test_json_names_every_esp_frame_of_the_capture(capture: str) -> None:
    """No ESP packet of the capture escapes the tests below (and none is invented)."""
    listed = sorted(f for d in DIRECTIONS if d.capture == capture for f in d.frames)
    assert listed == sorted(_esp_datagrams(capture))
    assert len(listed) == 14  # 3 + 2 + 2 pings, both ways


@pytest.mark.parametrize("sa", DIRECTIONS, ids=lambda sa: sa.id)
def test_decapsulates_every_captured_packet(sa: EspDirection) -> None:
    datagrams = _esp_datagrams(sa.capture)
    inbound = InboundSa(sa.spi, suite_by_name(sa.suite_name), sa.keymat)
    expected_type = ICMP_ECHO_REQUEST if sa.direction == "i_to_r" else ICMP_ECHO_REPLY
    expected_src, expected_dst = (
        (CLIENT_INNER, LAN_HOST) if sa.direction == "i_to_r" else (LAN_HOST, CLIENT_INNER)
    )
    octets = 0
    for frame in sa.frames:
        datagram = datagrams[frame]
        assert (datagram.src, datagram.dst) == (sa.outer_src, sa.outer_dst)
        assert datagram.payload[:4] == sa.spi.to_bytes(4, "big")

        inner = inbound.decapsulate(datagram.payload)

        assert isinstance(inner, bytes), f"frame {frame}: {inner!r}"
        echo = parse_ipv4_icmp_echo(inner)
        assert (echo.src, echo.dst, echo.icmp_type) == (expected_src, expected_dst, expected_type)
        octets += len(inner)
    assert inbound.packets == len(sa.frames)
    assert inbound.octets == octets
    assert inbound.drops == [0] * DROP_COUNT


@pytest.mark.parametrize("sa", DIRECTIONS, ids=lambda sa: sa.id)
def test_reencapsulation_gives_the_captured_bytes(sa: EspDirection) -> None:
    datagrams = _esp_datagrams(sa.capture)
    suite = suite_by_name(sa.suite_name)
    inbound = InboundSa(sa.spi, suite, sa.keymat)
    outbound = OutboundSa(sa.spi, suite, sa.keymat)
    for frame in sa.frames:
        captured = datagrams[frame].payload
        seq = int.from_bytes(captured[4:8], "big")
        iv = captured[8 : 8 + suite.iv_len]
        inner = inbound.decapsulate(captured)
        assert isinstance(inner, bytes)

        rebuilt = outbound.encapsulate_at(inner, seq, iv)

        assert rebuilt.hex() == captured.hex(), f"frame {frame}"


@pytest.mark.parametrize("sa", DIRECTIONS, ids=lambda sa: sa.id)
def test_captured_packets_are_replays_the_second_time(sa: EspDirection) -> None:
    datagrams = _esp_datagrams(sa.capture)
    inbound = InboundSa(sa.spi, suite_by_name(sa.suite_name), sa.keymat)
    for frame in sa.frames:
        assert isinstance(inbound.decapsulate(datagrams[frame].payload), bytes)
    for frame in sa.frames:
        assert inbound.decapsulate(datagrams[frame].payload) is Drop.REPLAYED
    assert inbound.drops[Drop.REPLAYED] == len(sa.frames)


@pytest.mark.parametrize("sa", DIRECTIONS, ids=lambda sa: sa.id)
def test_other_direction_key_does_not_open_the_packets(sa: EspDirection) -> None:
    """Keys are per direction (RFC 7296 2.17): swapping them must fail the ICV."""
    other = next(
        d
        for d in DIRECTIONS
        if d.capture == sa.capture and d.child == sa.child and d.direction != sa.direction
    )
    inbound = InboundSa(sa.spi, suite_by_name(sa.suite_name), other.keymat)
    first = _esp_datagrams(sa.capture)[sa.frames[0]].payload
    assert inbound.decapsulate(first) is Drop.AUTH_FAILED
