"""One IKE SA: the sans-IO state machine of RFC 7296 (both roles).

Input: decoded datagrams (``receive``) and time (``tick``); output: datagrams
(``pop_datagrams``) and events (``pop_events``). No sockets, no clock, no threads: ``now`` is
passed in, randomness comes from the injected ``rng``. The manager (ikev2.manager) routes
datagrams to the right IKE SA and creates responder SAs.

Message IDs use a window of 1 in each direction. Our requests are retransmitted with
exponential back-off; the last response is cached and sent again when the peer retransmits.

``IkeSA`` composes one mixin per exchange (``exchange_*.py``); all of them work on the state
and machinery declared in ``ikev2.sa_core.IkeSACore``. This module adds what ties them
together: receiving (decryption, reassembly, message-ID checks, dispatch), timers and status.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from . import payloads as P
from .child_sa import ChildState
from .constants import ExchangeType as X
from .constants import NotifyType as N
from .crypto.proposals import proposal_display
from .errors import AuthenticatedParseError, IntegrityError, ParseError
from .events import Address, AuthFailed, ExchangeDone
from .exchange_auth import AuthExchange
from .exchange_child import ChildExchanges
from .exchange_eap import EapExchange
from .exchange_followup import FollowupKeExchange
from .exchange_ike_rekey import IkeRekey
from .exchange_info import Informational
from .exchange_init import InitExchange
from .exchange_intermediate import IntermediateExchange
from .exchange_mobike import Mobike
from .exchange_ppk import PpkExchange
from .message import Message
from .sa_common import HALF_OPEN_TIMEOUT, HANDLED_NOTIFIES, ExchangeFailed, State, log_wants
from .sk import FragmentBudgetExceeded, open_message

__all__ = ["IkeSA", "State", "ExchangeFailed"]


class IkeSA(InitExchange, IntermediateExchange, FollowupKeExchange, PpkExchange, AuthExchange,
            ChildExchanges, IkeRekey, Informational, Mobike, EapExchange):
    """One IKE SA with all its exchanges (the state is declared in ``IkeSACore``)."""

    __slots__ = ()

    def tick(self, now: float) -> None:
        if self.state == State.DELETED:
            return
        self._now = now
        if self.forget_at is not None and now >= self.forget_at:
            self.log("info", "redundant IKE SA from a rekey collision forgotten (no DELETE came)",
                     spi_i=self.spi_i.hex(), spi_r=self.spi_r.hex())
            self._gone(now)
            return
        p = self.pending
        if p is not None and now >= p.next_retransmit:
            pol = self.policy
            if p.tries >= pol.retransmit_tries:
                self.log("warning", "peer not responding, giving up", exchange=X(p.exchange).name,
                         mid=p.message_id, tries=p.tries + 1)
                self.pending = None
                if self.state == State.REKEYED or self.redundant:
                    # A replaced SA (its successor carries on): disappear quietly, no IKE_SA down.
                    self._gone(now)
                else:
                    self._die(now, f"peer did not answer {p.what} after {p.tries + 1} transmissions")
                return
            p.tries += 1
            p.next_retransmit = now + pol.retransmit_timeout * (pol.retransmit_base ** p.tries)
            self.log("info", "retransmitting request", exchange=X(p.exchange).name,
                     mid=p.message_id, attempt=p.tries + 1)
            self._send(p.packets)
        # Each timer fires when now reaches the deadline next_deadline() reports (same expression:
        # no floating-point gap in which a due timer does nothing and stays due).
        if (self.state == State.INIT_DONE or self.computing_init) and now >= self.created + HALF_OPEN_TIMEOUT:
            self._die(now, "half-open IKE SA timed out (no IKE_AUTH)" if self.state == State.INIT_DONE
                      else "half-open IKE SA timed out (IKE_SA_INIT keys never computed)")
            return
        if self.state == State.ESTABLISHED:
            self._timers(now)
        self._pump(now)

    def next_deadline(self) -> float | None:
        times = [self.forget_at] if self.forget_at is not None else []
        if self.pending is not None:
            times.append(self.pending.next_retransmit)
        if self.state == State.INIT_DONE or self.computing_init:
            times.append(self.created + HALF_OPEN_TIMEOUT)
        if self.state == State.ESTABLISHED:
            if self.rekey_at is not None:
                times.append(self.rekey_at)
            for c in self.children:
                if c.state == ChildState.INSTALLED:
                    times.append(c.rekey_at)
                times.append(c.expire_at)
            if self.policy.dpd_delay and self.pending is None and not self.queue:
                # (while a request is outstanding its retransmission deadline governs)
                times.append(self._last_activity() + self.policy.dpd_delay)
        return min(times) if times else None

    def _timers(self, now: float) -> None:
        if self.rekey_at is not None and now >= self.rekey_at:
            self.rekey_at = None
            self.rekey_ike(now)
        for c in list(self.children):
            if c.state == ChildState.INSTALLED and now >= c.rekey_at:
                self.rekey_child(c.spi_in, now)
            if c.state != ChildState.DELETED and now >= c.expire_at:
                self.log("warning", "child SA hard lifetime expired", child=c.name,
                         spi_in=c.spi_in.hex())
                self._remove_child(c, "hard lifetime expired")
                self._request("delete expired child", functools.partial(self._build_delete_child, [c]))
        if (self.policy.dpd_delay and now >= self._last_activity() + self.policy.dpd_delay
                and self.pending is None and not self.queue):
            self.liveness(now)

    def receive(self, raw: bytes, msg: Message, local: Address, remote: Address, now: float) -> None:
        """Process one decoded datagram addressed to this IKE SA."""
        if self.state == State.DELETED:
            return
        self._now = now
        try:
            if msg.exchange == X.IKE_SA_INIT:
                self._receive_init(raw, msg, local, remote, now)
            else:
                self._receive_encrypted(raw, msg, local, remote, now)
        except AuthenticatedParseError as e:
            self.log("warning", "malformed content in authenticated message", exchange=msg.exchange_name,
                     mid=msg.message_id, peer=f"{remote[0]}:{remote[1]}", reason=str(e))
            if not msg.is_response and msg.message_id == self.peer_next_mid:
                self._respond(msg, [P.NotifyPayload(notify_type=N.INVALID_SYNTAX)])
        except IntegrityError as e:
            self.log("warning", "dropped message failing integrity check", exchange=msg.exchange_name,
                     mid=msg.message_id, peer=f"{remote[0]}:{remote[1]}", reason=str(e))
        except FragmentBudgetExceeded as e:
            self.log("warning", "dropped IKE fragment set over budget", exchange=msg.exchange_name,
                     mid=msg.message_id, peer=f"{remote[0]}:{remote[1]}", reason=str(e))
        except ParseError as e:
            self.log("warning", "dropped malformed message", exchange=msg.exchange_name,
                     mid=msg.message_id, peer=f"{remote[0]}:{remote[1]}", reason=str(e))
        self._pump(now)

    def _receive_encrypted(self, raw: bytes, msg: Message, local: Address, remote: Address,
                           now: float) -> None:
        if self.sk_in is None:
            self.log("info", "dropped encrypted message before keys exist", exchange=msg.exchange_name)
            return
        enc = msg.encrypted
        if enc is None:
            self.log("warning", "dropped unencrypted message", exchange=msg.exchange_name,
                     mid=msg.message_id)
            return
        if msg.is_response:
            if self.pending is None or msg.message_id != self.pending.message_id:
                self.log("debug", "dropped unexpected response", mid=msg.message_id)
                return
        else:
            if msg.message_id == self.peer_next_mid - 1 and self.last_response is not None:
                mid, packets = self.last_response
                if isinstance(enc, P.SKFPayload) and enc.fragment_number != 1:
                    return  # RFC 7383 2.6.1: only the first fragment triggers a retransmit
                if mid == msg.message_id:
                    self.log("debug", "peer retransmitted request, resending response", mid=mid)
                    self._send(packets, (local, remote))  # RFC 7296 2.11: back where it came from
                return
            if msg.message_id != self.peer_next_mid:
                self.log("info", "dropped request with unexpected message ID",
                         mid=msg.message_id, expected=self.peer_next_mid)
                return
        if isinstance(enc, P.SKFPayload):
            full = self.reassembler.add(raw, msg, self.sk_in, pre_auth=self.state != State.ESTABLISHED)
            if full is None:
                return
            inner = full
        else:
            inner = open_message(raw, msg, self.sk_in)
        # Authenticated from here on.
        self.last_inbound = now
        self._last_src = (local, remote)
        if not inner.is_response and (remote != self.remote or local != self.local):
            # A new request (its message ID is the next one: never a replay) from a new address.
            if self.state == State.INIT_DONE or self._adoption_enabled():
                self.adopt(local, remote, now, "authenticated IKE request")
            else:
                self.log("info", "IKE request from a new address not adopted (address_adoption off)",
                         peer=f"{remote[0]}:{remote[1]}")
        if log_wants(self.log, "debug"):
            self.log("debug", "received", message=inner.summary(), peer=f"{remote[0]}:{remote[1]}")
        if inner.is_response:
            p = self.pending
            if p is None:  # checked before decryption; a response handler cannot clear it in between
                return
            self.pending = None
            p.on_response(inner)
            self._emit(ExchangeDone(exchange=inner.exchange_name, role="initiator",
                                    message_id=inner.message_id, outcome=p.what, peer=self.remote))
        else:
            self._handle_request(inner, now)

    def adopt_from_esp(self, local: Address, remote: Address, now: float) -> bool:
        """The data plane saw an authenticated ESP packet, newer than any before, from a new
        address: adopt it if the connection allows address adoption."""
        if self.state != State.ESTABLISHED or not self._adoption_enabled():
            return False
        self.adopt(local, remote, now, "authenticated ESP packet")
        return True

    def local_moved(self, new_local: Address, now: float) -> None:
        """Our own outer address changed (client roaming). With MOBIKE, tell the peer with
        UPDATE_SA_ADDRESSES (RFC 4555 3.5); otherwise send an authenticated liveness check from
        the new address, which the peer adopts."""
        if self.state != State.ESTABLISHED or new_local == self.local:
            return
        self.adopt(new_local, self.remote, now, "local address changed")
        p = self.pending
        if p is not None:
            # A request in flight went out on the old path and may be lost with it: send it
            # again now from the new one (same message ID, not counted as a retransmission), so
            # the first packet on the new path leaves at once. The peer answers it (an adopting
            # peer moves on it); the update or liveness check queued below follows the answer.
            self.log("debug", "resending request in flight from the new address", mid=p.message_id, what=p.what)
            self._send(p.packets)
        if self.peer_mobike and self.policy.mobike and self.initiator:
            self._request("MOBIKE address update", self._build_update_sa_addresses)
            self._pump(now)
        else:
            self.liveness(now, force=True)

    def _handle_request(self, req: Message, now: float) -> None:
        handlers: dict[int, Callable[[Message, float], None]] = {
            X.IKE_AUTH: self._on_auth_request,
            X.INFORMATIONAL: self._on_informational_request,
            X.CREATE_CHILD_SA: self._on_create_child_request,
            X.IKE_INTERMEDIATE: self._on_intermediate_request,
            X.IKE_FOLLOWUP_KE: self._on_followup_request,
        }
        handler = handlers.get(req.exchange)
        if handler is None:
            self._respond(req, [P.NotifyPayload(notify_type=N.INVALID_SYNTAX)])
            return
        try:
            handler(req, now)
        except ExchangeFailed as e:
            self.log("warning", "request refused", exchange=req.exchange_name, mid=req.message_id,
                     notify=N(e.notify).name if e.notify in N._value2member_map_ else e.notify,
                     reason=str(e))
            self._respond(req, [P.NotifyPayload(notify_type=e.notify, data=e.data)])
            if e.notify == N.AUTHENTICATION_FAILED:
                self._emit(AuthFailed(reason=str(e)))
            self._emit(ExchangeDone(exchange=req.exchange_name, role="responder",
                                    message_id=req.message_id, outcome=f"refused: {e}", peer=self.remote))
            if e.fatal:
                self._die(now, str(e))
        for n in req.notifies():
            if n.notify_type not in HANDLED_NOTIFIES and n.notify_type > 16383:
                self.log("debug", "ignored status notify", notify=n.notify_type)

    def status(self, now: float) -> dict[str, Any]:
        """Status for the control socket (no key material)."""
        return {
            "id": self.ike_id,
            "name": self.name,
            "state": self.state.value,
            "initiator": self.initiator,
            "local": f"{self.local[0]}:{self.local[1]}",
            "remote": f"{self.remote[0]}:{self.remote[1]}",
            "local_id": str(self.policy.local_id) if self.policy else "",
            "remote_id": str(self.peer_id) if self.peer_id else "",
            "spi_i": self.spi_i.hex(),
            "spi_r": self.spi_r.hex(),
            "proposal": proposal_display(self.proposal) if self.proposal else "",
            "key_exchanges": self.key_exchange_names(),
            "ppk": self.ppk_used,
            "established_for": round(now - self.established_at, 1) if self.established_at is not None else None,
            "nat_local": self.nat_local,
            "eap_identity": self.eap_identity,
            "virtual_ips": list(self.virtual_ips),
            "nat_remote": self.nat_remote,
            "children": [{
                "name": c.name, "state": c.state.value, "spi_in": c.spi_in.hex(), "spi_out": c.spi_out.hex(),
                "local_ts": [str(t) for t in c.local_ts], "remote_ts": [str(t) for t in c.remote_ts],
                "proposal": c.proposal_text, "encap": self.encap,
            } for c in self.children],
        }
