"""Fan-out of controller events to any number of front ends, each at its own pace.

Each ``events()`` caller gets its own bounded queue, so a TUI that stalls for a
moment (or a forgotten subscriber) can never make the controller wait or grow
without bound. When a queue is full the least valuable event goes first:
a ``TrafficSample`` (the next one, a second later, says the same with newer
numbers), then the oldest ``LogLine``; a ``StateChanged`` is never dropped,
because a front end that missed one would show the wrong state until the next.

Subscriptions are held weakly: a consumer that simply stops iterating and
drops its iterator is forgotten by the garbage collector, no ``aclose`` needed.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from typing import Final

from client.state import ControllerEvent, LogLine, StateChanged, TrafficSample

QUEUE_LIMIT: Final = 256


class Subscription:
    """One subscriber's queue; an async iterator of ``ControllerEvent``."""

    def __init__(self, limit: int = QUEUE_LIMIT) -> None:
        self._items: deque[ControllerEvent] = deque()
        self._limit = limit
        self._ready = asyncio.Event()
        self._closed = False
        self.dropped = 0

    def offer(self, event: ControllerEvent) -> None:
        """Queue ``event``, making room as the module docstring says; never blocks."""
        if self._closed:
            return
        if len(self._items) >= self._limit and not self._make_room(event):
            self.dropped += 1
            return
        self._items.append(event)
        self._ready.set()

    def _make_room(self, event: ControllerEvent) -> bool:
        """Evict one less valuable event; False when ``event`` itself should go."""
        if isinstance(event, TrafficSample):
            return False
        for kind in (TrafficSample, LogLine):
            for index, queued in enumerate(self._items):
                if isinstance(queued, kind):
                    del self._items[index]
                    self.dropped += 1
                    return True
        # Only StateChanged left: keep them all (rare, and each one matters).
        return isinstance(event, StateChanged)

    def close(self) -> None:
        """End the iteration once the queued events are consumed."""
        self._closed = True
        self._ready.set()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> ControllerEvent:
        while not self._items:
            if self._closed:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    async def aclose(self) -> None:
        """Unsubscribe (the broadcaster drops closed subscriptions)."""
        self.close()
        self._items.clear()


class Broadcaster:
    """The controller's side: ``subscribe`` for each ``events()``, ``publish`` for each event."""

    def __init__(self, limit: int = QUEUE_LIMIT) -> None:
        self._limit = limit
        self._subscriptions: weakref.WeakSet[Subscription] = weakref.WeakSet()

    def subscribe(self) -> Subscription:
        subscription = Subscription(self._limit)
        self._subscriptions.add(subscription)
        return subscription

    def publish(self, event: ControllerEvent) -> None:
        for subscription in list(self._subscriptions):
            subscription.offer(event)

    def close(self) -> None:
        for subscription in list(self._subscriptions):
            subscription.close()
