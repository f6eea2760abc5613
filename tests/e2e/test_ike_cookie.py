"""IKE_SA_INIT with a COOKIE challenge, between an initiator and a stateless intake
(RFC 7296 2.6).

``CookieIntake`` is the concentrator's intake in miniature: past its half-open
threshold it answers an IKE_SA_INIT request without a good cookie with
``HDR(A,0), N(COOKIE)`` and keeps nothing; a request whose cookie
``CookieIssuer.verify`` accepts goes to a fresh responder ``IkeSession``, and
everything after IKE_SA_INIT is routed to that session by SPIi. Each step
carries the RFC notation of what crosses the wire.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

import pytest

from common.ike import defaults
from common.ike.constants import ExchangeType, KeyExchangeMethod, NotifyType
from common.ike.cookies import (
    CookieIssuer,
    encode_cookie_response,
    needs_cookie,
    parse_ike_sa_init_request,
)
from common.ike.events import ChildSaEstablished, IkeEvent, IkeSaEstablished, IkeSaFailed
from common.ike.message import IkeHeader, IkeMessage, decode_message, encode_message, peek_header
from common.ike.payloads import KeyExchange, Nonce, Notify
from common.ike.policy import IkeConfiguration
from common.ike.session import Address, IkeSaState, IkeSession
from tests.helpers.ike_pair import (
    GATEWAY_ID,
    INITIATOR_IP,
    RESPONDER_IP,
    FakeClock,
    MemoryPolicy,
    events,
    ike_pair,
    seeded_rng,
)

THRESHOLD = 10
IKE = ("aes256gcm16-prfsha256-x25519",)

E = TypeVar("E")


def _one(found: list[IkeEvent], kind: type[E]) -> E:
    matches = [event for event in found if isinstance(event, kind)]
    assert len(matches) == 1, found
    return matches[0]


@dataclass
class CookieIntake:
    """Stateless COOKIE in front of responder sessions, routed by SPIi."""

    issuer: CookieIssuer
    policy: MemoryPolicy
    ike: tuple[str, ...] = IKE
    half_open: int = THRESHOLD  # pretend load: at the threshold, so cookies are on
    sessions: dict[bytes, IkeSession] = field(default_factory=dict)
    outbox: list[bytes] = field(default_factory=list)
    challenged: int = 0
    created: int = 0

    def _new_responder(self) -> IkeSession:
        self.created += 1
        return IkeSession(
            IkeConfiguration(local_id=GATEWAY_ID, ike_proposals=self.ike),
            is_initiator=False,
            local_addr=(RESPONDER_IP, 500),
            policy=self.policy,
            rng=seeded_rng(100 + self.created),
        )

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        header = peek_header(data)
        session = self.sessions.get(header.spi_i)
        first_message = header.exchange_type == ExchangeType.IKE_SA_INIT and not header.response
        if first_message and (session is None or session.state is IkeSaState.INITIAL):
            request = parse_ike_sa_init_request(data)
            if needs_cookie(self.half_open, THRESHOLD) and (
                request.cookie is None
                or not self.issuer.verify(request.cookie, request.ni, addr, request.spi_i, now)
            ):
                # <-- HDR(A,0), N(COOKIE): no session, no state (RFC 7296 2.6)
                self.challenged += 1
                self.outbox.append(self.issuer.challenge(data, addr, now))
                return
            # The cookie is good (the peer is reachable there): now a session may exist.
            session = self.sessions[header.spi_i] = self._new_responder()
        if session is None:
            return
        session.receive_datagram(data, addr, now)
        self.outbox.extend(datagram for datagram, _ in session.datagrams_to_send(now))


@dataclass
class CookiePair:
    initiator: IkeSession
    intake: CookieIntake
    clock: FakeClock
    wire: list[tuple[str, bytes]] = field(default_factory=list)

    def to_responder(self, *, drop: bool = False) -> int:
        datagrams = self.initiator.datagrams_to_send(self.clock.now)
        source = (INITIATOR_IP, 4500 if self.initiator.use_nat_t else 500)
        for data, _ in datagrams:
            self.wire.append(("i->r", data))
            if not drop:
                self.intake.receive_datagram(data, source, self.clock.now)
        return len(datagrams)

    def to_initiator(self) -> int:
        datagrams, self.intake.outbox = self.intake.outbox, []
        for data in datagrams:
            self.wire.append(("r->i", data))
            self.initiator.receive_datagram(data, (RESPONDER_IP, 500), self.clock.now)
        return len(datagrams)

    def roundtrip(self) -> int:
        return self.to_responder() + self.to_initiator()

    def run(self, max_rounds: int = 10) -> None:
        for _ in range(max_rounds):
            if not self.roundtrip():
                return
        raise AssertionError("the pair never went quiet")

    def responder(self) -> IkeSession:
        return self.intake.sessions[self.initiator.spi_i]


def cookie_pair(
    *,
    ike: tuple[str, ...] = IKE,
    responder_ike: tuple[str, ...] = IKE,
    issuer: CookieIssuer | None = None,
) -> CookiePair:
    base = ike_pair(ike=ike)
    intake = CookieIntake(issuer or CookieIssuer(seeded_rng(99)), base.policy, responder_ike)
    return CookiePair(base.initiator, intake, base.clock)


def _assert_established(pair: CookiePair) -> None:
    initiator_events, responder_events = events(pair.initiator), events(pair.responder())
    ike_i = _one(initiator_events, IkeSaEstablished)
    ike_r = _one(responder_events, IkeSaEstablished)
    assert (ike_i.spi_i, ike_i.spi_r) == (ike_r.spi_i, ike_r.spi_r)
    child_i = _one(initiator_events, ChildSaEstablished)
    child_r = _one(responder_events, ChildSaEstablished)
    assert child_i.outbound_keymat == child_r.inbound_keymat
    assert child_i.inbound_keymat == child_r.outbound_keymat
    assert pair.initiator.state is pair.responder().state is IkeSaState.ESTABLISHED


def _cookie_of(data: bytes) -> bytes:
    cookie = decode_message(data).notify(NotifyType.COOKIE)
    assert cookie is not None
    return cookie.data


def test_cookie_challenge_then_establishment() -> None:
    pair = cookie_pair()
    pair.initiator.initiate(pair.clock.now)
    # HDR(A,0), SAi1, KEi, Ni -->
    #                      <-- HDR(A,0), N(COOKIE)
    assert pair.roundtrip() == 2
    first, challenge = decode_message(pair.wire[0][1]), decode_message(pair.wire[1][1])
    assert challenge.payloads == (Notify(NotifyType.COOKIE, _cookie_of(pair.wire[1][1])),)
    assert challenge.header.spi_r == bytes(8)
    assert challenge.header.message_id == 0
    assert challenge.header.response
    assert pair.intake.sessions == {}  # stateless until the cookie comes back
    assert pair.initiator.state is IkeSaState.SA_INIT_SENT

    # HDR(A,0), N(COOKIE), SAi1, KEi, Ni -->
    #                      <-- HDR(A,B), SAr1, KEr, Nr
    assert pair.roundtrip() == 2
    retry = decode_message(pair.wire[2][1])
    assert retry.payloads[0] == Notify(NotifyType.COOKIE, _cookie_of(pair.wire[1][1]))
    # RFC 7296 2.6: the same request otherwise: SPIi, message ID 0, SAi1, KEi, Ni unchanged.
    assert retry.header == first.header
    assert retry.payloads[1:] == first.payloads
    assert pair.intake.created == 1
    assert pair.responder().state is IkeSaState.SA_INIT_DONE

    # IKE_AUTH: HDR, SK {IDi, AUTH, CP, SAi2, TSi, TSr} -->  <-- HDR, SK {IDr, AUTH, ...}
    pair.run()
    _assert_established(pair)
    assert pair.intake.challenged == 1


def test_lost_cookie_retry_is_retransmitted_with_the_cookie() -> None:
    pair = cookie_pair()
    pair.initiator.initiate(pair.clock.now)
    # HDR(A,0), SAi1, KEi, Ni -->  <-- HDR(A,0), N(COOKIE)
    pair.roundtrip()
    # HDR(A,0), N(COOKIE), SAi1, KEi, Ni -->  (lost)
    pair.to_responder(drop=True)
    lost = pair.wire[-1][1]
    deadline = pair.initiator.get_timer()
    assert deadline is not None
    pair.clock.now = deadline
    pair.initiator.handle_timer(pair.clock.now)
    # HDR(A,0), N(COOKIE), SAi1, KEi, Ni -->  (retransmitted unchanged, RFC 7296 2.1)
    pair.run()
    assert pair.wire[3][1] == lost
    _assert_established(pair)


def test_cookie_then_invalid_ke_echoes_the_cookie_again() -> None:
    """RFC 7296 2.6's sequence: the cookie goes with the retry for the right group too."""
    pair = cookie_pair(
        ike=("aes256gcm16-prfsha256-ecp256-x25519",),
        responder_ike=("aes256gcm16-prfsha256-x25519",),
    )
    pair.initiator.initiate(pair.clock.now)
    # HDR(A,0), SAi1, KEi(19), Ni -->
    #                      <-- HDR(A,0), N(COOKIE)
    pair.roundtrip()
    cookie = _cookie_of(pair.wire[1][1])
    # HDR(A,0), N(COOKIE), SAi1, KEi(19), Ni -->
    #                      <-- HDR(A,0), N(INVALID_KE_PAYLOAD(31))
    pair.roundtrip()
    refusal = decode_message(pair.wire[3][1])
    invalid_ke = refusal.notify(NotifyType.INVALID_KE_PAYLOAD)
    assert invalid_ke is not None
    assert invalid_ke.data == b"\x00\x1f"
    assert pair.responder().state is IkeSaState.INITIAL  # RFC 7296 1.2: nothing kept
    # HDR(A,0), N(COOKIE), SAi1, KEi'(31), Ni -->
    #                      <-- HDR(A,B), SAr1, KEr, Nr
    pair.roundtrip()
    first, third = decode_message(pair.wire[0][1]), decode_message(pair.wire[4][1])
    assert third.payloads[0] == Notify(NotifyType.COOKIE, cookie)
    ke = third.get(KeyExchange)
    assert ke is not None
    assert ke.group == KeyExchangeMethod.CURVE25519
    assert third.get(Nonce) == first.get(Nonce)  # same Ni, so the cookie still verifies
    assert third.header.spi_i == first.header.spi_i
    # IKE_AUTH ...
    pair.run()
    _assert_established(pair)
    assert pair.intake.challenged == 1
    assert pair.intake.created == 2  # one session per verified request, none kept in between


def test_invalid_ke_then_cookie() -> None:
    """The load rises between the two: the retry for the right group gets challenged."""
    pair = cookie_pair(
        ike=("aes256gcm16-prfsha256-ecp256-x25519",),
        responder_ike=("aes256gcm16-prfsha256-x25519",),
    )
    pair.intake.half_open = 0
    pair.initiator.initiate(pair.clock.now)
    # HDR(A,0), SAi1, KEi(19), Ni -->  <-- HDR(A,0), N(INVALID_KE_PAYLOAD(31))
    pair.roundtrip()
    pair.intake.half_open = THRESHOLD
    # HDR(A,0), SAi1, KEi(31), Ni -->  <-- HDR(A,0), N(COOKIE)
    pair.roundtrip()
    assert decode_message(pair.wire[3][1]).notify(NotifyType.COOKIE) is not None
    # HDR(A,0), N(COOKIE), SAi1, KEi(31), Ni -->  <-- HDR(A,B), SAr1, KEr, Nr
    pair.roundtrip()
    retry = decode_message(pair.wire[4][1])
    assert retry.payloads[0] == Notify(NotifyType.COOKIE, _cookie_of(pair.wire[3][1]))
    assert retry.payloads[1:] == decode_message(pair.wire[2][1]).payloads  # same KEi(31)
    pair.run()
    _assert_established(pair)


def test_stale_cookie_is_challenged_again_and_replaced() -> None:
    issuer = CookieIssuer(seeded_rng(99))
    pair = cookie_pair(issuer=issuer)
    pair.initiator.initiate(pair.clock.now)
    # HDR(A,0), SAi1, KEi, Ni -->  <-- HDR(A,0), N(COOKIE)
    pair.roundtrip()
    old = _cookie_of(pair.wire[1][1])
    issuer.rotate(pair.clock.now)
    issuer.rotate(pair.clock.now)  # the secret behind ``old`` is gone
    # HDR(A,0), N(COOKIE(old)), SAi1, KEi, Ni -->  <-- HDR(A,0), N(COOKIE(new))
    pair.roundtrip()
    new = _cookie_of(pair.wire[3][1])
    assert new != old
    # HDR(A,0), N(COOKIE(new)), SAi1, KEi, Ni -->  <-- HDR(A,B), SAr1, KEr, Nr
    pair.run()
    assert _cookie_of(pair.wire[4][1]) == new
    _assert_established(pair)
    assert pair.intake.challenged == 2


def test_too_many_cookie_rounds_fail_the_initiator_cleanly() -> None:
    pair = cookie_pair()
    issuer = pair.intake.issuer
    pair.initiator.initiate(pair.clock.now)
    for _ in range(defaults.COOKIE_RETRIES):
        # HDR(A,0), [N(COOKIE)], SAi1, KEi, Ni -->  <-- HDR(A,0), N(COOKIE(another))
        pair.to_responder()
        issuer.rotate(pair.clock.now)
        issuer.rotate(pair.clock.now)  # every cookie is stale by the time it comes back
        pair.to_initiator()
        assert pair.initiator.state is IkeSaState.SA_INIT_SENT
    # HDR(A,0), N(COOKIE), SAi1, KEi, Ni -->  <-- HDR(A,0), N(COOKIE): one too many
    pair.roundtrip()
    failed = _one(events(pair.initiator), IkeSaFailed)
    assert failed.notify is NotifyType.COOKIE
    assert pair.initiator.state is IkeSaState.CLOSED
    assert pair.initiator.get_timer() is None
    assert pair.roundtrip() == 0  # nothing more is sent
    requests = [data for direction, data in pair.wire if direction == "i->r"]
    assert len(requests) == 1 + defaults.COOKIE_RETRIES
    assert pair.intake.sessions == {}


@pytest.mark.parametrize("length", [0, 65])
def test_cookie_of_a_bad_length_fails_the_initiator(length: int) -> None:
    pair = cookie_pair()
    pair.initiator.initiate(pair.clock.now)
    pair.to_responder(drop=True)
    # <-- HDR(A,0), N(COOKIE) with 0 or 65 octets (RFC 7296 2.6: 1 to 64)
    header = IkeHeader(pair.initiator.spi_i, bytes(8), ExchangeType.IKE_SA_INIT, 0, False, True)
    bogus = encode_message(IkeMessage(header, (Notify(NotifyType.COOKIE, bytes(length)),)))
    pair.initiator.receive_datagram(bogus, (RESPONDER_IP, 500), pair.clock.now)
    failed = _one(events(pair.initiator), IkeSaFailed)
    assert failed.notify is NotifyType.INVALID_SYNTAX
    assert pair.initiator.state is IkeSaState.CLOSED
    assert pair.initiator.datagrams_to_send(pair.clock.now) == []


def test_longest_cookie_is_echoed() -> None:
    pair = cookie_pair()
    pair.initiator.initiate(pair.clock.now)
    pair.to_responder(drop=True)
    # <-- HDR(A,0), N(COOKIE) of 64 octets, the most RFC 7296 2.6 allows
    cookie = bytes(range(64))
    pair.initiator.receive_datagram(
        encode_cookie_response(pair.initiator.spi_i, cookie), (RESPONDER_IP, 500), pair.clock.now
    )
    # HDR(A,0), N(COOKIE), SAi1, KEi, Ni -->
    [(retry, _)] = pair.initiator.datagrams_to_send(pair.clock.now)
    assert decode_message(retry).payloads[0] == Notify(NotifyType.COOKIE, cookie)
