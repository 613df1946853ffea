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
from typing import TYPE_CHECKING, Any, Protocol

from .events import Event
from .message import Message
from .sa_common import LogFn, State

if TYPE_CHECKING:
    from .cp import Assignment, CfgRequest


class _Sa(Protocol):
    """What these hooks use of an IKE SA (a Protocol: no import of ikev2.sa_core / ike_sa)."""
    state: State
    _assign_async: AssignWaiting | None
    _assign_async_tickets: int
    log: LogFn
    _now: float

    def _emit(self, ev: Event) -> None: ...


class _FullSa(_Sa, Protocol):
    def _handle_request(self, req: Message, now: float) -> None: ...
    def _pump(self, now: float) -> None: ...



class Deferred(Exception):
    """The assignment is being looked up: do not answer the request now."""


@dataclass
class AddressNeeded(Event):
    """Gateway: find addresses for ``identity`` (``request``: ikev2.cp.CfgRequest: families,
    requested addresses) and call ``IkeManager.assignment_ready(ike_id, ticket, assignment, now)``."""
    ticket: int
    identity: str
    request: CfgRequest = field(repr=False)
    assigner: Any = field(repr=False, default=None)


@dataclass
class AssignWaiting:
    """The request waiting for its answer (held by the IKE SA, ``_assign_async``)."""
    ticket: int
    request: Message | None = None   # the IKE_AUTH request to answer (set by park)
    ready: bool = False
    assignment: Assignment | None = None


def call(sa: _Sa, assigner: Any, identity: str, want: CfgRequest) -> Assignment | None:
    """The assigner's answer, or Deferred (an AddressNeeded event is out, or still pending)."""
    if not getattr(assigner, "asynchronous", False):
        result: Assignment | None = assigner(identity, want)
        return result
    w: AssignWaiting | None = sa._assign_async
    if w is not None:
        if w.ready:
            sa._assign_async = None
            return w.assignment
        raise Deferred()
    ticket = sa._assign_async_tickets + 1
    sa._assign_async_tickets = ticket
    sa._assign_async = AssignWaiting(ticket)
    sa._emit(AddressNeeded(ticket=ticket, identity=identity, request=want, assigner=assigner))
    raise Deferred()


def park(sa: _Sa, req: Message) -> None:
    """The request that waits for the assignment (retransmissions re-park the same one)."""
    w: AssignWaiting | None = sa._assign_async
    if w is not None and w.request is None:
        w.request = req
        sa.log("info", "waiting for a virtual IP", ticket=w.ticket)


def deliver(sa: _FullSa, ticket: int, assignment: Assignment | None, now: float) -> bool:
    w: AssignWaiting | None = sa._assign_async
    if w is None or w.ticket != ticket or w.ready or w.request is None or sa.state == State.DELETED:
        sa.log("debug", "stale address assignment ignored", ticket=ticket)
        return False
    w.ready, w.assignment = True, assignment
    sa._now = now
    sa._handle_request(w.request, now)
    sa._pump(now)
    return True
