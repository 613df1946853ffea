"""IKE SA rekeying with CREATE_CHILD_SA (RFC 7296 1.3.2, 2.18), both roles."""
from __future__ import annotations

import struct
from typing import Self

from . import payloads as P
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
from .crypto.keys import derive_rekeyed_ike_keys
from .crypto.proposals import IkeSuite, choose_proposal, ike_suite, proposal_display
from .errors import InvalidKeyExchange, ProposalError
from .events import IkeRekeyed
from .message import Message
from .sa_common import NONCE_LEN, ExchangeFailed, RequestBuilt, State, notify_name
from .sa_core import IkeSACore

REDUNDANT_SA_LIFETIME = 30.0  # seconds a lost collision's SA waits for the peer's DELETE


class IkeRekey(IkeSACore):
    """Mixin of IkeSA (ikev2.ike_sa): works on the state declared in ``IkeSACore``.
    Provides the hooks ``_on_ike_rekey_request``, ``_settle_lost_collision``.
    Calls other exchanges only through the hooks ``_followup_link``, ``_run_followups`` (RFC 9370)
    and ``_install_keys`` (on the new IKE SA).
    """

    __slots__ = ()

    def rekey_ike(self, now: float) -> None:
        def build() -> RequestBuilt:
            if self.state != State.ESTABLISHED:
                return None
            new_spi = self._new_ike_spi()
            props = [P.Proposal(i, ProtocolId.IKE, new_spi, list(p.transforms))
                     for i, p in enumerate(self.policy.ike_proposals, 1)]
            nonce = self.rng(NONCE_LEN)
            group = next(t.id for t in props[0].transforms if t.type == TransformType.DH)
            priv = ke_method(group).generate(self.rng)
            payloads = [P.SAPayload(proposals=props), P.NoncePayload(data=nonce),
                        P.KEPayload(group=group, data=priv.public_bytes)]
            self._ike_rekey_nonce = nonce

            def on_response(msg: Message) -> None:
                self._ike_rekey_nonce = None
                errors = [n for n in msg.notifies() if n.is_error]
                sa, nr, ke = msg.get(P.SAPayload), msg.get(P.NoncePayload), msg.get(P.KEPayload)
                if errors or sa is None or nr is None or ke is None or len(sa.proposals) != 1:
                    self.log("warning", "IKE rekey failed",
                             reason=notify_name(errors[0].notify_type) if errors else "bad response")
                    self.rekey_at = self._now + 60.0
                    self._settle_lost_collision()
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
                    self._settle_lost_collision()
                    return
                def done(extra: list[bytes]) -> None:
                    collision = self._ike_collision
                    self._ike_collision = None
                    ours = self._create_successor(True, new_spi, chosen.spi, suite, chosen, nonce, nr.data,
                                                  shared, self._now, take_children=collision is None,
                                                  additional=b"".join(extra))
                    if collision is not None:
                        self._resolve_ike_collision(ours, (nonce, nr.data), *collision)
                if suite.additional:  # RFC 9370: IKE_FOLLOWUP_KE before the new IKE SA exists
                    def fail(why: str) -> None:
                        self.log("warning", "IKE rekey failed", reason=why)
                        self.rekey_at = self._now + 60.0
                        self._settle_lost_collision()
                    self._run_followups(msg, suite.additional, done, fail, "IKE rekey")
                    return
                done([])
            return X.CREATE_CHILD_SA, payloads, on_response
        self._request("rekey IKE SA", build)
        self._pump(now)

    def _on_ike_rekey_request(self, req: Message, now: float) -> None:
        sa, ni, ke = req.get(P.SAPayload), req.get(P.NoncePayload), req.get(P.KEPayload)
        if sa is None or ni is None or ke is None:
            raise ExchangeFailed(N.INVALID_SYNTAX, "IKE rekey without SA, nonce or KE")
        chosen = choose_proposal(self.policy.ike_proposals, sa.proposals)
        if chosen is None:
            raise ExchangeFailed(N.NO_PROPOSAL_CHOSEN, "no acceptable IKE proposal for rekey")
        if len(chosen.spi) != 8:
            raise ExchangeFailed(N.INVALID_SYNTAX, "IKE rekey proposal without an 8-byte SPI")
        suite = ike_suite(chosen)
        if ke.group != suite.ke.group:
            raise ExchangeFailed(N.INVALID_KE_PAYLOAD, "KE group mismatch", struct.pack("!H", suite.ke.group))
        try:
            our_ke, shared = suite.ke.respond(self.rng, ke.data)  # DH or KEM
        except InvalidKeyExchange as e:
            raise ExchangeFailed(N.INVALID_SYNTAX, f"bad KE value: {e}") from None
        if self.state == State.REKEYED:
            # Our own rekey of this SA already completed: the peer will see it (and our delete).
            raise ExchangeFailed(N.TEMPORARY_FAILURE, "IKE SA already rekeyed")
        new_spi = self._new_ike_spi()
        nr = self.rng(NONCE_LEN)
        ours = P.Proposal(chosen.num, ProtocolId.IKE, new_spi, chosen.transforms)
        payloads = [P.SAPayload(proposals=[ours]), P.NoncePayload(data=nr),
                     P.KEPayload(group=suite.ke.group, data=our_ke)]
        if suite.additional:
            # RFC 9370: the new IKE SA comes once the IKE_FOLLOWUP_KE exchanges are done.
            def done(extra: list[bytes]) -> None:
                self._finish_ike_rekey_responder(chosen, new_spi, suite, ours, ni.data, nr,
                                                 shared, self._now, additional=b"".join(extra))
            payloads.append(self._followup_link(suite.additional, done, "IKE rekey"))
            self._respond(req, payloads)
            return
        self._respond(req, payloads)
        self._finish_ike_rekey_responder(chosen, new_spi, suite, ours, ni.data, nr, shared, now)

    def _finish_ike_rekey_responder(self, chosen: P.Proposal, new_spi: bytes, suite: IkeSuite,
                                    ours: P.Proposal, ni: bytes, nr: bytes, shared: bytes, now: float,
                                    additional: bytes = b"") -> None:
        if self._ike_rekey_nonce is not None:
            # RFC 7296 2.8.2: both ends rekey this IKE SA at once. Answer as usual; which of the
            # two new SAs survives is decided by the nonces once our own exchange completes.
            theirs = self._create_successor(False, chosen.spi, new_spi, suite, ours, ni, nr, shared, now,
                                            take_children=False, additional=additional)
            theirs.collision_candidate = True  # a DELETE for it before we decide: it lost
            self._ike_collision = (theirs, (ni, nr))
            self.log("info", "IKE rekey collision: answered the peer's rekey, waiting for ours")
            return
        self._create_successor(False, chosen.spi, new_spi, suite, ours, ni, nr, shared, now,
                               additional=additional)

    def _resolve_ike_collision(self, ours: IkeSACore, our_nonces: tuple[bytes, bytes], theirs: IkeSACore,
                               their_nonces: tuple[bytes, bytes]) -> None:
        """RFC 7296 2.8.2: the new IKE SA created with the lowest of the four nonces is redundant;
        its initiator deletes it. The Child SAs move to the survivor, and the old SA is deleted
        by the initiator of the surviving exchange."""
        if min(our_nonces) < min(their_nonces):
            winner, loser = theirs, ours
            self.log("info", "IKE rekey collision: our new IKE SA is redundant, deleting it",
                     redundant=f"{ours.spi_i.hex()}_{ours.spi_r.hex()}")
            loser.children = []
            loser._request("delete redundant IKE SA", lambda: (
                X.INFORMATIONAL, [P.DeletePayload(protocol=ProtocolId.IKE)], lambda m: loser._gone(loser._now)))
            loser._pump(self._now)
        else:
            winner, loser = ours, theirs
            self.log("info", "IKE rekey collision: the peer's new IKE SA is redundant (it deletes it)",
                     redundant=f"{theirs.spi_i.hex()}_{theirs.spi_r.hex()}")
            loser.children = []
            loser.redundant = True  # the peer deletes it: disappear quietly then
            if loser.state != State.DELETED:
                # ...or never, if the peer aborted its half of the exchange: forget it after a while.
                loser.state = State.REKEYED
                loser.forget_at = self._now + REDUNDANT_SA_LIFETIME
            self._request("delete rekeyed IKE SA", lambda: (X.INFORMATIONAL,
                          [P.DeletePayload(protocol=ProtocolId.IKE)], lambda m: self._gone(self._now)))
        winner.collision_candidate = False
        winner.children = self.children
        self.children = []
        self.successor = winner

    def _settle_lost_collision(self) -> None:
        """Our rekey failed while the peer's succeeded: the peer's new SA takes over."""
        collision, self._ike_collision = self._ike_collision, None
        if collision is not None:
            theirs = collision[0]
            theirs.collision_candidate = False
            theirs.children = self.children
            self.children = []
            self.successor = theirs

    def _create_successor(self, we_initiated: bool, spi_i: bytes, spi_r: bytes, suite: IkeSuite,
                          proposal: P.Proposal, ni: bytes, nr: bytes, shared: bytes, now: float,
                          take_children: bool = True, additional: bytes = b"") -> Self:
        """RFC 7296 2.18: the new IKE SA takes over all Child SAs; the old one is deleted by the
        side that initiated the rekey."""
        new = type(self)(ike_id=self.ike_id, initiator=we_initiated, policy=self.policy, local=self.local,
                    remote=self.remote, rng=self.rng, now=now, log=self.log, wall_offset=self.wall_offset)
        new.spi_i, new.spi_r = spi_i, spi_r
        new.suite, new.proposal = suite, proposal
        new.ni, new.nr = ni, nr
        _skeyseed, keys = derive_rekeyed_ike_keys(self.agreed_suite.prf, self.derived_keys.sk_d, suite.prf, suite.encr,
                                                  suite.integ, shared, ni, nr, spi_i, spi_r, additional)
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
        if take_children:
            new.children = self.children
            self.children = []
            self.successor = new
        self.successors.append(new)
        self.state = State.REKEYED
        self.rekey_at = None
        self.log("info", "IKE_SA rekeyed", old_spi_i=self.spi_i.hex(), old_spi_r=self.spi_r.hex(),
                 spi_i=spi_i.hex(), spi_r=spi_r.hex(), proposal=proposal_display(proposal))
        self._emit(IkeRekeyed(old_spis=(self.spi_i, self.spi_r), new_spis=(spi_i, spi_r)))
        if we_initiated and take_children:
            self._request("delete rekeyed IKE SA", lambda: (X.INFORMATIONAL,
                          [P.DeletePayload(protocol=ProtocolId.IKE)], lambda m: self._gone(self._now)))
        return new
