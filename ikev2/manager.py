"""All IKE SAs of one gateway, sans-IO: routes datagrams to IKE SAs by SPI, creates responder SAs
(admission with COOKIEs, global and per-address half-open limits and a per-address rate, RFC 7296
2.6, see ikev2.admission), starts initiators, and holds the budget of unfinished IKE fragment sets.

The daemon feeds it datagrams (``receive``) and time (``tick``) and drains
``pop_datagrams``/``pop_events``; tests run two managers against each other in memory.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from . import payloads as P
from .admission import AddressRate, CookieJar, address_key, cookie_reply, first_cookie, init_request_spi
from .child_sa import ChildState
from .compute import ComputeNeeded, OffloadPolicy, Result
from .constants import ExchangeType as X
from .constants import HeaderFlag
from .constants import NotifyType as N
from .deadlines import DeadlineHeap
from .errors import ParseError, UnsupportedCriticalPayload
from .events import Address, Event, IkeUp
from .ike_sa import IkeSA, State
from .message import Header, Message, UnsupportedVersion, decode_header, decode_message, encode_message
from .policy import IkePolicy
from .sa_core import ActivityProbe, IkeSACore
from .sa_index import SAIndex
from .sk import FragmentBudget

if TYPE_CHECKING:
    from .cp import Assignment
    from .eap.packet import EapStep

RandomBytes = Callable[[int], bytes]
LogFn = Callable[..., None]
FAST_COOKIE_LOG_INTERVAL = 10.0  # seconds between "asking for a cookie" lines of the batch fast path


class IkeManager:
    """All IKE SAs of one gateway.

    Cost per event does not depend on the number of SAs: SAs are found through indexes
    (``ikev2.sa_index``), output is collected only from SAs that changed (each SA reports a change
    through ``on_change``), timers live in a heap (``ikev2.deadlines``) and ``tick`` touches only
    the SAs that are due.
    """

    def __init__(self, policies: list[IkePolicy], rng: RandomBytes, *, log: LogFn | None = None,
                 wall_offset: float = 0.0, cookie_threshold: int = 100, half_open_limit: int = 1000,
                 half_open_per_address: int = 5, new_sa_rate_per_address: float = 10.0,
                 new_sa_burst_per_address: int = 20, cookie_secret_lifetime: float = 120.0,
                 cookie_grace: float = 30.0, fragment_budget_per_sa: int = 64 * 1024,
                 fragment_budget_total: int = 8 * 1024 * 1024, offload: OffloadPolicy | None = None):
        self.policies = list(policies)
        self.rng = rng
        self.log = log or (lambda level, event, **kw: None)
        self.wall_offset = wall_offset
        # Admission (ikev2.admission; 0 per address = no limit); plain attributes, reload sets them.
        self.cookie_threshold = cookie_threshold
        self.half_open_limit = half_open_limit
        self.half_open_per_address = half_open_per_address
        self.cookies = CookieJar(rng, cookie_secret_lifetime, cookie_grace)
        self.new_sa_rate = AddressRate(new_sa_rate_per_address, new_sa_burst_per_address)
        self.admission: dict[str, int] = {"inits_admitted": 0, "inits_admitted_with_cookie": 0,
                                          "cookies_sent": 0, "cookies_forged": 0, "cookies_stale": 0,
                                          "unproven_half_open_replaced": 0}
        self._fast_cookie_log_at = float("-inf")  # stateless_init_reply logs once per interval
        self._fast_cookies_logged = 0  # cookies_sent when it last logged
        self.fragment_budget = FragmentBudget(fragment_budget_per_sa, fragment_budget_total)
        self.index: SAIndex[IkeSA] = SAIndex()
        self.by_spi = self.index.by_spi  # our SPI -> IKE SA (kept for callers of the old name)
        self._timers: DeadlineHeap[IkeSA] = DeadlineHeap()
        self._dirty: dict[IkeSA, None] = {}  # SAs that changed since the last collection, in order
        self._next_id = 1
        self._out: list[tuple[bytes, Address, Address]] = []
        self._events: list[Event] = []
        self.dropped: dict[str, int] = {}
        self.activity_probe: ActivityProbe | None = None
        # Handshake computations handed out as ComputeNeeded events (ikev2.compute_async):
        # None = all inline; token -> the IKE SA waiting for it.
        self.offload = offload
        self._computing: dict[int, IkeSA] = {}
        self._next_token = 1
        #: SA method calls made by the manager (receive, tick, ...): lets tests assert that one
        #: event touches a bounded number of SAs, whatever the number held.
        self.sa_calls = 0

    # ------------------------------------------------------------------ plumbing

    @property
    def sas(self) -> list[IkeSA]:
        """A snapshot of all IKE SAs (O(n): for tests and whole-gateway operations; look SAs up
        with ``find``, ``by_id``, ``by_spi``, ``child_owner`` or ``index`` instead)."""
        return self.index.all()

    def policy(self, name: str) -> IkePolicy | None:
        return next((p for p in self.policies if p.name == name), None)

    def _new_id(self) -> int:
        i = self._next_id
        self._next_id += 1
        return i

    def _mark(self, sa: IkeSACore) -> None:
        self._dirty[sa] = None  # type: ignore[index]  # only IkeSA objects get this hook

    def _add(self, sa: IkeSA) -> None:
        sa.activity_probe = self.activity_probe
        sa.fragment_budget = self.fragment_budget
        sa.on_change = self._mark
        sa.offload = self.offload
        self.index.update(sa)
        self._dirty[sa] = None

    def _drop(self, reason: str, **fields: Any) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        self.log("warning", "dropped datagram", reason=reason, **fields)

    def _collect(self) -> None:
        """Take the output of every SA that changed, keep the indexes and timers up to date, and
        forget deleted SAs. Work is proportional to the number of changed SAs."""
        while self._dirty:
            sa = next(iter(self._dirty))
            del self._dirty[sa]
            self._out += sa.pop_datagrams()
            evs = sa.pop_events()
            self._events += evs
            for ev in evs:
                if isinstance(ev, IkeUp) and ev.initial_contact:
                    self._initial_contact(sa, ev)
                elif isinstance(ev, ComputeNeeded):
                    self._hand_out(sa, ev)
            for succ in sa.successors:
                assert isinstance(succ, IkeSA)  # made by type(sa)(...)
                if succ in self.index:
                    # Child SAs move from an SA to its successors without output on the
                    # successor's side (rekey collisions): re-file it too.
                    self._dirty[succ] = None
                elif succ.on_change is None and succ.state != State.DELETED:
                    # Same number: the data plane's Child SAs and the daemon's per-SA state
                    # (virtual IP leases) follow the IKE SA across rekeys.
                    succ.ike_id = sa.ike_id
                    self._add(succ)
            if sa.state == State.DELETED:
                if sa._reassembler is not None:
                    sa._reassembler.reset()  # its unfinished fragments go back to the budget
                if sa._compute_wait is not None:
                    self._computing.pop(sa._compute_wait.token, None)  # its result will be dropped
                self.index.remove(sa)
                self._timers.remove(sa)
                sa.on_change = None
                sa.successors = []  # (no reference chain from a dead SA to its successors)
            elif sa in self.index:
                self.index.update(sa)
                self._timers.set(sa, sa.next_deadline())

    def _initial_contact(self, new: IkeSA, ev: IkeUp) -> None:
        """RFC 7296 2.4: the peer rebooted and lost its state; our older IKE SAs with the same
        identity on the same connection are dead. Remove them without a DELETE exchange."""
        for sa in self.index.with_peer_id(ev.remote_id):
            if sa is new or sa.state == State.DELETED or sa.policy is not new.policy:
                continue
            self.log("info", "INITIAL_CONTACT: removing stale IKE SA", ike_id=sa.ike_id,
                     spi_i=sa.spi_i.hex(), spi_r=sa.spi_r.hex(), peer_id=ev.remote_id)
            sa._die(0.0, "replaced after peer's INITIAL_CONTACT")
            self._dirty[sa] = None

    def pop_datagrams(self) -> list[tuple[bytes, Address, Address]]:
        self._collect()
        out, self._out = self._out, []
        return out

    def pop_events(self) -> list[Event]:
        self._collect()
        out, self._events = self._events, []
        return out

    # ------------------------------------------------------------------ commands

    def initiate(self, name: str, now: float, remote: Address | None = None,
                 local: Address | None = None) -> IkeSA:
        pol = self.policy(name)
        if pol is None:
            raise KeyError(f"no connection named {name!r}")
        if remote is None:
            addrs = [a for a in pol.remote_addrs if a != "%any"]
            if not addrs:
                raise ValueError(f"connection {name!r} has no remote address to initiate to")
            remote = (addrs[0], 500)
        if local is None:
            local = (pol.local_addrs[0] if pol.local_addrs else
                     ("::" if ipaddress.ip_address(remote[0]).version == 6 else "0.0.0.0"), 500)
        sa = IkeSA(ike_id=self._new_id(), initiator=True, policy=pol, local=local, remote=remote,
                   rng=self.rng, now=now, log=self.log, wall_offset=self.wall_offset)
        self._add(sa)
        self.sa_calls += 1
        sa.start(now)
        self._collect()
        return sa

    def by_id(self, ike_id: int) -> IkeSA | None:
        """The IKE SA with this number; after a rekey the established successor (same number)."""
        cands = [sa for sa in self.index.with_id(ike_id) if sa.state != State.DELETED]
        return next((sa for sa in cands if sa.state == State.ESTABLISHED), cands[0] if cands else None)

    def child_owner(self, spi_in: bytes) -> IkeSA | None:
        """The IKE SA that holds the Child SA with this inbound SPI."""
        return self.index.child_owner(spi_in)

    def eap_verdict(self, ike_id: int, ticket: int, step: EapStep, now: float) -> bool:
        """The verdict (an ikev2.eap.EapStep) for an EapVerdictNeeded event (ikev2.eap_async)."""
        sa = self.by_id(ike_id)
        if sa is None:
            return False
        from .eap_async import deliver
        return self._deliver(sa, lambda: deliver(sa, ticket, step, now), now)

    def assignment_ready(self, ike_id: int, ticket: int, assignment: Assignment | None, now: float) -> bool:
        """The virtual IPs (ikev2.cp.Assignment or None) for an AddressNeeded event (ikev2.assign_async)."""
        sa = self.by_id(ike_id)
        if sa is None:
            return False
        from .assign_async import deliver
        return self._deliver(sa, lambda: deliver(sa, ticket, assignment, now), now)

    def _hand_out(self, sa: IkeSA, ev: ComputeNeeded) -> None:
        ev.token = self._next_token
        self._next_token += 1
        self._computing[ev.token] = sa
        if sa._compute_wait is not None and sa._compute_wait.ticket == ev.ticket:
            sa._compute_wait.token = ev.token

    def compute_done(self, token: int, result: Result, now: float) -> bool:
        """The result (``ikev2.compute.run(job)``) of a ComputeNeeded event: the IKE SA continues.
        False when the IKE SA is gone or no longer waits for it (the result is dropped)."""
        sa = self._computing.pop(token, None)
        if sa is None:
            return False
        from .compute_async import deliver
        w = sa._compute_wait
        ticket = w.ticket if w is not None and w.token == token else -1
        return self._deliver(sa, lambda: deliver(sa, ticket, result, now), now)

    def compute_failed(self, token: int, reason: str, now: float) -> bool:
        """The computation of a ComputeNeeded event could not be run: the IKE SA is deleted."""
        sa = self._computing.pop(token, None)
        if sa is None:
            return False
        self.log("error", "handshake computation failed, deleting IKE SA", ike_id=sa.ike_id, reason=reason)
        self._guarded(sa, sa._die, now, f"computation failed: {reason}")
        self._collect()
        return True

    def esp_adopt(self, ike_id: int, local: Address, remote: Address, now: float) -> bool:
        """The data plane saw an authenticated ESP packet, newer than all before, from a new
        address: move the IKE SA and its Child SAs there if the connection adopts addresses."""
        sa = self.by_id(ike_id)
        if sa is not None:
            self.sa_calls += 1
            self._dirty[sa] = None
        moved = bool(sa and sa.adopt_from_esp(local, remote, now))
        self._collect()
        return moved

    def local_address_changed(self, old_ip: str, new_ip: str, now: float) -> int:
        """Our address old_ip is gone and new_ip replaces it: move the IKE SAs that used it and
        let their peers know (MOBIKE update or an authenticated liveness check)."""
        n = 0
        for sa in self.index.with_local_ip(old_ip):
            if sa.state == State.ESTABLISHED:
                self._guarded(sa, sa.local_moved, (new_ip, sa.local[1]), now)
                n += 1
        self._collect()
        return n

    def set_activity_probe(self, probe: ActivityProbe | None) -> None:
        """probe(spi_in) -> monotonic time of the last authenticated inbound ESP packet, or None:
        any authenticated packet counts for liveness (dead peer detection)."""
        self.activity_probe = probe
        for sa in self.index.all():
            sa.activity_probe = probe

    def find(self, name: str | None = None, *, peer: str | None = None,
             peer_id: str | None = None) -> list[IkeSA]:
        """Live IKE SAs of connection ``name``, and/or with remote address ``peer``, and/or with
        peer identity ``peer_id`` (all given filters apply), through the indexes."""
        lists = []
        if name is not None:
            lists.append(self.index.with_name(name))
        if peer is not None:
            lists.append(self.index.with_remote_ip(peer))
        if peer_id is not None:
            lists.append(self.index.with_peer_id(peer_id))
        if not lists:
            return [sa for sa in self.index.all() if sa.state != State.DELETED]
        lists.sort(key=len)
        others = [set(other) for other in lists[1:]]
        return [sa for sa in lists[0] if sa.state != State.DELETED and all(sa in o for o in others)]

    def request_missing_children(self, name: str, now: float) -> int | None:
        """Traffic for a trap policy of ``name`` while it has an IKE SA: ask (CREATE_CHILD_SA)
        for each Child SA of the connection that the IKE SA does not have, e.g. because the peer
        deleted it; one already being asked for is not asked for again. Returns how many were
        requested, or None when ``name`` has no established IKE SA (then it must be initiated,
        unless one is being set up)."""
        live = [sa for sa in self.find(name) if sa.state == State.ESTABLISHED]
        if not live:
            return None
        sa = live[-1]
        have = {c.policy.name for c in sa.children if c.state not in (ChildState.DELETING, ChildState.DELETED)}
        asked = {q.what for q in sa.queue} | ({sa.pending.what} if sa.pending is not None else set())
        n = 0
        for cp in sa.policy.children:
            if cp.name not in have and f"create child {cp.name}" not in asked:
                sa.create_child(cp, now)
                n += 1
        return n

    def terminate(self, name: str, now: float) -> int:
        n = 0
        for sa in self.find(name):
            self._dirty[sa] = None
            self.sa_calls += 1
            sa.delete(now)
            n += 1
        self._collect()
        return n

    def tick(self, now: float) -> None:
        """Fire the timers that are due (only those SAs are touched), earliest first; rotate the
        COOKIE secret when its lifetime is over."""
        self.cookies.advance(now)
        for sa in self._timers.pop_due(now):
            self._dirty[sa] = None
            self._guarded(sa, sa.tick, now)
        self._collect()

    def next_deadline(self) -> float | None:
        self._collect()
        return self._timers.next_deadline()

    def status(self, now: float, name: str | None = None, *, peer: str | None = None,
               peer_id: str | None = None, ike_id: int | None = None) -> list[dict[str, Any]]:
        """Status of the live IKE SAs, optionally filtered (see ``find``; ``ike_id``: one SA)."""
        return list(self.iter_status(now, name, peer=peer, peer_id=peer_id, ike_id=ike_id))

    def iter_status(self, now: float, name: str | None = None, *, peer: str | None = None,
                    peer_id: str | None = None, ike_id: int | None = None) -> Iterator[dict[str, Any]]:
        """``status`` one IKE SA at a time (for streaming many SAs without one giant answer)."""
        if ike_id is not None:
            sas = [sa for sa in self.index.with_id(ike_id) if sa.state != State.DELETED
                   and (name is None or sa.name == name) and (peer is None or sa.remote[0] == peer)
                   and (peer_id is None or str(sa.peer_id) == peer_id)]
        else:
            sas = self.find(name, peer=peer, peer_id=peer_id)
        for sa in sas:
            yield sa.status(now)

    def summary(self) -> dict[str, Any]:
        """Counts without visiting any SA: IKE SAs by state, half-open, Child SAs."""
        return {"ike_sas": len(self.index), "by_state": self.index.count_by_state(),
                "half_open": self.index.half_open_count(), "child_sas": self.index.child_count()}

    def counters(self) -> dict[str, Any]:
        """Admission and resource counters (the daemon's ``stats`` "ike" section), O(1)."""
        return {"half_open": self.index.half_open_count(), "half_open_limit": self.half_open_limit,
                "cookie_threshold": self.cookie_threshold, "half_open_per_address": self.half_open_per_address,
                **self.admission, "dropped": dict(self.dropped),
                "cookie_generation": self.cookies.generation, "cookie_rotations": self.cookies.rotations,
                "rate_tracked_addresses": len(self.new_sa_rate), **self.fragment_budget.counters(),
                "computations_pending": len(self._computing)}

    def half_open_count(self, ip: str | None = None) -> int:
        """Responder IKE SAs waiting for IKE_AUTH: all, or those from peer address ``ip``."""
        return self.index.half_open_count(ip)

    # ------------------------------------------------------------------ receive

    def receive(self, data: bytes, local: Address, remote: Address, now: float) -> None:
        """One IKE datagram (without the non-ESP marker) from ``remote`` to ``local``."""
        peer = f"{remote[0]}:{remote[1]}"
        try:
            header = decode_header(data)
        except UnsupportedVersion as e:
            self._drop("unsupported IKE version", peer=peer, detail=str(e))
            if len(data) >= 28 and not (data[19] & HeaderFlag.RESPONSE):
                self._answer_unprotected(data[:8], data[18], data[20:24], N.INVALID_MAJOR_VERSION,
                                         b"", local, remote)
            return
        except ParseError as e:
            self._drop("malformed header", peer=peer, detail=str(e))
            return
        # Find the IKE SA: our SPI is SPIr for messages from the original initiator.
        from_initiator = bool(header.flags & HeaderFlag.INITIATOR)
        our_spi = header.spi_r if from_initiator else header.spi_i
        sa = self.by_spi.get(our_spi) if our_spi != bytes(8) else None
        if sa is None and header.exchange == X.IKE_SA_INIT and not header.is_response and from_initiator:
            self._receive_new_init(data, header, local, remote, now)
            return
        if sa is None:
            self._drop("unknown IKE SPI", peer=peer, exchange=header.exchange, spi=our_spi.hex())
            return
        try:
            msg = decode_message(data)
        except ParseError as e:
            self._drop("malformed message", peer=peer, detail=str(e))
            return
        self._guarded(sa, sa.receive, data, msg, local, remote, now)
        self._collect()

    def _deliver(self, sa: IkeSA, step: Callable[[], bool], now: float) -> bool:
        """Hand an external result (EAP verdict, address assignment, computation) to the IKE SA
        that waits for it, under the guard; True when the SA took it."""
        done: list[bool] = []
        self._guarded(sa, lambda *a: done.append(step()), now)
        self._collect()
        return bool(done and done[0])

    def _guarded(self, sa: IkeSA, fn: Callable[..., None], *args: Any) -> None:
        """Run one IKE SA step; an internal error kills that IKE SA, never the gateway."""
        self.sa_calls += 1
        self._dirty[sa] = None
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - the last line of defence
            self.log("error", "internal error, deleting IKE SA", ike_id=sa.ike_id,
                     connection=sa.name, error=f"{type(e).__name__}: {e}", exc_info=True)
            try:
                sa._die(args[-1], f"internal error: {type(e).__name__}")
            except Exception:  # noqa: BLE001
                sa.state = State.DELETED

    def stateless_init_reply(self, data: bytes, ip: str, port: int, ip_packed: bytes, now: float) -> bytes | None:
        """The batch fast path for a datagram that may be a spoofed IKE_SA_INIT (the daemon's INIT
        socket, vpn_gw/transport/steering.py): the COOKIE response to send, as bytes, when
        ``receive`` would answer it with a fresh COOKIE and do nothing else (a new IKE_SA_INIT
        without a COOKIE while COOKIEs are required, step 2 of ikev2.admission); None when the
        datagram needs ``receive`` (anything else, including COOKIE-carrying requests and
        retransmissions of half-open SAs). Decodes the header and first payload only, builds
        no object; logs one "asking for a cookie" line per ``FAST_COOKIE_LOG_INTERVAL`` seconds
        with the number answered since the last one (``cookies_sent`` counts them all)."""
        spi_i = init_request_spi(data)
        if spi_i is None or first_cookie(data) is not None:
            return None
        index = self.index
        per_address = self.half_open_per_address
        if index.half_open_count() < self.cookie_threshold and \
                not (per_address and index.half_open_count(ip) >= per_address):
            return None
        if index.half_open(spi_i, (ip, port)) is not None:
            return None  # a retransmission: its SA answers again
        self.cookies.advance(now)
        sent = self.admission["cookies_sent"] = self.admission["cookies_sent"] + 1
        if now >= self._fast_cookie_log_at:  # one line per interval, not one per datagram
            self.log("info", "asking for a cookie", peer=f"{ip}:{port}", half_open=index.half_open_count(),
                     reason="absent", cookies_since_last_line=sent - self._fast_cookies_logged)
            self._fast_cookie_log_at, self._fast_cookies_logged = now + FAST_COOKIE_LOG_INTERVAL, sent
        return cookie_reply(spi_i, self.cookies.make_packed(ip_packed, spi_i))

    def _receive_new_init(self, data: bytes, header: Header, local: Address, remote: Address, now: float) -> None:
        """Admission of a new IKE SA, in the order of ikev2.admission's docstring."""
        peer = f"{remote[0]}:{remote[1]}"
        # A retransmitted IKE_SA_INIT for a half-open SA: let it answer again.
        sa = self.index.half_open(header.spi_i, remote)
        if sa is not None:
            try:
                msg = decode_message(data)
            except ParseError as e:
                self._drop("malformed IKE_SA_INIT", peer=peer, detail=str(e))
                return
            self._guarded(sa, sa.receive, data, msg, local, remote, now)
            self._collect()
            return
        # The stateless fast path: header and first payload only.
        self.cookies.advance(now)
        ip = remote[0]
        half_open = self.index.half_open_count()
        here = self.index.half_open_count(ip)
        per_address = self.half_open_per_address
        cookie = first_cookie(data)
        verdict = self.cookies.check(cookie, ip, header.spi_i, now) if cookie is not None else "absent"
        if verdict in ("forged", "stale"):
            self.admission[f"cookies_{verdict}"] += 1
        verified = verdict == "valid"
        if not verified and (half_open >= self.cookie_threshold or (per_address and here >= per_address)):
            self.admission["cookies_sent"] += 1
            self.log("info", "asking for a cookie", peer=peer, half_open=half_open, reason=verdict)
            self._answer_unprotected(header.spi_i, X.IKE_SA_INIT, bytes(4), N.COOKIE,
                                     self.cookies.make(ip, header.spi_i), local, remote)
            return
        if per_address and here >= per_address:
            # Only a COOKIE-proven request gets past the limit, and only by taking the place of a
            # half-open SA from this address that was not proven (spoofers cannot lock it out).
            spoofed = self.index.oldest_unverified_half_open(ip) if verified else None
            if spoofed is None:
                self._drop("per-address half-open limit reached", peer=peer, limit=per_address)
                return
            self.log("info", "replacing an unproven half-open IKE SA with a COOKIE-proven one", peer=peer,
                     ike_id=spoofed.ike_id)
            self.admission["unproven_half_open_replaced"] += 1
            self.sa_calls += 1
            self._dirty[spoofed] = None
            spoofed._die(now, "replaced by a COOKIE-proven IKE_SA_INIT")
            self._collect()
            half_open = self.index.half_open_count()
        if half_open >= self.half_open_limit:
            self._drop("half-open limit reached", peer=peer, limit=self.half_open_limit)
            return
        if not self.new_sa_rate.take(address_key(ip), now):
            self._drop("per-address rate of new IKE SAs exceeded", peer=peer,
                       rate=self.new_sa_rate.rate, burst=self.new_sa_rate.burst)
            return
        try:
            msg = decode_message(data)
        except UnsupportedCriticalPayload as e:
            self._drop("unsupported critical payload", peer=peer, detail=str(e))
            self._answer_unprotected(header.spi_i, header.exchange, header.message_id.to_bytes(4, "big"),
                                     N.UNSUPPORTED_CRITICAL_PAYLOAD, bytes([e.payload_type]), local, remote)
            return
        except ParseError as e:
            self._drop("malformed IKE_SA_INIT", peer=peer, detail=str(e))
            self._answer_unprotected(header.spi_i, header.exchange, header.message_id.to_bytes(4, "big"),
                                     N.INVALID_SYNTAX, b"", local, remote)
            return
        if msg.message_id != 0:
            self._drop("IKE_SA_INIT with non-zero message ID", peer=peer)
            return
        candidates = [p for p in self.policies if p.matches_addresses(local[0], remote[0])]
        if not candidates:
            self._drop("no connection for these addresses", peer=peer, local=local[0])
            self._answer_unprotected(header.spi_i, X.IKE_SA_INIT, bytes(4), N.NO_PROPOSAL_CHOSEN, b"",
                                     local, remote)
            return
        sa = IkeSA(ike_id=self._new_id(), initiator=False, policy=None, candidates=candidates, local=local,
                   remote=remote, rng=self.rng, now=now, log=self.log, wall_offset=self.wall_offset)
        sa.admitted_with_cookie = verified
        self.admission["inits_admitted"] += 1
        self.admission["inits_admitted_with_cookie"] += verified
        self._add(sa)
        self._guarded(sa, sa.receive, data, msg, local, remote, now)
        self._collect()

    def _answer_unprotected(self, spi_i: bytes, exchange: int, mid: bytes, notify: int, data: bytes,
                            local: Address, remote: Address) -> None:
        msg = Message(spi_i, bytes(8), exchange, int.from_bytes(mid, "big"), HeaderFlag.RESPONSE,
                      [P.NotifyPayload(notify_type=notify, data=data)])
        self._out.append((encode_message(msg), local, remote))
