"""How an IKE SA's messages travel: IDs, retransmission, the response cache, SK
protection, fragmentation and NAT detection (RFC 7296 2.1-2.3, 2.23, 3.14;
RFC 7383).

Small objects and functions, so ``IkeSession`` never does this bookkeeping
inline (strongSwan's ``task_manager`` owns the same duties):

- ``Requests``: the requests *we* send. Message IDs count from 0; with a
  window of 1 (RFC 7296 2.3, no SET_WINDOW_SIZE sent) there is at most one
  outstanding request, retransmitted unchanged (RFC 7296 2.1: "retransmit
  the same message"; RFC 7383 2.6: every fragment of it) on the session's
  schedule (``IkeConfiguration.retransmit_*``, ``defaults`` unless set); and
  the reassembly of its fragmented response.
- ``give_up_time`` / ``tries_within``: that schedule in seconds, both ways,
  for glue that is given "dead after N seconds" (the concentrator's DPD, the
  client's reconnect) rather than a timeout, base and count.
- ``Responses``: the requests the *peer* sends. The next expected ID, the
  reassembly of a fragmented request, and the last response (all of its
  fragments) kept for a retransmitted request, which is answered from the
  cache without being processed again (RFC 7296 2.1, RFC 7383 2.6.1).
- ``SkProtection``: sealing with a per-direction AEAD IV counter, opening,
  and the SKF form of both (RFC 7383 2.5, 2.6).
- ``build_nat_detection`` / ``nat_detected``: the RFC 7296 2.23 hashes.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum, auto
from typing import Final, Protocol

from common.ike import defaults
from common.ike.constants import NotifyType, PayloadType
from common.ike.errors import MalformedMessage
from common.ike.fragments import (
    Reassembler,
    SkFragment,
    fits,
    fragment_size_for,
    is_fragment,
    open_skf,
    seal_fragments,
)
from common.ike.ike_suites import IkeSuite
from common.ike.keys import IkeSaKeys
from common.ike.message import (
    IKE_HEADER_LEN,
    EncryptedFragment,
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


def format_address(address: Address) -> str:
    """``host:port``, with IPv6 hosts in brackets so the port stays unambiguous.

    For logs and status output; a zone suffix (``fe80::1%eth0``) is kept.
    """
    host, port = address[0], address[1]
    try:
        bracket = ipaddress.ip_address(host.split("%", 1)[0]).version == 6
    except ValueError:
        bracket = ":" in host
    return f"[{host}]:{port}" if bracket else f"{host}:{port}"


Rng = Callable[[int], bytes]
_PORT: Final = struct.Struct("!H")
_NEXT_PAYLOAD_OFFSET: Final = 16  # in the IKE header (RFC 7296 3.1)


class Timeout(Enum):
    """What ``Requests.expire`` decided."""

    NOTHING = auto()  # not due, or no request outstanding
    RETRANSMIT = auto()  # send ``outstanding.datagram`` again
    GIVE_UP = auto()  # the peer is unreachable (RFC 7296 2.4)


@dataclass(slots=True)
class Outstanding:
    """The one request in flight (window 1).

    ``datagram`` is the message as built; ``wire`` what was sent for it: the
    datagram itself, or its SKF fragments, all of which every retransmission
    repeats (RFC 7383 2.6).
    """

    message_id: int
    exchange_type: int
    datagram: bytes
    transmissions: int
    deadline: float
    wire: tuple[bytes, ...] = ()


class RetransmitSettings(Protocol):
    """A retransmission schedule's three numbers, as ``IkeConfiguration`` holds them."""

    @property
    def retransmit_timeout(self) -> float: ...

    @property
    def retransmit_base(self) -> float: ...

    @property
    def retransmit_tries(self) -> int: ...


def check_retransmission(timeout_s: float, base: float, tries: int) -> None:
    """Refuse a schedule that would never give up, or never back off.

    Raises:
        ValueError: ``timeout_s`` not positive and finite; ``base`` below 1 or
            infinite (each wait would be shorter than the last: no back-off, and
            a congested peer gets hammered); ``tries`` negative. Zero tries is
            allowed: one transmission, given up one ``timeout_s`` later.
    """
    if not (0 < timeout_s < math.inf):
        raise ValueError(f"retransmit timeout {timeout_s} must be positive and finite")
    if not (1 <= base < math.inf):
        raise ValueError(f"retransmit base {base} must be at least 1 and finite")
    if tries < 0:
        raise ValueError(f"retransmit tries {tries} cannot be negative")


def give_up_time(
    timeout_s: float = defaults.RETRANSMIT_TIMEOUT_S,
    base: float = defaults.RETRANSMIT_BASE,
    tries: int = defaults.RETRANSMIT_TRIES,
) -> float:
    """Seconds from a request's first transmission to its give-up (``Timeout.GIVE_UP``).

    ``Requests`` waits ``timeout_s * base**n`` after transmission n (0 the
    first, then ``tries`` retransmissions) and gives up when the last wait
    ends, so this is the sum of those ``tries + 1`` waits: with the defaults
    (charon's 4 s, 1.8, 5) about 165 s. It is the time a silent peer takes to
    be declared unreachable (RFC 7296 2.4) once a request is sent, which the
    glue adds to its DPD interval to bound how long a vanished peer lingers.

    Raises:
        ValueError: an invalid schedule (``check_retransmission``).
    """
    check_retransmission(timeout_s, base, tries)
    return math.fsum(timeout_s * base**n for n in range(tries + 1))


def tries_within(
    limit_s: float,
    timeout_s: float = defaults.RETRANSMIT_TIMEOUT_S,
    base: float = defaults.RETRANSMIT_BASE,
) -> int:
    """The most retransmissions whose ``give_up_time`` is at most ``limit_s``.

    The inverse the glue needs for "declare the peer dead within ``limit_s``":
    pick ``timeout_s`` and ``base``, and this gives ``tries``.

    Raises:
        ValueError: an invalid ``timeout_s`` or ``base``, or ``limit_s`` below
            ``timeout_s`` (not even the first transmission's wait fits).
    """
    check_retransmission(timeout_s, base, 0)
    if limit_s < timeout_s:
        raise ValueError(f"no schedule starting at {timeout_s} s gives up within {limit_s} s")
    tries = 0
    # A base of 1 adds timeout_s per try, so the loop ends for every valid schedule.
    while give_up_time(timeout_s, base, tries + 1) <= limit_s:
        tries += 1
    return tries


class Requests:
    """Our side as the sender of requests: IDs, the outstanding request, its timer."""

    __slots__ = ("base", "next_message_id", "outstanding", "reassembler", "timeout_s", "tries")

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
        # Fragmented responses (RFC 7383 2.6); window 1: one message at a time.
        self.reassembler = Reassembler(max_pending_messages=1)

    @classmethod
    def following(cls, settings: RetransmitSettings) -> Requests:
        """Fresh requests (message IDs from 0) on the schedule ``settings`` names."""
        return cls(
            timeout_s=settings.retransmit_timeout,
            base=settings.retransmit_base,
            tries=settings.retransmit_tries,
        )

    def allocate(self) -> int:
        """The Message ID of our next request (RFC 7296 2.2)."""
        if self.outstanding is not None:
            raise RuntimeError("window of 1: a request is still outstanding")  # RFC 7296 2.3
        return self.next_message_id

    def sent(
        self,
        message_id: int,
        exchange_type: int,
        datagram: bytes,
        now: float,
        wire: tuple[bytes, ...] = (),
    ) -> None:
        """Record a request just queued for sending and arm its timer.

        Args:
            wire: the SKF fragments sent for ``datagram``; empty: the datagram itself.
        """
        self.outstanding = Outstanding(
            message_id, exchange_type, datagram, 1, now + self.timeout_s, wire or (datagram,)
        )

    def resend(self, datagram: bytes, now: float) -> None:
        """Replace the outstanding request (IKE_SA_INIT retried with another KE group)."""
        assert self.outstanding is not None
        self.outstanding.datagram = datagram
        self.outstanding.wire = (datagram,)  # IKE_SA_INIT: never fragmented
        self.outstanding.transmissions = 1
        self.outstanding.deadline = now + self.timeout_s

    def matches(self, message_id: int) -> bool:
        """Whether a response with ``message_id`` answers the outstanding request."""
        return self.outstanding is not None and self.outstanding.message_id == message_id

    def answered(self) -> None:
        """The outstanding request got its response: the next ID is free (RFC 7296 2.2)."""
        assert self.outstanding is not None
        self.next_message_id = self.outstanding.message_id + 1
        self.reassembler.discard(self.outstanding.message_id)
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

    __slots__ = ("_request", "_response", "expected_message_id", "reassembler")

    def __init__(self) -> None:
        self.expected_message_id = 0
        self._request = b""
        self._response: tuple[bytes, ...] = ()
        # Fragmented requests (RFC 7383 2.6); window 1: a fragment of a new
        # Message ID discards the partial set of the previous one.
        self.reassembler = Reassembler(max_pending_messages=1)

    def is_retransmission(self, message_id: int, datagram: bytes) -> bool:
        """The peer resent the request we answered last (RFC 7296 2.1)."""
        return (
            bool(self._response)
            and message_id == self.expected_message_id - 1
            and datagram == self._request
        )

    def answered_last(self, message_id: int) -> bool:
        """Whether ``message_id`` is the request we answered last, with a response cached.

        For a fragmented retransmission, which cannot be compared octet for
        octet: the caller authenticates the fragment and replays the response
        for Fragment Number 1 only (RFC 7383 2.6.1).
        """
        return bool(self._response) and message_id == self.expected_message_id - 1

    def is_next(self, message_id: int) -> bool:
        """Whether ``message_id`` is the one request we may process now (window 1)."""
        return message_id == self.expected_message_id

    def answered(self, request: bytes, response: tuple[bytes, ...]) -> None:
        """Cache the response to ``request`` (all its datagrams: the SKF fragments of a
        fragmented one) and expect the next ID."""
        self._request = request
        self._response = response
        self.expected_message_id += 1

    def cached(self) -> tuple[bytes, ...]:
        """The datagrams of the last response, to send again (every fragment, RFC 7383 2.6)."""
        return self._response


# --- SK protection with a per-direction IV counter -------------------------------------


class SkProtection:
    """Seal our messages and open the peer's with the IKE SA's keys (RFC 7296 3.14).

    The AEAD IV MUST NOT repeat under one key (RFC 5282 3.1, RFC 7634 2). Each
    direction has its own key (SK_ei / SK_er), so a counter per sender is
    enough; CBC IVs come from ``rng`` instead, since CBC needs them
    unpredictable (RFC 7296 3.14). A retransmission resends the sealed
    octets, never re-seals, so a counter value is used exactly once; each SKF
    fragment takes its own value (RFC 7383 2.5: every fragment is sealed on
    its own).
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
        template = encode_header(header, PayloadType.SK, IKE_HEADER_LEN)
        return seal_sk(
            template,
            first,
            chain,
            self.suite,
            self._sk_e_out,
            self._sk_a_out,
            iv=self._next_iv() if self.suite.is_aead else None,
            rng=self._rng,
        )

    def _next_iv(self) -> bytes:
        """The next AEAD IV of the counter (RFC 5282 3.1: never repeated under a key)."""
        iv = self._iv_counter.to_bytes(self.suite.iv_len, "big")
        self._iv_counter += 1
        return iv

    def fragment(
        self, datagram: bytes, datagram_size: int, *, non_esp_marker: bool
    ) -> tuple[bytes, ...]:
        """What goes on the wire for our sealed ``datagram`` (RFC 7383 2.5).

        The datagram itself when it fits a ``datagram_size`` UDP payload (the
        non-ESP marker included on port 4500, RFC 7383 2.5.1) or is not an
        SK message (IKE_SA_INIT is never fragmented); otherwise its
        inner payload chain, cut into SKF fragments that each fit, all with
        its Message ID. The caller checked that the peer supports it (2.3).

        The tasks hand over sealed messages, so the chain is recovered by
        opening our own SK payload with our outbound keys: one extra pass
        over a message that is rare (IKE_AUTH with certificates), against
        changing what every task returns. The counter IV the whole message
        used is simply never sent.

        Raises:
            ValueError: ``datagram_size`` too small for any fragment (misuse).
        """
        if (
            fits(datagram, datagram_size, non_esp_marker=non_esp_marker)
            or datagram[_NEXT_PAYLOAD_OFFSET] != PayloadType.SK
        ):
            return (datagram,)
        first, chain = open_sk(datagram, IKE_HEADER_LEN, self.suite, self._sk_e_out, self._sk_a_out)
        size = fragment_size_for(self.suite, datagram_size, non_esp_marker=non_esp_marker)
        return tuple(
            seal_fragments(
                datagram[:IKE_HEADER_LEN],
                first,
                chain,
                self.suite,
                self._sk_e_out,
                self._sk_a_out,
                fragment_size=size,
                next_iv=self._next_iv if self.suite.is_aead else None,
                rng=self._rng,
            )
        )

    def open(self, data: bytes) -> list[Payload]:
        """The payloads inside ``HDR, SK {...}``.

        Raises:
            IntegrityCheckFailed: forged or damaged (drop silently, RFC 7296 2.21).
            MalformedMessage: the outer message does not parse, or SK is not first
                (a fragment goes to ``open_fragment`` / ``open_message``).
        """
        message = decode_message(data)
        if not message.payloads or not isinstance(message.payloads[0], EncryptedPayload):
            raise MalformedMessage("expected an SK payload first")
        first, chain = open_sk(data, IKE_HEADER_LEN, self.suite, self._sk_e_in, self._sk_a_in)
        return decode_payload_chain(first, chain)

    def open_fragment(self, data: bytes) -> SkFragment:
        """Authenticate and decrypt one ``HDR, SKF {...}`` (RFC 7383 2.6: before keeping it).

        Raises:
            IntegrityCheckFailed: forged or damaged (drop silently and count).
            MalformedMessage: the outer message does not parse, or SKF is not first.
        """
        message = decode_message(data)
        if not message.payloads or not isinstance(message.payloads[0], EncryptedFragment):
            raise MalformedMessage("expected an SKF payload first")
        return open_skf(data, IKE_HEADER_LEN, self.suite, self._sk_e_in, self._sk_a_in)

    def open_message(
        self, message_id: int, data: bytes, reassembler: Reassembler
    ) -> list[Payload] | None:
        """The payloads of ``HDR, SK {...}``, or of a fragmented message once its last
        ``HDR, SKF {...}`` is in: then the inner chain is decoded exactly as an SK's.

        Args:
            message_id: the header's Message ID, which keys the reassembly.
            data: the datagram (without the non-ESP marker).
            reassembler: the direction's (``Requests`` or ``Responses``).

        Returns:
            None while fragments are missing, or for a duplicate fragment.

        Raises:
            IntegrityCheckFailed: forged or damaged (drop silently and count).
            FragmentRejected: a genuine fragment we will not keep (numbering, limits).
            MalformedMessage: the datagram or the reassembled chain does not parse.
        """
        if not is_fragment(data):
            return self.open(data)
        whole = reassembler.receive(message_id, self.open_fragment(data))
        if whole is None:
            return None
        return decode_payload_chain(whole.first_inner_payload, whole.plaintext)


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
