"""INFORMATIONAL: liveness checks, DELETE of Child and IKE SAs (RFC 7296 1.4, 1.5)."""
from __future__ import annotations

from . import payloads as P
from .child_sa import ChildSA, ChildState
from .constants import ExchangeType as X
from .constants import NotifyType as N
from .constants import ProtocolId
from .events import AuthFailed
from .message import Message
from .sa_common import QueuedRequest, RequestBuilt, State
from .sa_core import IkeSACore


class Informational(IkeSACore):
    """Mixin of IkeSA (ikev2.ike_sa): works on the state declared in ``IkeSACore``.
    Provides the hooks ``_delete_children``.
    Calls other exchanges only through the hooks ``_child_by_spi_in``, ``_child_by_spi_out``,
    ``_mobike_request``, ``_settle_lost_collision``.
    """

    __slots__ = ()

    def _on_informational_request(self, req: Message, now: float) -> None:
        if self._mobike_request(req, now):
            return
        deletes = req.all(P.DeletePayload)
        out: list[P.Payload] = []
        if any(d.protocol == ProtocolId.IKE for d in deletes):
            self._respond(req, [])
            self.log("info", "IKE_SA deleted by peer", spi_i=self.spi_i.hex(), spi_r=self.spi_r.hex())
            if self._ike_collision is not None:
                # The peer won a rekey collision and deletes the old SA before our own rekey
                # completed: its new SA takes over our Child SAs.
                self._settle_lost_collision()
                self._gone(now)
            elif self.state == State.REKEYED or self.redundant or self.collision_candidate:
                self._gone(now)
            else:
                self._die(now, "deleted by peer")
            return
        ours: list[bytes] = []
        for d in deletes:
            if d.protocol not in (ProtocolId.ESP, ProtocolId.AH):
                continue
            for spi in d.spis:
                c = self._child_by_spi_out(spi)
                if c is None:
                    continue
                if c.state != ChildState.DELETING:
                    ours.append(c.spi_in)  # RFC 7296 1.4.1: answer with our inbound SPI
                self.log("info", "CHILD_SA deleted by peer", child=c.name, spi_in=c.spi_in.hex())
                self._remove_child(c, "deleted by peer")
        if ours:
            out.append(P.DeletePayload(protocol=ProtocolId.ESP, spis=ours))
        if any(n.notify_type == N.AUTHENTICATION_FAILED for n in req.notifies()):
            self._respond(req, [])
            why = "peer rejected our authentication"
            srv = self._eap_server_obj
            if srv is not None and not self._eap_done:
                # We are the EAP server and the client gave up (strongSwan does so after our
                # MS-CHAPv2 Failure Request instead of a Failure Response): say why it failed.
                ident = srv.identity or str(self.peer_id)
                reason = srv.failure_reason or "the client ended EAP with AUTHENTICATION_FAILED"
                why = f"EAP authentication of '{ident}' failed: {reason}"
                self.log("warning", "EAP authentication failed", method=self.policy.remote_auth.method,
                         eap_identity=ident, reason=reason)
            self._emit(AuthFailed(reason=why))
            self._die(now, why)
            return
        self._respond(req, out)

    def liveness(self, now: float, force: bool = False) -> None:
        """Send an empty INFORMATIONAL (dead peer detection); no answer after the retransmissions
        deletes the IKE SA. ``force``: also when one is already queued (after a local move, the
        check must leave from the new address)."""
        if not force and any(q.what == "liveness check" for q in self.queue):
            return
        self._request("liveness check", lambda: (X.INFORMATIONAL, [], lambda m: None)
                      if self.state == State.ESTABLISHED else None)
        self._pump(now)

    def _build_delete_child(self, children: list[ChildSA]) -> RequestBuilt:
        spis = [c.spi_in for c in children]
        if not spis or self.state != State.ESTABLISHED:
            return None

        def on_response(msg: Message) -> None:
            for c in children:
                self._remove_child(c, "deleted")
        return X.INFORMATIONAL, [P.DeletePayload(protocol=ProtocolId.ESP, spis=spis)], on_response

    def _delete_children(self, children: list[ChildSA], now: float, why: str) -> None:
        for c in children:
            c.state = ChildState.DELETING
        self.log("info", "deleting CHILD_SA", children=[c.name for c in children],
                 spis=[c.spi_in.hex() for c in children], reason=why)
        self._request(f"delete child ({why})", lambda: self._build_delete_child(children))
        self._pump(now)

    def delete_child(self, spi_in: bytes, now: float) -> bool:
        c = self._child_by_spi_in(spi_in)
        if c is None:
            return False
        self._delete_children([c], now, "requested")
        return True

    def delete(self, now: float, reason: str = "deleted locally") -> None:
        """Delete the IKE SA (and its Child SAs) with an INFORMATIONAL exchange."""
        if self.state == State.DELETED:
            return
        if self.state != State.ESTABLISHED or self.sk_out is None:
            self._die(now, reason)
            return
        self.state = State.DELETING
        self.queue.clear()
        self._now = now

        def build() -> RequestBuilt:
            return (X.INFORMATIONAL, [P.DeletePayload(protocol=ProtocolId.IKE)],
                    lambda m: self._die(self._now, reason))
        self.pending = None  # abandon what is in flight; the delete supersedes it
        self.queue.append(QueuedRequest("delete IKE SA", build))
        self._pump(now)
