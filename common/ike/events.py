"""Events an ``IkeSession`` hands to its driver, past-tense facts (STYLE.md).

The driver pops them with ``IkeSession.next_event()`` and matches on the
type. ``IkeSaFailed``, ``IkeSaDeleted`` and ``PeerUnreachable`` each close
the session, after a ``ChildSaDeleted`` for every Child SA still up. Key
material travels only in ``ChildSaEstablished`` and never shows in a repr;
the driver gives it straight to ``common.esp`` (the ESP data path never goes
through this queue).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.ike.constants import NotifyType
from common.ike.payloads import TrafficSelector
from common.ike.policy import Identity, Ip4Address, Ip4Network


@dataclass(frozen=True, slots=True)
class IkeSaEstablished:
    """IKE_AUTH succeeded: the peer is authenticated (RFC 7296 1.2)."""

    spi_i: bytes
    spi_r: bytes
    ike_suite: str
    prf: str
    group: str
    local_id: Identity
    remote_id: Identity


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
class ChildSaFailed:
    """The IKE SA stands but its first Child SA was refused (RFC 7296 1.2, 2.21.3)."""

    reason: str
    notify: NotifyType | None


@dataclass(frozen=True, slots=True)
class AddressAssigned:
    """The responder's CFG_REPLY, on the initiator (RFC 7296 3.15)."""

    address: Ip4Address
    dns: tuple[Ip4Address, ...]
    subnets: tuple[Ip4Network, ...]


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
    | AddressAssigned
    | IkeSaFailed
    | ChildSaDeleted
    | IkeSaDeleted
    | PeerUnreachable
)
