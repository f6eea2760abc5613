"""Deleting the IKE SA or a Child SA with INFORMATIONAL (RFC 7296 1.4.1, 3.11).

::

    HDR, SK {D(IKE)}  -->                  <--  HDR, SK {}
    HDR, SK {D(ESP, our inbound SPI)}  --> <--  HDR, SK {D(ESP, its inbound SPI)}

strongSwan's ``ike_delete`` and ``child_delete``. A Delete names the SPI the
*sender* receives on (RFC 7296 3.11), so a Delete from the peer names our
outbound SPI, and we answer with the inbound SPI of the same pair.

Rekey collisions end here too (state.py rule 7): the old Child SA, and the
redundant new one of a simultaneous rekey (RFC 7296 2.8.1), are removed by
ordinary Deletes, each sent by the side the nonces name and answered by the
other, which holds the SA as REKEYED meanwhile.
"""

from __future__ import annotations

from typing import Final

from common.ike.constants import ExchangeType, ProtocolId
from common.ike.events import ChildSaDeleted, IkeEvent, IkeSaDeleted, PeerUnreachable
from common.ike.message import Payload
from common.ike.payloads import Delete
from common.ike.state import ChildSaState
from common.ike.tasks.base import ESP_SPI, ChildSa, IkeSa


class IkeDelete:
    """We delete the IKE SA: closed on the response, or anyway on give-up (RFC 7296 2.4)."""

    exchange_type: Final = ExchangeType.INFORMATIONAL

    def __init__(self, sa: IkeSa) -> None:
        self._sa = sa

    def build_i(self, message_id: int) -> bytes:
        """``HDR, SK {D(IKE)} -->`` (no SPIs: the header names the IKE SA)."""
        header = self._sa.header(ExchangeType.INFORMATIONAL, message_id, response=False)
        return self._sa.seal(header, [Delete(ProtocolId.IKE)])

    def process_i(self, payloads: list[Payload]) -> IkeEvent | None:
        """``<-- HDR, SK {}``: the IKE SA and its Child SAs are gone."""
        return IkeSaDeleted(by_peer=False)

    def expired(self) -> IkeEvent:
        return IkeSaDeleted(by_peer=False)


class ChildDelete:
    """We delete one Child SA, named by our inbound SPI."""

    exchange_type: Final = ExchangeType.INFORMATIONAL

    def __init__(self, sa: IkeSa, child: ChildSa) -> None:
        self._sa = sa
        self._child = child

    def build_i(self, message_id: int) -> bytes:
        """``HDR, SK {D(ESP, our inbound SPI)} -->``."""
        if self._child.state in (ChildSaState.INSTALLED, ChildSaState.REKEYED):
            self._child.move(ChildSaState.DELETING)
        header = self._sa.header(ExchangeType.INFORMATIONAL, message_id, response=False)
        delete = Delete(ProtocolId.ESP, (ESP_SPI.pack(self._child.inbound_spi),))
        return self._sa.seal(header, [delete])

    def process_i(self, payloads: list[Payload]) -> IkeEvent | None:
        """``<-- HDR, SK {D(ESP, its inbound SPI)}``, or ``{}`` after a collision.

        Either way our inbound half goes now (RFC 7296 1.4.1: "the incoming SAs
        while processing the response"); a peer that forgot its Delete payload
        is not worth keeping a half-dead SA for.
        """
        retire(self._sa, self._child)
        return None

    def expired(self) -> IkeEvent:
        return PeerUnreachable()


def retire(sa: IkeSa, child: ChildSa) -> None:
    """Mark ``child`` DELETED and queue ``ChildSaDeleted`` once."""
    if child.state is ChildSaState.DELETED:
        return
    child.move(ChildSaState.DELETED)
    del sa.child_sas[child.inbound_spi]
    sa.events.append(ChildSaDeleted(child.inbound_spi, child.outbound_spi))


def process_deletes_r(sa: IkeSa, deletes: list[Delete]) -> tuple[list[Payload], bool]:
    """The peer's Delete payloads: our answer, and whether the IKE SA itself goes.

    Returns:
        The Delete payloads for the response, and True for a Delete of the IKE SA
        (answered empty; every Child SA goes with it, RFC 7296 1.4.1).
    """
    if any(delete.protocol_id == ProtocolId.IKE for delete in deletes):
        return [], True
    ours: list[bytes] = []
    for delete in deletes:
        if delete.protocol_id != ProtocolId.ESP:
            continue  # AH: we never negotiate it, so hold no such SA
        for spi in delete.spis:
            outbound_spi = ESP_SPI.unpack(spi)[0]
            child = next((c for c in sa.child_sas.values() if c.outbound_spi == outbound_spi), None)
            if child is None:
                continue  # RFC 7296 3.11: no record of it, nothing to do
            if child.state is not ChildSaState.DELETING:
                # RFC 7296 1.4.1: answer with the paired SA going the other way; also
                # for an SA we are rekeying (our rekey then finds it gone, 2.25.1) or
                # that was replaced and waited for exactly this Delete (REKEYED).
                ours.append(ESP_SPI.pack(child.inbound_spi))
            # else: both sides deleted at once; RFC 7296 1.4.1: no Delete in the response.
            retire(sa, child)
    return ([Delete(ProtocolId.ESP, tuple(ours))] if ours else []), False
