"""Two IKE managers wired together in memory, with a deterministic clock and network."""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from ikev2.constants import ProtocolId
from ikev2.crypto.proposals import parse_proposal
from ikev2.identity import Identity, IdentityPattern
from ikev2.manager import IkeManager
from ikev2.payloads import TrafficSelector
from ikev2.policy import AuthConfig, ChildPolicy, IkePolicy


class DetRandom:
    """Deterministic random source: SHA-256 in counter mode over a seed."""

    def __init__(self, seed: str):
        self.seed = seed.encode()
        self.counter = 0

    def __call__(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.sha256(self.seed + self.counter.to_bytes(8, "big")).digest()
            self.counter += 1
        return out[:n]


def child(name="net", local="10.1.0.0/24", remote="10.2.0.0/24", esp=("aes256gcm16",), **kw) -> ChildPolicy:
    return ChildPolicy(name=name, local_ts=[TrafficSelector.from_network(local)],
                       remote_ts=[TrafficSelector.from_network(remote)],
                       esp_proposals=[parse_proposal(p, ProtocolId.ESP) for p in esp], **kw)


def psk_policy(name, local_id, remote_id, local_addr, remote_addr, children, psk=b"correct horse battery",
               ike=("aes256gcm16-prfsha256-x25519",), **kw) -> IkePolicy:
    return IkePolicy(name=name, local_id=Identity.parse(local_id), remote_id=IdentityPattern(remote_id),
                     local_auth=AuthConfig("psk", psk=psk), remote_auth=AuthConfig("psk", psk=psk),
                     ike_proposals=[parse_proposal(p, ProtocolId.IKE) for p in ike], children=children,
                     local_addrs=[local_addr], remote_addrs=[remote_addr], **kw)


@dataclass
class Link:
    """Delivers datagrams between two managers; can drop, duplicate or reorder."""
    a: IkeManager
    b: IkeManager
    addr_a: str
    addr_b: str
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    seed: int = 1
    now: float = 0.0
    trace: list = field(default_factory=list)
    events_a: list = field(default_factory=list)
    events_b: list = field(default_factory=list)
    drop_filter: object = None  # callable(datagram, src, dst) -> bool (True = drop)

    def __post_init__(self):
        self.rnd = random.Random(self.seed)

    def _deliver_all(self, max_rounds=200):
        for _ in range(max_rounds):
            batch = []
            for mgr, other in ((self.a, self.b), (self.b, self.a)):
                for data, src, dst in mgr.pop_datagrams():
                    batch.append((other, data, src, dst))
            self.events_a += self.a.pop_events()
            self.events_b += self.b.pop_events()
            if not batch:
                return
            if self.reorder and len(batch) > 1 and self.rnd.random() < self.reorder:
                self.rnd.shuffle(batch)
            for other, data, src, dst in batch:
                self.trace.append((self.now, src, dst, data))
                if self.drop_filter and self.drop_filter(data, src, dst):
                    continue
                if self.loss and self.rnd.random() < self.loss:
                    continue
                copies = 2 if self.duplicate and self.rnd.random() < self.duplicate else 1
                for _ in range(copies):
                    other.receive(data, dst, src, self.now)
        raise AssertionError("datagram storm: more than max_rounds exchanges without quiescence")

    def run(self, until: float, step: float = 0.5):
        """Advance time to ``until`` (bounded), delivering datagrams and firing timers."""
        self._deliver_all()
        while self.now < until:
            deadlines = [d for d in (self.a.next_deadline(), self.b.next_deadline()) if d is not None]
            nxt = min(deadlines + [until])
            self.now = max(self.now + 1e-3, min(nxt, until))
            self.a.tick(self.now)
            self.b.tick(self.now)
            self._deliver_all()

    def settle(self):
        self._deliver_all()


def pair(policy_a: IkePolicy, policy_b: IkePolicy, seed="x", **link_kw):
    a = IkeManager([policy_a], DetRandom(seed + "a"))
    b = IkeManager([policy_b], DetRandom(seed + "b"))
    return Link(a, b, policy_a.local_addrs[0], policy_b.local_addrs[0], **link_kw)


def site_to_site(**kw):
    hq = psk_policy("branch1", "hq.example.org", "branch1.example.org", "192.0.2.1", "198.51.100.1",
                    [child("net", "10.1.0.0/24", "10.2.0.0/24")], **kw)
    br = psk_policy("hq", "branch1.example.org", "hq.example.org", "198.51.100.1", "192.0.2.1",
                    [child("net", "10.2.0.0/24", "10.1.0.0/24")], **kw)
    return hq, br


def hold_copies(mgr: IkeManager, template, n: int, first_id: int = 1_000_000, setup=None) -> list:
    """Make ``mgr`` hold ``n`` more IKE SAs: copies of ``template`` (a really established SA)
    with their own SPI and number and no Child SAs, filed in every index and timer like real
    ones, without paying for ``n`` handshakes (scale tests and bench/ike_init_cost.py).
    ``setup(sa, i)`` may adjust each copy before the manager files it."""
    import copy
    made = []
    for i in range(n):
        sa = copy.copy(template)
        sa.ike_id = first_id + i
        sa.spi_r = (first_id + i).to_bytes(8, "big")
        sa.children = []
        sa._out, sa._events, sa.successors, sa.queue = [], [], [], []
        if hasattr(sa, "on_change"):
            sa.on_change = None
        if setup is not None:
            setup(sa, i)
        mgr._add(sa)
        made.append(sa)
    mgr.pop_datagrams()
    mgr.pop_events()
    mgr.next_deadline()
    return made
