"""CookieIssuer and the intake helpers (RFC 7296 2.6)."""

from __future__ import annotations

import ipaddress
import random

import pytest

from common.ike.constants import ExchangeType, NotifyType
from common.ike.cookies import (
    COOKIE_LEN,
    CookieIssuer,
    IkeSaInitRequest,
    encode_cookie_response,
    needs_cookie,
    parse_ike_sa_init_request,
    valid_cookie_length,
)
from common.ike.errors import MalformedMessage
from common.ike.message import IkeHeader, IkeMessage, Payload, decode_message, encode_message
from common.ike.payloads import KeyExchange, Nonce, Notify

NI = bytes(range(32))
SPI_I = bytes.fromhex("0123456789abcdef")
ADDR = ("192.0.2.10", 500)
NOW = 1000.0
PERIOD = 120.0


def _issuer(seed: int = 1) -> CookieIssuer:
    return CookieIssuer(random.Random(seed).randbytes, rotate_every_s=PERIOD)


def _request(*payloads: Payload, spi_r: bytes = bytes(8), response: bool = False) -> bytes:
    header = IkeHeader(SPI_I, spi_r, ExchangeType.IKE_SA_INIT, 0, True, response)
    return encode_message(IkeMessage(header, payloads))


# --- CookieIssuer -----------------------------------------------------------------------


def test_good_cookie_verifies() -> None:
    issuer = _issuer()
    cookie = issuer.cookie_for(NI, ADDR, SPI_I, NOW)
    assert len(cookie) == COOKIE_LEN
    assert valid_cookie_length(cookie)  # RFC 7296 2.6: 1..64 octets
    assert cookie[:4] == bytes(4)  # <VersionIDofSecret>, version 0
    assert issuer.verify(cookie, NI, ADDR, SPI_I)
    assert issuer.verify(cookie, NI, ADDR, SPI_I, NOW + 1)


def test_cookie_is_deterministic_and_stateless() -> None:
    issuer = _issuer()
    assert issuer.cookie_for(NI, ADDR, SPI_I, NOW) == issuer.cookie_for(NI, ADDR, SPI_I, NOW + 1)
    # Another issuer with another secret makes another cookie.
    assert _issuer(2).cookie_for(NI, ADDR, SPI_I, NOW) != issuer.cookie_for(NI, ADDR, SPI_I, NOW)


def test_only_the_ip_address_is_bound_not_the_port() -> None:
    issuer = _issuer()
    cookie = issuer.cookie_for(NI, ADDR, SPI_I, NOW)
    assert issuer.verify(cookie, NI, (ADDR[0], 4500), SPI_I)


@pytest.mark.parametrize(
    ("ni", "addr", "spi_i"),
    [
        (NI[:-1] + b"\xff", ADDR, SPI_I),  # another Ni
        (NI, ("192.0.2.11", 500), SPI_I),  # another IPi
        (NI, ADDR, bytes.fromhex("0123456789abcdee")),  # another SPIi
        (NI + b"\x00", ADDR, SPI_I),  # a longer Ni
    ],
)
def test_cookie_for_another_request_is_rejected(
    ni: bytes, addr: tuple[str, int], spi_i: bytes
) -> None:
    issuer = _issuer()
    cookie = issuer.cookie_for(NI, ADDR, SPI_I, NOW)
    assert not issuer.verify(cookie, ni, addr, spi_i)


def test_ni_and_ip_do_not_run_together() -> None:
    """Ni is length-prefixed: an IPv6 cookie never verifies for an IPv4 address made of
    its last four octets with those octets moved into Ni."""
    issuer = _issuer()
    v6 = ("2001:db8::c000:20a", 500)  # ends in 192.0.2.10
    cookie = issuer.cookie_for(NI, v6, SPI_I, NOW)
    head, tail = ipaddress.ip_address(v6[0]).packed[:12], ipaddress.ip_address(v6[0]).packed[12:]
    assert tail == ipaddress.ip_address(ADDR[0]).packed
    assert not issuer.verify(cookie, NI + head, ADDR, SPI_I)
    assert issuer.verify(cookie, NI, v6, SPI_I)


@pytest.mark.parametrize("index", [0, 3, 4, 20, COOKIE_LEN - 1])
def test_tampered_cookie_is_rejected(index: int) -> None:
    issuer = _issuer()
    cookie = bytearray(issuer.cookie_for(NI, ADDR, SPI_I, NOW))
    cookie[index] ^= 0x01
    assert not issuer.verify(bytes(cookie), NI, ADDR, SPI_I)


@pytest.mark.parametrize("length", [0, 1, COOKIE_LEN - 1, COOKIE_LEN + 1, 64, 65])
def test_cookie_of_the_wrong_length_is_rejected(length: int) -> None:
    issuer = _issuer()
    cookie = issuer.cookie_for(NI, ADDR, SPI_I, NOW)
    forged = (cookie * 2)[:length]
    assert not issuer.verify(forged, NI, ADDR, SPI_I)


def test_rotation_keeps_the_previous_secret_only() -> None:
    issuer = _issuer()
    v0 = issuer.cookie_for(NI, ADDR, SPI_I, NOW)
    issuer.rotate(NOW + 1)
    v1 = issuer.cookie_for(NI, ADDR, SPI_I, NOW + 1)
    assert v1 != v0
    assert v1[:4] == b"\x00\x00\x00\x01"
    assert issuer.verify(v0, NI, ADDR, SPI_I)  # the previous secret is still accepted
    assert issuer.verify(v1, NI, ADDR, SPI_I)
    issuer.rotate(NOW + 2)
    assert not issuer.verify(v0, NI, ADDR, SPI_I)  # two changes ago: rejected
    assert issuer.verify(v1, NI, ADDR, SPI_I)


def test_secret_rotates_by_itself_with_the_time_passed_in() -> None:
    issuer = _issuer()
    v0 = issuer.cookie_for(NI, ADDR, SPI_I, NOW)  # the first ``now`` starts the period
    assert issuer.version == 0
    assert issuer.cookie_for(NI, ADDR, SPI_I, NOW + PERIOD - 1) == v0
    v1 = issuer.cookie_for(NI, ADDR, SPI_I, NOW + PERIOD)
    assert issuer.version == 1
    assert v1 != v0
    assert issuer.verify(v0, NI, ADDR, SPI_I, NOW + PERIOD + 1)
    # The next change, one period later, retires v0.
    assert not issuer.verify(v0, NI, ADDR, SPI_I, NOW + 2 * PERIOD)
    assert issuer.verify(v1, NI, ADDR, SPI_I, NOW + 2 * PERIOD)
    assert issuer.version == 2


def test_a_long_quiet_spell_retires_both_secrets() -> None:
    issuer = _issuer()
    v0 = issuer.cookie_for(NI, ADDR, SPI_I, NOW)
    assert not issuer.verify(v0, NI, ADDR, SPI_I, NOW + 2 * PERIOD)
    assert issuer.version == 1


def test_version_counter_wraps_at_version_bits() -> None:
    issuer = CookieIssuer(random.Random(1).randbytes, version_bits=1)
    old = issuer.cookie_for(NI, ADDR, SPI_I, NOW)
    issuer.rotate(NOW)
    issuer.rotate(NOW)
    assert issuer.version == 0
    # Same version number, another secret: the MAC, not the version, rejects it.
    assert issuer.cookie_for(NI, ADDR, SPI_I, NOW)[:4] == old[:4]
    assert not issuer.verify(old, NI, ADDR, SPI_I)


@pytest.mark.parametrize("bits", [0, 33])
def test_version_bits_out_of_range(bits: int) -> None:
    with pytest.raises(ValueError, match="version_bits"):
        CookieIssuer(version_bits=bits)


def test_secret_stays_out_of_repr() -> None:
    secret = bytes(range(100, 132))
    issuer = CookieIssuer(lambda n: secret[:n])
    assert secret.hex() not in repr(issuer)
    assert repr(secret) not in repr(issuer._current)


def test_needs_cookie() -> None:
    assert not needs_cookie(9, 10)
    assert needs_cookie(10, 10)
    assert needs_cookie(11, 10)
    assert not needs_cookie(1000, 0)  # threshold 0: cookies off


# --- intake helpers ---------------------------------------------------------------------


def test_parse_request_without_cookie() -> None:
    data = _request(KeyExchange(31, bytes(32)), Nonce(NI))
    assert parse_ike_sa_init_request(data) == IkeSaInitRequest(SPI_I, NI, None)


def test_parse_request_with_cookie_first() -> None:
    # HDR(A,0), N(COOKIE), SAi1, KEi, Ni -->
    data = _request(
        Notify(NotifyType.COOKIE, b"c1"),
        KeyExchange(31, bytes(32)),
        Nonce(NI),
        Notify(NotifyType.COOKIE, b"c2"),
    )
    assert parse_ike_sa_init_request(data) == IkeSaInitRequest(SPI_I, NI, b"c1")


@pytest.mark.parametrize(
    "data",
    [
        _request(KeyExchange(31, bytes(32))),  # no Ni
        _request(Nonce(NI), spi_r=bytes(7) + b"\x01"),  # not the first message
        _request(Nonce(NI), response=True),
        b"\x00" * 10,
    ],
)
def test_parse_rejects_what_is_not_an_ike_sa_init_request(data: bytes) -> None:
    with pytest.raises(MalformedMessage):
        parse_ike_sa_init_request(data)


def test_cookie_response_is_hdr_a_0_n_cookie() -> None:
    # <-- HDR(A,0), N(COOKIE)
    message = decode_message(encode_cookie_response(SPI_I, b"\x00\x01cookie"))
    header = message.header
    assert (header.spi_i, header.spi_r) == (SPI_I, bytes(8))
    assert header.exchange_type == ExchangeType.IKE_SA_INIT
    assert header.message_id == 0
    assert header.response
    assert not header.initiator
    assert message.payloads == (Notify(NotifyType.COOKIE, b"\x00\x01cookie"),)


@pytest.mark.parametrize("length", [0, 65])
def test_cookie_response_refuses_bad_lengths(length: int) -> None:
    with pytest.raises(ValueError, match="1 to 64"):
        encode_cookie_response(SPI_I, bytes(length))


def test_challenge_answers_the_request_with_a_cookie_that_verifies() -> None:
    issuer = _issuer()
    answer = decode_message(issuer.challenge(_request(Nonce(NI)), ADDR, NOW))
    cookie = answer.notify(NotifyType.COOKIE)
    assert cookie is not None
    assert answer.header.spi_i == SPI_I
    assert issuer.verify(cookie.data, NI, ADDR, SPI_I)
