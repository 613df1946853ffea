"""The engine pausing an IKE SA while a handshake computation runs elsewhere, sans-IO.

With an ``OffloadPolicy`` on the manager (``IkeManager(offload=...)``), an exchange that needs an
expensive computation builds a job (``ikev2.compute``); when the policy wants it handed out, the
IKE SA emits a :class:`ikev2.compute.ComputeNeeded` event and stops there; the request stays
unanswered. Retransmissions of that request meanwhile are absorbed (nothing recomputed, no
second event). The user runs the job and calls ``IkeManager.compute_done(token, result, now)``:
the IKE SA continues exactly where it stopped. A result for an SA that died meanwhile (half-open
expiry, a DELETE, INITIAL_CONTACT) is dropped. Without a policy (the default) every job runs
inline, as before this module existed.

Hooks: ``result_for()`` in ``InitExchange._on_init_request`` (responder IKE_SA_INIT keys) and in
``AuthExchange._on_auth_request`` (responder IKE_AUTH with certificates); ``deliver()`` from the
manager. The state is one attribute of the IKE SA (``_compute_wait``); the modules see the IKE SA
through a Protocol (no import of sa_core or ike_sa), as ikev2.eap_async does.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .compute import ComputeNeeded, Job, OffloadPolicy, Result, run
from .events import Event
from .message import Message
from .sa_common import LogFn, State

__all__ = ["ComputeWaiting", "Deferred", "deliver", "result_for"]


class _Sa(Protocol):
    state: State
    offload: OffloadPolicy | None
    _compute_wait: ComputeWaiting | None
    _compute_tickets: int
    log: LogFn
    _now: float

    def _emit(self, ev: Event) -> None: ...


class _FullSa(_Sa, Protocol):
    def _handle_request(self, req: Message, now: float) -> None: ...
    def _resume_init(self, w: ComputeWaiting, now: float) -> None: ...
    def _pump(self, now: float) -> None: ...


class Deferred(Exception):
    """The computation runs elsewhere: do not answer the request now."""


@dataclass
class ComputeWaiting:
    """The request waiting for its computation (held by the IKE SA, ``_compute_wait``)."""
    ticket: int
    kind: str  # "init" | "auth"
    request: Message
    context: Any = field(default=None, repr=False)  # what the exchange needs to continue
    token: int = 0  # set by the manager
    result: Result | None = field(default=None, repr=False)


def waiting(sa: _Sa, kind: str, mid: int) -> bool:
    """True if the SA waits for the ``kind`` computation of request ``mid`` (a retransmission of
    it is to be absorbed)."""
    w = sa._compute_wait
    return w is not None and w.kind == kind and w.request.message_id == mid and w.result is None


def result_for(sa: _Sa, kind: str, req: Message, build: Callable[[], Job], context: Any = None) -> Result:
    """The result of the ``kind`` computation for ``req``: computed inline, or delivered by the
    user (then the SA stopped here before and the request is processed again); raises Deferred
    when it was just handed out or is still pending."""
    w = sa._compute_wait
    if w is not None and w.kind == kind and w.request.message_id == req.message_id:
        if w.result is not None:
            sa._compute_wait = None
            return w.result
        sa.log("debug", "computation pending, request retransmission absorbed", kind=kind, mid=req.message_id)
        raise Deferred()
    job = build()
    policy = sa.offload
    if policy is None or not policy.wants(job):
        return run(job)
    ticket = sa._compute_tickets + 1
    sa._compute_tickets = ticket
    sa._compute_wait = ComputeWaiting(ticket, kind, req, context)
    sa._emit(ComputeNeeded(job=job, ticket=ticket))
    raise Deferred()


def deliver(sa: _FullSa, ticket: int, result: Result, now: float) -> bool:
    """The result of computation ``ticket``: continue the waiting exchange. False if stale."""
    w = sa._compute_wait
    if w is None or w.ticket != ticket or w.result is not None or sa.state == State.DELETED:
        sa.log("debug", "stale computation result dropped", ticket=ticket)
        return False
    w.result = result
    sa._now = now
    if w.kind == "init":
        sa._compute_wait = None
        sa._resume_init(w, now)
    else:
        sa._handle_request(w.request, now)
    sa._pump(now)
    return True
