"""One deadline heap per worker process, keyed by simulated client.

The concentrator's ``concentrator/timers.py`` idea, copied rather than
imported (the load tester must not depend on the gateway it tests): each
client has at most one deadline (the earliest of its IKE timer, its next
probe and its establish timeout), rescheduling pushes a new entry and the
old one is ignored when it surfaces (lazy deletion). Ten thousand clients
cost ten thousand heap entries, not ten thousand sleeping tasks.
"""

from __future__ import annotations

import heapq
import itertools


class Deadlines:
    """Deadlines (floats on the worker's clock) by client number, earliest first."""

    __slots__ = ("_deadlines", "_heap", "_sequence")

    def __init__(self) -> None:
        self._deadlines: dict[int, float] = {}
        self._heap: list[tuple[float, int, int]] = []
        self._sequence = itertools.count()

    def __len__(self) -> int:
        return len(self._deadlines)

    def schedule(self, key: int, deadline: float | None) -> None:
        """Set, move or (with None) clear ``key``'s one deadline."""
        if deadline is None:
            self._deadlines.pop(key, None)
            return
        if self._deadlines.get(key) == deadline:
            return
        self._deadlines[key] = deadline
        heapq.heappush(self._heap, (deadline, next(self._sequence), key))
        if len(self._heap) > 2 * len(self._deadlines) + 64:
            self._heap = [(d, s, k) for d, s, k in self._heap if self._deadlines.get(k) == d]
            heapq.heapify(self._heap)

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap:
            deadline, _, key = heap[0]
            if self._deadlines.get(key) == deadline:
                return deadline
            heapq.heappop(heap)
        return None

    def pop_due(self, now: float) -> list[int]:
        """Remove and return every key due at or before ``now``, earliest first."""
        due: list[int] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _, key = heapq.heappop(heap)
            if self._deadlines.get(key) == deadline:
                del self._deadlines[key]
                due.append(key)
        return due
