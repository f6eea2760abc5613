"""One widget module per panel of the main screen."""

from client.tui.widgets.counters import CountersPanel
from client.tui.widgets.log_pane import LogPane
from client.tui.widgets.profile_list import ProfileList
from client.tui.widgets.status_panel import StatusPanel
from client.tui.widgets.throughput import ThroughputPanel

__all__ = ["CountersPanel", "LogPane", "ProfileList", "StatusPanel", "ThroughputPanel"]
