"""An in-memory initiator + responder pair with a fake clock (STYLE.md "ike_pair() helper").

Merges aioquic's ``client_and_server()`` with strongSwan's ``establish_sa()``:
both ``IkeSession`` cores talk through ``transfer``, which can drop, duplicate
or reorder datagrams, while ``clock`` stands in for ``loop.time()``. There are
no sockets and no sleeps; randomness is a seeded ``random.Random`` so a
failing run can be replayed exactly.
"""

from __future__ import annotations

import datetime
import ipaddress
import random
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from cryptography import x509

from common.ike import defaults
from common.ike.auth import SigningKey
from common.ike.constants import KeyExchangeMethod
from common.ike.events import IkeEvent
from common.ike.fragments import Reassembler, is_fragment
from common.ike.message import Payload, peek_header
from common.ike.policy import (
    Identity,
    IkeConfiguration,
    IpAddress,
    IpNetwork,
    IpVersion,
    accept_any_vouched_identity,
)
from common.ike.session import Address, IkeSession

INITIATOR_IP = "192.0.2.10"
RESPONDER_IP = "198.51.100.1"
PRIVATE_IP = "192.168.1.10"  # the initiator's own address when ``behind_nat``
CLIENT_ID = Identity.rfc822("alice@example.org")
GATEWAY_ID = Identity.fqdn("vpn.example.org")
PSK = b"correct horse battery staple"
# IkeConfiguration's retransmit_timeout, retransmit_base, retransmit_tries.
Retransmit = tuple[float, float, int]
OFFICE = (ipaddress.IPv4Network("10.1.0.0/16"), ipaddress.IPv4Network("10.2.0.0/24"))
POOL = (ipaddress.IPv4Address("10.99.0.2"), ipaddress.IPv4Address("10.99.0.3"))
DNS = (ipaddress.IPv4Address("10.1.0.53"),)
OFFICE_V6 = (ipaddress.IPv6Network("2001:db8:1::/48"),)
POOL_V6 = (ipaddress.IPv6Address("2001:db8:99::2"), ipaddress.IPv6Address("2001:db8:99::3"))
DNS_V6 = (ipaddress.IPv6Address("2001:db8:1::53"),)


@dataclass
class FakeClock:
    """Monotonic seconds, moved only by the test."""

    now: float = 1000.0

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@dataclass(frozen=True)
class Credentials:
    """One side's certificate authentication settings (``IkeConfiguration`` fields).

    ``cas`` are the trust anchors for the peer: the initiator's
    ``ca_certificates``; for the responder put them in ``MemoryPolicy.cas``.
    """

    key: SigningKey | None = field(default=None, repr=False)
    certificate: x509.Certificate | None = None
    chain: tuple[x509.Certificate, ...] = ()
    cas: tuple[x509.Certificate, ...] = ()


@dataclass
class MemoryPolicy:
    """A ``CertificatePolicy`` backed by dicts and a list of free addresses.

    With no ``cas`` a peer that signs is refused; ``authorize`` decides which
    certified identities may connect (default: any the CA vouches for).
    """

    psks: dict[Identity, bytes] = field(default_factory=lambda: {CLIENT_ID: PSK})
    pool: list[ipaddress.IPv4Address] = field(default_factory=lambda: list(POOL))
    dns: tuple[IpAddress, ...] = DNS
    subnets: tuple[IpNetwork, ...] = OFFICE
    leases: dict[Identity, ipaddress.IPv4Address] = field(default_factory=dict)
    # IPv6 is opt-in (empty pool: no IPv6 leases), so IPv4 tests see what they always did.
    pool_v6: list[ipaddress.IPv6Address] = field(default_factory=list)
    leases_v6: dict[Identity, ipaddress.IPv6Address] = field(default_factory=dict)
    cas: tuple[x509.Certificate, ...] = ()
    authorize_rule: Callable[[Identity, x509.Certificate], bool] = accept_any_vouched_identity

    def ca_certificates(self) -> Sequence[x509.Certificate]:
        return self.cas

    def authorize(self, identity: Identity, certificate: x509.Certificate) -> bool:
        return self.authorize_rule(identity, certificate)

    def psk_for(self, identity: Identity) -> bytes | None:
        return self.psks.get(identity)

    def lease_address(self, identity: Identity, version: IpVersion) -> IpAddress | None:
        if version == 6:
            if identity not in self.leases_v6:
                if not self.pool_v6:
                    return None
                self.leases_v6[identity] = self.pool_v6.pop(0)
            return self.leases_v6[identity]
        if identity not in self.leases:
            if not self.pool:
                return None
            self.leases[identity] = self.pool.pop(0)
        return self.leases[identity]

    def dns_servers(self) -> Sequence[IpAddress]:
        return self.dns

    def subnets_for(self, identity: Identity) -> Sequence[IpNetwork]:
        return self.subnets


def seeded_rng(seed: int) -> Callable[[int], bytes]:
    """Deterministic randomness for SPIs, nonces and DH keys."""
    return random.Random(seed).randbytes


@dataclass
class IkePair:
    """Two sessions, the clock, and what crossed the wire (for assertions)."""

    initiator: IkeSession
    responder: IkeSession
    clock: FakeClock
    policy: MemoryPolicy
    wire: list[tuple[str, bytes, Address, Address]] = field(default_factory=list)

    def peer_of(self, session: IkeSession) -> IkeSession:
        return self.responder if session is self.initiator else self.initiator

    def source_of(self, session: IkeSession) -> Address:
        """The sender's address as the receiver sees it (no NAT in between)."""
        ip = INITIATOR_IP if session is self.initiator else RESPONDER_IP
        return (ip, 4500 if session.use_nat_t else 500)

    def transfer(
        self,
        sender: IkeSession,
        *,
        drop: Collection[int] = (),
        duplicate: Collection[int] = (),
        reorder: bool = False,
    ) -> int:
        """Deliver what ``sender`` queued to its peer; returns how many were queued.

        Args:
            drop: indices (in send order) of datagrams lost on the way.
            duplicate: indices of datagrams delivered twice.
            reorder: deliver the batch in reverse order.
        """
        datagrams = sender.datagrams_to_send(self.clock.now)
        source = self.source_of(sender)
        order: Iterable[int] = range(len(datagrams))
        if reorder:
            order = reversed(range(len(datagrams)))
        receiver = self.peer_of(sender)
        name = "i->r" if sender is self.initiator else "r->i"
        for index in order:
            data, destination = datagrams[index]
            self.wire.append((name, data, source, destination))
            if index in drop:
                continue
            for _ in range(2 if index in duplicate else 1):
                receiver.receive_datagram(data, source, self.clock.now)
        return len(datagrams)

    def roundtrip(self) -> int:
        """Initiator to responder, then back; returns the datagrams moved."""
        return self.transfer(self.initiator) + self.transfer(self.responder)

    def run(self, max_rounds: int = 10) -> None:
        """Exchange datagrams until both sides are quiet."""
        for _ in range(max_rounds):
            if not self.roundtrip():
                return
        raise AssertionError("the pair never went quiet")

    def fire_timer(self, session: IkeSession) -> None:
        """Move the clock to ``session``'s deadline and let it expire."""
        deadline = session.get_timer()
        assert deadline is not None, "no timer armed"
        self.clock.now = max(self.clock.now, deadline)
        session.handle_timer(self.clock.now)


def events(session: IkeSession) -> list[IkeEvent]:
    """Drain ``session``'s event queue."""
    drained: list[IkeEvent] = []
    while (event := session.next_event()) is not None:
        drained.append(event)
    return drained


def ike_pair(
    *,
    ike: Sequence[str] = ("aes256gcm16-prfsha256-x25519",),
    esp: Sequence[str] = ("aes256gcm16",),
    responder_ike: Sequence[str] | None = None,
    responder_esp: Sequence[str] | None = None,
    psk: bytes = PSK,
    force_encapsulation: bool = False,
    behind_nat: bool = False,
    policy: MemoryPolicy | None = None,
    seed: int = 7,
    pfs_group: KeyExchangeMethod | None = None,
    responder_pfs_group: KeyExchangeMethod | Literal["same"] | None = "same",
    initiator_credentials: Credentials | None = None,
    responder_credentials: Credentials | None = None,
    validation_time: datetime.datetime | None = None,
    client_id: Identity = CLIENT_ID,
    ike_rekey_time: float = 0.0,
    ike_over_time: float | None = None,
    ike_rand_time: float | None = None,
    child_rekey_time: float = 0.0,
    child_over_time: float | None = None,
    child_rand_time: float | None = None,
    responder_lifetimes: bool = True,
    request_ipv6: bool = False,
    initial_contact: bool = True,
    retransmit: Retransmit | None = None,
    fragment_size: int | None = None,
) -> IkePair:
    """A fresh initiator (client) and responder (concentrator), nothing sent yet.

    ``behind_nat`` gives the initiator a private address of its own while the
    responder still sees ``INITIATOR_IP``, as a NAT in between would.
    ``pfs_group`` is the Child SA rekey's KE group for both sides unless
    ``responder_pfs_group`` names another for the responder.
    ``initiator_credentials`` / ``responder_credentials`` make that side sign
    its AUTH with a certificate (RFC 7427); ``validation_time`` is when both
    check the peer's certificate; ``client_id`` is the initiator's IDi.
    SA lifetimes (``IkeConfiguration``) are off unless asked for, so an idle
    pair has no timer; ``responder_lifetimes=False`` keeps them off on the
    responder. ``request_ipv6`` makes the initiator dual-stack (give the
    policy a ``pool_v6`` for it to get an IPv6 address). ``initial_contact``
    is the initiator's; ``retransmit`` (timeout, base, tries) is both sides'
    retransmission schedule, ``defaults.RETRANSMIT_*`` when None;
    ``fragment_size`` both sides' (RFC 7383, ``IkeConfiguration``).
    """

    def lifetimes(config: IkeConfiguration, enabled: bool = True) -> IkeConfiguration:
        if not enabled:
            return replace(config, ike_rekey_time=0.0, child_rekey_time=0.0)
        return replace(
            config,
            ike_rekey_time=ike_rekey_time,
            ike_over_time=ike_over_time,
            ike_rand_time=ike_rand_time,
            child_rekey_time=child_rekey_time,
            child_over_time=child_over_time,
            child_rand_time=child_rand_time,
        )

    timeout, base, tries = retransmit or (
        defaults.RETRANSMIT_TIMEOUT_S,
        defaults.RETRANSMIT_BASE,
        defaults.RETRANSMIT_TRIES,
    )
    clock = FakeClock()
    policy = policy or MemoryPolicy()
    mine = initiator_credentials or Credentials()
    theirs = responder_credentials or Credentials()
    initiator = IkeSession(
        lifetimes(
            IkeConfiguration(
                local_id=client_id,
                remote_id=GATEWAY_ID,
                psk=psk,
                ike_proposals=tuple(ike),
                esp_proposals=tuple(esp),
                force_encapsulation=force_encapsulation,
                request_ipv6=request_ipv6,
                pfs_group=pfs_group,
                private_key=mine.key,
                certificate=mine.certificate,
                certificate_chain=mine.chain,
                ca_certificates=mine.cas,
                validation_time=validation_time,
                initial_contact=initial_contact,
                retransmit_timeout=timeout,
                retransmit_base=base,
                retransmit_tries=tries,
                fragment_size=fragment_size,
            )
        ),
        is_initiator=True,
        local_addr=(PRIVATE_IP if behind_nat else INITIATOR_IP, 500),
        remote_addr=(RESPONDER_IP, 500),
        rng=seeded_rng(seed),
    )
    responder = IkeSession(
        lifetimes(
            IkeConfiguration(
                local_id=GATEWAY_ID,
                ike_proposals=tuple(responder_ike or ike),
                esp_proposals=tuple(responder_esp or esp),
                pfs_group=pfs_group if responder_pfs_group == "same" else responder_pfs_group,
                private_key=theirs.key,
                certificate=theirs.certificate,
                certificate_chain=theirs.chain,
                validation_time=validation_time,
                retransmit_timeout=timeout,
                retransmit_base=base,
                retransmit_tries=tries,
                fragment_size=fragment_size,
            ),
            responder_lifetimes,
        ),
        is_initiator=False,
        local_addr=(RESPONDER_IP, 500),
        policy=policy,
        rng=seeded_rng(seed + 1),
    )
    return IkePair(initiator, responder, clock, policy)


def establish(pair: IkePair) -> tuple[list[IkeEvent], list[IkeEvent]]:
    """Run IKE_SA_INIT and IKE_AUTH; the events of the initiator and the responder."""
    pair.initiator.initiate(pair.clock.now)
    # IKE_SA_INIT: HDR, SAi1, KEi, Ni -->  <-- HDR, SAr1, KEr, Nr
    # IKE_AUTH: HDR, SK {IDi, AUTH, CP, SAi2, TSi, TSr} -->  <-- HDR, SK {IDr, AUTH, ...}
    pair.run()
    return events(pair.initiator), events(pair.responder)


def open_sk(receiver: IkeSession, data: bytes) -> list[Payload]:
    """The payloads of ``HDR, SK {...}`` as ``receiver`` would read them.

    White-box: borrows the session's SK keys so tests can assert what an
    encrypted message carries (opening has no side effects; sealing would).
    """
    return receiver._sa.open(data)


def open_message(receiver: IkeSession, datagrams: Sequence[bytes]) -> list[Payload]:
    """The payloads of one message sent as ``HDR, SK {...}`` or as SKF fragments
    (RFC 7383), as ``receiver`` would read them; white-box like ``open_sk``.

    ``datagrams`` holds the message's datagram(s), in any order, duplicates
    allowed (e.g. every IKE_AUTH datagram one side sent).
    """
    protection = receiver._sa.protection
    assert protection is not None, "no IKE SA keys yet"
    if not is_fragment(datagrams[0]):
        return protection.open(datagrams[0])
    reassembler = Reassembler()
    for data in datagrams:
        payloads = protection.open_message(peek_header(data).message_id, data, reassembler)
        if payloads is not None:
            return payloads
    raise AssertionError("fragments missing")
