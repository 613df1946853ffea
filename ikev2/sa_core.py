"""The state every exchange of an IKE SA works on, and the machinery they share.

``IkeSACore`` is the contract between the exchange modules (``exchange_*.py``) and the IKE SA:
it holds every attribute of the IKE SA's state (typed, initialised in one place), the
request/response machinery (message IDs with a window of 1, sealing, retransmission queue,
event and datagram output) and the teardown helpers. Each exchange module defines one mixin
class that subclasses ``IkeSACore``, so it may use exactly what is declared here and nothing a
sibling mixin defines, except the methods declared below under "provided by an exchange
module" (each names the module that implements it). ``ikev2.ike_sa.IkeSA`` composes the mixins;
``IkeSACore`` is last in its method resolution order, so the real implementations win over the
declarations here. See docs/engine.md for why the exchanges are mixins and not task objects.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import payloads as P
from .assign_async import AssignWaiting
from .child_sa import ChildSA, ChildState
from .compute import OffloadPolicy
from .compute_async import ComputeWaiting
from .constants import IKE_PORT, HeaderFlag
from .constants import ExchangeType as X
from .crypto.kex import KeyExchange, KeyExchangeHalf
from .crypto.keys import IkeKeys
from .crypto.proposals import IkeSuite
from .eap_async import EapWaiting
from .events import Address, ChildDown, Event, ExchangeDone, IkeDown, LocalAddressChanged, PeerAddressChanged
from .identity import Identity
from .message import Message, encode_message
from .multi_ke import IntAuthChain
from .policy import ChildPolicy, IkePolicy
from .sa_common import (
    IP_UDP_OVERHEAD,
    ChildRequest,
    FollowupDone,
    FollowupFailed,
    LogFn,
    Pending,
    PendingFollowup,
    QueuedRequest,
    RandomBytes,
    RequestBuilder,
    RequestBuilt,
    ResponseHandler,
    State,
)
from .sk import FragmentBudget, FragmentReassembler, SKKeys, seal
from .summary import payload_summary

if TYPE_CHECKING:  # EAP loads with the first EAP conversation (policy.eap_server / eap_client)
    from .eap.async_server import AsyncEapServer
    from .eap.client import EapClient
    from .eap.server import EapServer

ActivityProbe = Callable[[bytes], "float | None"]


def _no_log(level: str, event: str, **fields: Any) -> None:
    return None


class IkeSACore:
    """State and shared machinery of one IKE SA (see the module docstring)."""

    # No per-instance __dict__: a gateway holds up to 100k of these (issue 13). Every attribute is
    # initialised in __init__ below; the exchange mixins and IkeSA declare empty __slots__.
    __slots__ = (
        "ike_id", "initiator", "candidates", "policy", "local", "remote", "rng", "log", "wall_offset",
        "state", "created", "established_at", "spi_i", "spi_r", "suite", "proposal", "keys", "sk_in",
        "sk_out", "ni", "nr", "ke_private", "ke_group", "cookie", "init_retries", "init_request_raw",
        "init_response_raw", "peer_id", "peer_fragmentation", "peer_mobike", "peer_hash_algs",
        "peer_certreq", "peer_initial_contact", "nat_local", "nat_remote", "natd_seen", "children",
        "_first_child", "_out", "_events", "next_mid", "pending", "queue", "peer_next_mid",
        "last_response", "_now", "_first_child_policy", "_last_src", "peer_addresses",
        "_eap_server_obj", "_eap_client_obj", "_eap_first_request", "_eap_last_request", "_eap_rounds",
        "_eap_done", "_eap_msk", "_eap_server_authenticated", "_eap_server_idr", "eap_identity",
        "virtual_ips", "activity_probe", "_reassembler", "on_change", "last_inbound", "rekey_at",
        "delete_reason", "successor", "successors", "_ike_rekey_nonce", "_ike_collision", "redundant",
        "collision_candidate", "forget_at", "_eap_async", "_eap_async_tickets", "_assign_async",
        "_assign_async_tickets", "peer_intermediate", "_int_chain_obj", "_followups_obj", "peer_use_ppk",
        "_ppk_for_auth", "_ppk_peer_id", "ppk_used", "admitted_with_cookie", "fragment_budget",
        "offload", "_compute_wait", "_compute_tickets",
    )

    def __init__(self, *, ike_id: int, initiator: bool, policy: IkePolicy | None,
                 candidates: list[IkePolicy] | None = None, local: Address, remote: Address,
                 rng: RandomBytes, now: float, log: LogFn | None = None,
                 wall_offset: float = 0.0):
        self.ike_id = ike_id
        self.initiator = initiator  # original initiator of this IKE SA
        self.candidates = candidates or ([policy] if policy else [])
        if policy is None and not self.candidates:
            raise ValueError("an IKE SA needs a policy or candidate policies")
        # A responder starts with the first candidate; IKE_AUTH may switch to another one.
        self.policy: IkePolicy = policy if policy is not None else self.candidates[0]
        self.local = local
        self.remote = remote
        self.rng = rng
        self.log: LogFn = log or _no_log
        self.wall_offset = wall_offset
        self.state = State.CREATED
        self.created = now
        self.established_at: float | None = None
        self.spi_i = self._new_ike_spi() if initiator else b""
        self.spi_r = b"\x00" * 8
        self.suite: IkeSuite | None = None
        self.proposal: P.Proposal | None = None
        self.keys: IkeKeys | None = None
        self.sk_in: SKKeys | None = None
        self.sk_out: SKKeys | None = None
        self.ni = b""
        self.nr = b""
        self.ke_private: KeyExchangeHalf | None = None
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
        self._first_child: ChildRequest | None = None
        self._out: list[tuple[bytes, Address, Address]] = []
        self._events: list[Event] = []
        # Message IDs (window 1 both ways).
        self.next_mid = 0
        self.pending: Pending | None = None
        self.queue: list[QueuedRequest] = []  # (a list: a deque costs 600 bytes even when empty)
        self.peer_next_mid = 0
        self.last_response: tuple[int, list[bytes]] | None = None  # (mid, packets) for retransmits
        self._now = now
        self._first_child_policy: ChildPolicy | None = None
        self._last_src: tuple[Address, Address] = (local, remote)
        self.peer_addresses: list[str] = []
        # EAP and configuration payload (ikev2.exchange_eap)
        self._eap_server_obj: EapServer | AsyncEapServer | None = None
        self._eap_client_obj: EapClient | None = None
        self._eap_first_request: Message | None = None
        self._eap_last_request = b""  # the outstanding EAP Request (repeated if a Response is discarded)
        self._eap_rounds = 0
        self._eap_done = False
        self._eap_msk = b""
        self._eap_server_authenticated = False
        self._eap_server_idr: P.IDrPayload | None = None
        # a request waiting for an asynchronous EAP verdict / address assignment
        # (ikev2.eap_async, ikev2.assign_async)
        self._eap_async: EapWaiting | None = None
        self._eap_async_tickets = 0
        self._assign_async: AssignWaiting | None = None
        self._assign_async_tickets = 0
        # handshake computations handed to the engine's user (ikev2.compute_async); the policy
        # is set by the manager (None: every computation runs inline)
        self.offload: OffloadPolicy | None = None
        self._compute_wait: ComputeWaiting | None = None
        self._compute_tickets = 0
        self.eap_identity: str | None = None
        self.virtual_ips: list[str] = []  # RFC 4555 ADDITIONAL_*_ADDRESS: candidates only
        # callable(spi_in) -> last inbound ESP time, set by the manager
        self.activity_probe: ActivityProbe | None = None
        self._reassembler: FragmentReassembler | None = None  # created by the first SKF fragment
        # Shared by all SAs of a manager (set by it): bytes of unfinished fragment sets (RFC 7383)
        self.fragment_budget: FragmentBudget | None = None
        # Responder: the IKE_SA_INIT carried a valid COOKIE (the peer owns its address; ikev2.admission)
        self.admitted_with_cookie = False
        # Called whenever this SA queues output or a request: the manager collects only from SAs
        # that changed (see ikev2.manager), also after a direct call such as rekey_child().
        self.on_change: Callable[[IkeSACore], None] | None = None
        self.last_inbound = now
        self.rekey_at: float | None = None
        self.delete_reason = ""
        self.successor: IkeSACore | None = None  # the IKE SA that took over our Child SAs (rekey)
        self.successors: list[IkeSACore] = []  # every IKE SA a rekey created (two after a collision)
        self._ike_rekey_nonce: bytes | None = None  # our IKE rekey request is outstanding
        # (peer's new IKE SA, its nonces) during a rekey collision
        self._ike_collision: tuple[IkeSACore, tuple[bytes, bytes]] | None = None
        self.redundant = False  # lost an IKE rekey collision: the peer deletes this SA
        self.collision_candidate = False  # made by the peer's rekey during a collision, undecided
        self.forget_at: float | None = None  # a redundant SA disappears then at the latest
        # RFC 9370/9242 additional key exchanges in IKE_INTERMEDIATE (ikev2.exchange_intermediate)
        self.peer_intermediate = False  # the peer sent INTERMEDIATE_EXCHANGE_SUPPORTED
        # IntAuth_iN/_rN and how many exchanges ran; created by the first one (see _int_chain)
        self._int_chain_obj: IntAuthChain | None = None
        # RFC 9370 IKE_FOLLOWUP_KE, responder side (ikev2.exchange_followup): link -> state, oldest
        # first; created by the first CREATE_CHILD_SA with additional key exchanges (see _followups)
        self._followups_obj: dict[bytes, PendingFollowup] | None = None
        # RFC 8784 PPK (ikev2.exchange_ppk)
        self.peer_use_ppk = False  # the peer sent USE_PPK in IKE_SA_INIT
        self._ppk_for_auth: bytes | None = None  # PPK whose SK_p' the AUTH payloads use now
        self._ppk_peer_id: str | None = None  # responder: the PPK_ID the initiator named
        self.ppk_used = False  # this IKE SA's SK_d came from a PPK

    @property
    def name(self) -> str:
        return self.policy.name if self.policy else "(unknown)"

    @property
    def reassembler(self) -> FragmentReassembler:
        """SKF reassembly state (RFC 7383), created on the first fragment."""
        if self._reassembler is None:
            self._reassembler = FragmentReassembler(budget=self.fragment_budget)
        return self._reassembler

    @property
    def _int_chain(self) -> IntAuthChain:
        """RFC 9242 IntAuth chain (ikev2.exchange_intermediate), created when first needed."""
        if self._int_chain_obj is None:
            self._int_chain_obj = IntAuthChain()
        return self._int_chain_obj

    @property
    def _int_exchanges(self) -> int:
        """How many IKE_INTERMEDIATE exchanges have completed (0 without creating the chain)."""
        return self._int_chain_obj.exchanges if self._int_chain_obj is not None else 0

    @property
    def _followups(self) -> dict[bytes, PendingFollowup]:
        """Responder's pending IKE_FOLLOWUP_KE state (ikev2.exchange_followup), created when first needed."""
        if self._followups_obj is None:
            self._followups_obj = {}
        return self._followups_obj

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self)

    @property
    def agreed_suite(self) -> IkeSuite:
        """The suite IKE_SA_INIT agreed on (an internal error before that)."""
        if self.suite is None:
            raise RuntimeError("IKE SA has no agreed suite yet")
        return self.suite

    @property
    def derived_keys(self) -> IkeKeys:
        """The IKE SA's keys (an internal error before IKE_SA_INIT completed)."""
        if self.keys is None:
            raise RuntimeError("IKE SA has no keys yet")
        return self.keys

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
        self._changed()

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
        self._changed()

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

    def _request(self, what: str, build: RequestBuilder) -> None:
        self.queue.append(QueuedRequest(what, build))
        self._changed()

    def _pump(self, now: float) -> None:
        """Send the next queued request if the window is free."""
        while self.pending is None and self.queue and self.state not in (State.DELETED,):
            q = self.queue.pop(0)
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
                     payloads=payload_summary(payloads), fragments=len(packets))
            self._send(packets)

    def _send_unencrypted_request(self, msg: Message, handler: ResponseHandler, what: str, now: float) -> None:
        raw = encode_message(msg)
        self.pending = Pending(msg.exchange, msg.message_id, [raw], handler, what, now,
                               now + self.policy.retransmit_timeout)
        self._send([raw])

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
        self._followups_obj = None  # their shared secrets SK(1).. go with the SA
        self._emit(IkeDown(reason=reason if was_up or self.initiator else f"{reason} (not established)"))

    def _remove_child(self, c: ChildSA, reason: str) -> None:
        if c in self.children:
            self.children.remove(c)
        if c.state != ChildState.DELETED:
            c.state = ChildState.DELETED
            self._emit(ChildDown(child_name=c.name, spi_in=c.spi_in, spi_out=c.spi_out, reason=reason))
            c.wipe()

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

    def _respond(self, req: Message, payloads: list[P.Payload]) -> None:
        packets = self._seal(req.exchange, req.message_id, payloads, response=True)
        self.last_response = (req.message_id, packets)
        self.peer_next_mid = req.message_id + 1
        # RFC 7296 2.11: a response goes to the address and port the request came from, whether
        # or not that address is adopted (MOBIKE path checks rely on it).
        self._send(packets, self._last_src)

    def _gone(self, now: float) -> None:
        """Old IKE SA after rekey: disappear quietly (no IkeDown: the successor lives on)."""
        self.state = State.DELETED
        self.pending = None
        self.queue.clear()
        self._followups_obj = None
        if self.sk_in:
            self.sk_in.wipe()
        if self.sk_out:
            self.sk_out.wipe()

    # ------------------------------------------------------------------ provided by an exchange module
    # Declared here so that one exchange module can call another through this contract; the
    # implementations live in the named modules and come first in IkeSA's method resolution order.

    def _install_keys(self, keys: IkeKeys) -> None:  # exchange_init
        raise NotImplementedError

    def _resume_init(self, w: ComputeWaiting, now: float) -> None:  # exchange_init
        raise NotImplementedError

    @property
    def computing_init(self) -> bool:
        """Responder whose IKE_SA_INIT keys are being computed elsewhere (ikev2.compute_async):
        half-open like INIT_DONE (counted, found by its SPIi, expires)."""
        return self.state == State.CREATED and self._compute_wait is not None and not self.initiator

    def _build_auth_request(self) -> RequestBuilt:  # exchange_auth
        raise NotImplementedError

    def _auth_octets(self, sent_by_initiator: bool, id_body: bytes) -> bytes:  # exchange_auth
        raise NotImplementedError

    def _our_auth_payloads(self, id_cls: type[P.IDiPayload] | type[P.IDrPayload]) -> list[P.Payload]:  # exchange_auth
        raise NotImplementedError

    def _verify_peer_auth(self, req: Message, pol: IkePolicy, now: float) -> Identity:  # exchange_auth
        raise NotImplementedError

    def _established(self, now: float) -> None:  # exchange_auth
        raise NotImplementedError

    def _start_other_children(self, now: float) -> None:  # exchange_auth
        raise NotImplementedError

    def _complete_auth_responder(self, req: Message, first: Message, out: list[P.Payload], now: float,
                                 outcome: str) -> None:  # exchange_auth
        raise NotImplementedError

    def _start_eap_server(self, req: Message, ident: Identity, now: float) -> None:  # exchange_eap
        raise NotImplementedError

    def _continue_eap_server(self, req: Message, now: float) -> None:  # exchange_eap
        raise NotImplementedError

    def _assign_virtual_ip(self, first: Message
                           ) -> tuple[list[P.TrafficSelector] | None, P.CPPayload | None]:  # exchange_eap
        raise NotImplementedError

    def _read_cp_reply(self, msg: Message) -> None:  # exchange_eap
        raise NotImplementedError

    def _eap_client_request(self, out: list[P.Payload]) -> list[P.Payload]:  # exchange_eap
        raise NotImplementedError

    def _on_auth_response_eap(self, msg: Message, now: float) -> None:  # exchange_eap
        raise NotImplementedError

    def _child_proposals(self, cp: ChildPolicy, spi: bytes, with_ke: bool) -> list[P.Proposal]:  # exchange_child
        raise NotImplementedError

    def _respond_child(self, req: Message, now: float, ni: bytes, nr: bytes, shared: bytes | None,
                       rekey_of: ChildSA | None, peer_ts: list[P.TrafficSelector] | None = None
                       ) -> tuple[list[P.Payload], ChildSA | None]:  # exchange_child
        raise NotImplementedError

    def _install_child(self, child: ChildSA, now: float, rekey_of: ChildSA | None = None) -> None:  # exchange_child
        raise NotImplementedError

    def _finish_child_as_initiator(self, req: ChildRequest, msg: Message, now: float, ni: bytes,
                                   nr: bytes, shared: bytes | None) -> None:  # exchange_child
        raise NotImplementedError

    def create_child(self, cp: ChildPolicy, now: float) -> None:  # exchange_child
        raise NotImplementedError

    def _child_by_spi_in(self, spi: bytes) -> ChildSA | None:  # exchange_child
        raise NotImplementedError

    def _child_by_spi_out(self, spi: bytes) -> ChildSA | None:  # exchange_child
        raise NotImplementedError

    def _delete_children(self, children: list[ChildSA], now: float, why: str) -> None:  # exchange_info
        raise NotImplementedError

    def _on_ike_rekey_request(self, req: Message, now: float) -> None:  # exchange_ike_rekey
        raise NotImplementedError

    def _settle_lost_collision(self) -> None:  # exchange_ike_rekey
        raise NotImplementedError

    def _mobike_request(self, req: Message, now: float) -> bool:  # exchange_mobike
        raise NotImplementedError

    def _intermediate_notify(self) -> list[P.Payload]:  # exchange_intermediate
        raise NotImplementedError

    def _check_intermediate_support(self, msg: Message) -> None:  # exchange_intermediate
        raise NotImplementedError

    def _after_init_as_initiator(self) -> None:  # exchange_intermediate
        raise NotImplementedError

    def _intermediate_pending(self) -> bool:  # exchange_intermediate
        raise NotImplementedError

    def _int_auth_suffix(self) -> bytes:  # exchange_intermediate
        raise NotImplementedError

    def key_exchange_names(self) -> list[str]:  # exchange_intermediate
        raise NotImplementedError

    def _followup_link(self, methods: Sequence[KeyExchange], on_done: FollowupDone,
                       what: str) -> P.NotifyPayload:  # exchange_followup
        raise NotImplementedError

    def _run_followups(self, msg: Message, methods: Sequence[KeyExchange], on_done: FollowupDone,
                       on_fail: FollowupFailed, what: str) -> None:  # exchange_followup
        raise NotImplementedError

    def _ppk_init_notifies(self, request: Message | None) -> list[P.Payload]:  # exchange_ppk
        raise NotImplementedError

    def _ppk_read_init(self, msg: Message) -> None:  # exchange_ppk
        raise NotImplementedError

    def _sk_p_for_auth(self, key: bytes) -> bytes:  # exchange_ppk
        raise NotImplementedError

    def _apply_ppk(self, ppk: bytes) -> None:  # exchange_ppk
        raise NotImplementedError

    def _ppk_request_payloads(self, auth_payloads: list[P.Payload]) -> list[P.Payload]:  # exchange_ppk
        raise NotImplementedError

    def _ppk_check_response(self, msg: Message) -> None:  # exchange_ppk
        raise NotImplementedError

    def _ppk_check_request(self, req: Message) -> None:  # exchange_ppk
        raise NotImplementedError

    def _ppk_response_payloads(self) -> list[P.Payload]:  # exchange_ppk
        raise NotImplementedError
