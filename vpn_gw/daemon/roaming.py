"""Client roaming: when the address the kernel would now use to reach a peer is not the one an
IKE SA uses (ours disappeared, the default route moved), move the SA there and tell the peer
(MOBIKE update, or an authenticated liveness check it adopts). Driven by netlink address, route
and link events, with a periodic check as the fallback."""
from __future__ import annotations

import asyncio
import importlib
import socket
import time
from collections.abc import Callable
from typing import Any

import structlog

from ikev2.manager import IkeManager
from vpn_gw.transport.udp import route_source

log = structlog.get_logger("vpn_gw")

ROAM_DEBOUNCE = 0.05  # seconds after a netlink event before the roaming check


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
        events = None
        try:
            # pyroute2 takes ~200 ms to import: in a thread, so the event loop keeps serving the
            # first IKE exchanges of a (re)starting gateway meanwhile (issue 14 item 10).
            await asyncio.to_thread(importlib.import_module, "pyroute2")
            from pyroute2 import AsyncIPRoute
            from pyroute2.netlink.rtnl import (
                RTMGRP_IPV4_IFADDR,
                RTMGRP_IPV4_ROUTE,
                RTMGRP_IPV6_IFADDR,
                RTMGRP_IPV6_ROUTE,
                RTMGRP_LINK,
            )
            events = AsyncIPRoute()
            await events.bind(groups=RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
                              | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE)
        except Exception as e:  # noqa: BLE001 - fall back to polling only
            log.warning("no netlink events for roaming, polling only", error=str(e))
            events = None
        try:
            while True:
                if events is not None:
                    try:
                        async with asyncio.timeout(interval):
                            async for _msg in events.get():
                                break
                        await asyncio.sleep(ROAM_DEBOUNCE)  # let the kernel finish the change
                    except TimeoutError:
                        pass
                else:
                    await asyncio.sleep(interval)
                try:
                    self.check()
                except Exception as e:  # noqa: BLE001 - never let the watcher die
                    log.error("local address check failed", error=f"{type(e).__name__}: {e}")
        finally:
            if events is not None:
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
