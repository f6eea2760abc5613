"""Liveness checks, and the INFORMATIONAL responder (RFC 7296 1.4, 2.4, 2.21.2, 3.11).

::

    HDR, SK {}  -->                        <--  HDR, SK {}
    HDR, SK {N(AUTHENTICATION_FAILED)}  --> <--  HDR, SK {}

strongSwan's ``ike_dpd`` and ``informational``. Either side of an established
IKE SA may start an INFORMATIONAL exchange, so the responder here may be the
original initiator (RFC 7296 2.2). A request no answer comes back to, after
the whole retransmission schedule, means the peer is gone (RFC 7296 2.4).
"""

from __future__ import annotations

from typing import Final

from common.ike.constants import ExchangeType, NotifyType
from common.ike.events import IkeEvent, IkeSaDeleted, IkeSaFailed, PeerUnreachable
from common.ike.message import Payload
from common.ike.payloads import Delete, Notify
from common.ike.tasks.base import IkeSa
from common.ike.tasks.delete import process_deletes_r


class Dpd:
    """We ask whether the peer is alive: an empty INFORMATIONAL request."""

    exchange_type: Final = ExchangeType.INFORMATIONAL

    def __init__(self, sa: IkeSa) -> None:
        self._sa = sa

    def build_i(self, message_id: int) -> bytes:
        """``HDR, SK {} -->``."""
        header = self._sa.header(ExchangeType.INFORMATIONAL, message_id, response=False)
        return self._sa.seal(header, [])

    def process_i(self, payloads: list[Payload]) -> IkeEvent | None:
        """``<-- HDR, SK {}``: the peer is alive; nothing else happens."""
        return None

    def expired(self) -> IkeEvent:
        return PeerUnreachable()


class NotifyRequest:
    """A one-way Notify in its own INFORMATIONAL, sent once and never retransmitted.

    RFC 7296 2.21.2: an initiator that rejects the responder's AUTH "MAY" say so
    this way; the IKE SA is closed already, so nobody waits for the answer.
    """

    exchange_type: Final = ExchangeType.INFORMATIONAL

    def __init__(self, sa: IkeSa, notify: NotifyType) -> None:
        self._sa = sa
        self._notify = notify

    def build_i(self, message_id: int) -> bytes:
        """``HDR, SK {N(notify)} -->``."""
        header = self._sa.header(ExchangeType.INFORMATIONAL, message_id, response=False)
        return self._sa.seal(header, [Notify(self._notify)])


class Informational:
    """The peer's INFORMATIONAL request: Deletes, Notifies, or nothing (DPD)."""

    exchange_type: Final = ExchangeType.INFORMATIONAL

    def __init__(self, sa: IkeSa) -> None:
        self._sa = sa
        self._response: list[Payload] = []

    def process_r(self, payloads: list[Payload]) -> IkeEvent | None:
        """Act on the request; returns the event that closes the IKE SA, if any.

        The driver sends our response first, then closes: a peer deleting the
        IKE SA still gets its answer (RFC 7296 1.4.1).
        """
        deletes = [payload for payload in payloads if isinstance(payload, Delete)]
        self._response, ike_deleted = process_deletes_r(self._sa, deletes)
        if ike_deleted:
            return IkeSaDeleted(by_peer=True)
        for notify in payloads:
            if (
                isinstance(notify, Notify)
                and notify.notify_type == NotifyType.AUTHENTICATION_FAILED
            ):
                # RFC 7296 2.21.2: the initiator rejected our AUTH; the SA is dead.
                return IkeSaFailed(
                    "peer rejected our authentication", NotifyType.AUTHENTICATION_FAILED
                )
        return None  # an empty request is a liveness check: the empty answer is all

    def build_r(self, message_id: int) -> bytes:
        """``<-- HDR, SK {[D(ESP, our inbound SPIs)]}``."""
        header = self._sa.header(ExchangeType.INFORMATIONAL, message_id, response=True)
        return self._sa.seal(header, self._response)
