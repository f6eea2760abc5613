"""What the TUI remembers per profile, and how it turns counter samples into rates.

The controller publishes cumulative counters (``TrafficSample``); a bit rate
needs two of them. ``ThroughputMeter`` does that arithmetic without Textual so
it can be reasoned about (and tested) on its own, and keeps a bounded history
for the sparklines.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from client.state import ClientStatus, ControllerView, Traffic, TrafficSample, TunnelState

HISTORY_LENGTH: Final = 60
"""Samples kept per direction: a minute at the controller's one-per-second pace."""

ACTIVE_STATES: Final = frozenset(
    {TunnelState.CONNECTING, TunnelState.CONNECTED, TunnelState.RECONNECTING}
)
"""States in which the client holds (or is acquiring) a tunnel that quitting must tear down."""

MakeController = Callable[[str], ControllerView]
"""Builds the controller of a profile by name (the CLI loads the profile file)."""


@dataclass(frozen=True, slots=True)
class ProfileEntry:
    """A profile as the list shows it; the CLI maps its profile files to these."""

    name: str
    gateway: str
    mode: str  # "split" or "full"


class ThroughputMeter:
    """Bit rates in and out from successive cumulative counter samples.

    A sample that does not move forward in time is ignored; counters that go
    backwards (the data plane restarted) start a new baseline instead of
    showing a negative rate.
    """

    def __init__(self, history_length: int = HISTORY_LENGTH) -> None:
        self._last: TrafficSample | None = None
        self.rate_in: float | None = None
        self.rate_out: float | None = None
        self.history_in: deque[float] = deque(maxlen=history_length)
        self.history_out: deque[float] = deque(maxlen=history_length)

    def add(self, sample: TrafficSample) -> None:
        """Take one sample; from the second on, the rates are defined."""
        last = self._last
        if last is not None and sample.at <= last.at:
            return
        self._last = sample
        if last is None:
            return
        new, old = sample.traffic, last.traffic
        if new.bytes_in < old.bytes_in or new.bytes_out < old.bytes_out:
            self.rate_in = self.rate_out = None
            return
        elapsed_s = sample.at - last.at
        self.rate_in = (new.bytes_in - old.bytes_in) * 8 / elapsed_s
        self.rate_out = (new.bytes_out - old.bytes_out) * 8 / elapsed_s
        self.history_in.append(self.rate_in)
        self.history_out.append(self.rate_out)

    def pause(self) -> None:
        """The tunnel went down: no current rate, and no rate across the gap later."""
        self._last = None
        self.rate_in = self.rate_out = None


@dataclass(slots=True)
class ProfileModel:
    """One profile's controller (built on first connect) and what we last heard from it."""

    entry: ProfileEntry
    status: ClientStatus
    controller: ControllerView | None = None
    traffic: Traffic = field(default_factory=Traffic)
    meter: ThroughputMeter = field(default_factory=ThroughputMeter)
    subscribed: bool = False  # an events() worker is running for this controller
    busy: bool = False  # a connect or disconnect command is in flight

    @classmethod
    def idle(cls, entry: ProfileEntry) -> ProfileModel:
        """Before any controller exists, the profile is simply idle at its gateway."""
        return cls(entry, ClientStatus(TunnelState.IDLE, profile=entry.name, gateway=entry.gateway))

    def current_state(self) -> TunnelState:
        """The controller's own word when there is one (events may lag or have stopped)."""
        if self.controller is not None:
            return self.controller.status().state
        return self.status.state
