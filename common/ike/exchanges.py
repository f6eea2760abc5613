"""How an IKE SA's messages travel: IDs, retransmission, the response cache, SK
protection and NAT detection (RFC 7296 2.1-2.3, 2.23, 3.14).

Small objects and functions, so ``IkeSession`` never does this bookkeeping
inline (strongSwan's ``task_manager`` owns the same duties):

- ``Requests``: the requests *we* send. Message IDs count from 0; with a
  window of 1 (RFC 7296 2.3, no SET_WINDOW_SIZE sent) there is at most one
  outstanding request, retransmitted unchanged (RFC 7296 2.1: "retransmit
  the same message") on the schedule in ``defaults``.
- ``Responses``: the requests the *peer* sends. The next expected ID, and
  the last response kept for a retransmitted request, which is answered from
  the cache without being processed again (RFC 7296 2.1).
- ``SkProtection``: sealing with a per-direction AEAD IV counter, and opening.
- ``build_nat_detection`` / ``nat_detected``: the RFC 7296 2.23 hashes.
"""

from __future__ import annotations

import hashlib
import ipaddress
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum, auto
from typing import Final

from common.ike import defaults
from common.ike.constants import NotifyType, PayloadType
from common.ike.errors import MalformedMessage
from common.ike.ike_suites import IkeSuite
from common.ike.keys import IkeSaKeys
from common.ike.message import (
    IKE_HEADER_LEN,
    EncryptedPayload,
    IkeHeader,
    IkeMessage,
    Payload,
    decode_message,
    decode_payload_chain,
    encode_header,
    encode_payload_chain,
)
from common.ike.payloads import Notify
from common.ike.protection import open_sk, seal_sk

Address = tuple[str, int]
Rng = Callable[[int], bytes]
_PORT: Final = struct.Struct("!H")


class Timeout(Enum):
    """What ``Requests.expire`` decided."""

    NOTHING = auto()  # not due, or no request outstanding
    RETRANSMIT = auto()  # send ``outstanding.datagram`` again
    GIVE_UP = auto()  # the peer is unreachable (RFC 7296 2.4)


@dataclass(slots=True)
class Outstanding:
    """The one request in flight (window 1)."""

    message_id: int
    exchange_type: int
    datagram: bytes
    transmissions: int
    deadline: float


class Requests:
    """Our side as the sender of requests: IDs, the outstanding request, its timer."""

    __slots__ = ("base", "next_message_id", "outstanding", "timeout_s", "tries")

    def __init__(
        self,
        *,
        timeout_s: float = defaults.RETRANSMIT_TIMEOUT_S,
        base: float = defaults.RETRANSMIT_BASE,
        tries: int = defaults.RETRANSMIT_TRIES,
    ) -> None:
        self.next_message_id = 0
        self.outstanding: Outstanding | None = None
        self.timeout_s = timeout_s
        self.base = base
        self.tries = tries

    def allocate(self) -> int:
        """The Message ID of our next request (RFC 7296 2.2)."""
        if self.outstanding is not None:
            raise RuntimeError("window of 1: a request is still outstanding")  # RFC 7296 2.3
        return self.next_message_id

    def sent(self, message_id: int, exchange_type: int, datagram: bytes, now: float) -> None:
        """Record a request just queued for sending and arm its timer."""
        self.outstanding = Outstanding(message_id, exchange_type, datagram, 1, now + self.timeout_s)

    def resend(self, datagram: bytes, now: float) -> None:
        """Replace the outstanding request (IKE_SA_INIT retried with another KE group)."""
        assert self.outstanding is not None
        self.outstanding.datagram = datagram
        self.outstanding.transmissions = 1
        self.outstanding.deadline = now + self.timeout_s

    def matches(self, message_id: int) -> bool:
        """Whether a response with ``message_id`` answers the outstanding request."""
        return self.outstanding is not None and self.outstanding.message_id == message_id

    def answered(self) -> None:
        """The outstanding request got its response: the next ID is free (RFC 7296 2.2)."""
        assert self.outstanding is not None
        self.next_message_id = self.outstanding.message_id + 1
        self.outstanding = None

    def deadline(self) -> float | None:
        return None if self.outstanding is None else self.outstanding.deadline

    def expire(self, now: float) -> Timeout:
        """Advance the retransmission schedule: timeout_s * base^n, ``tries`` resends."""
        request = self.outstanding
        if request is None or now < request.deadline:
            return Timeout.NOTHING
        retransmissions = request.transmissions - 1
        if retransmissions >= self.tries:
            self.outstanding = None
            return Timeout.GIVE_UP
        request.transmissions += 1
        request.deadline = now + self.timeout_s * self.base ** (request.transmissions - 1)
        return Timeout.RETRANSMIT


class Responses:
    """Our side as the receiver of requests: the expected ID and the response cache."""

    __slots__ = ("_request", "_response", "expected_message_id")

    def __init__(self) -> None:
        self.expected_message_id = 0
        self._request = b""
        self._response: tuple[bytes, ...] = ()

    def is_retransmission(self, message_id: int, datagram: bytes) -> bool:
        """The peer resent the request we answered last (RFC 7296 2.1)."""
        return (
            bool(self._response)
            and message_id == self.expected_message_id - 1
            and datagram == self._request
        )

    def is_next(self, message_id: int) -> bool:
        """Whether ``message_id`` is the one request we may process now (window 1)."""
        return message_id == self.expected_message_id

    def answered(self, request: bytes, response: tuple[bytes, ...]) -> None:
        """Cache the response to ``request`` and expect the next ID."""
        self._request = request
        self._response = response
        self.expected_message_id += 1

    def cached(self) -> tuple[bytes, ...]:
        """The datagrams of the last response, to send again."""
        return self._response


# --- SK protection with a per-direction IV counter -------------------------------------


class SkProtection:
    """Seal our messages and open the peer's with the IKE SA's keys (RFC 7296 3.14).

    The AEAD IV MUST NOT repeat under one key (RFC 5282 3.1, RFC 7634 2). Each
    direction has its own key (SK_ei / SK_er), so a counter per sender is
    enough; CBC IVs come from ``rng`` instead, since CBC needs them
    unpredictable (RFC 7296 3.14). A retransmission resends the sealed
    octets, never re-seals, so a counter value is used exactly once.
    """

    __slots__ = ("_iv_counter", "_rng", "_sk_a_in", "_sk_a_out", "_sk_e_in", "_sk_e_out", "suite")

    def __init__(self, suite: IkeSuite, keys: IkeSaKeys, *, is_initiator: bool, rng: Rng) -> None:
        self.suite = suite
        if is_initiator:
            self._sk_e_out, self._sk_a_out = keys.sk_ei, keys.sk_ai
            self._sk_e_in, self._sk_a_in = keys.sk_er, keys.sk_ar
        else:
            self._sk_e_out, self._sk_a_out = keys.sk_er, keys.sk_ar
            self._sk_e_in, self._sk_a_in = keys.sk_ei, keys.sk_ai
        self._rng = rng
        self._iv_counter = 0

    def __repr__(self) -> str:
        return f"<SkProtection {self.suite.name} sent={self._iv_counter}>"

    def seal(self, header: IkeHeader, payloads: Sequence[Payload]) -> bytes:
        """``HDR, SK {payloads}`` as one datagram."""
        first, chain = encode_payload_chain(payloads)
        iv = None
        if self.suite.is_aead:
            iv = self._iv_counter.to_bytes(self.suite.iv_len, "big")
            self._iv_counter += 1
        template = encode_header(header, PayloadType.SK, IKE_HEADER_LEN)
        return seal_sk(
            template, first, chain, self.suite, self._sk_e_out, self._sk_a_out, iv=iv, rng=self._rng
        )

    def open(self, data: bytes) -> list[Payload]:
        """The payloads inside ``HDR, SK {...}``.

        Raises:
            IntegrityCheckFailed: forged or damaged (drop silently, RFC 7296 2.21).
            MalformedMessage: the outer message does not parse, or SK is not first.
        """
        message = decode_message(data)
        if not message.payloads or not isinstance(message.payloads[0], EncryptedPayload):
            raise MalformedMessage("expected an SK payload first")  # SKF: not yet
        first, chain = open_sk(data, IKE_HEADER_LEN, self.suite, self._sk_e_in, self._sk_a_in)
        return decode_payload_chain(first, chain)


# --- NAT detection (RFC 7296 2.23) -----------------------------------------------------


def nat_detection_hash(spi_i: bytes, spi_r: bytes, address: Address) -> bytes:
    """SHA-1(SPIi | SPIr | IP | Port), RFC 7296 2.23 (the SHA-1 is the RFC's, not a choice)."""
    ip = ipaddress.ip_address(address[0]).packed
    return hashlib.sha1(spi_i + spi_r + ip + _PORT.pack(address[1])).digest()


def build_nat_detection(
    spi_i: bytes, spi_r: bytes, local: Address, remote: Address, fake_source: bytes | None
) -> list[Notify]:
    """N(NAT_DETECTION_SOURCE_IP), N(NAT_DETECTION_DESTINATION_IP).

    ``fake_source`` replaces the source hash: strongSwan's ``encap=yes`` trick,
    a hash that cannot match, so the peer believes we are behind a NAT and
    both sides move to port 4500.
    """
    source = fake_source or nat_detection_hash(spi_i, spi_r, local)
    return [
        Notify(NotifyType.NAT_DETECTION_SOURCE_IP, source),
        Notify(NotifyType.NAT_DETECTION_DESTINATION_IP, nat_detection_hash(spi_i, spi_r, remote)),
    ]


def nat_detected(message: IkeMessage, spi_i: bytes, source: Address, local: Address) -> bool:
    """Whether the peer or we are behind a NAT, from its NAT_DETECTION_* notifies.

    The hashes use the SPIs of ``message``'s header (SPIr zero in the
    IKE_SA_INIT request). A peer that sends none does not do NAT-T: False.
    """
    sources = [
        notify.data
        for notify in message.get_all(Notify)
        if notify.notify_type == NotifyType.NAT_DETECTION_SOURCE_IP
    ]
    destination = message.notify(NotifyType.NAT_DETECTION_DESTINATION_IP)
    if not sources or destination is None:
        return False
    spi_r = message.header.spi_r
    peer_behind_nat = nat_detection_hash(spi_i, spi_r, source) not in sources
    we_are_behind_nat = nat_detection_hash(spi_i, spi_r, local) != destination.data
    return peer_behind_nat or we_are_behind_nat
