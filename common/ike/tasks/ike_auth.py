"""IKE_AUTH: PSK authentication, the first Child SA, CP and TS (RFC 7296 1.2, 2.9, 2.15).

::

    HDR, SK {IDi, [IDr,] AUTH, CP(CFG_REQUEST), SAi2, TSi, TSr}  -->
                 <--  HDR, SK {IDr, AUTH, CP(CFG_REPLY), SAr2, TSi, TSr}
                 <--  HDR, SK {N(AUTHENTICATION_FAILED)}
                 <--  HDR, SK {IDr, AUTH, N(NO_PROPOSAL_CHOSEN | TS_UNACCEPTABLE |
                                          INTERNAL_ADDRESS_FAILURE | FAILED_CP_REQUIRED)}

strongSwan's ``ike_auth`` with ``ike_config`` and ``child_create`` folded in:
one task while only the first Child SA exists. The driver opens ``SK {}`` and
passes the payloads; an authentication failure raises (the driver answers or
fails once), a Child SA refusal does not (RFC 7296 2.21.3: the IKE SA stands).
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Final

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
    NotifyType,
)
from common.ike.errors import IkeError, LocalProtocolError, RemoteProtocolError
from common.ike.events import AddressAssigned, ChildSaFailed, IkeSaEstablished
from common.ike.keys import child_sa_keymat
from common.ike.message import Payload
from common.ike.payloads import (
    Authentication,
    ConfigurationPayload,
    IdInitiator,
    IdPayload,
    IdResponder,
    Notify,
    SecurityAssociation,
    TrafficSelector,
    TsInitiator,
    TsResponder,
)
from common.ike.policy import Identity
from common.ike.proposals import esp_algorithms, esp_proposals, select_proposal, validate_chosen
from common.ike.selectors import is_subset, narrow, selectors_for_networks
from common.ike.tasks.base import (
    ANY_IPV4,
    ESP_SPI,
    IkeSa,
    as_notify,
    child_established,
    first,
    identity,
    notify_name,
)


class IkeAuth:
    """One IKE_AUTH exchange, either role."""

    exchange_type: Final = ExchangeType.IKE_AUTH

    def __init__(self, sa: IkeSa) -> None:
        self._sa = sa
        self._child_inbound_spi = 0
        self._response: list[Payload] = []

    # --- initiator ------------------------------------------------------------------------

    def build_i(self, message_id: int) -> bytes:
        """``HDR, SK {IDi, [IDr,] AUTH, CP(CFG_REQUEST), SAi2, TSi, TSr} -->``."""
        sa, config = self._sa, self._sa.config
        payloads: list[Payload] = [IdInitiator(config.local_id.id_type, config.local_id.data)]
        if config.remote_id is not None:
            payloads.append(IdResponder(config.remote_id.id_type, config.remote_id.data))
        payloads.append(self._build_auth(sa.real_message_1, sa.nr, config.local_id, config.psk))
        if config.request_address:
            payloads.append(build_cp_request(ipv4=True, dns=True))
        self._child_inbound_spi = sa.allocate_spi()
        offer = esp_proposals(config.esp_proposals, ESP_SPI.pack(self._child_inbound_spi))
        payloads += [
            SecurityAssociation(offer),
            TsInitiator((ANY_IPV4,)),
            TsResponder((ANY_IPV4,)),
        ]
        return sa.seal(sa.header(ExchangeType.IKE_AUTH, message_id, response=False), payloads)

    def process_i(self, payloads: list[Payload]) -> None:
        """``<-- HDR, SK {IDr, AUTH, CP(CFG_REPLY), SAr2, TSi, TSr}`` (or an error Notify).

        Raises:
            RemoteProtocolError: the responder refused (its Notify) or sent no IDr/AUTH.
            LocalProtocolError: AUTHENTICATION_FAILED, the responder's AUTH is wrong
                (the driver tells it in an INFORMATIONAL, RFC 7296 2.21.2).
        """
        sa, config = self._sa, self._sa.config
        idr = first(payloads, IdResponder)
        auth = first(payloads, Authentication)
        notifies = [payload for payload in payloads if isinstance(payload, Notify)]
        if idr is None or auth is None:
            error = next((notify for notify in notifies if notify.is_error), None)
            notify = None if error is None else as_notify(error.notify_type)
            name = "no IDr or AUTH" if error is None else notify_name(error.notify_type)
            raise RemoteProtocolError(f"responder refused IKE_AUTH: {name}", notify)
        remote_id = config.remote_id
        if (
            remote_id is not None and (idr.id_type, idr.data) != (remote_id.id_type, remote_id.data)
        ) or (not self._verify_auth(auth, idr, config.psk)):
            raise LocalProtocolError(
                "responder failed authentication", NotifyType.AUTHENTICATION_FAILED
            )
        sa.remote_id = identity(idr)
        self._established()
        try:
            self._process_child_response(payloads, notifies)
        except IkeError as refusal:
            sa.events.append(ChildSaFailed(str(refusal), refusal.notify))

    def _process_child_response(self, payloads: list[Payload], notifies: list[Notify]) -> None:
        sa, config = self._sa, self._sa.config
        assert sa.ike is not None
        assert sa.keys is not None
        for notify in notifies:
            if notify.is_error:
                raise RemoteProtocolError(
                    f"responder refused the Child SA: {notify_name(notify.notify_type)}",
                    as_notify(notify.notify_type),
                )
        sa_payload = first(payloads, SecurityAssociation)
        tsi = first(payloads, TsInitiator)
        tsr = first(payloads, TsResponder)
        if sa_payload is None or tsi is None or tsr is None:
            raise RemoteProtocolError("IKE_AUTH response without SAr2, TSi or TSr")
        offer = esp_proposals(config.esp_proposals, ESP_SPI.pack(self._child_inbound_spi))
        chosen = validate_chosen(sa_payload, offer)
        esp = esp_algorithms(chosen)
        # RFC 7296 2.9: the responder may narrow, never widen.
        if not is_subset(tsi.selectors, (ANY_IPV4,)) or not is_subset(tsr.selectors, (ANY_IPV4,)):
            raise RemoteProtocolError(
                "responder widened the traffic selectors", NotifyType.TS_UNACCEPTABLE
            )
        ts_i = tuple(ts for ts in tsi.selectors if isinstance(ts, TrafficSelector))
        ts_r = tuple(ts for ts in tsr.selectors if isinstance(ts, TrafficSelector))
        if len(chosen.spi) != 4 or not ts_i or not ts_r:
            raise RemoteProtocolError("unusable Child SA in the IKE_AUTH response")
        cp = first(payloads, ConfigurationPayload)
        if config.request_address:
            if cp is None:
                raise RemoteProtocolError("no CFG_REPLY", NotifyType.FAILED_CP_REQUIRED)
            assigned = parse_cp_reply(cp)
            if not assigned.addresses_v4:
                raise RemoteProtocolError(
                    "CFG_REPLY without an address", NotifyType.INTERNAL_ADDRESS_FAILURE
                )
            sa.events.append(
                AddressAssigned(
                    assigned.addresses_v4[0],
                    tuple(d for d in assigned.dns_servers if isinstance(d, ipaddress.IPv4Address)),
                    tuple(n for n in assigned.subnets if isinstance(n, ipaddress.IPv4Network)),
                )
            )
        keymat_i, keymat_r = child_sa_keymat(sa.ike.prf, sa.keys.sk_d, sa.ni, sa.nr, esp.suite)
        outbound_spi = ESP_SPI.unpack(chosen.spi)[0]
        sa.add_child(
            child_established(
                esp, self._child_inbound_spi, outbound_spi, keymat_r, keymat_i, ts_i, ts_r
            )
        )

    # --- responder ------------------------------------------------------------------------

    def process_r(self, payloads: list[Payload]) -> None:
        """``HDR, SK {IDi, AUTH, CP, SAi2, TSi, TSr} -->``: authenticate, then the child.

        Raises:
            RemoteProtocolError: no IDi or AUTH (INVALID_SYNTAX).
            LocalProtocolError: AUTHENTICATION_FAILED (RFC 7296 2.21.2: answer and close).
        """
        sa, local_id = self._sa, self._sa.config.local_id
        assert sa.policy is not None
        idi = first(payloads, IdInitiator)
        auth = first(payloads, Authentication)
        if idi is None or auth is None:
            raise RemoteProtocolError("IKE_AUTH without IDi or AUTH", NotifyType.INVALID_SYNTAX)
        peer = identity(idi)
        idr = first(payloads, IdResponder)
        if (
            peer is None
            or (idr is not None and (idr.id_type, idr.data) != (local_id.id_type, local_id.data))
            or not self._verify_auth(auth, idi, sa.policy.psk_for(peer))
        ):
            # RFC 7296 2.21.2: answer AUTHENTICATION_FAILED and close.
            raise LocalProtocolError(
                f"peer {peer} failed authentication", NotifyType.AUTHENTICATION_FAILED
            )
        psk = sa.policy.psk_for(peer)
        assert psk is not None
        sa.remote_id = peer
        self._response = [
            IdResponder(local_id.id_type, local_id.data),
            self._build_auth(sa.real_message_2, sa.ni, local_id, psk),
        ]
        self._established()
        try:
            self._response += self._negotiate_child(payloads, peer)
        except LocalProtocolError as refusal:
            # RFC 7296 1.2 / 2.21.3: the IKE SA stands, only the Child SA fails.
            self._response.append(Notify(refusal.notify or NotifyType.NO_PROPOSAL_CHOSEN))
            sa.events.append(ChildSaFailed(str(refusal), refusal.notify))

    def build_r(self, message_id: int) -> bytes:
        """``<-- HDR, SK {IDr, AUTH, CP(CFG_REPLY), SAr2, TSi, TSr}``."""
        header = self._sa.header(ExchangeType.IKE_AUTH, message_id, response=True)
        return self._sa.seal(header, self._response)

    def _negotiate_child(self, payloads: list[Payload], peer: Identity) -> list[Payload]:
        """``SAr2, TSi, TSr`` and ``CP(CFG_REPLY)`` for the first Child SA, or a refusal."""
        sa = self._sa
        assert sa.policy is not None
        assert sa.ike is not None
        assert sa.keys is not None
        sa_payload = first(payloads, SecurityAssociation)
        tsi = first(payloads, TsInitiator)
        tsr = first(payloads, TsResponder)
        if sa_payload is None or tsi is None or tsr is None:
            raise LocalProtocolError("IKE_AUTH without SAi2, TSi or TSr", NotifyType.INVALID_SYNTAX)
        chosen = select_proposal(sa_payload, esp_proposals(sa.config.esp_proposals))
        esp = esp_algorithms(chosen)
        cp = first(payloads, ConfigurationPayload)
        if cp is None or cp.cfg_type != ConfigType.CFG_REQUEST:
            # RFC 7296 3.10.1: a road warrior must ask for its address.
            raise LocalProtocolError("no CFG_REQUEST", NotifyType.FAILED_CP_REQUIRED)
        subnets = tuple(sa.policy.subnets_for(peer))
        ts_r = narrow(tsr.selectors, selectors_for_networks(subnets))
        if not ts_r:
            raise LocalProtocolError("TSr outside the peer's subnets", NotifyType.TS_UNACCEPTABLE)
        lease = None
        if ConfigurationAttributeType.INTERNAL_IP4_ADDRESS in requested(cp):
            lease = sa.policy.lease_address(peer)
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
        inbound_spi = sa.allocate_spi()
        # RFC 7296 2.17: KEYMAT = prf+(SK_d, Ni | Nr); initiator-to-responder keys first.
        keymat_i, keymat_r = child_sa_keymat(sa.ike.prf, sa.keys.sk_d, sa.ni, sa.nr, esp.suite)
        reply = build_cp_reply(
            AssignedConfig(
                addresses_v4=(lease,),
                dns_servers=tuple(sa.policy.dns_servers()),
                subnets=subnets,
            )
        )
        outbound_spi = ESP_SPI.unpack(chosen.spi)[0]
        sa.add_child(
            child_established(esp, inbound_spi, outbound_spi, keymat_i, keymat_r, ts_r, ts_i)
        )
        answer = replace(chosen, spi=ESP_SPI.pack(inbound_spi))
        return [
            reply,
            SecurityAssociation((answer,)),
            TsInitiator(tuple(ts_i)),
            TsResponder(tuple(ts_r)),
        ]

    # --- AUTH (RFC 7296 2.15) -------------------------------------------------------------

    def _build_auth(
        self, real_message: bytes, peer_nonce: bytes, local_id: Identity, psk: bytes
    ) -> Authentication:
        """AUTH = prf(prf(PSK, "Key Pad for IKEv2"), <SignedOctets>), RFC 7296 2.15."""
        sa = self._sa
        assert sa.ike is not None
        assert sa.keys is not None
        sk_p = sa.keys.sk_pi if sa.is_initiator else sa.keys.sk_pr
        octets = signed_octets(
            real_message,
            peer_nonce,
            sa.ike.prf,
            sk_p,
            id_payload_body(local_id.id_type, local_id.data),
        )
        return Authentication(
            AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE, psk_auth(sa.ike.prf, psk, octets)
        )

    def _verify_auth(self, auth: Authentication, id_payload: IdPayload, psk: bytes | None) -> bool:
        """Check the peer's AUTH over its first message, our nonce and its ID (RFC 7296 2.15)."""
        sa = self._sa
        assert sa.ike is not None
        assert sa.keys is not None
        if psk is None or auth.method != AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE:
            return False
        if sa.is_initiator:
            real_message, nonce, sk_p = sa.real_message_2, sa.ni, sa.keys.sk_pr
        else:
            real_message, nonce, sk_p = sa.real_message_1, sa.nr, sa.keys.sk_pi
        octets = signed_octets(
            real_message,
            nonce,
            sa.ike.prf,
            sk_p,
            id_payload_body(id_payload.id_type, id_payload.data),
        )
        return verify_psk_auth(sa.ike.prf, psk, octets, auth.data)

    def _established(self) -> None:
        """Queue ``IkeSaEstablished``; the driver moves the state once we return."""
        sa = self._sa
        assert sa.ike is not None
        assert sa.remote_id is not None
        sa.events.append(
            IkeSaEstablished(
                sa.spi_i,
                sa.spi_r,
                sa.ike.suite.name,
                sa.ike.prf.name,
                sa.ike.group.name,
                sa.config.local_id,
                sa.remote_id,
            )
        )
