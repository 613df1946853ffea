"""The engine's log callback: structlog lines, with the events that anyone on the Internet can
trigger at will rate-limited per kind and source address, so a flood of garbage cannot flood
the log."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from vpn_gw.log import RateLimitedLogger, enabled

log = structlog.get_logger("vpn_gw")

FLOODABLE = frozenset({"dropped datagram", "dropped malformed message",
                       "dropped message failing integrity check", "IKE_SA_INIT refused",
                       "asking for a cookie", "dropped request with unexpected message ID",
                       "dropped unexpected response", "dropped IKE fragment set over budget"})


class EngineLog:
    """``wants(level)``: the engine may skip building a line's fields when it would be dropped
    (only where no observer needs the line: debug lines)."""
    def __init__(self) -> None:
        self._ratelimit = RateLimitedLogger(log, limit=5, interval=60.0)
        # sees every line, also rate-limited ones (metrics count COOKIEs, EAP results)
        self.observer: Callable[[str, dict], None] | None = None

    def __call__(self, level: str, event: str, **fields: Any) -> None:
        if self.observer is not None:
            self.observer(event, fields)
        if not enabled(level):
            return
        if event in FLOODABLE:
            peer = str(fields.get("peer", "")).rsplit(":", 1)[0]
            self._ratelimit.log((event, fields.get("reason", ""), peer), event, level=level, **fields)
            return
        getattr(log, level, log.info)(event, **fields)

    @staticmethod
    def wants(level: str) -> bool:
        return enabled(level)
