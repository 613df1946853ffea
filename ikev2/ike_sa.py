"""One IKE SA: the sans-IO state machine of RFC 7296 (both roles).

Input: decoded datagrams (``receive``) and time (``tick``); output: datagrams
(``pop_datagrams``) and events (``pop_events``). No sockets, no clock, no threads: ``now`` is
passed in, randomness comes from the injected ``rng``. The manager (ikev2.manager) routes
datagrams to the right IKE SA and creates responder SAs.

Message IDs use a window of 1 in each direction. Our requests are retransmitted with
exponential back-off; the last response is cached and sent again when the peer retransmits.
"""
from __future__ import annotations

import hmac
import struct
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable

from . import payloads as P
from .child_sa import ChildSA, ChildState
from .constants import (
    AuthMethod,
    ExchangeType as X,
    HeaderFlag,
    IKE_PORT,
    NATT_PORT,
    NotifyType as N,
    PayloadType,
    ProtocolId,
    TransformType,
)
from .crypto import auth as cauth
from .crypto.dh import ke_by_id
from .crypto.keys import derive_child_keys, derive_ike_keys, derive_rekeyed_ike_keys
from .crypto.proposals import child_suite, choose_proposal, ike_suite, proposal_display
from .errors import AuthenticatedParseError, IKEv2Error, IntegrityError, InvalidKeyExchange, ParseError, ProposalError
from .events import (
    Address,
    AuthFailed,
    ChildDown,
    ChildSAKeys,
    ChildUp,
    Event,
    ExchangeDone,
    IkeDown,
    IkeRekeyed,
    IkeUp,
    PeerAddressChanged,
)
from .identity import Identity
from .message import Message, encode_message
from .natd import natd_hash
from .notify_data import group_of
from .policy import ChildPolicy, IkePolicy
from .sk import FragmentReassembler, SKKeys, open_message, seal
from .ts import all_within, narrow

RandomBytes = Callable[[int], bytes]
LogFn = Callable[..., None]

NONCE_LEN = 32
IP_UDP_OVERHEAD = {4: 28, 6: 48}
HALF_OPEN_TIMEOUT = 30.0
MAX_INIT_RETRIES = 5  # COOKIE / INVALID_KE_PAYLOAD round trips before giving up


class State(Enum):
    CREATED = "created"
    INIT_SENT = "init-sent"
    INIT_DONE = "init-done"  # responder: answered IKE_SA_INIT, waiting for IKE_AUTH
    AUTH_SENT = "auth-sent"
    ESTABLISHED = "established"
    REKEYED = "rekeyed"  # replaced by a new IKE SA, deleting
    DELETING = "deleting"
    DELETED = "deleted"


class ExchangeFailed(IKEv2Error):
    """A request could not be processed; ``notify`` is the error to answer with."""

    def __init__(self, notify: int, reason: str, data: bytes = b"", fatal: bool = False):
        self.notify, self.data, self.fatal = notify, data, fatal
        super().__init__(reason)


@dataclass
class Pending:
    """Our request in flight."""
    exchange: int
    message_id: int
    packets: list[bytes]
    on_response: Callable[[Message], None]
    what: str
    sent_at: float
    next_retransmit: float
    tries: int = 0


@dataclass
class QueuedRequest:
    what: str
    build: Callable[[], tuple[int, list[P.Payload], Callable[[Message], None]] | None]


@dataclass
class _ChildRequest:
    """State of a CREATE_CHILD_SA / first Child SA we asked for."""
    policy: ChildPolicy
    spi_in: bytes
    proposals: list[P.Proposal]
    ts_i: list[P.TrafficSelector]
    ts_r: list[P.TrafficSelector]
    nonce: bytes = b""
    ke: object | None = None
    rekey_of: ChildSA | None = None


class IkeSA:
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
        self.reassembler = FragmentReassembler()
        self.last_inbound = now
        self.rekey_at: float | None = None
        self.delete_reason = ""
        self.successor: IkeSA | None = None  # set when an IKE rekey created a new SA

    # ------------------------------------------------------------------ helpers

    @property
    def name(self) -> str:
        return self.policy.name if self.policy else "(unknown)"

    @property
    def our_spi(self) -> bytes:
        return self.spi_i if self.initiator else self.spi_r

    @property
    def encap(self) -> bool:
        """ESP rides in UDP (RFC 3948): always once we float to 4500."""
        return self.local[1] != IKE_PORT or self.remote[1] != IKE_PORT

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

    def _send(self, packets: list[bytes]) -> None:
        for pkt in packets:
            self._out.append((pkt, self.local, self.remote))

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
        p = self.pending
        if p is not None and now >= p.next_retransmit:
            pol = self.policy
            if p.tries >= pol.retransmit_tries:
                self.log("warning", "peer not responding, giving up", exchange=X(p.exchange).name,
                         mid=p.message_id, tries=p.tries + 1)
                self.pending = None
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
        times = []
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
            if self.policy.dpd_delay:
                times.append(self.last_inbound + self.policy.dpd_delay)
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
        if (self.policy.dpd_delay and now - self.last_inbound >= self.policy.dpd_delay
                and self.pending is None and not self.queue):
            self.liveness(now)

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
                    self._send(packets)
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
        self._adopt_address(local, remote, now)
        self.log("debug", "received", message=inner.summary(), peer=f"{remote[0]}:{remote[1]}")
        if inner.is_response:
            p = self.pending
            self.pending = None
            p.on_response(inner)
            self._emit(ExchangeDone(exchange=inner.exchange_name, role="initiator",
                                    message_id=inner.message_id, outcome=p.what, peer=self.remote))
        else:
            self._handle_request(inner, now)

    def _adopt_address(self, local: Address, remote: Address, now: float) -> None:
        """Authenticated packet from a new address: move the IKE SA (RFC 7296 2.23 port float;
        address adoption). Only the responder side of NAT-T floats here; MOBIKE comes later."""
        if remote != self.remote or local != self.local:
            old = self.remote
            self.remote = remote
            self.local = local
            if old != remote:
                self.log("info", "peer address changed", old=f"{old[0]}:{old[1]}",
                         new=f"{remote[0]}:{remote[1]}")
                self._emit(PeerAddressChanged(old=old, new=remote))

    def _respond(self, req: Message, payloads: list[P.Payload]) -> None:
        packets = self._seal(req.exchange, req.message_id, payloads, response=True)
        self.last_response = (req.message_id, packets)
        self.peer_next_mid = req.message_id + 1
        self._send(packets)

    def _handle_request(self, req: Message, now: float) -> None:
        handlers = {
            X.IKE_AUTH: self._on_auth_request,
            X.INFORMATIONAL: self._on_informational_request,
            X.CREATE_CHILD_SA: self._on_create_child_request,
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
        return out

    def _send_init(self, now: float) -> None:
        self.ke_private = ke_by_id(self.ke_group).generate(self.rng)
        payloads: list[P.Payload] = []
        if self.cookie:
            payloads.append(P.NotifyPayload(notify_type=N.COOKIE, data=self.cookie))
        payloads += [P.SAPayload(proposals=self._ike_proposals()),
                     P.KEPayload(group=self.ke_group, data=self.ke_private.public_bytes),
                     P.NoncePayload(data=self.ni)]
        payloads += self._natd_payloads(bytes(8))
        payloads += self._common_init_notifies()
        msg = Message(self.spi_i, bytes(8), X.IKE_SA_INIT, 0, HeaderFlag.INITIATOR, payloads)
        self.init_request_raw = encode_message(msg)
        self.state = State.INIT_SENT
        self.next_mid = 1
        self.log("info", "initiating IKE_SA", peer=f"{self.remote[0]}:{self.remote[1]}",
                 spi_i=self.spi_i.hex(), group=self.ke_group)
        self._send_unencrypted_request(msg, self._on_init_response, "IKE_SA_INIT", now)

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
            name = _notify_name(errors[0].notify_type)
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
        shared = self.ke_private.shared_secret(ke.data)
        self.spi_r = msg.spi_r
        self.nr = nonce.data
        self.suite = suite
        self.proposal = chosen
        self._derive_keys(shared)
        self._read_init_notifies(msg)
        self.state = State.AUTH_SENT
        self.log("info", "IKE_SA_INIT done", spi_i=self.spi_i.hex(), spi_r=self.spi_r.hex(),
                 proposal=proposal_display(chosen), nat_local=self.nat_local, nat_remote=self.nat_remote)
        # RFC 7296 2.23 / RFC 3948: move to port 4500 once NAT detection payloads were exchanged.
        if self.natd_seen and self.remote[1] == IKE_PORT:
            self.local = (self.local[0], NATT_PORT)
            self.remote = (self.remote[0], NATT_PORT)
        self._request("IKE_AUTH", self._build_auth_request)

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
        s = self.suite
        _skeyseed, keys = derive_ike_keys(s.prf, s.encr, s.integ, shared, self.ni, self.nr,
                                         self.spi_i, self.spi_r)
        self._install_keys(keys)

    def _install_keys(self, keys) -> None:
        s = self.suite
        self.keys = keys
        ki = SKKeys(s.encr, s.integ, keys.sk_ei, keys.sk_ai)
        kr = SKKeys(s.encr, s.integ, keys.sk_er, keys.sk_ar)
        self.sk_out, self.sk_in = (ki, kr) if self.initiator else (kr, ki)

    def _on_init_request(self, raw: bytes, msg: Message, local: Address, remote: Address, now: float) -> None:
        """Responder: answer IKE_SA_INIT (the manager already checked cookies and limits)."""
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
        self.ke_private = suite.ke.generate(self.rng)
        try:
            shared = self.ke_private.shared_secret(ke.data)
        except InvalidKeyExchange as e:
            self._reject_init(msg, N.INVALID_SYNTAX, f"peer's key exchange value rejected: {e}")
            return
        chosen = P.Proposal(chosen.num, ProtocolId.IKE, b"", chosen.transforms)
        self.ni = nonce.data
        self.nr = self.rng(NONCE_LEN)
        self.spi_r = self._new_ike_spi()
        self.suite = suite
        self.proposal = chosen
        self._read_init_notifies(msg)
        self._derive_keys(shared)
        payloads: list[P.Payload] = [P.SAPayload(proposals=[chosen]),
                                     P.KEPayload(group=self.ke_group, data=self.ke_private.public_bytes),
                                     P.NoncePayload(data=self.nr)]
        if self.natd_seen:
            payloads += self._natd_payloads(self.spi_r)
        cas = [ca for c in self.candidates for ca in c.remote_auth.cacerts if c.remote_auth.method == "pubkey"]
        if cas:
            from .certs import certreq_data
            payloads.append(P.CertReqPayload(encoding=4, data=certreq_data(cas)))
        payloads += self._common_init_notifies()
        resp = Message(self.spi_i, self.spi_r, X.IKE_SA_INIT, 0, HeaderFlag.RESPONSE, payloads)
        self.init_response_raw = encode_message(resp)
        self.state = State.INIT_DONE
        self.peer_next_mid = 1
        self.log("info", "IKE_SA_INIT answered", spi_i=self.spi_i.hex(), spi_r=self.spi_r.hex(),
                 peer=f"{remote[0]}:{remote[1]}", proposal=proposal_display(chosen),
                 nat_local=self.nat_local, nat_remote=self.nat_remote)
        self._send([self.init_response_raw])

    def _reject_init(self, msg: Message, notify: int, reason: str, data: bytes = b"") -> None:
        self.log("warning", "IKE_SA_INIT refused", peer=f"{self.remote[0]}:{self.remote[1]}",
                 notify=_notify_name(notify), reason=reason)
        resp = Message(msg.spi_i, bytes(8), X.IKE_SA_INIT, 0, HeaderFlag.RESPONSE,
                       [P.NotifyPayload(notify_type=notify, data=data)])
        self._send([encode_message(resp)])
        self.state = State.DELETED
        self.delete_reason = reason

    # ------------------------------------------------------------------ IKE_AUTH

    def _auth_octets(self, sent_by_initiator: bool, id_body: bytes) -> bytes:
        s = self.suite
        if sent_by_initiator:
            return cauth.signed_octets(self.init_request_raw, self.nr, s.prf, self.keys.sk_pi, id_body)
        return cauth.signed_octets(self.init_response_raw, self.ni, s.prf, self.keys.sk_pr, id_body)

    def _our_auth_payloads(self, id_cls) -> list[P.Payload]:
        pol = self.policy
        ident = pol.local_id
        out: list[P.Payload] = [id_cls(id_type=ident.id_type, data=ident.data)]
        octets = self._auth_octets(self.initiator, ident.body())
        a = pol.local_auth
        if a.method == "psk":
            out.append(P.AuthPayload(method=AuthMethod.PSK,
                                     data=cauth.psk_auth_data(self.suite.prf, a.psk, octets)))
        elif a.method == "pubkey":
            from .certs import cert_payload_data
            for cert in a.certs:
                out.insert(len(out), P.CertPayload(encoding=4, data=cert_payload_data(cert)))
            method, data = cauth.sign(a.private_key, octets, self._sign_hash(a.private_key))
            out.append(P.AuthPayload(method=method, data=data))
        else:
            raise ExchangeFailed(N.AUTHENTICATION_FAILED, f"auth method {a.method} not supported yet")
        return out

    def _sign_hash(self, key):
        from cryptography.hazmat.primitives.asymmetric import ed448, ed25519
        from .constants import HashAlgorithm
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
            expected = cauth.psk_auth_data(self.suite.prf, ra.psk, octets)
            if not hmac.compare_digest(expected, authp.data):
                raise ExchangeFailed(N.AUTHENTICATION_FAILED,
                                     f"PSK authentication of '{ident}' failed (wrong pre-shared key?)", fatal=True)
        elif ra.method == "pubkey":
            from .certs import CertificateError, identity_matches_cert, parse_cert_payload, verify_chain
            import datetime
            certs = [c for c in req.all(P.CertPayload) if c.encoding == 4]
            if not certs:
                raise ExchangeFailed(N.AUTHENTICATION_FAILED, "peer sent no certificate", fatal=True)
            try:
                ee = parse_cert_payload(certs[0].data)
                inter = [parse_cert_payload(c.data) for c in certs[1:]]
                when = datetime.datetime.fromtimestamp(self.wall(now), datetime.timezone.utc)
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

    def _child_proposals(self, cp: ChildPolicy, spi: bytes, with_ke: bool) -> list[P.Proposal]:
        out = []
        for i, p in enumerate(cp.esp_proposals, 1):
            tr = [t for t in p.transforms if with_ke or t.type != TransformType.DH]
            out.append(P.Proposal(i, ProtocolId.ESP, spi, tr))
        return out

    def _build_auth_request(self):
        pol = self.policy
        payloads = self._our_auth_payloads(P.IDiPayload)
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
        out: list[P.Payload] = [idi] + extra + rest
        cp = next((c for c in pol.children if c.start_action == "start"), pol.children[0] if pol.children else None)
        if cp is not None:
            req = _ChildRequest(cp, self._new_child_spi(), [], list(cp.local_ts), list(cp.remote_ts))
            req.proposals = self._child_proposals(cp, req.spi_in, with_ke=False)
            self._first_child = req
            self._first_child_policy = cp
            out += [P.SAPayload(proposals=req.proposals), P.TSiPayload(selectors=req.ts_i),
                    P.TSrPayload(selectors=req.ts_r)]
        if pol.mobike:
            out.append(P.NotifyPayload(notify_type=N.MOBIKE_SUPPORTED))
        return X.IKE_AUTH, out, lambda m: self._on_auth_response(m, self._now)

    def _on_auth_response(self, msg: Message, now: float) -> None:
        errors = [n for n in msg.notifies() if n.is_error]
        if any(n.notify_type == N.AUTHENTICATION_FAILED for n in errors) or msg.get(P.AuthPayload) is None:
            reason = "peer rejected our authentication (AUTHENTICATION_FAILED)" if errors else \
                "IKE_AUTH response without AUTH"
            if errors and not any(n.notify_type == N.AUTHENTICATION_FAILED for n in errors):
                reason = f"IKE_AUTH failed: peer answered {_notify_name(errors[0].notify_type)}"
            self._emit(AuthFailed(reason=reason))
            self._die(now, reason)
            return
        try:
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
        self.peer_mobike = msg.notify(N.MOBIKE_SUPPORTED) is not None
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
        if self.policy.rekey_time:
            self.rekey_at = now + self.policy.rekey_time
        self.log("info", "IKE_SA established", local=f"{self.local[0]}:{self.local[1]}",
                 remote=f"{self.remote[0]}:{self.remote[1]}", peer_id=str(self.peer_id),
                 spi_i=self.spi_i.hex(), spi_r=self.spi_r.hex(), proposal=proposal_display(self.proposal))
        self._emit(IkeUp(local=self.local, remote=self.remote, local_id=str(self.policy.local_id),
                         remote_id=str(self.peer_id), spi_i=self.spi_i, spi_r=self.spi_r,
                         proposal=proposal_display(self.proposal),
                         initial_contact=self.peer_initial_contact))

    def _start_other_children(self, now: float) -> None:
        for cp in self.policy.children:
            if cp.start_action == "start" and cp is not self._first_child_policy:
                self.create_child(cp, now)

    def _on_auth_request(self, req: Message, now: float) -> None:
        if self.initiator or self.state != State.INIT_DONE:
            raise ExchangeFailed(N.INVALID_SYNTAX, "unexpected IKE_AUTH request")
        idi = req.get(P.IDiPayload)
        if idi is None:
            raise ExchangeFailed(N.AUTHENTICATION_FAILED, "IKE_AUTH without IDi", fatal=True)
        ident = Identity(idi.id_type, idi.data)
        idr = req.get(P.IDrPayload)
        wanted = Identity(idr.id_type, idr.data) if idr else None
        matching = [c for c in self.candidates if c.remote_id.matches(ident)
                    and (wanted is None or _local_id_ok(c, wanted))]
        if not matching:
            raise ExchangeFailed(N.AUTHENTICATION_FAILED, f"no connection accepts peer identity '{ident}'",
                                 fatal=True)
        # The most specific match wins: exact remote_id before wildcards.
        matching.sort(key=lambda c: (c.remote_id.is_any, any(ch in c.remote_id.text for ch in "*?")))
        self.policy = matching[0]
        self.peer_id = self._verify_peer_auth(req, self.policy, now)
        self.peer_mobike = req.notify(N.MOBIKE_SUPPORTED) is not None
        self.peer_initial_contact = req.notify(N.INITIAL_CONTACT) is not None
        out = self._our_auth_payloads(P.IDrPayload)
        child_payloads, child = self._respond_child(req, now, self.ni, self.nr, None, rekey_of=None)
        out += child_payloads
        if self.policy.mobike and self.peer_mobike:
            out.append(P.NotifyPayload(notify_type=N.MOBIKE_SUPPORTED))
        self._respond(req, out)
        self._established(now)
        if child is not None:
            self._install_child(child, now)
        self._emit(ExchangeDone(exchange="IKE_AUTH", role="responder", message_id=req.message_id,
                                outcome="established", peer=self.remote))

    # ------------------------------------------------------------------ Child SAs

    def _respond_child(self, req: Message, now: float, ni: bytes, nr: bytes, shared: bytes | None,
                       rekey_of: ChildSA | None) -> tuple[list[P.Payload], ChildSA | None]:
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
            ts_i = narrow(tsi.selectors, cp.remote_ts)
            ts_r = narrow(tsr.selectors, cp.local_ts)
            if not ts_i or not ts_r:
                continue
            ours = [P.Proposal(p.num, ProtocolId.ESP, b"",
                               [t for t in p.transforms if not (in_auth and t.type == TransformType.DH)])
                    for p in cp.esp_proposals]
            chosen = choose_proposal(ours, sa.proposals)
            if chosen is None:
                best_err = (N.NO_PROPOSAL_CHOSEN, "no acceptable ESP proposal: peer offered "
                            + "; ".join(proposal_display(p) for p in sa.proposals))
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
                    priv = suite.ke.generate(self.rng)
                    try:
                        shared = priv.shared_secret(kep.data)
                    except InvalidKeyExchange as e:
                        raise ExchangeFailed(N.INVALID_SYNTAX, f"bad KE value: {e}") from None
                    ke_payloads = [P.KEPayload(group=suite.ke.group, data=priv.public_bytes)]
            spi_in = self._new_child_spi()
            spi_out = chosen.spi
            ours_chosen = P.Proposal(chosen.num, ProtocolId.ESP, spi_in, chosen.transforms)
            child = self._make_child(cp, spi_in, spi_out, ours_chosen, suite, ni, nr, shared,
                                     local_ts=ts_r, remote_ts=ts_i, now=now, we_initiated=False)
            child.replaces = rekey_of
            payloads: list[P.Payload] = [P.SAPayload(proposals=[ours_chosen])]
            if not in_auth:
                payloads.append(P.NoncePayload(data=nr))
                payloads += ke_payloads
            payloads += [P.TSiPayload(selectors=ts_i), P.TSrPayload(selectors=ts_r)]
            return payloads, child
        self.log("warning", "no Child SA created", reason=best_err[1],
                 tsi=[str(t) for t in tsi.selectors], tsr=[str(t) for t in tsr.selectors])
        if in_auth:
            return [P.NotifyPayload(notify_type=best_err[0])], None
        raise ExchangeFailed(best_err[0], best_err[1])

    def _make_child(self, cp: ChildPolicy, spi_in: bytes, spi_out: bytes, proposal: P.Proposal, suite,
                    ni: bytes, nr: bytes, shared: bytes | None, local_ts, remote_ts, now: float,
                    we_initiated: bool) -> ChildSA:
        k = derive_child_keys(self.suite.prf, self.keys.sk_d, suite.encr, suite.integ, ni, nr, shared)
        # Keys "i" protect traffic from the initiator of this exchange to its responder.
        return ChildSA(policy=cp, spi_in=spi_in, spi_out=spi_out, proposal=proposal,
                       keys=self._child_keys(k, suite, spi_in, spi_out, cp, we_initiated),
                       local_ts=local_ts, remote_ts=remote_ts, created=now,
                       rekey_at=now + self._jitter(cp.rekey_time), expire_at=now + (cp.life_time or cp.rekey_time * 1.1),
                       proposal_text=proposal_display(proposal), nonces=(ni, nr))

    def _jitter(self, t: float) -> float:
        # Up to 10 % earlier, so both ends do not rekey at the same moment (deterministic via rng).
        return t - t * 0.1 * (self.rng(1)[0] / 255.0)

    @staticmethod
    def _child_keys(k, suite, spi_in, spi_out, cp, we_initiated: bool) -> ChildSAKeys:
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
        self.log("info", "CHILD_SA established", child=child.name, spi_in=child.spi_in.hex(),
                 spi_out=child.spi_out.hex(), local_ts=[str(t) for t in child.local_ts],
                 remote_ts=[str(t) for t in child.remote_ts], proposal=child.proposal_text,
                 rekey_of=rekey_of.spi_in.hex() if rekey_of else None)
        self._emit(ChildUp(child_name=child.name, keys=child.keys, local_ts=child.local_ts,
                           remote_ts=child.remote_ts, local=self.local, remote=self.remote,
                           encap=self.encap, proposal=child.proposal_text,
                           rekey_of=rekey_of.spi_in if rekey_of else None))

    def _finish_child_as_initiator(self, req: _ChildRequest, msg: Message, now: float, ni: bytes,
                                   nr: bytes, shared: bytes | None) -> None:
        errors = [n for n in msg.notifies() if n.is_error]
        sa = msg.get(P.SAPayload)
        tsi = msg.get(P.TSiPayload)
        tsr = msg.get(P.TSrPayload)
        if errors or sa is None or tsi is None or tsr is None:
            why = _notify_name(errors[0].notify_type) if errors else "no SA/TS in the response"
            self.log("warning", "CHILD_SA not created", child=req.policy.name, reason=why)
            if req.rekey_of is not None and req.rekey_of.state == ChildState.REKEYING:
                req.rekey_of.state = ChildState.INSTALLED
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
            # The responder installed an SA we refuse: ask it to delete (our inbound SPI names it).
            self._request("delete refused child", lambda: (
                X.INFORMATIONAL, [P.DeletePayload(protocol=ProtocolId.ESP, spis=[req.spi_in])], lambda m: None))
            return
        child = self._make_child(req.policy, req.spi_in, chosen.spi,
                                 P.Proposal(chosen.num, ProtocolId.ESP, req.spi_in, chosen.transforms),
                                 suite, ni, nr, shared, local_ts=tsi.selectors, remote_ts=tsr.selectors,
                                 now=now, we_initiated=True)
        self._install_child(child, now, rekey_of=req.rekey_of)
        if req.rekey_of is not None:
            self._finish_rekey(req.rekey_of, child, now)

    def create_child(self, cp: ChildPolicy, now: float) -> None:
        """Ask for an additional Child SA (CREATE_CHILD_SA)."""
        def build():
            if self.state != State.ESTABLISHED:
                return None
            return self._build_create_child(cp, None)
        self._request(f"create child {cp.name}", build)
        self._pump(now)

    def _build_create_child(self, cp: ChildPolicy, rekey_of: ChildSA | None):
        spi = self._new_child_spi()
        req = _ChildRequest(cp, spi, [], list(rekey_of.local_ts if rekey_of else cp.local_ts),
                            list(rekey_of.remote_ts if rekey_of else cp.remote_ts), rekey_of=rekey_of)
        req.proposals = self._child_proposals(cp, spi, with_ke=True)
        req.nonce = self.rng(NONCE_LEN)
        payloads: list[P.Payload] = []
        if rekey_of is not None:
            payloads.append(P.NotifyPayload(notify_type=N.REKEY_SA, protocol=ProtocolId.ESP, spi=rekey_of.spi_in))
        payloads += [P.SAPayload(proposals=req.proposals), P.NoncePayload(data=req.nonce)]
        groups = [t.id for t in req.proposals[0].transforms if t.type == TransformType.DH and t.id]
        if groups:
            req.ke = ke_by_id(groups[0]).generate(self.rng)
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

        def build():
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

    # ------------------------------------------------------------------ IKE SA rekey

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

    # ------------------------------------------------------------------ INFORMATIONAL

    def _on_informational_request(self, req: Message, now: float) -> None:
        deletes = req.all(P.DeletePayload)
        out: list[P.Payload] = []
        if any(d.protocol == ProtocolId.IKE for d in deletes):
            self._respond(req, [])
            self.log("info", "IKE_SA deleted by peer", spi_i=self.spi_i.hex(), spi_r=self.spi_r.hex())
            if self.state == State.REKEYED:
                self._gone(now)
            else:
                self._die(now, "deleted by peer")
            return
        ours: list[bytes] = []
        for d in deletes:
            if d.protocol not in (ProtocolId.ESP, ProtocolId.AH):
                continue
            for spi in d.spis:
                c = self._child_by_spi_out(spi)
                if c is None:
                    continue
                if c.state != ChildState.DELETING:
                    ours.append(c.spi_in)  # RFC 7296 1.4.1: answer with our inbound SPI
                self.log("info", "CHILD_SA deleted by peer", child=c.name, spi_in=c.spi_in.hex())
                self._remove_child(c, "deleted by peer")
        if ours:
            out.append(P.DeletePayload(protocol=ProtocolId.ESP, spis=ours))
        if any(n.notify_type == N.AUTHENTICATION_FAILED for n in req.notifies()):
            self._respond(req, [])
            self._emit(AuthFailed(reason="peer rejected our authentication"))
            self._die(now, "peer rejected our authentication")
            return
        self._respond(req, out)

    def liveness(self, now: float) -> None:
        """Send an empty INFORMATIONAL (dead peer detection); no answer after the retransmissions
        deletes the IKE SA."""
        if any(q.what == "liveness check" for q in self.queue):
            return
        self._request("liveness check", lambda: (X.INFORMATIONAL, [], lambda m: None)
                      if self.state == State.ESTABLISHED else None)
        self._pump(now)

    def _build_delete_child(self, children: list[ChildSA]):
        spis = [c.spi_in for c in children]
        if not spis or self.state != State.ESTABLISHED:
            return None

        def on_response(msg: Message) -> None:
            for c in children:
                self._remove_child(c, "deleted")
        return X.INFORMATIONAL, [P.DeletePayload(protocol=ProtocolId.ESP, spis=spis)], on_response

    def _delete_children(self, children: list[ChildSA], now: float, why: str) -> None:
        for c in children:
            c.state = ChildState.DELETING
        self.log("info", "deleting CHILD_SA", children=[c.name for c in children],
                 spis=[c.spi_in.hex() for c in children], reason=why)
        self._request(f"delete child ({why})", lambda: self._build_delete_child(children))
        self._pump(now)

    def delete_child(self, spi_in: bytes, now: float) -> bool:
        c = self._child_by_spi_in(spi_in)
        if c is None:
            return False
        self._delete_children([c], now, "requested")
        return True

    def delete(self, now: float, reason: str = "deleted locally") -> None:
        """Delete the IKE SA (and its Child SAs) with an INFORMATIONAL exchange."""
        if self.state == State.DELETED:
            return
        if self.state != State.ESTABLISHED or self.sk_out is None:
            self._die(now, reason)
            return
        self.state = State.DELETING
        self.queue.clear()
        self._now = now

        def build():
            return (X.INFORMATIONAL, [P.DeletePayload(protocol=ProtocolId.IKE)],
                    lambda m: self._die(self._now, reason))
        self.pending = None  # abandon what is in flight; the delete supersedes it
        self.queue.append(QueuedRequest("delete IKE SA", build))
        self._pump(now)

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
            "established_for": round(now - self.established_at, 1) if self.established_at is not None else None,
            "nat_local": self.nat_local,
            "nat_remote": self.nat_remote,
            "children": [{
                "name": c.name, "state": c.state.value, "spi_in": c.spi_in.hex(), "spi_out": c.spi_out.hex(),
                "local_ts": [str(t) for t in c.local_ts], "remote_ts": [str(t) for t in c.remote_ts],
                "proposal": c.proposal_text, "encap": self.encap,
            } for c in self.children],
        }


_HANDLED_NOTIFIES = {
    N.NAT_DETECTION_SOURCE_IP, N.NAT_DETECTION_DESTINATION_IP, N.COOKIE, N.INVALID_KE_PAYLOAD,
    N.IKEV2_FRAGMENTATION_SUPPORTED, N.SIGNATURE_HASH_ALGORITHMS, N.MOBIKE_SUPPORTED, N.REKEY_SA,
    N.INITIAL_CONTACT,
}


def _notify_name(t: int) -> str:
    return N(t).name if t in N._value2member_map_ else str(t)


def _local_id_ok(pol: IkePolicy, wanted: Identity) -> bool:
    from .identity import IdentityPattern
    return IdentityPattern(str(pol.local_id)).matches(wanted) or pol.local_id == wanted


def P_summary(payloads) -> str:
    from .summary import payload_summary
    return payload_summary(payloads)
