"""IKE_INTERMEDIATE (RFC 9242) carrying RFC 9370 additional key exchanges, both roles.

After IKE_SA_INIT, when the chosen IKE proposal has Additional Key Exchange transforms
(ADDKE1..7 other than NONE) and both peers sent N(INTERMEDIATE_EXCHANGE_SUPPORTED), the
initiator runs one IKE_INTERMEDIATE exchange per additional key exchange, in ADDKE order::

    HDR, SK {KEi(n)}  -->
                      <--  HDR, SK {KEr(n)}

Each is protected with the keys of the previous step; once it completes both sides update
all IKE SA keys (``multi_ke.updated_ike_keys``) and extend the IntAuth chain that IKE_AUTH's
AUTH payload covers (``multi_ke.IntAuthChain``).  IKE_INTERMEDIATE messages may be
fragmented (RFC 7383) like any encrypted message; an ML-KEM-1024 key share needs it.

Errors: a KE payload of the wrong method or length is INVALID_SYNTAX (RFC 9370 2.2.2: only
the first key exchange may be renegotiated with INVALID_KE_PAYLOAD) and ends the IKE SA.
"""
from __future__ import annotations

from . import payloads as P
from .constants import ExchangeType as X
from .constants import HeaderFlag, TransformType
from .constants import NotifyType as N
from .crypto.kex import KeyExchange
from .errors import InvalidKeyExchange
from .message import Message, encode_payloads
from .multi_ke import int_auth_ap, updated_ike_keys
from .sa_common import ExchangeFailed, RequestBuilt, State
from .sa_core import IkeSACore


class IntermediateExchange(IkeSACore):
    """Mixin of IkeSA (ikev2.ike_sa): works on the state declared in ``IkeSACore`` (its own:
    ``peer_intermediate``, ``_int_chain``).
    Provides the hooks ``_after_init_as_initiator``, ``_check_intermediate_support``,
    ``_int_auth_suffix``, ``_intermediate_notify``, ``_intermediate_pending``,
    ``key_exchange_names``.
    Calls other exchanges only through the hooks ``_build_auth_request``, ``_install_keys``.
    """

    __slots__ = ()

    # ---------------------------------------------------------------- shared

    def _wants_intermediate(self) -> bool:
        """Send N(INTERMEDIATE_EXCHANGE_SUPPORTED) in IKE_SA_INIT: when any IKE proposal we
        could use has an additional key exchange."""
        pols = [self.policy] if self.initiator else self.candidates
        return any(t.type >= TransformType.ADDKE1 and t.type <= TransformType.ADDKE7 and t.id
                   for pol in pols if pol is not None for p in pol.ike_proposals
                   for t in p.transforms)

    def _intermediate_notify(self) -> list[P.Payload]:
        if self._wants_intermediate():
            return [P.NotifyPayload(notify_type=N.INTERMEDIATE_EXCHANGE_SUPPORTED)]
        return []

    def _check_intermediate_support(self, msg: Message) -> None:
        """After IKE_SA_INIT: additional key exchanges need IKE_INTERMEDIATE on both sides."""
        self.peer_intermediate = msg.notify(N.INTERMEDIATE_EXCHANGE_SUPPORTED) is not None
        if self.agreed_suite.additional and not self.peer_intermediate:
            raise ExchangeFailed(N.NO_PROPOSAL_CHOSEN,
                                 "additional key exchanges negotiated but the peer did not send "
                                 "INTERMEDIATE_EXCHANGE_SUPPORTED")

    def _intermediate_pending(self) -> bool:
        """Additional key exchanges still to run before IKE_AUTH."""
        return self._int_exchanges < len(self.suite.additional) if self.suite else False

    def _int_auth_suffix(self) -> bytes:
        chain = self._int_chain_obj
        if chain is None:  # no IKE_INTERMEDIATE took place: nothing appended
            return b""
        return chain.auth_suffix(chain.exchanges + 1)  # first IKE_AUTH follows the last one

    def key_exchange_names(self) -> list[str]:
        """Every key exchange of this IKE SA, as negotiated (status, logs)."""
        if self.suite is None:
            return []
        return [m.name for m in self.suite.all_ke]

    def _our_ap(self, payloads: list[P.Payload], flags: int, mid: int) -> bytes:
        first, inner = encode_payloads(payloads)
        return int_auth_ap(inner=inner, first=first, spi_i=self.spi_i, spi_r=self.spi_r,
                           exchange=X.IKE_INTERMEDIATE, flags=flags, message_id=mid)

    def _their_ap(self, msg: Message) -> bytes:
        first = msg.payloads[0].type if msg.payloads else 0
        return int_auth_ap(inner=msg.plain_inner, first=first, spi_i=self.spi_i,
                           spi_r=self.spi_r, exchange=X.IKE_INTERMEDIATE, flags=msg.flags,
                           message_id=msg.message_id)

    def _finish_intermediate(self, ap_i: bytes, ap_r: bytes, shared: bytes, method: KeyExchange) -> None:
        """Both roles: extend the IntAuth chain with this exchange's keys, then update them."""
        chain = self._int_chain
        suite, old = self.agreed_suite, self.derived_keys
        chain.add(suite.prf, old.sk_pi, old.sk_pr, ap_i, ap_r)
        self._install_keys(updated_ike_keys(suite, old, shared, self.ni, self.nr,
                                            self.spi_i, self.spi_r))
        old.wipe()
        self.log("info", "additional key exchange done", exchange="IKE_INTERMEDIATE",
                 number=chain.exchanges, method=method.name,
                 key_exchanges="/".join(self.key_exchange_names()[:chain.exchanges + 1]))

    # ---------------------------------------------------------------- initiator

    def _after_init_as_initiator(self) -> None:
        """Queue the IKE_INTERMEDIATE exchanges, or IKE_AUTH when there are none (left)."""
        if self._intermediate_pending():
            self._request("IKE_INTERMEDIATE", self._build_intermediate_request)
        else:
            self._request("IKE_AUTH", self._build_auth_request)

    def _build_intermediate_request(self) -> RequestBuilt:
        n = self._int_exchanges
        method = self.agreed_suite.additional[n]
        priv = method.generate(self.rng)
        payloads: list[P.Payload] = [P.KEPayload(group=method.group, data=priv.public_bytes)]
        mid = self.next_mid

        def on_response(msg: Message) -> None:
            try:
                ke = msg.get(P.KEPayload)
                if ke is None:
                    errors = [x for x in msg.notifies() if x.is_error]
                    why = f"peer answered {errors[0].notify_type}" if errors else "no KE payload"
                    raise ExchangeFailed(N.INVALID_SYNTAX, f"IKE_INTERMEDIATE response: {why}")
                if ke.group != method.group:
                    raise ExchangeFailed(N.INVALID_SYNTAX, f"IKE_INTERMEDIATE response has KE "
                                         f"method {ke.group}, expected {method.group}")
                shared = priv.shared_secret(ke.data)
            except (ExchangeFailed, InvalidKeyExchange) as e:
                self._die(self._now, f"additional key exchange {n + 1} ({method.name}) failed: {e}")
                return
            ap_i = self._our_ap(payloads, HeaderFlag.INITIATOR, mid)
            ap_r = self._their_ap(msg)
            self._finish_intermediate(ap_i, ap_r, shared, method)
            self._after_init_as_initiator()

        return X.IKE_INTERMEDIATE, payloads, on_response

    # ---------------------------------------------------------------- responder

    def _on_intermediate_request(self, req: Message, now: float) -> None:
        if self.initiator or self.state != State.INIT_DONE or not self._intermediate_pending():
            raise ExchangeFailed(N.INVALID_SYNTAX, "unexpected IKE_INTERMEDIATE request", fatal=True)
        n = self._int_exchanges
        method = self.agreed_suite.additional[n]
        ke = req.get(P.KEPayload)
        if ke is None or ke.group != method.group:
            got = "no KE payload" if ke is None else f"KE method {ke.group}"
            raise ExchangeFailed(N.INVALID_SYNTAX, f"IKE_INTERMEDIATE {n + 1}: {got}, expected "
                                 f"{method.name}", fatal=True)
        try:
            ours, shared = method.respond(self.rng, ke.data)
        except InvalidKeyExchange as e:
            raise ExchangeFailed(N.INVALID_SYNTAX, f"additional key exchange {n + 1}: {e}",
                                 fatal=True) from None
        ap_i = self._their_ap(req)
        payloads: list[P.Payload] = [P.KEPayload(group=method.group, data=ours)]
        self._respond(req, payloads)
        ap_r = self._our_ap(payloads, HeaderFlag.RESPONSE, req.message_id)
        self._finish_intermediate(ap_i, ap_r, shared, method)
