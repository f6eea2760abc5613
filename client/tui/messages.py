"""Textual messages that carry the controller's events into the app's message queue.

The events worker posts these instead of touching widgets itself, so every
update happens in the app's own message order (STYLE.md: UIs consume
``events()`` in a worker and post messages).
"""

from __future__ import annotations

from textual.message import Message

from client.state import ControllerEvent


class ControllerEventArrived(Message):
    """One event from the controller of profile ``profile``."""

    def __init__(self, profile: str, event: ControllerEvent) -> None:
        super().__init__()
        self.profile = profile
        self.event = event


class EventStreamStopped(Message):
    """The controller's ``events()`` ended (``error`` is None) or raised (plain text)."""

    def __init__(self, profile: str, error: str | None) -> None:
        super().__init__()
        self.profile = profile
        self.error = error
