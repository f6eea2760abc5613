"""Live throughput: a sparkline and the current bit rate per direction.

Fed by ``ThroughputMeter``, which derives rates from the controller's
cumulative counters; the widget only draws. The history is padded with zeros
to the meter's full window, so the graph always spans the same time (a
minute) and scrolls in from the right: three samples are not stretched over
the whole width.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, Sparkline, Static

from client.tui.formatting import format_bit_rate
from client.tui.model import HISTORY_LENGTH, ThroughputMeter


class ThroughputPanel(Vertical):
    """Inbound and outbound bit rate over the last minute."""

    def compose(self) -> ComposeResult:
        for direction in ("in", "out"):
            with Horizontal(classes="throughput-row"):
                yield Label(direction, classes="throughput-direction")
                yield Sparkline(
                    _window(deque(maxlen=HISTORY_LENGTH)),
                    summary_function=max,
                    id=f"spark-{direction}",
                )
                yield Static(format_bit_rate(None), id=f"rate-{direction}", classes="rate")

    def show(self, meter: ThroughputMeter) -> None:
        """Redraw from the meter of the profile being looked at."""
        self.query_one("#spark-in", Sparkline).data = _window(meter.history_in)
        self.query_one("#spark-out", Sparkline).data = _window(meter.history_out)
        self.query_one("#rate-in", Static).update(format_bit_rate(meter.rate_in))
        self.query_one("#rate-out", Static).update(format_bit_rate(meter.rate_out))


def _window(history: deque[float]) -> Sequence[float]:
    """The history, left-padded with zeros to the window length."""
    length = history.maxlen or len(history)
    return [0.0] * (length - len(history)) + list(history)
