"""What every task shares: the IKE SA's data and the helpers to read payloads.

``IkeSa`` is strongSwan's ``ike_sa_t`` cut down to data: SPIs, nonces, keys,
NAT-T flags, the Child SAs and the event queue. ``IkeSession`` owns one and
hands it to each task, so the tasks never reach into the driver.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol, TypeVar

from common.ike.constants import IdType, NotifyType
from common.ike.events import ChildSaEstablished, ChildSaRekeyed, IkeEvent
from common.ike.exchanges import Address, SkProtection, build_nat_detection, nat_detected
from common.ike.keys import IkeSaKeys, derive_ike_sa_keys, derive_rekeyed_ike_sa_keys
from common.ike.message import IkeHeader, IkeMessage, Payload
from common.ike.payloads import IdPayload, Notify, TrafficSelector
from common.ike.policy import Identity, IkeConfiguration, ResponderPolicy
from common.ike.proposals import EspAlgorithms, IkeAlgorithms
from common.ike.state import ChildSaState, child_transition

Rng = Callable[[int], bytes]

ZERO_SPI: Final = bytes(8)
ANY_IPV4: Final = TrafficSelector(
    ipaddress.IPv4Address("0.0.0.0"), ipaddress.IPv4Address("255.255.255.255")
)
ESP_SPI: Final = struct.Struct("!I")


@dataclass(slots=True)
class ChildSa:
    """One Child SA as the IKE SA tracks it (the keys went out in the event).

    The traffic selectors are kept (from our point of view) for its rekey,
    which proposes the same ones (RFC 7296 1.3.3).
    """

    inbound_spi: int
    outbound_spi: int
    state: ChildSaState = ChildSaState.INSTALLED
    local_ts: tuple[TrafficSelector, ...] = ()
    remote_ts: tuple[TrafficSelector, ...] = ()
    # RFC 7296 2.8.1: the SA the peer's rekey of this one made while ours was in
    # flight, and the lowest nonce of that exchange (state.py rule 7).
    peer_rekey: ChildSa | None = None
    peer_rekey_nonce: bytes = b""

    def move(self, new: ChildSaState) -> None:
        self.state = child_transition(self.state, new)


@dataclass(slots=True, repr=False)
class IkeSa:
    """The IKE SA's data, shared by the driver and the tasks (no secrets in repr)."""

    config: IkeConfiguration
    is_initiator: bool
    local_addr: Address
    remote_addr: Address
    policy: ResponderPolicy | None
    rng: Rng
    allocate_spi: Callable[[], int]
    spi_i: bytes = ZERO_SPI
    spi_r: bytes = ZERO_SPI
    ni: bytes = b""
    nr: bytes = b""
    ike: IkeAlgorithms | None = None
    keys: IkeSaKeys | None = None
    protection: SkProtection | None = None
    real_message_1: bytes = b""
    real_message_2: bytes = b""
    nat_t_pending: bool = False
    nat_t: bool = False
    remote_id: Identity | None = None
    # The peer's N(SIGNATURE_HASH_ALGORITHMS) from IKE_SA_INIT (RFC 7427 section 4);
    # None when it sent none, so we may not sign our AUTH for it.
    peer_signature_hashes: tuple[int, ...] | None = None
    child_sas: dict[int, ChildSa] = field(default_factory=dict)  # by inbound SPI
    events: deque[IkeEvent] = field(default_factory=deque)

    def __repr__(self) -> str:
        return f"<IkeSa {self.spi_i.hex()}_{self.spi_r.hex()}>"

    def header(self, exchange_type: int, message_id: int, *, response: bool) -> IkeHeader:
        """Our header for this IKE SA: the I flag names the original initiator (RFC 7296 3.1)."""
        return IkeHeader(
            self.spi_i, self.spi_r, exchange_type, message_id, self.is_initiator, response
        )

    def seal(self, header: IkeHeader, payloads: Sequence[Payload]) -> bytes:
        """``HDR, SK {payloads}`` (RFC 7296 3.14)."""
        if self.protection is None:
            raise RuntimeError("no IKE SA keys yet")
        return self.protection.seal(header, payloads)

    def open(self, data: bytes) -> list[Payload]:
        """The payloads inside the peer's ``HDR, SK {...}``."""
        if self.protection is None:
            raise RuntimeError("no IKE SA keys yet")
        return self.protection.open(data)

    def derive_keys(self, ike: IkeAlgorithms, g_ir: bytes) -> None:
        """SKEYSEED and SK_* (RFC 7296 2.14); SKEYSEED itself is dropped at once."""
        self.ike = ike
        _skeyseed, self.keys = derive_ike_sa_keys(
            ike.prf,
            self.ni,
            self.nr,
            g_ir,
            self.spi_i,
            self.spi_r,
            encr_key_len=ike.suite.sk_e_len,
            integ_key_len=ike.suite.sk_a_len,
        )
        self.protection = SkProtection(
            ike.suite, self.keys, is_initiator=self.is_initiator, rng=self.rng
        )

    def derive_rekeyed_keys(
        self, ike: IkeAlgorithms, old_sk_d: bytes, old_ike: IkeAlgorithms, g_ir: bytes
    ) -> None:
        """SK_* of an IKE SA made by rekeying (RFC 7296 2.18): SKEYSEED from SK_d (old)."""
        self.ike = ike
        _skeyseed, self.keys = derive_rekeyed_ike_sa_keys(
            ike.prf,
            old_sk_d,
            g_ir,
            self.ni,
            self.nr,
            self.spi_i,
            self.spi_r,
            encr_key_len=ike.suite.sk_e_len,
            integ_key_len=ike.suite.sk_a_len,
            old_prf_alg=old_ike.prf,
        )
        self.protection = SkProtection(
            ike.suite, self.keys, is_initiator=self.is_initiator, rng=self.rng
        )

    def build_nat_detection(self, spi_r: bytes) -> list[Notify]:
        """N(NAT_DETECTION_SOURCE_IP), N(NAT_DETECTION_DESTINATION_IP), RFC 7296 2.23."""
        fake = self.rng(20) if self.config.force_encapsulation else None
        return build_nat_detection(self.spi_i, spi_r, self.local_addr, self.remote_addr, fake)

    def process_nat_detection(self, message: IkeMessage, source: Address) -> bool:
        """Whether to move to port 4500: a NAT on either side, or forced (RFC 7296 2.23)."""
        if self.config.force_encapsulation:
            return True
        return nat_detected(message, self.spi_i, source, self.local_addr)

    def add_child(self, event: ChildSaEstablished) -> None:
        """Queue ``event`` and remember the Child SA it names."""
        self.child_sas[event.inbound_spi] = ChildSa(
            event.inbound_spi,
            event.outbound_spi,
            local_ts=event.local_ts,
            remote_ts=event.remote_ts,
        )
        self.events.append(event)

    def add_rekeyed_child(
        self, old: ChildSa, new: ChildSaEstablished, *, initiated_by_us: bool
    ) -> ChildSa:
        """Remember ``new`` beside ``old`` (make-before-break) and queue ``ChildSaRekeyed``.

        If ``old`` is gone already (the peer deleted it while our rekey was in
        flight, state.py rule 7) there is nothing to replace: ``new`` is
        reported as ``ChildSaEstablished``.
        """
        child = ChildSa(
            new.inbound_spi, new.outbound_spi, local_ts=new.local_ts, remote_ts=new.remote_ts
        )
        self.child_sas[new.inbound_spi] = child
        if old.state is ChildSaState.DELETED:
            self.events.append(new)
            return child
        self.events.append(
            ChildSaRekeyed(
                old.inbound_spi,
                old.outbound_spi,
                new.inbound_spi,
                new.outbound_spi,
                new.esp_suite,
                new.esn,
                new.inbound_keymat,
                new.outbound_keymat,
                new.local_ts,
                new.remote_ts,
                initiated_by_us,
            )
        )
        return child

    def rekeyed(
        self, *, is_initiator: bool, spi_i: bytes, spi_r: bytes, ni: bytes, nr: bytes
    ) -> IkeSa:
        """The IKE SA that replaces this one (RFC 7296 2.18), keys still to derive.

        Addresses, NAT-T, identities and the event queue carry over (the
        queue is the *same* deque, so no event is lost at the switch); the
        Child SAs move when the driver switches; ``is_initiator`` is the
        rekey's initiator, the new SA's original initiator.
        """
        return IkeSa(
            config=self.config,
            is_initiator=is_initiator,
            local_addr=self.local_addr,
            remote_addr=self.remote_addr,
            policy=self.policy,
            rng=self.rng,
            allocate_spi=self.allocate_spi,
            spi_i=spi_i,
            spi_r=spi_r,
            ni=ni,
            nr=nr,
            nat_t_pending=self.nat_t_pending,
            nat_t=self.nat_t,
            remote_id=self.remote_id,
            events=self.events,
        )


class ExchangeTask(Protocol):
    """An exchange we start once the window is free (INFORMATIONAL or CREATE_CHILD_SA).

    ``tasks.InformationalTask`` plus the exchange type, so the driver can
    number and match any of them (RFC 7296 2.2, 2.3).
    """

    @property
    def exchange_type(self) -> int:
        """The exchange the request opens."""
        ...

    def build_i(self, message_id: int) -> bytes:
        """The sealed request."""
        ...

    def process_i(self, payloads: list[Payload]) -> IkeEvent | None:
        """Act on the response; an event returned closes the IKE SA."""
        ...

    def expired(self) -> IkeEvent:
        """The request went unanswered (RFC 7296 2.4): the event that closes the SA."""
        ...


# Queued commands are factories: the task is made when the window frees, on
# whichever IKE SA is current then (an IKE SA rekey may switch it meanwhile);
# None means there is nothing left to do (the Child SA went away).
TaskFactory = Callable[[IkeSa], ExchangeTask | None]


def new_ike_spi(rng: Rng) -> bytes:
    """A fresh 8-octet IKE SPI; RFC 7296 3.1: never zero."""
    while True:
        spi = rng(8)
        if spi != ZERO_SPI:
            return spi


# --- payload helpers ----------------------------------------------------------------------

P = TypeVar("P")


def first(payloads: Sequence[Payload], kind: type[P]) -> P | None:
    """The first payload of class ``kind`` in a decrypted chain, or None."""
    for payload in payloads:
        if isinstance(payload, kind):
            return payload
    return None


def identity(payload: IdPayload) -> Identity | None:
    """The peer's identity, or None for an ID type we do not know."""
    try:
        return Identity(IdType(payload.id_type), payload.data)
    except ValueError:
        return None


def as_notify(notify_type: int) -> NotifyType | None:
    try:
        return NotifyType(notify_type)
    except ValueError:
        return None


def notify_name(notify_type: int) -> str:
    notify = as_notify(notify_type)
    return str(notify_type) if notify is None else notify.name


def child_established(
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
