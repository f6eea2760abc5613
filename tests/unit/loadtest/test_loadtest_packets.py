"""Probes and the reply check of outpost-loadtest: only a genuine reply to this client counts.

Replies are built by hand here (swap addresses, echo reply type), the way the
target's kernel answers, and checked with scapy as an independent parser.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest
from scapy.layers.inet import ICMP, IP, UDP

from common.wire.ip import internet_checksum
from loadtest.packets import Prober, Verdict, ipv4

INNER = ipaddress.IPv4Address("10.99.100.7")
TARGET = ipaddress.IPv4Address("10.99.0.10")
OTHER = ipaddress.IPv4Address("10.99.100.8")


def icmp_reply(
    probe: bytes,
    *,
    src: ipaddress.IPv4Address = TARGET,
    dst: ipaddress.IPv4Address = INNER,
    icmp_type: int = 0,
) -> bytes:
    body = bytearray(probe[20:])
    body[0] = icmp_type
    body[2:4] = b"\x00\x00"
    body[2:4] = struct.pack("!H", internet_checksum(bytes(body)))
    return ipv4(src, dst, 1, bytes(body))


def udp_reply(probe: bytes, *, src: ipaddress.IPv4Address = TARGET) -> bytes:
    sport, dport, length, _ = struct.unpack("!HHHH", probe[20:28])
    return ipv4(src, INNER, 17, struct.pack("!HHHH", dport, sport, length, 0) + probe[28:])


def test_icmp_probe_is_a_valid_echo_request() -> None:
    prober = Prober(client=7, inner=INNER, target=TARGET)
    packet = IP(prober.probe(3))
    assert packet.src == str(INNER)
    assert packet.dst == str(TARGET)
    assert packet[ICMP].type == 8
    assert packet[ICMP].id == 7
    assert packet[ICMP].seq == 3
    # scapy recomputes checksums on rebuild: equal means ours were right.
    rebuilt = IP(prober.probe(3))
    del rebuilt.chksum
    del rebuilt[ICMP].chksum
    assert bytes(rebuilt) == prober.probe(3)


def test_udp_probe_goes_to_the_port() -> None:
    prober = Prober(client=7, inner=INNER, target=TARGET, protocol="udp", port=7007)
    packet = IP(prober.probe(1))
    assert packet[UDP].dport == 7007
    assert packet[UDP].sport == prober.source_port


def test_genuine_replies_are_ok_with_their_sequence() -> None:
    prober = Prober(client=7, inner=INNER, target=TARGET)
    assert prober.check_reply(icmp_reply(prober.probe(42))) == (Verdict.OK, 42)
    udp = Prober(client=7, inner=INNER, target=TARGET, protocol="udp", port=7007)
    assert udp.check_reply(udp_reply(udp.probe(9))) == (Verdict.OK, 9)


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        (lambda p: icmp_reply(p, src=ipaddress.IPv4Address("10.99.0.11")), Verdict.WRONG_SOURCE),
        (lambda p: icmp_reply(p, dst=OTHER), Verdict.WRONG_DESTINATION),
        (lambda p: icmp_reply(p, icmp_type=3), Verdict.NOT_A_REPLY),
        (lambda p: p[:15], Verdict.MALFORMED),
        (lambda p: b"\x60" + p[1:], Verdict.MALFORMED),
    ],
)
def test_a_wrong_reply_is_an_error_not_a_success(reply, verdict) -> None:  # type: ignore[no-untyped-def]
    prober = Prober(client=7, inner=INNER, target=TARGET)
    assert prober.check_reply(reply(prober.probe(1)))[0] is verdict


def test_another_clients_reply_is_wrong_client() -> None:
    mine = Prober(client=7, inner=INNER, target=TARGET)
    theirs = Prober(client=8, inner=INNER, target=TARGET)
    assert mine.check_reply(icmp_reply(theirs.probe(1)))[0] is Verdict.WRONG_CLIENT
    # Same ICMP identifier (client numbers 65536 apart), told apart by the payload.
    far = Prober(client=7 + 65536, inner=INNER, target=TARGET)
    assert mine.check_reply(icmp_reply(far.probe(1)))[0] is Verdict.WRONG_CLIENT


def test_udp_reply_from_another_port_is_wrong_source() -> None:
    prober = Prober(client=7, inner=INNER, target=TARGET, protocol="udp", port=7007)
    reply = bytearray(udp_reply(prober.probe(1)))
    reply[20:22] = struct.pack("!H", 53)
    assert prober.check_reply(bytes(reply))[0] is Verdict.WRONG_SOURCE
