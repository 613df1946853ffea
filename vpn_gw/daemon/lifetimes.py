"""Volume lifetimes: rekey_bytes/life_bytes/rekey_packets/life_packets and sequence-number
exhaustion live in the data plane (the kernel's SA lifetimes with dataplane = "xfrm"); a soft
limit rekeys the Child SA, a hard one deletes it. Checked five times a second (the kernel reports
its EXPIREs at once; the userspace plane's counters are polled)."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from ikev2.manager import IkeManager
from vpn_gw.dataplane import DataPlane

log = structlog.get_logger("vpn_gw")


class LifetimeWatcher:
    def __init__(self, manager: IkeManager, dataplane: DataPlane, flush: Callable[[], None]):
        self.manager = manager
        self.dataplane = dataplane
        self.flush = flush

    async def run(self, interval: float = 0.2) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self.check()
            except Exception as e:  # noqa: BLE001 - never let the watcher die
                log.error("lifetime check failed", error=f"{type(e).__name__}: {e}")

    def check(self) -> int:
        now = time.monotonic()
        acted = 0
        for spi_in, state in self.dataplane.expiries(now):
            sa = self.manager.child_owner(spi_in)
            child = next((c for c in sa.children if c.spi_in == spi_in), None) if sa is not None else None
            if sa is None or child is None:
                continue
            if state == "soft":
                if sa.rekey_child(spi_in, now):
                    log.info("CHILD_SA reached its soft volume limit: rekeying", connection=sa.name,
                             child=child.name, spi_in=spi_in.hex())
                    acted += 1
            else:
                log.warning("CHILD_SA reached its hard volume limit: deleting", connection=sa.name,
                            child=child.name, spi_in=spi_in.hex())
                sa.delete_child(spi_in, now)
                acted += 1
        if acted:
            self.flush()
        return acted
