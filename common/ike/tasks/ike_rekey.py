"""Rekeying the IKE SA with CREATE_CHILD_SA (RFC 7296 1.3.2, 2.8, 2.18, 2.25.2).

::

    HDR, SK {SA(IKE, new SPIi), Ni, KEi}  -->
                 <--  HDR, SK {SA(IKE, new SPIr), Nr, KEr}
                 <--  HDR, SK {N(TEMPORARY_FAILURE | NO_PROPOSAL_CHOSEN | INVALID_KE_PAYLOAD)}
    then, by the rekey initiator, under the *old* IKE SA:
    HDR, SK {D(IKE)}  -->  <--  HDR, SK {}

strongSwan's ``ike_rekey``. The new SPIs travel in the proposals (RFC 7296
3.3.1: 8 octets when rekeying an IKE SA); SKEYSEED = prf(SK_d (old),
g^ir (new) | Ni | Nr) and the SK_* split of 2.14 with the new nonces and
SPIs. The rekey initiator is the new SA's original initiator. These tasks
only build the new ``IkeSa`` (``new_sa``); the driver switches to it, moves
the Child SAs, and deletes the old one (state.py rule 6).

Simultaneous rekeys (RFC 7296 2.8.2, 2.25.2; state.py rule 7): the peer's
request that arrives while our ``IkeRekey`` is in flight is answered as usual
by ``IkeRekeyResponder(collision=our task)``, which leaves the new SA on our
task (``passive``) instead of having the driver switch. ``outcome()`` then
decides, once our answer is in: of the two new SAs, the one whose exchange
holds the lowest nonce is redundant and deleted by its initiator; the other
survives and takes the Child SAs; the survivor's initiator deletes the old
SA. If our request was refused (the peer finished first and is closing the
old SA: TEMPORARY_FAILURE) the peer's new SA simply survives.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final

from common.ike import defaults, key_exchange
from common.ike.constants import ExchangeType, KeyExchangeMethod, NotifyType, ProtocolId
from common.ike.errors import LocalProtocolError, RemoteProtocolError
from common.ike.events import IkeEvent, PeerUnreachable, RekeyFailed
from common.ike.message import Payload
from common.ike.payloads import KeyExchange, Nonce, Notify, Proposal, SecurityAssociation
from common.ike.proposals import (
    ike_algorithms,
    ike_proposals,
    proposal_groups,
    select_proposal,
    validate_chosen,
)
from common.ike.tasks.base import (
    ZERO_SPI,
    ExchangeTask,
    IkeSa,
    TaskFactory,
    as_notify,
    first,
    new_ike_spi,
    notify_name,
)
from common.ike.tasks.child_create import invalid_ke, wanted_group


@dataclass(frozen=True, slots=True)
class RekeyOutcome:
    """Where an IKE SA rekey of ours leaves the session (RFC 7296 2.8.2).

    ``survivor`` is the SA the session goes on under. ``delete_old``: we made
    the survivor, so the old SA is ours to delete (2.8). ``redundant`` is the
    other new SA of a collision, or None; we delete it when we made it
    (``redundant.is_initiator``), otherwise the peer will.
    """

    survivor: IkeSa
    delete_old: bool
    redundant: IkeSa | None


def lowest_nonce(sa: IkeSa) -> bytes:
    """min(Ni, Nr) of the exchange that made ``sa``: bytes order is the RFC's
    octet-by-octet comparison, a nonce that is a prefix of the other lower (2.8.1)."""
    return min(sa.ni, sa.nr)


class IkeRekey:
    """We rekey the IKE SA; ``new_sa`` is set once the response is processed.

    ``passive`` is the new SA of the peer's colliding rekey, answered while
    this one was in flight (set by ``IkeRekeyResponder``).
    """

    exchange_type: Final = ExchangeType.CREATE_CHILD_SA

    def __init__(
        self, sa: IkeSa, group: KeyExchangeMethod | None = None, *, retry: bool = False
    ) -> None:
        self._sa = sa
        self._group = group
        self._retry = retry
        self._spi = ZERO_SPI
        self._ni = b""
        self._offer: tuple[Proposal, ...] = ()
        self._dh: key_exchange.KeyExchange | None = None
        self.new_sa: IkeSa | None = None
        self.passive: IkeSa | None = None
        self.follow_up: TaskFactory | None = None

    def outcome(self) -> RekeyOutcome | None:
        """Which new IKE SA survives, once the response is processed; None: none made.

        RFC 7296 2.8.2: "The new IKE SA containing the lowest nonce SHOULD be
        deleted by the node that created it, and the other surviving new IKE SA
        MUST inherit all the Child SAs."
        """
        ours, theirs = self.new_sa, self.passive
        if ours is None:
            # Refused, but the peer's rekey went through: it deletes the old SA.
            return None if theirs is None else RekeyOutcome(theirs, False, None)
        if theirs is None:
            return RekeyOutcome(ours, True, None)
        if lowest_nonce(ours) < lowest_nonce(theirs):
            return RekeyOutcome(theirs, False, ours)  # we lost: ours is redundant
        return RekeyOutcome(ours, True, theirs)

    def build_i(self, message_id: int) -> bytes:
        """``HDR, SK {SA(new SPIi), Ni, KEi} -->``; KEi in the current group when we offer it."""
        sa = self._sa
        assert sa.ike is not None
        self._spi = new_ike_spi(sa.rng)
        self._ni = sa.rng(defaults.NONCE_LEN)
        # RFC 7296 3.3.1: when rekeying, each IKE proposal carries our new SPI.
        self._offer = tuple(
            replace(p, spi=self._spi) for p in ike_proposals(sa.config.ike_proposals)
        )
        groups = proposal_groups(self._offer)
        group = self._group
        if group is None:
            group = sa.ike.group if sa.ike.group in groups else groups[0]
        self._dh = key_exchange.KeyExchange.generate(group, sa.rng)
        payloads: list[Payload] = [
            SecurityAssociation(self._offer),
            Nonce(self._ni),
            KeyExchange(group, self._dh.public_value),  # RFC 7296 1.3.2: KEi is mandatory
        ]
        header = sa.header(ExchangeType.CREATE_CHILD_SA, message_id, response=False)
        return sa.seal(header, payloads)

    def process_i(self, payloads: list[Payload]) -> IkeEvent | None:
        """``<-- HDR, SK {SA(new SPIr), Nr, KEr}`` (or a refusal): derive the new SA.

        Raises:
            RemoteProtocolError: an answer we cannot use (the driver fails the IKE SA).
        """
        sa = self._sa
        assert sa.ike is not None
        assert sa.keys is not None
        assert self._dh is not None
        refusal = next((p for p in payloads if isinstance(p, Notify) and p.is_error), None)
        if refusal is not None:
            self._process_refusal(refusal, self._dh.group)
            return None
        sa_payload = first(payloads, SecurityAssociation)
        nonce = first(payloads, Nonce)
        ke = first(payloads, KeyExchange)
        if sa_payload is None or nonce is None or ke is None:
            raise RemoteProtocolError("IKE SA rekey response without SA, Nr or KEr")
        chosen = validate_chosen(sa_payload, self._offer)
        ike = ike_algorithms(chosen)
        if len(chosen.spi) != 8 or chosen.spi == ZERO_SPI:
            raise RemoteProtocolError("IKE SA rekey response without a new SPI")
        if ke.group != self._dh.group or ike.group != self._dh.group:
            raise RemoteProtocolError("responder's KE group is not the one we sent")
        g_ir = self._dh.shared_secret(ke.data)
        self._dh = None
        new_sa = sa.rekeyed(
            is_initiator=True, spi_i=self._spi, spi_r=chosen.spi, ni=self._ni, nr=nonce.data
        )
        new_sa.derive_rekeyed_keys(ike, sa.keys.sk_d, sa.ike, g_ir)  # RFC 7296 2.18
        self.new_sa = new_sa
        return None

    def _process_refusal(self, refusal: Notify, sent: KeyExchangeMethod) -> None:
        if self.passive is not None:
            # RFC 7296 2.8.2: the peer finished its own rekey before ours came and
            # refuses it (TEMPORARY_FAILURE: it is closing the old SA). Its new SA
            # stands (``outcome``); nothing failed.
            return
        notify = as_notify(refusal.notify_type)
        wanted = wanted_group(refusal.data)
        if (
            notify is NotifyType.INVALID_KE_PAYLOAD
            and not self._retry
            and wanted is not None
            and wanted != sent
            and wanted in proposal_groups(self._offer)
        ):
            # RFC 7296 1.3: a new exchange with the group asked for.
            group = KeyExchangeMethod(wanted)

            def retry(sa: IkeSa) -> ExchangeTask | None:
                return IkeRekey(sa, group, retry=True)

            self.follow_up = retry
            return
        self._sa.events.append(
            RekeyFailed(
                None, f"peer refused the IKE SA rekey: {notify_name(refusal.notify_type)}", notify
            )
        )

    def expired(self) -> IkeEvent:
        return PeerUnreachable()


class IkeRekeyResponder:
    """The peer's ``HDR, SK {SA(IKE), Ni, KEi}``; ``new_sa`` is set when we accept."""

    exchange_type: Final = ExchangeType.CREATE_CHILD_SA

    def __init__(self, sa: IkeSa, *, busy: bool = False, collision: IkeRekey | None = None) -> None:
        """Args:
        sa: the IKE SA the peer rekeys.
        busy: refuse with TEMPORARY_FAILURE (RFC 7296 2.25.2).
        collision: our own ``IkeRekey`` of ``sa``, in flight: the new SA goes
            to its ``passive`` (RFC 7296 2.8.2), not to ``new_sa``.
        """
        self._sa = sa
        self._busy = busy or (collision is not None and collision.passive is not None)
        self._collision = collision
        self._response: list[Payload] = []
        self.new_sa: IkeSa | None = None

    def process_r(self, payloads: list[Payload]) -> None:
        """Choose, derive and prepare ``SA, Nr, KEr``, or the refusal (the IKE SA stands).

        Raises:
            RemoteProtocolError: payloads missing, or an unusable KEi.
        """
        try:
            self._response = self._negotiate(payloads)
        except LocalProtocolError as refusal:
            notify = refusal.notify or NotifyType.NO_PROPOSAL_CHOSEN
            self._response = [Notify(notify, refusal.notify_data)]

    def build_r(self, message_id: int) -> bytes:
        """``<-- HDR, SK {SA(new SPIr), Nr, KEr}``, sealed under the old IKE SA."""
        header = self._sa.header(ExchangeType.CREATE_CHILD_SA, message_id, response=True)
        return self._sa.seal(header, self._response)

    def _negotiate(self, payloads: list[Payload]) -> list[Payload]:
        sa = self._sa
        assert sa.ike is not None
        assert sa.keys is not None
        if self._busy:
            # RFC 7296 2.25.2 (closing), and state.py rule 7 (another exchange of ours).
            raise LocalProtocolError(
                "busy: not rekeying the IKE SA now", NotifyType.TEMPORARY_FAILURE
            )
        sa_payload = first(payloads, SecurityAssociation)
        nonce = first(payloads, Nonce)
        ke = first(payloads, KeyExchange)
        if sa_payload is None or nonce is None or ke is None:
            raise RemoteProtocolError(
                "IKE SA rekey without SA, Ni or KEi", NotifyType.INVALID_SYNTAX
            )
        offered = SecurityAssociation(
            tuple(p for p in sa_payload.proposals if p.protocol_id == ProtocolId.IKE)
        )
        chosen = select_proposal(
            offered, ike_proposals(sa.config.ike_proposals), prefer_group=ke.group
        )
        ike = ike_algorithms(chosen)
        if len(chosen.spi) != 8 or chosen.spi == ZERO_SPI:
            raise RemoteProtocolError("IKE SA rekey without a new SPI", NotifyType.INVALID_SYNTAX)
        if ike.group != ke.group:
            raise invalid_ke(ike.group, ke.group)  # RFC 7296 1.3
        dh = key_exchange.KeyExchange.generate(ike.group, sa.rng)
        g_ir = dh.shared_secret(ke.data)
        spi_r = new_ike_spi(sa.rng)
        nr = sa.rng(defaults.NONCE_LEN)
        new_sa = sa.rekeyed(is_initiator=False, spi_i=chosen.spi, spi_r=spi_r, ni=nonce.data, nr=nr)
        new_sa.derive_rekeyed_keys(ike, sa.keys.sk_d, sa.ike, g_ir)  # RFC 7296 2.18
        if self._collision is not None:
            self._collision.passive = new_sa  # RFC 7296 2.8.2: decided on our own answer
        else:
            self.new_sa = new_sa
        return [
            SecurityAssociation((replace(chosen, spi=spi_r),)),
            Nonce(nr),
            KeyExchange(ike.group, dh.public_value),
        ]
