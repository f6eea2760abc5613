"""Events an ``IkeSession`` hands to its driver, past-tense facts (STYLE.md).

The driver pops them with ``IkeSession.next_event()`` and matches on the
type. ``IkeSaFailed``, ``IkeSaDeleted`` and ``PeerUnreachable`` each close
the session, after a ``ChildSaDeleted`` for every Child SA still up. A rekey
(CREATE_CHILD_SA) gives ``ChildSaRekeyed`` or ``IkeSaRekeyed``, or
``RekeyFailed`` when the peer refused it. Key material travels only in
``ChildSaEstablished`` and ``ChildSaRekeyed`` and never shows in a repr;
the driver gives it straight to ``common.esp`` (the ESP data path never goes
through this queue).

Simultaneous rekeys (RFC 7296 2.8.1, 2.8.2; ``state.py`` rule 7):

- both sides rekeying one Child SA: *two* ``ChildSaRekeyed`` may name the
  same old SA (one per exchange, in either order). Install both; the
  redundant one gets its ``ChildSaDeleted`` shortly after, and so does the
  old one, so the survivor is the new SA with no ``ChildSaDeleted``. Keep
  sending on an SA not yet deleted (RFC 7296 2.8.1: both must be accepted);
- a rekey of ours that crossed the peer's Delete of the SA ends with that
  SA's ``ChildSaDeleted`` and no ``RekeyFailed``; in the rare case the peer
  still answered it, the new SA comes as ``ChildSaEstablished`` (there is no
  old SA left to replace);
- a rekey of ours that lost to the peer's (it finished first) gives no
  ``RekeyFailed``: the peer's ``ChildSaRekeyed`` already came;
- both sides rekeying the IKE SA: exactly one ``IkeSaRekeyed``, naming the
  surviving SA; the redundant new IKE SA is never reported.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from common.ike.constants import NotifyType
from common.ike.payloads import TrafficSelector
from common.ike.policy import Identity, Ip4Address, Ip4Network, IpAddress, IpNetwork


@dataclass(frozen=True, slots=True)
class IkeSaEstablished:
    """IKE_AUTH succeeded: the peer is authenticated (RFC 7296 1.2).

    ``initial_contact`` (responder only) is True when the authenticated
    initiator sent N(INITIAL_CONTACT) (RFC 7296 2.4): it holds no other IKE
    SA with us, so the driver should delete the older IKE and Child SAs it
    still keeps for ``remote_id`` (a client that restarted or lost its
    connection) instead of waiting for their DPD to fail.
    """

    spi_i: bytes
    spi_r: bytes
    ike_suite: str
    prf: str
    group: str
    local_id: Identity
    remote_id: Identity
    initial_contact: bool = False


@dataclass(frozen=True, slots=True)
class ChildSaEstablished:
    """A Child SA exists; the keys are for ``common.esp.sa`` (RFC 7296 2.17).

    ``outbound_spi`` is the peer's inbound SPI, the one we put in our ESP packets.
    """

    inbound_spi: int
    outbound_spi: int
    esp_suite: str
    esn: bool
    inbound_keymat: bytes = field(repr=False)
    outbound_keymat: bytes = field(repr=False)
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]


@dataclass(frozen=True, slots=True)
class ChildSaRekeyed:
    """CREATE_CHILD_SA replaced a Child SA (RFC 7296 1.3.3, 2.8): install the new one.

    Make-before-break: the old SA (``old_inbound_spi`` / ``old_outbound_spi``)
    keeps carrying traffic until its own ``ChildSaDeleted`` follows, once the
    rekey initiator's INFORMATIONAL Delete is done. The other fields are those
    of ``ChildSaEstablished`` for the new SA (``established`` rebuilds one).
    """

    old_inbound_spi: int
    old_outbound_spi: int
    inbound_spi: int
    outbound_spi: int
    esp_suite: str
    esn: bool
    inbound_keymat: bytes = field(repr=False)
    outbound_keymat: bytes = field(repr=False)
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    # True when our CREATE_CHILD_SA made it. The rekey's *responder* should keep
    # sending on the old SA until that one is deleted: its answer may still be
    # on the way, so the initiator may not have the new inbound half yet. The
    # initiator may send on the new SA at once (the responder installed it).
    initiated_by_us: bool = False

    @property
    def established(self) -> ChildSaEstablished:
        """The new SA as a ``ChildSaEstablished``, for drivers that install from one."""
        return ChildSaEstablished(
            self.inbound_spi,
            self.outbound_spi,
            self.esp_suite,
            self.esn,
            self.inbound_keymat,
            self.outbound_keymat,
            self.local_ts,
            self.remote_ts,
        )


@dataclass(frozen=True, slots=True)
class IkeSaRekeyed:
    """CREATE_CHILD_SA replaced the IKE SA (RFC 7296 1.3.2, 2.18).

    The session goes on under ``spi_i`` / ``spi_r`` with new keys and message
    IDs from 0; its Child SAs moved over unchanged. The old SA's Delete (sent
    by the rekey initiator) is not reported: the session itself lives on.
    """

    old_spi_i: bytes
    old_spi_r: bytes
    spi_i: bytes
    spi_r: bytes


@dataclass(frozen=True, slots=True)
class RekeyFailed:
    """Our CREATE_CHILD_SA rekey was refused (RFC 7296 1.3, 2.25); nothing changed.

    ``inbound_spi`` names the Child SA we tried to rekey, or is None for the
    IKE SA. TEMPORARY_FAILURE means "try again after a short while" (2.25).
    """

    inbound_spi: int | None
    reason: str
    notify: NotifyType | None


@dataclass(frozen=True, slots=True)
class ChildSaFailed:
    """The IKE SA stands but its first Child SA was refused (RFC 7296 1.2, 2.21.3)."""

    reason: str
    notify: NotifyType | None


@dataclass(frozen=True, slots=True)
class AddressAssigned:
    """The responder's CFG_REPLY, on the initiator (RFC 7296 3.15).

    The IPv4 fields keep their original names and meaning, so an IPv4-only
    driver reads ``address``/``dns``/``subnets`` as before; the IPv6 ones sit
    beside them rather than in mixed tuples for the same reason. At least one
    of ``address`` and ``address_v6`` is set: a reply with neither fails the
    Child SA (INTERNAL_ADDRESS_FAILURE) instead.

    Attributes:
        address: the inner IPv4 address (INTERNAL_IP4_ADDRESS), None when the
            responder leased none (no IPv4 pool, or not asked for).
        dns: INTERNAL_IP4_DNS servers.
        subnets: INTERNAL_IP4_SUBNET networks (split include, advisory,
            RFC 7296 3.15.2).
        address_v6: the inner IPv6 address (INTERNAL_IP6_ADDRESS), None when
            not leased. The prefix length carried beside it (RFC 7296 3.15.1)
            is in ``prefix_length_v6``: 128 from our responder, 64 from
            strongSwan 5.9.8 (the address is still a single host's).
        prefix_length_v6: the prefix length of ``address_v6``.
        dns_v6: INTERNAL_IP6_DNS servers.
        subnets_v6: INTERNAL_IP6_SUBNET networks.
    """

    address: Ip4Address | None
    dns: tuple[Ip4Address, ...]
    subnets: tuple[Ip4Network, ...]
    address_v6: ipaddress.IPv6Address | None = None
    prefix_length_v6: int = 128
    dns_v6: tuple[ipaddress.IPv6Address, ...] = ()
    subnets_v6: tuple[ipaddress.IPv6Network, ...] = ()

    @property
    def addresses(self) -> tuple[IpAddress, ...]:
        """Every leased inner address, IPv4 first (for anti-spoof and TSi checks)."""
        return tuple(a for a in (self.address, self.address_v6) if a is not None)

    @property
    def all_dns(self) -> tuple[IpAddress, ...]:
        """DNS servers of both families, IPv4 first."""
        return (*self.dns, *self.dns_v6)

    @property
    def all_subnets(self) -> tuple[IpNetwork, ...]:
        """Split-include networks of both families, IPv4 first."""
        return (*self.subnets, *self.subnets_v6)


@dataclass(frozen=True, slots=True)
class IkeSaFailed:
    """The IKE SA could not be set up, or was given up; the session is closed."""

    reason: str
    notify: NotifyType | None


@dataclass(frozen=True, slots=True)
class ChildSaDeleted:
    """A Child SA is gone: uninstall both halves (RFC 7296 1.4.1).

    Either side's Delete, or the IKE SA closing (Child SAs die with it).
    """

    inbound_spi: int
    outbound_spi: int


@dataclass(frozen=True, slots=True)
class IkeSaDeleted:
    """The IKE SA was deleted in order (RFC 7296 1.4.1); the session is closed.

    ``by_peer`` is True when the peer sent the Delete; False when we did, whether
    or not its response came back (RFC 7296 2.4: it is deleted anyway).
    """

    by_peer: bool


@dataclass(frozen=True, slots=True)
class PeerUnreachable:
    """An established IKE SA's request went unanswered through the whole
    retransmission schedule (RFC 7296 2.4); the session is closed.
    """

    reason: str = "peer unreachable"


IkeEvent = (
    IkeSaEstablished
    | ChildSaEstablished
    | ChildSaFailed
    | ChildSaRekeyed
    | IkeSaRekeyed
    | RekeyFailed
    | AddressAssigned
    | IkeSaFailed
    | ChildSaDeleted
    | IkeSaDeleted
    | PeerUnreachable
)
