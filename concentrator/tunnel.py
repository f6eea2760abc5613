"""One client's tunnel as the concentrator keeps it: the IKE session and what it installed.

Small on purpose (issue 6 measures memory per tunnel): a slotted record, no
task, no timer object. Its one deadline lives in the manager's
``TimerQueue``; its ESP counters live in the data plane.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from common.ike.exchanges import Address
from common.ike.policy import Identity
from common.ike.session import IkeSession

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(slots=True, eq=False)
class ChildRecord:
    """One installed Child SA: what the data plane holds for it."""

    inbound_spi: int
    outbound_spi: int
    suite: str
    inner_networks: tuple[IpNetwork, ...]
    installed_at: float


@dataclass(slots=True, eq=False)
class Tunnel:
    """A client: from its first IKE_SA_INIT until its IKE SA is gone.

    ``tunnel_id`` doubles as the data plane's ``peer_id``: every Child SA of
    the tunnel is installed under it, so ``remove_peer`` drops them all.
    ``local`` is our address the client talks to (which listen socket answers).
    """

    tunnel_id: int
    session: IkeSession
    local: Address
    created_at: float
    remote: Address
    identity: Identity | None = None
    established_at: float | None = None
    ike_suite: str = ""
    ike_spis: set[bytes] = field(default_factory=set)
    half_open_key: tuple[bytes, str, int] | None = None
    children: dict[int, ChildRecord] = field(default_factory=dict)
    leased: tuple[IpAddress, ...] = ()
    released: bool = False  # ``leased`` went back to the pool
    allocated_spis: set[int] = field(default_factory=set)
    psk_auth: bool = False  # authenticated with a PSK (else a certificate)
    routed: bool = False  # the data plane holds SAs under ``tunnel_id``
    active_outbound: int | None = None  # the outbound SPI the data plane sends on
    # Liveness (RFC 7296 2.4): the inbound packet count seen at the last sweep,
    # when it last moved, and when to probe an idle client next.
    inbound_packets: int = 0
    last_activity: float = 0.0
    dpd_due: float | None = None
    closing: bool = False
    close_reason: str = ""

    @property
    def established(self) -> bool:
        return self.established_at is not None

    @property
    def esp_suite(self) -> str:
        newest = max(self.children.values(), key=lambda c: c.installed_at, default=None)
        return newest.suite if newest is not None else ""
