"""IkeSession's receiving half: intake, dispatch, the one error catch (RFC 7296 2.1-2.3, 2.21).

Every IKE datagram goes through ``receive_datagram``, which sorts it:

::

    SPIs of the IKE SA a rekey replaced  --> retiring.RetiringSa.receive
    request (R flag clear)               --> _receive_request:  response cache,
        window (message ID), state and exchange type  --> _process_<exchange>_request
    response (R flag set)                --> _receive_response: our outstanding
        request (SPIs, I flag, message ID, exchange)  --> _process_<exchange>_response

and then hands the payloads to the exchange's task (``tasks/``). A message
that came as SKF fragments (RFC 7383) passes the same checks fragment by
fragment; each fragment is authenticated and kept (``_open``) and the
exchange is processed once, when the last one is in. Errors are
raised deep and caught once, here (aioquic shape; RFC 7296 2.21): whatever
fails before a message is known to be genuine (parse errors, a bad ICV) is
dropped and counted in ``drops``; a responder answers a refused request with
the error's Notify; an initiator fails the session with ``IkeSaFailed`` (and,
when it rejects the responder's AUTH, says so in an INFORMATIONAL, RFC 7296
2.21.2).

This half also makes the moves an arriving message can cause: the state
transitions, the switch to a rekeyed IKE SA (state.py rule 6) and closing.
The other half, ``session.IkeSession``, holds the public API: construction,
commands and their queue (``_pump``), timers and the output queues.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter, deque
from dataclasses import replace

from common.ike.constants import ExchangeType, NotifyType, ProtocolId
from common.ike.errors import IkeError, LocalProtocolError
from common.ike.events import IkeEvent, IkeSaDeleted, IkeSaFailed, IkeSaRekeyed
from common.ike.exchanges import Address, Requests, Responses
from common.ike.fragments import default_fragment_size, is_fragment
from common.ike.message import (
    IkeHeader,
    IkeMessage,
    Payload,
    decode_message,
    encode_message,
    peek_header,
)
from common.ike.payloads import Notify, SecurityAssociation
from common.ike.retiring import RetiringSa
from common.ike.state import INFORMATIONAL_STATES, IkeSaState, transition
from common.ike.tasks.base import ZERO_SPI, ExchangeTask, IkeSa, TaskFactory, first
from common.ike.tasks.child_rekey import ChildRekey, ChildRekeyResponder
from common.ike.tasks.delete import retire
from common.ike.tasks.dpd import Informational, NotifyRequest
from common.ike.tasks.ike_auth import IkeAuth
from common.ike.tasks.ike_init import IkeInit
from common.ike.tasks.ike_rekey import IkeRekey, IkeRekeyResponder

__all__ = ["SessionIntake"]


class SessionIntake(ABC):
    """What ``IkeSession`` does with each datagram it is given; see the module docstring.

    ``IkeSession.__init__`` sets the state below; ``IkeSession._pump`` sends
    the next queued command once a response frees the window (RFC 7296 2.3).
    """

    _sa: IkeSa  # the current IKE SA (switched by a rekey)
    _state: IkeSaState
    _requests: Requests  # ours, on the current SA
    _responses: Responses  # the peer's, on the current SA
    _datagrams: list[tuple[bytes, Address]]
    drops: Counter[str]
    _ike_init: IkeInit
    _ike_auth: IkeAuth
    _active: ExchangeTask | None  # our INFORMATIONAL / CREATE_CHILD_SA in flight
    _queued: deque[TaskFactory]  # waiting for the window (RFC 7296 2.3)
    _retiring: RetiringSa | None  # the IKE SA a rekey replaced (rule 6)
    _answering: IkeHeader | None  # the request we may answer with an error
    _accepted: bool  # the datagram being processed passed decoding/decryption
    _request_addr: Address  # where the request came from
    _request_data: bytes

    @abstractmethod
    def _pump(self, now: float) -> None:
        """Send the next queued request once the window is free (RFC 7296 2.3)."""

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
            if retiring is not None and retiring.owns(header):
                self._datagrams += retiring.receive(header, data, addr)
                if retiring.done:
                    self._retiring = None
            elif header.response:
                self._receive_response(header, data, now)
            else:
                self._receive_request(header, data, addr)
        except IkeError as error:
            self._on_error(error, header)
        if self._state is IkeSaState.ESTABLISHED:
            self._pump(now)  # e.g. the switch to the peer's new IKE SA freed the window (rule 7)

    # --- requests from the peer -----------------------------------------------------------

    def _receive_request(self, header: IkeHeader, data: bytes, addr: Address) -> None:
        self._request_addr = addr
        self._request_data = data
        if is_fragment(data) and self._responses.answered_last(header.message_id):
            self._process_retransmitted_fragment(data, addr)
            return
        if self._responses.is_retransmission(header.message_id, data):
            # RFC 7296 2.1: answer a retransmitted request from the cache, unprocessed.
            self.drops["retransmitted request"] += 1
            for datagram in self._responses.cached():
                self._datagrams.append((datagram, addr))
            return
        informational = self._state in INFORMATIONAL_STATES
        if self._state is IkeSaState.CLOSED or (self._sa.is_initiator and not informational):
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
            and header.initiator != self._sa.is_initiator  # RFC 7296 3.1: the I flag is the peer's
        ):
            if exchange == ExchangeType.INFORMATIONAL:
                self._process_informational_request(header, data)
            else:
                self._process_create_child_sa_request(header, data)
        else:
            self.drops["unexpected exchange"] += 1

    def _process_retransmitted_fragment(self, data: bytes, addr: Address) -> None:
        """A fragment of the request we answered last: maybe send the response again.

        RFC 7383 2.6.1: only a genuine fragment number 1 triggers the
        retransmission of the (whole, maybe fragmented) response; the other
        fragments of the retransmitted request are ignored, so one lost
        response costs one resend, not one per fragment.
        """
        protection = self._sa.protection
        if protection is None:
            self.drops["unexpected request"] += 1
            return
        fragment = protection.open_fragment(data)  # IntegrityCheckFailed: dropped, counted
        if fragment.fragment_number != 1:
            self.drops["retransmitted fragment"] += 1
            return
        self.drops["retransmitted request"] += 1
        for datagram in self._responses.cached():
            self._datagrams.append((datagram, addr))

    def _process_ike_sa_init_request(self, data: bytes, addr: Address) -> None:
        """``HDR, SAi1, KEi, Ni -->``, then ``<-- HDR, SAr1, KEr, Nr``."""
        message = decode_message(data)
        self._answering = message.header  # RFC 7296 2.21.1: IKE_SA_INIT errors are answered
        self._ike_init.process_r(message, data, addr)
        self._respond(data, self._ike_init.build_r())
        self._move(IkeSaState.SA_INIT_DONE)

    def _process_ike_auth_request(self, header: IkeHeader, data: bytes, addr: Address) -> None:
        """``HDR, SK {IDi, AUTH, CP, SAi2, TSi, TSr} -->``, then IDr, AUTH and the child."""
        payloads = self._open(data)
        if payloads is None:
            return
        self._answering = header  # authenticated by the SK ICV: errors get a Notify
        if self._sa.nat_t_pending:
            self._sa.nat_t = True  # the peer moved to 4500 (RFC 7296 2.23); follow it
        self._sa.remote_addr = addr  # RFC 7296 2.11: answer where the request came from
        self._ike_auth.process_r(payloads)
        self._move(IkeSaState.ESTABLISHED)
        self._respond(data, self._ike_auth.build_r(header.message_id))

    def _process_informational_request(self, header: IkeHeader, data: bytes) -> None:
        """``HDR, SK {[D], [N]} -->``, then ``<-- HDR, SK {[D]}``; maybe close after."""
        payloads = self._open(data)
        if payloads is None:
            return
        self._answering = header
        task = Informational(self._sa)
        closing = task.process_r(payloads)
        self._respond(data, task.build_r(header.message_id))
        if closing is not None:
            if isinstance(closing, IkeSaDeleted) and self._adopt_peer_rekey():
                return
            self._close(closing)

    def _adopt_peer_rekey(self) -> bool:
        """The peer deleted the IKE SA we are rekeying, having rekeyed it itself.

        RFC 7296 2.8.2: it finished its rekey without seeing ours, so the new SA
        we made answering it (``IkeRekey.passive``) is the one; we "forget" our
        rekey (no more retransmissions of it) and go on under the peer's SA.
        Returns False when there is no such SA: the Delete closes the session.
        """
        active = self._active
        if not isinstance(active, IkeRekey) or active.passive is None:
            return False
        self._requests.outstanding = None
        self._active = None
        self._switch(active.passive)
        assert self._retiring is not None
        self._retiring.answered_delete()
        return True

    def _process_create_child_sa_request(self, header: IkeHeader, data: bytes) -> None:
        """``HDR, SK {[N(REKEY_SA),] SA, Ni, [KEi,] [TSi, TSr]} -->``: a rekey, or refused."""
        payloads = self._open(data)
        if payloads is None:
            return
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
            # RFC 7296 2.8.2: the peer's rekey crossing ours is answered as usual.
            active = self._active if self._requests.outstanding is not None else None
            collision = active if isinstance(active, IkeRekey) else None
            busy = (
                closing
                or (self._requests.outstanding is not None and collision is None)
                or (self._retiring is not None and self._retiring.busy)
            )
            ike_task = IkeRekeyResponder(self._sa, busy=busy, collision=collision)
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

    # --- responses to our requests --------------------------------------------------------

    def _receive_response(self, header: IkeHeader, data: bytes, now: float) -> None:
        outstanding = self._requests.outstanding
        if (
            outstanding is None
            or header.spi_i != self._sa.spi_i
            or header.initiator == self._sa.is_initiator  # RFC 7296 3.1: the I flag is the peer's
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
        self._requests.sent(message_id, ExchangeType.IKE_AUTH, request, now, self._send(request))
        self._move(IkeSaState.AUTH_SENT)

    def _process_ike_auth_response(self, data: bytes, now: float) -> None:
        """``<-- HDR, SK {IDr, AUTH, CP(CFG_REPLY), SAr2, TSi, TSr}`` (or an error Notify)."""
        payloads = self._open(data)
        if payloads is None:
            return
        self._accepted = True
        self._requests.answered()
        self._ike_auth.process_i(payloads)
        self._move(IkeSaState.ESTABLISHED)

    def _process_task_response(self, data: bytes, now: float) -> None:
        """``<-- HDR, SK {...}`` for our INFORMATIONAL or CREATE_CHILD_SA; then what follows."""
        payloads = self._open(data)
        if payloads is None:
            return
        self._accepted = True
        self._requests.answered()
        task, self._active = self._active, None
        assert task is not None
        closing = task.process_i(payloads)
        if closing is not None:
            self._close(closing)
            return
        if isinstance(task, IkeRekey):
            self._finish_ike_rekey(task, now)
        if isinstance(task, (ChildRekey, IkeRekey)) and task.follow_up is not None:
            self._queued.appendleft(task.follow_up)  # the old SA's Delete, or the KE retry
        self._pump(now)

    def _finish_ike_rekey(self, task: IkeRekey, now: float) -> None:
        """Switch to the surviving new IKE SA; delete what is ours to (RFC 7296 2.8.2)."""
        outcome = task.outcome()
        if outcome is None:
            return  # refused, and no rekey of the peer's either: RekeyFailed is queued
        self._switch(outcome.survivor)
        retiring = self._retiring
        assert retiring is not None
        if outcome.delete_old:
            self._send(retiring.delete(now))  # the survivor's initiator deletes the old SA
        if outcome.redundant is not None:
            delete = retiring.add_redundant(outcome.redundant, now)
            if delete is not None:
                self._send(delete)  # ours, with the lowest nonce: we delete it

    def _switch(self, new_sa: IkeSa) -> None:
        """Go on under the rekeyed IKE SA (RFC 7296 2.18, state.py rule 6).

        Child SAs move over; message IDs restart at 0 both ways; the old SA
        is kept as ``_retiring`` for its Delete and its response cache.
        """
        old = self._sa
        new_sa.child_sas, old.child_sas = old.child_sas, {}
        self._retiring = RetiringSa(
            old, self._requests, self._responses, self.drops, self._retiring
        )
        self._sa = new_sa
        self._requests = Requests.following(new_sa.config)
        self._responses = Responses()
        self._sa.events.append(IkeSaRekeyed(old.spi_i, old.spi_r, new_sa.spi_i, new_sa.spi_r))

    # --- errors and closing ---------------------------------------------------------------

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
            self._retiring.stop()
        self._active = None
        self._queued.clear()
        self._sa.events.append(event)

    # --- sending --------------------------------------------------------------------------

    def _send(self, datagram: bytes) -> tuple[bytes, ...]:
        """Queue ``datagram`` for the peer, as SKF fragments if too large; returns what
        was queued, which is what a retransmission repeats (RFC 7383 2.6)."""
        wire = self._fragment(datagram)
        self._datagrams += [(each, self._sa.remote_addr) for each in wire]
        return wire

    def _respond(self, request: bytes, response: bytes) -> None:
        """Send ``response`` where ``request`` came from (RFC 7296 2.11) and cache it
        (all its fragments, RFC 7383 2.6)."""
        wire = self._fragment(response)
        self._responses.answered(request, wire)
        self._datagrams += [(each, self._request_addr) for each in wire]

    def _fragment(self, datagram: bytes) -> tuple[bytes, ...]:
        """``datagram``, or its SKF fragments when both peers announced fragmentation
        (RFC 7383 2.3) and it exceeds ``fragment_size`` with, on port 4500, the
        non-ESP marker (RFC 7383 2.5.1). Messages of a retiring IKE SA (its
        Delete, a few octets) go as they are: only the current SA's keys are here."""
        sa = self._sa
        if (
            not self._ike_init.peer_fragmentation
            or sa.protection is None
            or datagram[:16] != sa.spi_i + sa.spi_r
        ):
            return (datagram,)
        size = sa.config.fragment_size or default_fragment_size(ipv6=":" in sa.remote_addr[0])
        return sa.protection.fragment(datagram, size, non_esp_marker=sa.nat_t)

    def _open(self, data: bytes) -> list[Payload] | None:
        """The payloads of ``HDR, SK {...}``, or of a fragmented message once its last
        ``HDR, SKF {...}`` is in (RFC 7383 2.6); None while fragments are missing.

        Raises:
            IntegrityCheckFailed, FragmentRejected, MalformedMessage: dropped, counted.
        """
        protection = self._sa.protection
        if protection is None:
            raise RuntimeError("no IKE SA keys yet")
        header = peek_header(data)
        # Message IDs count per direction: responses to us, requests to us.
        reassembler = (self._requests if header.response else self._responses).reassembler
        return protection.open_message(header.message_id, data, reassembler)

    def _send_error_response(self, request: IkeHeader, notify: NotifyType, data: bytes) -> None:
        """A Notify-only response to ``request``: plain in IKE_SA_INIT, else protected."""
        if request.exchange_type == ExchangeType.IKE_SA_INIT:
            # RFC 7296 1.2: HDR(A,0), N(...); not cached, the responder keeps no state.
            header = IkeHeader(request.spi_i, ZERO_SPI, ExchangeType.IKE_SA_INIT, 0, False, True)
            message = IkeMessage(header, (Notify(notify, data),))
            self._datagrams.append((encode_message(message), self._request_addr))
            return
        header = replace(request, initiator=self._sa.is_initiator, response=True)
        self._respond(self._request_data, self._sa.seal(header, [Notify(notify, data)]))
