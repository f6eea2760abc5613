"""Rekeying a Child SA with CREATE_CHILD_SA (RFC 7296 1.3.3, 2.8, 2.17, 2.25.1).

::

    HDR, SK {N(REKEY_SA), SA, Ni, [KEi,] TSi, TSr}  -->
                 <--  HDR, SK {SA, Nr, [KEr,] TSi, TSr}
                 <--  HDR, SK {N(CHILD_SA_NOT_FOUND | TEMPORARY_FAILURE |
                                 NO_PROPOSAL_CHOSEN | INVALID_KE_PAYLOAD | TS_UNACCEPTABLE)}
    then, by the rekey initiator:
    HDR, SK {D(ESP, old inbound SPI)}  -->  <--  HDR, SK {D(ESP, its old inbound SPI)}

strongSwan's ``child_rekey`` (with ``child_create``'s CREATE_CHILD_SA half).
REKEY_SA carries the SPI the *sender* receives on (RFC 7296 1.3.3), so the
responder finds the Child SA by its own outbound SPI. KEYMAT is
prf+(SK_d, [g^ir (new) |] Ni | Nr) with this exchange's nonces, "i" being the
rekey initiator (RFC 7296 2.17). Make-before-break (2.8): the new SA is
reported at once (``ChildSaRekeyed``); the old one is deleted afterwards by
the initiator, through the ordinary ``delete.ChildDelete``.

A refusal never touches the IKE SA (RFC 7296 2.21.3): the responder answers
with the Notify, the initiator reports ``RekeyFailed``. INVALID_KE_PAYLOAD
is retried once, in a new exchange, with the group asked for (RFC 7296 1.3).

Collisions (RFC 7296 2.8.1, 2.25.1; state.py rule 7, strongSwan's
``child_rekey`` collision handling). Both sides rekeying the same SA::

    A: N(REKEY_SA, old), SA, Ni1 -->      <-- B: N(REKEY_SA, old), SA, Ni2
    A: <-- SA, Nr1 (answers B's)          B: SA, Nr2 --> (answers A's)

Each answers the other's request as usual (``ChildRekeyResponder`` notes the
new SA on the old one, ``ChildSa.peer_rekey``), so two new SAs exist. When
its own answer arrives each side compares min(Ni, Nr) of the two exchanges:
the SA made by the exchange with the lowest nonce is redundant and its
initiator deletes it; the other side's initiator deletes the old SA. Each
new SA was reported with ``ChildSaRekeyed``; the redundant one and the old
one each end with ``ChildSaDeleted``. A side that finished its rekey before
the peer's request came answers it TEMPORARY_FAILURE (old SA DELETING) or
CHILD_SA_NOT_FOUND (gone); the peer keeps our new SA and waits for our Delete
of the old one, with no ``RekeyFailed``. A rekey whose SA the peer deleted
meanwhile is dropped quietly.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final

from common.ike import defaults, key_exchange
from common.ike.constants import ExchangeType, KeyExchangeMethod, NotifyType, ProtocolId
from common.ike.errors import LocalProtocolError, RemoteProtocolError
from common.ike.events import IkeEvent, PeerUnreachable, RekeyFailed
from common.ike.keys import child_sa_keymat
from common.ike.message import Payload
from common.ike.payloads import (
    KeyExchange,
    Nonce,
    Notify,
    SecurityAssociation,
    TsInitiator,
    TsResponder,
)
from common.ike.proposals import esp_algorithms, select_proposal, validate_chosen
from common.ike.state import ChildSaState
from common.ike.tasks.base import (
    ESP_SPI,
    ChildSa,
    ExchangeTask,
    IkeSa,
    TaskFactory,
    as_notify,
    child_established,
    first,
    notify_name,
)
from common.ike.tasks.child_create import (
    check_narrowed,
    child_offer,
    invalid_ke,
    narrow_to,
    proposal_group,
    wanted_group,
)
from common.ike.tasks.delete import ChildDelete


class ChildRekey:
    """We rekey one Child SA, named by our inbound SPI."""

    exchange_type: Final = ExchangeType.CREATE_CHILD_SA

    def __init__(
        self,
        sa: IkeSa,
        child: ChildSa,
        group: KeyExchangeMethod | None = None,
        *,
        retry: bool = False,
    ) -> None:
        self._sa = sa
        self._child = child
        self._group = sa.config.pfs_group if group is None else group
        self._retry = retry
        self._inbound_spi = 0
        self._ni = b""
        self._dh: key_exchange.KeyExchange | None = None
        self.follow_up: TaskFactory | None = None  # queued first by the driver

    def build_i(self, message_id: int) -> bytes:
        """``HDR, SK {N(REKEY_SA), SA, Ni, [KEi,] TSi, TSr} -->``."""
        sa, child = self._sa, self._child
        if child.state is ChildSaState.INSTALLED:
            child.move(ChildSaState.REKEYING)
        self._inbound_spi = sa.allocate_spi()
        self._ni = sa.rng(defaults.NONCE_LEN)
        offer = child_offer(sa.config.esp_proposals, ESP_SPI.pack(self._inbound_spi), self._group)
        payloads: list[Payload] = [
            # RFC 7296 1.3.3: the SPI we receive on for the SA being rekeyed.
            Notify(NotifyType.REKEY_SA, b"", ProtocolId.ESP, ESP_SPI.pack(child.inbound_spi)),
            SecurityAssociation(offer),
            Nonce(self._ni),
        ]
        if self._group is not None:
            self._dh = key_exchange.KeyExchange.generate(self._group, sa.rng)
            payloads.append(KeyExchange(self._group, self._dh.public_value))
        payloads += [TsInitiator(child.local_ts), TsResponder(child.remote_ts)]
        header = sa.header(ExchangeType.CREATE_CHILD_SA, message_id, response=False)
        return sa.seal(header, payloads)

    def process_i(self, payloads: list[Payload]) -> IkeEvent | None:
        """``<-- HDR, SK {SA, Nr, [KEr,] TSi, TSr}`` (or a refusal): install, then delete the old.

        Raises:
            RemoteProtocolError: an answer we cannot use (the driver fails the IKE SA).
        """
        refusal = next((p for p in payloads if isinstance(p, Notify) and p.is_error), None)
        if refusal is not None:
            self._process_refusal(refusal)
            return None
        sa, child = self._sa, self._child
        assert sa.ike is not None
        assert sa.keys is not None
        sa_payload = first(payloads, SecurityAssociation)
        nonce = first(payloads, Nonce)
        tsi = first(payloads, TsInitiator)
        tsr = first(payloads, TsResponder)
        if sa_payload is None or nonce is None or tsi is None or tsr is None:
            raise RemoteProtocolError("CREATE_CHILD_SA response without SA, Nr, TSi or TSr")
        offer = child_offer(sa.config.esp_proposals, ESP_SPI.pack(self._inbound_spi), self._group)
        chosen = validate_chosen(sa_payload, offer)
        esp = esp_algorithms(chosen)
        if len(chosen.spi) != 4:
            raise RemoteProtocolError("ESP proposal without a 4-octet SPI")
        g_ir = None
        if self._dh is not None:
            ke = first(payloads, KeyExchange)
            if ke is None or ke.group != self._dh.group:
                raise RemoteProtocolError("CREATE_CHILD_SA response without our KE group")
            g_ir = self._dh.shared_secret(ke.data)
            self._dh = None  # RFC 7296 2.12: the ephemeral value is done with
        ts_i, ts_r = check_narrowed(tsi, tsr, child.local_ts, child.remote_ts)
        # RFC 7296 2.17: KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr); we are "i".
        keymat_i, keymat_r = child_sa_keymat(
            sa.ike.prf, sa.keys.sk_d, self._ni, nonce.data, esp.suite, g_ir=g_ir
        )
        outbound_spi = ESP_SPI.unpack(chosen.spi)[0]
        new = sa.add_rekeyed_child(
            child,
            child_established(esp, self._inbound_spi, outbound_spi, keymat_r, keymat_i, ts_i, ts_r),
            initiated_by_us=True,
        )
        passive = child.peer_rekey
        if passive is not None and passive.state is not ChildSaState.DELETED:
            # RFC 7296 2.8.1: "the SA created with the lowest of the four nonces used in
            # the two exchanges" is redundant and closed "by the endpoint that created
            # it". Nonces compare octet by octet, a prefix lower: Python's bytes order.
            if min(self._ni, nonce.data) < child.peer_rekey_nonce:
                # Ours is redundant: we delete it; the peer, which made the surviving
                # SA, deletes the old one (2.8), so we wait for that.
                if child.state is ChildSaState.REKEYING:
                    child.move(ChildSaState.REKEYED)
                self.follow_up = _delete(new)
                return None
            if passive.state is ChildSaState.INSTALLED:
                passive.move(ChildSaState.REKEYED)  # the peer's redundant SA: it deletes it
        if child.state is ChildSaState.REKEYING:
            # RFC 7296 2.8: the rekey initiator deletes the old SA once the new one is up.
            child.move(ChildSaState.DELETING)
            self.follow_up = _delete(child)
        return None

    def _process_refusal(self, refusal: Notify) -> None:
        child = self._child
        passive = child.peer_rekey
        if passive is not None and passive.state is not ChildSaState.DELETED:
            # RFC 7296 2.8.1, 2.25.1: the peer rekeyed this SA too and finished before
            # our request came (TEMPORARY_FAILURE: it is deleting the old SA;
            # CHILD_SA_NOT_FOUND: deleted). Its new SA stands; its Delete of the old
            # one is on the way. Nothing failed, so no RekeyFailed.
            if child.state is ChildSaState.REKEYING:
                child.move(ChildSaState.REKEYED)
            return
        if child.state is ChildSaState.DELETED:
            # RFC 7296 2.25.1: the peer deleted the SA while our rekey was in flight;
            # there is nothing left to rekey, nor to report beyond its ChildSaDeleted.
            return
        notify = as_notify(refusal.notify_type)
        wanted = wanted_group(refusal.data)
        if (
            notify is NotifyType.INVALID_KE_PAYLOAD
            and not self._retry
            and self._group is not None
            and wanted is not None
            and wanted != self._group
            and wanted in key_exchange.SUPPORTED_GROUPS
        ):
            # RFC 7296 1.3: repeat the request, in a new exchange, with the group asked for.
            group = KeyExchangeMethod(wanted)
            self.follow_up = _retry(child, group)
            return
        if child.state is ChildSaState.REKEYING:
            child.move(ChildSaState.INSTALLED)
        self._sa.events.append(
            RekeyFailed(
                child.inbound_spi,
                f"peer refused the Child SA rekey: {notify_name(refusal.notify_type)}",
                notify,
            )
        )

    def expired(self) -> IkeEvent:
        return PeerUnreachable()


def _delete(child: ChildSa) -> TaskFactory:
    """``HDR, SK {D(ESP, inbound SPI of child)} -->``: the old SA, or our redundant one."""

    def factory(sa: IkeSa) -> ExchangeTask | None:
        alive = sa.child_sas.get(child.inbound_spi) is child
        return ChildDelete(sa, child) if alive else None

    return factory


def _retry(child: ChildSa, group: KeyExchangeMethod) -> TaskFactory:
    def factory(sa: IkeSa) -> ExchangeTask | None:
        alive = sa.child_sas.get(child.inbound_spi) is child
        return ChildRekey(sa, child, group, retry=True) if alive else None

    return factory


class ChildRekeyResponder:
    """The peer's ``HDR, SK {N(REKEY_SA), SA, Ni, [KEi,] TSi, TSr}``."""

    exchange_type: Final = ExchangeType.CREATE_CHILD_SA

    def __init__(self, sa: IkeSa, *, closing: bool = False) -> None:
        self._sa = sa
        self._closing = closing  # our Delete of the IKE SA is in flight
        self._response: list[Payload] = []

    def process_r(self, payloads: list[Payload], rekey: Notify) -> None:
        """Make the new Child SA, or prepare the refusal (the IKE SA stands, RFC 7296 2.21.3).

        Raises:
            RemoteProtocolError: payloads missing, or an unusable KEi.
        """
        try:
            self._response = self._negotiate(payloads, rekey)
        except LocalProtocolError as refusal:
            notify = refusal.notify or NotifyType.NO_PROPOSAL_CHOSEN
            self._response = [Notify(notify, refusal.notify_data)]

    def build_r(self, message_id: int) -> bytes:
        """``<-- HDR, SK {SA, Nr, [KEr,] TSi, TSr}`` or ``<-- HDR, SK {N(error)}``."""
        header = self._sa.header(ExchangeType.CREATE_CHILD_SA, message_id, response=True)
        return self._sa.seal(header, self._response)

    def _negotiate(self, payloads: list[Payload], rekey: Notify) -> list[Payload]:
        sa = self._sa
        assert sa.ike is not None
        assert sa.keys is not None
        child = None
        if rekey.protocol_id == ProtocolId.ESP and len(rekey.spi) == 4:
            # RFC 7296 1.3.3: the peer's inbound SPI, our outbound one.
            outbound_spi = ESP_SPI.unpack(rekey.spi)[0]
            child = next((c for c in sa.child_sas.values() if c.outbound_spi == outbound_spi), None)
        if child is None:
            # RFC 7296 2.25.1: "a Child SA that does not exist".
            raise LocalProtocolError("REKEY_SA names no Child SA", NotifyType.CHILD_SA_NOT_FOUND)
        if (
            self._closing
            or child.state in (ChildSaState.DELETING, ChildSaState.REKEYED)
            or child.peer_rekey is not None
        ):
            # RFC 7296 2.25.1: an SA we are closing (or the IKE SA is), or one already
            # replaced whose Delete is coming: "try again later" (TEMPORARY_FAILURE).
            raise LocalProtocolError(
                f"Child SA is {child.state.name}", NotifyType.TEMPORARY_FAILURE
            )
        sa_payload = first(payloads, SecurityAssociation)
        nonce = first(payloads, Nonce)
        tsi = first(payloads, TsInitiator)
        tsr = first(payloads, TsResponder)
        if sa_payload is None or nonce is None or tsi is None or tsr is None:
            raise RemoteProtocolError(
                "CREATE_CHILD_SA without SA, Ni, TSi or TSr", NotifyType.INVALID_SYNTAX
            )
        ke = first(payloads, KeyExchange)
        ours = child_offer(sa.config.esp_proposals, bytes(4), sa.config.pfs_group)
        chosen = select_proposal(sa_payload, ours, prefer_group=None if ke is None else ke.group)
        esp = esp_algorithms(chosen)
        if len(chosen.spi) != 4:
            raise LocalProtocolError(
                "ESP proposal without a 4-octet SPI", NotifyType.INVALID_SYNTAX
            )
        group = proposal_group(chosen)
        dh = None
        g_ir = None
        if group is not None:
            if ke is None or ke.group != group:
                raise invalid_ke(group, None if ke is None else ke.group)  # RFC 7296 1.3
            dh = key_exchange.KeyExchange.generate(group, sa.rng)
            g_ir = dh.shared_secret(ke.data)
        ts_i, ts_r = narrow_to(tsi, tsr, child.remote_ts, child.local_ts)
        nr = sa.rng(defaults.NONCE_LEN)
        inbound_spi = sa.allocate_spi()
        # RFC 7296 2.17: KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr); the peer is "i".
        keymat_i, keymat_r = child_sa_keymat(
            sa.ike.prf, sa.keys.sk_d, nonce.data, nr, esp.suite, g_ir=g_ir
        )
        outbound_spi = ESP_SPI.unpack(chosen.spi)[0]
        new = sa.add_rekeyed_child(
            child,
            child_established(esp, inbound_spi, outbound_spi, keymat_i, keymat_r, ts_r, ts_i),
            initiated_by_us=False,
        )
        if child.state is ChildSaState.REKEYING:
            # RFC 7296 2.8.1: we are rekeying it too. Answer as usual and keep what
            # decides between the two new SAs once our own answer comes (ChildRekey).
            child.peer_rekey = new
            child.peer_rekey_nonce = min(nonce.data, nr)
        else:
            child.move(ChildSaState.REKEYED)  # the peer, the rekey initiator, deletes it (2.8)
        response: list[Payload] = [
            SecurityAssociation((replace(chosen, spi=ESP_SPI.pack(inbound_spi)),)),
            Nonce(nr),
        ]
        if dh is not None:
            response.append(KeyExchange(dh.group, dh.public_value))
        response += [TsInitiator(tuple(ts_i)), TsResponder(tuple(ts_r))]
        return response
