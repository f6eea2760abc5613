"""The IKE SA an IKE SA rekey replaced, until its Delete is done (RFC 7296 2.18, 1.4.1).

::

    rekey initiator, under the old IKE SA:   HDR, SK {D(IKE)}  -->  <--  HDR, SK {}
    rekey responder, under the old IKE SA:   <--  HDR, SK {D(IKE)}   HDR, SK {}  -->

An IKE SA rekey keeps the same ``IkeSession`` (state.py rule 6): the session
switches to the new SA, and hands the old one, with its own message IDs and
response cache, to a ``RetiringSa``. That object only finishes the old SA:

- the rekey initiator sends the Delete as the next request on the old SA
  (``delete``), retransmits it on the old SA's schedule and, unanswered to
  the end, counts the old SA gone anyway (``expire``, RFC 7296 2.4);
- the rekey responder answers the peer's Delete (``receive``) and from then
  on only repeats cached responses;
- either side answers a retransmitted request from the old SA's cache, such
  as the rekey request whose response was lost (RFC 7296 2.1).

Nothing here changes the session: ``receive`` and ``expire`` return what to
send, drops go to the session's counter, and ``done`` says the session may
forget the old SA.
"""

from __future__ import annotations

from collections import Counter

from common.ike.constants import ExchangeType
from common.ike.events import IkeSaDeleted
from common.ike.exchanges import Address, Requests, Responses, Timeout
from common.ike.message import IkeHeader
from common.ike.tasks.base import IkeSa
from common.ike.tasks.delete import IkeDelete
from common.ike.tasks.dpd import Informational

__all__ = ["RetiringSa"]


class RetiringSa:
    """The old IKE SA of a rekey: its Delete, and its response cache (RFC 7296 2.1, 2.18).

    Drivers: ``IkeSession`` calls ``delete(now)`` (rekey initiator only),
    ``receive`` for every message whose SPIs are the old SA's, ``expire(now)``
    at ``deadline()``, and ``stop()`` when the session closes.
    """

    __slots__ = ("deleted", "done", "drops", "requests", "responses", "sa")

    def __init__(
        self, sa: IkeSa, requests: Requests, responses: Responses, drops: Counter[str]
    ) -> None:
        """Take over the old SA with the message ID state it had.

        Args:
            sa: the IKE SA the rekey replaced.
            requests: its requests; the Delete is the next one (RFC 7296 2.2).
            responses: its response cache, for retransmitted requests.
            drops: the session's drop counter, shared.
        """
        self.sa = sa
        self.requests = requests
        self.responses = responses
        self.drops = drops
        self.deleted = False  # the peer's Delete was answered: only the cache still replies
        self.done = False  # the old SA is gone: the session drops this object

    def owns(self, header: IkeHeader) -> bool:
        """Whether ``header`` names the old SA's SPIs."""
        return (header.spi_i, header.spi_r) == (self.sa.spi_i, self.sa.spi_r)

    @property
    def busy(self) -> bool:
        """Our Delete of the old SA is in flight (a new IKE SA rekey must wait, rule 7)."""
        return self.requests.outstanding is not None

    def delete(self, now: float) -> bytes:
        """The rekey initiator deletes the old IKE SA: ``HDR, SK {D(IKE)} -->`` under it."""
        message_id = self.requests.allocate()
        request = IkeDelete(self.sa).build_i(message_id)
        self.requests.sent(message_id, ExchangeType.INFORMATIONAL, request, now)
        return request

    def deadline(self) -> float | None:
        """When our Delete is due again, or None."""
        return self.requests.deadline()

    def expire(self, now: float) -> bytes | None:
        """Our Delete to send again, or None.

        RFC 7296 2.4: a Delete of the old IKE SA unanswered at the end is done anyway.
        """
        outcome = self.requests.expire(now)
        if outcome is Timeout.RETRANSMIT:
            assert self.requests.outstanding is not None
            return self.requests.outstanding.datagram
        if outcome is Timeout.GIVE_UP:
            self.done = True
        return None

    def stop(self) -> None:
        """The session closed: no more retransmissions of our Delete."""
        self.requests.outstanding = None

    def receive(self, header: IkeHeader, data: bytes, addr: Address) -> list[tuple[bytes, Address]]:
        """A message for the old SA: its Delete, the answer to ours, or a retransmission.

        Returns:
            The datagrams to send, each with its destination.

        Raises:
            IkeError: the message does not open under the old SA's keys.
        """
        old = self.sa
        if header.initiator == old.is_initiator:  # RFC 7296 3.1: the I flag is the peer's
            self.drops["unexpected message for the old IKE SA"] += 1
            return []
        if header.response:
            outstanding = self.requests.outstanding
            if (
                outstanding is None
                or not self.requests.matches(header.message_id)
                or header.exchange_type != outstanding.exchange_type
            ):
                self.drops["unexpected response"] += 1
                return []
            old.open(data)  # <-- HDR, SK {}: genuine, so the old IKE SA is gone
            self.requests.answered()
            self.done = True
            return []
        if self.responses.is_retransmission(header.message_id, data):
            # RFC 7296 2.1: e.g. the rekey request whose response was lost.
            self.drops["retransmitted request"] += 1
            return [(datagram, addr) for datagram in self.responses.cached()]
        if (
            self.deleted
            or header.exchange_type != ExchangeType.INFORMATIONAL
            or not self.responses.is_next(header.message_id)
        ):
            self.drops["unexpected exchange"] += 1
            return []
        # HDR, SK {D(IKE)} --> for the old SA: answer; the session itself lives on.
        payloads = old.open(data)
        task = Informational(old)
        self.deleted = isinstance(task.process_r(payloads), IkeSaDeleted)
        response = task.build_r(header.message_id)
        self.responses.answered(data, (response,))
        return [(response, addr)]
