"""Indexes over the IKE SAs of a manager: every lookup the manager and the daemon make is a hash
lookup, never a scan of all SAs.

The index keeps, per SA, the keys it was filed under. ``update(sa)`` recomputes them (a few
attribute reads, plus one per Child SA of that SA) and moves the SA where a key changed; the
manager calls it for every SA that changed during an operation, so the cost of an event does not
depend on how many SAs exist. ``remove(sa)`` is O(1) in the number of SAs.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from .admission import address_key
from .events import Address
from .sa_common import State
from .sa_core import IkeSACore

S = TypeVar("S", bound=IkeSACore)

NO_SPI = bytes(8)


# The keys an SA is filed under, as a plain tuple (built and compared for every SA that changed
# during an operation: a tuple is the cheapest to build and compare). Positions:
SPI, IKE_ID, NAME, PEER_ID, REMOTE_IP, LOCAL_IP, STATE, HALF_OPEN, VERIFIED, CHILDREN = range(10)
# our_spi: bytes | None; ike_id: int; name: str; peer_id: str | None; remote_ip, local_ip: str;
# state: State; half_open: (SPIi, peer address) of a responder in INIT_DONE (or computing its
# keys), else None; verified: admitted with a valid COOKIE (set before filing, never changes);
# children: frozenset of its Child SAs' inbound SPIs.
_Keys = tuple[Any, ...]
_NO_CHILDREN: frozenset[bytes] = frozenset()


def _keys(sa: IkeSACore) -> _Keys:
    spi = sa.our_spi
    state = sa.state
    half_open = (sa.spi_i, sa.remote) if not sa.initiator and (state == State.INIT_DONE or sa.computing_init) \
        else None
    peer_id = sa.peer_id
    children = sa.children
    return (spi if spi and spi != NO_SPI else None, sa.ike_id, sa.name,
            str(peer_id) if peer_id is not None else None, sa.remote[0], sa.local[0], state,
            half_open, sa.admitted_with_cookie,
            frozenset([c.spi_in for c in children]) if children else _NO_CHILDREN)


class _Multi(Generic[S]):
    """key -> the SAs filed under it, in insertion order. A key with one SA maps to the SA itself
    (most keys: an SA number, a peer address or identity, have one), more to an ordered set."""

    __slots__ = ("_map",)

    def __init__(self) -> None:
        self._map: dict[object, S | dict[S, None]] = {}

    def add(self, key: object, sa: S) -> None:
        if key is None:
            return
        cur = self._map.get(key)
        if cur is None:
            self._map[key] = sa
        elif isinstance(cur, dict):
            cur[sa] = None
        elif cur is not sa:
            self._map[key] = {cur: None, sa: None}

    def discard(self, key: object, sa: S) -> None:
        cur = self._map.get(key)
        if cur is sa:
            del self._map[key]
        elif isinstance(cur, dict):
            cur.pop(sa, None)
            if len(cur) == 1:
                self._map[key] = next(iter(cur))

    def get(self, key: object) -> list[S]:
        cur = self._map.get(key)
        if cur is None:
            return []
        return list(cur) if isinstance(cur, dict) else [cur]


class SAIndex(Generic[S]):
    """All IKE SAs of one manager and the indexes over them."""

    def __init__(self) -> None:
        self._sas: dict[S, _Keys] = {}
        self.by_spi: dict[bytes, S] = {}  # our SPI (SPIr as responder, SPIi as initiator)
        self._half_open: dict[tuple[bytes, Address], S] = {}
        self._half_open_per_ip: Counter[str] = Counter()
        # of those, the ones admitted without a COOKIE (maybe spoofed), oldest first
        self._unverified_half_open: dict[str, dict[S, None]] = {}
        self._children: dict[bytes, S] = {}  # Child SA inbound SPI -> its IKE SA
        self._by_id: _Multi[S] = _Multi()
        self._by_name: _Multi[S] = _Multi()
        self._by_peer_id: _Multi[S] = _Multi()
        self._by_remote_ip: _Multi[S] = _Multi()
        self._by_local_ip: _Multi[S] = _Multi()
        # the _Keys position each multi-index files an SA under (update() and _unfile() walk it)
        self._multi_fields: tuple[tuple[int, _Multi[S]], ...] = (
            (IKE_ID, self._by_id), (NAME, self._by_name), (PEER_ID, self._by_peer_id),
            (REMOTE_IP, self._by_remote_ip), (LOCAL_IP, self._by_local_ip))
        self._states: Counter[State] = Counter()

    # ------------------------------------------------------------------ maintenance

    def __len__(self) -> int:
        return len(self._sas)

    def __contains__(self, sa: object) -> bool:
        return sa in self._sas

    def __iter__(self) -> Iterator[S]:
        return iter(list(self._sas))

    def update(self, sa: S) -> None:
        """File ``sa`` under its current keys (adds it if new)."""
        new = _keys(sa)
        old = self._sas.get(sa)
        if old == new:
            return
        if old is not None:
            self._unfile(sa, old, new)
        self._file(sa, new, old)
        self._sas[sa] = new

    def remove(self, sa: S) -> None:
        old = self._sas.pop(sa, None)
        if old is not None:
            self._unfile(sa, old, None)

    def _file(self, sa: S, k: _Keys, old: _Keys | None) -> None:
        spi = k[SPI]
        if spi is not None and (old is None or old[SPI] != spi):
            self.by_spi[spi] = sa
        half_open = k[HALF_OPEN]
        if half_open is not None and (old is None or old[HALF_OPEN] != half_open):
            self._half_open[half_open] = sa
            key = address_key(half_open[1][0])
            self._half_open_per_ip[key] += 1
            if not k[VERIFIED]:
                self._unverified_half_open.setdefault(key, {})[sa] = None
        if k[CHILDREN]:
            for child_spi in k[CHILDREN] - (old[CHILDREN] if old is not None else _NO_CHILDREN):
                self._children[child_spi] = sa
        for pos, index in self._multi_fields:
            value = k[pos]
            if old is None or old[pos] != value:
                index.add(value, sa)
        if old is None or old[STATE] != k[STATE]:
            self._states[k[STATE]] += 1

    def _unfile(self, sa: S, k: _Keys, new: _Keys | None) -> None:
        """Remove the entries of ``k`` that ``new`` (None: nothing) does not keep."""
        spi = k[SPI]
        if spi is not None and (new is None or new[SPI] != spi) and self.by_spi.get(spi) is sa:
            del self.by_spi[spi]
        half_open = k[HALF_OPEN]
        if half_open is not None and (new is None or new[HALF_OPEN] != half_open) \
                and self._half_open.get(half_open) is sa:
            del self._half_open[half_open]
            ip = address_key(half_open[1][0])
            self._half_open_per_ip[ip] -= 1
            if self._half_open_per_ip[ip] <= 0:
                del self._half_open_per_ip[ip]
            if not k[VERIFIED]:
                unverified = self._unverified_half_open.get(ip)
                if unverified is not None:
                    unverified.pop(sa, None)
                    if not unverified:
                        del self._unverified_half_open[ip]
        if k[CHILDREN]:
            for child_spi in k[CHILDREN] - (new[CHILDREN] if new is not None else _NO_CHILDREN):
                if self._children.get(child_spi) is sa:
                    del self._children[child_spi]
        for pos, index in self._multi_fields:
            value = k[pos]
            if new is None or new[pos] != value:
                index.discard(value, sa)
        if new is None or new[STATE] != k[STATE]:
            self._states[k[STATE]] -= 1
            if self._states[k[STATE]] <= 0:
                del self._states[k[STATE]]

    # ------------------------------------------------------------------ lookups

    def all(self) -> list[S]:
        return list(self._sas)

    def half_open(self, spi_i: bytes, remote: Address) -> S | None:
        return self._half_open.get((spi_i, remote))

    def half_open_count(self, ip: str | None = None) -> int:
        """Responder SAs waiting for IKE_AUTH, in all or from one peer address (an IPv6 address:
        from its /64, see ikev2.admission.address_key)."""
        return len(self._half_open) if ip is None else self._half_open_per_ip.get(address_key(ip), 0)

    def oldest_unverified_half_open(self, ip: str) -> S | None:
        """The oldest responder SA waiting for IKE_AUTH from ``ip`` (IPv6: its /64) that was
        admitted without a COOKIE (its IKE_SA_INIT may have been spoofed), or None."""
        unverified = self._unverified_half_open.get(address_key(ip))
        return next(iter(unverified)) if unverified else None

    def child_owner(self, spi_in: bytes) -> S | None:
        return self._children.get(spi_in)

    def with_id(self, ike_id: int) -> list[S]:
        return self._by_id.get(ike_id)

    def with_name(self, name: str) -> list[S]:
        return self._by_name.get(name)

    def with_peer_id(self, peer_id: str) -> list[S]:
        return self._by_peer_id.get(peer_id)

    def with_remote_ip(self, ip: str) -> list[S]:
        return self._by_remote_ip.get(ip)

    def with_local_ip(self, ip: str) -> list[S]:
        return self._by_local_ip.get(ip)

    def count_by_state(self) -> dict[str, int]:
        return {state.value: n for state, n in self._states.items()}

    def child_count(self) -> int:
        return len(self._children)
