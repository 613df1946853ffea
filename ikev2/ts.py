"""Traffic selectors: intersection and narrowing (RFC 7296 2.9)."""
from __future__ import annotations

from .payloads import TrafficSelector


def intersect(a: TrafficSelector, b: TrafficSelector) -> TrafficSelector | None:
    """The selector matching what both match, or None."""
    if (a.ts_type != b.ts_type or a.start_addr is None or b.start_addr is None or a.end_addr is None
            or b.end_addr is None):
        return None
    if a.ip_protocol and b.ip_protocol and a.ip_protocol != b.ip_protocol:
        return None
    proto = a.ip_protocol or b.ip_protocol
    sport, eport = max(a.start_port, b.start_port), min(a.end_port, b.end_port)
    # The same ts_type: all four addresses are of one family (mypy cannot see that).
    saddr = max(a.start_addr, b.start_addr)
    eaddr = min(a.end_addr, b.end_addr)
    if sport > eport or saddr > eaddr:  # type: ignore[operator]
        return None
    return TrafficSelector(a.ts_type, proto, sport, eport, saddr, eaddr)


def narrow(proposed: list[TrafficSelector], allowed: list[TrafficSelector]) -> list[TrafficSelector]:
    """Responder narrowing: every non-empty intersection of a proposed selector with an allowed
    one, without duplicates, in the proposer's order."""
    out: list[TrafficSelector] = []
    for p in proposed:
        for a in allowed:
            i = intersect(p, a)
            if i is not None and i not in out:
                out.append(i)
    return out


def is_subset(inner: TrafficSelector, outer: TrafficSelector) -> bool:
    i = intersect(inner, outer)
    return i is not None and i == TrafficSelector(inner.ts_type, inner.ip_protocol or outer.ip_protocol,
                                                   inner.start_port, inner.end_port,
                                                   inner.start_addr, inner.end_addr) and \
        (outer.ip_protocol == 0 or inner.ip_protocol == outer.ip_protocol)


def all_within(chosen: list[TrafficSelector], proposed: list[TrafficSelector]) -> bool:
    """Initiator check of the responder's answer: each selector lies within one we proposed."""
    return bool(chosen) and all(any(is_subset(c, p) for p in proposed) for c in chosen)
