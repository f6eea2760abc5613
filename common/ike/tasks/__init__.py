"""One module per exchange, strongSwan ``sa/ikev2/tasks/`` style (RFC 7296 1.2-1.4).

Each task does the work of one exchange for one role. The initiator of the
exchange calls ``build_i(message_id)`` for the request and ``process_i`` on
the response; the responder calls ``process_r`` on the request and
``build_r`` for the response. ``IkeSession`` (the driver) owns message IDs,
retransmission, error handling and the state table; tasks only read and write
the shared ``IkeSa``.

- ``ike_init``: IKE_SA_INIT (and NAT detection);
- ``ike_auth``: IKE_AUTH with the first Child SA, CP and TS;
- ``delete``: INFORMATIONAL Delete of the IKE SA or a Child SA;
- ``dpd``: empty INFORMATIONAL (liveness), one-way Notify, and the
  INFORMATIONAL responder.
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
