"""IkeSession: the sans-IO IKEv2 object for both roles (RFC 7296 1.2-1.4, 2.1-2.25).

The driver only. This module holds the public object: construction, the
commands and their queue (window 1, RFC 7296 2.3), timers and the output
queues. The rest is elsewhere:

- ``intake.py``: the receiving half (``IkeSession`` inherits it): datagram
  intake, dispatch by SPI, flags, message ID and exchange type, errors caught
  once (RFC 7296 2.21), the switch to a rekeyed IKE SA, closing;
- ``retiring.py``: the IKE SA a rekey replaced, until its Delete is done;
- ``tasks/``: the exchanges themselves; ``state.py``: the legal state moves
  and their theory; ``exchanges.py``: message IDs, retransmission and the
  response cache.

::

    IKE_SA_INIT     tasks/ike_init.py    HDR, SAi1, KEi, Ni -->  <-- HDR, SAr1, KEr, Nr
    IKE_AUTH        tasks/ike_auth.py    HDR, SK {IDi, AUTH, CP, SAi2, TSi, TSr} -->
    INFORMATIONAL   tasks/delete.py      HDR, SK {D} -->  <-- HDR, SK {[D]}
                    tasks/dpd.py         HDR, SK {} -->  <-- HDR, SK {}
    CREATE_CHILD_SA tasks/child_rekey.py HDR, SK {N(REKEY_SA), SA, Ni, [KEi,] TSi, TSr} -->
                    tasks/ike_rekey.py   HDR, SK {SA, Ni, KEi} -->

Each side authenticates with a PSK (RFC 7296 2.15) or with a certificate and an
RFC 7427 digital signature (tasks/ike_auth.py). CREATE_CHILD_SA
rekeys Child SAs and the IKE SA, either side starting (RFC 7296 1.3.2,
1.3.3); further Child SAs are refused with NO_ADDITIONAL_SAS, and
simultaneous rekeys are resolved by the lowest-nonce rule of RFC 7296 2.8.1
and 2.8.2 (state.py rule 7). COOKIE (RFC 7296 2.6): the responder's challenge is
``cookies.py``, run by the concentrator's intake before a session exists;
the initiator's retry with the cookie is in ``tasks/ike_init.py``.
Fragmentation (RFC 7383): both sides announce it in IKE_SA_INIT; once both
did, an encrypted message larger than ``IkeConfiguration.fragment_size``
goes out as SKF fragments, which retransmissions and the response cache
repeat whole, and the peer's fragments are authenticated one by one and
reassembled before the exchange sees them (``intake``, ``exchanges``,
``fragments.py``; PMTU discovery, RFC 7383 2.5.2, is left out).

An IKE SA rekey keeps this object (state.py rule 6): ``_sa``, ``_requests``
and ``_responses`` switch to the new SA, and the old one stays as
``_retiring`` (a ``retiring.RetiringSa``) to send or answer its Delete and
repeat its cached responses.
"""

from __future__ import annotations

import os
from collections import Counter, deque
from collections.abc import Callable

from common.esp.spi import allocate_spi
from common.ike.constants import ExchangeType
from common.ike.events import IkeEvent, IkeSaDeleted, IkeSaFailed
from common.ike.exchanges import Address, Requests, Responses, Timeout, check_retransmission
from common.ike.fragments import MIN_FRAGMENT_SIZE
from common.ike.intake import SessionIntake
from common.ike.lifetimes import Lifetime, Lifetimes
from common.ike.policy import IkeConfiguration, ResponderPolicy
from common.ike.proposals import ike_proposals
from common.ike.state import ChildSaState, IkeSaState
from common.ike.tasks.base import ChildSa, ExchangeTask, IkeSa, TaskFactory, new_ike_spi
from common.ike.tasks.child_rekey import ChildRekey
from common.ike.tasks.delete import ChildDelete, IkeDelete, retire
from common.ike.tasks.dpd import Dpd
from common.ike.tasks.ike_auth import IkeAuth
from common.ike.tasks.ike_init import IkeInit
from common.ike.tasks.ike_rekey import IkeRekey

__all__ = ["Address", "IkeSaState", "IkeSession", "Lifetime", "Rng"]

Rng = Callable[[int], bytes]


class IkeSession(SessionIntake):
    """One IKE SA, initiator or responder, with no I/O.

    Drivers (aioquic ``QuicConnection`` shape):

    - ``initiate(now)``: the initiator's first move;
    - ``receive_datagram(data, addr, now)``: an IKE datagram from ``addr``,
      without the RFC 3948 non-ESP marker (``intake.SessionIntake``);
    - ``handle_timer(now)``: call at ``get_timer()``;
    - ``check_liveness(now)``, ``delete(now)``, ``delete_child(spi, now)``:
      INFORMATIONAL exchanges on an established IKE SA, either role;
    - ``rekey_child(spi, now)``, ``rekey_ike(now)``: CREATE_CHILD_SA rekeys,
      either role (RFC 7296 1.3.2, 1.3.3);
    - ``datagrams_to_send(now)``: ``(data, addr)`` pairs to send; when
      ``use_nat_t`` is true, send them from port 4500 with the non-ESP marker;
    - ``next_event()``: ``IkeEvent`` facts, until None.

    SA lifetimes (``lifetimes.py``, RFC 7296 2.8) run on the same timer: at
    an SA's soft time the session queues ``rekey_child`` / ``rekey_ike``
    itself, and at its hard time deletes the Child SA (``ChildSaDeleted``)
    or closes (``IkeSaFailed("lifetime expired")``).
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
            configuration: identities, PSK or key and certificate, proposals.
            is_initiator: the role (RFC 7296 2.2: the original initiator).
            local_addr: our address and port, for NAT detection (RFC 7296 2.23).
            remote_addr: the peer; required for the initiator, learnt by the responder.
            policy: the responder's PSKs, leases and subnets; required for the responder.
            rng: randomness for SPIs, nonces, DH keys and CBC IVs.
            spi_allocator: our inbound ESP SPI for a new Child SA; defaults to
                ``allocate_spi`` with ``rng``.

        Raises:
            RuntimeError: no peer or credentials for an initiator, no policy
                for a responder.
            ValueError: negative SA lifetimes, or jitter not below the rekey time;
                a ``fragment_size`` below 548 (``fragments.MIN_FRAGMENT_SIZE``); a
                retransmission schedule that never gives up or never backs off
                (``exchanges.check_retransmission``).
        """
        if is_initiator and (remote_addr is None or not (configuration.psk or configuration.signs)):
            # API misuse: fail fast at the call site.
            raise RuntimeError("an initiator needs remote_addr and a PSK or a key and certificate")
        if not is_initiator and policy is None:
            raise RuntimeError("a responder needs a policy")
        size = configuration.fragment_size
        if size is not None and size < MIN_FRAGMENT_SIZE:
            # Every IPv4 host accepts 576-octet datagrams (RFC 791): no path needs less.
            raise ValueError(f"fragment_size {size} is below {MIN_FRAGMENT_SIZE}")
        check_retransmission(
            configuration.retransmit_timeout,
            configuration.retransmit_base,
            configuration.retransmit_tries,
        )
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
        self._requests = Requests.following(configuration)
        self._responses = Responses()
        self._datagrams = []
        self.drops = Counter()
        self._ike_init = IkeInit(self._sa, ike_proposals(configuration.ike_proposals))
        self._ike_auth = IkeAuth(self._sa)
        self._active = None  # our INFORMATIONAL / CREATE_CHILD_SA in flight
        self._queued = deque()  # waiting for the window (RFC 7296 2.3)
        self._retiring = None  # the IKE SA a rekey replaced (rule 6)
        self._answering = None  # the request we may answer with an error
        self._accepted = False  # the datagram being processed passed decoding/decryption
        self._request_addr = self._sa.remote_addr  # where the request came from
        self._request_data = b""
        self._lifetimes = Lifetimes(configuration, rng)

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
    def ike_spi_pairs(self) -> tuple[tuple[bytes, bytes], ...]:
        """(SPIi, SPIr) of the current IKE SA and of any a rekey replaced (or a
        collision made redundant) that still exchange messages.

        A driver that routes datagrams to sessions by SPI (the concentrator)
        must route all of them here: the retiring SAs' Deletes travel under
        their own SPIs (RFC 7296 2.8.2, 2.18).
        """
        pairs = [(self._sa.spi_i, self._sa.spi_r)]
        if self._retiring is not None:
            pairs += self._retiring.spi_pairs
        return tuple(pairs)

    @property
    def use_nat_t(self) -> bool:
        """Send from UDP 4500 with the non-ESP marker (RFC 7296 2.23, RFC 3948 2.2).

        True once NAT was detected (or encapsulation forced) and the session has
        moved: for the initiator right after IKE_SA_INIT, for the responder from
        the first IKE_AUTH request on, so the IKE_SA_INIT response still goes out
        on port 500.
        """
        return self._sa.nat_t

    @property
    def exchanging(self) -> bool:
        """True while a request of ours is in flight or queued, or our Delete of a
        replaced IKE SA is: the glue's "wait until done", since lifetimes keep a
        timer armed for the whole life of the SA."""
        return (
            self._requests.outstanding is not None
            or bool(self._queued)
            or (self._retiring is not None and self._retiring.busy)
        )

    @property
    def ike_lifetime(self) -> Lifetime | None:
        """The established IKE SA's rekey and expiry times, or None before."""
        return self._lifetimes.ike()

    def child_lifetime(self, inbound_spi: int) -> Lifetime | None:
        """The rekey and expiry times of the Child SA with this *inbound* SPI."""
        return self._lifetimes.child(inbound_spi)

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
        SA that is already being rekeyed, replaced or deleted when its turn
        comes does nothing; one crossing the peer's rekey or Delete of the same
        SA is resolved as state.py rule 7 says.
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
        and deletes the old one; on a refusal ``RekeyFailed``. A rekey whose
        IKE SA was already replaced when its turn comes does nothing.
        """
        self._require_established("rekey_ike")
        current = self._sa

        def factory(sa: IkeSa) -> ExchangeTask | None:
            # Already replaced by its turn (the peer's rekey, or an earlier one of ours).
            return IkeRekey(sa) if sa is current else None

        self._start(factory, now)

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Process one IKE datagram (``intake.SessionIntake``); start new SAs' lifetimes."""
        super().receive_datagram(data, addr, now)
        self._track_lifetimes(now)

    def handle_timer(self, now: float) -> None:
        """Retransmit the outstanding request, or give up (RFC 7296 2.1, 2.4);
        rekey or expire the SAs whose lifetime says so (RFC 7296 2.8)."""
        if self._state is IkeSaState.CLOSED:
            return
        outcome = self._requests.expire(now)
        if outcome is Timeout.RETRANSMIT:
            assert self._requests.outstanding is not None
            # RFC 7383 2.6: every fragment again, as first sent (never re-sealed).
            self._datagrams += [
                (each, self._sa.remote_addr) for each in self._requests.outstanding.wire
            ]
        elif outcome is Timeout.GIVE_UP:
            if self._active is not None:
                self._close(self._active.expired())
            else:
                self._fail("peer unreachable", None)
        if self._retiring is not None:  # (stopped by _close, so nothing after a give-up)
            datagram = self._retiring.expire(now)
            if datagram is not None:
                self._send(datagram)
            if self._retiring.done:
                self._retiring = None
        if self._state is IkeSaState.ESTABLISHED:
            self._track_lifetimes(now)
            self._run_lifetimes(now)

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
            deadlines.append(self._retiring.deadline())
        if self._state is IkeSaState.ESTABLISHED:
            deadlines.append(self._lifetimes.deadline())
        return min((d for d in deadlines if d is not None), default=None)

    def next_event(self) -> IkeEvent | None:
        """The oldest undelivered event, or None."""
        events = self._sa.events
        return events.popleft() if events else None

    # --- commands: checks and the window-1 queue ------------------------------------------

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
            self._requests.sent(message_id, task.exchange_type, request, now, self._send(request))
            self._active = task

    def _new_ike_spi(self) -> bytes:
        return new_ike_spi(self._sa.rng)  # RFC 7296 3.1: an SPI is never zero

    # --- lifetimes (RFC 7296 2.8) ---------------------------------------------------------

    def _track_lifetimes(self, now: float) -> None:
        if self._state is IkeSaState.ESTABLISHED:
            self._lifetimes.track(self._sa, now)

    def _idle(self) -> bool:
        return self._requests.outstanding is None and not self._queued

    def _run_lifetimes(self, now: float) -> None:
        """Expire what outlived its hard time, start the rekeys whose soft time came.

        An automatic rekey starts only on an idle window and an SA not already
        being rekeyed or deleted; otherwise (and after a refusal) ``Lifetimes``
        brings it round again after the retry interval.
        """
        due = self._lifetimes.due(now)
        if due.ike_expired:
            if self._requests.outstanding is None:
                # A parting D(IKE), sent once: we will not wait for its answer.
                self._send(IkeDelete(self._sa).build_i(self._requests.allocate()))
            self._close(IkeSaFailed("lifetime expired", None))
            return
        for child in due.children_expired:
            if self._sa.child_sas.get(child.inbound_spi) is not child:
                continue
            tell_peer = child.state is not ChildSaState.DELETING  # else our Delete is on its way
            retire(self._sa, child)  # its keys may carry no more traffic
            if tell_peer:
                self._start(_expired_child_delete(child), now)
        for child in due.children_rekey:
            if child.state is ChildSaState.INSTALLED and self._idle():
                self.rekey_child(child.inbound_spi, now)
        if due.ike_rekey and self._idle():
            self.rekey_ike(now)


def _expired_child_delete(child: ChildSa) -> TaskFactory:
    """``HDR, SK {D(ESP)} -->`` for a Child SA already gone here (hard expiry)."""

    def factory(sa: IkeSa) -> ExchangeTask | None:
        return ChildDelete(sa, child)

    return factory
