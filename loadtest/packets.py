"""Inner packets a simulated road warrior sends, and the check of what comes back.

There is no TUN per simulated client (thousands of TUN devices would measure
the kernel, not the gateway), so each client builds its inner IPv4 packets
itself and reads the decrypted replies itself. The check is strict on
purpose: a reply counts as a success only if it comes from the target, is
addressed to *this* client's leased inner address, and answers a probe this
client sent (ICMP identifier or UDP port, and the payload naming the client
and the sequence number). Anything else is an error by reason, never a
success: a gateway that mixes up two clients' tunnels must show up here.

Flow::

    probe(n, seq) -> IPv4 [ICMP echo | UDP] -> OutboundSa.encapsulate -> gateway
    gateway -> InboundSa.decapsulate -> check_reply(inner) -> Verdict, seq
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass
from typing import Final, Literal

from common.wire.ip import internet_checksum

IPPROTO_ICMP: Final = 1
IPPROTO_UDP: Final = 17
ICMP_ECHO_REPLY: Final = 0
ICMP_ECHO_REQUEST: Final = 8
# Payload: a magic, the client number and the sequence number, so a reply
# delivered to the wrong client is recognised even if the header matched.
_MAGIC: Final = b"OPLT"
_PAYLOAD: Final = struct.Struct("!4sIQ")
_IPV4: Final = struct.Struct("!BBHHHBBH4s4s")
_ICMP_ECHO: Final = struct.Struct("!BBHHH")
_UDP: Final = struct.Struct("!HHHH")
UDP_SOURCE_PORT_BASE: Final = 20000

Protocol = Literal["icmp", "udp"]


class Verdict(enum.Enum):
    """What a decrypted inner packet turned out to be."""

    OK = "ok"
    WRONG_SOURCE = "wrong_source"  # not from the target (or not its port)
    WRONG_DESTINATION = "wrong_destination"  # not to our inner address
    WRONG_CLIENT = "wrong_client"  # another client's probe answered to us
    NOT_A_REPLY = "not_a_reply"  # another protocol, or not an echo reply
    MALFORMED = "malformed"


@dataclass(frozen=True, slots=True)
class Prober:
    """Builds one client's probes and checks the replies (immutable, shared by nobody).

    Attributes:
        client: the simulated client's number; goes in every payload.
        inner: the inner IPv4 address the gateway leased to this client.
        target: the host on the office LAN the probes go to.
        protocol: ICMP echo (any host answers) or UDP (needs an echo service).
        port: the UDP destination port (``udp`` only).
        size: the payload length (at least the 16-octet probe header).
    """

    client: int
    inner: ipaddress.IPv4Address
    target: ipaddress.IPv4Address
    protocol: Protocol = "icmp"
    port: int = 7
    size: int = 56

    @property
    def ident(self) -> int:
        """ICMP identifier (or UDP source port offset): the low 16 bits of the client number."""
        return self.client & 0xFFFF

    @property
    def source_port(self) -> int:
        return UDP_SOURCE_PORT_BASE + self.client % 40000

    def probe(self, seq: int) -> bytes:
        """The inner IPv4 packet for probe ``seq`` (an ICMP echo request or a UDP datagram)."""
        payload = _PAYLOAD.pack(_MAGIC, self.client & 0xFFFFFFFF, seq)
        payload += bytes(max(0, self.size - len(payload)))
        if self.protocol == "icmp":
            header = _ICMP_ECHO.pack(ICMP_ECHO_REQUEST, 0, 0, self.ident, seq & 0xFFFF)
            checksum = internet_checksum(header + payload)
            body = header[:2] + struct.pack("!H", checksum) + header[4:] + payload
            return ipv4(self.inner, self.target, IPPROTO_ICMP, body)
        # UDP checksum 0: allowed over IPv4 (RFC 768), and the ESP ICV covers it anyway.
        body = _UDP.pack(self.source_port, self.port, 8 + len(payload), 0) + payload
        return ipv4(self.inner, self.target, IPPROTO_UDP, body)

    def check_reply(self, packet: bytes) -> tuple[Verdict, int | None]:
        """Judge a decrypted inner packet; the probe's sequence number when it is ours.

        Returns:
            ``(Verdict.OK, seq)`` for a genuine reply to our probe ``seq``,
            else the reason it is not one (and the sequence number when known).
        """
        if len(packet) < 20 or packet[0] >> 4 != 4:
            return Verdict.MALFORMED, None
        header_len = (packet[0] & 0x0F) * 4
        total = int.from_bytes(packet[2:4], "big")
        if header_len < 20 or total < header_len or total > len(packet):
            return Verdict.MALFORMED, None
        protocol = packet[9]
        source, destination = packet[12:16], packet[16:20]
        body = packet[header_len:total]
        if source != self.target.packed:
            return Verdict.WRONG_SOURCE, None
        if destination != self.inner.packed:
            return Verdict.WRONG_DESTINATION, None
        if self.protocol == "icmp":
            if protocol != IPPROTO_ICMP or len(body) < 8 or body[0] != ICMP_ECHO_REPLY:
                return Verdict.NOT_A_REPLY, None
            ident = int.from_bytes(body[4:6], "big")
            payload = body[8:]
            if ident != self.ident:
                return Verdict.WRONG_CLIENT, None
        else:
            if protocol != IPPROTO_UDP or len(body) < 8:
                return Verdict.NOT_A_REPLY, None
            sport, dport = _UDP.unpack_from(body)[:2]
            if sport != self.port:
                return Verdict.WRONG_SOURCE, None
            if dport != self.source_port:
                return Verdict.WRONG_CLIENT, None
            payload = body[8:]
        if len(payload) < _PAYLOAD.size:
            return Verdict.MALFORMED, None
        magic, client, seq = _PAYLOAD.unpack_from(payload)
        if magic != _MAGIC or client != self.client & 0xFFFFFFFF:
            return Verdict.WRONG_CLIENT, None
        return Verdict.OK, int(seq)


def ipv4(
    source: ipaddress.IPv4Address, destination: ipaddress.IPv4Address, protocol: int, body: bytes
) -> bytes:
    """An IPv4 packet (no options, DF clear, TTL 64) with a correct header checksum."""
    header = _IPV4.pack(
        0x45, 0, 20 + len(body), 0, 0, 64, protocol, 0, source.packed, destination.packed
    )
    checksum = internet_checksum(header)
    return header[:10] + struct.pack("!H", checksum) + header[12:] + body
