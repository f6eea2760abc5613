"""IKE_AUTH: PSK or certificate authentication, the first Child SA, CP and TS
(RFC 7296 1.2, 2.9, 2.15; RFC 7427 digital signatures).

::

    HDR, SK {IDi, [CERT+,] [N(INITIAL_CONTACT),] [CERTREQ,] [IDr,] AUTH, CP(CFG_REQUEST),
             SAi2, TSi, TSr}  -->
                 <--  HDR, SK {IDr, [CERT+,] AUTH, CP(CFG_REPLY), SAr2, TSi, TSr}
                 <--  HDR, SK {N(AUTHENTICATION_FAILED)}
                 <--  HDR, SK {IDr, [CERT+,] AUTH, N(NO_PROPOSAL_CHOSEN | TS_UNACCEPTABLE |
                                          INTERNAL_ADDRESS_FAILURE | FAILED_CP_REQUIRED)}

strongSwan's ``ike_auth`` with ``ike_config`` and ``child_create`` folded in:
one task while only the first Child SA exists. The driver opens ``SK {}`` and
passes the payloads; an authentication failure raises (the driver answers or
fails once), a Child SA refusal does not (RFC 7296 2.21.3: the IKE SA stands).

Each side picks its own AUTH method (RFC 7296 2.15 lets them differ): a
configuration with a private key and certificate signs (RFC 7427 method 14,
a scheme chosen against the peer's N(SIGNATURE_HASH_ALGORITHMS)) and sends
its CERTs, otherwise it uses the PSK MIC (method 2). The receiver accepts
either: a PSK MIC is checked with the PSK it knows for the peer; a signature
only after the peer's chain validates against our trust anchors at
``validation_time``, the peer's ID is named in its certificate (RFC 4945
3.1) and, on the responder, ``CertificatePolicy.authorize`` agrees. Every
failure is AUTHENTICATION_FAILED and nothing more (RFC 7296 2.21.2); the
reason is kept in the exception message for our logs only.

INITIAL_CONTACT (RFC 7296 2.4): the initiator says "I hold no other IKE SA
with you" when ``IkeConfiguration.initial_contact`` is set (a client after a
restart or a lost connection), so the responder may delete the SAs it still
keeps for that identity. Only the peer knows that, and only the responder's
owner can act on it: the core just carries the flag, sent here and reported
on ``IkeSaEstablished.initial_contact`` once the peer is authenticated (never
before, or anyone could have a user's SAs torn down).
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from common.ike.auth import (
    choose_signature_scheme,
    id_payload_body,
    psk_auth,
    signature_auth_data,
    signed_octets,
    verify_psk_auth,
    verify_signature_auth,
)
from common.ike.certs import (
    CertificateRejected,
    CertificateVerifier,
    auth_public_key,
    certificate_request,
    identity_matches,
)
from common.ike.config import (
    AssignedConfig,
    build_cp_reply,
    build_cp_request,
    parse_cp_reply,
    requested,
)
from common.ike.constants import (
    AuthMethod,
    CertificateEncoding,
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
    Certificate,
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
from common.ike.policy import CertificatePolicy, Identity, IpAddress, IpVersion
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

# ``::/0``, any protocol and port: what a dual-stack initiator proposes beside ANY_IPV4.
ANY_IPV6: Final = TrafficSelector(
    ipaddress.IPv6Address("::"), ipaddress.IPv6Address("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")
)

# INTERNAL_IP6_ADDRESS carries a prefix length (RFC 7296 3.15.1); a road warrior's
# address is a host of its own (strongSwan 5.9.8 sends 64; RFC 7296 leaves it open).
LEASED_IPV6_PREFIX_LENGTH: Final = 128

# More CERT payloads than any sane chain: refuse rather than feed them to path building.
MAX_PEER_CERTIFICATES: Final = 8


def _authentication_failed(reason: str) -> LocalProtocolError:
    """The one error every authentication failure becomes (RFC 7296 2.21.2)."""
    return LocalProtocolError(reason, NotifyType.AUTHENTICATION_FAILED)


def _der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


def _address_assigned(assigned: AssignedConfig) -> AddressAssigned:
    """The event for a CFG_REPLY: the first address of each family and the rest per family.

    Raises:
        RemoteProtocolError: INTERNAL_ADDRESS_FAILURE, the reply leased no address
            of either family.
    """
    if not assigned.addresses_v4 and not assigned.addresses_v6:
        raise RemoteProtocolError(
            "CFG_REPLY without an address", NotifyType.INTERNAL_ADDRESS_FAILURE
        )
    v6 = assigned.addresses_v6[0] if assigned.addresses_v6 else None
    return AddressAssigned(
        assigned.addresses_v4[0] if assigned.addresses_v4 else None,
        tuple(d for d in assigned.dns_servers if isinstance(d, ipaddress.IPv4Address)),
        tuple(n for n in assigned.subnets if isinstance(n, ipaddress.IPv4Network)),
        address_v6=None if v6 is None else v6.ip,
        prefix_length_v6=LEASED_IPV6_PREFIX_LENGTH if v6 is None else v6.network.prefixlen,
        dns_v6=tuple(d for d in assigned.dns_servers if isinstance(d, ipaddress.IPv6Address)),
        subnets_v6=tuple(n for n in assigned.subnets if isinstance(n, ipaddress.IPv6Network)),
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
        """``HDR, SK {IDi, [CERT+,] [N(INITIAL_CONTACT),] [CERTREQ,] [IDr,] AUTH, CP(CFG_REQUEST),
        SAi2, TSi, TSr} -->`` (RFC 7296 1.2, 2.4 for where the notify goes).

        Raises:
            LocalProtocolError: AUTHENTICATION_FAILED when we sign but the responder
                announced no hash our key can sign with (RFC 7427 section 4).
        """
        sa, config = self._sa, self._sa.config
        payloads: list[Payload] = [IdInitiator(config.local_id.id_type, config.local_id.data)]
        payloads += self._certificates()
        if config.initial_contact:
            payloads.append(Notify(NotifyType.INITIAL_CONTACT))  # about the IKE SA: no SPI
        if config.ca_certificates:
            # RFC 7296 3.7: name the CAs we trust, so a responder with several can choose.
            payloads.append(certificate_request(config.ca_certificates))
        if config.remote_id is not None:
            payloads.append(IdResponder(config.remote_id.id_type, config.remote_id.data))
        payloads.append(self._build_auth(config.psk))
        if config.request_address:
            payloads.append(build_cp_request(ipv4=True, ipv6=config.request_ipv6, dns=True))
        self._child_inbound_spi = sa.allocate_spi()
        offer = esp_proposals(config.esp_proposals, ESP_SPI.pack(self._child_inbound_spi))
        proposed = self._proposed_selectors()
        payloads += [
            SecurityAssociation(offer),
            TsInitiator(proposed),
            TsResponder(proposed),
        ]
        return sa.seal(sa.header(ExchangeType.IKE_AUTH, message_id, response=False), payloads)

    def _proposed_selectors(self) -> tuple[TrafficSelector, ...]:
        """TSi and TSr of the first Child SA: everything, in each family we use.

        The responder narrows TSi to our leased address(es) and TSr to its
        subnets (RFC 7296 2.9); ``::/0`` is only offered when we ask for an
        IPv6 address, since IPv6 traffic needs an IPv6 inner source.
        """
        if self._sa.config.request_ipv6:
            return (ANY_IPV4, ANY_IPV6)
        return (ANY_IPV4,)

    def process_i(self, payloads: list[Payload]) -> None:
        """``<-- HDR, SK {IDr, [CERT+,] AUTH, CP(CFG_REPLY), SAr2, TSi, TSr}`` (or an error Notify).

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
        peer = identity(idr)
        if peer is None or (remote_id is not None and peer != remote_id):
            raise _authentication_failed(f"responder identified as {peer}, not {remote_id}")
        self._authenticate_peer(payloads, auth, idr, peer)
        sa.remote_id = peer
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
        proposed = self._proposed_selectors()
        if not is_subset(tsi.selectors, proposed) or not is_subset(tsr.selectors, proposed):
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
            sa.events.append(_address_assigned(parse_cp_reply(cp)))
        keymat_i, keymat_r = child_sa_keymat(sa.ike.prf, sa.keys.sk_d, sa.ni, sa.nr, esp.suite)
        outbound_spi = ESP_SPI.unpack(chosen.spi)[0]
        sa.add_child(
            child_established(
                esp, self._child_inbound_spi, outbound_spi, keymat_r, keymat_i, ts_i, ts_r
            )
        )

    # --- responder ------------------------------------------------------------------------

    def process_r(self, payloads: list[Payload]) -> None:
        """``HDR, SK {IDi, [CERT+,] [CERTREQ,] [IDr,] AUTH, CP, SAi2, TSi, TSr} -->``: authenticate,
        then the child.

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
        if peer is None or (
            idr is not None and (idr.id_type, idr.data) != (local_id.id_type, local_id.data)
        ):
            # RFC 7296 2.21.2: answer AUTHENTICATION_FAILED and close.
            raise _authentication_failed(f"peer {peer} asked for another responder identity")
        self._authenticate_peer(payloads, auth, idi, peer)
        initial_contact = any(
            isinstance(payload, Notify) and payload.notify_type == NotifyType.INITIAL_CONTACT
            for payload in payloads
        )
        # Our own AUTH: a signature when we have a certificate, else the peer's PSK.
        psk = None if sa.config.signs else sa.policy.psk_for(peer)
        sa.remote_id = peer
        self._response = [
            IdResponder(local_id.id_type, local_id.data),
            *self._certificates(),
            self._build_auth(psk),
        ]
        self._established(initial_contact=initial_contact)
        try:
            self._response += self._negotiate_child(payloads, peer)
        except LocalProtocolError as refusal:
            # RFC 7296 1.2 / 2.21.3: the IKE SA stands, only the Child SA fails.
            self._response.append(Notify(refusal.notify or NotifyType.NO_PROPOSAL_CHOSEN))
            sa.events.append(ChildSaFailed(str(refusal), refusal.notify))

    def build_r(self, message_id: int) -> bytes:
        """``<-- HDR, SK {IDr, [CERT+,] AUTH, CP(CFG_REPLY), SAr2, TSi, TSr}``."""
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
        if not narrow(tsr.selectors, selectors_for_networks(subnets)):
            raise LocalProtocolError("TSr outside the peer's subnets", NotifyType.TS_UNACCEPTABLE)
        leases = self._lease_addresses(requested(cp), peer)
        if not leases:
            # RFC 7296 3.15.4: no address of any family to give.
            raise LocalProtocolError("no address to lease", NotifyType.INTERNAL_ADDRESS_FAILURE)
        host = [ipaddress.ip_network(lease) for lease in leases]
        ts_i = narrow(tsi.selectors, selectors_for_networks(host))
        if not ts_i:
            # RFC 7296 2.9: TSi must hold a leased address.
            raise LocalProtocolError("TSi excludes the leased address", NotifyType.TS_UNACCEPTABLE)
        # Only the families with an inner source: the other's TSr would carry nothing.
        families = {lease.version for lease in leases}
        subnets = tuple(subnet for subnet in subnets if subnet.version in families)
        ts_r = narrow(tsr.selectors, selectors_for_networks(subnets))
        if not ts_r:
            raise LocalProtocolError(
                "TSr outside the subnets of the leased families", NotifyType.TS_UNACCEPTABLE
            )
        if len(chosen.spi) != 4:
            raise LocalProtocolError(
                "ESP proposal without a 4-octet SPI", NotifyType.INVALID_SYNTAX
            )
        inbound_spi = sa.allocate_spi()
        # RFC 7296 2.17: KEYMAT = prf+(SK_d, Ni | Nr); initiator-to-responder keys first.
        keymat_i, keymat_r = child_sa_keymat(sa.ike.prf, sa.keys.sk_d, sa.ni, sa.nr, esp.suite)
        reply = build_cp_reply(
            AssignedConfig(
                addresses_v4=tuple(a for a in leases if isinstance(a, ipaddress.IPv4Address)),
                addresses_v6=tuple(
                    ipaddress.IPv6Interface((a, LEASED_IPV6_PREFIX_LENGTH))
                    for a in leases
                    if isinstance(a, ipaddress.IPv6Address)
                ),
                # A family we leased nothing of gets no DNS: the client could not reach it.
                dns_servers=tuple(d for d in sa.policy.dns_servers() if d.version in families),
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

    def _lease_addresses(self, asked: frozenset[int], peer: Identity) -> list[IpAddress]:
        """One inner address per family the CFG_REQUEST names, IPv4 first.

        A family the policy has no pool for (or an exhausted one) is left
        out, so a dual-stack client of a v4-only concentrator still connects
        (RFC 7296 3.15.4 fails only "if the responder cannot assign any").
        """
        assert self._sa.policy is not None
        leases: list[IpAddress] = []
        families: tuple[tuple[int, IpVersion], ...] = (
            (ConfigurationAttributeType.INTERNAL_IP4_ADDRESS, 4),
            (ConfigurationAttributeType.INTERNAL_IP6_ADDRESS, 6),
        )
        for attr_type, version in families:
            if attr_type in asked:
                lease = self._sa.policy.lease_address(peer, version)
                if lease is not None:
                    leases.append(lease)
        return leases

    # --- AUTH (RFC 7296 2.15, RFC 7427) --------------------------------------------------

    def _certificates(self) -> list[Certificate]:
        """``CERT+``: our end-entity certificate first, then the chain (RFC 7296 3.6)."""
        config = self._sa.config
        if not config.signs:
            return []
        assert config.certificate is not None
        return [
            Certificate(CertificateEncoding.X509_CERTIFICATE_SIGNATURE, _der(certificate))
            for certificate in (config.certificate, *config.certificate_chain)
        ]

    def _octets(self, id_type: int, id_data: bytes, *, initiators: bool) -> bytes:
        """InitiatorSignedOctets or ResponderSignedOctets (RFC 7296 2.15) for that ID."""
        sa = self._sa
        assert sa.ike is not None
        assert sa.keys is not None
        if initiators:
            real_message, nonce, sk_p = sa.real_message_1, sa.nr, sa.keys.sk_pi
        else:
            real_message, nonce, sk_p = sa.real_message_2, sa.ni, sa.keys.sk_pr
        body = id_payload_body(id_type, id_data)
        return signed_octets(real_message, nonce, sa.ike.prf, sk_p, body)

    def _build_auth(self, psk: bytes | None) -> Authentication:
        """Our AUTH over our first message, the peer's nonce and our ID (RFC 7296 2.15).

        With a certificate: RFC 7427 Authentication Data, the scheme chosen from
        the peer's N(SIGNATURE_HASH_ALGORITHMS). Otherwise
        AUTH = prf(prf(PSK, "Key Pad for IKEv2"), <SignedOctets>).

        Raises:
            LocalProtocolError: AUTHENTICATION_FAILED when no scheme or no PSK fits.
        """
        sa, config = self._sa, self._sa.config
        assert sa.ike is not None
        local_id = config.local_id
        octets = self._octets(local_id.id_type, local_id.data, initiators=sa.is_initiator)
        if config.signs:
            assert config.private_key is not None
            scheme = choose_signature_scheme(config.private_key, sa.peer_signature_hashes or ())
            if scheme is None:
                # RFC 7427 section 4: sign only with a hash the verifier announced.
                raise _authentication_failed(
                    f"peer announced no signature hash our key can use: {sa.peer_signature_hashes}"
                )
            return Authentication(
                AuthMethod.DIGITAL_SIGNATURE,
                signature_auth_data(scheme, config.private_key, octets),
            )
        if not psk:
            raise _authentication_failed(
                "no certificate and no pre-shared key to authenticate with"
            )
        return Authentication(
            AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE, psk_auth(sa.ike.prf, psk, octets)
        )

    def _authenticate_peer(
        self, payloads: list[Payload], auth: Authentication, id_payload: IdPayload, peer: Identity
    ) -> None:
        """Check the peer's AUTH over its first message, our nonce and its ID (RFC 7296 2.15).

        Raises:
            LocalProtocolError: AUTHENTICATION_FAILED, with the reason for our logs.
        """
        sa = self._sa
        assert sa.ike is not None
        octets = self._octets(id_payload.id_type, id_payload.data, initiators=not sa.is_initiator)
        if auth.method == AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE:
            if sa.is_initiator:
                psk: bytes | None = sa.config.psk
            else:
                assert sa.policy is not None
                psk = sa.policy.psk_for(peer)
            if not psk or not verify_psk_auth(sa.ike.prf, psk, octets, auth.data):
                raise _authentication_failed(f"peer {peer}: wrong or unknown pre-shared key")
        elif auth.method == AuthMethod.DIGITAL_SIGNATURE:
            certificate = self._verify_certificate(payloads, id_payload, peer)
            try:
                public_key = auth_public_key(certificate)
            except CertificateRejected as rejected:
                raise _authentication_failed(f"peer {peer}: {rejected}") from rejected
            if not verify_signature_auth(public_key, auth.data, octets):
                raise _authentication_failed(f"peer {peer}: AUTH signature does not verify")
            policy = sa.policy
            if not sa.is_initiator and not (
                isinstance(policy, CertificatePolicy) and policy.authorize(peer, certificate)
            ):
                raise _authentication_failed(f"peer {peer}: not authorized by policy")
        else:
            raise _authentication_failed(f"peer {peer}: unsupported AUTH method {auth.method}")

    def _verify_certificate(
        self, payloads: list[Payload], id_payload: IdPayload, peer: Identity
    ) -> x509.Certificate:
        """The peer's end-entity certificate, once its chain and identity check out.

        RFC 7296 3.6: the first CERT holds the key that signed AUTH; the others
        are intermediates for path building. RFC 4945 3.1: the ID must be
        named in the certificate.
        """
        sa = self._sa
        policy = sa.policy
        if sa.is_initiator:
            anchors = list(sa.config.ca_certificates)
        elif isinstance(policy, CertificatePolicy):
            anchors = list(policy.ca_certificates())
        else:
            anchors = []
        if not anchors:
            raise _authentication_failed(f"peer {peer} signs, but we trust no CA")
        if sa.config.validation_time is None:
            raise _authentication_failed("no validation_time configured for peer certificates")
        certs = [payload for payload in payloads if isinstance(payload, Certificate)]
        if not certs or certs[0].encoding != CertificateEncoding.X509_CERTIFICATE_SIGNATURE:
            raise _authentication_failed(f"peer {peer} signs without an X.509 CERT")
        if len(certs) > MAX_PEER_CERTIFICATES:
            raise _authentication_failed(f"peer {peer} sent {len(certs)} CERT payloads")
        intermediates = [
            cert.data
            for cert in certs[1:]
            if cert.encoding == CertificateEncoding.X509_CERTIFICATE_SIGNATURE
        ]
        try:
            certificate = CertificateVerifier(anchors).verify(
                certs[0].data, intermediates, now=sa.config.validation_time
            )
        except CertificateRejected as rejected:
            raise _authentication_failed(f"peer {peer}: {rejected}") from rejected
        if not identity_matches(certificate, id_payload.id_type, id_payload.data):
            raise _authentication_failed(f"peer {peer} is not named in its certificate")
        return certificate

    def _established(self, *, initial_contact: bool = False) -> None:
        """Queue ``IkeSaEstablished``; the driver moves the state once we return.

        ``initial_contact``: the authenticated initiator sent N(INITIAL_CONTACT)
        (responder only; the initiator's own is never reported back to it).
        """
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
                initial_contact=initial_contact,
            )
        )
