"""Where an IKE SA and its Child SAs stand, and which moves are legal (RFC 7296 1-2).

Rules first, as h11's ``_state.py`` does; the code below only encodes them.

Rules
-----

1. Roles are fixed for the life of the IKE SA: the *original initiator* sent
   IKE_SA_INIT (RFC 7296 2.2). After IKE_AUTH either side may start an
   exchange, so the *initiator of an exchange* (who sends the request) is not
   always the original initiator. The I flag in the header always names the
   original initiator; the R flag names a response (RFC 7296 3.1). An IKE SA
   rekey makes a new IKE SA whose original initiator is the rekey's (rule 6).
2. Message IDs count per direction (RFC 7296 2.2): ``exchanges.Requests``
   numbers the requests we send, ``exchanges.Responses`` the requests the peer
   sends. Each side starts at 0, so after IKE_AUTH the original initiator's
   next request is 2 while the original responder's first is 0.
3. Window 1 (RFC 7296 2.3): one request of ours in flight at a time. A command
   (``check_liveness``, ``delete``, ``delete_child``, ``rekey_child``,
   ``rekey_ike``) given while one is outstanding waits in a queue.
4. IKE_SA_INIT and IKE_AUTH run once, in that order, started by the original
   initiator. INFORMATIONAL and CREATE_CHILD_SA run only on an ESTABLISHED
   IKE SA (or DELETING: the peer may still ask things while our Delete is in
   flight; a rekey asked then gets TEMPORARY_FAILURE, RFC 7296 2.25).
5. CLOSED is final: no timer, no event, no request processed. A retransmitted
   request is still answered from the response cache (RFC 7296 2.1), so a peer
   whose Delete response got lost is not left waiting.
6. Rekeying is make-before-break (RFC 7296 2.8). A Child SA rekey adds the
   new Child SA (``ChildSaRekeyed``) while the old one stays until the rekey
   initiator's Delete for it is answered. An IKE SA rekey (RFC 7296 2.18)
   keeps the *same* ``IkeSession``: it switches to the new SA (new SPIs,
   keys, message IDs from 0, Child SAs moved over; the rekey initiator is
   the new SA's "original initiator", so the I flag may flip) and keeps the
   old one *retiring* only to delete it, answer its Delete and repeat cached
   responses. Why one object: the driver, the concentrator's session table
   and the controller all hold "the session to this peer"; a new object per
   rekey would force each of them to swap references at the right moment.
7. Collisions are resolved as RFC 7296 2.8.1, 2.8.2 and 2.25 say, the way
   strongSwan's ``child_rekey`` and ``ike_rekey`` do:

   - *Both sides rekey one Child SA* (2.8.1): a rekey request for a Child SA
     that is REKEYING here is answered as usual, and the new SA it makes is
     remembered on the old one (``ChildSa.peer_rekey``). When our own answer
     arrives, both new SAs exist; the one made by the exchange holding the
     lowest of the four nonces (octet by octet, a shorter prefix lower) is
     redundant. Its initiator deletes it; the other side marks it REKEYED
     and waits for that Delete. The survivor's initiator deletes the old SA
     (2.8: "the node that initiated the surviving rekeyed SA"); the loser
     marks the old SA REKEYED and waits for that Delete.
   - *One side finished before it saw the other's request*: it answers the
     late request TEMPORARY_FAILURE (the old SA is DELETING there, 2.25.1) or
     CHILD_SA_NOT_FOUND (already gone). The side that saw the collision then
     keeps the peer's new SA, drops its own rekey without ``RekeyFailed`` and
     waits for the peer's Delete of the old SA.
   - *Rekey against Delete* (2.25.1): a rekey request for a Child SA we are
     deleting gets TEMPORARY_FAILURE, for one we no longer have
     CHILD_SA_NOT_FOUND, for one already replaced (REKEYED) TEMPORARY_FAILURE.
     The peer's Delete of a Child SA we are rekeying is answered as usual
     and the SA goes; our rekey's answer then finds it DELETED and is dropped
     quietly (no ``RekeyFailed``, nothing left over; a new SA it made anyway
     is reported with ``ChildSaEstablished``, having no old SA to replace).
   - *Both sides rekey the IKE SA* (2.8.2): the peer's request while our
     ``IkeRekey`` is in flight is answered as usual, and its new SA kept on
     our task (``IkeRekey.passive``) without switching. On our answer the new
     SA with the lowest nonce is deleted by its initiator (under itself), the
     session switches to the other one (one ``IkeSaRekeyed``; Child SAs move
     there), and the survivor's initiator deletes the old SA. The peer's
     Delete of the old SA while our rekey is still in flight means the peer
     did not see the collision: we switch to its new SA and forget ours
     (2.8.2); the peer answers our late request TEMPORARY_FAILURE from the
     old SA (``retiring.RetiringSa``), which we also read as "keep the
     peer's". A redundant IKE SA the peer created but never deletes is
     deleted by us after ``retiring.REDUNDANT_SA_WAIT_S``.
   - A peer's IKE SA rekey while another request of ours is in flight (or
     our Delete of a replaced IKE SA is, or we are closing) is still refused
     with TEMPORARY_FAILURE (2.25.2 allows it; strongSwan does the same).

Theory of operation
-------------------

``IkeSession`` (session.py) is the driver: it takes datagrams and timer ticks,
catches every ``IkeError`` once, and moves ``IkeSaState`` through
``IKE_SA_TRANSITIONS`` with ``transition``. The work of each exchange lives in
a task (``tasks/``, strongSwan's ``ike_init``, ``ike_auth``, ``ike_delete``,
``child_delete``, ``ike_dpd``, ``child_rekey``, ``ike_rekey``): the initiator of an exchange calls
``build()`` for the request and ``process()`` on the response; the responder
calls ``process()`` on the request and ``build()`` for the response. Tasks
share the SA's data (SPIs, nonces, keys, Child SAs) through ``tasks.IkeSa``.

::

    original initiator                      original responder
    INITIAL --IKE_SA_INIT req--> SA_INIT_SENT    INITIAL --req/resp--> SA_INIT_DONE
    SA_INIT_SENT --resp--> AUTH_SENT             SA_INIT_DONE --IKE_AUTH--> ESTABLISHED
    AUTH_SENT --resp--> ESTABLISHED
    ESTABLISHED --delete()--> DELETING --resp or give-up--> CLOSED
    ESTABLISHED --peer's Delete, our response--> CLOSED
    any --error, give-up--> CLOSED

A Child SA is INSTALLED when its ``ChildSaEstablished`` (or
``ChildSaRekeyed``) event is queued, REKEYING while our CREATE_CHILD_SA
rekeying it is outstanding (back to INSTALLED if refused), REKEYED once
another SA replaced it and the *peer* is to delete it (we answered the peer's
rekey of it, or lost a collision; also the redundant SA of a collision the
peer created), DELETING while our Delete for it is outstanding (a rekeyed SA
goes there straight from REKEYING), and DELETED once the ``ChildSaDeleted``
event is queued (either side's Delete, or the IKE SA closing, RFC 7296
1.4.1: Child SAs die with their IKE SA). A REKEYED SA is never rekeyed again.
"""

from __future__ import annotations

from enum import Enum, auto
from typing import Final


class IkeSaState(Enum):
    """Where the IKE SA stands."""

    INITIAL = auto()  # nothing sent (initiator) or received (responder)
    SA_INIT_SENT = auto()  # initiator: IKE_SA_INIT request outstanding
    AUTH_SENT = auto()  # initiator: IKE_AUTH request outstanding
    SA_INIT_DONE = auto()  # responder: keys exist, waiting for IKE_AUTH
    ESTABLISHED = auto()
    DELETING = auto()  # our Delete of the IKE SA is outstanding (RFC 7296 1.4.1)
    CLOSED = auto()


class ChildSaState(Enum):
    """Where one Child SA stands."""

    INSTALLED = auto()
    REKEYING = auto()  # our CREATE_CHILD_SA rekeying it is outstanding (RFC 7296 1.3.3)
    REKEYED = auto()  # replaced; the peer deletes it (strongSwan CHILD_REKEYED, RFC 7296 2.8)
    DELETING = auto()  # our Delete for it is outstanding
    DELETED = auto()


_I = IkeSaState
IKE_SA_TRANSITIONS: Final[dict[IkeSaState, frozenset[IkeSaState]]] = {
    _I.INITIAL: frozenset({_I.SA_INIT_SENT, _I.SA_INIT_DONE, _I.CLOSED}),
    _I.SA_INIT_SENT: frozenset({_I.AUTH_SENT, _I.CLOSED}),
    _I.AUTH_SENT: frozenset({_I.ESTABLISHED, _I.CLOSED}),
    _I.SA_INIT_DONE: frozenset({_I.ESTABLISHED, _I.CLOSED}),
    _I.ESTABLISHED: frozenset({_I.DELETING, _I.CLOSED}),
    _I.DELETING: frozenset({_I.CLOSED}),
    _I.CLOSED: frozenset(),
}

_C = ChildSaState
CHILD_SA_TRANSITIONS: Final[dict[ChildSaState, frozenset[ChildSaState]]] = {
    _C.INSTALLED: frozenset({_C.REKEYING, _C.REKEYED, _C.DELETING, _C.DELETED}),
    _C.REKEYING: frozenset({_C.INSTALLED, _C.REKEYED, _C.DELETING, _C.DELETED}),
    _C.REKEYED: frozenset({_C.DELETING, _C.DELETED}),
    _C.DELETING: frozenset({_C.DELETED}),
    _C.DELETED: frozenset(),
}

# Where INFORMATIONAL and CREATE_CHILD_SA requests from the peer are processed (rule 4).
INFORMATIONAL_STATES: Final = frozenset({_I.ESTABLISHED, _I.DELETING})


def transition(current: IkeSaState, new: IkeSaState) -> IkeSaState:
    """``new`` if the table allows it; an illegal move is our bug, not the peer's.

    Raises:
        RuntimeError: the move is not in ``IKE_SA_TRANSITIONS``.
    """
    if new not in IKE_SA_TRANSITIONS[current]:
        raise RuntimeError(f"IKE SA cannot go from {current.name} to {new.name}")
    return new


def child_transition(current: ChildSaState, new: ChildSaState) -> ChildSaState:
    """``new`` if ``CHILD_SA_TRANSITIONS`` allows it (RuntimeError otherwise)."""
    if new not in CHILD_SA_TRANSITIONS[current]:
        raise RuntimeError(f"Child SA cannot go from {current.name} to {new.name}")
    return new
