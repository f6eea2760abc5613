"""The Outpost TUI application and its entry point ``run_tui``.

Drivers: key bindings and buttons call ``connect`` / ``disconnect`` on the
controller of a profile (built on first use by the injected
``make_controller``), and one worker per controller pumps its ``events()``
into Textual messages. Nothing here knows IKE or ESP: the app reads only the
published model in ``client.state`` (STYLE.md: UIs talk to one controller API).

Only one tunnel is up at a time (two would fight over routes and DNS):
connecting a profile first disconnects any other active one. Quitting
disconnects whatever is active and waits for it, so the host's routes and DNS
are restored before the terminal is given back.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import tzinfo
from pathlib import Path
from typing import ClassVar

from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Footer, Header, OptionList

from client.state import (
    ControllerEvent,
    ControllerView,
    LogLine,
    StateChanged,
    TrafficSample,
    TunnelState,
)
from client.tui.messages import ControllerEventArrived, EventStreamStopped
from client.tui.model import ACTIVE_STATES, MakeController, ProfileEntry, ProfileModel
from client.tui.widgets import (
    CountersPanel,
    LogPane,
    ProfileList,
    StatusPanel,
    ThroughputPanel,
)

APP_NAME = "outpost"


class OutpostApp(App[None]):
    """Profiles, the status of the chosen one, its throughput, counters and log.

    Args:
        profiles: what the list shows, in order.
        make_controller: builds the controller of a profile by name; called
            once per profile, on its first connect.
        clock: wall-clock Unix seconds, injectable so uptime and countdowns
            are deterministic in tests.
        tz: time zone of the log's timestamps (None: the machine's).
    """

    CSS_PATH = Path(__file__).with_name("outpost.tcss")
    TITLE = "Outpost"
    SUB_TITLE = "road-warrior VPN"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("c", "connect", "Connect"),
        Binding("d", "disconnect", "Disconnect"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        profiles: Sequence[ProfileEntry],
        make_controller: MakeController,
        *,
        clock: Callable[[], float] = time.time,
        tz: tzinfo | None = None,
    ) -> None:
        super().__init__()
        self._entries = list(profiles)
        self._profiles = {entry.name: ProfileModel.idle(entry) for entry in self._entries}
        self._make_controller = make_controller
        self._clock = clock
        self._tz = tz
        self._quitting = False

    # -- layout -----------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="main"):
            with Vertical(id="left") as left:
                left.border_title = "Profiles"
                left.border_subtitle = "↑↓ choose · Enter connect"
                yield ProfileList(self._entries, id="profiles")
                with Horizontal(id="buttons"):
                    yield Button("Connect", id="connect", variant="success")
                    yield Button("Disconnect", id="disconnect", variant="error")
            with Vertical(id="right"):
                status = StatusPanel(id="status")
                status.border_title = "Status"
                yield status
                throughput = ThroughputPanel(id="throughput")
                throughput.border_title = "Throughput"
                yield throughput
                counters = CountersPanel(id="counters")
                counters.border_title = "Counters"
                yield counters
        log = LogPane(tz=self._tz, id="log")
        log.border_title = "Log"
        yield log
        yield Footer()

    def on_mount(self) -> None:
        profiles = self.query_one(ProfileList)
        if self._entries:
            profiles.highlighted = 0
            profiles.focus()
        else:
            self._write_log(
                "warning", APP_NAME, "no profiles: add one to ~/.config/outpost/profiles/"
            )
        self._show(self._shown_name())
        self.set_interval(1.0, self._tick)

    # -- what is shown ----------------------------------------------------

    def _shown_name(self) -> str | None:
        return self.query_one(ProfileList).highlighted_name

    def _show(self, name: str | None) -> None:
        """Point the right-hand panels at one profile."""
        if name is None:
            return
        model = self._profiles[name]
        status_panel = self.query_one(StatusPanel)
        status_panel.now = self._clock()
        status_panel.status = model.status
        self.query_one(ThroughputPanel).show(model.meter)
        self.query_one(CountersPanel).show(model.traffic)

    def _tick(self) -> None:
        """Once a second: uptime, next rekey and next retry count on."""
        self.query_one(StatusPanel).now = self._clock()

    def _write_log(self, level: str, profile: str, message: str, at: float | None = None) -> None:
        self.query_one(LogPane).add_line(
            self._clock() if at is None else at, level, profile, message
        )

    @on(OptionList.OptionHighlighted, "#profiles")
    def _on_profile_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        self._show(event.option.id)

    @on(Button.Pressed, "#connect")
    async def _on_connect_pressed(self) -> None:
        await self.run_action("connect")

    @on(Button.Pressed, "#disconnect")
    async def _on_disconnect_pressed(self) -> None:
        await self.run_action("disconnect")

    # -- commands ---------------------------------------------------------

    def action_connect(self) -> None:
        """Connect the highlighted profile (in a worker: the UI keeps drawing)."""
        name = self._shown_name()
        if name is None or self._quitting:
            return
        model = self._profiles[name]
        if model.busy:
            return
        state = model.current_state()
        if model.controller is not None and (
            state in ACTIVE_STATES or state is TunnelState.DISCONNECTING
        ):
            self.notify(f"{name} is {state.value}")
            return
        model.busy = True
        self.run_worker(self._run_connect(model), name=f"connect {name}", exit_on_error=False)

    def action_disconnect(self) -> None:
        """Disconnect the active tunnel (the highlighted profile's if it has one)."""
        if self._quitting:
            return
        active = self._active_profiles()
        if not active:
            self.notify("not connected")
            return
        shown = self._shown_name()
        model = next((m for m in active if m.entry.name == shown), active[0])
        if model.busy:
            return
        model.busy = True
        self.run_worker(self._run_disconnect(model), name=f"disconnect {model.entry.name}")

    async def action_quit(self) -> None:
        """Quit, disconnecting first; a second ``q`` stops waiting for the gateway."""
        if self._quitting:
            self._write_log("warning", APP_NAME, "quitting without waiting for the disconnect")
            self.exit()
            return
        self._quitting = True
        self.run_worker(self._run_quit(), name="quit", exit_on_error=False)

    def _active_profiles(self) -> list[ProfileModel]:
        return [
            m
            for m in self._profiles.values()
            if m.controller is not None and m.current_state() in ACTIVE_STATES
        ]

    async def _run_connect(self, model: ProfileModel) -> None:
        name = model.entry.name
        try:
            for other in self._active_profiles():
                if other is not model:
                    self._write_log(
                        "info", other.entry.name, f"disconnecting before connecting {name}"
                    )
                    await self._disconnect(other)
            controller = self._controller_for(model)
            if controller is None:
                return
            try:
                await controller.connect()
            except Exception as exc:
                self._write_log("error", name, f"could not connect: {_plain(exc)}")
        finally:
            model.busy = False

    async def _run_disconnect(self, model: ProfileModel) -> None:
        try:
            await self._disconnect(model)
        finally:
            model.busy = False

    async def _run_quit(self) -> None:
        for model in self._active_profiles():
            self._write_log("info", model.entry.name, "disconnecting before quitting")
            await self._disconnect(model)
        self.exit()

    async def _disconnect(self, model: ProfileModel) -> None:
        """Await the controller's disconnect; a failure is logged, never raised."""
        assert model.controller is not None
        try:
            await model.controller.disconnect()
        except Exception as exc:
            self._write_log(
                "error", model.entry.name, f"could not disconnect cleanly: {_plain(exc)}"
            )

    def _controller_for(self, model: ProfileModel) -> ControllerView | None:
        """Build the profile's controller on first use and make sure we are subscribed.

        The subscription is taken before ``connect`` so no event of the
        attempt is missed. A profile that cannot be loaded is logged.
        """
        name = model.entry.name
        if model.controller is None:
            try:
                model.controller = self._make_controller(name)
            except Exception as exc:
                self._write_log("error", name, f"cannot use this profile: {_plain(exc)}")
                return None
        if not model.subscribed:
            model.subscribed = True
            stream = model.controller.events()
            self.run_worker(
                self._pump_events(name, stream), name=f"events {name}", exit_on_error=False
            )
        return model.controller

    # -- events -----------------------------------------------------------

    async def _pump_events(self, name: str, stream: AsyncIterator[ControllerEvent]) -> None:
        """Forward one controller's events as messages until the stream stops."""
        try:
            async for event in stream:
                self.post_message(ControllerEventArrived(name, event))
        except Exception as exc:
            self.post_message(EventStreamStopped(name, _plain(exc)))
        else:
            self.post_message(EventStreamStopped(name, None))

    def on_controller_event_arrived(self, message: ControllerEventArrived) -> None:
        model = self._profiles[message.profile]
        event = message.event
        match event:
            case StateChanged(status=status):
                model.status = status
                model.traffic = status.traffic
                if status.state is not TunnelState.CONNECTED:
                    model.meter.pause()
                self.query_one(ProfileList).show_state(message.profile, status.state)
            case TrafficSample(traffic=traffic):
                model.meter.add(event)
                model.traffic = traffic
            case LogLine(at=at, level=level, message=text):
                self._write_log(level, message.profile, text, at=at)
                return
        if message.profile == self._shown_name():
            self._show(message.profile)

    def on_event_stream_stopped(self, message: EventStreamStopped) -> None:
        model = self._profiles[message.profile]
        model.subscribed = False
        if message.error is None:
            self._write_log("warning", message.profile, "the controller's event stream ended")
        else:
            self._write_log(
                "error", message.profile, f"the controller's event stream failed: {message.error}"
            )
        if model.controller is not None:
            # Events stopped; the controller's own snapshot is the best we have.
            model.status = model.controller.status()
            self.query_one(ProfileList).show_state(message.profile, model.status.state)
            if message.profile == self._shown_name():
                self._show(message.profile)


def _plain(exc: BaseException) -> str:
    """An exception as a person can read it: its message, or its type when it has none."""
    text = str(exc)
    return text if text else type(exc).__name__


def run_tui(profiles: Sequence[ProfileEntry], make_controller: MakeController) -> None:
    """Run the TUI in the terminal until the person quits (``outpost tui``)."""
    OutpostApp(profiles, make_controller).run()
