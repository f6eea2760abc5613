"""Pacing of new handshakes: an open-loop schedule at a fixed rate, with a cap on in-flight.

Open loop on purpose: a load tester that waits for one handshake before
starting the next measures its own patience, not the gateway (the
"coordinated omission" trap). Client ``k`` (from 0) is due at
``start + k / rate``; whatever is due by ``now`` is released at once, so a
parent that wakes up late catches up instead of drifting. The optional
``max_in_flight`` holds releases back while that many handshakes are
unanswered, so a gateway that stops answering is not buried under the whole
remaining schedule at the end.
"""

from __future__ import annotations

import math


class Pacer:
    """How many of ``total`` handshakes may start by ``now`` (the caller's clock)."""

    def __init__(
        self, rate: float, total: int, start: float, max_in_flight: int | None = None
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate {rate} must be positive")
        if total < 0:
            raise ValueError(f"total {total} cannot be negative")
        self.rate = rate
        self.total = total
        self.start = start
        self.max_in_flight = max_in_flight
        self.released = 0

    @property
    def done(self) -> bool:
        return self.released >= self.total

    def due(self, now: float, in_flight: int = 0) -> int:
        """Release and return the number of handshakes to start now."""
        if now < self.start:
            return 0
        scheduled = min(self.total, math.floor((now - self.start) * self.rate + 1e-9) + 1)
        count = max(0, scheduled - self.released)
        if self.max_in_flight is not None:
            count = min(count, max(0, self.max_in_flight - in_flight))
        self.released += count
        return count

    def next_due(self) -> float | None:
        """When the next handshake is scheduled (None once all are released)."""
        if self.done:
            return None
        return self.start + self.released / self.rate
