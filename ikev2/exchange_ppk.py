"""Post-quantum preshared keys in IKE_SA_INIT / IKE_AUTH (RFC 8784), both roles.

* IKE_SA_INIT: the initiator sends N(USE_PPK) when its connection has a ``ppk_id``; the
  responder answers N(USE_PPK) when the initiator sent it and one of its candidate
  connections has a PPK.
* IKE_AUTH request (both sent USE_PPK, we have the PPK): AUTH computed with SK_pi',
  N(PPK_IDENTITY)(PPK_ID) and, unless ``ppk_required``, N(NO_PPK_AUTH) carrying the AUTH data
  computed with the plain SK_pi (PSK only; with signatures no fallback is offered).
* Responder: a PPK for the received PPK_ID (and, if its connection names one, the same
  PPK_ID) -> AUTH checked with SK_pi', answered with SK_pr' and an empty N(PPK_IDENTITY).
  No such PPK -> if ``ppk_required``: AUTHENTICATION_FAILED; else the NO_PPK_AUTH data is
  checked with the plain keys (no NO_PPK_AUTH: AUTHENTICATION_FAILED).  No PPK_IDENTITY from
  a peer while ``ppk_required``: AUTHENTICATION_FAILED.
* Initiator, on the response: N(PPK_IDENTITY) -> checked with SK_pr'; none -> the responder
  did not use the PPK: refused if ``ppk_required``, else checked with the plain keys.
* Once authenticated with the PPK: SK_d <- SK_d' (Child SAs, rekeys), see crypto/ppk.py.
"""
from __future__ import annotations

from . import payloads as P
from .constants import AuthMethod
from .constants import NotifyType as N
from .crypto.ppk import parse_ppk_identity, ppk_identity_data, ppk_key
from .errors import ParseError
from .message import Message
from .sa_common import ExchangeFailed
from .sa_core import IkeSACore


class PpkExchange(IkeSACore):
    """Mixin of IkeSA (ikev2.ike_sa): works on the state declared in ``IkeSACore`` (its own:
    ``peer_use_ppk``, ``_ppk_for_auth`` (the PPK whose SK_p' AUTH uses now), ``_ppk_peer_id``,
    ``ppk_used``).
    Provides the hooks ``_apply_ppk``, ``_ppk_check_request``, ``_ppk_check_response``,
    ``_ppk_init_notifies``, ``_ppk_read_init``, ``_ppk_request_payloads``,
    ``_ppk_response_payloads``, ``_sk_p_for_auth``.
    Calls no other exchange's hooks.
    """

    __slots__ = ()

    # ---------------------------------------------------------------- IKE_SA_INIT

    def _ppk_init_notifies(self, request: Message | None) -> list[P.Payload]:
        if self.initiator:
            want = bool(self.policy.ppk_id)
        else:
            want = request is not None and request.notify(N.USE_PPK) is not None and \
                any(c.ppk for c in self.candidates)
        return [P.NotifyPayload(notify_type=N.USE_PPK)] if want else []

    def _ppk_read_init(self, msg: Message) -> None:
        self.peer_use_ppk = msg.notify(N.USE_PPK) is not None

    # ---------------------------------------------------------------- helpers

    def _sk_p_for_auth(self, key: bytes) -> bytes:
        """SK_pi/SK_pr as AUTH must use them now: prf+(PPK, SK_p) while a PPK is in play."""
        if self._ppk_for_auth is None:
            return key
        return ppk_key(self.agreed_suite.prf, self._ppk_for_auth, key)

    def _apply_ppk(self, ppk: bytes) -> None:
        """Authenticated with the PPK: SK_d <- prf+(PPK, SK_d) (RFC 8784 3)."""
        keys = self.derived_keys
        keys.sk_d = ppk_key(self.agreed_suite.prf, ppk, keys.sk_d)
        self.ppk_used = True
        self.log("info", "using PPK", ppk_id=(self.policy.ppk_id or b"").decode(errors="replace")
                 if self.initiator else self._ppk_peer_id)

    # ---------------------------------------------------------------- initiator

    def _ppk_request_payloads(self, auth_payloads: list[P.Payload]) -> list[P.Payload]:
        """Initiator: called with our AUTH payloads built; returns extra notifies (and fixes
        AUTH for the PPK).  Raises ExchangeFailed when a required PPK cannot be used."""
        pol = self.policy
        ppk_id, ppk, required = pol.ppk_id, pol.ppk, pol.ppk_required
        if not ppk_id or not ppk:
            if required:
                raise ExchangeFailed(N.AUTHENTICATION_FAILED, "ppk_required but no PPK configured")
            return []
        if not self.peer_use_ppk:
            if required:
                raise ExchangeFailed(N.AUTHENTICATION_FAILED,
                                     "PPK required but the peer does not support PPK (no USE_PPK)")
            return []
        extra: list[P.Payload] = [P.NotifyPayload(notify_type=N.PPK_IDENTITY,
                                                  data=ppk_identity_data(ppk_id))]
        auth = next(p for p in auth_payloads if isinstance(p, P.AuthPayload))
        if not required and auth.method == AuthMethod.PSK:
            extra.append(P.NotifyPayload(notify_type=N.NO_PPK_AUTH, data=auth.data))
        return extra

    def _ppk_check_response(self, msg: Message) -> None:
        """Initiator, before verifying the responder's AUTH: which SK_pr to use."""
        if self._ppk_for_auth is None:
            return
        if msg.notify(N.PPK_IDENTITY) is not None:
            return  # the responder used the PPK: keep SK_pr'
        if self.policy.ppk_required:
            raise ExchangeFailed(N.AUTHENTICATION_FAILED,
                                 "PPK required but the responder did not use it", fatal=True)
        self.log("info", "responder did not use the PPK, authenticated without it")
        self._ppk_for_auth = None

    # ---------------------------------------------------------------- responder

    def _ppk_check_request(self, req: Message) -> None:
        """Responder, before verifying the initiator's AUTH (policy chosen): decide whether
        the PPK is used; may switch the AUTH data to NO_PPK_AUTH's."""
        pol = self.policy
        required = pol.ppk_required
        n = req.notify(N.PPK_IDENTITY) if self.peer_use_ppk else None
        self._ppk_peer_id = None
        if n is None:
            if required:
                raise ExchangeFailed(N.AUTHENTICATION_FAILED,
                                     "PPK required but the peer sent no PPK_IDENTITY", fatal=True)
            return
        try:
            peer_id = parse_ppk_identity(n.data)
        except ParseError as e:
            raise ExchangeFailed(N.AUTHENTICATION_FAILED, f"bad PPK_IDENTITY: {e}", fatal=True) from None
        self._ppk_peer_id = peer_id.decode(errors="replace")
        ours_id, ppk = pol.ppk_id, pol.ppk
        if ppk and (not ours_id or ours_id == peer_id):
            self._ppk_for_auth = ppk
            return
        if required:
            raise ExchangeFailed(N.AUTHENTICATION_FAILED,
                                 f"PPK required but none for PPK_ID '{self._ppk_peer_id}'", fatal=True)
        fallback = req.notify(N.NO_PPK_AUTH)
        authp = req.get(P.AuthPayload)
        if fallback is None or authp is None:
            raise ExchangeFailed(N.AUTHENTICATION_FAILED, f"no PPK for PPK_ID '{self._ppk_peer_id}' "
                                 "and no NO_PPK_AUTH to fall back on", fatal=True)
        self.log("info", "no PPK for the peer's PPK_ID, using NO_PPK_AUTH", ppk_id=self._ppk_peer_id)
        authp.data = fallback.data  # verify the AUTH data computed without the PPK

    def _ppk_response_payloads(self) -> list[P.Payload]:
        """Responder, after our AUTH was built: confirm and switch SK_d when the PPK is used."""
        if self._ppk_for_auth is None:
            return []
        ppk, self._ppk_for_auth = self._ppk_for_auth, None
        self._apply_ppk(ppk)
        return [P.NotifyPayload(notify_type=N.PPK_IDENTITY)]
