"""Asynchronous virtual-IP assignment (e.g. leases from a shared PostgreSQL pool), sans-IO.

When a connection's ``address_assigner`` has ``asynchronous = True``, the engine does not call
it: the last IKE_AUTH request (the one to be answered with the configuration reply) stays
unanswered and an :class:`AddressNeeded` event is emitted. The engine's user finds the
addresses however it likes and feeds them back with
``IkeManager.assignment_ready(ike_id, ticket, assignment, now)`` (an ``ikev2.cp.Assignment``,
or None = no address: the client gets INTERNAL_ADDRESS_FAILURE). The engine then processes the
request again, exactly as with a synchronous assigner. Retransmissions of the request while
waiting are dropped (the request is re-examined, no second event is emitted).

Engine hooks: ``call()`` replaces the assigner call in ``_assign_virtual_ip``; ``park()`` in
``_complete_auth_responder`` when it raised :class:`Deferred`. State: one attribute of the IKE
SA (``_assign_async``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .events import Event
from .sa_common import State


class Deferred(Exception):
    """The assignment is being looked up: do not answer the request now."""


@dataclass
class AddressNeeded(Event):
    """Gateway: find addresses for ``identity`` (``request``: ikev2.cp.CfgRequest: families,
    requested addresses) and call ``IkeManager.assignment_ready(ike_id, ticket, assignment, now)``."""
    ticket: int
    identity: str
    request: object = field(repr=False)
    assigner: object = field(repr=False, default=None)


@dataclass
class _Waiting:
    ticket: int
    request: object = None   # the IKE_AUTH request to answer (set by park)
    ready: bool = False
    assignment: object = None


def call(sa, assigner, identity: str, want):
    """The assigner's answer, or Deferred (an AddressNeeded event is out, or still pending)."""
    if not getattr(assigner, "asynchronous", False):
        return assigner(identity, want)
    w: _Waiting | None = getattr(sa, "_assign_async", None)
    if w is not None:
        if w.ready:
            sa._assign_async = None
            return w.assignment
        raise Deferred()
    ticket = getattr(sa, "_assign_async_tickets", 0) + 1
    sa._assign_async_tickets = ticket
    sa._assign_async = _Waiting(ticket)
    sa._emit(AddressNeeded(ticket=ticket, identity=identity, request=want, assigner=assigner))
    raise Deferred()


def park(sa, req) -> None:
    """The request that waits for the assignment (retransmissions re-park the same one)."""
    w: _Waiting | None = getattr(sa, "_assign_async", None)
    if w is not None and w.request is None:
        w.request = req
        sa.log("info", "waiting for a virtual IP", ticket=w.ticket)


def deliver(sa, ticket: int, assignment, now: float) -> bool:
    w: _Waiting | None = getattr(sa, "_assign_async", None)
    if w is None or w.ticket != ticket or w.ready or w.request is None or sa.state == State.DELETED:
        sa.log("debug", "stale address assignment ignored", ticket=ticket)
        return False
    w.ready, w.assignment = True, assignment
    sa._now = now
    sa._handle_request(w.request, now)
    sa._pump(now)
    return True
