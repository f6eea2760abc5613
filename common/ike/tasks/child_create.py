"""What creating any Child SA shares: the ESP offer, its KE group, TS checks (RFC 7296 1.3, 2.9).

strongSwan's ``child_create`` holds this for IKE_AUTH and CREATE_CHILD_SA
alike. Here ``child_rekey`` uses it; ``ike_auth`` still keeps its own copy of
the TS check, which differs only in its error message.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final

from common.ike.constants import KeyExchangeMethod, NotifyType, TransformType
from common.ike.errors import LocalProtocolError, RemoteProtocolError
from common.ike.payloads import Proposal, TrafficSelector, Transform
from common.ike.payloads.ts import TsPayload
from common.ike.proposals import esp_proposals
from common.ike.selectors import is_subset, narrow

KE_GROUP: Final = struct.Struct("!H")  # INVALID_KE_PAYLOAD's data (RFC 7296 3.10.1)


def child_offer(
    specs: Sequence[str], spi: bytes, group: KeyExchangeMethod | None
) -> tuple[Proposal, ...]:
    """Our ESP proposals carrying ``spi``, each with a KE transform for PFS (RFC 7296 1.3.1)."""
    offer = esp_proposals(specs, spi)
    if group is None:
        return offer
    ke = Transform.make(TransformType.KE, group)
    return tuple(Proposal(p.number, p.protocol_id, p.spi, (*p.transforms, ke)) for p in offer)


def proposal_group(proposal: Proposal) -> KeyExchangeMethod | None:
    """The KE group a chosen proposal names, or None (no KE transform, or NONE)."""
    for transform in proposal.transforms:
        if transform.transform_type == TransformType.KE:
            if transform.transform_id == KeyExchangeMethod.NONE:
                return None
            try:
                return KeyExchangeMethod(transform.transform_id)
            except ValueError:
                return None
    return None


def invalid_ke(group: KeyExchangeMethod, sent: int | None) -> LocalProtocolError:
    """RFC 7296 1.3: the chosen proposal's group is not the KEi sent; say which we want."""
    return LocalProtocolError(
        f"KEi is group {sent}, we chose {group.name}",
        NotifyType.INVALID_KE_PAYLOAD,
        KE_GROUP.pack(group),
    )


def wanted_group(data: bytes) -> int | None:
    """The group an INVALID_KE_PAYLOAD asks for, or None when the data is not 2 octets."""
    return KE_GROUP.unpack(data)[0] if len(data) == 2 else None


def narrow_to(
    tsi: TsPayload,
    tsr: TsPayload,
    remote: Sequence[TrafficSelector],
    local: Sequence[TrafficSelector],
) -> tuple[list[TrafficSelector], list[TrafficSelector]]:
    """The responder's TSi/TSr: the request narrowed to an existing Child SA's (RFC 7296 2.9).

    Raises:
        LocalProtocolError: TS_UNACCEPTABLE, nothing in common.
    """
    ts_i = narrow(tsi.selectors, remote)
    ts_r = narrow(tsr.selectors, local)
    if not ts_i or not ts_r:
        raise LocalProtocolError(
            "traffic selectors outside the Child SA's", NotifyType.TS_UNACCEPTABLE
        )
    return ts_i, ts_r


def check_narrowed(
    tsi: TsPayload,
    tsr: TsPayload,
    proposed_i: Sequence[TrafficSelector],
    proposed_r: Sequence[TrafficSelector],
) -> tuple[tuple[TrafficSelector, ...], tuple[TrafficSelector, ...]]:
    """The initiator's check of the responder's TSi/TSr: narrowed, never widened (RFC 7296 2.9).

    Raises:
        RemoteProtocolError: TS_UNACCEPTABLE, wider than proposed or empty.
    """
    if not is_subset(tsi.selectors, proposed_i) or not is_subset(tsr.selectors, proposed_r):
        raise RemoteProtocolError(
            "responder widened the traffic selectors", NotifyType.TS_UNACCEPTABLE
        )
    ts_i = tuple(ts for ts in tsi.selectors if isinstance(ts, TrafficSelector))
    ts_r = tuple(ts for ts in tsr.selectors if isinstance(ts, TrafficSelector))
    if not ts_i or not ts_r:
        raise RemoteProtocolError("no usable traffic selectors", NotifyType.TS_UNACCEPTABLE)
    return ts_i, ts_r
