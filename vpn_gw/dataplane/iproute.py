"""Run pyroute2 netlink calls from inside the asyncio daemon.

pyroute2's synchronous IPRoute drives its own event loop and refuses to run inside a running
one, so every call runs in one dedicated worker thread, serialised in submission order, on one
persistent netlink socket (opened on first use in that thread; reopened if it breaks).

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

import ipaddress
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import structlog

log = structlog.get_logger("vpn_gw.dataplane")

ADDRESS_CACHE_TTL = 5.0  # seconds

_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")
_state = threading.local()  # in the worker thread: .ipr, .addrs, .addrs_at


def _ipr():
    ipr = getattr(_state, "ipr", None)
    if ipr is None:
        from pyroute2 import IPRoute
        ipr = _state.ipr = IPRoute()
    return ipr


def _run(fn: Callable[[Any], Any]) -> Any:
    try:
        return fn(_ipr())
    except OSError:
        # perhaps the socket itself failed (NetlinkError, the kernel's answer, is no OSError):
        # the next call gets a new one
        ipr, _state.ipr = getattr(_state, "ipr", None), None
        if ipr is not None:
            try:
                ipr.close()
            except Exception as e:  # noqa: BLE001 - already broken
                log.debug("closing the broken netlink socket failed", error=str(e))
        raise


def ipr_call(fn: Callable[[Any], Any], timeout: float = 10.0) -> Any:
    """Run fn(ipr) in the netlink thread and return its result (blocks the caller)."""
    return _pool.submit(_run, fn).result(timeout=timeout)


def ipr_submit(fn: Callable[[Any], Any], what: str) -> Future:
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


def local_addresses(ipr) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The host's addresses (call in the netlink thread, with the ipr it was given)."""
    now = time.monotonic()
    addrs = getattr(_state, "addrs", None)
    if addrs is None or now - _state.addrs_at > ADDRESS_CACHE_TTL:
        addrs = _state.addrs = [ipaddress.ip_address(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr()]
        _state.addrs_at = now
    return addrs


def invalidate_addresses() -> None:
    """The host's addresses changed (call in the netlink thread)."""
    _state.addrs = None
