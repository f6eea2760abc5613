"""What the controller tells the person, and small translations it needs.

Kept apart from ``controller.py`` so the decisions "which words" and "retry
or give up" can be read (and tested) in one place:

- an IKE SA that failed (``classify_failure``) or a refused first Child SA
  (``classify_child_failure``) becomes an ``Outcome``: plain words for
  ``ClientStatus.error`` and whether reconnecting can help (a wrong PSK or
  no common algorithm will not get better by retrying);
- data-plane counters become the published ``Traffic``;
- traffic selectors become the networks the data plane routes by.
"""

from __future__ import annotations

import errno
import ipaddress
from dataclasses import dataclass
from typing import Final

from client.state import Traffic
from common.dataplane.control import DataPlaneCounters
from common.ike.constants import NotifyType
from common.ike.events import ChildSaFailed, IkeSaFailed

NO_CAP_NET_ADMIN: Final = "Outpost needs root or CAP_NET_ADMIN to create its network device"
DENIED: Final = (errno.EPERM, errno.EACCES)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an attempt ended: the words for the person, and whether to try again."""

    message: str
    retry: bool


def classify_failure(event: IkeSaFailed, gateway: str, heard_from_gateway: bool) -> Outcome:
    """The words and the decision for a handshake (or IKE SA) that failed.

    ``gateway`` is "host:port" as the person knows it; ``heard_from_gateway``
    tells "no answer at all" from "it stopped answering". A refusal of *our*
    credentials is told from our refusal of the *gateway's* by the core's
    reason ("responder refused IKE_AUTH: ..."), the only place that says it.
    """
    match event.notify:
        case NotifyType.AUTHENTICATION_FAILED if event.reason.startswith("responder refused"):
            return Outcome("the gateway refused your credentials", retry=False)
        case NotifyType.AUTHENTICATION_FAILED:
            return Outcome(f"the gateway could not prove its identity ({event.reason})", False)
        case NotifyType.NO_PROPOSAL_CHOSEN:
            return Outcome("the gateway accepts none of our algorithms", retry=False)
        case None if event.reason == "peer unreachable":
            if not heard_from_gateway:
                return Outcome(f"no answer from {gateway}", retry=True)
            return Outcome("the gateway stopped answering", retry=True)
        case _:
            return Outcome(f"the handshake failed: {event.reason}", retry=True)


def classify_child_failure(event: ChildSaFailed) -> Outcome:
    match event.notify:
        case NotifyType.NO_PROPOSAL_CHOSEN:
            return Outcome("the gateway accepts none of our algorithms", retry=False)
        case NotifyType.INTERNAL_ADDRESS_FAILURE:
            return Outcome("the gateway has no address left for you", retry=True)
        case NotifyType.TS_UNACCEPTABLE:
            return Outcome("the gateway refused the networks we asked for", retry=False)
        case _:
            return Outcome(f"the gateway refused the tunnel: {event.reason}", retry=True)


def traffic_from(counters: DataPlaneCounters) -> Traffic:
    drops: dict[str, int] = {}
    for totals in (counters.inbound, counters.outbound):
        for key, value in totals.items():
            if key.startswith("drop_"):
                reason = key.removeprefix("drop_")
                drops[reason] = drops.get(reason, 0) + value
    return Traffic(
        packets_in=counters.inbound.get("packets", 0),
        packets_out=counters.outbound.get("packets", 0),
        bytes_in=counters.inbound.get("octets", 0),
        bytes_out=counters.outbound.get("octets", 0),
        drops=drops,
    )


def same_host(a: str, b: str) -> bool:
    try:
        left, right = ipaddress.ip_address(a.partition("%")[0]), ipaddress.ip_address(b)
    except ValueError:
        return False
    if isinstance(left, ipaddress.IPv6Address) and left.ipv4_mapped is not None:
        return left.ipv4_mapped == right
    return left == right
