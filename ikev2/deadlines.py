"""Deadlines of many items in a binary heap with lazy deletion.

``set(item, when)`` is O(log n): the new entry is pushed and the item's current deadline
recorded; older entries of the item stay in the heap and are skipped when they surface (their
deadline is no longer the recorded one). ``next_deadline()`` is O(1) amortised and
``pop_due(now)`` touches only the items that are due. When stale entries outnumber live ones
the heap is rebuilt (O(n), amortised O(1) per ``set``), so memory stays proportional to the
number of items.
"""
from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)

_COMPACT_MIN = 1024  # never rebuild a heap smaller than this


class DeadlineHeap(Generic[T]):
    """Items ordered by deadline (seconds, any monotonic clock); ties keep insertion order."""

    __slots__ = ("_heap", "_current", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, T]] = []
        self._current: dict[T, tuple[float, int]] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._current)

    def __contains__(self, item: object) -> bool:
        return item in self._current

    def deadline(self, item: T) -> float | None:
        entry = self._current.get(item)
        return entry[0] if entry is not None else None

    def set(self, item: T, when: float | None) -> None:
        """Give ``item`` the deadline ``when`` (None: no deadline)."""
        if when is None:
            self._current.pop(item, None)
            return
        entry = self._current.get(item)
        if entry is not None and entry[0] == when:
            return
        seq = next(self._seq)
        self._current[item] = (when, seq)
        heapq.heappush(self._heap, (when, seq, item))
        if len(self._heap) > _COMPACT_MIN and len(self._heap) > 2 * len(self._current):
            self._compact()

    def remove(self, item: T) -> None:
        self._current.pop(item, None)

    def _live(self, entry: tuple[float, int, T]) -> bool:
        return self._current.get(entry[2]) == (entry[0], entry[1])

    def _drop_stale_top(self) -> None:
        heap = self._heap
        while heap and not self._live(heap[0]):
            heapq.heappop(heap)

    def next_deadline(self) -> float | None:
        """The earliest deadline, or None when no item has one."""
        self._drop_stale_top()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[T]:
        """Items whose deadline is at or before ``now``, earliest first; their deadlines are
        cleared (set them again after handling them)."""
        due: list[T] = []
        heap = self._heap
        while True:
            self._drop_stale_top()
            if not heap or heap[0][0] > now:
                return due
            _when, _seq, item = heapq.heappop(heap)
            del self._current[item]
            due.append(item)

    def _compact(self) -> None:
        self._heap = [(when, seq, item) for item, (when, seq) in self._current.items()]
        heapq.heapify(self._heap)
