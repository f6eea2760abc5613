"""IkeSession: the sans-IO IKEv2 object for both roles (RFC 7296 1.2, 2.1-2.23).

What this slice covers, per exchange (RFC notation):

    IKE_SA_INIT  HDR, SAi1, KEi, Ni, N(NAT_D_S), N(NAT_D_D), N(FRAG_SUP)  -->
                 <--  HDR, SAr1, KEr, Nr, N(NAT_D_S), N(NAT_D_D), N(FRAG_SUP)
                 <--  HDR(A,0), N(INVALID_KE_PAYLOAD) | N(NO_PROPOSAL_CHOSEN)
    IKE_AUTH     HDR, SK {IDi, [IDr,] AUTH, CP(CFG_REQUEST), SAi2, TSi, TSr}  -->
                 <--  HDR, SK {IDr, AUTH, CP(CFG_REPLY), SAr2, TSi, TSr}
                 <--  HDR, SK {N(AUTHENTICATION_FAILED)}
                 <--  HDR, SK {IDr, AUTH, N(NO_PROPOSAL_CHOSEN | TS_UNACCEPTABLE |
                                          INTERNAL_ADDRESS_FAILURE | FAILED_CP_REQUIRED)}

Authentication is PSK only (RFC 7296 2.15). CREATE_CHILD_SA, INFORMATIONAL,
COOKIE, fragmentation (announced, never used) and certificates are not here yet.

Errors are raised deep and caught once, in ``receive_datagram`` (aioquic
shape; RFC 7296 2.21): whatever fails before a message is known to be
genuine (parse errors, a bad ICV) is dropped and counted in ``drops``; a
responder answers a refused request with the error's Notify; an initiator
fails the session with ``IkeSaFailed``.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from enum import Enum, auto
from typing import Final, TypeVar

from common.esp.spi import allocate_spi
from common.ike import defaults, key_exchange
from common.ike.auth import id_payload_body, psk_auth, signed_octets, verify_psk_auth
from common.ike.config import (
    AssignedConfig,
    build_cp_reply,
    build_cp_request,
    parse_cp_reply,
    requested,
)
from common.ike.constants import (
    AuthMethod,
    ConfigType,
    ConfigurationAttributeType,
    ExchangeType,
    IdType,
    KeyExchangeMethod,
    NotifyType,
)
from common.ike.errors import IkeError, LocalProtocolError, RemoteProtocolError
from common.ike.events import (
    AddressAssigned,
    ChildSaEstablished,
    ChildSaFailed,
    IkeEvent,
    IkeSaEstablished,
    IkeSaFailed,
)
from common.ike.exchanges import (
    Address,
    Requests,
    Responses,
    SkProtection,
    Timeout,
    build_nat_detection,
    nat_detected,
)
from common.ike.keys import IkeSaKeys, child_sa_keymat, derive_ike_sa_keys
from common.ike.message import (
    IkeHeader,
    IkeMessage,
    Payload,
    decode_message,
    encode_message,
    peek_header,
)
from common.ike.payloads import (
    Authentication,
    ConfigurationPayload,
    IdInitiator,
    IdPayload,
    IdResponder,
    KeyExchange,
    Nonce,
    Notify,
    SecurityAssociation,
    TrafficSelector,
    TsInitiator,
    TsResponder,
)
from common.ike.policy import Identity, IkeConfiguration, ResponderPolicy
from common.ike.proposals import (
    EspAlgorithms,
    IkeAlgorithms,
    esp_algorithms,
    esp_proposals,
    ike_algorithms,
    ike_proposals,
    proposal_groups,
    select_proposal,
    validate_chosen,
)
from common.ike.selectors import is_subset, narrow, selectors_for_networks

Rng = Callable[[int], bytes]

_ZERO_SPI: Final = bytes(8)
_ANY_IPV4: Final = TrafficSelector(
    ipaddress.IPv4Address("0.0.0.0"), ipaddress.IPv4Address("255.255.255.255")
)
_GROUP: Final = struct.Struct("!H")
_SPI: Final = struct.Struct("!I")


class IkeSaState(Enum):
    """Where the IKE SA stands (a full transition table belongs in state.py)."""

    INITIAL = auto()  # nothing sent (initiator) or received (responder)
    SA_INIT_SENT = auto()  # initiator: IKE_SA_INIT request outstanding
    AUTH_SENT = auto()  # initiator: IKE_AUTH request outstanding
    SA_INIT_DONE = auto()  # responder: keys exist, waiting for IKE_AUTH
    ESTABLISHED = auto()
    CLOSED = auto()


class IkeSession:
    """One IKE SA, initiator or responder, with no I/O.

    Drivers (aioquic ``QuicConnection`` shape):

    - ``initiate(now)``: the initiator's first move;
    - ``receive_datagram(data, addr, now)``: an IKE datagram from ``addr``,
      without the RFC 3948 non-ESP marker;
    - ``handle_timer(now)``: call at ``get_timer()``;
    - ``datagrams_to_send(now)``: ``(data, addr)`` pairs to send; when
      ``use_nat_t`` is true, send them from port 4500 with the non-ESP marker;
    - ``next_event()``: ``IkeEvent`` facts, until None.
    """

    def __init__(
        self,
        configuration: IkeConfiguration,
        *,
        is_initiator: bool,
        local_addr: Address,
        remote_addr: Address | None = None,
        policy: ResponderPolicy | None = None,
        rng: Rng = os.urandom,
        spi_allocator: Callable[[], int] | None = None,
    ) -> None:
        """Make a session.

        Args:
            configuration: identities, PSK (initiator), proposals.
            is_initiator: the role (RFC 7296 2.2: the original initiator).
            local_addr: our address and port, for NAT detection (RFC 7296 2.23).
            remote_addr: the peer; required for the initiator, learnt by the responder.
            policy: the responder's PSKs, leases and subnets; required for the responder.
            rng: randomness for SPIs, nonces, DH keys and CBC IVs.
            spi_allocator: our inbound ESP SPI for a new Child SA; defaults to
                ``allocate_spi`` with ``rng``.
        """
        if is_initiator and (remote_addr is None or not configuration.psk):
            raise RuntimeError("an initiator needs remote_addr and a PSK")  # API misuse
        if not is_initiator and policy is None:
            raise RuntimeError("a responder needs a policy")
        self._config = configuration
        self._is_initiator = is_initiator
        self._local_addr = local_addr
        self._remote_addr: Address = remote_addr or ("0.0.0.0", 0)
        self._policy = policy
        self._rng = rng
        self._allocate_spi = spi_allocator or (lambda: allocate_spi((), rng=rng))
        self._state = IkeSaState.INITIAL
        self._ike_offer = ike_proposals(configuration.ike_proposals)
        self._requests = Requests()
        self._responses = Responses()
        self._datagrams: list[tuple[bytes, Address]] = []
        self._events: deque[IkeEvent] = deque()
        self.drops: Counter[str] = Counter()

        self._spi_i = self._new_ike_spi() if is_initiator else _ZERO_SPI
        self._spi_r = _ZERO_SPI if is_initiator else self._new_ike_spi()
        self._ni = b""
        self._nr = b""
        self._dh: key_exchange.KeyExchange | None = None
        self._ke_retried = False
        self._ike: IkeAlgorithms | None = None
        self._keys: IkeSaKeys | None = None
        self._real_message_1 = b""
        self._real_message_2 = b""
        self._protection: SkProtection | None = None
        self._nat_t_pending = False
        self._nat_t = False
        self._child_inbound_spi = 0
        self._remote_id: Identity | None = None
        self._answering: IkeHeader | None = None  # the request we may answer with an error
        self._accepted = False  # the datagram being processed passed decoding/decryption
        self._request_addr: Address = self._remote_addr  # where the request in hand came from
        self._request_data = b""

    # --- properties -----------------------------------------------------------------------

    @property
    def state(self) -> IkeSaState:
        return self._state

    @property
    def is_initiator(self) -> bool:
        return self._is_initiator

    @property
    def spi_i(self) -> bytes:
        return self._spi_i

    @property
    def spi_r(self) -> bytes:
        return self._spi_r

    @property
    def remote_addr(self) -> Address:
        """Where the peer is now (port 4500 once NAT-T is in use)."""
        return self._remote_addr

    @property
    def use_nat_t(self) -> bool:
        """Send from UDP 4500 with the non-ESP marker (RFC 7296 2.23, RFC 3948 2.2).

        True once NAT was detected (or encapsulation forced) and the session has
        moved: for the initiator right after IKE_SA_INIT, for the responder from
        the first IKE_AUTH request on, so the IKE_SA_INIT response still goes out
        on port 500.
        """
        return self._nat_t

    # --- driver API -----------------------------------------------------------------------

    def initiate(self, now: float) -> None:
        """Send IKE_SA_INIT: ``HDR, SAi1, KEi, Ni, N(NAT_D)*2, N(FRAG_SUP) -->``."""
        if not self._is_initiator or self._state is not IkeSaState.INITIAL:
            raise RuntimeError("initiate() is for a fresh initiator")
        self._ni = self._rng(defaults.NONCE_LEN)
        group = proposal_groups(self._ike_offer)[0]
        request = self._build_ike_sa_init_request(group)
        message_id = self._requests.allocate()
        self._requests.sent(message_id, ExchangeType.IKE_SA_INIT, request, now)
        self._send(request)
        self._state = IkeSaState.SA_INIT_SENT

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Process one IKE datagram; every protocol error is handled here (RFC 7296 2.21)."""
        try:
            header = peek_header(data)
        except IkeError:
            self.drops["malformed header"] += 1
            return
        self._answering = None
        self._accepted = False
        try:
            if header.response:
                self._receive_response(header, data, now)
            else:
                self._receive_request(header, data, addr, now)
        except IkeError as error:
            self._on_error(error, header, now)

    def handle_timer(self, now: float) -> None:
        """Retransmit the outstanding request, or give up (RFC 7296 2.1, 2.4)."""
        if self._state is IkeSaState.CLOSED:
            return
        outcome = self._requests.expire(now)
        if outcome is Timeout.RETRANSMIT:
            assert self._requests.outstanding is not None
            self._send(self._requests.outstanding.datagram)
        elif outcome is Timeout.GIVE_UP:
            self._fail("peer unreachable", None)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """The datagrams queued since the last call, each with its destination."""
        datagrams, self._datagrams = self._datagrams, []
        return datagrams

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must be called next, or None."""
        if self._state is IkeSaState.CLOSED:
            return None
        return self._requests.deadline()

    def next_event(self) -> IkeEvent | None:
        """The oldest undelivered event, or None."""
        return self._events.popleft() if self._events else None

    # --- dispatch -------------------------------------------------------------------------

    def _receive_request(self, header: IkeHeader, data: bytes, addr: Address, now: float) -> None:
        self._request_addr = addr
        self._request_data = data
        if self._responses.is_retransmission(header.message_id, data):
            # RFC 7296 2.1: answer a retransmitted request from the cache, unprocessed.
            self.drops["retransmitted request"] += 1
            for datagram in self._responses.cached():
                self._datagrams.append((datagram, addr))
            return
        if self._is_initiator or self._state is IkeSaState.CLOSED:
            self.drops["unexpected request"] += 1  # INFORMATIONAL etc.: not implemented yet
            return
        if not self._responses.is_next(header.message_id):
            self.drops["message id outside the window"] += 1  # RFC 7296 2.3
            return
        if self._state is IkeSaState.INITIAL and header.exchange_type == ExchangeType.IKE_SA_INIT:
            self._process_ike_sa_init_request(header, data, addr)
        elif (
            self._state is IkeSaState.SA_INIT_DONE
            and header.exchange_type == ExchangeType.IKE_AUTH
            and (header.spi_i, header.spi_r) == (self._spi_i, self._spi_r)
        ):
            self._process_ike_auth_request(header, data, addr)
        else:
            self.drops["unexpected exchange"] += 1

    def _receive_response(self, header: IkeHeader, data: bytes, now: float) -> None:
        if (
            not self._is_initiator
            or header.spi_i != self._spi_i
            or not self._requests.matches(header.message_id)
        ):
            self.drops["unexpected response"] += 1
            return
        if self._state is IkeSaState.SA_INIT_SENT:
            self._process_ike_sa_init_response(header, data, now)
        elif self._state is IkeSaState.AUTH_SENT and header.spi_r == self._spi_r:
            self._process_ike_auth_response(data)
        else:
            self.drops["unexpected response"] += 1

    def _on_error(self, error: IkeError, header: IkeHeader, now: float) -> None:
        """The one place protocol errors become drops, Notify answers or failures."""
        if self._answering is not None:
            # We are the responder and the request was genuine enough to answer.
            if error.notify is not None:
                self._send_error_response(self._answering, error.notify, error.notify_data)
            if error.notify is not NotifyType.INVALID_KE_PAYLOAD:  # RFC 7296 1.2: stateless
                self._fail(str(error), error.notify)
        elif self._accepted and header.response:
            self._fail(str(error), error.notify)
        else:
            # RFC 7296 2.21: unauthenticated junk is dropped, never answered.
            self.drops[type(error).__name__] += 1

    # --- IKE_SA_INIT ----------------------------------------------------------------------

    def _build_ike_sa_init_request(self, group: int) -> bytes:
        self._dh = key_exchange.KeyExchange.generate(KeyExchangeMethod(group), self._rng)
        header = IkeHeader(self._spi_i, _ZERO_SPI, ExchangeType.IKE_SA_INIT, 0, True, False)
        payloads: list[Payload] = [
            SecurityAssociation(self._ike_offer),
            KeyExchange(group, self._dh.public_value),
            Nonce(self._ni),
            *self._build_nat_detection(_ZERO_SPI),
            Notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED),  # RFC 7383 2.3
        ]
        self._real_message_1 = encode_message(IkeMessage(header, tuple(payloads)))
        return self._real_message_1

    def _process_ike_sa_init_request(self, header: IkeHeader, data: bytes, addr: Address) -> None:
        """``HDR, SAi1, KEi, Ni -->``: choose, then ``<-- HDR, SAr1, KEr, Nr``."""
        message = decode_message(data)
        self._answering = header  # RFC 7296 2.21.1: IKE_SA_INIT errors are answered
        sa = message.get(SecurityAssociation)
        ke = message.get(KeyExchange)
        nonce = message.get(Nonce)
        if sa is None or ke is None or nonce is None or header.spi_r != _ZERO_SPI:
            raise RemoteProtocolError("IKE_SA_INIT without SA, KE or Ni", NotifyType.INVALID_SYNTAX)
        chosen = select_proposal(sa, self._ike_offer, prefer_group=ke.group)
        ike = ike_algorithms(chosen)
        if ike.group != ke.group:
            # RFC 7296 1.2, 3.10.1: tell the initiator which group we want.
            raise LocalProtocolError(
                f"KEi is group {ke.group}, we chose {ike.group.name}",
                NotifyType.INVALID_KE_PAYLOAD,
                _GROUP.pack(ike.group),
            )
        self._spi_i = header.spi_i
        self._remote_addr = addr
        self._ni = nonce.data
        self._nr = self._rng(defaults.NONCE_LEN)
        dh = key_exchange.KeyExchange.generate(ike.group, self._rng)
        g_ir = dh.shared_secret(ke.data)
        self._nat_t_pending = self._process_nat_detection(message, addr)
        self._derive_ike_keys(ike, g_ir)
        response_header = IkeHeader(
            self._spi_i, self._spi_r, ExchangeType.IKE_SA_INIT, 0, False, True
        )
        payloads: list[Payload] = [
            SecurityAssociation((chosen,)),
            KeyExchange(ike.group, dh.public_value),
            Nonce(self._nr),
            *self._build_nat_detection(self._spi_r),
            Notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED),  # RFC 7383 2.3
        ]
        self._real_message_1 = data
        self._real_message_2 = encode_message(IkeMessage(response_header, tuple(payloads)))
        self._respond(data, self._real_message_2)
        self._state = IkeSaState.SA_INIT_DONE

    def _process_ike_sa_init_response(self, header: IkeHeader, data: bytes, now: float) -> None:
        """``<-- HDR, SAr1, KEr, Nr`` (or an error), then ``HDR, SK {IDi, AUTH, ...} -->``."""
        message = decode_message(data)
        self._accepted = True
        invalid_ke = message.notify(NotifyType.INVALID_KE_PAYLOAD)
        if invalid_ke is not None:
            self._process_invalid_ke(invalid_ke, now)
            return
        for notify in message.get_all(Notify):
            if notify.is_error:
                raise RemoteProtocolError(
                    f"responder refused IKE_SA_INIT: {_notify_name(notify.notify_type)}",
                    _as_notify(notify.notify_type),
                )
        sa = message.get(SecurityAssociation)
        ke = message.get(KeyExchange)
        nonce = message.get(Nonce)
        if sa is None or ke is None or nonce is None or header.spi_r == _ZERO_SPI:
            raise RemoteProtocolError("IKE_SA_INIT response without SA, KE or Nr")
        ike = ike_algorithms(validate_chosen(sa, self._ike_offer))
        assert self._dh is not None
        if ke.group != self._dh.group or ike.group != self._dh.group:
            raise RemoteProtocolError("responder's KE group is not the one we sent")
        self._spi_r = header.spi_r
        self._nr = nonce.data
        self._real_message_2 = data
        self._derive_ike_keys(ike, self._dh.shared_secret(ke.data))
        self._requests.answered()
        if self._process_nat_detection(message, self._remote_addr):
            # RFC 7296 2.23: after IKE_SA_INIT, move to port 4500 when a NAT is found.
            self._nat_t = True
            self._remote_addr = (self._remote_addr[0], defaults.NAT_T_PORT)
            self._local_addr = (self._local_addr[0], defaults.NAT_T_PORT)
        message_id = self._requests.allocate()
        request = self._build_ike_auth_request(message_id)
        self._requests.sent(message_id, ExchangeType.IKE_AUTH, request, now)
        self._send(request)
        self._state = IkeSaState.AUTH_SENT

    def _process_invalid_ke(self, notify: Notify, now: float) -> None:
        """``<-- HDR(A,0), N(INVALID_KE_PAYLOAD)``: retry once with the group asked for."""
        wanted = _GROUP.unpack(notify.data)[0] if len(notify.data) == 2 else None
        assert self._dh is not None
        if (
            self._ke_retried
            or wanted is None
            or wanted == self._dh.group
            or wanted not in proposal_groups(self._ike_offer)
        ):
            raise RemoteProtocolError(
                f"responder wants KE group {wanted}, which we cannot offer",
                NotifyType.INVALID_KE_PAYLOAD,
            )
        self._ke_retried = True
        # RFC 7296 1.2: the same IKE_SA_INIT again (message ID 0), with the right KEi.
        request = self._build_ike_sa_init_request(wanted)
        self._requests.resend(request, now)
        self._send(request)

    def _derive_ike_keys(self, ike: IkeAlgorithms, g_ir: bytes) -> None:
        """SKEYSEED and SK_* (RFC 7296 2.14); SKEYSEED itself is dropped at once."""
        self._ike = ike
        _skeyseed, self._keys = derive_ike_sa_keys(
            ike.prf,
            self._ni,
            self._nr,
            g_ir,
            self._spi_i,
            self._spi_r,
            encr_key_len=ike.suite.sk_e_len,
            integ_key_len=ike.suite.sk_a_len,
        )
        self._protection = SkProtection(
            ike.suite, self._keys, is_initiator=self._is_initiator, rng=self._rng
        )
        self._dh = None  # the ephemeral private value is done with (RFC 7296 2.12)

    # --- IKE_AUTH -------------------------------------------------------------------------

    def _build_ike_auth_request(self, message_id: int) -> bytes:
        """``HDR, SK {IDi, [IDr,] AUTH, CP(CFG_REQUEST), SAi2, TSi, TSr} -->``."""
        local_id = self._config.local_id
        payloads: list[Payload] = [IdInitiator(local_id.id_type, local_id.data)]
        if self._config.remote_id is not None:
            remote_id = self._config.remote_id
            payloads.append(IdResponder(remote_id.id_type, remote_id.data))
        payloads.append(
            self._build_auth(self._real_message_1, self._nr, local_id, self._config.psk)
        )
        if self._config.request_address:
            payloads.append(build_cp_request(ipv4=True, dns=True))
        self._child_inbound_spi = self._allocate_spi()
        offer = esp_proposals(self._config.esp_proposals, _SPI.pack(self._child_inbound_spi))
        payloads += [
            SecurityAssociation(offer),
            TsInitiator((_ANY_IPV4,)),
            TsResponder((_ANY_IPV4,)),
        ]
        header = IkeHeader(self._spi_i, self._spi_r, ExchangeType.IKE_AUTH, message_id, True, False)
        return self._encode_protected(header, payloads)

    def _build_auth(
        self, real_message: bytes, peer_nonce: bytes, identity: Identity, psk: bytes
    ) -> Authentication:
        """AUTH = prf(prf(PSK, "Key Pad for IKEv2"), <SignedOctets>), RFC 7296 2.15."""
        assert self._ike is not None
        assert self._keys is not None
        sk_p = self._keys.sk_pi if self._is_initiator else self._keys.sk_pr
        octets = signed_octets(
            real_message,
            peer_nonce,
            self._ike.prf,
            sk_p,
            id_payload_body(identity.id_type, identity.data),
        )
        return Authentication(
            AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE, psk_auth(self._ike.prf, psk, octets)
        )

    def _verify_auth(self, auth: Authentication, id_payload: IdPayload, psk: bytes | None) -> bool:
        """Check the peer's AUTH over its first message, our nonce and its ID (RFC 7296 2.15)."""
        assert self._ike is not None
        assert self._keys is not None
        if psk is None or auth.method != AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE:
            return False
        if self._is_initiator:
            real_message, nonce, sk_p = self._real_message_2, self._ni, self._keys.sk_pr
        else:
            real_message, nonce, sk_p = self._real_message_1, self._nr, self._keys.sk_pi
        octets = signed_octets(
            real_message,
            nonce,
            self._ike.prf,
            sk_p,
            id_payload_body(id_payload.id_type, id_payload.data),
        )
        return verify_psk_auth(self._ike.prf, psk, octets, auth.data)

    def _process_ike_auth_request(self, header: IkeHeader, data: bytes, addr: Address) -> None:
        """``HDR, SK {IDi, AUTH, CP, SAi2, TSi, TSr} -->``: answer IDr, AUTH and the child."""
        payloads = self._open_protected(data)
        self._answering = header  # authenticated by the SK ICV: errors get a Notify
        if self._nat_t_pending:
            self._nat_t = True  # the peer moved to 4500 (RFC 7296 2.23); follow it
        self._remote_addr = addr  # RFC 7296 2.11: answer where the request came from
        idi = _first(payloads, IdInitiator)
        auth = _first(payloads, Authentication)
        if idi is None or auth is None:
            raise RemoteProtocolError("IKE_AUTH without IDi or AUTH", NotifyType.INVALID_SYNTAX)
        identity = _identity(idi)
        idr = _first(payloads, IdResponder)
        local_id = self._config.local_id
        assert self._policy is not None
        if (
            identity is None
            or (idr is not None and (idr.id_type, idr.data) != (local_id.id_type, local_id.data))
            or not self._verify_auth(auth, idi, self._policy.psk_for(identity))
        ):
            # RFC 7296 2.21.2: answer AUTHENTICATION_FAILED and close.
            raise LocalProtocolError(
                f"peer {identity} failed authentication", NotifyType.AUTHENTICATION_FAILED
            )
        psk = self._policy.psk_for(identity)
        assert psk is not None
        self._remote_id = identity
        response: list[Payload] = [
            IdResponder(local_id.id_type, local_id.data),
            self._build_auth(self._real_message_2, self._ni, local_id, psk),
        ]
        self._establish_ike_sa()
        try:
            response += self._negotiate_child_responder(payloads, identity)
        except LocalProtocolError as refusal:
            # RFC 7296 1.2 / 2.21.3: the IKE SA stands, only the Child SA fails.
            response.append(Notify(refusal.notify or NotifyType.NO_PROPOSAL_CHOSEN))
            self._events.append(ChildSaFailed(str(refusal), refusal.notify))
        response_header = IkeHeader(
            self._spi_i, self._spi_r, ExchangeType.IKE_AUTH, header.message_id, False, True
        )
        self._respond(data, self._encode_protected(response_header, response))

    def _negotiate_child_responder(
        self, payloads: list[Payload], identity: Identity
    ) -> list[Payload]:
        """``SAr2, TSi, TSr`` and ``CP(CFG_REPLY)`` for the first Child SA, or a refusal."""
        assert self._policy is not None
        assert self._ike is not None
        assert self._keys is not None
        sa = _first(payloads, SecurityAssociation)
        tsi = _first(payloads, TsInitiator)
        tsr = _first(payloads, TsResponder)
        if sa is None or tsi is None or tsr is None:
            raise LocalProtocolError("IKE_AUTH without SAi2, TSi or TSr", NotifyType.INVALID_SYNTAX)
        chosen = select_proposal(sa, esp_proposals(self._config.esp_proposals))
        esp = esp_algorithms(chosen)
        cp = _first(payloads, ConfigurationPayload)
        if cp is None or cp.cfg_type != ConfigType.CFG_REQUEST:
            # RFC 7296 3.10.1: a road warrior must ask for its address.
            raise LocalProtocolError("no CFG_REQUEST", NotifyType.FAILED_CP_REQUIRED)
        subnets = tuple(self._policy.subnets_for(identity))
        ts_r = narrow(tsr.selectors, selectors_for_networks(subnets))
        if not ts_r:
            raise LocalProtocolError("TSr outside the peer's subnets", NotifyType.TS_UNACCEPTABLE)
        lease = None
        if ConfigurationAttributeType.INTERNAL_IP4_ADDRESS in requested(cp):
            lease = self._policy.lease_address(identity)
        if lease is None:
            # RFC 7296 3.15.4: no address to give.
            raise LocalProtocolError("no address to lease", NotifyType.INTERNAL_ADDRESS_FAILURE)
        ts_i = narrow(tsi.selectors, selectors_for_networks([ipaddress.IPv4Network(lease)]))
        if not ts_i:
            # RFC 7296 2.9: TSi must hold the leased address.
            raise LocalProtocolError("TSi excludes the leased address", NotifyType.TS_UNACCEPTABLE)
        if len(chosen.spi) != 4:
            raise LocalProtocolError(
                "ESP proposal without a 4-octet SPI", NotifyType.INVALID_SYNTAX
            )
        inbound_spi = self._allocate_spi()
        # RFC 7296 2.17: KEYMAT = prf+(SK_d, Ni | Nr); initiator-to-responder keys first.
        keymat_i, keymat_r = child_sa_keymat(
            self._ike.prf, self._keys.sk_d, self._ni, self._nr, esp.suite
        )
        reply = build_cp_reply(
            AssignedConfig(
                addresses_v4=(lease,),
                dns_servers=tuple(self._policy.dns_servers()),
                subnets=subnets,
            )
        )
        self._events.append(
            _child_established(
                esp, inbound_spi, _SPI.unpack(chosen.spi)[0], keymat_i, keymat_r, ts_r, ts_i
            )
        )
        answer = replace(chosen, spi=_SPI.pack(inbound_spi))
        return [
            reply,
            SecurityAssociation((answer,)),
            TsInitiator(tuple(ts_i)),
            TsResponder(tuple(ts_r)),
        ]

    def _process_ike_auth_response(self, data: bytes) -> None:
        """``<-- HDR, SK {IDr, AUTH, CP(CFG_REPLY), SAr2, TSi, TSr}`` (or an error Notify)."""
        payloads = self._open_protected(data)
        self._accepted = True
        self._requests.answered()
        idr = _first(payloads, IdResponder)
        auth = _first(payloads, Authentication)
        notifies = [payload for payload in payloads if isinstance(payload, Notify)]
        if idr is None or auth is None:
            error = next((notify for notify in notifies if notify.is_error), None)
            notify = None if error is None else _as_notify(error.notify_type)
            name = "no IDr or AUTH" if error is None else _notify_name(error.notify_type)
            raise RemoteProtocolError(f"responder refused IKE_AUTH: {name}", notify)
        remote_id = self._config.remote_id
        if (
            remote_id is not None and (idr.id_type, idr.data) != (remote_id.id_type, remote_id.data)
        ) or (not self._verify_auth(auth, idr, self._config.psk)):
            # RFC 7296 2.21.2 would have us tell the responder in an INFORMATIONAL.
            raise LocalProtocolError(
                "responder failed authentication", NotifyType.AUTHENTICATION_FAILED
            )
        self._remote_id = _identity(idr)
        self._establish_ike_sa()
        try:
            self._process_child_response(payloads, notifies)
        except IkeError as refusal:
            self._events.append(ChildSaFailed(str(refusal), refusal.notify))

    def _process_child_response(self, payloads: list[Payload], notifies: list[Notify]) -> None:
        assert self._ike is not None
        assert self._keys is not None
        for notify in notifies:
            if notify.is_error:
                raise RemoteProtocolError(
                    f"responder refused the Child SA: {_notify_name(notify.notify_type)}",
                    _as_notify(notify.notify_type),
                )
        sa = _first(payloads, SecurityAssociation)
        tsi = _first(payloads, TsInitiator)
        tsr = _first(payloads, TsResponder)
        if sa is None or tsi is None or tsr is None:
            raise RemoteProtocolError("IKE_AUTH response without SAr2, TSi or TSr")
        offer = esp_proposals(self._config.esp_proposals, _SPI.pack(self._child_inbound_spi))
        chosen = validate_chosen(sa, offer)
        esp = esp_algorithms(chosen)
        # RFC 7296 2.9: the responder may narrow, never widen.
        if not is_subset(tsi.selectors, (_ANY_IPV4,)) or not is_subset(tsr.selectors, (_ANY_IPV4,)):
            raise RemoteProtocolError(
                "responder widened the traffic selectors", NotifyType.TS_UNACCEPTABLE
            )
        ts_i = tuple(ts for ts in tsi.selectors if isinstance(ts, TrafficSelector))
        ts_r = tuple(ts for ts in tsr.selectors if isinstance(ts, TrafficSelector))
        if len(chosen.spi) != 4 or not ts_i or not ts_r:
            raise RemoteProtocolError("unusable Child SA in the IKE_AUTH response")
        cp = _first(payloads, ConfigurationPayload)
        if self._config.request_address:
            if cp is None:
                raise RemoteProtocolError("no CFG_REPLY", NotifyType.FAILED_CP_REQUIRED)
            assigned = parse_cp_reply(cp)
            if not assigned.addresses_v4:
                raise RemoteProtocolError(
                    "CFG_REPLY without an address", NotifyType.INTERNAL_ADDRESS_FAILURE
                )
            self._events.append(
                AddressAssigned(
                    assigned.addresses_v4[0],
                    tuple(
                        dns
                        for dns in assigned.dns_servers
                        if isinstance(dns, ipaddress.IPv4Address)
                    ),
                    tuple(
                        net for net in assigned.subnets if isinstance(net, ipaddress.IPv4Network)
                    ),
                )
            )
        keymat_i, keymat_r = child_sa_keymat(
            self._ike.prf, self._keys.sk_d, self._ni, self._nr, esp.suite
        )
        self._events.append(
            _child_established(
                esp,
                self._child_inbound_spi,
                _SPI.unpack(chosen.spi)[0],
                keymat_r,
                keymat_i,
                ts_i,
                ts_r,
            )
        )

    def _establish_ike_sa(self) -> None:
        assert self._ike is not None
        assert self._remote_id is not None
        self._state = IkeSaState.ESTABLISHED
        self._events.append(
            IkeSaEstablished(
                self._spi_i,
                self._spi_r,
                self._ike.suite.name,
                self._ike.prf.name,
                self._ike.group.name,
                self._config.local_id,
                self._remote_id,
            )
        )

    # --- protection and sending -----------------------------------------------------------

    def _encode_protected(self, header: IkeHeader, payloads: Sequence[Payload]) -> bytes:
        if self._protection is None:
            raise RuntimeError("no IKE SA keys yet")
        return self._protection.seal(header, payloads)

    def _open_protected(self, data: bytes) -> list[Payload]:
        if self._protection is None:
            raise RuntimeError("no IKE SA keys yet")
        return self._protection.open(data)

    def _build_nat_detection(self, spi_r: bytes) -> list[Notify]:
        """N(NAT_DETECTION_SOURCE_IP), N(NAT_DETECTION_DESTINATION_IP), RFC 7296 2.23."""
        fake = self._rng(20) if self._config.force_encapsulation else None
        return build_nat_detection(self._spi_i, spi_r, self._local_addr, self._remote_addr, fake)

    def _process_nat_detection(self, message: IkeMessage, source: Address) -> bool:
        """Whether to move to port 4500: a NAT on either side, or forced (RFC 7296 2.23)."""
        if self._config.force_encapsulation:
            return True
        return nat_detected(message, self._spi_i, source, self._local_addr)

    def _send(self, datagram: bytes) -> None:
        self._datagrams.append((datagram, self._remote_addr))

    def _respond(self, request: bytes, response: bytes) -> None:
        """Send ``response`` where ``request`` came from (RFC 7296 2.11) and cache it."""
        self._responses.answered(request, (response,))
        self._datagrams.append((response, self._request_addr))

    def _send_error_response(self, request: IkeHeader, notify: NotifyType, data: bytes) -> None:
        """A Notify-only response to ``request``: plain in IKE_SA_INIT, else protected."""
        if request.exchange_type == ExchangeType.IKE_SA_INIT:
            # RFC 7296 1.2: HDR(A,0), N(...); not cached, the responder keeps no state.
            header = IkeHeader(request.spi_i, _ZERO_SPI, ExchangeType.IKE_SA_INIT, 0, False, True)
            message = IkeMessage(header, (Notify(notify, data),))
            self._datagrams.append((encode_message(message), self._request_addr))
            return
        header = replace(request, initiator=self._is_initiator, response=True)
        self._respond(self._request_data, self._encode_protected(header, [Notify(notify, data)]))

    def _fail(self, reason: str, notify: NotifyType | None) -> None:
        if self._state is IkeSaState.CLOSED:
            return
        self._state = IkeSaState.CLOSED
        self._requests.outstanding = None
        self._events.append(IkeSaFailed(reason, notify))

    def _new_ike_spi(self) -> bytes:
        while True:
            spi = self._rng(8)
            if spi != _ZERO_SPI:  # RFC 7296 3.1: an SPI is never zero
                return spi


# --- helpers ------------------------------------------------------------------------------


P = TypeVar("P")


def _first(payloads: Sequence[Payload], kind: type[P]) -> P | None:
    """The first payload of class ``kind`` in a decrypted chain, or None."""
    for payload in payloads:
        if isinstance(payload, kind):
            return payload
    return None


def _identity(payload: IdPayload) -> Identity | None:
    """The peer's identity, or None for an ID type we do not know."""
    try:
        return Identity(IdType(payload.id_type), payload.data)
    except ValueError:
        return None


def _as_notify(notify_type: int) -> NotifyType | None:
    try:
        return NotifyType(notify_type)
    except ValueError:
        return None


def _notify_name(notify_type: int) -> str:
    notify = _as_notify(notify_type)
    return str(notify_type) if notify is None else notify.name


def _child_established(
    esp: EspAlgorithms,
    inbound_spi: int,
    outbound_spi: int,
    inbound_keymat: bytes,
    outbound_keymat: bytes,
    local_ts: Sequence[TrafficSelector],
    remote_ts: Sequence[TrafficSelector],
) -> ChildSaEstablished:
    return ChildSaEstablished(
        inbound_spi=inbound_spi,
        outbound_spi=outbound_spi,
        esp_suite=esp.suite.name,
        esn=esp.esn,
        inbound_keymat=inbound_keymat,
        outbound_keymat=outbound_keymat,
        local_ts=tuple(local_ts),
        remote_ts=tuple(remote_ts),
    )
