"""IkeSession: the sans-IO IKEv2 object for both roles (RFC 7296 1.2-1.4, 2.1-2.23).

The driver only: message intake, errors caught once, timers, commands and the
event queue. The exchanges themselves are tasks (``tasks/``), the legal state
moves and their theory are in ``state.py``, message IDs, retransmission and
the response cache in ``exchanges.py``.

    IKE_SA_INIT    tasks/ike_init.py   HDR, SAi1, KEi, Ni -->  <-- HDR, SAr1, KEr, Nr
    IKE_AUTH       tasks/ike_auth.py   HDR, SK {IDi, AUTH, CP, SAi2, TSi, TSr} -->
    INFORMATIONAL  tasks/delete.py     HDR, SK {D} -->  <-- HDR, SK {[D]}
                   tasks/dpd.py        HDR, SK {} -->  <-- HDR, SK {}
    CREATE_CHILD_SA tasks/child_rekey.py HDR, SK {N(REKEY_SA), SA, Ni, [KEi,] TSi, TSr} -->
                   tasks/ike_rekey.py  HDR, SK {SA, Ni, KEi} -->

Authentication is PSK only (RFC 7296 2.15). CREATE_CHILD_SA only rekeys
(further Child SAs are refused with NO_ADDITIONAL_SAS); rekey collisions
are refused with TEMPORARY_FAILURE rather than resolved (state.py rule 7).
COOKIE, fragmentation (announced, never used) and certificates are not here
yet.

An IKE SA rekey keeps this object (state.py rule 6): ``_sa``, ``_requests``
and ``_responses`` switch to the new SA, and the old one stays as
``_retiring`` to send or answer its Delete and repeat its cached responses.

Errors are raised deep and caught once, in ``receive_datagram`` (aioquic
shape; RFC 7296 2.21): whatever fails before a message is known to be
genuine (parse errors, a bad ICV) is dropped and counted in ``drops``; a
responder answers a refused request with the error's Notify; an initiator
fails the session with ``IkeSaFailed`` (and, when it rejects the responder's
AUTH, says so in an INFORMATIONAL, RFC 7296 2.21.2).
"""

from __future__ import annotations

import os
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, replace

from common.esp.spi import allocate_spi
from common.ike.constants import ExchangeType, NotifyType, ProtocolId
from common.ike.errors import IkeError, LocalProtocolError
from common.ike.events import IkeEvent, IkeSaDeleted, IkeSaFailed, IkeSaRekeyed
from common.ike.exchanges import Address, Requests, Responses, Timeout
from common.ike.message import IkeHeader, IkeMessage, decode_message, encode_message, peek_header
from common.ike.payloads import Notify, SecurityAssociation
from common.ike.policy import IkeConfiguration, ResponderPolicy
from common.ike.proposals import ike_proposals
from common.ike.state import INFORMATIONAL_STATES, ChildSaState, IkeSaState, transition
from common.ike.tasks.base import (
    ZERO_SPI,
    ChildSa,
    ExchangeTask,
    IkeSa,
    TaskFactory,
    first,
    new_ike_spi,
)
from common.ike.tasks.child_rekey import ChildRekey, ChildRekeyResponder
from common.ike.tasks.delete import ChildDelete, IkeDelete, retire
from common.ike.tasks.dpd import Dpd, Informational, NotifyRequest
from common.ike.tasks.ike_auth import IkeAuth
from common.ike.tasks.ike_init import IkeInit
from common.ike.tasks.ike_rekey import IkeRekey, IkeRekeyResponder

__all__ = ["Address", "IkeSaState", "IkeSession", "Rng"]

Rng = Callable[[int], bytes]


@dataclass(slots=True)
class _Retiring:
    """The IKE SA a rekey replaced, kept until its Delete is done (RFC 7296 2.18).

    Its own message IDs go on (the Delete is the next request on it), and its
    response cache still answers a retransmitted rekey request whose response
    was lost (RFC 7296 2.1).
    """

    sa: IkeSa
    requests: Requests
    responses: Responses
    deleted: bool = False  # the peer's Delete was answered: only the cache still replies


class IkeSession:
    """One IKE SA, initiator or responder, with no I/O.

    Drivers (aioquic ``QuicConnection`` shape):

    - ``initiate(now)``: the initiator's first move;
    - ``receive_datagram(data, addr, now)``: an IKE datagram from ``addr``,
      without the RFC 3948 non-ESP marker;
    - ``handle_timer(now)``: call at ``get_timer()``;
    - ``check_liveness(now)``, ``delete(now)``, ``delete_child(spi, now)``:
      INFORMATIONAL exchanges on an established IKE SA, either role;
    - ``rekey_child(spi, now)``, ``rekey_ike(now)``: CREATE_CHILD_SA rekeys,
      either role (RFC 7296 1.3.2, 1.3.3);
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
        self._sa = IkeSa(
            config=configuration,
            is_initiator=is_initiator,
            local_addr=local_addr,
            remote_addr=remote_addr or ("0.0.0.0", 0),
            policy=policy,
            rng=rng,
            allocate_spi=spi_allocator or (lambda: allocate_spi((), rng=rng)),
        )
        if is_initiator:
            self._sa.spi_i = self._new_ike_spi()
        else:
            self._sa.spi_r = self._new_ike_spi()
        self._state = IkeSaState.INITIAL
        self._requests = Requests()
        self._responses = Responses()
        self._datagrams: list[tuple[bytes, Address]] = []
        self.drops: Counter[str] = Counter()
        self._ike_init = IkeInit(self._sa, ike_proposals(configuration.ike_proposals))
        self._ike_auth = IkeAuth(self._sa)
        self._active: ExchangeTask | None = None  # our INFORMATIONAL / CREATE_CHILD_SA in flight
        self._queued: deque[TaskFactory] = deque()  # waiting for the window (RFC 7296 2.3)
        self._retiring: _Retiring | None = None  # the IKE SA a rekey replaced (rule 6)
        self._answering: IkeHeader | None = None  # the request we may answer with an error
        self._accepted = False  # the datagram being processed passed decoding/decryption
        self._request_addr: Address = self._sa.remote_addr  # where the request came from
        self._request_data = b""

    # --- properties -----------------------------------------------------------------------

    @property
    def state(self) -> IkeSaState:
        return self._state

    @property
    def is_initiator(self) -> bool:
        """Whether we are the current IKE SA's original initiator (RFC 7296 2.2).

        Set by IKE_SA_INIT, and again by each IKE SA rekey: its initiator is
        the new SA's original initiator (RFC 7296 2.18), whatever it was before.
        """
        return self._sa.is_initiator

    @property
    def spi_i(self) -> bytes:
        return self._sa.spi_i

    @property
    def spi_r(self) -> bytes:
        return self._sa.spi_r

    @property
    def remote_addr(self) -> Address:
        """Where the peer is now (port 4500 once NAT-T is in use)."""
        return self._sa.remote_addr

    @property
    def use_nat_t(self) -> bool:
        """Send from UDP 4500 with the non-ESP marker (RFC 7296 2.23, RFC 3948 2.2).

        True once NAT was detected (or encapsulation forced) and the session has
        moved: for the initiator right after IKE_SA_INIT, for the responder from
        the first IKE_AUTH request on, so the IKE_SA_INIT response still goes out
        on port 500.
        """
        return self._sa.nat_t

    # --- driver API -----------------------------------------------------------------------

    def initiate(self, now: float) -> None:
        """Send IKE_SA_INIT: ``HDR, SAi1, KEi, Ni, N(NAT_D)*2, N(FRAG_SUP) -->``."""
        if not self.is_initiator or self._state is not IkeSaState.INITIAL:
            raise RuntimeError("initiate() is for a fresh initiator")
        request = self._ike_init.build_i()
        message_id = self._requests.allocate()
        self._requests.sent(message_id, ExchangeType.IKE_SA_INIT, request, now)
        self._send(request)
        self._move(IkeSaState.SA_INIT_SENT)

    def check_liveness(self, now: float) -> None:
        """Send ``HDR, SK {} -->`` (RFC 7296 1.4, 2.4); an unanswered one ends in
        ``PeerUnreachable``."""
        self._require_established("check_liveness")
        self._start(Dpd, now)

    def delete(self, now: float) -> None:
        """Delete the IKE SA: ``HDR, SK {D(IKE)} -->`` (RFC 7296 1.4.1).

        The session closes with ``IkeSaDeleted`` on the response or when the
        retransmissions run out. Before the IKE SA exists there is nothing to
        tell the peer: the session just closes. A second call does nothing.
        """
        if self._state in (IkeSaState.DELETING, IkeSaState.CLOSED):
            return
        if self._state is not IkeSaState.ESTABLISHED:
            self._close(IkeSaDeleted(by_peer=False))
            return
        self._queued.clear()  # the Delete supersedes whatever was waiting
        self._move(IkeSaState.DELETING)
        self._start(IkeDelete, now)

    def delete_child(self, spi: int, now: float) -> None:
        """Delete the Child SA whose *inbound* SPI is ``spi``: ``HDR, SK {D(ESP)} -->``."""
        self._require_established("delete_child")
        child = self._child(spi)

        def factory(sa: IkeSa) -> ExchangeTask | None:
            # Gone by its turn (the peer's Delete, or our rekey deleted it): nothing to do.
            return ChildDelete(sa, child) if sa.child_sas.get(child.inbound_spi) is child else None

        self._start(factory, now)

    def rekey_child(self, inbound_spi: int, now: float) -> None:
        """Rekey the Child SA whose *inbound* SPI is ``inbound_spi`` (RFC 7296 1.3.3).

        ``HDR, SK {N(REKEY_SA), SA, Ni, [KEi,] TSi, TSr} -->``; on the answer
        ``ChildSaRekeyed``, then our Delete of the old SA and its
        ``ChildSaDeleted``; on a refusal ``RekeyFailed``. A rekey of a Child
        SA that is already being rekeyed or deleted when its turn comes does
        nothing.
        """
        self._require_established("rekey_child")
        child = self._child(inbound_spi)

        def factory(sa: IkeSa) -> ExchangeTask | None:
            alive = sa.child_sas.get(child.inbound_spi) is child
            return (
                ChildRekey(sa, child) if alive and child.state is ChildSaState.INSTALLED else None
            )

        self._start(factory, now)

    def rekey_ike(self, now: float) -> None:
        """Rekey the IKE SA (RFC 7296 1.3.2, 2.18): ``HDR, SK {SA, Ni, KEi} -->``.

        On the answer the session switches to the new SA (``IkeSaRekeyed``)
        and deletes the old one; on a refusal ``RekeyFailed``.
        """
        self._require_established("rekey_ike")
        self._start(IkeRekey, now)

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
            retiring = self._retiring
            if retiring is not None and (header.spi_i, header.spi_r) == (
                retiring.sa.spi_i,
                retiring.sa.spi_r,
            ):
                self._receive_on_retiring(retiring, header, data, addr)
            elif header.response:
                self._receive_response(header, data, now)
            else:
                self._receive_request(header, data, addr)
        except IkeError as error:
            self._on_error(error, header)

    def handle_timer(self, now: float) -> None:
        """Retransmit the outstanding request, or give up (RFC 7296 2.1, 2.4)."""
        if self._state is IkeSaState.CLOSED:
            return
        outcome = self._requests.expire(now)
        if outcome is Timeout.RETRANSMIT:
            assert self._requests.outstanding is not None
            self._send(self._requests.outstanding.datagram)
        elif outcome is Timeout.GIVE_UP:
            if self._active is not None:
                self._close(self._active.expired())
            else:
                self._fail("peer unreachable", None)
        if self._retiring is not None:  # (emptied by _close, so nothing after a give-up)
            # RFC 7296 2.4: a Delete of the old IKE SA unanswered at the end is done anyway.
            requests = self._retiring.requests
            outcome = requests.expire(now)
            if outcome is Timeout.RETRANSMIT:
                assert requests.outstanding is not None
                self._send(requests.outstanding.datagram)
            elif outcome is Timeout.GIVE_UP:
                self._retiring = None

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """The datagrams queued since the last call, each with its destination."""
        datagrams, self._datagrams = self._datagrams, []
        return datagrams

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must be called next, or None."""
        if self._state is IkeSaState.CLOSED:
            return None
        deadlines = [self._requests.deadline()]
        if self._retiring is not None:
            deadlines.append(self._retiring.requests.deadline())
        return min((d for d in deadlines if d is not None), default=None)

    def next_event(self) -> IkeEvent | None:
        """The oldest undelivered event, or None."""
        events = self._sa.events
        return events.popleft() if events else None

    # --- requests from the peer -----------------------------------------------------------

    def _receive_request(self, header: IkeHeader, data: bytes, addr: Address) -> None:
        self._request_addr = addr
        self._request_data = data
        if self._responses.is_retransmission(header.message_id, data):
            # RFC 7296 2.1: answer a retransmitted request from the cache, unprocessed.
            self.drops["retransmitted request"] += 1
            for datagram in self._responses.cached():
                self._datagrams.append((datagram, addr))
            return
        informational = self._state in INFORMATIONAL_STATES
        if self._state is IkeSaState.CLOSED or (self.is_initiator and not informational):
            self.drops["unexpected request"] += 1
            return
        if not self._responses.is_next(header.message_id):
            self.drops["message id outside the window"] += 1  # RFC 7296 2.3
            return
        ours = (header.spi_i, header.spi_r) == (self._sa.spi_i, self._sa.spi_r)
        exchange = header.exchange_type
        if self._state is IkeSaState.INITIAL and exchange == ExchangeType.IKE_SA_INIT:
            self._process_ike_sa_init_request(data, addr)
        elif self._state is IkeSaState.SA_INIT_DONE and exchange == ExchangeType.IKE_AUTH and ours:
            self._process_ike_auth_request(header, data, addr)
        elif (
            informational
            and exchange in (ExchangeType.INFORMATIONAL, ExchangeType.CREATE_CHILD_SA)
            and ours
            and header.initiator != self.is_initiator  # RFC 7296 3.1: the I flag is the peer's
        ):
            if exchange == ExchangeType.INFORMATIONAL:
                self._process_informational_request(header, data)
            else:
                self._process_create_child_sa_request(header, data)
        else:
            self.drops["unexpected exchange"] += 1

    def _process_ike_sa_init_request(self, data: bytes, addr: Address) -> None:
        """``HDR, SAi1, KEi, Ni -->``, then ``<-- HDR, SAr1, KEr, Nr``."""
        message = decode_message(data)
        self._answering = message.header  # RFC 7296 2.21.1: IKE_SA_INIT errors are answered
        self._ike_init.process_r(message, data, addr)
        self._respond(data, self._ike_init.build_r())
        self._move(IkeSaState.SA_INIT_DONE)

    def _process_ike_auth_request(self, header: IkeHeader, data: bytes, addr: Address) -> None:
        """``HDR, SK {IDi, AUTH, CP, SAi2, TSi, TSr} -->``, then IDr, AUTH and the child."""
        payloads = self._sa.open(data)
        self._answering = header  # authenticated by the SK ICV: errors get a Notify
        if self._sa.nat_t_pending:
            self._sa.nat_t = True  # the peer moved to 4500 (RFC 7296 2.23); follow it
        self._sa.remote_addr = addr  # RFC 7296 2.11: answer where the request came from
        self._ike_auth.process_r(payloads)
        self._move(IkeSaState.ESTABLISHED)
        self._respond(data, self._ike_auth.build_r(header.message_id))

    def _process_informational_request(self, header: IkeHeader, data: bytes) -> None:
        """``HDR, SK {[D], [N]} -->``, then ``<-- HDR, SK {[D]}``; maybe close after."""
        payloads = self._sa.open(data)
        self._answering = header
        task = Informational(self._sa)
        closing = task.process_r(payloads)
        self._respond(data, task.build_r(header.message_id))
        if closing is not None:
            self._close(closing)

    def _process_create_child_sa_request(self, header: IkeHeader, data: bytes) -> None:
        """``HDR, SK {[N(REKEY_SA),] SA, Ni, [KEi,] [TSi, TSr]} -->``: a rekey, or refused."""
        payloads = self._sa.open(data)
        self._answering = header
        sa_payload = first(payloads, SecurityAssociation)
        rekey = next(
            (p for p in payloads if isinstance(p, Notify) and p.notify_type == NotifyType.REKEY_SA),
            None,
        )
        closing = self._state is IkeSaState.DELETING
        if sa_payload is not None and any(
            p.protocol_id == ProtocolId.IKE for p in sa_payload.proposals
        ):
            busy = (
                closing
                or self._requests.outstanding is not None
                or (self._retiring is not None and self._retiring.requests.outstanding is not None)
            )
            ike_task = IkeRekeyResponder(self._sa, busy=busy)
            ike_task.process_r(payloads)
            self._respond(data, ike_task.build_r(header.message_id))
            if ike_task.new_sa is not None:
                self._switch(ike_task.new_sa)
        elif rekey is not None:
            child_task = ChildRekeyResponder(self._sa, closing=closing)
            child_task.process_r(payloads, rekey)
            self._respond(data, child_task.build_r(header.message_id))
        else:
            # RFC 7296 1.3.1: we make no Child SA beyond the first; rekeys only.
            self._send_error_response(header, NotifyType.NO_ADDITIONAL_SAS, b"")

    def _receive_on_retiring(
        self, retiring: _Retiring, header: IkeHeader, data: bytes, addr: Address
    ) -> None:
        """A message for the IKE SA a rekey replaced: its Delete, or a retransmission."""
        old = retiring.sa
        if header.initiator == old.is_initiator:  # RFC 7296 3.1: the I flag is the peer's
            self.drops["unexpected message for the old IKE SA"] += 1
            return
        if header.response:
            outstanding = retiring.requests.outstanding
            if (
                outstanding is None
                or not retiring.requests.matches(header.message_id)
                or header.exchange_type != outstanding.exchange_type
            ):
                self.drops["unexpected response"] += 1
                return
            old.open(data)  # <-- HDR, SK {}: genuine, so the old IKE SA is gone
            retiring.requests.answered()
            self._retiring = None
            return
        if retiring.responses.is_retransmission(header.message_id, data):
            # RFC 7296 2.1: e.g. the rekey request whose response was lost.
            self.drops["retransmitted request"] += 1
            for datagram in retiring.responses.cached():
                self._datagrams.append((datagram, addr))
            return
        if (
            retiring.deleted
            or header.exchange_type != ExchangeType.INFORMATIONAL
            or not retiring.responses.is_next(header.message_id)
        ):
            self.drops["unexpected exchange"] += 1
            return
        # HDR, SK {D(IKE)} --> for the old SA: answer; the session itself lives on.
        payloads = old.open(data)
        task = Informational(old)
        retiring.deleted = isinstance(task.process_r(payloads), IkeSaDeleted)
        response = task.build_r(header.message_id)
        retiring.responses.answered(data, (response,))
        self._datagrams.append((response, addr))

    # --- responses to our requests --------------------------------------------------------

    def _receive_response(self, header: IkeHeader, data: bytes, now: float) -> None:
        outstanding = self._requests.outstanding
        if (
            outstanding is None
            or header.spi_i != self._sa.spi_i
            or header.initiator == self.is_initiator  # RFC 7296 3.1: the I flag is the peer's
            or not self._requests.matches(header.message_id)
            or header.exchange_type != outstanding.exchange_type
        ):
            self.drops["unexpected response"] += 1
            return
        if self._state is IkeSaState.SA_INIT_SENT:
            self._process_ike_sa_init_response(data, now)
        elif header.spi_r != self._sa.spi_r:
            self.drops["unexpected response"] += 1
        elif self._state is IkeSaState.AUTH_SENT:
            self._process_ike_auth_response(data, now)
        elif self._active is not None:
            self._process_task_response(data, now)
        else:
            self.drops["unexpected response"] += 1

    def _process_ike_sa_init_response(self, data: bytes, now: float) -> None:
        """``<-- HDR, SAr1, KEr, Nr`` (or an error), then ``HDR, SK {IDi, AUTH, ...} -->``."""
        message = decode_message(data)
        self._accepted = True
        retry = self._ike_init.process_i(message, data)
        if retry is not None:
            self._requests.resend(retry, now)
            self._send(retry)
            return
        self._requests.answered()
        message_id = self._requests.allocate()
        request = self._ike_auth.build_i(message_id)
        self._requests.sent(message_id, ExchangeType.IKE_AUTH, request, now)
        self._send(request)
        self._move(IkeSaState.AUTH_SENT)

    def _process_ike_auth_response(self, data: bytes, now: float) -> None:
        """``<-- HDR, SK {IDr, AUTH, CP(CFG_REPLY), SAr2, TSi, TSr}`` (or an error Notify)."""
        payloads = self._sa.open(data)
        self._accepted = True
        self._requests.answered()
        self._ike_auth.process_i(payloads)
        self._move(IkeSaState.ESTABLISHED)

    def _process_task_response(self, data: bytes, now: float) -> None:
        """``<-- HDR, SK {...}`` for our INFORMATIONAL or CREATE_CHILD_SA; then what follows."""
        payloads = self._sa.open(data)
        self._accepted = True
        self._requests.answered()
        task, self._active = self._active, None
        assert task is not None
        closing = task.process_i(payloads)
        if closing is not None:
            self._close(closing)
            return
        if isinstance(task, IkeRekey) and task.new_sa is not None:
            self._switch(task.new_sa)
            self._delete_retiring(now)
        if isinstance(task, (ChildRekey, IkeRekey)) and task.follow_up is not None:
            self._queued.appendleft(task.follow_up)  # the old SA's Delete, or the KE retry
        self._pump(now)

    def _switch(self, new_sa: IkeSa) -> None:
        """Go on under the rekeyed IKE SA (RFC 7296 2.18, state.py rule 6).

        Child SAs move over; message IDs restart at 0 both ways; the old SA
        is kept as ``_retiring`` for its Delete and its response cache.
        """
        old = self._sa
        new_sa.child_sas, old.child_sas = old.child_sas, {}
        self._retiring = _Retiring(old, self._requests, self._responses)
        self._sa = new_sa
        self._requests = Requests()
        self._responses = Responses()
        self._sa.events.append(IkeSaRekeyed(old.spi_i, old.spi_r, new_sa.spi_i, new_sa.spi_r))

    def _delete_retiring(self, now: float) -> None:
        """The rekey initiator deletes the old IKE SA: ``HDR, SK {D(IKE)} -->`` under it."""
        assert self._retiring is not None
        old, requests = self._retiring.sa, self._retiring.requests
        message_id = requests.allocate()
        request = IkeDelete(old).build_i(message_id)
        requests.sent(message_id, ExchangeType.INFORMATIONAL, request, now)
        self._send(request)

    # --- errors, commands, closing --------------------------------------------------------

    def _on_error(self, error: IkeError, header: IkeHeader) -> None:
        """The one place protocol errors become drops, Notify answers or failures."""
        if self._answering is not None:
            # We are the responder and the request was genuine enough to answer.
            if error.notify is not None:
                self._send_error_response(self._answering, error.notify, error.notify_data)
            if error.notify is not NotifyType.INVALID_KE_PAYLOAD:  # RFC 7296 1.2: stateless
                self._fail(str(error), error.notify)
        elif self._accepted and header.response:
            if (
                isinstance(error, LocalProtocolError)
                and error.notify is NotifyType.AUTHENTICATION_FAILED
                and header.exchange_type == ExchangeType.IKE_AUTH
            ):
                # RFC 7296 2.21.2: tell the responder in a separate INFORMATIONAL.
                self._send(NotifyRequest(self._sa, error.notify).build_i(self._requests.allocate()))
            self._fail(str(error), error.notify)
        else:
            # RFC 7296 2.21: unauthenticated junk is dropped, never answered.
            self.drops[type(error).__name__] += 1

    def _require_established(self, command: str) -> None:
        if self._state is not IkeSaState.ESTABLISHED:
            raise RuntimeError(f"{command}() needs an established IKE SA, not {self._state.name}")

    def _child(self, inbound_spi: int) -> ChildSa:
        child = self._sa.child_sas.get(inbound_spi)
        if child is None:
            raise RuntimeError(f"no Child SA with inbound SPI {inbound_spi:#010x}")
        return child

    def _start(self, factory: TaskFactory, now: float) -> None:
        self._queued.append(factory)
        self._pump(now)

    def _pump(self, now: float) -> None:
        """Send the next queued request once the window is free (RFC 7296 2.3)."""
        while self._requests.outstanding is None and self._queued:
            task = self._queued.popleft()(self._sa)
            if task is None:
                continue  # overtaken: its Child SA is gone or already being replaced
            message_id = self._requests.allocate()
            request = task.build_i(message_id)
            self._requests.sent(message_id, task.exchange_type, request, now)
            self._send(request)
            self._active = task

    def _move(self, new: IkeSaState) -> None:
        self._state = transition(self._state, new)

    def _fail(self, reason: str, notify: NotifyType | None) -> None:
        self._close(IkeSaFailed(reason, notify))

    def _close(self, event: IkeEvent) -> None:
        """Close for good: Child SAs first (RFC 7296 1.4.1), then ``event``; no timer."""
        if self._state is IkeSaState.CLOSED:
            return
        for child in list(self._sa.child_sas.values()):
            retire(self._sa, child)
        self._move(IkeSaState.CLOSED)
        self._requests.outstanding = None
        if self._retiring is not None:
            self._retiring.requests.outstanding = None
        self._active = None
        self._queued.clear()
        self._sa.events.append(event)

    # --- sending --------------------------------------------------------------------------

    def _send(self, datagram: bytes) -> None:
        self._datagrams.append((datagram, self._sa.remote_addr))

    def _respond(self, request: bytes, response: bytes) -> None:
        """Send ``response`` where ``request`` came from (RFC 7296 2.11) and cache it."""
        self._responses.answered(request, (response,))
        self._datagrams.append((response, self._request_addr))

    def _send_error_response(self, request: IkeHeader, notify: NotifyType, data: bytes) -> None:
        """A Notify-only response to ``request``: plain in IKE_SA_INIT, else protected."""
        if request.exchange_type == ExchangeType.IKE_SA_INIT:
            # RFC 7296 1.2: HDR(A,0), N(...); not cached, the responder keeps no state.
            header = IkeHeader(request.spi_i, ZERO_SPI, ExchangeType.IKE_SA_INIT, 0, False, True)
            message = IkeMessage(header, (Notify(notify, data),))
            self._datagrams.append((encode_message(message), self._request_addr))
            return
        header = replace(request, initiator=self.is_initiator, response=True)
        self._respond(self._request_data, self._sa.seal(header, [Notify(notify, data)]))

    def _new_ike_spi(self) -> bytes:
        return new_ike_spi(self._sa.rng)  # RFC 7296 3.1: an SPI is never zero
