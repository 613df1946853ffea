"""Run rtnetlink calls (links, addresses, routes) from inside the asyncio daemon.

Every call runs in one dedicated worker thread, serialised in submission order, on one
persistent rtnetlink socket (``vpn_gw.dataplane.rtnl.Rtnl``: raw requests, no pyroute2; opened
on first use in that thread, reopened if it breaks), so the event loop never blocks on netlink.

* ``ipr_call``: wait for the result (start-up, and where the caller needs the answer now).
* ``ipr_submit``: queue the call and return at once (a Future); the event loop never waits for
  netlink. Failures are logged. Because calls run in order, a later call sees what an earlier
  one did (add the route, then delete it).
* ``local_addresses``: the host's addresses, cached in the worker thread (refreshed after
  ``ADDRESS_CACHE_TTL`` seconds or when ``invalidate_addresses`` is called after a change we make;
  a caller that finds the cache stale, e.g. a route's preferred source is gone, invalidates and
  retries), instead of a full address dump per Child SA.
"""
from __future__ import annotations

import importlib
import ipaddress
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import structlog

from vpn_gw.dataplane.rtnl import Rtnl

log = structlog.get_logger("vpn_gw.dataplane")

ADDRESS_CACHE_TTL = 5.0  # seconds

_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")
_state = threading.local()  # in the worker thread: .ipr, .addrs, .addrs_at


def _ipr() -> Rtnl:
    ipr = getattr(_state, "ipr", None)
    if ipr is None:
        ipr = _state.ipr = Rtnl()
    return ipr


def _run(fn: Callable[[Rtnl], Any]) -> Any:
    try:
        return fn(_ipr())
    except OSError:
        # perhaps the socket itself failed (RtnlError, the kernel's answer, is no OSError):
        # the next call gets a new one
        ipr, _state.ipr = getattr(_state, "ipr", None), None
        if ipr is not None:
            try:
                ipr.close()
            except Exception as e:  # noqa: BLE001 - already broken
                log.debug("closing the broken netlink socket failed", error=str(e))
        raise


def ipr_call(fn: Callable[[Rtnl], Any], timeout: float = 10.0) -> Any:
    """Run fn(ipr) in the netlink thread and return its result (blocks the caller)."""
    return _pool.submit(_run, fn).result(timeout=timeout)


def ipr_submit(fn: Callable[[Rtnl], Any], what: str) -> Future:
    """Queue fn(ipr) in the netlink thread; return at once. An exception is logged (``what``
    says what failed) and left in the Future."""
    fut = _pool.submit(_run, fn)

    def done(f: Future) -> None:
        e = f.exception()
        if e is not None:
            log.error("netlink programming failed", what=what, error=f"{type(e).__name__}: {e}")
    fut.add_done_callback(done)
    return fut


def wait_idle(timeout: float = 10.0) -> None:
    """Block until everything queued so far has run (tests, benchmarks, shutdown)."""
    _pool.submit(lambda: None).result(timeout=timeout)


def local_addresses(ipr: Rtnl) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The host's addresses (call in the netlink thread, with the ipr it was given)."""
    now = time.monotonic()
    addrs = getattr(_state, "addrs", None)
    if addrs is None or now - _state.addrs_at > ADDRESS_CACHE_TTL:
        addrs = _state.addrs = ipr.addresses()
        _state.addrs_at = now
    return addrs


def invalidate_addresses() -> None:
    """The host's addresses changed (call in the netlink thread)."""
    _state.addrs = None


def prewarm() -> None:
    """Import pyroute2 (~0.1-0.2 s of CPU) in the netlink thread now, in the background: the
    XFRM data plane needs it (the userspace one does not), and this way the import overlaps the
    daemon's own start and first IKE exchange (issue 14 item 10)."""
    _pool.submit(importlib.import_module, "pyroute2")
