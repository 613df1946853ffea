"""IKE_FOLLOWUP_KE (RFC 9370 2.2.4): additional key exchanges of a CREATE_CHILD_SA, both roles.

When the SA chosen in a CREATE_CHILD_SA (new Child SA with PFS, Child SA rekey, IKE SA
rekey) has Additional Key Exchange transforms, the responder answers the CREATE_CHILD_SA
as usual plus N(ADDITIONAL_KEY_EXCHANGE) carrying an opaque link, and creates nothing yet.
The initiator then runs one IKE_FOLLOWUP_KE per additional key exchange::

    HDR, SK {KEi(n), N(ADDITIONAL_KEY_EXCHANGE)(link)}  -->
                       <--  HDR, SK {KEr(n) [, N(ADDITIONAL_KEY_EXCHANGE)(link')]}

and when the last one completes both sides create the SA from all the secrets in order:
KEYMAT = prf+(SK_d, g^ir | SK(1) | ... | SK(n) | Ni | Nr) for a Child SA,
SKEYSEED = prf(SK_d(old), g^ir | SK(1) | ... | SK(n) | Ni | Nr) for an IKE SA.

An unknown link is answered with STATE_NOT_FOUND; a wrong method with INVALID_SYNTAX.  The
responder keeps at most ``MAX_PENDING`` unfinished followups per IKE SA (the oldest goes).
The initiator puts each IKE_FOLLOWUP_KE at the head of its request queue, so no other
exchange of ours comes between.
"""
from __future__ import annotations

from collections.abc import Sequence

from . import payloads as P
from .constants import ExchangeType as X
from .constants import NotifyType as N
from .crypto.kex import KeyExchange
from .errors import InvalidKeyExchange
from .message import Message
from .sa_common import (
    ExchangeFailed,
    FollowupDone,
    FollowupFailed,
    PendingFollowup,
    QueuedRequest,
    RequestBuilt,
)
from .sa_core import IkeSACore

MAX_PENDING = 4
LINK_LEN = 8


class FollowupKeExchange(IkeSACore):
    """Mixin of IkeSA (ikev2.ike_sa): works on the state declared in ``IkeSACore`` (its own:
    ``_followups``, the responder's pending followups keyed by link).
    Provides the hooks ``_followup_link``, ``_run_followups``.
    Calls no other exchange's hooks (the callers pass what to do when done or failed).
    """

    __slots__ = ()

    # ---------------------------------------------------------------- responder

    def _followup_link(self, methods: Sequence[KeyExchange], on_done: FollowupDone,
                       what: str) -> P.NotifyPayload:
        """Responder: remember what to do once ``methods`` have run; the N(ADD_KE) to send."""
        table = self._followups
        while len(table) >= MAX_PENDING:
            old = table.pop(next(iter(table)))  # the oldest (dicts keep insertion order)
            self.log("warning", "unfinished IKE_FOLLOWUP_KE state dropped", what=old.what)
        link = self.rng(LINK_LEN)
        table[link] = PendingFollowup(list(methods), on_done, what)
        return P.NotifyPayload(notify_type=N.ADDITIONAL_KEY_EXCHANGE, data=link)

    def _on_followup_request(self, req: Message, now: float) -> None:
        n = req.notify(N.ADDITIONAL_KEY_EXCHANGE)
        table = self._followups
        if n is None or n.data not in table:
            raise ExchangeFailed(N.STATE_NOT_FOUND, "IKE_FOLLOWUP_KE for an unknown exchange")
        f = table.pop(n.data)
        method = f.methods.pop(0)
        ke = req.get(P.KEPayload)
        if ke is None or ke.group != method.group:
            got = "no KE payload" if ke is None else f"KE method {ke.group}"
            raise ExchangeFailed(N.INVALID_SYNTAX, f"IKE_FOLLOWUP_KE ({f.what}): {got}, expected "
                                 f"{method.name}")
        try:
            ours, shared = method.respond(self.rng, ke.data)
        except InvalidKeyExchange as e:
            raise ExchangeFailed(N.INVALID_SYNTAX, f"IKE_FOLLOWUP_KE ({f.what}): {e}") from None
        f.secrets.append(shared)
        payloads: list[P.Payload] = [P.KEPayload(group=method.group, data=ours)]
        if f.methods:
            link = self._followup_link(f.methods, f.on_done, f.what)
            self._followups[link.data].secrets = f.secrets
            payloads.append(link)
        self._respond(req, payloads)
        self.log("info", "additional key exchange done", exchange="IKE_FOLLOWUP_KE", what=f.what,
                 method=method.name)
        if not f.methods:
            f.on_done(f.secrets)

    # ---------------------------------------------------------------- initiator

    def _run_followups(self, msg: Message, methods: Sequence[KeyExchange], on_done: FollowupDone,
                       on_fail: FollowupFailed, what: str) -> None:
        """Initiator, after the CREATE_CHILD_SA response ``msg``: run the followups."""
        n = msg.notify(N.ADDITIONAL_KEY_EXCHANGE)
        if n is None:
            on_fail("responder chose additional key exchanges but sent no ADDITIONAL_KEY_EXCHANGE")
            return
        self._queue_followup(n.data, list(methods), [], on_done, on_fail, what)

    def _queue_followup(self, link: bytes, methods: list[KeyExchange], secrets: list[bytes],
                        on_done: FollowupDone, on_fail: FollowupFailed, what: str) -> None:
        method = methods[0]

        def build() -> RequestBuilt:
            priv = method.generate(self.rng)
            payloads: list[P.Payload] = [
                P.KEPayload(group=method.group, data=priv.public_bytes),
                P.NotifyPayload(notify_type=N.ADDITIONAL_KEY_EXCHANGE, data=link)]

            def on_response(resp: Message) -> None:
                ke = resp.get(P.KEPayload)
                errors = [x for x in resp.notifies() if x.is_error]
                try:
                    if errors or ke is None:
                        why = f"peer answered {errors[0].notify_type}" if errors else "no KE"
                        raise ExchangeFailed(N.INVALID_SYNTAX, why)
                    if ke.group != method.group:
                        raise ExchangeFailed(N.INVALID_SYNTAX, f"KE method {ke.group}, expected "
                                             f"{method.name}")
                    shared = priv.shared_secret(ke.data)
                except (ExchangeFailed, InvalidKeyExchange) as e:
                    on_fail(f"IKE_FOLLOWUP_KE ({method.name}): {e}")
                    return
                self.log("info", "additional key exchange done", exchange="IKE_FOLLOWUP_KE",
                         what=what, method=method.name)
                done = secrets + [shared]
                if len(methods) > 1:
                    nxt = resp.notify(N.ADDITIONAL_KEY_EXCHANGE)
                    if nxt is None:
                        on_fail("IKE_FOLLOWUP_KE response without ADDITIONAL_KEY_EXCHANGE")
                        return
                    self._queue_followup(nxt.data, methods[1:], done, on_done, on_fail, what)
                else:
                    on_done(done)
            return X.IKE_FOLLOWUP_KE, payloads, on_response

        self.queue.insert(0, QueuedRequest(f"IKE_FOLLOWUP_KE {what}", build))
        self._changed()
