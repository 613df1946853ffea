"""IKE SA rekeying with CREATE_CHILD_SA (RFC 7296 1.3.2, 2.18), both roles."""
from __future__ import annotations

import struct
from . import payloads as P
from .constants import (
    ExchangeType as X,
    NotifyType as N,
    ProtocolId,
    TransformType,
)
from .crypto.dh import ke_by_id
from .crypto.keys import derive_rekeyed_ike_keys
from .crypto.proposals import choose_proposal, ike_suite, proposal_display
from .errors import InvalidKeyExchange, ProposalError
from .events import IkeRekeyed
from .message import Message
from .sa_common import NONCE_LEN, State, ExchangeFailed, _notify_name


class IkeRekey:
    """Mixin of IkeSA (ikev2.ike_sa): shares its state."""

    def rekey_ike(self, now: float) -> None:
        def build():
            if self.state != State.ESTABLISHED:
                return None
            new_spi = self._new_ike_spi()
            props = [P.Proposal(i, ProtocolId.IKE, new_spi, list(p.transforms))
                     for i, p in enumerate(self.policy.ike_proposals, 1)]
            nonce = self.rng(NONCE_LEN)
            group = next(t.id for t in props[0].transforms if t.type == TransformType.DH)
            priv = ke_by_id(group).generate(self.rng)
            payloads = [P.SAPayload(proposals=props), P.NoncePayload(data=nonce),
                        P.KEPayload(group=group, data=priv.public_bytes)]

            def on_response(msg: Message) -> None:
                errors = [n for n in msg.notifies() if n.is_error]
                sa, nr, ke = msg.get(P.SAPayload), msg.get(P.NoncePayload), msg.get(P.KEPayload)
                if errors or sa is None or nr is None or ke is None or len(sa.proposals) != 1:
                    self.log("warning", "IKE rekey failed",
                             reason=_notify_name(errors[0].notify_type) if errors else "bad response")
                    self.rekey_at = self._now + 60.0
                    return
                chosen = sa.proposals[0]
                try:
                    if choose_proposal(self.policy.ike_proposals, [chosen]) is None or len(chosen.spi) != 8:
                        raise ProposalError("responder chose an IKE proposal we did not offer")
                    suite = ike_suite(chosen)
                    if ke.group != group:
                        raise ProposalError("KE group mismatch")
                    shared = priv.shared_secret(ke.data)
                except (ProposalError, InvalidKeyExchange) as e:
                    self.log("warning", "IKE rekey response unacceptable", reason=str(e))
                    return
                self._create_successor(True, new_spi, chosen.spi, suite, chosen, nonce, nr.data, shared,
                                       self._now)
            return X.CREATE_CHILD_SA, payloads, on_response
        self._request("rekey IKE SA", build)
        self._pump(now)

    def _on_ike_rekey_request(self, req: Message, now: float) -> None:
        sa, ni, ke = req.get(P.SAPayload), req.get(P.NoncePayload), req.get(P.KEPayload)
        if ni is None or ke is None:
            raise ExchangeFailed(N.INVALID_SYNTAX, "IKE rekey without nonce or KE")
        chosen = choose_proposal(self.policy.ike_proposals, sa.proposals)
        if chosen is None:
            raise ExchangeFailed(N.NO_PROPOSAL_CHOSEN, "no acceptable IKE proposal for rekey")
        if len(chosen.spi) != 8:
            raise ExchangeFailed(N.INVALID_SYNTAX, "IKE rekey proposal without an 8-byte SPI")
        suite = ike_suite(chosen)
        if ke.group != suite.ke.group:
            raise ExchangeFailed(N.INVALID_KE_PAYLOAD, "KE group mismatch", struct.pack("!H", suite.ke.group))
        priv = suite.ke.generate(self.rng)
        try:
            shared = priv.shared_secret(ke.data)
        except InvalidKeyExchange as e:
            raise ExchangeFailed(N.INVALID_SYNTAX, f"bad KE value: {e}") from None
        new_spi = self._new_ike_spi()
        nr = self.rng(NONCE_LEN)
        ours = P.Proposal(chosen.num, ProtocolId.IKE, new_spi, chosen.transforms)
        self._respond(req, [P.SAPayload(proposals=[ours]), P.NoncePayload(data=nr),
                            P.KEPayload(group=suite.ke.group, data=priv.public_bytes)])
        self._create_successor(False, chosen.spi, new_spi, suite, ours, ni.data, nr, shared, now)

    def _create_successor(self, we_initiated: bool, spi_i: bytes, spi_r: bytes, suite, proposal,
                          ni: bytes, nr: bytes, shared: bytes, now: float) -> None:
        """RFC 7296 2.18: the new IKE SA takes over all Child SAs; the old one is deleted by the
        side that initiated the rekey."""
        from .ike_sa import IkeSA
        new = IkeSA(ike_id=self.ike_id, initiator=we_initiated, policy=self.policy, local=self.local,
                    remote=self.remote, rng=self.rng, now=now, log=self.log, wall_offset=self.wall_offset)
        new.spi_i, new.spi_r = spi_i, spi_r
        new.suite, new.proposal = suite, proposal
        new.ni, new.nr = ni, nr
        _skeyseed, keys = derive_rekeyed_ike_keys(self.suite.prf, self.keys.sk_d, suite.prf, suite.encr,
                                                  suite.integ, shared, ni, nr, spi_i, spi_r)
        new._install_keys(keys)
        new.peer_id = self.peer_id
        new.peer_fragmentation = self.peer_fragmentation
        new.peer_mobike = self.peer_mobike
        new.peer_hash_algs = self.peer_hash_algs
        new.natd_seen, new.nat_local, new.nat_remote = self.natd_seen, self.nat_local, self.nat_remote
        new.state = State.ESTABLISHED
        new.established_at = now
        new.last_inbound = now
        new.rekey_at = now + self.policy.rekey_time if self.policy.rekey_time else None
        new.children = self.children
        self.children = []
        self.successor = new
        self.state = State.REKEYED
        self.rekey_at = None
        self.log("info", "IKE_SA rekeyed", old_spi_i=self.spi_i.hex(), old_spi_r=self.spi_r.hex(),
                 spi_i=spi_i.hex(), spi_r=spi_r.hex(), proposal=proposal_display(proposal))
        self._emit(IkeRekeyed(old_spis=(self.spi_i, self.spi_r), new_spis=(spi_i, spi_r)))
        if we_initiated:
            self._request("delete rekeyed IKE SA", lambda: (X.INFORMATIONAL,
                          [P.DeletePayload(protocol=ProtocolId.IKE)], lambda m: self._gone(self._now)))

    def _gone(self, now: float) -> None:
        """Old IKE SA after rekey: disappear quietly (no IkeDown: the successor lives on)."""
        self.state = State.DELETED
        self.pending = None
        self.queue.clear()
        if self.sk_in:
            self.sk_in.wipe()
        if self.sk_out:
            self.sk_out.wipe()
