"""ESP Security Associations in tunnel mode: encapsulate and decapsulate (RFC 4303).

Flow, outbound (``OutboundSa.encapsulate``)::

    inner IP packet --> next header from the IP version (4 or 41)
      --> seq += 1 (refuse past the limit, flag "rekey needed" at the soft limit)
      --> payload || padding 1,2,3.. || pad length || next header   (RFC 4303 2.4-2.6)
      --> AEAD: nonce = salt || IV, IV = 64-bit seq, AAD = SPI || [seq high] || seq low
          CBC:  random IV, AES-CBC, ICV = HMAC(SPI || seq || IV || ciphertext [|| seq high])
      --> SPI || seq low || IV || ciphertext [|| ICV]

Flow, inbound (``InboundSa.decapsulate``)::

    ESP bytes --> length and SPI sanity --> full seq (ESN inferred, RFC 4303 A2.2)
      --> replay check (no state change) --> ICV verified (before any decryption for CBC)
      --> replay window commit --> trailer: padding, next header
      --> 59 "dummy" dropped silently, 4/41 must match the inner IP version
      --> inner IP packet

Why these shapes: one cipher object per SA (building one per packet costs 2.5x,
DESIGN.md); precompiled ``struct`` formats and plain ``bytes``; and no
exception leaves ``decapsulate``: a bad packet returns a ``Drop`` reason that
the caller counts, since exceptions on the packet path are slow and hide
drops from the counters.
"""

from __future__ import annotations

import hmac
import os
import struct
from collections.abc import Callable
from enum import IntEnum
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from common.esp.replay import DEFAULT_WINDOW, ReplayWindow
from common.esp.suites import EspSuite
from common.ike.constants import EncryptionAlgorithm, IpProtocol

Rng = Callable[[int], bytes]


class Drop(IntEnum):
    """Why a packet was not delivered. Values index the per-SA drop counters."""

    MALFORMED = 0  # too short, not block aligned, wrong SPI
    REPLAYED = 1  # seen before, or left of the window (RFC 4303 3.4.3)
    AUTH_FAILED = 2  # ICV did not verify (RFC 4303 3.4.4)
    BAD_PADDING = 3  # pad length beyond the payload, or padding not 1, 2, 3.. (RFC 4303 2.4)
    BAD_NEXT_HEADER = 4  # not 4/41 in tunnel mode, or disagreeing with the inner IP version
    DUMMY = 5  # next header 59, traffic flow confidentiality padding (RFC 4303 2.6)
    SEQUENCE_EXHAUSTED = 6  # outbound: the sequence space is used up (RFC 4303 3.3.3)
    NOT_IP = 7  # outbound: the "inner packet" is not IPv4 or IPv6


DROP_COUNT: Final = len(Drop)

# RFC 4303 3.3.3: without ESN the counter MUST NOT cycle; the last usable number is 2^32-1.
SEQ_LIMIT_32: Final = 0xFFFFFFFF
SEQ_LIMIT_64: Final = 0xFFFFFFFFFFFFFFFF

_SPI_SEQ: Final = struct.Struct("!II")
_U32: Final = struct.Struct("!I")
_U64: Final = struct.Struct("!Q")
_HEADER_IV: Final = struct.Struct("!4sIQ")  # SPI, seq low, IV (= the 64-bit seq)
_SPI_SEQ64: Final = struct.Struct("!4sQ")  # ESN AAD: SPI, seq high, seq low
_NONCE: Final = struct.Struct("!4sQ")  # salt || IV (RFC 4106 4, RFC 7634 2)
_pack_header_iv: Final = _HEADER_IV.pack  # bound once: one lookup less per packet
_pack_nonce: Final = _NONCE.pack
# RFC 4303 2.4: padding bytes are 1, 2, 3, ... ; the longest needed is 255.
_PADDING: Final = bytes(range(1, 256))
# Plain ints on the packet path: comparing against an IntEnum member costs ~200 ns here.
_NH_IPV4: Final = int(IpProtocol.IPV4)
_NH_IPV6: Final = int(IpProtocol.IPV6)
_NH_DUMMY: Final = int(IpProtocol.NO_NEXT_HEADER)


def _trailers(alignment: int) -> tuple[tuple[bytes, ...] | None, ...]:
    """Padding + pad length + next header, by IP version nibble, then by pad length.

    One table lookup both validates the inner packet's version and picks its
    next header (4 or 41, RFC 4303 2.6); other versions find ``None``.
    """
    by_version: list[tuple[bytes, ...] | None] = [None] * 16
    for version, next_header in ((4, _NH_IPV4), (6, _NH_IPV6)):
        by_version[version] = tuple(
            _PADDING[:pad] + bytes((pad, next_header)) for pad in range(alignment)
        )
    return tuple(by_version)


class _Aead:
    """One AEAD object per SA, both for AES-GCM (RFC 4106) and ChaCha20-Poly1305 (RFC 7634)."""

    @staticmethod
    def build(suite: EspSuite, key: bytes) -> AESGCM | ChaCha20Poly1305:
        if suite.encryption is EncryptionAlgorithm.ENCR_CHACHA20_POLY1305:
            return ChaCha20Poly1305(key)
        return AESGCM(key)


def _check_spi(spi: int) -> None:
    # RFC 4303 2.1: SPI values 1-255 are reserved by IANA, 0 is local use only.
    if not 256 <= spi <= 0xFFFFFFFF:
        raise ValueError(f"ESP SPI {spi:#x} is outside 256..2^32-1 (RFC 4303 2.1)")


class _EspSa:
    """What both halves of a Child SA hold: identity, keys, one cipher object, counters."""

    __slots__ = (
        "_aead",
        "_cipher_key",
        "_hash_name",
        "_integ_key",
        "_salt",
        "_spi_bytes",
        "esn",
        "octets",
        "spi",
        "suite",
    )

    def __init__(self, spi: int, suite: EspSuite, keymat: bytes, esn: bool) -> None:
        _check_spi(spi)
        key, salt, integ = suite.split_keymat(keymat)
        self.spi = spi
        self.suite = suite
        self.esn = esn
        self.octets = 0
        self._spi_bytes = _U32.pack(spi)
        self._salt = salt
        self._integ_key = integ
        self._hash_name = suite.hash_name
        if suite.is_aead:
            self._aead: AESGCM | ChaCha20Poly1305 | None = _Aead.build(suite, key)
            self._cipher_key = b""
        else:
            self._aead = None
            self._cipher_key = key


class OutboundSa(_EspSa):
    """The sending half of a Child SA: sequence counter, key, and the framing.

    Drivers: the outbound data-plane worker calls ``encapsulate`` per packet and
    reads ``rekey_needed`` between batches; the control plane builds the object
    from the keys IKE derived (``ChildSaEstablished``).
    """

    __slots__ = ("_rng", "_seal", "_soft_limit", "_trailers", "rekey_needed", "seq", "seq_limit")

    def __init__(
        self,
        spi: int,
        suite: EspSuite,
        keymat: bytes,
        *,
        esn: bool = False,
        soft_limit: int | None = None,
        rng: Rng = os.urandom,
    ) -> None:
        """Build the SA.

        Args:
            spi: the SPI the peer chose to receive on.
            suite: the negotiated transform sizes.
            keymat: this direction's slice of KEYMAT (RFC 7296 2.17).
            esn: 64-bit extended sequence numbers (RFC 4303 2.2.1, appendix A).
            soft_limit: sequence number from which ``rekey_needed`` is set;
                defaults to 7/8 of the sequence space, early enough for a
                CREATE_CHILD_SA exchange to finish at any packet rate we reach.
            rng: randomness for CBC IVs (RFC 3602 3: unpredictable IVs).
        """
        super().__init__(spi, suite, keymat, esn)
        self.seq = 0
        self.seq_limit = SEQ_LIMIT_64 if esn else SEQ_LIMIT_32
        self._soft_limit = soft_limit if soft_limit is not None else self.seq_limit // 8 * 7
        if not 0 < self._soft_limit <= self.seq_limit:
            raise ValueError("soft sequence limit must lie within the sequence space")
        self.rekey_needed = False
        self._rng = rng
        self._trailers = _trailers(suite.alignment)
        self._seal: Callable[[bytes, int, bytes], bytes] = (
            self._seal_aead if suite.is_aead else self._seal_cbc
        )

    def __repr__(self) -> str:
        return f"OutboundSa(spi={self.spi:#010x}, suite={self.suite.name}, seq={self.seq})"

    @property
    def packets(self) -> int:
        """Packets sent: each one took the next sequence number, so no second counter."""
        return self.seq

    def encapsulate(self, inner: bytes) -> bytes | Drop:
        """Wrap one inner IP packet; a ``Drop`` when it cannot be sent."""
        seq = self.seq + 1
        if seq >= self._soft_limit:
            if seq > self.seq_limit:
                return Drop.SEQUENCE_EXHAUSTED  # RFC 4303 3.3.3: never cycle the counter
            self.rekey_needed = True
        # Indexed by the IP version nibble: the trailers, or None when not IPv4/IPv6.
        trailers = self._trailers[inner[0] >> 4] if inner else None
        if trailers is None:
            return Drop.NOT_IP
        self.seq = seq
        self.octets += len(inner)
        aead = self._aead
        if aead is None:
            return self._seal_cbc(inner, seq, self._rng(16))
        # The AEAD seal, inlined (the common case; a call costs ~5% at 64 B).
        # RFC 4106 3.1 / RFC 7634 2: the IV must never repeat under one key;
        # the 64-bit sequence number is unique per SA by construction.
        # Both AEAD suites pad to 4 octets (RFC 4106 3.2, RFC 7634 2).
        header_iv = _pack_header_iv(self._spi_bytes, seq & SEQ_LIMIT_32, seq)
        # RFC 4106 5 / RFC 7634 2.1: with ESN the AAD is SPI || seq high || seq low.
        aad = _SPI_SEQ64.pack(self._spi_bytes, seq) if self.esn else header_iv[:8]
        sealed = aead.encrypt(
            _pack_nonce(self._salt, seq), inner + trailers[-(len(inner) + 2) % 4], aad
        )
        return header_iv + sealed

    def encapsulate_at(self, inner: bytes, seq: int, iv: bytes) -> bytes:
        """Rebuild a packet with a given sequence number and IV, for test vectors only.

        A live SA must never use this: reusing an IV under one AEAD key breaks
        its confidentiality and integrity. Sequence state is left untouched.
        """
        return self._seal(inner, seq, iv)

    def _trailer(self, inner: bytes) -> bytes:
        by_pad = self._trailers[inner[0] >> 4]
        assert by_pad is not None, "encapsulate checks the IP version first"
        return by_pad[-(len(inner) + 2) % len(by_pad)]

    def _seal_aead(self, inner: bytes, seq: int, iv: bytes) -> bytes:
        header = self._spi_bytes + _U32.pack(seq & SEQ_LIMIT_32)
        # RFC 4106 5 / RFC 7634 2.1: with ESN the AAD is SPI || seq high || seq low.
        aad = self._spi_bytes + _U64.pack(seq) if self.esn else header
        aead = self._aead
        assert aead is not None
        return header + iv + aead.encrypt(self._salt + iv, inner + self._trailer(inner), aad)

    def _seal_cbc(self, inner: bytes, seq: int, iv: bytes) -> bytes:
        encryptor = Cipher(algorithms.AES(self._cipher_key), modes.CBC(iv)).encryptor()
        body = (
            self._spi_bytes
            + _U32.pack(seq & SEQ_LIMIT_32)
            + iv
            + encryptor.update(inner + self._trailer(inner))
            + encryptor.finalize()
        )
        # RFC 4303 2.2.1 / 3.3.2.1: with ESN the high half is appended for the ICV only.
        authenticated = body + _U32.pack(seq >> 32) if self.esn else body
        icv = hmac.digest(self._integ_key, authenticated, self._hash_name)
        return body + icv[: self.suite.icv_len]


class InboundSa(_EspSa):
    """The receiving half of a Child SA: replay window, key, and the unframing.

    Drivers: the inbound data-plane worker finds the SA by SPI and calls
    ``decapsulate``; counters (``packets``, ``octets``, ``drops`` indexed by
    ``Drop``) are read by the control plane in batches.
    """

    __slots__ = ("_min_len", "drops", "packets", "replay")

    def __init__(
        self,
        spi: int,
        suite: EspSuite,
        keymat: bytes,
        *,
        esn: bool = False,
        replay_window: int = DEFAULT_WINDOW,
    ) -> None:
        super().__init__(spi, suite, keymat, esn)
        self.replay = ReplayWindow(replay_window)
        self.drops = [0] * DROP_COUNT
        self.packets = 0
        # Header, IV, at least the 2-octet trailer (a whole block for CBC), ICV.
        least_ciphertext = 2 if suite.is_aead else suite.alignment
        self._min_len = 8 + suite.iv_len + least_ciphertext + suite.icv_len

    def __repr__(self) -> str:
        return f"InboundSa(spi={self.spi:#010x}, suite={self.suite.name}, top={self.replay.top})"

    def decapsulate(self, packet: bytes) -> bytes | Drop:
        """The inner IP packet, or why it was dropped. Never raises (any byte string)."""
        if len(packet) < self._min_len or packet[:4] != self._spi_bytes:
            self.drops[Drop.MALFORMED] += 1
            return Drop.MALFORMED
        replay = self.replay
        if self.esn:
            seq = replay.infer_esn(_U32.unpack_from(packet, 4)[0])
            aad = self._spi_bytes + _U64.pack(seq)
        else:
            seq = _U32.unpack_from(packet, 4)[0]
            aad = packet[:8]
        if not replay.check(seq):  # RFC 4303 3.4.3: before the ICV, without state change
            self.drops[Drop.REPLAYED] += 1
            return Drop.REPLAYED
        aead = self._aead
        if aead is None:
            plain = self._open_cbc(packet, seq)
        else:
            try:
                plain = aead.decrypt(self._salt + packet[8:16], packet[16:], aad)
            except InvalidTag:
                plain = Drop.AUTH_FAILED
        if not isinstance(plain, bytes):
            self.drops[plain] += 1
            return plain
        replay.commit(seq)  # only once the ICV verified
        result = self._unpad(plain)
        if isinstance(result, bytes):
            self.packets += 1
            self.octets += len(result)
        else:
            self.drops[result] += 1
        return result

    @staticmethod
    def _unpad(plain: bytes) -> bytes | Drop:
        """Strip and check the RFC 4303 2.4-2.6 trailer of a verified plaintext."""
        size = len(plain)
        pad = plain[size - 2]
        next_header = plain[size - 1]
        end = size - 2 - pad
        if end < 0 or plain[end : size - 2] != _PADDING[:pad]:
            return Drop.BAD_PADDING
        if end == 0:
            return Drop.DUMMY if next_header == _NH_DUMMY else Drop.BAD_NEXT_HEADER
        version = plain[0] >> 4
        if next_header == _NH_IPV4:
            if version != 4:
                return Drop.BAD_NEXT_HEADER
        elif next_header == _NH_IPV6:
            if version != 6:
                return Drop.BAD_NEXT_HEADER
        elif next_header == _NH_DUMMY:
            return Drop.DUMMY  # RFC 4303 2.6: discard silently
        else:
            return Drop.BAD_NEXT_HEADER  # tunnel mode carries only IPv4 (4) or IPv6 (41)
        return plain[:end]

    def _open_cbc(self, packet: bytes, seq: int) -> bytes | Drop:
        icv_len = self.suite.icv_len
        body = packet[: len(packet) - icv_len]
        if (len(body) - 24) % 16:
            return Drop.MALFORMED
        authenticated = body + _U32.pack(seq >> 32) if self.esn else body
        expected = hmac.digest(self._integ_key, authenticated, self._hash_name)[:icv_len]
        # RFC 4303 3.4.4: integrity is verified before decryption.
        if not hmac.compare_digest(expected, packet[len(body) :]):
            return Drop.AUTH_FAILED
        decryptor = Cipher(algorithms.AES(self._cipher_key), modes.CBC(body[8:24])).decryptor()
        return decryptor.update(body[24:]) + decryptor.finalize()
