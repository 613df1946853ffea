"""EAP inside IKE_AUTH (RFC 7296 2.16) and the configuration payload (RFC 7296 2.19), both roles.

Gateway (responder): an IKE_AUTH request without AUTH asks for EAP. We answer with our own
IDr/CERT/AUTH and the first EAP request, run the EAP method (ikev2.eap) over as many IKE_AUTH
round trips as it needs, and after EAP-Success check the client's AUTH, which is keyed with the
method's MSK (or SK_pi when the method has none, e.g. EAP-MD5). Our final AUTH is keyed the
same way. The Child SA and the configuration payload (virtual IP, DNS, split subnets) come
from the first IKE_AUTH request and are answered in the last response.

Client (initiator): the mirror image, with an EAP client and an optional CFG_REQUEST.
"""
from __future__ import annotations

import hmac

from . import assign_async, eap_async
from . import payloads as P
from .constants import CfgType
from .constants import ExchangeType as X
from .constants import NotifyType as N
from .crypto import auth as cauth
from .events import AuthFailed, VirtualIpAssigned, VirtualIpReceived
from .identity import Identity
from .message import Message
from .sa_common import ExchangeFailed, notify_name
from .sa_core import IkeSACore

MAX_EAP_ROUNDS = 50
MUTUAL_EAP = ("eap-tls",)  # methods that authenticate the server too (RFC 5998 EAP-only)


class EapExchange(IkeSACore):
    """Mixin of IkeSA (ikev2.ike_sa): works on the state declared in ``IkeSACore``.
    Provides the hooks ``_assign_virtual_ip``, ``_continue_eap_server``, ``_eap_client_request``,
    ``_on_auth_response_eap``, ``_read_cp_reply``, ``_start_eap_server``.
    Calls other exchanges only through the hooks ``_auth_octets``, ``_complete_auth_responder``,
    ``_established``, ``_finish_child_as_initiator``, ``_our_auth_payloads``, ``_start_other_children``,
    ``_verify_peer_auth``.
    """

    __slots__ = ()

    # ------------------------------------------------------------------ shared

    def _msk_key(self, initiator_side: bool) -> bytes:
        """RFC 7296 2.16: the MSK if the method made one, else SK_pi / SK_pr."""
        if self._eap_msk:
            return self._eap_msk
        return self.derived_keys.sk_pi if initiator_side else self.derived_keys.sk_pr

    def _msk_auth(self, initiator_side: bool, id_body: bytes) -> bytes:
        octets = self._auth_octets(initiator_side, id_body)
        return cauth.eap_msk_auth_data(self.agreed_suite.prf, self._msk_key(initiator_side), octets)

    # ------------------------------------------------------------------ gateway side

    def _start_eap_server(self, req: Message, ident: Identity, now: float) -> None:
        ra = self.policy.remote_auth
        if not ra.method.startswith("eap") or ra.eap_server is None:
            raise ExchangeFailed(N.AUTHENTICATION_FAILED,
                                 f"'{ident}' asked for EAP, but connection '{self.policy.name}' "
                                 f"authenticates peers with {ra.method}", fatal=True)
        server = self._eap_server_obj = ra.eap_server()
        self._eap_first_request = req
        self._eap_rounds = 0
        self.peer_id = ident
        eap_only = (req.notify(N.EAP_ONLY_AUTHENTICATION) is not None and ra.method in MUTUAL_EAP
                    and self.policy.local_auth.method == "eap-only")
        if eap_only:
            # RFC 5998: the client accepts EAP-only authentication and the method authenticates
            # us too: no CERT/AUTH now; our AUTH after EAP (keyed with the MSK) binds the exchange.
            idr = self.policy.local_id
            out: list[P.Payload] = [P.IDrPayload(id_type=idr.id_type, data=idr.data)]
        else:
            out = self._our_auth_payloads(P.IDrPayload)
        self._eap_last_request = server.start()
        out.append(P.EAPPayload(message=self._eap_last_request))
        self.log("info", "starting EAP", peer_id=str(ident), method=ra.method, eap_only=eap_only)
        self._respond(req, out)

    def _continue_eap_server(self, req: Message, now: float) -> None:
        if eap_async.defer(self, req, now):  # an asynchronous authenticator decides later
            return
        self._eap_rounds += 1
        if self._eap_rounds > MAX_EAP_ROUNDS:
            raise ExchangeFailed(N.AUTHENTICATION_FAILED, "too many EAP rounds", fatal=True)
        eap = req.get(P.EAPPayload)
        auth = req.get(P.AuthPayload)
        server = self._eap_server_obj
        if eap is not None and not self._eap_done and server is not None:
            from .eap import EapError
            try:
                step = server.process(eap.message)
            except EapError as e:
                raise ExchangeFailed(N.AUTHENTICATION_FAILED, f"EAP failed: {e}", fatal=True) from None
            if step.done and not step.success:
                why = f"EAP authentication of '{step.identity or self.peer_id}' failed: {step.reason}"
                out = [P.EAPPayload(message=step.send)] if step.send else []
                self._respond(req, out + [P.NotifyPayload(notify_type=N.AUTHENTICATION_FAILED)])
                self._emit(AuthFailed(reason=why))
                self.log("warning", "EAP authentication failed", method=self.policy.remote_auth.method,
                         eap_identity=step.identity or str(self.peer_id), reason=step.reason or why)
                self._die(now, why)
                return
            if step.send is None:
                # RFC 3748 4.1: the authenticator silently discarded the Response (e.g. a wrong
                # Identifier). Inside IKE_AUTH the request must still be answered: repeat the
                # outstanding EAP Request, as a retransmission would (counted in the rounds).
                self.log("info", "EAP Response discarded, repeating the outstanding Request",
                         reason=step.reason)
                self._respond(req, [P.EAPPayload(message=self._eap_last_request)])
                return
            if step.done:
                self._eap_done = True
                self._eap_msk = step.msk or b""
                self.eap_identity = step.identity
                self.log("info", "EAP authentication succeeded", method=self.policy.remote_auth.method,
                         eap_identity=step.identity,
                         msk=bool(step.msk))
            self._eap_last_request = step.send
            self._respond(req, [P.EAPPayload(message=step.send)])
            return
        if auth is None or not self._eap_done:
            raise ExchangeFailed(N.AUTHENTICATION_FAILED, "EAP exchange out of order", fatal=True)
        first = self._eap_first_request
        idi = first.get(P.IDiPayload) if first is not None else None
        if first is None or idi is None:
            raise ExchangeFailed(N.AUTHENTICATION_FAILED, "EAP exchange out of order", fatal=True)
        expected = self._msk_auth(True, idi.encode_body())
        if not hmac.compare_digest(expected, auth.data):
            raise ExchangeFailed(N.AUTHENTICATION_FAILED,
                                 f"AUTH after EAP of '{self.peer_id}' does not match the EAP key", fatal=True)
        idr = self.policy.local_id
        self._complete_auth_responder(req, first, [P.AuthPayload(method=2, data=self._msk_auth(False, idr.body()))],
                                      now, "established (EAP)")

    def _assign_virtual_ip(self, first: Message) -> tuple[list[P.TrafficSelector] | None, P.CPPayload | None]:
        """CFG_REQUEST in the first IKE_AUTH request: lease addresses from the connection's pools.
        Returns (selectors to narrow the client's TSi to, CP reply payload) or (None, None)."""
        cp = first.get(P.CPPayload)
        assigner = self.policy.address_assigner
        if cp is None or cp.cfg_type != CfgType.CFG_REQUEST or assigner is None:
            return None, None
        from .cp import build_reply, parse_request
        want = parse_request(cp)
        who = self.eap_identity or str(self.peer_id)
        assignment = assign_async.call(self, assigner, who, want)
        if assignment is None or not assignment.addresses:
            self.log("warning", "no virtual IP available", identity=who)
            raise ExchangeFailed(N.INTERNAL_ADDRESS_FAILURE, f"no virtual IP left for '{who}'", fatal=True)
        self.virtual_ips = [str(a) for a in assignment.addresses]
        self._emit(VirtualIpAssigned(identity=who, addresses=list(self.virtual_ips)))
        self.log("info", "virtual IP assigned", identity=who, addresses=self.virtual_ips)
        ts = [P.TrafficSelector.from_network(f"{a}/{32 if ':' not in str(a) else 128}") for a in assignment.addresses]
        return ts, build_reply(assignment)

    # ------------------------------------------------------------------ client side

    def _read_cp_reply(self, msg: Message) -> None:
        cp = msg.get(P.CPPayload)
        if cp is None or cp.cfg_type != CfgType.CFG_REPLY:
            return
        from .cp import parse_reply
        vc = parse_reply(cp)
        self.virtual_ips = [str(a) for a in vc.addresses]
        self.log("info", "virtual IP received", addresses=self.virtual_ips, dns=[str(d) for d in vc.dns])
        self._emit(VirtualIpReceived(addresses=list(self.virtual_ips), dns=[str(d) for d in vc.dns],
                                     subnets=[str(s) for s in vc.subnets]))

    def _eap_client_request(self, out: list[P.Payload]) -> list[P.Payload]:
        """Adds the CFG_REQUEST to our first IKE_AUTH request when we want a virtual IP."""
        if self.policy.vips:
            from .cp import build_request
            out.append(build_request(self.policy.vips))
        return out

    def _on_auth_response_eap(self, msg: Message, now: float) -> None:
        """Client: every IKE_AUTH response while EAP runs."""
        errors = [n for n in msg.notifies() if n.is_error]
        eap = msg.get(P.EAPPayload)
        if errors and eap is None:
            why = f"IKE_AUTH failed: peer answered {notify_name(errors[0].notify_type)}"
            self._emit(AuthFailed(reason=why))
            self._die(now, why)
            return
        if not self._eap_server_authenticated:
            try:
                self.peer_id = self._verify_peer_auth(msg, self.policy, now)
            except ExchangeFailed as e:
                self._emit(AuthFailed(reason=str(e)))
                self._die(now, str(e))
                return
            self._eap_server_authenticated = True
            self._eap_server_idr = msg.get(P.IDrPayload)
            self.peer_mobike = msg.notify(N.MOBIKE_SUPPORTED) is not None
        client = self._eap_client_obj
        if eap is not None and client is not None:
            from .eap import EapError
            try:
                step = client.process(eap.message)
            except EapError as e:
                self._emit(AuthFailed(reason=f"EAP failed: {e}"))
                self._die(now, f"EAP failed: {e}")
                return
            if step.done and not step.success:
                why = f"EAP authentication failed: {step.reason}"
                self._emit(AuthFailed(reason=why))
                self._die(now, why)
                return
            if step.done:
                self._eap_done = True
                self._eap_msk = step.msk or b""
                ident = self.policy.local_id
                self._request("IKE_AUTH (after EAP)", lambda: (
                    X.IKE_AUTH, [P.AuthPayload(method=2, data=self._msk_auth(True, ident.body()))],
                    lambda m: self._on_auth_final_eap(m, self._now)))
                return
            send = step.send
            if send is None:
                # The EAP peer discarded the Request; the gateway will not send another one on
                # its own (the IKE exchange is complete), so the conversation cannot go on.
                why = f"EAP failed: the gateway's EAP Request was discarded ({step.reason})"
                self._emit(AuthFailed(reason=why))
                self._die(now, why)
                return
            self._request("IKE_AUTH (EAP)", lambda: (X.IKE_AUTH, [P.EAPPayload(message=send)],
                                                     lambda m: self._on_auth_response_eap(m, self._now)))
            return
        why = "IKE_AUTH response without EAP while EAP was expected"
        self._emit(AuthFailed(reason=why))
        self._die(now, why)

    def _on_auth_final_eap(self, msg: Message, now: float) -> None:
        auth = msg.get(P.AuthPayload)
        if auth is None:
            errors = [n for n in msg.notifies() if n.is_error]
            why = f"IKE_AUTH failed after EAP: {notify_name(errors[0].notify_type) if errors else 'no AUTH'}"
            self._emit(AuthFailed(reason=why))
            self._die(now, why)
            return
        idr = msg.get(P.IDrPayload) or self._eap_server_idr
        if idr is None:
            why = "IKE_AUTH after EAP: the gateway never sent its identity (IDr)"
            self._emit(AuthFailed(reason=why))
            self._die(now, why)
            return
        expected = self._msk_auth(False, idr.encode_body())
        if not hmac.compare_digest(expected, auth.data):
            why = "gateway's AUTH after EAP does not match the EAP key"
            self._emit(AuthFailed(reason=why))
            self._die(now, why)
            return
        self._read_cp_reply(msg)
        self._established(now)
        req = self._first_child
        self._first_child = None
        if req is not None:
            self._finish_child_as_initiator(req, msg, now, self.ni, self.nr, None)
        self._start_other_children(now)
