"""All IKE SAs of one gateway, sans-IO: routes datagrams to IKE SAs by SPI, creates responder SAs
(with COOKIE protection and a half-open limit, RFC 7296 2.6), starts initiators.

The daemon feeds it datagrams (``receive``) and time (``tick``) and drains
``pop_datagrams``/``pop_events``; tests run two managers against each other in memory.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Callable
from typing import Any

from . import payloads as P
from .constants import ExchangeType as X
from .constants import HeaderFlag
from .constants import NotifyType as N
from .errors import ParseError, UnsupportedCriticalPayload
from .events import Address, Event, IkeUp
from .child_sa import ChildState
from .ike_sa import IkeSA, State
from .message import Header, Message, UnsupportedVersion, decode_header, decode_message, encode_message
from .policy import IkePolicy
from .sa_core import ActivityProbe

RandomBytes = Callable[[int], bytes]
LogFn = Callable[..., None]


class IkeManager:
    def __init__(self, policies: list[IkePolicy], rng: RandomBytes, *, log: LogFn | None = None,
                 wall_offset: float = 0.0, cookie_threshold: int = 100, half_open_limit: int = 1000):
        self.policies = list(policies)
        self.rng = rng
        self.log = log or (lambda level, event, **kw: None)
        self.wall_offset = wall_offset
        self.cookie_threshold = cookie_threshold
        self.half_open_limit = half_open_limit
        self.sas: list[IkeSA] = []
        self.by_spi: dict[bytes, IkeSA] = {}
        self._next_id = 1
        self._cookie_secret = rng(32)
        self._cookie_version = 0
        self._out: list[tuple[bytes, Address, Address]] = []
        self._events: list[Event] = []
        self.dropped: dict[str, int] = {}
        self.activity_probe: ActivityProbe | None = None

    # ------------------------------------------------------------------ plumbing

    def policy(self, name: str) -> IkePolicy | None:
        return next((p for p in self.policies if p.name == name), None)

    def _new_id(self) -> int:
        i = self._next_id
        self._next_id += 1
        return i

    def _add(self, sa: IkeSA) -> None:
        sa.activity_probe = self.activity_probe
        self.sas.append(sa)
        if sa.our_spi and sa.our_spi != bytes(8):
            self.by_spi[sa.our_spi] = sa

    def _drop(self, reason: str, **fields: Any) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        self.log("warning", "dropped datagram", reason=reason, **fields)

    def _collect(self) -> None:
        for sa in list(self.sas):
            self._out += sa.pop_datagrams()
            evs = sa.pop_events()
            self._events += evs
            for ev in evs:
                if isinstance(ev, IkeUp) and ev.initial_contact:
                    self._initial_contact(sa, ev)
            for succ in sa.successors:
                assert isinstance(succ, IkeSA)  # made by type(sa)(...)
                if succ not in self.sas and succ.state != State.DELETED:
                    # Same number: the data plane's Child SAs and the daemon's per-SA state
                    # (virtual IP leases) follow the IKE SA across rekeys.
                    succ.ike_id = sa.ike_id
                    self._add(succ)
            if sa.our_spi and sa.our_spi != bytes(8) and self.by_spi.get(sa.our_spi) is not sa \
                    and sa.state != State.DELETED:
                self.by_spi[sa.our_spi] = sa
            if sa.state == State.DELETED:
                self.sas.remove(sa)
                if self.by_spi.get(sa.our_spi) is sa:
                    del self.by_spi[sa.our_spi]

    def _initial_contact(self, new: IkeSA, ev: IkeUp) -> None:
        """RFC 7296 2.4: the peer rebooted and lost its state; our older IKE SAs with the same
        identity on the same connection are dead. Remove them without a DELETE exchange."""
        for sa in list(self.sas):
            if sa is new or sa.state == State.DELETED or sa.policy is not new.policy:
                continue
            if sa.peer_id is not None and str(sa.peer_id) == ev.remote_id:
                self.log("info", "INITIAL_CONTACT: removing stale IKE SA", ike_id=sa.ike_id,
                         spi_i=sa.spi_i.hex(), spi_r=sa.spi_r.hex(), peer_id=ev.remote_id)
                sa._die(0.0, "replaced after peer's INITIAL_CONTACT")
                self._events += sa.pop_events()

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
        sa.start(now)
        self._collect()
        return sa

    def by_id(self, ike_id: int) -> IkeSA | None:
        """The IKE SA with this number; after a rekey the established successor (same number)."""
        cands = [sa for sa in self.sas if sa.ike_id == ike_id and sa.state != State.DELETED]
        return next((sa for sa in cands if sa.state == State.ESTABLISHED), cands[0] if cands else None)

    def esp_adopt(self, ike_id: int, local: Address, remote: Address, now: float) -> bool:
        """The data plane saw an authenticated ESP packet, newer than all before, from a new
        address: move the IKE SA and its Child SAs there if the connection adopts addresses."""
        sa = self.by_id(ike_id)
        moved = bool(sa and sa.adopt_from_esp(local, remote, now))
        self._collect()
        return moved

    def local_address_changed(self, old_ip: str, new_ip: str, now: float) -> int:
        """Our address old_ip is gone and new_ip replaces it: move the IKE SAs that used it and
        let their peers know (MOBIKE update or an authenticated liveness check)."""
        n = 0
        for sa in list(self.sas):
            if sa.local[0] == old_ip and sa.state == State.ESTABLISHED:
                self._guarded(sa, sa.local_moved, (new_ip, sa.local[1]), now)
                n += 1
        self._collect()
        return n

    def set_activity_probe(self, probe: ActivityProbe | None) -> None:
        """probe(spi_in) -> monotonic time of the last authenticated inbound ESP packet, or None:
        any authenticated packet counts for liveness (dead peer detection)."""
        self.activity_probe = probe
        for sa in self.sas:
            sa.activity_probe = probe

    def find(self, name: str) -> list[IkeSA]:
        return [sa for sa in self.sas if sa.policy and sa.policy.name == name and sa.state != State.DELETED]

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
            sa.delete(now)
            n += 1
        self._collect()
        return n

    def tick(self, now: float) -> None:
        for sa in list(self.sas):
            self._guarded(sa, sa.tick, now)
        self._collect()

    def next_deadline(self) -> float | None:
        times = [t for t in (sa.next_deadline() for sa in self.sas) if t is not None]
        return min(times) if times else None

    def status(self, now: float) -> list[dict[str, Any]]:
        return [sa.status(now) for sa in self.sas if sa.state != State.DELETED]

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

    def _guarded(self, sa: IkeSA, fn: Callable[..., None], *args: Any) -> None:
        """Run one IKE SA step; an internal error kills that IKE SA, never the gateway."""
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - the last line of defence
            self.log("error", "internal error, deleting IKE SA", ike_id=sa.ike_id,
                     connection=sa.name, error=f"{type(e).__name__}: {e}", exc_info=True)
            try:
                sa._die(args[-1], f"internal error: {type(e).__name__}")
            except Exception:  # noqa: BLE001
                sa.state = State.DELETED

    def _half_open(self) -> list[IkeSA]:
        return [sa for sa in self.sas if not sa.initiator and sa.state == State.INIT_DONE]

    def _receive_new_init(self, data: bytes, header: Header, local: Address, remote: Address, now: float) -> None:
        peer = f"{remote[0]}:{remote[1]}"
        # A retransmitted IKE_SA_INIT for a half-open SA: let it answer again.
        for sa in self._half_open():
            if sa.spi_i == header.spi_i and sa.remote == remote:
                try:
                    msg = decode_message(data)
                except ParseError as e:
                    self._drop("malformed IKE_SA_INIT", peer=peer, detail=str(e))
                    return
                self._guarded(sa, sa.receive, data, msg, local, remote, now)
                self._collect()
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
        half_open = len(self._half_open())
        if half_open >= self.half_open_limit:
            self._drop("half-open limit reached", peer=peer, limit=self.half_open_limit)
            return
        nonce = msg.get(P.NoncePayload)
        if half_open >= self.cookie_threshold and nonce is not None:
            expected = self._cookie(nonce.data, remote[0], header.spi_i)
            got = msg.notify(N.COOKIE)
            if got is None or not hmac.compare_digest(got.data, expected):
                self.log("info", "asking for a cookie", peer=peer, half_open=half_open)
                self._answer_unprotected(header.spi_i, X.IKE_SA_INIT, bytes(4), N.COOKIE, expected,
                                         local, remote)
                return
        candidates = [p for p in self.policies if p.matches_addresses(local[0], remote[0])]
        if not candidates:
            self._drop("no connection for these addresses", peer=peer, local=local[0])
            self._answer_unprotected(header.spi_i, X.IKE_SA_INIT, bytes(4), N.NO_PROPOSAL_CHOSEN, b"",
                                     local, remote)
            return
        sa = IkeSA(ike_id=self._new_id(), initiator=False, policy=None, candidates=candidates, local=local,
                   remote=remote, rng=self.rng, now=now, log=self.log, wall_offset=self.wall_offset)
        sa.policy = candidates[0]
        sa.activity_probe = self.activity_probe
        self.sas.append(sa)
        self._guarded(sa, sa.receive, data, msg, local, remote, now)
        if sa.state != State.DELETED:
            self.by_spi[sa.spi_r] = sa
        self._collect()

    def _cookie(self, ni: bytes, ip: str, spi_i: bytes) -> bytes:
        digest = hashlib.sha256(ni + ipaddress.ip_address(ip).packed + spi_i + self._cookie_secret).digest()
        return bytes([self._cookie_version]) + digest[:16]

    def _answer_unprotected(self, spi_i: bytes, exchange: int, mid: bytes, notify: int, data: bytes,
                            local: Address, remote: Address) -> None:
        msg = Message(spi_i, bytes(8), exchange, int.from_bytes(mid, "big"), HeaderFlag.RESPONSE,
                      [P.NotifyPayload(notify_type=notify, data=data)])
        self._out.append((encode_message(msg), local, remote))
