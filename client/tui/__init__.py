"""The Textual front end of the client: profiles, status, throughput, counters, log.

It speaks only ``client.state`` (the published model and ``ControllerView``);
it never imports the controller or a protocol core, so it can be driven by a
fake controller in tests and by the real one in ``outpost tui``.
"""

from client.tui.app import OutpostApp, run_tui
from client.tui.model import MakeController, ProfileEntry

__all__ = ["MakeController", "OutpostApp", "ProfileEntry", "run_tui"]
