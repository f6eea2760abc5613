"""IKE_SA_INIT: algorithms, Diffie-Hellman, nonces, NAT detection (RFC 7296 1.2, 2.23).

::

    HDR, SAi1, KEi, Ni, N(NAT_D_S), N(NAT_D_D), N(FRAG_SUP), N(SIG_HASH)  -->
                 <--  HDR, SAr1, KEr, Nr, N(NAT_D_S), N(NAT_D_D), N(FRAG_SUP), N(SIG_HASH)
                 <--  HDR(A,0), N(INVALID_KE_PAYLOAD) | N(NO_PROPOSAL_CHOSEN)
                 <--  HDR(A,0), N(COOKIE)
    HDR(A,0), N(COOKIE), SAi1, KEi, Ni, ...  -->

A COOKIE answer (RFC 7296 2.6) is retried with the cookie as the first
payload and the same SPIi, Ni and KEi; after an INVALID_KE_PAYLOAD retry the
cookie is echoed again, with the new KEi. The responder's intake checks the
cookie (``common/ike/cookies.py``); the responder task ignores N(COOKIE).

strongSwan's ``ike_init`` (with ``ike_natd`` folded in). The initiator calls
``build_i`` then ``process_i``; the responder ``process_r`` then ``build_r``.
The message is plaintext: the driver decodes it and hands over both the
``IkeMessage`` and the raw octets, which AUTH signs (RFC 7296 2.15).

Both sides always announce N(SIGNATURE_HASH_ALGORITHMS) (RFC 7427 section 4,
``auth.SUPPORTED_HASH_ALGORITHMS``), whatever they authenticate with, and keep
the peer's list in ``IkeSa.peer_signature_hashes`` for IKE_AUTH to sign with.

N(IKEV2_FRAGMENTATION_SUPPORTED) (RFC 7383 2.3): the initiator always sends
it, the responder answers with it when the initiator sent it, and each side
records in ``peer_fragmentation`` whether the peer did. The session reads it
for every message it sends on this IKE SA and on the ones that rekey it,
since no later exchange negotiates it again.
"""

from __future__ import annotations

import struct
from typing import Final

from common.ike import cookies, defaults, key_exchange
from common.ike.auth import (
    SUPPORTED_HASH_ALGORITHMS,
    decode_signature_hash_algorithms,
    encode_signature_hash_algorithms,
)
from common.ike.certs import certificate_request
from common.ike.constants import ExchangeType, KeyExchangeMethod, NotifyType
from common.ike.errors import LocalProtocolError, RemoteProtocolError
from common.ike.exchanges import Address
from common.ike.message import IkeHeader, IkeMessage, Payload, encode_message
from common.ike.payloads import KeyExchange, Nonce, Notify, SecurityAssociation
from common.ike.payloads.sa import Proposal
from common.ike.policy import CertificatePolicy
from common.ike.proposals import ike_algorithms, proposal_groups, select_proposal, validate_chosen
from common.ike.tasks.base import ZERO_SPI, IkeSa, as_notify, notify_name

_GROUP: Final = struct.Struct("!H")


def _signature_hash_algorithms() -> Notify:
    """N(SIGNATURE_HASH_ALGORITHMS): the hashes we verify signatures with (RFC 7427 4)."""
    return Notify(
        NotifyType.SIGNATURE_HASH_ALGORITHMS,
        encode_signature_hash_algorithms(SUPPORTED_HASH_ALGORITHMS),
    )


def _peer_signature_hashes(message: IkeMessage) -> tuple[int, ...] | None:
    """The peer's announced hashes, or None without the notify.

    Raises:
        MalformedMessage: odd-length data (RFC 7427 section 4).
    """
    notify = message.notify(NotifyType.SIGNATURE_HASH_ALGORITHMS)
    return None if notify is None else decode_signature_hash_algorithms(notify.data)


def _announces_fragmentation(message: IkeMessage) -> bool:
    """Whether the peer sent N(IKEV2_FRAGMENTATION_SUPPORTED) (RFC 7383 2.3)."""
    return message.notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED) is not None


class IkeInit:
    """One IKE_SA_INIT exchange, either role."""

    exchange_type: Final = ExchangeType.IKE_SA_INIT

    def __init__(self, sa: IkeSa, offer: tuple[Proposal, ...]) -> None:
        self._sa = sa
        self._offer = offer
        self._dh: key_exchange.KeyExchange | None = None
        self._ke_retried = False
        self._cookie = b""  # the responder's last N(COOKIE) data, echoed first (RFC 7296 2.6)
        self._cookie_retries = 0
        self._response: bytes = b""
        # The peer sent N(IKEV2_FRAGMENTATION_SUPPORTED): we may send it SKF (RFC 7383 2.3).
        self.peer_fragmentation = False

    # --- initiator ------------------------------------------------------------------------

    def build_i(self, group: int | None = None) -> bytes:
        """``HDR, [N(COOKIE),] SAi1, KEi, Ni, N(NAT_D)*2, N(FRAG_SUP), N(SIG_HASH) -->``.

        A new KEi for ``group``; Ni is made once and kept for every retry.
        """
        sa = self._sa
        if not sa.ni:
            sa.ni = sa.rng(defaults.NONCE_LEN)
        if group is None:
            group = proposal_groups(self._offer)[0]
        self._dh = key_exchange.KeyExchange.generate(KeyExchangeMethod(group), sa.rng)
        return self._build_request()

    def _build_request(self) -> bytes:
        """The IKE_SA_INIT request with the current KEi and cookie; it becomes
        RealMessage1, which AUTH signs (RFC 7296 2.15), so the last one sent counts."""
        sa = self._sa
        assert self._dh is not None
        header = IkeHeader(sa.spi_i, ZERO_SPI, ExchangeType.IKE_SA_INIT, 0, True, False)
        # RFC 7296 2.6: the cookie "as the first payload" of the retried request.
        cookie = [Notify(NotifyType.COOKIE, self._cookie)] if self._cookie else []
        payloads: list[Payload] = [
            *cookie,
            SecurityAssociation(self._offer),
            KeyExchange(self._dh.group, self._dh.public_value),
            Nonce(sa.ni),
            *sa.build_nat_detection(ZERO_SPI),
            Notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED),  # RFC 7383 2.3
            _signature_hash_algorithms(),  # RFC 7427 section 4
        ]
        sa.real_message_1 = encode_message(IkeMessage(header, tuple(payloads)))
        return sa.real_message_1

    def process_i(self, message: IkeMessage, data: bytes) -> bytes | None:
        """``<-- HDR, SAr1, KEr, Nr`` (or an error); returns a retried request, or None.

        Raises:
            RemoteProtocolError: the responder refused, or answered nonsense.
        """
        cookie = message.notify(NotifyType.COOKIE)
        # RFC 7296 2.6: a responder asking for a cookie sends N(COOKIE) alone; one
        # that also sends SAr1 has accepted us, and a stray N(COOKIE) is ignored.
        if cookie is not None and message.get(SecurityAssociation) is None:
            return self._process_cookie(cookie)
        invalid_ke = message.notify(NotifyType.INVALID_KE_PAYLOAD)
        if invalid_ke is not None:
            return self._process_invalid_ke(invalid_ke)
        for notify in message.get_all(Notify):
            if notify.is_error:
                raise RemoteProtocolError(
                    f"responder refused IKE_SA_INIT: {notify_name(notify.notify_type)}",
                    as_notify(notify.notify_type),
                )
        header = message.header
        sa_payload = message.get(SecurityAssociation)
        ke = message.get(KeyExchange)
        nonce = message.get(Nonce)
        if sa_payload is None or ke is None or nonce is None or header.spi_r == ZERO_SPI:
            raise RemoteProtocolError("IKE_SA_INIT response without SA, KE or Nr")
        ike = ike_algorithms(validate_chosen(sa_payload, self._offer))
        assert self._dh is not None
        if ke.group != self._dh.group or ike.group != self._dh.group:
            raise RemoteProtocolError("responder's KE group is not the one we sent")
        sa = self._sa
        sa.peer_signature_hashes = _peer_signature_hashes(message)
        self.peer_fragmentation = _announces_fragmentation(message)
        sa.spi_r = header.spi_r
        sa.nr = nonce.data
        sa.real_message_2 = data
        sa.derive_keys(ike, self._dh.shared_secret(ke.data))
        self._dh = None  # the ephemeral private value is done with (RFC 7296 2.12)
        if sa.process_nat_detection(message, sa.remote_addr):
            # RFC 7296 2.23: after IKE_SA_INIT, move to port 4500 when a NAT is found.
            sa.nat_t = True
            sa.remote_addr = (sa.remote_addr[0], defaults.NAT_T_PORT)
            sa.local_addr = (sa.local_addr[0], defaults.NAT_T_PORT)
        return None

    def _process_invalid_ke(self, notify: Notify) -> bytes:
        """``<-- HDR(A,0), N(INVALID_KE_PAYLOAD)``: retry once with the group asked for."""
        wanted = _GROUP.unpack(notify.data)[0] if len(notify.data) == 2 else None
        assert self._dh is not None
        if (
            self._ke_retried
            or wanted is None
            or wanted == self._dh.group
            or wanted not in proposal_groups(self._offer)
        ):
            raise RemoteProtocolError(
                f"responder wants KE group {wanted}, which we cannot offer",
                NotifyType.INVALID_KE_PAYLOAD,
            )
        self._ke_retried = True
        # RFC 7296 1.2: the same IKE_SA_INIT again (message ID 0), with the right KEi.
        return self.build_i(wanted)

    def _process_cookie(self, notify: Notify) -> bytes:
        """``<-- HDR(A,0), N(COOKIE)``: the same request again, the cookie first.

        ``HDR(A,0), N(COOKIE), SAi1, KEi, Ni -->`` keeps SPIi, Ni and KEi
        (the cookie binds SPIi and Ni; the key exchange need not be redone). A
        responder that did not like our cookie sends a new one (RFC 7296 2.6),
        so a later N(COOKIE) replaces the earlier, up to ``COOKIE_RETRIES``.
        """
        if not cookies.valid_cookie_length(notify.data):
            # RFC 7296 2.6, 3.10.1: cookie data is 1 to 64 octets.
            raise RemoteProtocolError(
                f"N(COOKIE) of {len(notify.data)} octets", NotifyType.INVALID_SYNTAX
            )
        if self._cookie_retries >= defaults.COOKIE_RETRIES:
            # RFC 7296 2.6: the initiator limits its cookie exchanges, so no endless loop.
            raise RemoteProtocolError(
                f"responder still wants a cookie after {self._cookie_retries} retries",
                NotifyType.COOKIE,
            )
        self._cookie_retries += 1
        self._cookie = notify.data
        return self._build_request()

    # --- responder ------------------------------------------------------------------------

    def process_r(self, message: IkeMessage, data: bytes, addr: Address) -> None:
        """``HDR, SAi1, KEi, Ni -->``: choose algorithms and derive the keys.

        Raises:
            RemoteProtocolError: a payload is missing (INVALID_SYNTAX).
            LocalProtocolError: NO_PROPOSAL_CHOSEN, or INVALID_KE_PAYLOAD naming our group.
        """
        header = message.header
        sa_payload = message.get(SecurityAssociation)
        ke = message.get(KeyExchange)
        nonce = message.get(Nonce)
        if sa_payload is None or ke is None or nonce is None or header.spi_r != ZERO_SPI:
            raise RemoteProtocolError("IKE_SA_INIT without SA, KE or Ni", NotifyType.INVALID_SYNTAX)
        chosen = select_proposal(sa_payload, self._offer, prefer_group=ke.group)
        ike = ike_algorithms(chosen)
        if ike.group != ke.group:
            # RFC 7296 1.2, 3.10.1: tell the initiator which group we want.
            raise LocalProtocolError(
                f"KEi is group {ke.group}, we chose {ike.group.name}",
                NotifyType.INVALID_KE_PAYLOAD,
                _GROUP.pack(ike.group),
            )
        sa = self._sa
        sa.peer_signature_hashes = _peer_signature_hashes(message)
        self.peer_fragmentation = _announces_fragmentation(message)
        sa.spi_i = header.spi_i
        sa.remote_addr = addr
        sa.ni = nonce.data
        sa.nr = sa.rng(defaults.NONCE_LEN)
        dh = key_exchange.KeyExchange.generate(ike.group, sa.rng)
        g_ir = dh.shared_secret(ke.data)
        sa.nat_t_pending = sa.process_nat_detection(message, addr)
        sa.derive_keys(ike, g_ir)
        response_header = IkeHeader(sa.spi_i, sa.spi_r, ExchangeType.IKE_SA_INIT, 0, False, True)
        payloads: list[Payload] = [
            SecurityAssociation((chosen,)),
            KeyExchange(ike.group, dh.public_value),
            Nonce(sa.nr),
            *sa.build_nat_detection(sa.spi_r),
            # RFC 7383 2.3: the responder answers the initiator's announcement.
            *(
                [Notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED)]
                if self.peer_fragmentation
                else []
            ),
            _signature_hash_algorithms(),  # RFC 7427 section 4
        ]
        if isinstance(sa.policy, CertificatePolicy) and (cas := sa.policy.ca_certificates()):
            # RFC 7296 1.2 / 3.7: ask for the client's certificate here; peers
            # such as strongSwan (send_cert = ifasked) send one only when asked.
            payloads.append(certificate_request(tuple(cas)))
        sa.real_message_1 = data
        sa.real_message_2 = encode_message(IkeMessage(response_header, tuple(payloads)))

    def build_r(self) -> bytes:
        """``<-- HDR, SAr1, KEr, Nr, N(NAT_D)*2, [N(FRAG_SUP),] N(SIG_HASH), [CERTREQ]``."""
        return self._sa.real_message_2
