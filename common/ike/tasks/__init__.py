"""One module per exchange, strongSwan ``sa/ikev2/tasks/`` style (RFC 7296 1.2-1.4, 2.8).

Each task does the work of one exchange for one role. The initiator of the
exchange calls ``build_i(message_id)`` for the request and ``process_i`` on
the response; the responder calls ``process_r`` on the request and
``build_r`` for the response. ``IkeSession`` (the driver: ``session.py``,
with its receiving half in ``intake.py``) owns message IDs, retransmission,
error handling and the state table; tasks only read and write the shared
``IkeSa``.

- ``base``: ``IkeSa`` and ``ChildSa`` (the data tasks share), the
  ``ExchangeTask`` protocol and ``TaskFactory`` for queued commands, and
  payload helpers;
- ``ike_init``: IKE_SA_INIT (and NAT detection), with the initiator's
  retries: INVALID_KE_PAYLOAD, and COOKIE (RFC 7296 2.6; the responder's
  stateless check is ``common/ike/cookies.py``, outside any session);
- ``ike_auth``: IKE_AUTH with the first Child SA, CP and TS;
- ``child_create``: what creating any Child SA shares (the ESP offer, its KE
  group, TS checks);
- ``child_rekey``: CREATE_CHILD_SA rekeying a Child SA, both roles;
- ``ike_rekey``: CREATE_CHILD_SA rekeying the IKE SA, both roles (the driver
  switches to the new SA; ``common/ike/retiring.py`` finishes the old one);
- ``delete``: INFORMATIONAL Delete of the IKE SA or a Child SA;
- ``dpd``: empty INFORMATIONAL (liveness), one-way Notify, and the
  INFORMATIONAL responder.

``InformationalTask`` below is the INFORMATIONAL-only form of
``base.ExchangeTask``, which the driver uses for every exchange it queues.
"""

from __future__ import annotations

from typing import Protocol

from common.ike.events import IkeEvent
from common.ike.message import Payload


class InformationalTask(Protocol):
    """An INFORMATIONAL exchange we start (``check_liveness``, ``delete``, ...)."""

    def build_i(self, message_id: int) -> bytes:
        """The sealed request."""
        ...

    def process_i(self, payloads: list[Payload]) -> IkeEvent | None:
        """Act on the response; an event returned closes the IKE SA."""
        ...

    def expired(self) -> IkeEvent:
        """The request went unanswered (RFC 7296 2.4): the event that closes the SA."""
        ...
