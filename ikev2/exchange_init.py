"""IKE_SA_INIT (RFC 7296 1.2, 2.6 COOKIE, 2.23 NAT detection, INVALID_KE_PAYLOAD), both roles."""
from __future__ import annotations

import struct

from . import compute_async
from . import payloads as P
from .compute import InitKeysJob, InitKeysResult
from .constants import (
    IKE_PORT,
    NATT_PORT,
    HeaderFlag,
    ProtocolId,
    TransformType,
)
from .constants import (
    ExchangeType as X,
)
from .constants import (
    NotifyType as N,
)
from .crypto import auth as cauth
from .crypto.dh import ke_method
from .crypto.keys import IkeKeys, derive_ike_keys
from .crypto.proposals import choose_proposal, ike_suite, proposal_display
from .errors import InvalidKeyExchange, ParseError, ProposalError
from .events import Address
from .message import Message, encode_message
from .natd import natd_hash
from .notify_data import group_of
from .sa_common import MAX_INIT_RETRIES, NONCE_LEN, ExchangeFailed, State, notify_name
from .sa_core import IkeSACore
from .sk import SKKeys


class InitExchange(IkeSACore):
    """Mixin of IkeSA (ikev2.ike_sa): works on the state declared in ``IkeSACore``.
    Provides the hooks ``_install_keys``.
    Calls other exchanges only through the hooks ``_after_init_as_initiator`` (IKE_INTERMEDIATE
    or IKE_AUTH next), ``_check_intermediate_support``, ``_intermediate_notify`` (RFC 9242/9370),
    ``_ppk_init_notifies``, ``_ppk_read_init`` (RFC 8784).
    """

    __slots__ = ()

    def start(self, now: float) -> None:
        """Initiator: send IKE_SA_INIT."""
        assert self.initiator and self.state == State.CREATED
        self.ni = self.rng(NONCE_LEN)
        first = self.policy.ike_proposals[0]
        self.ke_group = next(t.id for t in first.transforms if t.type == TransformType.DH)
        self._send_init(now)

    def _ike_proposals(self) -> list[P.Proposal]:
        out = []
        for i, p in enumerate(self.policy.ike_proposals, 1):
            out.append(P.Proposal(i, ProtocolId.IKE, b"", list(p.transforms)))
        return out

    def _natd_payloads(self, spi_r: bytes) -> list[P.Payload]:
        src = natd_hash(self.spi_i, spi_r, self.local[0], self.local[1])
        if self.policy.forced_encap:
            src = self.rng(20)  # pretend to be behind a NAT so that ESP always goes in UDP
        dst = natd_hash(self.spi_i, spi_r, self.remote[0], self.remote[1])
        return [P.NotifyPayload(notify_type=N.NAT_DETECTION_SOURCE_IP, data=src),
                P.NotifyPayload(notify_type=N.NAT_DETECTION_DESTINATION_IP, data=dst)]

    def _common_init_notifies(self) -> list[P.Payload]:
        out: list[P.Payload] = []
        if self.policy.fragmentation:
            out.append(P.NotifyPayload(notify_type=N.IKEV2_FRAGMENTATION_SUPPORTED))
        out.append(P.NotifyPayload(notify_type=N.SIGNATURE_HASH_ALGORITHMS,
                                   data=b"".join(struct.pack("!H", h) for h in cauth.supported_hash_algorithms())))
        out += self._intermediate_notify()  # RFC 9242 (exchange_intermediate)
        return out

    def _send_init(self, now: float) -> None:
        method = ke_method(self.ke_group)
        self.ke_private = method.generate(self.rng)
        payloads: list[P.Payload] = []
        if self.cookie:
            payloads.append(P.NotifyPayload(notify_type=N.COOKIE, data=self.cookie))
        payloads += [P.SAPayload(proposals=self._ike_proposals()),
                     P.KEPayload(group=method.group, data=self.ke_private.public_bytes),
                     P.NoncePayload(data=self.ni)]
        payloads += self._natd_payloads(bytes(8))
        payloads += self._common_init_notifies()
        payloads += self._ppk_init_notifies(None)  # RFC 8784 (exchange_ppk)
        msg = Message(self.spi_i, bytes(8), X.IKE_SA_INIT, 0, HeaderFlag.INITIATOR, payloads)
        self.init_request_raw = encode_message(msg)
        self.state = State.INIT_SENT
        self.next_mid = 1
        self.log("info", "initiating IKE_SA", peer=f"{self.remote[0]}:{self.remote[1]}",
                 spi_i=self.spi_i.hex(), group=self.ke_group)
        self._send_unencrypted_request(msg, lambda m: self._on_init_response(m, self._now), "IKE_SA_INIT", now)

    def _receive_init(self, raw: bytes, msg: Message, local: Address, remote: Address, now: float) -> None:
        if msg.is_response:
            if not self.initiator or self.state != State.INIT_SENT or self.pending is None:
                return
            if msg.message_id != 0:
                return
            self.pending = None
            self.init_response_raw = raw
            self._on_init_response(msg, now)
        else:
            if self.initiator:
                return
            if self.state == State.CREATED:
                self._on_init_request(raw, msg, local, remote, now)
            elif raw == self.init_request_raw and self.init_response_raw:
                self._send([self.init_response_raw])  # retransmitted IKE_SA_INIT

    def _on_init_response(self, msg: Message, now: float) -> None:
        cookie = msg.notify(N.COOKIE)
        if cookie is not None:
            self.init_retries += 1
            if self.init_retries > MAX_INIT_RETRIES:
                self._die(now, "too many COOKIE requests")
                return
            self.cookie = cookie.data
            self.log("info", "responder requested a cookie, retrying")
            self._send_init(now)
            return
        invalid_ke = msg.notify(N.INVALID_KE_PAYLOAD)
        if invalid_ke is not None:
            group = group_of(invalid_ke.data)
            ours = {t.id for p in self.policy.ike_proposals for t in p.transforms if t.type == TransformType.DH}
            self.init_retries += 1
            if group not in ours or group == self.ke_group or self.init_retries > MAX_INIT_RETRIES:
                self._die(now, f"peer asked for key exchange group {group}, which we do not propose")
                return
            self.log("info", "peer wants another key exchange group, retrying", group=group)
            self.ke_group = group
            self._send_init(now)
            return
        errors = [n for n in msg.notifies() if n.is_error]
        if errors:
            name = notify_name(errors[0].notify_type)
            self._die(now, f"IKE_SA_INIT failed: peer answered {name}")
            return
        try:
            self._complete_init_as_initiator(msg, now)
        except (ExchangeFailed, ProposalError, InvalidKeyExchange) as e:
            self._die(now, f"IKE_SA_INIT response unacceptable: {e}")

    def _complete_init_as_initiator(self, msg: Message, now: float) -> None:
        sa = msg.get(P.SAPayload)
        ke = msg.get(P.KEPayload)
        nonce = msg.get(P.NoncePayload)
        if sa is None or ke is None or nonce is None:
            raise ExchangeFailed(N.INVALID_SYNTAX, "missing SA, KE or Nonce")
        if len(sa.proposals) != 1:
            raise ExchangeFailed(N.NO_PROPOSAL_CHOSEN, "responder returned more than one proposal")
        chosen = sa.proposals[0]
        if choose_proposal(self.policy.ike_proposals, [chosen]) is None or \
                any(sum(1 for t in chosen.transforms if t.type == tt) > 1 for tt in TransformType):
            raise ExchangeFailed(N.NO_PROPOSAL_CHOSEN, "responder chose a proposal we did not offer")
        suite = ike_suite(chosen)
        if ke.group != self.ke_group or suite.ke.group != self.ke_group:
            raise ExchangeFailed(N.INVALID_KE_PAYLOAD, f"responder KE group {ke.group} does not match")
        if self.ke_private is None:
            raise RuntimeError("IKE_SA_INIT response without a key exchange of ours in progress")
        shared = self.ke_private.shared_secret(ke.data)
        self.spi_r = msg.spi_r
        self.nr = nonce.data
        self.suite = suite
        self.proposal = chosen
        self._derive_keys(shared)
        self.ke_private = None  # the keys are derived: our key exchange secret is not needed again
        self._read_init_notifies(msg)
        self._check_intermediate_support(msg)
        self._ppk_read_init(msg)
        self.state = State.AUTH_SENT
        self.log("info", "IKE_SA_INIT done", spi_i=self.spi_i.hex(), spi_r=self.spi_r.hex(),
                 proposal=proposal_display(chosen), nat_local=self.nat_local, nat_remote=self.nat_remote)
        # RFC 7296 2.23 / RFC 3948: move to port 4500 once NAT detection payloads were exchanged.
        if self.natd_seen and self.remote[1] == IKE_PORT:
            self.local = (self.local[0], NATT_PORT)
            self.remote = (self.remote[0], NATT_PORT)
        self._after_init_as_initiator()  # IKE_INTERMEDIATE(s) first when negotiated (RFC 9370)

    def _read_init_notifies(self, msg: Message) -> None:
        self.peer_fragmentation = msg.notify(N.IKEV2_FRAGMENTATION_SUPPORTED) is not None
        h = msg.notify(N.SIGNATURE_HASH_ALGORITHMS)
        if h is not None:
            self.peer_hash_algs = [v for (v,) in struct.iter_unpack("!H", h.data)]
        for cr in msg.all(P.CertReqPayload):
            try:
                self.peer_certreq += cr.ca_hashes()
            except ParseError:
                pass
        src = msg.notifies(N.NAT_DETECTION_SOURCE_IP)
        dst = msg.notifies(N.NAT_DETECTION_DESTINATION_IP)
        if src and dst:
            self.natd_seen = True
            expect_dst = natd_hash(self.spi_i, self.spi_r if self.initiator else bytes(8),
                                   self.local[0], self.local[1])
            # Hashes in the request are computed with SPIr = 0.
            if not self.initiator:
                expect_dst = natd_hash(self.spi_i, bytes(8), self.local[0], self.local[1])
                expect_src = natd_hash(self.spi_i, bytes(8), self.remote[0], self.remote[1])
            else:
                expect_src = natd_hash(self.spi_i, self.spi_r, self.remote[0], self.remote[1])
            self.nat_local = all(d.data != expect_dst for d in dst)
            self.nat_remote = all(s.data != expect_src for s in src)
        if self.policy and self.policy.forced_encap and self.natd_seen:
            self.nat_local = True

    def _derive_keys(self, shared: bytes) -> None:
        s = self.agreed_suite
        _skeyseed, keys = derive_ike_keys(s.prf, s.encr, s.integ, shared, self.ni, self.nr,
                                         self.spi_i, self.spi_r)
        self._install_keys(keys)

    def _install_keys(self, keys: IkeKeys) -> None:
        s = self.agreed_suite
        self.keys = keys
        ki = SKKeys(s.encr, s.integ, keys.sk_ei, keys.sk_ai)
        kr = SKKeys(s.encr, s.integ, keys.sk_er, keys.sk_ar)
        self.sk_out, self.sk_in = (ki, kr) if self.initiator else (kr, ki)

    def _on_init_request(self, raw: bytes, msg: Message, local: Address, remote: Address, now: float) -> None:
        """Responder: answer IKE_SA_INIT (the manager already checked cookies and limits)."""
        if compute_async.waiting(self, "init", msg.message_id):
            self.log("debug", "IKE_SA_INIT keys being computed, retransmission absorbed")
            return
        self.spi_i = msg.spi_i
        self.init_request_raw = raw
        sa = msg.get(P.SAPayload)
        ke = msg.get(P.KEPayload)
        nonce = msg.get(P.NoncePayload)
        if sa is None or ke is None or nonce is None:
            self._reject_init(msg, N.INVALID_SYNTAX, "IKE_SA_INIT without SA, KE or Nonce")
            return
        chosen = None
        for pol in self.candidates:
            chosen = choose_proposal(pol.ike_proposals, sa.proposals)
            if chosen is not None:
                self.policy = pol
                break
        if chosen is None:
            self._reject_init(msg, N.NO_PROPOSAL_CHOSEN, "no acceptable IKE proposal: peer offered "
                              + "; ".join(proposal_display(p) for p in sa.proposals))
            return
        self.candidates = [c for c in self.candidates if choose_proposal(c.ike_proposals, [chosen])]
        try:
            suite = ike_suite(chosen)
        except ProposalError as e:
            self._reject_init(msg, N.NO_PROPOSAL_CHOSEN, str(e))
            return
        if ke.group != suite.ke.group:
            self._reject_init(msg, N.INVALID_KE_PAYLOAD, f"peer sent KE group {ke.group}, we want {suite.ke.group}",
                              struct.pack("!H", suite.ke.group))
            return
        self.ke_group = suite.ke.group
        if suite.additional and msg.notify(N.INTERMEDIATE_EXCHANGE_SUPPORTED) is None:
            self._reject_init(msg, N.NO_PROPOSAL_CHOSEN, "peer proposed additional key exchanges "
                              "without INTERMEDIATE_EXCHANGE_SUPPORTED")
            return
        chosen = P.Proposal(chosen.num, ProtocolId.IKE, b"", chosen.transforms)
        self.ni = nonce.data
        self.suite = suite
        self.proposal = chosen
        if self.offload is not None:
            # The key share, shared secret and SK_* keys as one job (ikev2.compute), possibly
            # computed elsewhere: then we stop here and _resume_init continues.
            self.nr = self.rng(NONCE_LEN)
            self.spi_r = self._new_ike_spi()
            job = InitKeysJob(group=suite.ke.group, peer_ke=ke.data, seed=self.rng(32),
                              prf=suite.prf.transform_id, encr=suite.encr.transform_id, encr_bits=suite.encr.key_bits,
                              integ=suite.integ.transform_id if suite.integ is not None else None,
                              ni=self.ni, nr=self.nr, spi_i=self.spi_i, spi_r=self.spi_r)
            try:
                result = compute_async.result_for(self, "init", msg, lambda: job, context=remote)
            except compute_async.Deferred:
                return
            assert isinstance(result, InitKeysResult)
            self._answer_init(msg, remote, result)
            return
        try:
            # DH: our public value; KEM (ML-KEM): the ciphertext encapsulated to the peer's key.
            our_ke_data, shared = suite.ke.respond(self.rng, ke.data)
        except InvalidKeyExchange as e:
            self._reject_init(msg, N.INVALID_SYNTAX, f"peer's key exchange value rejected: {e}")
            return
        self.nr = self.rng(NONCE_LEN)
        self.spi_r = self._new_ike_spi()
        s = suite
        _skeyseed, keys = derive_ike_keys(s.prf, s.encr, s.integ, shared, self.ni, self.nr, self.spi_i, self.spi_r)
        self._answer_init(msg, remote, InitKeysResult(ke_data=our_ke_data, keys=keys))

    def _resume_init(self, w: compute_async.ComputeWaiting, now: float) -> None:
        """The keys computed elsewhere arrived (ikev2.compute_async.deliver)."""
        assert isinstance(w.result, InitKeysResult)
        self._answer_init(w.request, w.context, w.result)

    def _answer_init(self, msg: Message, remote: Address, result: InitKeysResult) -> None:
        if result.keys is None:
            self._reject_init(msg, N.INVALID_SYNTAX, f"peer's key exchange value rejected: {result.error}")
            return
        chosen = self.proposal
        assert chosen is not None and self.ke_group is not None
        self._read_init_notifies(msg)
        self.peer_intermediate = msg.notify(N.INTERMEDIATE_EXCHANGE_SUPPORTED) is not None
        self._install_keys(result.keys)
        payloads: list[P.Payload] = [P.SAPayload(proposals=[chosen]),
                                     P.KEPayload(group=self.ke_group, data=result.ke_data),
                                     P.NoncePayload(data=self.nr)]
        if self.natd_seen:
            payloads += self._natd_payloads(self.spi_r)
        cas = [ca for c in self.candidates for ca in c.remote_auth.cacerts if c.remote_auth.method == "pubkey"]
        if cas:
            from .certs import certreq_data
            payloads.append(P.CertReqPayload(encoding=4, data=certreq_data(cas)))
        payloads += self._common_init_notifies()
        payloads += self._ppk_init_notifies(msg)
        self._ppk_read_init(msg)
        resp = Message(self.spi_i, self.spi_r, X.IKE_SA_INIT, 0, HeaderFlag.RESPONSE, payloads)
        self.init_response_raw = encode_message(resp)
        self.ke_private = None  # the keys are derived: our key exchange secret is not needed again
        self.state = State.INIT_DONE
        self.peer_next_mid = 1
        self.log("info", "IKE_SA_INIT answered", spi_i=self.spi_i.hex(), spi_r=self.spi_r.hex(),
                 peer=f"{remote[0]}:{remote[1]}", proposal=proposal_display(chosen),
                 nat_local=self.nat_local, nat_remote=self.nat_remote)
        self._send([self.init_response_raw])

    def _reject_init(self, msg: Message, notify: int, reason: str, data: bytes = b"") -> None:
        self.log("warning", "IKE_SA_INIT refused", peer=f"{self.remote[0]}:{self.remote[1]}",
                 notify=notify_name(notify), reason=reason)
        resp = Message(msg.spi_i, bytes(8), X.IKE_SA_INIT, 0, HeaderFlag.RESPONSE,
                       [P.NotifyPayload(notify_type=notify, data=data)])
        self._send([encode_message(resp)])
        self.state = State.DELETED
        self.delete_reason = reason
