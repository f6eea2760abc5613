"""Human units for the screen: bit rates, byte counts, durations, log times.

Kept apart from the widgets so the wording is tested once and reused by every
panel (and so a snapshot change points at the panel, not at the arithmetic).
"""

from __future__ import annotations

from datetime import datetime, tzinfo
from typing import Final

from client.state import TunnelState

_BIT_RATE_UNITS: Final = ("kbit/s", "Mbit/s", "Gbit/s", "Tbit/s")
_BYTE_UNITS: Final = ("kB", "MB", "GB", "TB")
NOTHING: Final = "—"

STATE_WORDS: Final[dict[TunnelState, str]] = {
    TunnelState.IDLE: "Idle",
    TunnelState.CONNECTING: "Connecting…",
    TunnelState.CONNECTED: "Connected",
    TunnelState.RECONNECTING: "Reconnecting…",
    TunnelState.DISCONNECTING: "Disconnecting…",
    TunnelState.FAILED: "Failed",
}


def format_bit_rate(bits_per_s: float | None) -> str:
    """Network people think in decimal bits per second (iperf3 does too).

    >>> format_bit_rate(10_000_000)
    '10.0 Mbit/s'
    """
    if bits_per_s is None:
        return NOTHING
    if bits_per_s < 1000:
        return f"{bits_per_s:.0f} bit/s"
    value = bits_per_s
    for unit in _BIT_RATE_UNITS:
        value /= 1000
        if value < 1000 or unit == _BIT_RATE_UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def format_bytes(count: int) -> str:
    """Exact count (so counters can be compared with a capture) plus a decimal size."""
    if count < 1000:
        return f"{count} B"
    value = float(count)
    for unit in _BYTE_UNITS:
        value /= 1000
        if value < 1000 or unit == _BYTE_UNITS[-1]:
            return f"{count:,} ({value:.1f} {unit})"
    raise AssertionError("unreachable")  # pragma: no cover


def format_duration(seconds: float) -> str:
    """A short, steadily ticking duration: ``45s``, ``2m 05s``, ``1h 02m 03s``, ``2d 03h``."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def format_clock_time(at: float, tz: tzinfo | None) -> str:
    """Wall-clock ``HH:MM:SS`` of a Unix time; ``tz=None`` means the machine's zone."""
    moment = datetime.fromtimestamp(at, tz) if tz is not None else datetime.fromtimestamp(at)
    return moment.strftime("%H:%M:%S")
