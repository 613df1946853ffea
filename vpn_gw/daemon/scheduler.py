"""The daemon's one timer: the engine's next deadline and the connections' restart times.

The engine keeps its own deadlines (retransmissions, DPD, rekeys, half-open expiry) and answers
``next_deadline()``; the daemon adds restart times for connections that went down (``retry_at``).
``arm()`` is called after every batch of work; it only touches the asyncio timer when the earliest
deadline moved, so a busy socket does not cancel and rebuild it on every wake-up.
"""
from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable


class Scheduler:
    def __init__(self, engine_deadline: Callable[[], float | None], on_due: Callable[[float], None],
                 clock: Callable[[], float] = time.monotonic):
        self._engine_deadline = engine_deadline
        self._on_due = on_due
        self._clock = clock
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for: float | None = None
        self._retry: dict[str, float] = {}          # connection name -> restart time
        self._retry_heap: list[tuple[float, str]] = []  # lazy deletion: stale entries skipped

    # ------------------------------------------------------------------ connection restarts

    def retry_at(self, name: str, when: float) -> None:
        self._retry[name] = when
        heapq.heappush(self._retry_heap, (when, name))

    def cancel_retry(self, name: str) -> None:
        self._retry.pop(name, None)

    def retry_pending(self, name: str) -> bool:
        return name in self._retry

    def _next_retry(self) -> float | None:
        heap = self._retry_heap
        while heap and self._retry.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)  # cancelled or moved
        return heap[0][0] if heap else None

    def due_retries(self, now: float) -> list[str]:
        """Connections whose restart time has come (removed from the schedule)."""
        due = []
        while (when := self._next_retry()) is not None and when <= now:
            _, name = heapq.heappop(self._retry_heap)
            del self._retry[name]
            due.append(name)
        return due

    # ------------------------------------------------------------------ the timer

    def arm(self) -> None:
        times = [t for t in (self._engine_deadline(), self._next_retry()) if t is not None]
        when = min(times) if times else None
        if when == self._armed_for and (when is None or self._timer is not None):
            return  # unchanged: keep the timer as it is
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed_for = when
        if when is None:
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(0.0, when - self._clock()), self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._armed_for = None
        self._on_due(self._clock())

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._armed_for = None
