"""Counters: packets and bytes each way, and drops by reason.

Drops are shown by the data plane's own reason names (replay, auth_failed,
...) because those are what the logs and ``outpost status --json`` say too.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable

from client.state import Traffic
from client.tui.formatting import format_bytes


class CountersPanel(Vertical):
    """Two small read-only tables; not focusable, so Tab skips them."""

    def compose(self) -> ComposeResult:
        traffic: DataTable[str] = DataTable(
            id="traffic-table", cursor_type="none", show_cursor=False
        )
        traffic.can_focus = False
        drops: DataTable[str] = DataTable(id="drops-table", cursor_type="none", show_cursor=False)
        drops.can_focus = False
        yield traffic
        yield drops

    def on_mount(self) -> None:
        self.query_one("#traffic-table", DataTable).add_columns("", "in", "out")
        self.query_one("#drops-table", DataTable).add_columns("dropped", "packets")
        self.show(Traffic())

    def show(self, traffic: Traffic) -> None:
        """Replace the rows with these counters."""
        table: DataTable[str] = self.query_one("#traffic-table", DataTable)
        table.clear()
        table.add_row("packets", f"{traffic.packets_in:,}", f"{traffic.packets_out:,}")
        table.add_row("bytes", format_bytes(traffic.bytes_in), format_bytes(traffic.bytes_out))
        drops: DataTable[str] = self.query_one("#drops-table", DataTable)
        drops.clear()
        if not traffic.drops:
            drops.add_row("none", "0")
        for reason, count in sorted(traffic.drops.items()):
            drops.add_row(reason, f"{count:,}")
