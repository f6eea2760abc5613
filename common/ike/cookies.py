"""Stateless COOKIE challenge for the responder's intake (RFC 7296 2.6).

::

    HDR(A,0), SAi1, KEi, Ni -->
                           <-- HDR(A,0), N(COOKIE)
    HDR(A,0), N(COOKIE), SAi1, KEi, Ni -->
                           <-- HDR(A,B), SAr1, KEr, Nr

The concentrator's intake uses this *before* it creates an ``IkeSession``,
once its count of half-open IKE SAs reaches a threshold (``needs_cookie``):
it reads the request with ``parse_ike_sa_init_request``, answers one without
a valid cookie with ``encode_cookie_response`` (keeping no state), and hands
one whose cookie ``CookieIssuer.verify`` accepts to a fresh session. The
session itself ignores N(COOKIE).

The cookie is the one RFC 7296 2.6 suggests::

    Cookie = <VersionIDofSecret> | Hash(Ni | IPi | SPIi | <secret>)

with two deliberate changes, both making the MAC harder to abuse without
changing what it binds:

- the "Hash" is HMAC-SHA-256 keyed with ``<secret>`` rather than SHA-256 over
  a secret-suffixed string: HMAC is the standard keyed construction, and a
  plain hash with the key appended inherits every collision of the hash;
- ``Ni`` is prefixed with its 2-octet length: Ni (16..256 octets) and IPi (4
  or 16) are both variable, so a bare concatenation would let a cookie
  issued to an IPv6 initiator verify for an IPv4 address made of its last
  four octets.

Only the IP address is bound, not the port, as in RFC 7296 2.6. Time is an
input (``now``), as everywhere in the cores: nothing here reads a clock.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from common.ike import defaults
from common.ike.constants import ExchangeType, NotifyType
from common.ike.errors import MalformedMessage
from common.ike.message import IkeHeader, IkeMessage, decode_message, encode_message
from common.ike.payloads import Nonce, Notify

Address = tuple[str, int]
Rng = Callable[[int], bytes]

ZERO_SPI: Final = bytes(8)
VERSION_LEN: Final = 4  # <VersionIDofSecret>, RFC 7296 2.6
MAC_LEN: Final = 32  # HMAC-SHA-256
COOKIE_LEN: Final = VERSION_LEN + MAC_LEN
# RFC 7296 2.6, 3.10.1: the COOKIE notification data is 1 to 64 octets long.
COOKIE_MIN_LEN: Final = 1
COOKIE_MAX_LEN: Final = 64
SECRET_LEN: Final = 32

_VERSION: Final = struct.Struct("!I")
_NI_LEN: Final = struct.Struct("!H")


def valid_cookie_length(cookie: bytes) -> bool:
    """Whether ``cookie`` is 1 to 64 octets long (RFC 7296 2.6, 3.10.1)."""
    return COOKIE_MIN_LEN <= len(cookie) <= COOKIE_MAX_LEN


def needs_cookie(half_open: int, threshold: int) -> bool:
    """Whether the intake should challenge new IKE_SA_INIT requests with a COOKIE.

    Args:
        half_open: IKE SAs created but not yet authenticated (RFC 7296 2.6).
        threshold: the count at which cookies start; 0 or less means never.
    """
    return threshold > 0 and half_open >= threshold


@dataclass(frozen=True, slots=True)
class _Secret:
    version: int
    key: bytes

    def __repr__(self) -> str:  # the key never appears in a repr (STYLE.md)
        return f"<secret v{self.version}>"


class CookieIssuer:
    """Make and check RFC 7296 2.6 cookies with a rotating secret; no per-peer state.

    Drivers (all time is passed in):

    - ``cookie_for(ni, addr_i, spi_i, now)``: the cookie to send in N(COOKIE);
    - ``challenge(data, addr_i, now)``: the whole ``HDR(A,0), N(COOKIE)`` answer;
    - ``verify(cookie, ni, addr_i, spi_i, now=None)``: whether an echoed cookie
      is one we made, with the current or the previous secret;
    - ``rotate(now)``: change the secret now; it also changes by itself
      ``rotate_every_s`` after the last change, on the next call with ``now``.

    A cookie made with the previous secret stays valid until the next change,
    so a cookie is accepted for between one and two rotation periods (RFC 7296
    2.6: keeping the previous secret a little while spares initiators that got
    a cookie just before the change a second round trip).
    """

    __slots__ = (
        "_current",
        "_previous",
        "_rotate_at",
        "_secret_rng",
        "rotate_every_s",
        "version_bits",
    )

    def __init__(
        self,
        secret_rng: Rng = os.urandom,
        *,
        version_bits: int = 32,
        rotate_every_s: float = defaults.COOKIE_SECRET_LIFETIME_S,
    ) -> None:
        """Make an issuer with a fresh secret, version 0.

        Args:
            secret_rng: randomness for the secrets (``os.urandom``; seeded in tests).
            version_bits: width of the secret's version counter, which wraps at
                ``2**version_bits`` (1 to 32); it is always sent as 4 octets.
                Two versions are enough to tell the current secret from the
                previous; a wider counter just makes a stale cookie fail on
                its version instead of on its MAC.
            rotate_every_s: seconds between automatic secret changes.
        """
        if not 1 <= version_bits <= 8 * VERSION_LEN:
            raise ValueError(f"version_bits must be 1 to 32, not {version_bits}")
        if rotate_every_s <= 0:
            raise ValueError("rotate_every_s must be positive")
        self._secret_rng = secret_rng
        self.version_bits = version_bits
        self.rotate_every_s = rotate_every_s
        self._current = _Secret(0, secret_rng(SECRET_LEN))
        self._previous: _Secret | None = None
        self._rotate_at: float | None = None  # set by the first call that passes ``now``

    def __repr__(self) -> str:
        return f"<CookieIssuer version={self.version}>"

    @property
    def version(self) -> int:
        """The current secret's version, as sent in the first 4 octets of a cookie."""
        return self._current.version

    def rotate(self, now: float) -> None:
        """Change the secret (new version); the old one becomes the previous one."""
        version = (self._current.version + 1) % (1 << self.version_bits)
        self._previous = self._current
        self._current = _Secret(version, self._secret_rng(SECRET_LEN))
        self._rotate_at = now + self.rotate_every_s

    def cookie_for(self, ni: bytes, addr_i: Address, spi_i: bytes, now: float) -> bytes:
        """``<VersionIDofSecret> | MAC(Ni | IPi | SPIi)`` with the current secret.

        Args:
            ni: the Nonce data of the initiator's request.
            addr_i: where the request came from; only the IP address is bound.
            spi_i: the initiator's SPI from the request header.
            now: monotonic seconds, to rotate the secret when it is due.

        Raises:
            ValueError: ``addr_i[0]`` is not an IP address literal.
        """
        self._tick(now)
        return _cookie(self._current, ni, addr_i, spi_i)

    def verify(
        self, cookie: bytes, ni: bytes, addr_i: Address, spi_i: bytes, now: float | None = None
    ) -> bool:
        """Whether ``cookie`` is the one we made for (Ni, IPi, SPIi), with the current or
        the previous secret.

        Args:
            now: when given, rotate first if due, so a quiet issuer's old
                secrets still expire.
        """
        if now is not None:
            self._tick(now)
        if len(cookie) != COOKIE_LEN:
            return False
        (version,) = _VERSION.unpack_from(cookie)
        for secret in (self._current, self._previous):
            if secret is not None and secret.version == version:
                # Constant time: the MAC must not leak how many octets matched.
                return hmac.compare_digest(cookie, _cookie(secret, ni, addr_i, spi_i))
        return False

    def challenge(self, data: bytes, addr_i: Address, now: float) -> bytes:
        """``<-- HDR(A,0), N(COOKIE)`` answering the IKE_SA_INIT request ``data``.

        Raises:
            MalformedMessage: ``data`` is not an IKE_SA_INIT request with a Nonce.
        """
        request = parse_ike_sa_init_request(data)
        return encode_cookie_response(
            request.spi_i, self.cookie_for(request.ni, addr_i, request.spi_i, now)
        )

    def _tick(self, now: float) -> None:
        if self._rotate_at is None:
            self._rotate_at = now + self.rotate_every_s
        elif now >= self._rotate_at:
            stale = now >= self._rotate_at + self.rotate_every_s
            self.rotate(now)
            if stale:
                self._previous = None  # a whole period passed unused: both are too old


def _cookie(secret: _Secret, ni: bytes, addr_i: Address, spi_i: bytes) -> bytes:
    ip = ipaddress.ip_address(addr_i[0]).packed
    mac = hmac.new(secret.key, _NI_LEN.pack(len(ni)) + ni + ip + spi_i, hashlib.sha256)
    return _VERSION.pack(secret.version) + mac.digest()


# --- the intake's view of an IKE_SA_INIT request, without a session -----------------------


@dataclass(frozen=True, slots=True)
class IkeSaInitRequest:
    """What the intake needs from ``HDR(A,0), [N(COOKIE),] SAi1, KEi, Ni``."""

    spi_i: bytes
    ni: bytes
    cookie: bytes | None  # the first N(COOKIE)'s data; None when there is none


def parse_ike_sa_init_request(data: bytes) -> IkeSaInitRequest:
    """Read SPIi, Ni and the echoed cookie from a raw IKE_SA_INIT request.

    RFC 7296 2.6 puts N(COOKIE) first; the first N(COOKIE) anywhere is taken,
    since a misplaced one is still the initiator's echo.

    Raises:
        MalformedMessage: not an IKE_SA_INIT request (message ID 0, SPIr
            zero), no Nonce, or a payload that does not parse.
        InvalidMajorVersionError: not IKEv2 (RFC 7296 2.5).
        UnsupportedCriticalPayloadError: an unknown critical payload.
    """
    message = decode_message(data)
    header = message.header
    if (
        header.exchange_type != ExchangeType.IKE_SA_INIT
        or header.response
        or header.message_id != 0
        or header.spi_r != ZERO_SPI
    ):
        raise MalformedMessage("not an IKE_SA_INIT request")
    nonce = message.get(Nonce)
    if nonce is None:
        raise MalformedMessage("IKE_SA_INIT request without Ni")
    cookie = message.notify(NotifyType.COOKIE)
    return IkeSaInitRequest(header.spi_i, nonce.data, None if cookie is None else cookie.data)


def encode_cookie_response(spi_i: bytes, cookie: bytes) -> bytes:
    """``<-- HDR(A,0), N(COOKIE)``: SPIr zero, message ID 0, Response flag set (RFC 7296 2.6).

    Raises:
        ValueError: ``cookie`` is not 1 to 64 octets (RFC 7296 2.6).
    """
    if not valid_cookie_length(cookie):
        raise ValueError(f"a cookie is 1 to 64 octets, not {len(cookie)}")
    header = IkeHeader(spi_i, ZERO_SPI, ExchangeType.IKE_SA_INIT, 0, False, True)
    return encode_message(IkeMessage(header, (Notify(NotifyType.COOKIE, cookie),)))
