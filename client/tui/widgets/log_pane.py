"""The log pane: the controller's log lines and the TUI's own, newest at the bottom.

Each line carries its wall-clock time, level and profile, so a person can
match it with the controller's log file or journal.
"""

from __future__ import annotations

from datetime import tzinfo
from typing import Final

from rich.text import Text
from textual.widgets import RichLog

from client.tui.formatting import format_clock_time

MAX_LINES: Final = 2000
_LEVEL_STYLES: Final = {"info": "cyan", "warning": "yellow", "error": "bold red"}


class LogPane(RichLog):
    """A bounded, wrapping, auto-scrolling log."""

    def __init__(self, *, tz: tzinfo | None = None, id: str | None = None) -> None:
        super().__init__(max_lines=MAX_LINES, wrap=True, markup=False, auto_scroll=True, id=id)
        self._tz = tz

    def add_line(self, at: float, level: str, profile: str, message: str) -> None:
        """Append one line; unknown levels are shown as written, unstyled.

        Lines are wrapped to the pane's own width when it is known: RichLog
        otherwise measures against the console, which may be narrower than
        the pane (a headless test runs an 80-column console).
        """
        width = self.scrollable_content_region.width or None
        self.write(
            Text.assemble(
                (format_clock_time(at, self._tz), "dim"),
                " ",
                (f"{level.upper():<7}", _LEVEL_STYLES.get(level, "")),
                " ",
                (profile, "bold"),
                ": ",
                message,
            ),
            width=width,
        )

    @property
    def plain_lines(self) -> list[str]:
        """The rendered lines as plain text (what a test or a screen reader needs)."""
        return [strip.text.rstrip() for strip in self.lines]
