"""Client roaming: when the address the kernel would now use to reach a peer is not the one an
IKE SA uses (ours disappeared, the default route moved), move the SA there and tell the peer
(MOBIKE update, or an authenticated liveness check it adopts). Driven by netlink address, route
and link events, with a periodic check as the fallback.

Reaction time (docs/architecture.md, "Client roaming: detecting a move"): the netlink socket
is read on the event loop the moment the kernel writes to it; the events of one change (a link
going down withdraws its routes and addresses in one burst) are coalesced by a short quiet window
(``SETTLE``, reset by every further event, never longer than ``SETTLE_MAX`` after the first),
then the routing table is asked once per peer. No fixed sleep: the first packet on the new path
leaves a few ms after the kernel changed the path."""
from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import structlog

from ikev2.manager import IkeManager
from vpn_gw.transport.udp import route_source

log = structlog.get_logger("vpn_gw")

SETTLE = 0.002  # seconds without a further netlink event before the check runs
SETTLE_MAX = 0.01  # ... but never later than this after the first event of a burst

# rtnetlink multicast groups (linux/rtnetlink.h, the legacy RTMGRP_* bit masks)
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
ROAMING_GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE


def open_route_events() -> socket.socket:
    """A non-blocking rtnetlink socket subscribed to link, address and route changes. The
    messages are never parsed: any of them means "re-ask the routing table"."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, socket.NETLINK_ROUTE)
    try:
        s.bind((0, ROAMING_GROUPS))
    except OSError:
        s.close()
        raise
    return s


def drain(sock: socket.socket) -> int:
    """Read every queued message (a burst of one change); returns how many reads it took.
    ENOBUFS (the kernel dropped events because the queue overflowed) also means "changed"."""
    n = 0
    while n < 1024:  # bounded: a change storm is handled by the next wake-up
        try:
            sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            break
        except OSError:  # ENOBUFS: events were lost, which still means something changed
            pass
        n += 1
    return n


class RoamingWatcher:
    def __init__(self, manager: IkeManager, tcp_roam: Callable[[Any], bool], flush: Callable[[], None]):
        self.manager = manager
        self.tcp_roam = tcp_roam  # True: the SA runs over TCP, whose connection is re-opened instead
        self.flush = flush
        self.checks = 0  # how many checks ran (event-driven and periodic), for tests and status
        self._burst_start: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    def check(self) -> int:
        self.checks += 1
        moved = 0
        sources: dict[str, str | None] = {}  # one routing lookup per peer address per check
        for sa in list(self.manager.sas):
            if not sa.initiator or sa.state.value != "established" or sa.policy.local_addrs:
                continue  # a connection with configured local_addrs never roams
            peer = sa.remote[0]
            if peer not in sources:
                try:
                    sources[peer] = route_source(peer)
                except OSError:
                    sources[peer] = None  # no route at all right now: keep the SA, DPD decides
            src = sources[peer]
            if src is None or src == sa.local[0]:
                continue
            if self.tcp_roam(sa):
                continue  # over TCP: the connection is re-opened from the new address
            why = "address gone" if not is_local_address(sa.local[0]) else "route changed"
            log.info("local path changed, moving IKE SA", connection=sa.name, old=sa.local[0], new=src,
                     reason=why)
            moved += self.manager.local_address_changed(sa.local[0], src, time.monotonic())
        if moved:
            self.flush()  # the MOBIKE update or liveness check leaves now, from the new address
        return moved

    def _safe_check(self) -> None:
        try:
            self.check()
        except Exception as e:  # noqa: BLE001 - never let the watcher die
            log.error("local address check failed", error=f"{type(e).__name__}: {e}")

    def _on_events(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        """The netlink socket is readable: drain it and (re)arm the settle timer."""
        drain(sock)
        now = loop.time()
        if self._burst_start is None:
            self._burst_start = now
        due = min(now + SETTLE, self._burst_start + SETTLE_MAX)
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(due, self._settled)

    def _settled(self) -> None:
        self._timer = None
        self._burst_start = None
        self._safe_check()

    async def run(self, interval: float = 1.0) -> None:
        """Check a few ms after the kernel reports an address, route or link change (netlink),
        and every ``interval`` seconds anyway."""
        loop = asyncio.get_running_loop()
        try:
            events: socket.socket | None = open_route_events()
        except OSError as e:
            log.warning("no netlink events for roaming, polling only", error=str(e))
            events = None
        if events is not None:
            loop.add_reader(events.fileno(), self._on_events, events, loop)
        try:
            while True:
                await asyncio.sleep(interval)
                self._safe_check()
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if events is not None:
                loop.remove_reader(events.fileno())
                events.close()


def is_local_address(ip: str) -> bool:
    """Is ip still an address of this host (bindable)?"""
    fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        try:
            s.bind((ip, 0))
            return True
        except OSError:
            return False
