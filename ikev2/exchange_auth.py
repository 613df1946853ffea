"""IKE_AUTH (RFC 7296 1.2, 2.15 AUTH, RFC 7427 signatures, certificates), both roles."""
from __future__ import annotations

import hmac

from . import assign_async, compute_async
from . import payloads as P
from .compute import AuthJob, AuthResult, private_key_der, signature_cost_us
from .constants import AuthMethod, HashAlgorithm
from .constants import ExchangeType as X
from .constants import NotifyType as N
from .crypto import auth as cauth
from .crypto.proposals import proposal_display
from .events import AuthFailed, ExchangeDone, IkeUp
from .identity import Identity
from .message import Message
from .policy import IkePolicy
from .sa_common import ChildRequest, ExchangeFailed, RequestBuilt, State, local_id_ok, notify_name
from .sa_core import IkeSACore


class AuthExchange(IkeSACore):
    """Mixin of IkeSA (ikev2.ike_sa): works on the state declared in ``IkeSACore``.
    Provides the hooks ``_auth_octets``, ``_build_auth_request``, ``_complete_auth_responder``,
    ``_established``, ``_our_auth_payloads``, ``_start_other_children``, ``_verify_peer_auth``.
    Calls other exchanges only through the hooks ``_assign_virtual_ip``, ``_child_proposals``,
    ``_continue_eap_server``, ``_eap_client_request``, ``_finish_child_as_initiator``, ``_install_child``,
    ``_on_auth_response_eap``, ``_read_cp_reply``, ``_respond_child``, ``_start_eap_server``,
    ``create_child``; RFC 9242 ``_int_auth_suffix``, ``_intermediate_pending``; RFC 8784
    ``_apply_ppk``, ``_ppk_check_request``, ``_ppk_check_response``, ``_ppk_request_payloads``,
    ``_ppk_response_payloads``, ``_sk_p_for_auth``.
    """

    __slots__ = ()

    def _auth_octets(self, sent_by_initiator: bool, id_body: bytes) -> bytes:
        s = self.agreed_suite
        keys = self.derived_keys
        # RFC 9242: | IntAuth_iN | IntAuth_rN | IKE_AUTH_MID after IKE_INTERMEDIATE exchanges.
        tail = self._int_auth_suffix()
        # RFC 8784: SK_pi'/SK_pr' while a PPK is in play (exchange_ppk).
        if sent_by_initiator:
            return cauth.signed_octets(self.init_request_raw, self.nr, s.prf,
                                       self._sk_p_for_auth(keys.sk_pi), id_body) + tail
        return cauth.signed_octets(self.init_response_raw, self.ni, s.prf,
                                   self._sk_p_for_auth(keys.sk_pr), id_body) + tail

    def _our_auth_payloads(self, id_cls: type[P.IDiPayload] | type[P.IDrPayload],
                           signature: tuple[int, bytes] | None = None) -> list[P.Payload]:
        """ID, CERT and AUTH payloads; ``signature``: our AUTH (method, data) already computed."""
        pol = self.policy
        ident = pol.local_id
        out: list[P.Payload] = [id_cls(id_type=ident.id_type, data=ident.data)]
        a = pol.local_auth
        octets = self._auth_octets(self.initiator, ident.body()) if signature is None else b""
        if a.method == "psk":
            if a.psk is None:
                raise ExchangeFailed(N.AUTHENTICATION_FAILED, f"connection {pol.name}: no PSK configured")
            out.append(P.AuthPayload(method=AuthMethod.PSK,
                                     data=cauth.psk_auth_data(self.agreed_suite.prf, a.psk, octets)))
        elif a.method in ("pubkey", "eap-only"):
            from .certs import cert_payload_data
            for cert in a.certs:
                out.insert(len(out), P.CertPayload(encoding=4, data=cert_payload_data(cert)))
            method, data = signature or cauth.sign(a.private_key, octets, self._sign_hash(a.private_key))
            out.append(P.AuthPayload(method=method, data=data))
        else:
            raise ExchangeFailed(N.AUTHENTICATION_FAILED, f"auth method {a.method} not supported yet")
        return out

    def _sign_hash(self, key: object) -> HashAlgorithm | None:
        from cryptography.hazmat.primitives.asymmetric import ed448, ed25519

        if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
            return None  # EdDSA signs the message itself (RFC 8420, "identity" hash)
        prefs = [HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_512]
        for h in prefs:
            if not self.peer_hash_algs or h in self.peer_hash_algs:
                return h
        return None

    def _verify_peer_auth(self, req: Message, pol: IkePolicy, now: float) -> Identity:
        """Check the peer's ID and AUTH against ``pol``; raises ExchangeFailed."""
        id_cls = P.IDiPayload if not self.initiator else P.IDrPayload
        idp = req.get(id_cls)
        authp = req.get(P.AuthPayload)
        if idp is None or authp is None:
            raise ExchangeFailed(N.AUTHENTICATION_FAILED, "missing ID or AUTH payload", fatal=True)
        ident = Identity(idp.id_type, idp.data)
        if not pol.remote_id.matches(ident):
            raise ExchangeFailed(N.AUTHENTICATION_FAILED,
                                 f"peer identity '{ident}' does not match '{pol.remote_id.text}'", fatal=True)
        octets = self._auth_octets(not self.initiator, idp.encode_body())
        ra = pol.remote_auth
        if ra.method == "psk":
            if authp.method != AuthMethod.PSK:
                raise ExchangeFailed(N.AUTHENTICATION_FAILED,
                                     f"peer used auth method {authp.method}, expected PSK", fatal=True)
            if ra.psk is None:
                raise ExchangeFailed(N.AUTHENTICATION_FAILED, f"connection {pol.name}: no PSK configured", fatal=True)
            expected = cauth.psk_auth_data(self.agreed_suite.prf, ra.psk, octets)
            if not hmac.compare_digest(expected, authp.data):
                raise ExchangeFailed(N.AUTHENTICATION_FAILED,
                                     f"PSK authentication of '{ident}' failed (wrong pre-shared key?)", fatal=True)
        elif ra.method == "pubkey":
            import datetime

            from .certs import CertificateError, identity_matches_cert, parse_cert_payload, verify_chain
            certs = [c for c in req.all(P.CertPayload) if c.encoding == 4]
            if not certs:
                raise ExchangeFailed(N.AUTHENTICATION_FAILED, "peer sent no certificate", fatal=True)
            try:
                ee = parse_cert_payload(certs[0].data)
                inter = [parse_cert_payload(c.data) for c in certs[1:]]
                when = datetime.datetime.fromtimestamp(self.wall(now), datetime.UTC)
                verify_chain(ee, inter, ra.cacerts, when)
            except CertificateError as e:
                raise ExchangeFailed(N.AUTHENTICATION_FAILED, f"certificate of '{ident}' rejected: {e}",
                                     fatal=True) from None
            if not identity_matches_cert(ident, ee):
                raise ExchangeFailed(N.AUTHENTICATION_FAILED,
                                     f"identity '{ident}' is not confirmed by its certificate", fatal=True)
            if not cauth.verify(ee.public_key(), authp.method, authp.data, octets):
                raise ExchangeFailed(N.AUTHENTICATION_FAILED,
                                     f"signature of '{ident}' does not verify", fatal=True)
        else:
            raise ExchangeFailed(N.AUTHENTICATION_FAILED, f"auth method {ra.method} not supported yet",
                                 fatal=True)
        return ident

    def _build_auth_request(self) -> RequestBuilt:
        pol = self.policy
        eap = pol.local_auth.method.startswith("eap")
        if eap:
            # No AUTH: asking for EAP (RFC 7296 2.16).
            payloads: list[P.Payload] = [P.IDiPayload(id_type=pol.local_id.id_type, data=pol.local_id.data)]
            if pol.local_auth.eap_client is None:
                raise ExchangeFailed(N.AUTHENTICATION_FAILED, f"connection {pol.name}: EAP without an EAP client")
            self._eap_client_obj = pol.local_auth.eap_client()
        else:
            payloads = self._our_auth_payloads(P.IDiPayload)
            try:
                ppk_extra = self._ppk_request_payloads(payloads)  # RFC 8784 (exchange_ppk)
            except ExchangeFailed as e:
                self._emit(AuthFailed(reason=str(e)))
                self._die(self._now, str(e))
                return None
            if ppk_extra:
                self._ppk_for_auth = pol.ppk
                payloads = self._our_auth_payloads(P.IDiPayload) + ppk_extra
        idi = payloads[0]
        extra: list[P.Payload] = []
        if pol.initial_contact:
            extra.append(P.NotifyPayload(notify_type=N.INITIAL_CONTACT))
        if pol.remote_auth.method == "pubkey" and pol.remote_auth.cacerts:
            from .certs import certreq_data
            extra.append(P.CertReqPayload(encoding=4, data=certreq_data(pol.remote_auth.cacerts)))
        if pol.send_idr and not pol.remote_id.is_any and not any(c in pol.remote_id.text for c in "*?"):
            rid = Identity.parse(pol.remote_id.text)
            extra.append(P.IDrPayload(id_type=rid.id_type, data=rid.data))
        # Order as strongSwan: IDi N(INIT_CONTACT) CERTREQ IDr [CERT] AUTH SA TSi TSr N(...)
        rest = payloads[1:]
        out: list[P.Payload] = self._eap_client_request([idi] + extra + rest)
        cp = next((c for c in pol.children if c.start_action == "start"), pol.children[0] if pol.children else None)
        if cp is not None:
            req = ChildRequest(cp, self._new_child_spi(), [], list(cp.local_ts), list(cp.remote_ts))
            req.proposals = self._child_proposals(cp, req.spi_in, with_ke=False)
            self._first_child = req
            self._first_child_policy = cp
            out += [P.SAPayload(proposals=req.proposals), P.TSiPayload(selectors=req.ts_i),
                    P.TSrPayload(selectors=req.ts_r)]
        if pol.mobike:
            out.append(P.NotifyPayload(notify_type=N.MOBIKE_SUPPORTED))
        if eap:
            return X.IKE_AUTH, out, lambda m: self._on_auth_response_eap(m, self._now)
        return X.IKE_AUTH, out, lambda m: self._on_auth_response(m, self._now)

    def _on_auth_response(self, msg: Message, now: float) -> None:
        errors = [n for n in msg.notifies() if n.is_error]
        if any(n.notify_type == N.AUTHENTICATION_FAILED for n in errors) or msg.get(P.AuthPayload) is None:
            reason = "peer rejected our authentication (AUTHENTICATION_FAILED)" if errors else \
                "IKE_AUTH response without AUTH"
            if errors and not any(n.notify_type == N.AUTHENTICATION_FAILED for n in errors):
                reason = f"IKE_AUTH failed: peer answered {notify_name(errors[0].notify_type)}"
            self._emit(AuthFailed(reason=reason))
            self._die(now, reason)
            return
        try:
            self._ppk_check_response(msg)
            ident = self._verify_peer_auth(msg, self.policy, now)
        except ExchangeFailed as e:
            self._emit(AuthFailed(reason=str(e)))
            self.log("warning", "peer authentication failed", reason=str(e))
            # RFC 7296 2.21.2: tell the peer in an INFORMATIONAL, then drop the SA.
            self._send(self._seal(X.INFORMATIONAL, self.next_mid,
                                  [P.NotifyPayload(notify_type=N.AUTHENTICATION_FAILED)], response=False))
            self._die(now, str(e))
            return
        self.peer_id = ident
        if self._ppk_for_auth is not None:
            ppk, self._ppk_for_auth = self._ppk_for_auth, None
            self._apply_ppk(ppk)  # before the first Child SA's keys
        self.peer_mobike = msg.notify(N.MOBIKE_SUPPORTED) is not None
        self._read_cp_reply(msg)
        self._established(now)
        req = self._first_child
        self._first_child = None
        if req is not None:
            self._finish_child_as_initiator(req, msg, now, self.ni, self.nr, None)
        self._start_other_children(now)

    def _established(self, now: float) -> None:
        self.state = State.ESTABLISHED
        self.established_at = now
        self.last_inbound = now
        self.init_retries = 0
        # The IKE_SA_INIT messages were needed for the AUTH payloads only (RFC 7296 2.15).
        self.init_request_raw = self.init_response_raw = b""
        if self.policy.rekey_time:
            self.rekey_at = now + self.policy.rekey_time
        proposal = proposal_display(self.proposal) if self.proposal else ""
        self.log("info", "IKE_SA established", local=f"{self.local[0]}:{self.local[1]}",
                 remote=f"{self.remote[0]}:{self.remote[1]}", peer_id=str(self.peer_id),
                 spi_i=self.spi_i.hex(), spi_r=self.spi_r.hex(), proposal=proposal)
        self._emit(IkeUp(local=self.local, remote=self.remote, local_id=str(self.policy.local_id),
                         remote_id=str(self.peer_id), spi_i=self.spi_i, spi_r=self.spi_r,
                         proposal=proposal,
                         initial_contact=self.peer_initial_contact))

    def _start_other_children(self, now: float) -> None:
        for cp in self.policy.children:
            if cp.start_action == "start" and cp is not self._first_child_policy:
                self.create_child(cp, now)

    def _on_auth_request(self, req: Message, now: float) -> None:
        if self.initiator or self.state != State.INIT_DONE:
            raise ExchangeFailed(N.INVALID_SYNTAX, "unexpected IKE_AUTH request")
        if self._intermediate_pending():
            raise ExchangeFailed(N.INVALID_SYNTAX, "IKE_AUTH before the negotiated additional key "
                                 "exchanges (IKE_INTERMEDIATE)", fatal=True)
        if self._eap_server_obj is not None:
            self._continue_eap_server(req, now)
            return
        idi = req.get(P.IDiPayload)
        if idi is None:
            raise ExchangeFailed(N.AUTHENTICATION_FAILED, "IKE_AUTH without IDi", fatal=True)
        ident = Identity(idi.id_type, idi.data)
        idr = req.get(P.IDrPayload)
        wanted = Identity(idr.id_type, idr.data) if idr else None
        matching = [c for c in self.candidates if c.remote_id.matches(ident)
                    and (wanted is None or local_id_ok(c, wanted))]
        if not matching:
            raise ExchangeFailed(N.AUTHENTICATION_FAILED, f"no connection accepts peer identity '{ident}'",
                                 fatal=True)
        # The most specific match wins: exact remote_id before wildcards.
        matching.sort(key=lambda c: (c.remote_id.is_any, any(ch in c.remote_id.text for ch in "*?")))
        if req.get(P.AuthPayload) is None:
            # No AUTH: the client asks for EAP. Prefer a connection that authenticates with EAP.
            eap_first = [c for c in matching if c.remote_auth.method.startswith("eap")]
            self.policy = (eap_first or matching)[0]
        else:
            self.policy = matching[0]
        self.peer_mobike = req.notify(N.MOBIKE_SUPPORTED) is not None
        self.peer_initial_contact = req.notify(N.INITIAL_CONTACT) is not None
        if req.get(P.AuthPayload) is None:
            self._start_eap_server(req, ident, now)
            return
        self._ppk_check_request(req)  # RFC 8784 (exchange_ppk)
        if self.offload is not None and self.policy.remote_auth.method == "pubkey" \
                and self.policy.local_auth.method == "pubkey":
            # Certificate checks and both signatures as one job (ikev2.compute), possibly run
            # elsewhere: then we stop here and the request is processed again with the result.
            try:
                result = compute_async.result_for(self, "auth", req, lambda: self._auth_job(req, ident, now))
            except compute_async.Deferred:
                return
            assert isinstance(result, AuthResult)
            if result.error:
                raise ExchangeFailed(N.AUTHENTICATION_FAILED, result.error, fatal=True)
            self.peer_id = ident
            out = self._our_auth_payloads(P.IDrPayload, signature=(result.method, result.data))
        else:
            self.peer_id = self._verify_peer_auth(req, self.policy, now)
            out = self._our_auth_payloads(P.IDrPayload)
        out += self._ppk_response_payloads()
        self._complete_auth_responder(req, req, out, now, "established")

    def _auth_job(self, req: Message, ident: Identity, now: float) -> AuthJob:
        """The responder's IKE_AUTH computations with certificates (ikev2.compute.AuthJob); the
        cheap checks that need no certificate happen here, as in ``_verify_peer_auth``."""
        pol = self.policy
        authp = req.get(P.AuthPayload)
        idp = req.get(P.IDiPayload)
        assert authp is not None and idp is not None  # (checked by the caller)
        certs = tuple(c.data for c in req.all(P.CertPayload) if c.encoding == 4)
        if not certs:
            raise ExchangeFailed(N.AUTHENTICATION_FAILED, "peer sent no certificate", fatal=True)
        from .certs import cert_payload_data
        key = pol.local_auth.private_key
        return AuthJob(ident_type=ident.id_type, ident_data=ident.data, ident_text=str(ident), certs=certs,
                       cacerts=tuple(cert_payload_data(c) for c in pol.remote_auth.cacerts),
                       when=self.wall(now), auth_method=authp.method, auth_data=authp.data,
                       peer_octets=self._auth_octets(True, idp.encode_body()),
                       our_key=private_key_der(key),
                       our_octets=self._auth_octets(False, pol.local_id.body()),
                       hash_alg=self._sign_hash(key), sign_cost_us=signature_cost_us(key))

    def _complete_auth_responder(self, req: Message, first: Message, out: list[P.Payload], now: float,
                                 outcome: str) -> None:
        """The last IKE_AUTH response: our AUTH payloads (``out``), then the configuration reply,
        the first Child SA and MOBIKE support, all answering the *first* IKE_AUTH request (with
        EAP that is several round trips before ``req``)."""
        try:
            vip_ts, cp_reply = self._assign_virtual_ip(first)
        except assign_async.Deferred:  # an asynchronous assigner answers later (ikev2.assign_async)
            assign_async.park(self, req)
            return
        if cp_reply is not None:
            out.append(cp_reply)
        child_payloads, child = self._respond_child(first, now, self.ni, self.nr, None, rekey_of=None,
                                                    peer_ts=vip_ts)
        out += child_payloads
        if self.policy.mobike and self.peer_mobike:
            out.append(P.NotifyPayload(notify_type=N.MOBIKE_SUPPORTED))
        self._respond(req, out)
        self._established(now)
        if child is not None:
            self._install_child(child, now)
        self._emit(ExchangeDone(exchange="IKE_AUTH", role="responder", message_id=req.message_id,
                                outcome=outcome, peer=self.remote))
