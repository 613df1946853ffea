"""Peer name resolution for ``remote_addrs`` FQDNs (dynamic-DNS peers).

:class:`PeerResolver` looks a name up (A and AAAA, with dnspython against configurable
servers), keeps the answer for its TTL (clamped to ``[min_ttl, max_ttl]``) and tells the
caller which names are due for a new look-up (:meth:`PeerResolver.due`). It only *reports*:
whether an SA follows a new address is the daemon's business, and an SA must never move on
DNS alone (only authenticated packets move SAs).

DNS failures never raise: the :class:`ResolveResult` carries an ``error`` text
(``"gw.example.org: name does not exist (NXDOMAIN)"``, ``"... no answer from 192.0.2.53
within 2.0s"``, ``"... 192.0.2.53 answered SERVFAIL"``) and, in ``previous``, the addresses of
the last successful look-up, so the caller may keep using them while DNS is down.

Time is ``time.monotonic`` unless a ``clock`` is injected; :meth:`due` takes ``now``.
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rcode
import dns.resolver

__all__ = ["PeerResolver", "ResolveResult", "is_ip_literal", "normalize_name"]

INF = float("inf")


def is_ip_literal(s: str) -> bool:
    try:
        ipaddress.ip_address(s)
    except ValueError:
        return False
    return True


def normalize_name(fqdn: str) -> str:
    """Lower case, no trailing dot: the cache key of a name."""
    name = fqdn.strip().rstrip(".").lower()
    if not name:
        raise ValueError(f"empty DNS name {fqdn!r}")
    return name


def _family_version(family: int | None) -> int | None:
    if family in (None, 0, socket.AF_UNSPEC):
        return None
    if family in (4, socket.AF_INET):
        return 4
    if family in (6, socket.AF_INET6):
        return 6
    raise ValueError(f"family must be None, 4, 6, AF_INET or AF_INET6, not {family!r}")


def _sort_addresses(addrs) -> tuple[str, ...]:
    """IPv4 first, then IPv6, each in numeric order, duplicates removed."""
    ips = {ipaddress.ip_address(a) for a in addrs}
    return tuple(str(a) for a in sorted(ips, key=lambda a: (a.version, a)))


def _server_label(s: str) -> str:
    """dnspython's "Do53:192.0.2.53@53" -> "192.0.2.53" ("192.0.2.53 port 5353" off port 53)."""
    if s.startswith("Do53:"):
        s = s[5:]
        addr, _, port = s.rpartition("@")
        if addr:
            return addr if port == "53" else f"{addr} port {port}"
    return s


@dataclass(frozen=True)
class ResolveResult:
    """Outcome of one look-up of ``fqdn``.

    ``addresses``: IPv4 first, then IPv6 (empty on error); ``ttl``: seconds the answer is
    kept (the DNS TTL clamped to ``[min_ttl, max_ttl]``; ``min_ttl`` after an error);
    ``expires_at``: monotonic time the name is due again; ``dns_ttl``: the TTL as the server
    sent it (smallest of the CNAME chain and the A/AAAA sets); ``error``: why the look-up
    failed, None when it worked; ``previous``: after a failure, the addresses of the last
    successful look-up (the caller decides whether to keep using them).
    """

    fqdn: str
    addresses: tuple[str, ...]
    ttl: float
    expires_at: float
    error: str | None = None
    dns_ttl: int | None = None
    resolved_at: float = 0.0
    previous: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None

    def expired(self, now: float) -> bool:
        return now >= self.expires_at

    def for_family(self, family: int | None) -> ResolveResult:
        """The same result with only the addresses of one family (4/6/AF_INET/AF_INET6)."""
        v = _family_version(family)
        if v is None:
            return self
        addrs = tuple(a for a in self.addresses if ipaddress.ip_address(a).version == v)
        prev = tuple(a for a in self.previous if ipaddress.ip_address(a).version == v)
        error = self.error
        if error is None and not addrs:
            error = f"{self.fqdn}: no {'A' if v == 4 else 'AAAA'} record"
        return replace(self, addresses=addrs, previous=prev, error=error)


class PeerResolver:
    """Resolve peer FQDNs (A and AAAA) and remember them for their TTL.

    ``nameservers``: IP addresses of the servers to ask (in order); None reads
    /etc/resolv.conf. ``port``: their port. ``timeout``: total time budget of one look-up
    (shared among the servers). ``min_ttl``/``max_ttl`` clamp the TTL: a name with TTL 0 is
    not looked up in a loop, a name with a TTL of a week is still checked every ``max_ttl``.
    """

    def __init__(
        self,
        nameservers: list[str] | None = None,
        port: int = 53,
        timeout: float = 2.0,
        min_ttl: float = 5.0,
        max_ttl: float = 3600.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ):
        if min_ttl < 0 or max_ttl < min_ttl:
            raise ValueError(f"need 0 <= min_ttl <= max_ttl (got {min_ttl}, {max_ttl})")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if not 1 <= port <= 65535:
            raise ValueError(f"bad port {port}")
        if nameservers is not None:
            if not nameservers:
                raise ValueError("nameservers: empty list (use None for /etc/resolv.conf)")
            for ns in nameservers:
                if not is_ip_literal(ns):
                    raise ValueError(f"nameserver {ns!r} is not an IP address")
        self.nameservers = list(nameservers) if nameservers is not None else None
        self.port = port
        self.timeout = float(timeout)
        self.min_ttl = float(min_ttl)
        self.max_ttl = float(max_ttl)
        self._clock = clock
        self._cache: dict[str, ResolveResult] = {}
        self._last_good: dict[str, tuple[str, ...]] = {}
        self._inflight: dict[str, asyncio.Future] = {}
        self._dns: dns.asyncresolver.Resolver | None = None

    # ------------------------------------------------------------------ cache

    def clamp_ttl(self, ttl: float) -> float:
        return min(max(float(ttl), self.min_ttl), self.max_ttl)

    def record(self, fqdn: str, addresses, dns_ttl: int | float, now: float | None = None) -> ResolveResult:
        """Store a successful answer (TTL clamped) and return it. Used by :meth:`resolve`."""
        name = normalize_name(fqdn)
        now = self._clock() if now is None else now
        addrs = _sort_addresses(addresses)
        if not addrs:
            return self.record_error(name, f"{name}: no A or AAAA records", now)
        ttl = self.clamp_ttl(dns_ttl)
        res = ResolveResult(name, addrs, ttl, now + ttl, None, int(dns_ttl), now)
        self._cache[name] = res
        self._last_good[name] = addrs
        return res

    def record_error(self, fqdn: str, error: str, now: float | None = None) -> ResolveResult:
        """Store a failed look-up: due again after ``min_ttl``; keeps the last good addresses."""
        name = normalize_name(fqdn)
        now = self._clock() if now is None else now
        ttl = self.min_ttl
        res = ResolveResult(name, (), ttl, now + ttl, error, None, now,
                            self._last_good.get(name, ()))
        self._cache[name] = res
        return res

    def cached(self, fqdn: str) -> ResolveResult | None:
        """The latest result for ``fqdn`` (expired or not, ok or not), or None."""
        return self._cache.get(normalize_name(fqdn))

    def due(self, now: float | None = None) -> list[str]:
        """Names whose cached result has expired at ``now`` (sorted)."""
        now = self._clock() if now is None else now
        return sorted(n for n, r in self._cache.items() if r.expired(now))

    def next_expiry(self) -> float | None:
        """Earliest ``expires_at`` of the cached names (for a timer), None if nothing is cached."""
        return min((r.expires_at for r in self._cache.values()), default=None)

    def forget(self, fqdn: str) -> None:
        """Stop tracking ``fqdn`` (e.g. its connection was removed)."""
        name = normalize_name(fqdn)
        self._cache.pop(name, None)
        self._last_good.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._cache)

    # ------------------------------------------------------------------ look-ups

    def _resolver(self) -> dns.asyncresolver.Resolver:
        if self._dns is None:
            if self.nameservers is None:
                r = dns.asyncresolver.Resolver(configure=True)
            else:
                r = dns.asyncresolver.Resolver(configure=False)
                r.nameservers = list(self.nameservers)
            r.port = self.port
            n = max(1, len(r.nameservers))
            r.lifetime = self.timeout
            r.timeout = max(self.timeout / n, min(0.5, self.timeout))
            r.cache = None
            r.use_search_by_default = False
            self._dns = r
        return self._dns

    def _servers_text(self) -> str:
        servers = self.nameservers if self.nameservers is not None else (
            self._dns.nameservers if self._dns is not None else [])
        text = ", ".join(str(s) for s in servers) or "no nameserver"
        return text + (f" port {self.port}" if self.port != 53 else "")

    async def resolve(self, fqdn: str, family: int | None = None) -> ResolveResult:
        """Look ``fqdn`` up now (A and AAAA), store and return the result.

        Never raises for DNS failures; see :class:`ResolveResult`. ``family`` (4, 6,
        AF_INET, AF_INET6) only filters the returned addresses: both types are always asked
        for and cached. An IP literal is returned as is (never expires, not cached).
        Concurrent calls for one name share one look-up.
        """
        vers = _family_version(family)
        if is_ip_literal(fqdn.strip()):
            now = self._clock()
            res = ResolveResult(fqdn.strip(), (str(ipaddress.ip_address(fqdn.strip())),), INF, INF,
                                resolved_at=now)
            return res.for_family(vers)
        name = normalize_name(fqdn)
        fut = self._inflight.get(name)
        if fut is None or fut.get_loop() is not asyncio.get_running_loop():
            fut = asyncio.ensure_future(self._lookup(name))
            self._inflight[name] = fut

            def _done(f, name=name):
                if self._inflight.get(name) is f:
                    del self._inflight[name]
            fut.add_done_callback(_done)
        res = await asyncio.shield(fut)
        return res.for_family(vers)

    async def _lookup(self, name: str) -> ResolveResult:
        try:
            qname = dns.name.from_text(name)
        except dns.exception.DNSException as e:
            return self.record_error(name, f"{name}: not a valid DNS name ({e})")
        try:
            resolver = self._resolver()
        except Exception as e:  # no /etc/resolv.conf, ...
            return self.record_error(name, f"{name}: no DNS resolver configuration ({e})")
        results = await asyncio.gather(
            *(self._query(resolver, qname, t) for t in ("A", "AAAA")), return_exceptions=True)
        addrs: list[str] = []
        ttls: list[int] = []
        errors: list[BaseException] = []
        for r in results:
            if isinstance(r, BaseException):
                errors.append(r)
            elif r is not None:
                a, ttl = r
                addrs += a
                ttls.append(ttl)
        if addrs:
            return self.record(name, addrs, min(ttls))
        if not errors:
            return self.record_error(name, f"{name}: no A or AAAA records")
        # NXDOMAIN is authoritative: report it rather than a timeout of the other type
        nx = [e for e in errors if isinstance(e, dns.resolver.NXDOMAIN)]
        return self.record_error(name, self.error_text(name, nx[0] if nx else errors[0]))

    @staticmethod
    async def _query(resolver, qname, rdtype: str):
        """(addresses, ttl) of one type, None when the name has no record of that type."""
        try:
            ans = await resolver.resolve(qname, rdtype, search=False, raise_on_no_answer=True)
        except dns.resolver.NoAnswer:
            return None
        ttl = ans.rrset.ttl
        chain = getattr(ans, "chaining_result", None)
        if chain is not None:
            ttl = min(ttl, chain.minimum_ttl)
        return [r.address for r in ans.rrset], int(ttl)

    def error_text(self, name: str, exc: BaseException) -> str:
        """A one-line explanation of a dnspython exception (public for tests)."""
        if isinstance(exc, dns.resolver.NXDOMAIN):
            return f"{name}: name does not exist (NXDOMAIN)"
        if isinstance(exc, dns.resolver.YXDOMAIN):
            return f"{name}: name too long after DNAME substitution (YXDOMAIN)"
        if isinstance(exc, dns.resolver.LifetimeTimeout):
            return f"{name}: no answer from {self._servers_text()} within {self.timeout:g}s"
        if isinstance(exc, dns.exception.Timeout):
            return f"{name}: no answer from {self._servers_text()} within {self.timeout:g}s"
        if isinstance(exc, dns.resolver.NoNameservers):
            errs = exc.kwargs.get("errors") or []
            parts = []
            for err in errs:
                # (server, tcp, port, exception_or_text, response)
                server = _server_label(str(err[0]))
                resp = err[4] if len(err) > 4 else None
                if resp is not None:
                    parts.append(f"{server} answered {dns.rcode.to_text(resp.rcode())}")
                else:
                    e = err[3]
                    text = (e.strerror or str(e)) if isinstance(e, OSError) else str(e)
                    parts.append(f"{server}: {text or type(e).__name__}")
            detail = "; ".join(dict.fromkeys(parts)) or "all nameservers failed"
            return f"{name}: {detail}"
        if isinstance(exc, dns.resolver.NoAnswer):
            return f"{name}: no A or AAAA records"
        if isinstance(exc, OSError):
            return f"{name}: cannot query {self._servers_text()}: {exc.strerror or exc}"
        return f"{name}: {type(exc).__name__}: {exc}"
