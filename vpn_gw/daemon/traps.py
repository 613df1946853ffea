"""``start_action = "trap"`` and ``dpd_action = "trap"``: trap policies in the data plane whose
first packet starts the connection (an ACQUIRE)."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog

from ikev2.manager import IkeManager
from vpn_gw.dataplane import DataPlane

log = structlog.get_logger("vpn_gw")


class Traps:
    def __init__(self, manager: IkeManager, dataplane: DataPlane, initiate: Callable[[str], Any],
                 flush: Callable[[], None] = lambda: None):
        self.manager = manager
        self.dataplane = dataplane
        self.initiate = initiate
        self.flush = flush  # sends what the engine produced

    @property
    def supported(self) -> bool:
        return hasattr(self.dataplane, "install_trap")

    def install_all(self, connections: Iterable[Any]) -> None:
        if not self.supported:
            return
        self.dataplane.on_acquire = self._acquire  # type: ignore[attr-defined]
        for conn in connections:
            if conn.start_action == "trap":
                self.install(conn.name)

    def install(self, name: str) -> None:
        pol = next(p for p in self.manager.policies if p.name == name)
        for cp in pol.children:
            self.dataplane.install_trap(name, cp.local_ts, cp.remote_ts)  # type: ignore[attr-defined]

    def armed(self, name: str) -> bool:
        return self.supported and name in self.dataplane.traps  # type: ignore[attr-defined]

    def _acquire(self, name: str) -> None:
        asked = self.manager.request_missing_children(name, time.monotonic())
        if asked is not None:  # the IKE SA is up: the trapped Child SA was deleted (by the peer)
            if asked:
                log.info("traffic for a trap policy: asking for the Child SA again", connection=name)
                self.flush()
            return
        if self.manager.find(name):
            return  # already being set up
        try:
            self.initiate(name)
        except (OSError, ValueError) as e:
            log.warning("cannot start connection for trapped traffic", connection=name, error=str(e))
