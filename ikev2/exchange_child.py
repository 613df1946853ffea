"""Child SAs: the first one in IKE_AUTH, CREATE_CHILD_SA for new ones and for rekeying
(RFC 7296 1.3, 2.8 with the 2.8.1 collision rule, 2.9 selector narrowing), both roles."""
from __future__ import annotations

import struct

from . import payloads as P
from .child_sa import ChildSA, ChildState
from .constants import (
    ExchangeType as X,
)
from .constants import (
    NotifyType as N,
)
from .constants import (
    ProtocolId,
    TransformType,
)
from .crypto.dh import ke_method
from .crypto.keys import ChildKeys, derive_child_keys
from .crypto.proposals import ChildSuite, child_suite, choose_proposal, proposal_display
from .errors import InvalidKeyExchange, ProposalError
from .events import ChildFailed, ChildSAKeys, ChildUp, ExchangeDone
from .message import Message
from .multi_ke import is_ke_transform
from .policy import ChildPolicy
from .sa_common import NONCE_LEN, ChildRequest, ExchangeFailed, RequestBuilt, State, log_wants, notify_name
from .sa_core import IkeSACore
from .ts import all_within, narrow


def _pfs_only(proposals: list[P.Proposal]) -> bool:
    """Every proposal has a key exchange transform other than NONE (Child SA PFS required)."""
    return bool(proposals) and all(
        any(t.type == TransformType.DH and t.id != 0 for t in p.transforms) for p in proposals)

class ChildExchanges(IkeSACore):
    """Mixin of IkeSA (ikev2.ike_sa): works on the state declared in ``IkeSACore``.
    Provides the hooks ``_child_by_spi_in``, ``_child_by_spi_out``, ``_child_proposals``,
    ``_finish_child_as_initiator``, ``_install_child``, ``_respond_child``, ``create_child``.
    Calls other exchanges only through the hooks ``_delete_children``, ``_on_ike_rekey_request``;
    RFC 9370 ``_followup_link``, ``_run_followups``.
    """

    __slots__ = ()

    def _child_proposals(self, cp: ChildPolicy, spi: bytes, with_ke: bool) -> list[P.Proposal]:
        out = []
        for i, p in enumerate(cp.esp_proposals, 1):
            tr = [t for t in p.transforms if with_ke or not is_ke_transform(t.type)]
            out.append(P.Proposal(i, ProtocolId.ESP, spi, tr))
        return out

    def _respond_child(self, req: Message, now: float, ni: bytes, nr: bytes, shared: bytes | None,
                       rekey_of: ChildSA | None, peer_ts: list[P.TrafficSelector] | None = None
                       ) -> tuple[list[P.Payload], ChildSA | None]:
        """Responder side of a Child SA (IKE_AUTH or CREATE_CHILD_SA): choose proposal and
        narrow selectors. Returns the payloads to answer with and the new ChildSA (not installed)."""
        sa = req.get(P.SAPayload)
        tsi = req.get(P.TSiPayload)
        tsr = req.get(P.TSrPayload)
        if sa is None or tsi is None or tsr is None:
            if req.exchange == X.IKE_AUTH:
                return [], None  # childless (RFC 6023)
            raise ExchangeFailed(N.INVALID_SYNTAX, "CREATE_CHILD_SA without SA, TSi or TSr")
        in_auth = req.exchange == X.IKE_AUTH
        policies = [rekey_of.policy] if rekey_of else self.policy.children
        best_err = (N.TS_UNACCEPTABLE, "traffic selectors unacceptable")
        for cp in policies:
            # A remote-access client's selectors are narrowed to its virtual IP (peer_ts).
            ts_i = narrow(narrow(tsi.selectors, peer_ts) if peer_ts else tsi.selectors, cp.remote_ts)
            ts_r = narrow(tsr.selectors, cp.local_ts)
            if not ts_i or not ts_r:
                continue
            ours = [P.Proposal(p.num, ProtocolId.ESP, b"",
                               [t for t in p.transforms if not (in_auth and is_ke_transform(t.type))])
                    for p in cp.esp_proposals]
            chosen = choose_proposal(ours, sa.proposals)
            if chosen is None:
                why = "no acceptable ESP proposal: peer offered " + "; ".join(
                    proposal_display(p) for p in sa.proposals)
                if not in_auth and _pfs_only(sa.proposals) and not any(_pfs_only([p]) for p in ours):
                    why += (" (the peer wants PFS: a key exchange in every proposal, e.g. Libreswan's "
                            "pfs=yes; name a group in esp_proposals, e.g. \"aes256gcm16-ecp256\", "
                            "docs/config.md)")
                best_err = (N.NO_PROPOSAL_CHOSEN, why)
                continue
            if len(chosen.spi) != 4:
                raise ExchangeFailed(N.INVALID_SYNTAX, "ESP proposal without a 4-byte SPI")
            suite = child_suite(chosen)
            ke_payloads: list[P.Payload] = []
            if not in_auth:
                kep = req.get(P.KEPayload)
                if suite.ke is not None:
                    if kep is None or kep.group != suite.ke.group:
                        raise ExchangeFailed(N.INVALID_KE_PAYLOAD, "PFS group mismatch",
                                             struct.pack("!H", suite.ke.group))
                    try:
                        our_ke, shared = suite.ke.respond(self.rng, kep.data)  # DH or KEM
                    except InvalidKeyExchange as e:
                        raise ExchangeFailed(N.INVALID_SYNTAX, f"bad KE value: {e}") from None
                    ke_payloads = [P.KEPayload(group=suite.ke.group, data=our_ke)]
            spi_in = self._new_child_spi()
            spi_out = chosen.spi
            ours_chosen = P.Proposal(chosen.num, ProtocolId.ESP, spi_in, chosen.transforms)
            payloads: list[P.Payload] = [P.SAPayload(proposals=[ours_chosen])]
            if not in_auth:
                payloads.append(P.NoncePayload(data=nr))
                payloads += ke_payloads
            payloads += [P.TSiPayload(selectors=ts_i), P.TSrPayload(selectors=ts_r)]
            if not in_auth and suite.additional:
                # RFC 9370: the Child SA exists once the IKE_FOLLOWUP_KE exchanges are done.
                def done(extra: list[bytes], cp: ChildPolicy = cp, spi_in: bytes = spi_in,
                         spi_out: bytes = spi_out, ours_chosen: P.Proposal = ours_chosen,
                         suite: ChildSuite = suite, shared: bytes | None = shared,
                         ts_i: list[P.TrafficSelector] = ts_i, ts_r: list[P.TrafficSelector] = ts_r) -> None:
                    child = self._make_child(cp, spi_in, spi_out, ours_chosen, suite, ni, nr,
                                             shared, local_ts=ts_r, remote_ts=ts_i, now=self._now,
                                             we_initiated=False, additional=b"".join(extra))
                    child.replaces = rekey_of
                    self._install_child(child, self._now, rekey_of=rekey_of)
                    if rekey_of is not None and rekey_of.state == ChildState.INSTALLED:
                        rekey_of.state = ChildState.REKEYED  # the peer will delete it
                payloads.append(self._followup_link(suite.additional, done, f"child {cp.name}"))
                return payloads, None
            child = self._make_child(cp, spi_in, spi_out, ours_chosen, suite, ni, nr, shared,
                                     local_ts=ts_r, remote_ts=ts_i, now=now, we_initiated=False)
            child.replaces = rekey_of
            return payloads, child
        self.log("warning", "no Child SA created", reason=best_err[1],
                 tsi=[str(t) for t in tsi.selectors], tsr=[str(t) for t in tsr.selectors])
        if in_auth:
            return [P.NotifyPayload(notify_type=best_err[0])], None
        raise ExchangeFailed(best_err[0], best_err[1])

    def _make_child(self, cp: ChildPolicy, spi_in: bytes, spi_out: bytes, proposal: P.Proposal, suite: ChildSuite,
                    ni: bytes, nr: bytes, shared: bytes | None, local_ts: list[P.TrafficSelector],
                    remote_ts: list[P.TrafficSelector], now: float,
                    we_initiated: bool, additional: bytes = b"") -> ChildSA:
        k = derive_child_keys(self.agreed_suite.prf, self.derived_keys.sk_d, suite.encr, suite.integ, ni, nr, shared,
                              additional)
        # Keys "i" protect traffic from the initiator of this exchange to its responder.
        return ChildSA(policy=cp, spi_in=spi_in, spi_out=spi_out, proposal=proposal,
                       keys=self._child_keys(k, suite, spi_in, spi_out, cp, we_initiated),
                       local_ts=local_ts, remote_ts=remote_ts, created=now,
                       rekey_at=now + self._jitter(cp.rekey_time),
                       expire_at=now + (cp.life_time or cp.rekey_time * 1.1),
                       proposal_text=proposal_display(proposal), nonces=(ni, nr))

    def _jitter(self, t: float) -> float:
        # Up to 10 % earlier, so both ends do not rekey at the same moment (deterministic via rng).
        return t - t * 0.1 * (self.rng(1)[0] / 255.0)

    @staticmethod
    def _child_keys(k: ChildKeys, suite: ChildSuite, spi_in: bytes, spi_out: bytes, cp: ChildPolicy,
                    we_initiated: bool) -> ChildSAKeys:
        if we_initiated:
            e_in, a_in, e_out, a_out = k.encr_r, k.integ_r, k.encr_i, k.integ_i
        else:
            e_in, a_in, e_out, a_out = k.encr_i, k.integ_i, k.encr_r, k.integ_r
        return ChildSAKeys(spi_in=spi_in, spi_out=spi_out, protocol=ProtocolId.ESP, mode=cp.mode,
                           encr_id=suite.encr.transform_id, encr_key_bits=suite.encr.key_bits,
                           integ_id=suite.integ.transform_id if suite.integ else None, esn=suite.esn,
                           encr_key_in=e_in, integ_key_in=a_in or b"", encr_key_out=e_out,
                           integ_key_out=a_out or b"")

    def _install_child(self, child: ChildSA, now: float, rekey_of: ChildSA | None = None) -> None:
        self.children.append(child)
        if log_wants(self.log, "info"):  # (formatting selectors costs more than the rest of it)
            self.log("info", "CHILD_SA established", child=child.name, spi_in=child.spi_in.hex(),
                     spi_out=child.spi_out.hex(), local_ts=[str(t) for t in child.local_ts],
                     remote_ts=[str(t) for t in child.remote_ts], proposal=child.proposal_text,
                     rekey_of=rekey_of.spi_in.hex() if rekey_of else None)
        self._emit(ChildUp(child_name=child.name, keys=child.keys, local_ts=child.local_ts,
                           remote_ts=child.remote_ts, local=self.local, remote=self.remote,
                           encap=self.encap, proposal=child.proposal_text,
                           rekey_of=rekey_of.spi_in if rekey_of else None,
                           replay_window=child.policy.replay_window,
                           rekey_bytes=child.policy.rekey_bytes, life_bytes=child.policy.life_bytes,
                           rekey_packets=child.policy.rekey_packets, life_packets=child.policy.life_packets))

    def _finish_child_as_initiator(self, req: ChildRequest, msg: Message, now: float, ni: bytes,
                                   nr: bytes, shared: bytes | None) -> None:
        errors = [n for n in msg.notifies() if n.is_error]
        sa = msg.get(P.SAPayload)
        tsi = msg.get(P.TSiPayload)
        tsr = msg.get(P.TSrPayload)
        if errors or sa is None or tsi is None or tsr is None:
            why = notify_name(errors[0].notify_type) if errors else "no SA/TS in the response"
            self.log("warning", "CHILD_SA not created", child=req.policy.name, reason=why)
            if req.rekey_of is not None and req.rekey_of.state == ChildState.REKEYING:
                req.rekey_of.state = ChildState.INSTALLED
            if req.rekey_of is None:
                self._emit(ChildFailed(child_name=req.policy.name, reason=f"peer refused it: {why}"))
            return
        try:
            if len(sa.proposals) != 1 or len(sa.proposals[0].spi) != 4:
                raise ExchangeFailed(N.NO_PROPOSAL_CHOSEN, "responder must choose exactly one ESP proposal")
            chosen = sa.proposals[0]
            if choose_proposal(req.proposals, [chosen]) is None:
                raise ExchangeFailed(N.NO_PROPOSAL_CHOSEN, "responder chose an ESP proposal we did not offer")
            if not all_within(tsi.selectors, req.ts_i) or not all_within(tsr.selectors, req.ts_r):
                raise ExchangeFailed(N.TS_UNACCEPTABLE, "responder widened the traffic selectors")
            suite = child_suite(chosen)
            if req.ke is not None:
                kep = msg.get(P.KEPayload)
                if kep is None or suite.ke is None or kep.group != req.ke.method.group:
                    raise ExchangeFailed(N.INVALID_KE_PAYLOAD, "responder did not return our PFS group")
                shared = req.ke.shared_secret(kep.data)
        except (ExchangeFailed, ProposalError, InvalidKeyExchange) as e:
            self.log("warning", "CHILD_SA response unacceptable", child=req.policy.name, reason=str(e))
            if req.rekey_of is not None and req.rekey_of.state == ChildState.REKEYING:
                req.rekey_of.state = ChildState.INSTALLED
            if req.rekey_of is None:
                self._emit(ChildFailed(child_name=req.policy.name, reason=f"unacceptable answer: {e}"))
            # The responder installed an SA we refuse: ask it to delete (our inbound SPI names it).
            self._request("delete refused child", lambda: (
                X.INFORMATIONAL, [P.DeletePayload(protocol=ProtocolId.ESP, spis=[req.spi_in])], lambda m: None))
            return
        def done(extra: list[bytes]) -> None:
            child = self._make_child(req.policy, req.spi_in, chosen.spi,
                                     P.Proposal(chosen.num, ProtocolId.ESP, req.spi_in, chosen.transforms),
                                     suite, ni, nr, shared, local_ts=tsi.selectors,
                                     remote_ts=tsr.selectors, now=self._now, we_initiated=True,
                                     additional=b"".join(extra))
            self._install_child(child, self._now, rekey_of=req.rekey_of)
            if req.rekey_of is not None:
                self._finish_rekey(req.rekey_of, child, self._now)

        if suite.additional and msg.exchange == X.CREATE_CHILD_SA:
            def fail(why: str) -> None:
                self.log("warning", "CHILD_SA not created", child=req.policy.name, reason=why)
                if req.rekey_of is not None and req.rekey_of.state == ChildState.REKEYING:
                    req.rekey_of.state = ChildState.INSTALLED
            self._run_followups(msg, suite.additional, done, fail, f"child {req.policy.name}")
            return
        done([])

    def create_child(self, cp: ChildPolicy, now: float) -> None:
        """Ask for an additional Child SA (CREATE_CHILD_SA)."""
        def build() -> RequestBuilt:
            if self.state != State.ESTABLISHED:
                return None
            return self._build_create_child(cp, None)
        self._request(f"create child {cp.name}", build)
        self._pump(now)

    def _build_create_child(self, cp: ChildPolicy, rekey_of: ChildSA | None) -> RequestBuilt:
        spi = self._new_child_spi()
        req = ChildRequest(cp, spi, [], list(rekey_of.local_ts if rekey_of else cp.local_ts),
                            list(rekey_of.remote_ts if rekey_of else cp.remote_ts), rekey_of=rekey_of)
        req.proposals = self._child_proposals(cp, spi, with_ke=True)
        req.nonce = self.rng(NONCE_LEN)
        payloads: list[P.Payload] = []
        if rekey_of is not None:
            payloads.append(P.NotifyPayload(notify_type=N.REKEY_SA, protocol=ProtocolId.ESP, spi=rekey_of.spi_in))
        payloads += [P.SAPayload(proposals=req.proposals), P.NoncePayload(data=req.nonce)]
        groups = [t.id for t in req.proposals[0].transforms if t.type == TransformType.DH and t.id]
        if groups:
            req.ke = ke_method(groups[0]).generate(self.rng)
            payloads.append(P.KEPayload(group=groups[0], data=req.ke.public_bytes))
        payloads += [P.TSiPayload(selectors=req.ts_i), P.TSrPayload(selectors=req.ts_r)]

        def on_response(msg: Message) -> None:
            nonce = msg.get(P.NoncePayload)
            if nonce is None and not [n for n in msg.notifies() if n.is_error]:
                self.log("warning", "CREATE_CHILD_SA response without nonce")
                return
            if rekey_of is not None and rekey_of.state == ChildState.DELETED:
                # The peer deleted it meanwhile (collision): keep whatever we got.
                pass
            self._finish_child_as_initiator(req, msg, self._now, req.nonce,
                                            nonce.data if nonce else b"", None)
        return X.CREATE_CHILD_SA, payloads, on_response

    def rekey_child(self, spi_in: bytes, now: float) -> bool:
        c = self._child_by_spi_in(spi_in)
        if c is None or c.state != ChildState.INSTALLED:
            return False
        c.state = ChildState.REKEYING

        def build() -> RequestBuilt:
            if self.state != State.ESTABLISHED or c.state != ChildState.REKEYING:
                return None
            return self._build_create_child(c.policy, c)
        self._request(f"rekey child {c.name}", build)
        self._pump(now)
        return True

    def _finish_rekey(self, old: ChildSA, new: ChildSA, now: float) -> None:
        """We rekeyed ``old``; delete it unless a collision decided otherwise (RFC 7296 2.8.1)."""
        twin = next((c for c in self.children if c is not new and c.policy is old.policy
                     and c.state == ChildState.INSTALLED and c.replaces is old), None)
        if twin is not None:
            # Both sides rekeyed the same SA: the SA created with the lowest nonce is redundant and
            # is deleted by the side that created it (the initiator of that exchange).
            ours_min = min(new.nonces)
            theirs_min = min(twin.nonces)
            if ours_min < theirs_min:
                self.log("info", "rekey collision: deleting our redundant CHILD_SA", child=new.name)
                self._delete_children([new], now, "redundant after rekey collision")
                old.state = ChildState.REKEYED
                return
        old.state = ChildState.REKEYED
        self._delete_children([old], now, "rekeyed")

    def _child_by_spi_in(self, spi: bytes) -> ChildSA | None:
        return next((c for c in self.children if c.spi_in == spi), None)

    def _child_by_spi_out(self, spi: bytes) -> ChildSA | None:
        return next((c for c in self.children if c.spi_out == spi), None)

    def _on_create_child_request(self, req: Message, now: float) -> None:
        if self.state != State.ESTABLISHED:
            raise ExchangeFailed(N.TEMPORARY_FAILURE, "IKE SA is not established")
        sa = req.get(P.SAPayload)
        if sa is not None and sa.proposals and sa.proposals[0].protocol == ProtocolId.IKE:
            self._on_ike_rekey_request(req, now)
            return
        nonce = req.get(P.NoncePayload)
        if nonce is None:
            raise ExchangeFailed(N.INVALID_SYNTAX, "CREATE_CHILD_SA without nonce")
        rekey = req.notify(N.REKEY_SA)
        old = None
        if rekey is not None:
            old = self._child_by_spi_out(rekey.spi)
            if old is None or old.state in (ChildState.DELETED, ChildState.DELETING):
                raise ExchangeFailed(N.CHILD_SA_NOT_FOUND, f"no Child SA with SPI {rekey.spi.hex()} to rekey",
                                     rekey.spi)
        nr = self.rng(NONCE_LEN)
        payloads, child = self._respond_child(req, now, nonce.data, nr, None, rekey_of=old)
        self._respond(req, payloads)
        if child is not None:
            self._install_child(child, now, rekey_of=old)
            if old is not None and old.state == ChildState.INSTALLED:
                old.state = ChildState.REKEYED  # the peer will delete it
        self._emit(ExchangeDone(exchange="CREATE_CHILD_SA", role="responder", message_id=req.message_id,
                                outcome="rekeyed child" if old else "created child", peer=self.remote))
