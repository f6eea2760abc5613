"""IKE message fragmentation (RFC 7383): SKF sealing, opening and reassembly.

A message too large for one datagram is not sent as an IP-fragmented UDP
datagram (middleboxes drop those) but as several IKE messages, each with one
Encrypted Fragment (SKF) payload that is protected on its own, so every
fragment is authenticated before it is kept (RFC 7383 section 2.6).

Flow, outbound (``seal_fragments``)::

    inner payload chain --> chunks of ``fragment_size`` octets (from
      ``fragment_size_for``: the UDP payload budget minus the non-ESP marker,
      IKE header, SKF header, IV, padding, ICV; RFC 7383 2.5.1)
      --> per chunk: IKE header (Next Payload SKF, same Message ID)
          || SKF{Next Payload, Fragment Number n, Total Fragments t}
          sealed by ``common.ike.protection`` (the AAD takes the whole 8-octet
          SKF header, RFC 7383 2.5)

Flow, inbound::

    datagram --> ``open_skf`` (authenticate and decrypt one fragment)
      --> ``Reassembler.receive(message_id, fragment)``: numbering checks,
          Total Fragments changes, duplicates, limits
      --> ``ReassembledMessage(first_inner_payload, plaintext)`` once all arrived

The reassembler holds no clock: an incomplete message is dropped when a
fragment of another Message ID starts a new one (``IkeSession`` keeps one
pending message per direction, RFC 7383 2.6) or when its exchange ends
(``Reassembler.discard``).

How ``IkeSession`` uses this (``exchanges.SkProtection``, ``intake``): once
both peers sent N(IKEV2_FRAGMENTATION_SUPPORTED) in IKE_SA_INIT (RFC 7383
2.3), every protected message whose datagram would exceed
``IkeConfiguration.fragment_size`` goes out as SKF fragments, and they are
what is retransmitted and what the response cache replays (RFC 7383 2.6).
IKE_SA_INIT itself is never fragmented (RFC 7383 2.5: it is not encrypted).

Left out on purpose: the optional PMTU discovery of RFC 7383 2.5.2 (resending
in smaller fragments after unanswered retransmissions). ``fragment_size``
stays fixed; a path narrower than it is fixed by configuring a smaller one.
The receiving side already follows 2.5.2's rules (a greater Total Fragments
restarts reassembly), so a peer that does PMTU discovery works with us.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from common.ike.constants import PayloadType
from common.ike.errors import RemoteProtocolError
from common.ike.ike_suites import IkeSuite
from common.ike.protection import IKE_HEADER_LEN, open_encrypted, seal_encrypted

_SKF_FIELDS: Final = struct.Struct("!HH")  # Fragment Number, Total Fragments (RFC 7383 2.5)
_MAX_FRAGMENTS_ON_WIRE: Final = 0xFFFF
_NEXT_PAYLOAD_OFFSET: Final = 16  # in the IKE header (RFC 7296 3.1)

# Sizes are of the UDP payload: the IKE message, plus the RFC 3948 non-ESP
# marker on port 4500 (RFC 7383 2.5.1 counts it). strongSwan's
# ``charon.fragment_size`` counts the IP header too; ours leaves it out, so
# one number bounds what the session hands to the socket.
IPV4_HEADER: Final = 20
IPV6_HEADER: Final = 40
UDP_HEADER: Final = 8
NON_ESP_MARKER: Final = 4  # RFC 3948 2.2, present on port 4500
# Over IPv4, 1280 octets, strongSwan's default: it fits any real path, where
# RFC 7383 2.5.1's 576-octet floor would cut a certificate into many pieces.
DEFAULT_FRAGMENT_SIZE_IPV4: Final = 1280
# Over IPv6, what the minimum MTU leaves (RFC 8200; RFC 7383 2.5.1): 1232.
DEFAULT_FRAGMENT_SIZE_IPV6: Final = 1280 - IPV6_HEADER - UDP_HEADER
# What a 576-octet IPv4 datagram leaves, the least every host accepts (RFC 791).
MIN_FRAGMENT_SIZE: Final = 576 - IPV4_HEADER - UDP_HEADER

DEFAULT_MAX_FRAGMENTS: Final = 64
DEFAULT_MAX_MESSAGE_SIZE: Final = 64 * 1024
DEFAULT_MAX_PENDING_MESSAGES: Final = 4


class FragmentRejected(RemoteProtocolError, ValueError):  # noqa: N818 - like MalformedMessage
    """An authenticated fragment that cannot be used (numbering, totals, limits).

    Dropping it is the whole reaction (RFC 7383 2.6); it is a distinct type so
    the caller can count such drops apart from integrity failures. No Notify
    is sent for it (``notify = None``).
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, None)


@dataclass(frozen=True, slots=True)
class SkFragment:
    """One authenticated, decrypted SKF payload."""

    fragment_number: int
    total_fragments: int
    next_payload: int  # meaningful in fragment 1 only (RFC 7383 2.5)
    data: bytes = field(repr=False)  # decrypted IKE payloads: kept out of reprs


@dataclass(frozen=True, slots=True)
class ReassembledMessage:
    """A complete inner payload chain, as ``open_sk`` would have returned it."""

    message_id: int
    first_inner_payload: int
    plaintext: bytes = field(repr=False)


def default_fragment_size(*, ipv6: bool) -> int:
    """The UDP payload budget when none is configured, by the peer's address family."""
    return DEFAULT_FRAGMENT_SIZE_IPV6 if ipv6 else DEFAULT_FRAGMENT_SIZE_IPV4


def fits(message: bytes, datagram_size: int, *, non_esp_marker: bool) -> bool:
    """Whether ``message`` goes out whole within a ``datagram_size`` UDP payload."""
    return len(message) + (NON_ESP_MARKER if non_esp_marker else 0) <= datagram_size


def is_fragment(message: bytes) -> bool:
    """Whether the IKE message's first payload is SKF (RFC 7383 2.5), from its header.

    The caller has checked the header (``message.peek_header``).
    """
    return len(message) > _NEXT_PAYLOAD_OFFSET and message[_NEXT_PAYLOAD_OFFSET] == PayloadType.SKF


def fragment_size_for(suite: IkeSuite, datagram_size: int, *, non_esp_marker: bool) -> int:
    """Largest chunk of the inner chain one fragment may carry (RFC 7383 2.5.1).

    Args:
        suite: the IKE SA's suite (IV, ICV and padding take room).
        datagram_size: the UDP payload budget of one fragment
            (``IkeConfiguration.fragment_size`` or ``default_fragment_size``).
        non_esp_marker: the fragment travels on port 4500 (RFC 7383 2.5.1:
            the marker counts against the budget).

    Raises:
        ValueError: the budget leaves no room for even one octet of payloads.
    """
    overhead = (
        (NON_ESP_MARKER if non_esp_marker else 0)
        + IKE_HEADER_LEN
        + 4
        + _SKF_FIELDS.size
        + suite.iv_len
        + suite.icv_len
    )
    room = datagram_size - overhead
    chunk = room - room % suite.block_len - 1  # whole blocks, less the pad length octet
    if chunk < 1:
        raise ValueError(f"a {datagram_size}-octet datagram cannot carry a fragment")
    return chunk


def seal_fragments(
    header: bytes,
    first_inner_payload: int,
    plaintext: bytes,
    suite: IkeSuite,
    sk_e: bytes,
    sk_a: bytes,
    *,
    fragment_size: int,
    next_iv: Callable[[], bytes] | None = None,
    rng: Callable[[int], bytes] = os.urandom,
) -> list[bytes]:
    """Split an inner payload chain into protected SKF messages, in order.

    Args:
        header: the 28-octet IKE header of the original message; each fragment
            copies it with Next Payload = SKF and its own Length (RFC 7383
            2.5: all fragments carry the original Message ID).
        first_inner_payload: type of the first inner payload.
        plaintext: the encoded inner payload chain.
        suite, sk_e, sk_a: as for ``seal_sk``.
        fragment_size: chunk size, normally ``fragment_size_for(...)``.
        next_iv: called once per fragment for its explicit IV; for AEAD the
            IVs MUST never repeat under one key (RFC 5282 3.1), so the session
            passes its SA-wide counter. Default: ``rng(iv_len)``.
        rng: randomness source when ``next_iv`` is not given.

    Raises:
        ValueError: misuse (sizes, more than 65535 fragments).
    """
    if fragment_size < 1:
        raise ValueError("fragment_size must be positive")
    chunks = [plaintext[i : i + fragment_size] for i in range(0, len(plaintext), fragment_size)]
    if not chunks:
        chunks = [b""]
    total = len(chunks)
    if total > _MAX_FRAGMENTS_ON_WIRE:
        raise ValueError(f"{total} fragments do not fit the 16-bit Total Fragments field")
    messages = []
    for number, chunk in enumerate(chunks, start=1):
        # RFC 7383 2.5: Fragment Number starts at 1; only the first fragment
        # names the first inner payload, the others MUST carry 0.
        next_payload = first_inner_payload if number == 1 else PayloadType.NO_NEXT_PAYLOAD
        iv = next_iv() if next_iv is not None else None
        fields = _SKF_FIELDS.pack(number, total)
        messages.append(
            seal_encrypted(
                header, PayloadType.SKF, next_payload, fields, chunk, suite, sk_e, sk_a, iv, rng
            )
        )
    return messages


def open_skf(
    message: bytes, skf_payload_offset: int, suite: IkeSuite, sk_e: bytes, sk_a: bytes
) -> SkFragment:
    """Authenticate and decrypt one SKF payload (RFC 7383 2.6: before keeping it).

    Raises:
        IntegrityCheckFailed: on anything wrong with the received bytes.
        ValueError: misuse: key lengths that do not fit ``suite``.
    """
    next_payload, fields, data = open_encrypted(
        message, skf_payload_offset, _SKF_FIELDS.size, suite, sk_e, sk_a
    )
    number, total = _SKF_FIELDS.unpack(fields)
    return SkFragment(number, total, next_payload, data)


@dataclass(slots=True)
class _Pending:
    total: int
    chunks: dict[int, bytes] = field(default_factory=dict, repr=False)
    size: int = 0
    first_inner_payload: int = 0


class Reassembler:
    """Collects the authenticated fragments of incoming messages, keyed by Message ID.

    Use one per IKE SA and direction of exchange (requests from the peer,
    responses to us), since Message IDs are counted per direction.

    Drivers: ``receive`` for each fragment ``open_skf`` accepted; ``discard``
    when the exchange gives up on a message (the session owns time).

    Limits keep a peer from making us hold memory: at most ``max_fragments``
    per message (Total Fragments above it is refused outright), at most
    ``max_message_size`` octets of collected plaintext per message, and at most
    ``max_pending_messages`` incomplete messages (the oldest is dropped; the
    session passes 1, so a fragment of a new Message ID discards the partial
    set of the previous one, RFC 7383 2.6).

    A message is handed out once: fragments of the last completed Message ID
    are ignored afterwards, so a duplicated or retransmitted fragment can never
    make the same message be processed twice.
    """

    def __init__(
        self,
        *,
        max_fragments: int = DEFAULT_MAX_FRAGMENTS,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_pending_messages: int = DEFAULT_MAX_PENDING_MESSAGES,
    ) -> None:
        self.max_fragments = max_fragments
        self.max_message_size = max_message_size
        self.max_pending_messages = max_pending_messages
        self._pending: dict[int, _Pending] = {}
        self._completed: int | None = None  # the Message ID last handed out whole

    @property
    def pending_messages(self) -> int:
        return len(self._pending)

    def discard(self, message_id: int) -> None:
        """Forget an incomplete message (its exchange timed out or was answered)."""
        self._pending.pop(message_id, None)

    def receive(self, message_id: int, fragment: SkFragment) -> ReassembledMessage | None:
        """Keep one fragment; return the whole message once every fragment is in.

        Returns ``None`` while fragments are missing, and also for a duplicate
        (RFC 7383 2.6: retransmitted fragments are expected and ignored) or a
        fragment of the message completed last.

        Raises:
            FragmentRejected: the fragment is dropped (and counted by the
                caller): bad numbering, a smaller Total Fragments than seen
                before, or a limit exceeded (then the whole message is dropped).
        """
        number, total = fragment.fragment_number, fragment.total_fragments
        # RFC 7383 2.6: Fragment Number MUST be between 1 and Total Fragments.
        if total < 1 or not 1 <= number <= total:
            raise FragmentRejected(f"fragment {number} of {total} is misnumbered")
        if total > self.max_fragments:
            raise FragmentRejected(f"{total} fragments exceed the limit {self.max_fragments}")
        if message_id == self._completed:
            return None  # already handed out whole: never a second time
        pending = self._pending.get(message_id)
        if pending is not None and total != pending.total:
            # RFC 7383 2.6 (and 2.5.2, PMTU discovery): a sender that shrinks
            # its fragments resends the message in more fragments. A greater
            # Total Fragments starts reassembly anew; a smaller one belongs to
            # the older transmission and the fragment MUST be discarded.
            if total < pending.total:
                raise FragmentRejected(
                    f"Total Fragments {total} is smaller than the {pending.total} seen"
                )
            del self._pending[message_id]
            pending = None
        if pending is None:
            if len(self._pending) >= self.max_pending_messages:
                del self._pending[next(iter(self._pending))]
            pending = self._pending[message_id] = _Pending(total)
        if number in pending.chunks:
            return None
        if pending.size + len(fragment.data) > self.max_message_size:
            del self._pending[message_id]
            raise FragmentRejected(f"message exceeds the limit of {self.max_message_size} octets")
        pending.chunks[number] = fragment.data
        pending.size += len(fragment.data)
        if number == 1:
            pending.first_inner_payload = fragment.next_payload
        if len(pending.chunks) < total:
            return None
        del self._pending[message_id]
        self._completed = message_id
        plaintext = b"".join(pending.chunks[n] for n in range(1, total + 1))
        return ReassembledMessage(message_id, pending.first_inner_payload, plaintext)
