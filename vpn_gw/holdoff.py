"""Wake-up holdoff for the data plane's readers: a network card's adaptive interrupt coalescing.

Each time a TUN device or the NAT-T socket becomes readable the event loop wakes the daemon,
which drains it. A wake-up costs the same whether it finds 2 packets or 200 (the event loop's
turn, ``epoll_wait``, the waker's ``try_to_wake_up`` in the kernel), so under a high packet
rate many small wake-ups cost more CPU per packet than few large ones (docs/esp.md "Wake-up
holdoff"). With a holdoff, a reader whose last drain emptied the queue and found at least
``after`` packets in it, small ones (``small`` bytes or less on average), stops watching its
file descriptor and drains again ``delay`` seconds later, without a wake-up per packet in
between. Otherwise the descriptor stays watched:

* a drain that found fewer packets: at low rates nothing changes (every drain is small);
* a drain that stopped at its bound with packets still queued: the daemon is behind the
  traffic, so it reads on at once, as without a holdoff (the holdoff never caps the rate);
* a drain of large packets (TCP data, TSO super-packets, GRO bursts of full-size segments):
  there a wake-up is already worth its cost, and TCP loses throughput to the added delay
  (measured: docs/esp.md "Wake-up holdoff").

Under load the added latency is at most the delay, rounded up by the event loop's timer
resolution (``epoll_wait`` counts milliseconds: up to 1 ms).

The reader's callback ends with ``after_drain(fd, found, nbytes, emptied, callback, *args)``;
whoever closes the descriptor calls ``forget(fd)`` first (the pending drain is cancelled).
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

AFTER = 64  # small packets found by one drain that start a holdoff (see above: the rate it keeps up)
SMALL = 512  # bytes per packet, on average over the drain, that count as small


class Holdoff:
    def __init__(self, delay: float, after: int = AFTER, small: int = SMALL):
        if delay < 0:
            raise ValueError("the holdoff delay cannot be negative")
        self.delay = delay
        self.after = after
        self.small = small
        self.engaged = 0  # holdoffs started (stats)
        self._pending: dict[int, asyncio.TimerHandle] = {}

    def after_drain(self, fd: int, found: int, nbytes: int, emptied: bool, callback: Callable[..., Any],
                    *args: Any) -> None:
        """End of a drain of ``fd`` that found ``found`` packets of ``nbytes`` bytes together
        (``emptied``: it stopped because the queue was empty, not at its bound): hold the next
        one off (the reader stops watching ``fd``; ``callback(*args)`` drains again after the
        delay), or leave ``fd`` watched."""
        if not self.delay or found < self.after or not emptied or nbytes > found * self.small:
            return  # fd stays watched (a held-off fd has no reader: only _resume drains it)
        loop = asyncio.get_running_loop()
        if fd not in self._pending:
            loop.remove_reader(fd)
            self.engaged += 1
            self._pending[fd] = loop.call_later(self.delay, self._resume, fd, callback, args)

    def _resume(self, fd: int, callback: Callable[..., Any], args: tuple) -> None:
        del self._pending[fd]
        asyncio.get_running_loop().add_reader(fd, callback, *args)
        callback(*args)  # drain now (it may hold off again) rather than after one more loop turn

    def forget(self, fd: int) -> None:
        """``fd`` is about to be closed: no drain of it is pending any more."""
        handle = self._pending.pop(fd, None)
        if handle is not None:
            handle.cancel()

    def stats(self) -> dict:
        return {"delay_us": round(self.delay * 1e6), "after": self.after, "small": self.small, "engaged": self.engaged,
                "held_off": len(self._pending)}
