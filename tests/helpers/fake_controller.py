"""A scriptable ``ControllerView`` for front-end tests (harlequin's injected adapter).

The test plays the controller: it sets the status, pushes events to every
subscriber, ends or breaks the event stream, and reads back which commands the
front end called. ``events()`` subscribes eagerly (before the first
``__anext__``), which is what the real controller must do too so that a front
end subscribing just before ``connect()`` misses nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC
from typing import Final

from client.state import (
    ClientStatus,
    ControllerEvent,
    StateChanged,
    Traffic,
    TunnelInfo,
    TunnelState,
)
from client.tui import OutpostApp, ProfileEntry


class _End:
    """Sentinel: the stream ends normally."""


class FakeController:
    """Records ``connect``/``disconnect`` calls; events and status come from the test.

    Args:
        profile: the profile name this controller belongs to.
        gateway: the configured gateway.
    """

    def __init__(self, profile: str, gateway: str = "vpn.example.com") -> None:
        self.profile = profile
        self._status = ClientStatus(TunnelState.IDLE, profile=profile, gateway=gateway)
        self._queues: list[asyncio.Queue[ControllerEvent | BaseException | _End]] = []
        self.calls: list[str] = []
        self.hold_disconnect: asyncio.Event | None = None
        """When set by a test, ``disconnect`` waits for this event before returning."""
        self.disconnect_started = asyncio.Event()
        self.connect_error: Exception | None = None
        """When set by a test, ``connect`` raises it (after recording the call)."""

    # -- ControllerView ----------------------------------------------------

    def status(self) -> ClientStatus:
        return self._status

    async def connect(self) -> None:
        self.calls.append("connect")
        if self.connect_error is not None:
            raise self.connect_error

    async def disconnect(self) -> None:
        self.calls.append("disconnect")
        self.disconnect_started.set()
        if self.hold_disconnect is not None:
            await self.hold_disconnect.wait()
        self.calls.append("disconnect done")

    def events(self) -> AsyncIterator[ControllerEvent]:
        queue: asyncio.Queue[ControllerEvent | BaseException | _End] = asyncio.Queue()
        self._queues.append(queue)
        return self._drain(queue)

    # -- scripting ---------------------------------------------------------

    @property
    def subscribers(self) -> int:
        """How many ``events()`` streams are open."""
        return len(self._queues)

    def push(self, event: ControllerEvent) -> None:
        """Deliver an event to every subscriber (a StateChanged also sets the status)."""
        if isinstance(event, StateChanged):
            self._status = event.status
        for queue in self._queues:
            queue.put_nowait(event)

    def set_status(self, status: ClientStatus) -> None:
        """Change the status and announce it, as the controller does."""
        self.push(StateChanged(status))

    def end_stream(self) -> None:
        """Every open stream ends normally."""
        for queue in self._queues:
            queue.put_nowait(_End())

    def break_stream(self, error: BaseException) -> None:
        """Every open stream raises ``error`` at its next read."""
        for queue in self._queues:
            queue.put_nowait(error)

    async def _drain(
        self, queue: asyncio.Queue[ControllerEvent | BaseException | _End]
    ) -> AsyncIterator[ControllerEvent]:
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _End):
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._queues.remove(queue)


class FakeControllers:
    """The ``make_controller`` factory for an app under test: one fake per profile name.

    Fakes are built on demand (as the real factory loads profiles on demand)
    and kept, so a test can script the one the app asked for.
    """

    def __init__(self, gateways: dict[str, str]) -> None:
        self._gateways = gateways
        self.built: dict[str, FakeController] = {}

    def __call__(self, profile: str) -> FakeController:
        if profile not in self._gateways:
            raise KeyError(f"no profile named {profile}")
        fake = self.built.get(profile)
        if fake is None:
            fake = self.built[profile] = FakeController(profile, self._gateways[profile])
        return fake


# -- scenarios shared by the TUI's Pilot and snapshot tests ------------------

NOW: Final = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
PROFILES: Final = (
    ProfileEntry("office", "vpn.example.com", "split"),
    ProfileEntry("lab", "192.0.2.1", "full"),
)
SIZE: Final = (110, 42)

TUNNEL: Final = TunnelInfo(
    gateway="198.51.100.7:4500",
    gateway_identity="vpn.example.com",
    inner_ipv4="10.99.0.23",
    inner_ipv6=None,
    dns=("10.99.0.1",),
    routes=("10.10.0.0/16", "10.20.0.0/16"),
    mode="split",
    ike_suite="AES_GCM_16_256/PRF_HMAC_SHA2_256/CURVE25519",
    esp_suite="AES_GCM_16_256",
    inbound_spi="c0ffee01",
    outbound_spi="0badf00d",
    established_at=NOW - 3723,  # uptime 1h 02m 03s
    next_rekey_at=NOW + 2520,  # next rekey in 42m 00s
)


def connected(traffic: Traffic | None = None) -> ClientStatus:
    """The office profile, up."""
    return ClientStatus(
        TunnelState.CONNECTED,
        profile="office",
        gateway="vpn.example.com",
        tunnel=TUNNEL,
        traffic=traffic or Traffic(),
    )


def failed(error: str) -> ClientStatus:
    """The office profile, given up with ``error``."""
    return ClientStatus(
        TunnelState.FAILED, profile="office", gateway="vpn.example.com", error=error
    )


def make_app() -> tuple[OutpostApp, FakeControllers]:
    """An app with the two profiles, fake controllers, a frozen clock and UTC log times."""
    factory = FakeControllers({p.name: p.gateway for p in PROFILES})
    return OutpostApp(PROFILES, factory, clock=lambda: NOW, tz=UTC), factory
