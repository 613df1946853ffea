"""Virtual IP address pools for remote-access clients, with sticky leases and persistence.

* ``AddressPool(name, addrs, exclude=...)``: the addresses of one ``[[pool]]`` (a CIDR or a
  range ``"10.99.0.10-10.99.0.200"``) and the leases binding them to client identities.
  ``acquire(identity)`` returns an address (or None when the pool is exhausted),
  ``release(identity)`` takes the lease offline; an offline lease stays bound to its identity,
  so the same identity gets the same address back when it reconnects. Only when no address was
  ever free is the oldest offline lease given to someone else.
* ``LeaseStore(path)``: one pool's leases in a JSON file, written atomically (temp file in the
  same directory, fsync, rename), so they survive a daemon restart.
* ``PoolSet``: the pools of a configuration by name, with their stores; what the daemon holds.

No threads, no clock reads: times (``now``, seconds, e.g. ``time.time()``) are passed in and only
order offline leases (oldest first for reuse, ``prune``). Nothing here does I/O except
``LeaseStore`` and ``PoolSet.load``/``save``. See docs/remote-access.md.
"""
from __future__ import annotations

import bisect
import dataclasses
import heapq
import ipaddress
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Lease", "AddressPool", "LeaseStore", "LeaseFileError", "PoolSet", "parse_pool_addrs",
    "DEFAULT_LEASE_DIR", "default_lease_file",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_LEASE_DIR = Path("/var/lib/vpn-gw")
LEASE_FILE_FORMAT = 1


def default_lease_file(pool_name: str) -> Path:
    """Where a pool's leases are kept unless ``lease_file`` says otherwise: systemd's
    StateDirectory= ($STATE_DIRECTORY) when set, else /var/lib/vpn-gw."""
    d = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return (Path(d) if d else DEFAULT_LEASE_DIR) / f"pool-{pool_name}.json"


# --------------------------------------------------------------------------------------------
# Address ranges


def parse_pool_addrs(text: str | IPNetwork) -> tuple[IPAddress, IPAddress, IPNetwork | None]:
    """``"10.99.0.0/24"`` / ``"10.99.0.10-10.99.0.200"`` / ``"2001:db8:99::/112"`` / a single
    address -> (first, last, network or None for a range), the addresses as written (no skipping
    of network/broadcast addresses: that is ``AddressPool``'s business).

    ValueError says what is wrong: not an address/CIDR/range, host bits set in a CIDR (with the
    network it probably means), mixed families or a reversed range.
    """
    if isinstance(text, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return text[0], text[-1], text
    if not isinstance(text, str):
        raise ValueError(f"expected a CIDR or a range string, got {type(text).__name__}")
    s = text.strip()
    if "-" in s:
        a_text, _, b_text = s.partition("-")
        try:
            a = ipaddress.ip_address(a_text.strip())
            b = ipaddress.ip_address(b_text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not a range of two addresses like "
                             f"'10.99.0.10-10.99.0.200'") from None
        if a.version != b.version:
            raise ValueError(f"range {text!r} mixes IPv{a.version} and IPv{b.version}")
        if int(a) > int(b):
            raise ValueError(f"range {text!r} is reversed (did you mean '{b}-{a}'?)")
        return a, b, None
    try:
        net = ipaddress.ip_network(s, strict=True)
    except ValueError:
        try:
            loose = ipaddress.ip_network(s, strict=False)
        except ValueError:
            raise ValueError(f"{text!r} is neither a CIDR subnet (10.99.0.0/24) nor a range "
                             f"(10.99.0.10-10.99.0.200)") from None
        raise ValueError(f"{text!r} has host bits set (did you mean '{loose}', or a range "
                         f"'{ipaddress.ip_interface(s).ip}-{loose[-1]}'?)") from None
    return net[0], net[-1], net


def _usable_bounds(first: IPAddress, last: IPAddress, net: IPNetwork | None) -> tuple[int, int]:
    """Integer bounds of the addresses handed out. A CIDR pool skips its first address (the
    IPv4 network address / the IPv6 Subnet-Router anycast address) and, for IPv4 prefixes up to
    /30, its last (broadcast) address. Ranges are used as written."""
    lo, hi = int(first), int(last)
    if net is not None:
        if net.version == 4 and net.prefixlen <= 30:
            lo, hi = lo + 1, hi - 1
        elif net.version == 6 and net.prefixlen <= 126:
            lo += 1
    return lo, hi


def _exclude_bounds(item: Any, version: int) -> tuple[int, int] | None:
    if isinstance(item, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return (int(item), int(item)) if item.version == version else None
    if isinstance(item, (ipaddress.IPv4Interface, ipaddress.IPv6Interface)):
        return (int(item.ip), int(item.ip)) if item.version == version else None
    if isinstance(item, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return (int(item[0]), int(item[-1])) if item.version == version else None
    if isinstance(item, str):
        s = item.strip()
        if "-" in s:
            a, b, _ = parse_pool_addrs(s)
            return (int(a), int(b)) if a.version == version else None
        if "/" in s:
            return _exclude_bounds(ipaddress.ip_network(s, strict=False), version)
        return _exclude_bounds(ipaddress.ip_address(s), version)
    raise TypeError(f"cannot exclude {item!r}: expected an address, network or range")


# --------------------------------------------------------------------------------------------
# Leases and pools


@dataclass(frozen=True)
class Lease:
    """One address bound to one identity. ``online`` counts the holders (acquires not yet
    released; 0 = offline); ``since`` is the time of the last acquire (online) or of going
    offline."""
    address: IPAddress
    identity: str
    online: int = 0
    since: float = 0.0

    @property
    def is_online(self) -> bool:
        return self.online > 0


def _check_identity(identity: str) -> str:
    if not isinstance(identity, str):
        raise TypeError(f"identity must be a str (e.g. str(ikev2 Identity)), "
                        f"not {type(identity).__name__}")
    if not identity:
        raise ValueError("identity must not be empty")
    return identity


class AddressPool:
    """One pool of virtual IPs. Thread-free; not safe for concurrent use from threads.

    ``addrs``: a CIDR (``"10.99.0.0/24"``: network and, for IPv4 up to /30, broadcast address
    not handed out), a range (``"10.99.0.10-10.99.0.200"``, inclusive, all handed out), or a
    single address. ``exclude``: addresses, networks or ranges never handed out (outside the
    pool or of the other family: ignored).

    New addresses are handed out lowest first. Invariants: one lease per identity, one identity
    per address; ``size == online + offline + free``.
    """

    def __init__(self, name: str, addrs: str | IPNetwork, exclude: Iterable[Any] = ()):
        self.name = name
        first, last, net = parse_pool_addrs(addrs)
        self.network: IPNetwork | None = net
        self.addrs: str = str(net) if net is not None else f"{first}-{last}"
        self.version: int = first.version
        self._cls = ipaddress.IPv4Address if self.version == 4 else ipaddress.IPv6Address
        self._lo, self._hi = _usable_bounds(first, last, net)
        ex: list[tuple[int, int]] = []
        for item in exclude:
            b = _exclude_bounds(item, self.version)
            if b is None:
                continue
            lo, hi = max(b[0], self._lo), min(b[1], self._hi)
            if lo <= hi:
                ex.append((lo, hi))
        ex.sort()
        merged: list[list[int]] = []
        for lo, hi in ex:
            if merged and lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        self._ex_lo = [m[0] for m in merged]
        self._ex_hi = [m[1] for m in merged]
        total = self._hi - self._lo + 1 if self._hi >= self._lo else 0
        self.size: int = total - sum(hi - lo + 1 for lo, hi in merged)

        self._by_id: dict[str, Lease] = {}
        self._by_addr: dict[int, Lease] = {}
        self._cursor = self._lo          # every usable address below it has been handed out once
        self._free: list[int] = []       # heap: handed out once, lease since dropped
        self._offline: list[tuple[float, int, int]] = []  # heap (since, seq, addr), lazily pruned
        self._stamp: dict[int, int] = {}  # addr -> seq of its current offline heap entry
        self._seq = 0
        self.changes = 0                 # bumped on every state change (persistence)

    # -- queries ---------------------------------------------------------------------------
    @property
    def first(self) -> IPAddress:
        """The lowest address handed out (after skipping the network address)."""
        return self._cls(self._lo)

    @property
    def last(self) -> IPAddress:
        return self._cls(self._hi)

    def _excluded(self, n: int) -> bool:
        i = bisect.bisect_right(self._ex_lo, n) - 1
        return i >= 0 and n <= self._ex_hi[i]

    def __contains__(self, address: Any) -> bool:
        """Whether the address is one this pool hands out."""
        try:
            a = ipaddress.ip_address(address)
        except ValueError:
            return False
        n = int(a)
        return a.version == self.version and self._lo <= n <= self._hi and not self._excluded(n)

    def lease(self, identity: str) -> Lease | None:
        return self._by_id.get(identity)

    def owner(self, address: Any) -> Lease | None:
        a = ipaddress.ip_address(address)
        return self._by_addr.get(int(a)) if a.version == self.version else None

    def leases(self) -> list[Lease]:
        """All leases (online and offline), by address."""
        return [self._by_addr[k] for k in sorted(self._by_addr)]

    @property
    def online(self) -> int:
        return sum(1 for lease in self._by_id.values() if lease.online)

    @property
    def offline(self) -> int:
        return len(self._by_id) - self.online

    @property
    def free(self) -> int:
        """Addresses bound to no identity (offline leases not counted)."""
        return self.size - len(self._by_addr)

    def __repr__(self):
        return (f"AddressPool({self.name!r}, {self.addrs!r}, size={self.size}, "
                f"online={self.online}, offline={self.offline})")

    # -- changes ---------------------------------------------------------------------------
    def acquire(self, identity: str, *, now: float = 0.0, requested: Any = None,
                reclaim: bool = True) -> IPAddress | None:
        """An address for identity, or None when the pool is exhausted.

        In order: the identity's own lease (online or offline: sticky; a second concurrent
        acquire of an online lease returns the same address and counts another holder); the
        ``requested`` address if it belongs to the pool and is bound to nobody; the lowest free
        address; with ``reclaim``, the oldest offline lease of another identity (which loses it).
        """
        _check_identity(identity)
        lease = self._by_id.get(identity)
        if lease is not None:
            self._put(dataclasses.replace(lease, online=lease.online + 1, since=now))
            return lease.address
        n = None
        if requested is not None:
            try:
                r = ipaddress.ip_address(requested)
            except ValueError:
                r = None
            if r is not None and r in self and int(r) not in self._by_addr:
                n = int(r)
        if n is None:
            n = self._next_free()
        if n is None and reclaim:
            n = self._reclaim()
        if n is None:
            return None
        self._put(Lease(self._cls(n), identity, 1, now))
        return self._cls(n)

    def release(self, identity: str, *, now: float = 0.0) -> IPAddress | None:
        """Drop one holder of identity's lease; with none left the lease goes offline (still
        bound to the identity). Returns the address, or None if the identity held nothing
        online (a release too many is harmless)."""
        lease = self._by_id.get(identity)
        if lease is None or not lease.online:
            return None
        online = lease.online - 1
        self._put(dataclasses.replace(lease, online=online, since=now if not online else lease.since))
        return lease.address

    def forget(self, identity: str) -> IPAddress | None:
        """Remove identity's lease altogether (online or not); its address becomes free."""
        lease = self._by_id.get(identity)
        if lease is None:
            return None
        self._drop(lease)
        return lease.address

    def prune(self, older_than: float) -> list[Lease]:
        """Remove offline leases that went offline before ``older_than``; returns them."""
        gone = [x for x in self._by_id.values() if not x.online and x.since < older_than]
        for x in gone:
            self._drop(x)
        return sorted(gone, key=lambda x: int(x.address))

    def restore(self, leases: Iterable[Lease]) -> list[tuple[Lease, str]]:
        """Load leases (from a ``LeaseStore``) as offline leases, oldest first for reuse.

        Returns the ones not taken, each with why: outside the pool (its range or exclusions
        changed), or address/identity already bound.
        """
        rejected: list[tuple[Lease, str]] = []
        for x in sorted(leases, key=lambda y: (y.since, int(y.address))):
            if x.address not in self:
                rejected.append((x, f"{x.address} is not in pool {self.name!r} ({self.addrs})"))
            elif int(x.address) in self._by_addr:
                rejected.append((x, f"{x.address} is already leased to "
                                    f"{self._by_addr[int(x.address)].identity!r}"))
            elif x.identity in self._by_id:
                rejected.append((x, f"identity {x.identity!r} already has "
                                    f"{self._by_id[x.identity].address}"))
            else:
                self._put(Lease(x.address, _check_identity(x.identity), 0, float(x.since)))
        return rejected

    # -- internals -------------------------------------------------------------------------
    def _put(self, lease: Lease) -> None:
        n = int(lease.address)
        self._by_id[lease.identity] = lease
        self._by_addr[n] = lease
        self._stamp.pop(n, None)
        if not lease.online:
            self._seq += 1
            self._stamp[n] = self._seq
            heapq.heappush(self._offline, (lease.since, self._seq, n))
        self.changes += 1

    def _drop(self, lease: Lease) -> None:
        n = int(lease.address)
        del self._by_id[lease.identity]
        del self._by_addr[n]
        self._stamp.pop(n, None)
        heapq.heappush(self._free, n)
        self.changes += 1

    def _next_free(self) -> int | None:
        while self._free:
            n = self._free[0]
            if n in self._by_addr or n >= self._cursor:
                heapq.heappop(self._free)      # taken by request, or the cursor covers it
                continue
            break
        while self._cursor <= self._hi:
            c = self._cursor
            i = bisect.bisect_right(self._ex_lo, c) - 1
            if i >= 0 and c <= self._ex_hi[i]:
                self._cursor = self._ex_hi[i] + 1
                continue
            if c in self._by_addr:
                self._cursor += 1
                continue
            break
        candidates = []
        if self._free:
            candidates.append(self._free[0])
        if self._cursor <= self._hi:
            candidates.append(self._cursor)
        if not candidates:
            return None
        n = min(candidates)
        if self._free and n == self._free[0]:
            heapq.heappop(self._free)
        else:
            self._cursor += 1
        return n

    def _reclaim(self) -> int | None:
        while self._offline:
            _since, seq, n = heapq.heappop(self._offline)
            if self._stamp.get(n) != seq:
                continue                       # stale: the lease changed since
            lease = self._by_addr[n]
            del self._by_id[lease.identity]
            del self._by_addr[n]
            del self._stamp[n]
            return n
        return None


# --------------------------------------------------------------------------------------------
# Persistence


class LeaseFileError(ValueError):
    """A lease file exists but cannot be read (``unreadable``) or is not a valid lease file."""

    def __init__(self, message: str, *, unreadable: bool = False):
        super().__init__(message)
        self.unreadable = unreadable


class LeaseStore:
    """One pool's leases in a JSON file::

        {"format": 1, "pool": "rw", "addrs": "10.99.0.0/24",
         "leases": [{"address": "10.99.0.1", "identity": "alice@example.org", "since": 1795656075.5}]}

    ``save`` writes atomically: a temporary file in the same directory (mode 0600), fsync,
    ``os.replace``, fsync of the directory; the directory is created (mode 0700) if missing.
    A reader never sees a half-written file.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self):
        return f"LeaseStore({str(self.path)!r})"

    def load(self) -> list[Lease]:
        """The stored leases (all offline); [] if the file does not exist. Raises
        ``LeaseFileError`` naming the file for an unreadable or malformed one."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as e:
            raise LeaseFileError(f"{self.path}: cannot read lease file: {e.strerror or e}",
                                 unreadable=True) from None
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise LeaseFileError(f"{self.path}: not a JSON lease file ({e})") from None
        if not isinstance(doc, dict) or doc.get("format") != LEASE_FILE_FORMAT:
            raise LeaseFileError(f"{self.path}: not a lease file of format {LEASE_FILE_FORMAT}")
        items = doc.get("leases")
        if not isinstance(items, list):
            raise LeaseFileError(f"{self.path}: 'leases' must be a list")
        out = []
        for i, item in enumerate(items):
            try:
                if not isinstance(item, dict):
                    raise ValueError("not an object")
                ident = item.get("identity")
                since = item.get("since", 0.0)
                if not isinstance(ident, str) or not ident:
                    raise ValueError("identity must be a non-empty string")
                if isinstance(since, bool) or not isinstance(since, (int, float)):
                    raise ValueError("since must be a number")
                addr = item.get("address")
                if not isinstance(addr, str):
                    raise ValueError("address must be a string")
                out.append(Lease(ipaddress.ip_address(addr), ident, 0, float(since)))
            except ValueError as e:
                raise LeaseFileError(f"{self.path}: lease #{i + 1}: {e}") from None
        return out

    def save(self, pool: AddressPool) -> None:
        """Write the pool's leases (online ones too: after a restart they come back offline)."""
        doc = {"format": LEASE_FILE_FORMAT, "pool": pool.name, "addrs": pool.addrs,
               "leases": [{"address": str(x.address), "identity": x.identity, "since": x.since}
                          for x in pool.leases()]}
        data = json.dumps(doc, indent=1, ensure_ascii=False).encode() + b"\n"
        d = self.path.parent
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        try:
            dfd = os.open(d, os.O_RDONLY)
        except OSError:  # pragma: no cover - directories that cannot be opened
            return
        try:
            os.fsync(dfd)
        except OSError:  # pragma: no cover - file systems without directory fsync
            pass
        finally:
            os.close(dfd)


# --------------------------------------------------------------------------------------------
# Several pools


class PoolSet:
    """The pools of a configuration by name, each with an optional ``LeaseStore``."""

    def __init__(self, pools: Iterable[AddressPool] = (),
                 stores: Mapping[str, LeaseStore] | None = None):
        self._pools: dict[str, AddressPool] = {}
        for p in pools:
            if p.name in self._pools:
                raise ValueError(f"duplicate pool name {p.name!r}")
            self._pools[p.name] = p
        self.stores: dict[str, LeaseStore] = dict(stores or {})
        unknown = set(self.stores) - set(self._pools)
        if unknown:
            raise ValueError(f"lease stores for unknown pools: {', '.join(sorted(unknown))}")
        self._saved: dict[str, int] = {}

    @classmethod
    def from_config(cls, pools: Iterable[Any], *, exclude: Iterable[Any] = (),
                    persist: bool = True) -> PoolSet:
        """From ``vpn_gw.config.PoolConfig`` objects (anything with ``name``, ``addrs`` and
        ``lease_file``). ``exclude``: addresses never handed out by any pool (e.g. the
        gateway's own). Leases are not loaded yet: call ``load()``."""
        exclude = list(exclude)
        objs, stores = [], {}
        for pc in pools:
            objs.append(AddressPool(pc.name, pc.addrs, exclude))
            if persist and getattr(pc, "lease_file", None) is not None:
                stores[pc.name] = LeaseStore(pc.lease_file)
        return cls(objs, stores)

    # -- mapping ---------------------------------------------------------------------------
    def __getitem__(self, name: str) -> AddressPool:
        return self._pools[name]

    def __contains__(self, name: object) -> bool:
        return name in self._pools

    def __iter__(self) -> Iterator[AddressPool]:
        return iter(self._pools.values())

    def __len__(self) -> int:
        return len(self._pools)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._pools)

    # -- leases ----------------------------------------------------------------------------
    def acquire(self, names: Sequence[str], identity: str, version: int, *, now: float = 0.0,
                requested: Any = None) -> tuple[str, IPAddress] | None:
        """An address of the given family (4 or 6) from the first suitable of the named pools
        (a connection's ``pools``): returns (pool name, address) or None.

        Order: a pool where the identity already has a lease (sticky across pools); the pool
        containing ``requested``; then each pool in order for a free address; only then each
        pool in order reclaiming its oldest offline lease. Unknown names raise KeyError.
        """
        cands = [self._pools[n] for n in names]
        cands = [p for p in cands if p.version == version]
        for p in cands:
            if p.lease(identity) is not None and (a := p.acquire(identity, now=now)) is not None:
                return p.name, a
        if requested is not None:
            for p in cands:
                if requested in p and p.owner(requested) is None and \
                        (a := p.acquire(identity, now=now, requested=requested)) is not None:
                    return p.name, a
        for reclaim in (False, True):
            for p in cands:
                a = p.acquire(identity, now=now, reclaim=reclaim)
                if a is not None:
                    return p.name, a
        return None

    def release(self, identity: str, *, names: Iterable[str] | None = None,
                now: float = 0.0) -> list[tuple[str, IPAddress]]:
        """Release identity's lease in each of the named pools (all pools if None), one holder
        each; returns (pool name, address) of what was released."""
        out = []
        for n in (self.names if names is None else names):
            a = self._pools[n].release(identity, now=now)
            if a is not None:
                out.append((n, a))
        return out

    def find(self, address: Any) -> tuple[str, Lease] | None:
        """The pool and lease an address belongs to, if leased."""
        for p in self._pools.values():
            lease = p.owner(address) if address in p else None
            if lease is not None:
                return p.name, lease
        return None

    # -- persistence -----------------------------------------------------------------------
    def load(self) -> list[str]:
        """Restore every pool from its store. Returns notes for the log (leases not taken, and
        why). A malformed lease file is renamed to ``<file>.bad`` (kept for inspection, not
        overwritten) and its pool starts empty; an unreadable one raises ``LeaseFileError``."""
        notes = []
        for name, store in self.stores.items():
            pool = self._pools[name]
            try:
                leases = store.load()
            except LeaseFileError as e:
                if e.unreadable:
                    raise
                bad = store.path.with_name(store.path.name + ".bad")
                try:
                    os.replace(store.path, bad)
                except OSError:
                    raise e from None
                notes.append(f"pool {name!r}: {e}; moved to {bad}, starting with no leases")
                continue
            for lease, why in pool.restore(leases):
                notes.append(f"pool {name!r}: dropped stored lease of {lease.identity!r}: {why}")
            self._saved[name] = pool.changes
        return notes

    def save(self, *, force: bool = False) -> list[str]:
        """Save the pools that changed since they were last loaded or saved (all with
        ``force``). Returns the names saved. OSError propagates (the daemon logs it; the
        in-memory state is unaffected and the next save retries)."""
        done = []
        for name, store in self.stores.items():
            pool = self._pools[name]
            if force or self._saved.get(name) != pool.changes:
                store.save(pool)
                self._saved[name] = pool.changes
                done.append(name)
        return done
