"""Client roaming: when the address the kernel would now use to reach a peer is not the one an
IKE SA uses (ours disappeared, the default route moved), move the SA there and tell the peer
(MOBIKE update, or an authenticated liveness check it adopts). Driven by netlink address, route
and link events, with a periodic check as the fallback."""
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

ROAM_DEBOUNCE = 0.05  # seconds after a netlink event before the roaming check

# rtnetlink multicast groups (linux/rtnetlink.h, the legacy RTMGRP_* bit masks)
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
ROAMING_GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE


class RoamingWatcher:
    def __init__(self, manager: IkeManager, tcp_roam: Callable[[Any], bool], flush: Callable[[], None]):
        self.manager = manager
        self.tcp_roam = tcp_roam  # True: the SA runs over TCP, whose connection is re-opened instead
        self.flush = flush

    def check(self) -> int:
        moved = 0
        for sa in list(self.manager.sas):
            if not sa.initiator or sa.state.value != "established" or sa.policy.local_addrs:
                continue  # a connection with configured local_addrs never roams
            try:
                src = route_source(sa.remote[0])
            except OSError:
                continue  # no route at all right now: keep the SA, DPD decides
            if src != sa.local[0]:
                if self.tcp_roam(sa):
                    continue  # over TCP: the connection is re-opened from the new address
                why = "address gone" if not is_local_address(sa.local[0]) else "route changed"
                log.info("local path changed, moving IKE SA", connection=sa.name, old=sa.local[0], new=src,
                         reason=why)
                moved += self.manager.local_address_changed(sa.local[0], src, time.monotonic())
        if moved:
            self.flush()
        return moved

    async def run(self, interval: float = 1.0) -> None:
        """Check as soon as the kernel reports an address, route or link change (netlink), after
        a short debounce; and every ``interval`` seconds anyway."""
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()
        events: socket.socket | None = None
        try:
            # a raw rtnetlink socket, not pyroute2: its ~0.12 s import competed for the GIL with
            # the first IKE exchanges of a (re)starting gateway (issue 14 item 10)
            events = open_route_events()
            sock = events

            def readable() -> None:
                drain(sock)
                changed.set()
            loop.add_reader(sock.fileno(), readable)
        except OSError as e:
            log.warning("no netlink events for roaming, polling only", error=str(e))
            if events is not None:
                events.close()
            events = None
        try:
            while True:
                try:
                    async with asyncio.timeout(interval):
                        await changed.wait()
                    await asyncio.sleep(ROAM_DEBOUNCE)  # let the kernel finish the change
                    changed.clear()
                except TimeoutError:
                    pass
                try:
                    self.check()
                except Exception as e:  # noqa: BLE001 - never let the watcher die
                    log.error("local address check failed", error=f"{type(e).__name__}: {e}")
        finally:
            if events is not None:
                loop.remove_reader(events.fileno())
                events.close()


def open_route_events() -> socket.socket:
    """A non-blocking rtnetlink socket subscribed to link, address and route changes. The
    messages are never parsed: any of them means "re-ask the routing table"."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                      socket.NETLINK_ROUTE)
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


def is_local_address(ip: str) -> bool:
    """Is ip still an address of this host (bindable)?"""
    fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        try:
            s.bind((ip, 0))
            return True
        except OSError:
            return False
