"""What the client controller publishes: its state, the tunnel's facts, traffic, log lines.

The controller (``controller.py``) has no UI inside; front ends (the Textual
TUI, ``outpost up``'s log lines, ``outpost status`` over the local socket)
only read these values and call ``ControllerView``'s commands. Keeping the
published model in one small module lets the TUI be tested against a fake
controller that speaks exactly the same types.

Everything here is immutable and JSON-able through ``to_json`` (the status
socket sends it), and times are wall-clock Unix seconds so a front end can
show "uptime" and "next rekey in" without knowing the controller's clock.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol


class TunnelState(enum.Enum):
    """Where the client stands, as a person would say it."""

    IDLE = "idle"  # not connected, not trying
    CONNECTING = "connecting"  # first handshake in progress
    CONNECTED = "connected"  # IKE SA and Child SA up, TUN, routes and DNS set
    RECONNECTING = "reconnecting"  # lost it; trying again with back-off
    DISCONNECTING = "disconnecting"  # our Delete is out, changes being undone
    FAILED = "failed"  # gave up (bad credentials, bad profile): needs the person


@dataclass(frozen=True, slots=True)
class TunnelInfo:
    """The facts of an established tunnel."""

    gateway: str  # "host:port" we talk to (after any NAT-T move to 4500)
    gateway_identity: str
    inner_ipv4: str | None
    inner_ipv6: str | None
    dns: tuple[str, ...]
    routes: tuple[str, ...]  # networks routed into the tunnel
    mode: str  # "split" or "full"
    ike_suite: str
    esp_suite: str
    inbound_spi: str  # hex
    outbound_spi: str  # hex
    established_at: float  # Unix time
    next_rekey_at: float | None  # Unix time of our next Child SA rekey, if we rekey


@dataclass(frozen=True, slots=True)
class Traffic:
    """Counters of the tunnel's ESP, cumulative since the data plane started."""

    packets_in: int = 0
    packets_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    drops: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ClientStatus:
    """Everything a front end shows, at one moment."""

    state: TunnelState
    profile: str  # the profile's name (file stem)
    gateway: str  # as configured (name or IP)
    tunnel: TunnelInfo | None = None
    traffic: Traffic = Traffic()
    error: str | None = None  # plain words: "the gateway refused your credentials"
    reconnect_attempt: int = 0
    next_retry_at: float | None = None  # Unix time of the next reconnection attempt

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (enum as its value)."""
        data = dataclasses.asdict(self)
        data["state"] = self.state.value
        return data


@dataclass(frozen=True, slots=True)
class StateChanged:
    """The controller's status changed (state, tunnel facts or error)."""

    status: ClientStatus


@dataclass(frozen=True, slots=True)
class TrafficSample:
    """Counters read at ``at`` (Unix time); a front end derives throughput from two."""

    at: float
    traffic: Traffic


@dataclass(frozen=True, slots=True)
class LogLine:
    """One human-readable line for the log pane (also written to the log)."""

    at: float
    level: str  # "info", "warning", "error"
    message: str


ControllerEvent = StateChanged | TrafficSample | LogLine


class ControllerView(Protocol):
    """What any front end may use; the controller implements it, tests fake it."""

    def status(self) -> ClientStatus:
        """The current status (never blocks)."""
        ...

    async def connect(self) -> None:
        """Bring the tunnel up (returns once the attempt started; watch the events)."""
        ...

    async def disconnect(self) -> None:
        """Send Delete, undo every change to the host, return when done."""
        ...

    def events(self) -> AsyncIterator[ControllerEvent]:
        """A new subscription: every event from now on, in order."""
        ...
