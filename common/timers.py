"""One deadline structure for many keys: a heap with lazy cancellation.

Shared by the concentrator (one deadline per tunnel: retransmission, rekey,
DPD) and by ``outpost-loadtest`` (one per simulated client: IKE timer, next
probe, establish timeout). It lives in ``common/`` because it is a plain data
structure with no I/O and no clock of its own; the load tester imports it
from here, not from the gateway it tests.

Why not one asyncio timer (or task) per client: the concentrator holds
thousands of tunnels and each has a next moment of interest (a
retransmission, a rekey, a DPD probe). N ``TimerHandle`` objects, re-armed on
every exchange, cost a heap entry each in the event loop anyway plus a
closure; here the service arms *one* loop timer for the earliest deadline
(``next_deadline``) and, when it fires, pops everything due.

Rescheduling a key pushes a new heap entry and forgets the old one by
comparing against ``_deadlines`` when it surfaces (the classic lazy-deletion
heap), so ``schedule`` and ``cancel`` are O(log n) and O(1). Stale entries
are compacted away when they outnumber live ones, so memory stays bounded
by about twice the number of keys.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)


class TimerQueue(Generic[Key]):
    """Deadlines (floats on the caller's clock) keyed by tunnel or client, earliest first."""

    __slots__ = ("_deadlines", "_heap", "_sequence")

    def __init__(self) -> None:
        self._deadlines: dict[Key, float] = {}
        # (deadline, tie-breaker, key): the counter keeps keys from being compared.
        self._heap: list[tuple[float, int, Key]] = []
        self._sequence = itertools.count()

    def __len__(self) -> int:
        return len(self._deadlines)

    def __contains__(self, key: object) -> bool:
        return key in self._deadlines

    def deadline(self, key: Key) -> float | None:
        """When ``key`` is due, or None if it has no deadline."""
        return self._deadlines.get(key)

    def schedule(self, key: Key, deadline: float | None) -> None:
        """Set (or, with None, clear) the one deadline of ``key``."""
        if deadline is None:
            self.cancel(key)
            return
        if self._deadlines.get(key) == deadline:
            return  # unchanged: the usual case after an exchange that moved nothing
        self._deadlines[key] = deadline
        heapq.heappush(self._heap, (deadline, next(self._sequence), key))
        if len(self._heap) > 2 * len(self._deadlines) + 64:
            self._compact()

    def cancel(self, key: Key) -> None:
        """Forget ``key``'s deadline; its heap entry dies when it surfaces."""
        self._deadlines.pop(key, None)

    def next_deadline(self) -> float | None:
        """The earliest live deadline, dropping stale entries on the way."""
        heap = self._heap
        while heap:
            deadline, _, key = heap[0]
            if self._deadlines.get(key) == deadline:
                return deadline
            heapq.heappop(heap)
        return None

    def pop_due(self, now: float) -> list[Key]:
        """Remove and return every key whose deadline is at or before ``now``, earliest first."""
        due: list[Key] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _, key = heapq.heappop(heap)
            if self._deadlines.get(key) == deadline:
                del self._deadlines[key]
                due.append(key)
        return due

    def _compact(self) -> None:
        live = self._deadlines
        self._heap = [entry for entry in self._heap if live.get(entry[2]) == entry[0]]
        heapq.heapify(self._heap)
