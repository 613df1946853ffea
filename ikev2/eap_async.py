"""Asynchronous EAP authenticators (e.g. EAP relayed to a RADIUS server), sans-IO.

The engine never waits. When a connection's ``remote_auth.eap_server()`` returns an
:class:`AsyncEapServer`, each EAP-Response of the client is handed out as an
:class:`EapVerdictNeeded` event instead of being processed; the IKE_AUTH request stays
unanswered (retransmissions of it are dropped meanwhile). The user of the engine (the daemon)
obtains the verdict — an :class:`ikev2.eap.EapStep` — however it likes and feeds it back with
``IkeManager.eap_verdict(ike_id, ticket, step, now)``; the engine then answers the request
exactly as it would with a local EAP server (next EAP Request, EAP-Success and the MSK-keyed
AUTH exchange, or EAP-Failure + AUTHENTICATION_FAILED).

A verdict with a stale ticket (the IKE SA moved on or died) is ignored.

Engine hooks: ``defer()`` at the top of ``EapExchange._continue_eap_server`` and ``deliver()``
from ``IkeManager.eap_verdict``; the state lives in one attribute of the IKE SA
(``_eap_async``), so nothing else of the IKE SA changes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import payloads as P
from .eap.packet import EapError, EapStep
from .events import Event
from .sa_common import State


class AsyncEapServer:
    """Base of asynchronous EAP authenticators. Subclasses implement :meth:`start` (the first
    EAP Request, made locally, e.g. Request/Identity) and whatever the daemon calls to decide
    (not the engine's business). The engine calls :meth:`process` only once the verdict for
    that message has been delivered."""

    asynchronous = True

    def __init__(self):
        self._verdict: EapStep | None = None

    def start(self) -> bytes:
        raise NotImplementedError

    def process(self, message: bytes) -> EapStep:
        step, self._verdict = self._verdict, None
        if step is None:
            raise EapError("no verdict delivered for this EAP message")
        return step


@dataclass
class EapVerdictNeeded(Event):
    """Gateway: decide on this EAP-Response and call ``IkeManager.eap_verdict(ike_id, ticket,
    step, now)``. ``peer``: the client's (address, port); ``local``: ours."""
    ticket: int
    message: bytes = field(repr=False)
    backend: AsyncEapServer = field(repr=False)
    peer: tuple[str, int] = ("", 0)
    local: tuple[str, int] = ("", 0)


@dataclass
class _Waiting:
    ticket: int
    request: object  # ikev2.message.Message: the IKE_AUTH request to answer
    verdict_ready: bool = False


def defer(sa, req, now: float) -> bool:
    """Called first in ``_continue_eap_server``: True if the request is to be answered later."""
    backend = sa._eap_server_obj
    if not getattr(backend, "asynchronous", False) or sa._eap_done:
        return False
    eap = req.get(P.EAPPayload)
    if eap is None:
        return False
    w: _Waiting | None = getattr(sa, "_eap_async", None)
    if w is not None and w.request.message_id == req.message_id:
        if w.verdict_ready:
            sa._eap_async = None
            return False  # the verdict is in: process it now (backend.process returns it)
        sa.log("debug", "EAP verdict pending, request retransmission dropped", mid=req.message_id)
        return True
    ticket = (w.ticket + 1) if w is not None else getattr(sa, "_eap_async_tickets", 0) + 1
    sa._eap_async_tickets = ticket
    sa._eap_async = _Waiting(ticket, req)
    sa._emit(EapVerdictNeeded(ticket=ticket, message=eap.message, backend=backend,
                              peer=sa.remote, local=sa.local))
    return True


def deliver(sa, ticket: int, step: EapStep, now: float) -> bool:
    """The verdict for ``ticket``: answer the waiting IKE_AUTH request. False if stale."""
    w: _Waiting | None = getattr(sa, "_eap_async", None)
    if w is None or w.ticket != ticket or w.verdict_ready or sa.state == State.DELETED:
        sa.log("debug", "stale EAP verdict ignored", ticket=ticket)
        return False
    if not isinstance(step, EapStep):
        raise TypeError("an EAP verdict is an ikev2.eap.EapStep")
    w.verdict_ready = True
    sa._eap_server_obj._verdict = step
    sa._now = now
    sa._handle_request(w.request, now)
    sa._pump(now)
    return True
