"""What an IKE session is told from outside: identities, its configuration, and the
responder's policy (who may connect, with which key, getting which address).

``IkeConfiguration`` is per session (aioquic's ``QuicConfiguration``);
``ResponderPolicy`` is the concentrator's answer to "who is this peer?",
asked only after the IKE_SA_INIT keys exist, so an implementation may look
users up in a store without being exposed to unauthenticated floods.

Certificate authentication (RFC 7296 2.15 with RFC 7427 DIGITAL_SIGNATURE) is
opt-in on both sides: a configuration with ``private_key`` and ``certificate``
signs its AUTH instead of using a PSK, and ``ca_certificates`` (initiator) or a
``CertificatePolicy`` (responder) verifies a peer that signs. A responder
policy that only implements ``ResponderPolicy`` keeps working: peers that sign
are then refused with AUTHENTICATION_FAILED.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from cryptography import x509

from common.ike import defaults
from common.ike.auth import SigningKey
from common.ike.config import IpAddress, IpNetwork
from common.ike.constants import IdType, KeyExchangeMethod

__all__ = [
    "CertificatePolicy",
    "Identity",
    "IkeConfiguration",
    "Ip4Address",
    "Ip4Network",
    "IpAddress",
    "IpNetwork",
    "IpVersion",
    "ResponderPolicy",
    "accept_any_vouched_identity",
]

Ip4Address = ipaddress.IPv4Address
Ip4Network = ipaddress.IPv4Network
# The inner address families a road warrior can ask for (RFC 7296 3.15.1).
IpVersion = Literal[4, 6]


@dataclass(frozen=True, slots=True)
class Identity:
    """An IKE identity as carried in IDi/IDr (RFC 7296 3.5)."""

    id_type: IdType
    data: bytes

    @classmethod
    def fqdn(cls, name: str) -> Identity:
        """ID_FQDN: a domain name, no terminator (RFC 7296 3.5)."""
        return cls(IdType.ID_FQDN, name.encode("ascii"))

    @classmethod
    def rfc822(cls, address: str) -> Identity:
        """ID_RFC822_ADDR: an e-mail style user@domain (RFC 7296 3.5)."""
        return cls(IdType.ID_RFC822_ADDR, address.encode("ascii"))

    def __str__(self) -> str:
        if self.id_type in (IdType.ID_FQDN, IdType.ID_RFC822_ADDR):
            return self.data.decode("ascii", "replace")
        return f"{self.id_type.name}:{self.data.hex()}"


@dataclass(frozen=True, slots=True)
class IkeConfiguration:
    """Per-session settings for either role.

    Attributes:
        local_id: the identity we send (IDi or IDr).
        remote_id: the identity we expect and, as initiator, send as IDr.
        psk: the initiator's pre-shared key; the responder asks its policy.
        ike_proposals: strongSwan-style IKE proposal strings (``common.ike.proposals``).
        esp_proposals: strongSwan-style ESP proposal strings.
        force_encapsulation: fake the NAT_DETECTION_SOURCE_IP hash so both
            sides move to UDP 4500 even without a NAT (strongSwan ``encap=yes``).
        request_address: the initiator asks for an inner address and DNS (CP).
        request_ipv6: the initiator also asks for an inner IPv6 address and IPv6
            DNS (INTERNAL_IP6_ADDRESS, INTERNAL_IP6_DNS) and proposes ``::/0`` in
            TSi and TSr beside ``0.0.0.0/0``; it is satisfied by whichever
            family the responder leases (RFC 7296 3.15.4).
        pfs_group: the KE group of a Child SA rekey (RFC 7296 1.3.3, 2.17: PFS),
            added to every ESP proposal of CREATE_CHILD_SA; None for no PFS.
            Both peers must agree, or the rekey ends in NO_PROPOSAL_CHOSEN.
        private_key: our signing key; with ``certificate`` set, our AUTH is an
            RFC 7427 digital signature (auth method 14) instead of the PSK MIC.
        certificate: our end-entity certificate, sent first in CERT (RFC 7296 3.6).
        certificate_chain: intermediates sent after it, so the peer can build a
            path to its trust anchor; never the root.
        ca_certificates: trust anchors for a peer that authenticates with a
            signature; the initiator's (a responder asks its ``CertificatePolicy``).
            Also announced in CERTREQ (RFC 7296 3.7). Empty: signing peers are refused.
        validation_time: the UTC time at which a peer certificate is checked
            (RFC 5280 6.1). The core reads no clock (STYLE.md), so the glue passes
            the wall clock when it creates the session and tests a fixed time;
            None refuses every peer certificate (AUTHENTICATION_FAILED).
        ike_rekey_time: seconds after the IKE SA was made (or last rekeyed)
            to rekey it (RFC 7296 2.8, strongSwan ``rekey_time``); 0 disables
            both the automatic rekey and the hard expiry.
        ike_over_time: how long after ``ike_rekey_time`` an IKE SA that was
            not rekeyed is closed (``over_time``); None: 10% of the rekey time.
        ike_rand_time: the most subtracted at random from ``ike_rekey_time``
            so both peers rarely rekey at once (``rand_time``, drawn from the
            session's rng); None: 10% of the rekey time; 0: no jitter.
        child_rekey_time, child_over_time, child_rand_time: the same for
            each Child SA (an IKE SA rekey keeps its Child SAs' lifetimes).
        fragment_size: the largest UDP payload an encrypted IKE message may
            take, the port-4500 non-ESP marker included (RFC 7383 2.5.1; unlike
            strongSwan's ``charon.fragment_size``, the IP header is not
            counted). A larger message goes out as SKF fragments when the peer
            supports them (RFC 7383). None: 1280 over IPv4 (strongSwan's
            default), 1232 over IPv6 (the 1280 minimum MTU less the IPv6 and
            UDP headers). At least 548, what a 576-octet IPv4 datagram leaves.
        initial_contact: the initiator sends N(INITIAL_CONTACT) in IKE_AUTH
            (RFC 7296 2.4), telling the responder it holds no other IKE SA with
            it, so the responder drops the stale SAs of our identity. True fits
            a client's connection (it keeps one IKE SA per gateway and, after a
            restart or a lost link, has none left); turn it off for a second,
            concurrent IKE SA to the same gateway. The responder ignores it.
        retransmit_timeout, retransmit_base, retransmit_tries: the schedule of
            every request of ours, on the current IKE SA, a rekeyed one and the
            one being retired: transmission n waits ``retransmit_timeout *
            retransmit_base**n``, and after ``retransmit_tries`` retransmissions
            the peer is unreachable (RFC 7296 2.1, 2.4 leave the numbers to us;
            ``defaults`` has charon's). ``exchanges.give_up_time`` turns them
            into seconds and ``exchanges.tries_within`` seconds into tries, so
            the glue can size them from "dead after N seconds". The timeout
            must be positive, the base at least 1, the tries not negative.
    """

    local_id: Identity
    remote_id: Identity | None = None
    psk: bytes = field(default=b"", repr=False)
    ike_proposals: tuple[str, ...] = defaults.IKE_PROPOSALS
    esp_proposals: tuple[str, ...] = defaults.ESP_PROPOSALS
    force_encapsulation: bool = False
    request_address: bool = True
    request_ipv6: bool = False
    pfs_group: KeyExchangeMethod | None = None
    private_key: SigningKey | None = field(default=None, repr=False)
    certificate: x509.Certificate | None = None
    certificate_chain: tuple[x509.Certificate, ...] = ()
    ca_certificates: tuple[x509.Certificate, ...] = ()
    validation_time: datetime.datetime | None = None
    ike_rekey_time: float = defaults.IKE_REKEY_TIME_S
    ike_over_time: float | None = None
    ike_rand_time: float | None = None
    child_rekey_time: float = defaults.CHILD_REKEY_TIME_S
    child_over_time: float | None = None
    child_rand_time: float | None = None
    fragment_size: int | None = None
    initial_contact: bool = True
    retransmit_timeout: float = defaults.RETRANSMIT_TIMEOUT_S
    retransmit_base: float = defaults.RETRANSMIT_BASE
    retransmit_tries: int = defaults.RETRANSMIT_TRIES

    @property
    def signs(self) -> bool:
        """Whether our AUTH is a certificate signature rather than the PSK MIC."""
        return self.private_key is not None and self.certificate is not None


class ResponderPolicy(Protocol):
    """The concentrator's decisions about an authenticating peer.

    Called by the responder during IKE_AUTH; every method may be called for an
    identity whose AUTH has not been checked yet (``psk_for``) or has
    (the others), never for one that failed.
    """

    def psk_for(self, identity: Identity) -> bytes | None:
        """The pre-shared key of ``identity``, or None for an unknown peer."""
        ...

    def lease_address(self, identity: Identity, version: Literal[4, 6]) -> IpAddress | None:
        """An inner address of that IP version for ``identity``.

        Asked once per family the CFG_REQUEST names (INTERNAL_IP4_ADDRESS,
        INTERNAL_IP6_ADDRESS), so a dual-stack client gets one of each.

        Returns:
            The address, or None when that family's pool is absent or
            exhausted; the family is then left out of the CFG_REPLY, and only
            when no family at all was leased does the peer get
            INTERNAL_ADDRESS_FAILURE (RFC 7296 3.15.4).
        """
        ...

    def dns_servers(self) -> Sequence[IpAddress]:
        """DNS servers to hand out, both families.

        IPv4 ones go out as INTERNAL_IP4_DNS, IPv6 ones as INTERNAL_IP6_DNS.
        """
        ...

    def subnets_for(self, identity: Identity) -> Sequence[IpNetwork]:
        """Networks ``identity`` may reach, both families.

        They bound TSr (RFC 7296 2.9) and are announced as INTERNAL_IP4_SUBNET /
        INTERNAL_IP6_SUBNET (split include, RFC 7296 3.15.2).
        """
        ...


@runtime_checkable
class CertificatePolicy(ResponderPolicy, Protocol):
    """A ``ResponderPolicy`` that also admits peers authenticating with certificates.

    The responder checks the peer's chain against ``ca_certificates()`` at the
    configuration's ``validation_time``, that IDi is named in the certificate
    (RFC 4945 3.1) and the AUTH signature (RFC 7427); only then is
    ``authorize`` asked. The other ``ResponderPolicy`` methods are then called
    as for a PSK peer (``psk_for`` is not).
    """

    def ca_certificates(self) -> Sequence[x509.Certificate]:
        """The trust anchors for peer certificates."""
        ...

    def authorize(self, identity: Identity, certificate: x509.Certificate) -> bool:
        """Whether ``identity``, proven by ``certificate``, may connect.

        ``accept_any_vouched_identity`` is the rule "whoever the CA vouches for".
        """
        ...


def accept_any_vouched_identity(identity: Identity, certificate: x509.Certificate) -> bool:
    """An ``authorize`` rule: every identity a trusted CA certified may connect."""
    del identity, certificate
    return True
