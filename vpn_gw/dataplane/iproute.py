"""Run pyroute2 netlink calls from inside the asyncio daemon.

pyroute2's synchronous IPRoute drives its own event loop and refuses to run inside a running
one, so each call runs in one dedicated worker thread (serialised, a few milliseconds each)."""
from __future__ import annotations

import importlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")


def ipr_call(fn: Callable[[Any], Any], timeout: float = 10.0) -> Any:
    """Run fn(ipr) with a fresh pyroute2 IPRoute in the netlink thread and return its result."""
    def job():
        from pyroute2 import IPRoute
        with IPRoute() as ipr:
            return fn(ipr)
    return _pool.submit(job).result(timeout=timeout)


def prewarm() -> None:
    """Import pyroute2 (~0.1-0.2 s of CPU) in the netlink thread now, in the background, instead
    of inside the first ipr_call, which blocks the event loop: called first thing at start-up so
    the import overlaps the daemon's own start and first IKE exchange (issue 14 item 10)."""
    _pool.submit(importlib.import_module, "pyroute2")
