"""One IKE SA: the sans-IO state machine of RFC 7296 (both roles).

Input: decoded datagrams (``receive``) and time (``tick``); output: datagrams
(``pop_datagrams``) and events (``pop_events``). No sockets, no clock, no threads: ``now`` is
passed in, randomness comes from the injected ``rng``. The manager (ikev2.manager) routes
datagrams to the right IKE SA and creates responder SAs.

Message IDs use a window of 1 in each direction. Our requests are retransmitted with
exponential back-off; the last response is cached and sent again when the peer retransmits.
"""
from __future__ import annotations

from collections import deque
from . import payloads as P
from .child_sa import ChildSA, ChildState
from .constants import (
    ExchangeType as X,
    HeaderFlag,
    IKE_PORT,
    NotifyType as N,
)
from .crypto.proposals import proposal_display
from .errors import AuthenticatedParseError, IntegrityError, ParseError
from .events import (
    Address,
    AuthFailed,
    ChildDown,
    Event,
    ExchangeDone,
    IkeDown,
    LocalAddressChanged,
    PeerAddressChanged,
)
from .identity import Identity
from .message import Message, encode_message
from .policy import ChildPolicy, IkePolicy
from .sk import (
    FragmentReassembler,
    SKKeys,
    open_message,
    seal,
)
from .sa_common import RandomBytes, LogFn, IP_UDP_OVERHEAD, HALF_OPEN_TIMEOUT, State, ExchangeFailed, Pending, QueuedRequest, _ChildRequest, _HANDLED_NOTIFIES, P_summary
from .exchange_auth import AuthExchange
from .exchange_child import ChildExchanges
from .exchange_ike_rekey import IkeRekey
from .exchange_info import Informational
from .exchange_init import InitExchange
from .exchange_mobike import Mobike
from .exchange_eap import EapExchange
from .exchange_intermediate import IntermediateExchange
from .exchange_followup import FollowupKeExchange
from .exchange_ppk import PpkExchange

__all__ = ["IkeSA", "State", "ExchangeFailed"]


class IkeSA(InitExchange, IntermediateExchange, FollowupKeExchange, PpkExchange, AuthExchange,
            ChildExchanges, IkeRekey, Informational, Mobike, EapExchange):
    def __init__(self, *, ike_id: int, initiator: bool, policy: IkePolicy | None,
                 candidates: list[IkePolicy] | None = None, local: Address, remote: Address,
                 rng: RandomBytes, now: float, log: LogFn | None = None,
                 wall_offset: float = 0.0):
        self.ike_id = ike_id
        self.initiator = initiator  # original initiator of this IKE SA
        self.policy = policy
        self.candidates = candidates or ([policy] if policy else [])
        self.local = local
        self.remote = remote
        self.rng = rng
        self.log = log or (lambda level, event, **kw: None)
        self.wall_offset = wall_offset
        self.state = State.CREATED
        self.created = now
        self.established_at: float | None = None
        self.spi_i = self._new_ike_spi() if initiator else b""
        self.spi_r = b"\x00" * 8
        self.suite = None
        self.proposal: P.Proposal | None = None
        self.keys = None
        self.sk_in: SKKeys | None = None
        self.sk_out: SKKeys | None = None
        self.ni = b""
        self.nr = b""
        self.ke_private = None
        self.ke_group: int | None = None
        self.cookie: bytes = b""
        self.init_retries = 0
        self.init_request_raw = b""
        self.init_response_raw = b""
        self.peer_id: Identity | None = None
        self.peer_fragmentation = False
        self.peer_mobike = False
        self.peer_hash_algs: list[int] = []
        self.peer_certreq: list[bytes] = []
        self.peer_initial_contact = False
        self.nat_local = False  # we are behind a NAT (our NAT-D source hash did not match)
        self.nat_remote = False  # the peer is behind a NAT
        self.natd_seen = False
        self.children: list[ChildSA] = []
        self._first_child: _ChildRequest | None = None
        self._out: list[tuple[bytes, Address, Address]] = []
        self._events: list[Event] = []
        # Message IDs (window 1 both ways).
        self.next_mid = 0
        self.pending: Pending | None = None
        self.queue: deque[QueuedRequest] = deque()
        self.peer_next_mid = 0
        self.last_response: tuple[int, list[bytes]] | None = None  # (mid, packets) for retransmits
        self._now = now
        self._first_child_policy: ChildPolicy | None = None
        self._last_src: tuple[Address, Address] = (local, remote)
        self.peer_addresses: list[str] = []
        # EAP and configuration payload (ikev2.exchange_eap)
        self._eap_server_obj = None
        self._eap_client_obj = None
        self._eap_first_request = None
        self._eap_rounds = 0
        self._eap_done = False
        self._eap_msk = b""
        self._eap_server_authenticated = False
        self._eap_server_idr = None
        self.eap_identity: str | None = None
        self.virtual_ips: list[str] = []  # RFC 4555 ADDITIONAL_*_ADDRESS: candidates only
        self.activity_probe = None  # callable(spi_in) -> last inbound ESP time, set by the manager
        self.reassembler = FragmentReassembler()
        self.last_inbound = now
        self.rekey_at: float | None = None
        self.delete_reason = ""
        self.successor: IkeSA | None = None  # the IKE SA that took over our Child SAs (rekey)
        self.successors: list[IkeSA] = []  # every IKE SA a rekey created (two after a collision)
        self._ike_rekey_nonce: bytes | None = None  # our IKE rekey request is outstanding
        self._ike_collision = None  # (peer's new IKE SA, its nonces) during a rekey collision
        self.redundant = False  # lost an IKE rekey collision: the peer deletes this SA
        self.collision_candidate = False  # made by the peer's rekey during a collision, undecided
        self.forget_at: float | None = None  # a redundant SA disappears then at the latest

    # ------------------------------------------------------------------ helpers

    @property
    def name(self) -> str:
        return self.policy.name if self.policy else "(unknown)"

    @property
    def our_spi(self) -> bytes:
        return self.spi_i if self.initiator else self.spi_r

    @property
    def encap(self) -> bool:
        """ESP rides in UDP (RFC 3948): when NAT-D showed a NAT on either side (a forced
        encapsulation fakes one). Floating IKE to port 4500 alone (MOBIKE, or NAT-D without a
        NAT) leaves ESP plain, as RFC 4555 3.5 and strongSwan do. The userspace data plane puts
        ESP in UDP whatever this says (forced UDP-4500 design)."""
        return self.nat_local or self.nat_remote

    def _new_ike_spi(self) -> bytes:
        while True:
            spi = self.rng(8)
            if spi != bytes(8):
                return spi

    def _new_child_spi(self) -> bytes:
        while True:
            spi = self.rng(4)
            if int.from_bytes(spi, "big") > 255:
                return spi

    def _emit(self, ev: Event) -> None:
        ev.ike_name = self.name
        ev.ike_id = self.ike_id
        if isinstance(ev, ExchangeDone):
            ev.spi_i, ev.spi_r = self.spi_i, self.spi_r
        self._events.append(ev)

    def pop_datagrams(self) -> list[tuple[bytes, Address, Address]]:
        out, self._out = self._out, []
        return out

    def pop_events(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    def _send(self, packets: list[bytes], path: tuple[Address, Address] | None = None) -> None:
        """Queue datagrams on our current path, or on ``path`` (local, remote)."""
        local, remote = path or (self.local, self.remote)
        for pkt in packets:
            self._out.append((pkt, local, remote))

    def _flags(self, response: bool) -> int:
        f = HeaderFlag.INITIATOR if self.initiator else 0
        return f | (HeaderFlag.RESPONSE if response else 0)

    def _max_message_size(self) -> int | None:
        if not (self.policy and self.policy.fragmentation and self.peer_fragmentation):
            return None
        family = 6 if ":" in self.remote[0] else 4
        size = self.policy.fragment_size - IP_UDP_OVERHEAD[family]
        if self.remote[1] != IKE_PORT:
            size -= 4  # non-ESP marker
        return size

    def _seal(self, exchange: int, mid: int, payloads: list[P.Payload], response: bool) -> list[bytes]:
        assert self.sk_out is not None
        return seal(self.spi_i, self.spi_r, exchange, self._flags(response), mid, payloads,
                    self.sk_out, self.rng, self._max_message_size())

    def wall(self, now: float) -> float:
        return now + self.wall_offset

    # ------------------------------------------------------------------ requests (window 1)

    def _request(self, what: str, build) -> None:
        self.queue.append(QueuedRequest(what, build))

    def _pump(self, now: float) -> None:
        """Send the next queued request if the window is free."""
        while self.pending is None and self.queue and self.state not in (State.DELETED,):
            q = self.queue.popleft()
            built = q.build()
            if built is None:
                continue
            exchange, payloads, handler = built
            mid = self.next_mid
            packets = self._seal(exchange, mid, payloads, response=False)
            self.next_mid += 1
            self.pending = Pending(exchange, mid, packets, handler, q.what, now,
                                   now + self.policy.retransmit_timeout)
            self.log("debug", "sending request", exchange=X(exchange).name, mid=mid, what=q.what,
                     payloads=P_summary(payloads), fragments=len(packets))
            self._send(packets)

    def _send_unencrypted_request(self, msg: Message, handler, what: str, now: float) -> None:
        raw = encode_message(msg)
        self.pending = Pending(msg.exchange, msg.message_id, [raw], handler, what, now,
                               now + self.policy.retransmit_timeout)
        self._send([raw])

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
        if self.state == State.INIT_DONE and now - self.created > HALF_OPEN_TIMEOUT:
            self._die(now, "half-open IKE SA timed out (no IKE_AUTH)")
            return
        if self.state == State.ESTABLISHED:
            self._timers(now)
        self._pump(now)

    def next_deadline(self) -> float | None:
        times = [self.forget_at] if self.forget_at is not None else []
        if self.pending is not None:
            times.append(self.pending.next_retransmit)
        if self.state == State.INIT_DONE:
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
                self._request("delete expired child", lambda c=c: self._build_delete_child([c]))
        if (self.policy.dpd_delay and now - self._last_activity() >= self.policy.dpd_delay
                and self.pending is None and not self.queue):
            self.liveness(now)

    def _last_activity(self) -> float:
        """Any authenticated packet counts as a sign of life: IKE, or ESP on one of our Child SAs."""
        last = self.last_inbound
        if self.activity_probe is not None:
            for c in self.children:
                t = self.activity_probe(c.spi_in)
                if t is not None and t > last:
                    last = t
        return last

    def _die(self, now: float, reason: str) -> None:
        if self.state == State.DELETED:
            return
        for c in list(self.children):
            self._remove_child(c, reason)
        was_up = self.established_at is not None
        self.state = State.DELETED
        self.pending = None
        self.queue.clear()
        self.delete_reason = reason
        if self.sk_in:
            self.sk_in.wipe()
        if self.sk_out:
            self.sk_out.wipe()
        if self.keys is not None and hasattr(self.keys, "wipe"):
            self.keys.wipe()
        self.ke_private = None
        self._emit(IkeDown(reason=reason if was_up or self.initiator else f"{reason} (not established)"))

    def _remove_child(self, c: ChildSA, reason: str) -> None:
        if c in self.children:
            self.children.remove(c)
        if c.state != ChildState.DELETED:
            c.state = ChildState.DELETED
            self._emit(ChildDown(child_name=c.name, spi_in=c.spi_in, spi_out=c.spi_out, reason=reason))
            c.wipe()

    # ------------------------------------------------------------------ receive

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
            full = self.reassembler.add(raw, msg, self.sk_in)
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
        self.log("debug", "received", message=inner.summary(), peer=f"{remote[0]}:{remote[1]}")
        if inner.is_response:
            p = self.pending
            self.pending = None
            p.on_response(inner)
            self._emit(ExchangeDone(exchange=inner.exchange_name, role="initiator",
                                    message_id=inner.message_id, outcome=p.what, peer=self.remote))
        else:
            self._handle_request(inner, now)

    def _adoption_enabled(self) -> bool:
        """Address adoption (move the SAs to a peer's new address on authenticated traffic):
        "auto" enables it for peers behind a NAT and for connections that accept any remote
        address (remote access); true/false force it."""
        mode = self.policy.address_adoption if self.policy else "auto"
        if mode in (True, "true", "yes"):
            return True
        if mode in (False, "false", "no"):
            return False
        return self.nat_remote or not self.policy.remote_addrs or "%any" in self.policy.remote_addrs

    def adopt(self, local: Address, remote: Address, now: float, why: str) -> None:
        """Move the IKE SA and all its Child SAs to new addresses at once (no new handshake, no
        rekey). RFC 7296 2.23 port floating and the gateway's address adoption both end here."""
        if (local, remote) == (self.local, self.remote):
            return
        old_local, old = self.local, self.remote
        self.remote = remote
        self.local = local
        if old != remote:
            self.log("info", "peer address changed", old=f"{old[0]}:{old[1]}", new=f"{remote[0]}:{remote[1]}",
                     reason=why, spi_i=self.spi_i.hex(), spi_r=self.spi_r.hex())
            self._emit(PeerAddressChanged(old=old, new=remote))
        if old_local != local:
            self.log("info", "local address changed", old=f"{old_local[0]}:{old_local[1]}",
                     new=f"{local[0]}:{local[1]}", reason=why)
            self._emit(LocalAddressChanged(old=old_local, new=local))

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
        if self.peer_mobike and self.policy.mobike and self.initiator:
            self._request("MOBIKE address update", self._build_update_sa_addresses)
            self._pump(now)
        else:
            self.liveness(now, force=True)

    def _respond(self, req: Message, payloads: list[P.Payload]) -> None:
        packets = self._seal(req.exchange, req.message_id, payloads, response=True)
        self.last_response = (req.message_id, packets)
        self.peer_next_mid = req.message_id + 1
        # RFC 7296 2.11: a response goes to the address and port the request came from, whether
        # or not that address is adopted (MOBIKE path checks rely on it).
        self._send(packets, self._last_src)

    def _handle_request(self, req: Message, now: float) -> None:
        handlers = {
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
            if n.notify_type not in _HANDLED_NOTIFIES and n.notify_type > 16383:
                self.log("debug", "ignored status notify", notify=n.notify_type)

    # ------------------------------------------------------------------ IKE_SA_INIT

    def status(self, now: float) -> dict:
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
