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
from typing import TYPE_CHECKING, Protocol

from . import payloads as P
from .eap.async_server import AsyncEapServer
from .eap.packet import EapStep
from .events import Address, Event
from .message import Message
from .sa_common import LogFn, State

if TYPE_CHECKING:
    from .eap.server import EapServer


__all__ = ["AsyncEapServer", "EapVerdictNeeded", "defer", "deliver"]


class _Sa(Protocol):
    """What these hooks use of an IKE SA (ikev2.sa_core.IkeSACore; a Protocol, so that this
    module imports neither it nor ikev2.ike_sa)."""
    state: State
    _eap_async: EapWaiting | None
    _eap_async_tickets: int
    remote: Address
    local: Address
    log: LogFn
    _now: float
    _eap_done: bool
    _eap_server_obj: EapServer | AsyncEapServer | None

    def _emit(self, ev: Event) -> None: ...


class _FullSa(_Sa, Protocol):
    """... and of ikev2.ike_sa.IkeSA to answer the waiting request."""
    def _handle_request(self, req: Message, now: float) -> None: ...
    def _pump(self, now: float) -> None: ...




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
class EapWaiting:
    """The request waiting for its answer (held by the IKE SA, ``_eap_async``)."""
    ticket: int
    request: Message  # the IKE_AUTH request to answer
    verdict_ready: bool = False


def defer(sa: _Sa, req: Message, now: float) -> bool:
    """Called first in ``_continue_eap_server``: True if the request is to be answered later."""
    backend = sa._eap_server_obj
    if not isinstance(backend, AsyncEapServer) or sa._eap_done:
        return False
    eap = req.get(P.EAPPayload)
    if eap is None:
        return False
    w: EapWaiting | None = sa._eap_async
    if w is not None and w.request.message_id == req.message_id:
        if w.verdict_ready:
            sa._eap_async = None
            return False  # the verdict is in: process it now (backend.process returns it)
        sa.log("debug", "EAP verdict pending, request retransmission dropped", mid=req.message_id)
        return True
    ticket = (w.ticket + 1) if w is not None else sa._eap_async_tickets + 1
    sa._eap_async_tickets = ticket
    sa._eap_async = EapWaiting(ticket, req)
    sa._emit(EapVerdictNeeded(ticket=ticket, message=eap.message, backend=backend,
                              peer=sa.remote, local=sa.local))
    return True


def deliver(sa: _FullSa, ticket: int, step: EapStep, now: float) -> bool:
    """The verdict for ``ticket``: answer the waiting IKE_AUTH request. False if stale."""
    w: EapWaiting | None = sa._eap_async
    if w is None or w.ticket != ticket or w.verdict_ready or sa.state == State.DELETED:
        sa.log("debug", "stale EAP verdict ignored", ticket=ticket)
        return False
    if not isinstance(step, EapStep):
        raise TypeError("an EAP verdict is an ikev2.eap.EapStep")
    backend = sa._eap_server_obj
    if not isinstance(backend, AsyncEapServer):
        return False
    w.verdict_ready = True
    backend._verdict = step
    sa._now = now
    sa._handle_request(w.request, now)
    sa._pump(now)
    return True
