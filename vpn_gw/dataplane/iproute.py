"""Run pyroute2 netlink calls from inside the asyncio daemon.

pyroute2's synchronous IPRoute drives its own event loop and refuses to run inside a running
one, so each call runs in one dedicated worker thread (serialised, a few milliseconds each)."""
from __future__ import annotations

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
