"""The profile list: arrow keys choose, Enter connects, a click only chooses.

Enter is rebound to the app's ``connect`` action rather than OptionList's
``select``, so that a stray mouse click highlights a profile without bringing
a tunnel up; mouse users press the Connect button.
"""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from client.state import TunnelState
from client.tui.model import ProfileEntry

_MARKERS: dict[TunnelState, tuple[str, str]] = {
    TunnelState.IDLE: ("○", "dim"),
    TunnelState.CONNECTING: ("◌", "yellow"),
    TunnelState.CONNECTED: ("●", "green"),
    TunnelState.RECONNECTING: ("◌", "yellow"),
    TunnelState.DISCONNECTING: ("◌", "yellow"),
    TunnelState.FAILED: ("✖", "red"),
}


def profile_prompt(entry: ProfileEntry, state: TunnelState) -> Text:
    """Two lines per profile: marker and name, then gateway and mode.

    Built from ``Text`` parts rather than markup so a profile named ``[lab]``
    shows as written.
    """
    marker, style = _MARKERS[state]
    return Text.assemble(
        (marker, style),
        " ",
        (entry.name, "bold"),
        "\n  ",
        (f"{entry.gateway} · {entry.mode}", "dim"),
    )


class ProfileList(OptionList):
    """Profiles by name; the option id is the profile name."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "app.connect", "Connect", show=False),
    ]

    def __init__(self, entries: list[ProfileEntry], *, id: str | None = None) -> None:
        super().__init__(
            *(Option(profile_prompt(e, TunnelState.IDLE), id=e.name) for e in entries), id=id
        )
        self._entries = {e.name: e for e in entries}

    @property
    def highlighted_name(self) -> str | None:
        """The profile under the cursor, if any."""
        option = self.highlighted_option
        return option.id if option is not None else None

    def show_state(self, name: str, state: TunnelState) -> None:
        """Refresh one profile's marker."""
        self.replace_option_prompt(name, profile_prompt(self._entries[name], state))
