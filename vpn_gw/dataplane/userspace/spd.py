"""Outbound SPD lookup on the shared (policy-based) TUN device: which Child SA carries a clear
packet, with work per packet that does not grow with the number of Child SAs.

Each Child SA's remote selectors (address ranges) are cut into CIDR prefixes and filed in one hash
table per prefix length: ``{prefix length: {network: {child id: child}}}``. A lookup masks the
destination with each prefix length that is present, longest first (at most 33 for IPv4, 129 for
IPv6; in practice one or two), and checks the Child SAs of the bucket it finds, newest first,
against the whole policy (source in the local selectors, protocol and ports). So:

* a remote-access gateway (each client's virtual IP a /32 remote selector) finds a client's
  Child SA with one hash lookup per prefix length present;
* a range selector (``10.0.0.5-10.0.0.9``) is the few prefixes that cover it exactly, the
  equivalent of an interval index with O(address bits) lookups;
* among overlapping selectors the most specific remote prefix wins (strongSwan gives more
  specific policies a higher priority too), and among equal ones the newest Child SA (the one
  after a rekey).

Work per lookup: one dict probe per prefix length present plus the Child SAs checked in a bucket
until one matches. Those are only more than one when Child SAs share a remote prefix but differ in
local selectors or ports (the newest with the same selectors matches first). ``visits`` counts
the Child SAs checked (tests assert it stays bounded).

Flow cache (``flows``): while no Child SA on the device restricts protocol or ports (the usual
case: subnets, virtual IPs), the answer depends only on the packet's two addresses, so the
plane keeps it per address pair (the raw source and destination bytes of the IP header): a
packet of a known flow costs one slice and one dict probe instead of the lookup. Any change of
the index (a Child SA added or removed: install, rekey, delete) empties it; it holds at most
FLOW_CACHE_MAX pairs and is emptied when full.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar

BITS = {4: 32, 6: 128}
FLOW_CACHE_MAX = 4096


class _Ranged(Protocol):
    version: int
    lo: int
    hi: int


class _HasRemote(Protocol):
    @property
    def remote_ts(self) -> list: ...


C = TypeVar("C", bound=_HasRemote)


def prefixes(lo: int, hi: int, bits: int) -> Iterator[tuple[int, int]]:
    """The CIDR blocks (prefix length, network) that cover [lo, hi] exactly, in order."""
    while lo <= hi:
        size = lo & -lo if lo else 1 << bits
        while size > hi - lo + 1:
            size >>= 1
        yield bits + 1 - size.bit_length(), lo
        lo += size


def _mask(plen: int, bits: int) -> int:
    return ((1 << bits) - 1) ^ ((1 << (bits - plen)) - 1)


class OutboundIndex(Generic[C]):
    def __init__(self) -> None:
        # version -> prefix length -> network -> {id(child): child} (insertion order: newest last)
        self._tables: dict[int, dict[int, dict[int, dict[int, C]]]] = {4: {}, 6: {}}
        # version -> [(prefix length, mask)], longest first
        self._lengths: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        self._filed: dict[int, list[tuple[int, int, int]]] = {}  # id(child) -> (version, plen, net)
        self.visits = 0  # Child SAs checked by lookups (for tests)
        self.flows: dict[bytes, C] = {}  # address pair -> Child SA (see above)
        self._restricted: set[int] = set()  # id() of Child SAs whose policy looks at more than addresses

    def __len__(self) -> int:
        return len(self._filed)

    def add(self, child: C, addresses_only: bool = False) -> None:
        """File a Child SA; ``addresses_only``: its policy restricts no protocol or port (its
        packets' answers may then be kept in ``flows``)."""
        self.flows.clear()
        if not addresses_only:
            self._restricted.add(id(child))
        keys: list[tuple[int, int, int]] = []
        for sel in child.remote_ts:
            bits = BITS.get(sel.version)
            if bits is None:
                continue
            for plen, net in prefixes(sel.lo, sel.hi, bits):
                table = self._tables[sel.version]
                by_net = table.get(plen)
                if by_net is None:
                    by_net = table[plen] = {}
                    self._lengths[sel.version] = sorted(((p, _mask(p, bits)) for p in table), reverse=True)
                by_net.setdefault(net, {})[id(child)] = child
                keys.append((sel.version, plen, net))
        self._filed[id(child)] = keys

    def remove(self, child: C) -> None:
        self.flows.clear()
        self._restricted.discard(id(child))
        for version, plen, net in self._filed.pop(id(child), ()):
            table = self._tables[version]
            by_net = table.get(plen)
            if by_net is None:
                continue
            bucket = by_net.get(net)
            if bucket is None:
                continue
            bucket.pop(id(child), None)
            if not bucket:
                del by_net[net]
                if not by_net:
                    del table[plen]
                    self._lengths[version] = [(p, m) for p, m in self._lengths[version] if p != plen]

    def lookup(self, version: int, dst: int, matches: Callable[[C], bool]) -> C | None:
        """The Child SA for a packet to ``dst``: the most specific remote prefix holding it, the
        newest Child SA there for which ``matches`` (the rest of the policy check) holds."""
        table = self._tables.get(version)
        if not table:
            return None
        for plen, mask in self._lengths[version]:
            bucket = table[plen].get(dst & mask)
            if bucket is None:
                continue
            for c in reversed(bucket.values()):
                self.visits += 1
                if matches(c):
                    return c
        return None

    def remember(self, pair: bytes, child: C) -> None:
        """Keep ``child`` as the answer for packets with this address pair, if every Child SA
        filed here is decided by addresses alone."""
        if self._restricted:
            return
        flows = self.flows
        if len(flows) >= FLOW_CACHE_MAX:
            flows.clear()
        flows[pair] = child
