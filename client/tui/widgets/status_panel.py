"""The status panel: one labelled row per fact of the tunnel.

Rows are fixed so the eye finds the same fact at the same place; only the
reconnect and error rows appear on demand, because they matter only when
something is wrong. Times are shown relative to ``now`` (uptime, next rekey,
next retry); the app ticks ``now`` once a second.
"""

from __future__ import annotations

from typing import Final

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.widgets import Label, Static

from client.state import ClientStatus, TunnelState
from client.tui.formatting import NOTHING, STATE_WORDS, format_duration

ROWS: Final = (
    ("state", "State"),
    ("profile", "Profile"),
    ("gateway", "Gateway"),
    ("identity", "Identity"),
    ("inner", "Address"),
    ("dns", "DNS"),
    ("routes", "Routes"),
    ("ike", "IKE suite"),
    ("esp", "ESP suite"),
    ("spis", "ESP SPIs"),
    ("uptime", "Uptime"),
    ("rekey", "Next rekey"),
    ("retry", "Reconnect"),
    ("error", "Error"),
)


def describe(status: ClientStatus, now: float) -> dict[str, str | None]:
    """The text of every row; None hides the row.

    Pure, so the wording can be checked without a running app.
    """
    tunnel = status.tunnel
    rows: dict[str, str | None] = {
        "state": STATE_WORDS[status.state],
        "profile": status.profile,
        "gateway": tunnel.gateway if tunnel else status.gateway,
        "identity": NOTHING,
        "inner": NOTHING,
        "dns": NOTHING,
        "routes": NOTHING,
        "ike": NOTHING,
        "esp": NOTHING,
        "spis": NOTHING,
        "uptime": NOTHING,
        "rekey": NOTHING,
        "retry": None,
        "error": None,
    }
    if tunnel is not None:
        inner = [a for a in (tunnel.inner_ipv4, tunnel.inner_ipv6) if a]
        rows |= {
            "identity": tunnel.gateway_identity,
            "inner": ", ".join(inner) or NOTHING,
            "dns": ", ".join(tunnel.dns) or NOTHING,
            "routes": f"{', '.join(tunnel.routes) or NOTHING} ({tunnel.mode} tunnel)",
            "ike": tunnel.ike_suite,
            "esp": tunnel.esp_suite,
            "spis": f"in {tunnel.inbound_spi} · out {tunnel.outbound_spi}",
            "uptime": format_duration(now - tunnel.established_at),
        }
        if tunnel.next_rekey_at is not None:
            remaining = tunnel.next_rekey_at - now
            rows["rekey"] = f"in {format_duration(remaining)}" if remaining > 0 else "due now"
        else:
            rows["rekey"] = "left to the gateway"
    if status.state is TunnelState.RECONNECTING:
        retry = f"attempt {status.reconnect_attempt}"
        if status.next_retry_at is not None:
            retry += f", next try in {format_duration(status.next_retry_at - now)}"
        rows["retry"] = retry
    if status.state in (TunnelState.FAILED, TunnelState.RECONNECTING) and status.error:
        rows["error"] = status.error
    return rows


class StatusPanel(Vertical):
    """State, addresses, suites, SPIs and timers of the profile being looked at."""

    status: reactive[ClientStatus | None] = reactive(None)
    now: reactive[float] = reactive(0.0)

    def compose(self) -> ComposeResult:
        for key, label in ROWS:
            with Horizontal(id=f"row-{key}", classes="status-row"):
                yield Label(label, classes="status-key")
                yield Static(NOTHING, id=f"status-{key}", classes="status-value")

    def watch_status(self) -> None:
        self._render_rows()

    def watch_now(self) -> None:
        self._render_rows()

    def _render_rows(self) -> None:
        if self.status is None or not self.is_mounted:
            return
        for key, text in describe(self.status, self.now).items():
            row = self.query_one(f"#row-{key}")
            row.display = text is not None
            if text is not None:
                self.query_one(f"#status-{key}", Static).update(text)
        state_value = self.query_one("#status-state", Static)
        for state in TunnelState:
            state_value.set_class(state is self.status.state, f"state-{state.value}")
