"""The IKE SAs an IKE SA rekey left behind, until each is deleted (RFC 7296 2.18, 2.8.2, 1.4.1).

::

    rekey initiator, under the old IKE SA:   HDR, SK {D(IKE)}  -->  <--  HDR, SK {}
    rekey responder, under the old IKE SA:   <--  HDR, SK {D(IKE)}   HDR, SK {}  -->

An IKE SA rekey keeps the same ``IkeSession`` (state.py rule 6): the session
switches to the new SA, and hands the old one, with its own message IDs and
response cache, to a ``RetiringSa``. That object only finishes old SAs:

- the rekey initiator sends the Delete as the next request on the old SA
  (``delete``), retransmits it on the old SA's schedule and, unanswered to
  the end, counts the old SA gone anyway (``expire``, RFC 7296 2.4);
- the rekey responder answers the peer's Delete (``receive``) and from then
  on only repeats cached responses;
- either side answers a retransmitted request from the old SA's cache, such
  as the rekey request whose response was lost (RFC 7296 2.1);
- a CREATE_CHILD_SA request that still comes on the old SA, such as the
  peer's own rekey of it that crossed ours, is answered TEMPORARY_FAILURE:
  it is an IKE SA we are closing (RFC 7296 2.8.2, 2.25.2).

After a simultaneous rekey (RFC 7296 2.8.2, state.py rule 7) it also holds
the *redundant* new IKE SA (``add_redundant``): deleted at once under itself
if we made it; otherwise kept to answer the peer's Delete of it, and deleted
by us after ``REDUNDANT_SA_WAIT_S`` if that Delete never comes (strongSwan
sets the same kind of timeout), so no IKE SA outlives the collision.

Nothing here changes the session: ``receive`` and ``expire`` return what to
send, drops go to the session's counter, and ``done`` says the session may
forget the old SAs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Final

from common.ike.constants import ExchangeType, NotifyType
from common.ike.events import IkeSaDeleted
from common.ike.exchanges import Address, Requests, Responses, Timeout
from common.ike.message import IkeHeader
from common.ike.payloads import Notify
from common.ike.tasks.base import IkeSa
from common.ike.tasks.delete import IkeDelete
from common.ike.tasks.dpd import Informational

__all__ = ["REDUNDANT_SA_WAIT_S", "RetiringSa"]


@dataclass(slots=True)
class _Old:
    """One IKE SA being finished, with its own message IDs and response cache."""

    sa: IkeSa
    requests: Requests
    responses: Responses
    deleted: bool = False  # the peer's Delete was answered: only the cache still replies
    done: bool = False  # our Delete was answered or given up: the SA is gone
    delete_at: float | None = None  # a redundant SA the peer made: delete it ourselves then

    @property
    def busy(self) -> bool:
        return self.requests.outstanding is not None

    def deadline(self) -> float | None:
        if self.done:
            return None
        deadlines = [self.requests.deadline()]
        if not self.deleted:
            deadlines.append(self.delete_at)
        return min((d for d in deadlines if d is not None), default=None)


class RetiringSa:
    """The old IKE SA of a rekey (and a collision's redundant one): their Deletes and
    response caches (RFC 7296 2.1, 2.8.2, 2.18).

    Drivers: ``IkeSession`` calls ``delete(now)`` (rekey initiator only),
    ``add_redundant`` after a simultaneous rekey, ``receive`` for every
    message whose SPIs one of them owns, ``expire(now)`` at ``deadline()``,
    and ``stop()`` when the session closes.
    """

    __slots__ = ("_olds", "drops")

    def __init__(
        self,
        sa: IkeSa,
        requests: Requests,
        responses: Responses,
        drops: Counter[str],
        previous: RetiringSa | None = None,
    ) -> None:
        """Take over the old SA with the message ID state it had.

        Args:
            sa: the IKE SA the rekey replaced.
            requests: its requests; the Delete is the next one (RFC 7296 2.2).
            responses: its response cache, for retransmitted requests.
            drops: the session's drop counter, shared.
            previous: the ``RetiringSa`` of an earlier rekey; its SAs that still
                wait for something of ours (a Delete in flight, or due) are kept.
        """
        self._olds = [_Old(sa, requests, responses)]
        if previous is not None:
            self._olds += [
                old
                for old in previous._olds
                if not old.done and (old.busy or (old.delete_at is not None and not old.deleted))
            ]
        self.drops = drops

    @property
    def sa(self) -> IkeSa:
        """The IKE SA the rekey replaced."""
        return self._olds[0].sa

    @property
    def busy(self) -> bool:
        """A Delete of ours is in flight (a new IKE SA rekey must wait, rule 7)."""
        return any(old.busy for old in self._olds)

    @property
    def done(self) -> bool:
        """Every SA here is gone: the session may drop this object."""
        return all(old.done for old in self._olds)

    @property
    def spi_pairs(self) -> tuple[tuple[bytes, bytes], ...]:
        """(SPIi, SPIr) of every SA here, so a driver can route their messages to the session."""
        return tuple((old.sa.spi_i, old.sa.spi_r) for old in self._olds if not old.done)

    def owns(self, header: IkeHeader) -> bool:
        """Whether ``header`` names the SPIs of one of the SAs here."""
        return self._owner(header) is not None

    def _owner(self, header: IkeHeader) -> _Old | None:
        spis = (header.spi_i, header.spi_r)
        return next((old for old in self._olds if (old.sa.spi_i, old.sa.spi_r) == spis), None)

    def delete(self, now: float) -> bytes:
        """The rekey initiator deletes the old IKE SA: ``HDR, SK {D(IKE)} -->`` under it."""
        return self._delete(self._olds[0], now)

    def answered_delete(self) -> None:
        """The peer's Delete of the old SA was answered before the switch (RFC 7296 2.8.2)."""
        self._olds[0].deleted = True

    def add_redundant(self, sa: IkeSa, now: float) -> bytes | None:
        """Finish the redundant new IKE SA of a simultaneous rekey (RFC 7296 2.8.2).

        Returns:
            ``HDR, SK {D(IKE)} -->`` under it when we made it ("deleted by the
            node that created it"), else None: the peer deletes it, and we
            only if it has not by ``now + REDUNDANT_SA_WAIT_S``.
        """
        old = _Old(sa, Requests.following(sa.config), Responses())  # a new SA: IDs from 0
        self._olds.append(old)
        if sa.is_initiator:
            return self._delete(old, now)
        old.delete_at = now + REDUNDANT_SA_WAIT_S
        return None

    def _delete(self, old: _Old, now: float) -> bytes:
        message_id = old.requests.allocate()
        request = IkeDelete(old.sa).build_i(message_id)
        old.requests.sent(message_id, ExchangeType.INFORMATIONAL, request, now)
        return request

    def deadline(self) -> float | None:
        """When a Delete of ours is due (again), or None."""
        return min((d for old in self._olds if (d := old.deadline()) is not None), default=None)

    def expire(self, now: float) -> bytes | None:
        """A Delete of ours to send (again), or None.

        RFC 7296 2.4: a Delete of an old IKE SA unanswered at the end is done
        anyway. One datagram per call: should two be due at once, the other's
        deadline has passed, so the session is called again at once.
        """
        for old in self._olds:
            if old.done:
                continue
            outcome = old.requests.expire(now)
            if outcome is Timeout.RETRANSMIT:
                assert old.requests.outstanding is not None
                return old.requests.outstanding.datagram
            if outcome is Timeout.GIVE_UP:
                old.done = True
                continue
            if (
                old.delete_at is not None
                and old.delete_at <= now
                and not old.deleted
                and not old.busy
            ):
                old.delete_at = None  # the peer never deleted its redundant SA: we do
                return self._delete(old, now)
        return None

    def stop(self) -> None:
        """The session closed: no more retransmissions or Deletes."""
        for old in self._olds:
            old.requests.outstanding = None
            old.delete_at = None

    def receive(self, header: IkeHeader, data: bytes, addr: Address) -> list[tuple[bytes, Address]]:
        """A message for one of the SAs: its Delete, the answer to ours, or a retransmission.

        Returns:
            The datagrams to send, each with its destination.

        Raises:
            IkeError: the message does not open under that SA's keys.
        """
        entry = self._owner(header)
        if entry is None:
            self.drops["unexpected message for the old IKE SA"] += 1
            return []
        old = entry.sa
        if header.initiator == old.is_initiator:  # RFC 7296 3.1: the I flag is the peer's
            self.drops["unexpected message for the old IKE SA"] += 1
            return []
        if header.response:
            outstanding = entry.requests.outstanding
            if (
                outstanding is None
                or not entry.requests.matches(header.message_id)
                or header.exchange_type != outstanding.exchange_type
            ):
                self.drops["unexpected response"] += 1
                return []
            old.open(data)  # <-- HDR, SK {}: genuine, so the IKE SA is gone
            entry.requests.answered()
            entry.done = True
            return []
        if entry.responses.is_retransmission(header.message_id, data):
            # RFC 7296 2.1: e.g. the rekey request whose response was lost.
            self.drops["retransmitted request"] += 1
            return [(datagram, addr) for datagram in entry.responses.cached()]
        if entry.deleted or not entry.responses.is_next(header.message_id):
            self.drops["unexpected exchange"] += 1
            return []
        if header.exchange_type == ExchangeType.CREATE_CHILD_SA:
            # RFC 7296 2.8.2, 2.25.2: a rekey (say the peer's, crossing ours) of an
            # IKE SA we are closing gets TEMPORARY_FAILURE; the peer, having seen the
            # collision, keeps our new SA.
            old.open(data)
            self.drops["request on a replaced IKE SA"] += 1
            reply = old.header(ExchangeType.CREATE_CHILD_SA, header.message_id, response=True)
            response = old.seal(reply, [Notify(NotifyType.TEMPORARY_FAILURE)])
            entry.responses.answered(data, (response,))
            return [(response, addr)]
        if header.exchange_type != ExchangeType.INFORMATIONAL:
            self.drops["unexpected exchange"] += 1
            return []
        # HDR, SK {D(IKE)} --> for the SA: answer; the session itself lives on.
        payloads = old.open(data)
        task = Informational(old)
        entry.deleted = isinstance(task.process_r(payloads), IkeSaDeleted)
        response = task.build_r(header.message_id)
        entry.responses.answered(data, (response,))
        return [(response, addr)]


# How long the winner of a simultaneous IKE SA rekey waits for the peer to delete
# the redundant SA the peer made before deleting it itself (RFC 7296 2.8.2 says
# the creator SHOULD; this is the fallback if it does not, e.g. because it never
# saw its own exchange complete). Kept here, beside its one use, since it is no
# wire constant.
REDUNDANT_SA_WAIT_S: Final = 30.0
