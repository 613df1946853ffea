"""PeerResolver without a network: TTL clamps, due(), error texts, literals, families.

The look-ups against a real DNS server (Knot) are in tests/netns_e2e/test_ddns_netns.py.
"""
from __future__ import annotations

import asyncio
import socket

import dns.message
import dns.rcode
import dns.resolver
import pytest

from vpn_gw.ddns import PeerResolver, ResolveResult
from vpn_gw.ddns.resolver import normalize_name


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_ttl_is_clamped_to_min_and_max():
    clock = Clock()
    r = PeerResolver(["192.0.2.53"], min_ttl=5, max_ttl=300, clock=clock)
    res = r.record("peer.example.test", ["198.51.100.7"], 1)
    assert res.ttl == 5 and res.dns_ttl == 1 and res.expires_at == 1005
    res = r.record("peer.example.test", ["198.51.100.7"], 86400)
    assert res.ttl == 300 and res.dns_ttl == 86400 and res.expires_at == 1300
    res = r.record("peer.example.test", ["198.51.100.7"], 42)
    assert res.ttl == 42 and res.expires_at == 1042
    assert r.record("zero.example.test", ["198.51.100.9"], 0).ttl == 5


def test_due_lists_expired_names_only():
    clock = Clock(100.0)
    r = PeerResolver(["192.0.2.53"], min_ttl=1, max_ttl=3600, clock=clock)
    r.record("a.example.test", ["198.51.100.1"], 10)
    r.record("B.Example.Test.", ["198.51.100.2"], 20)
    r.record_error("c.example.test", "c.example.test: name does not exist (NXDOMAIN)")
    assert r.due(100.0) == []
    assert r.due(101.0) == ["c.example.test"]          # errors are due after min_ttl
    assert r.due(110.0) == ["a.example.test", "c.example.test"]
    assert r.due(1e9) == ["a.example.test", "b.example.test", "c.example.test"]
    assert r.next_expiry() == 101.0
    clock.t = 110.0
    assert r.due() == ["a.example.test", "c.example.test"]  # default now = clock
    r.forget("a.example.test")
    assert r.due(1e9) == ["b.example.test", "c.example.test"]
    assert r.names() == ["b.example.test", "c.example.test"]


def test_cached_and_previous_addresses_after_failure():
    clock = Clock()
    r = PeerResolver(["192.0.2.53"], min_ttl=5, clock=clock)
    assert r.cached("peer.example.test") is None
    ok = r.record("peer.example.test", ["2001:db8::7", "198.51.100.7", "198.51.100.7"], 60)
    assert ok.ok and ok.addresses == ("198.51.100.7", "2001:db8::7")  # v4 first, dedup
    assert r.cached("PEER.example.test.") == ok
    clock.t += 61
    bad = r.record_error("peer.example.test", "peer.example.test: no answer from 192.0.2.53 within 2s")
    assert not bad.ok and bad.addresses == () and bad.previous == ok.addresses
    assert bad.ttl == 5 and bad.expires_at == clock.t + 5
    assert r.cached("peer.example.test") is bad
    # an empty answer counts as an error
    assert r.record("empty.example.test", [], 60).error == "empty.example.test: no A or AAAA records"


def test_for_family_filters_and_reports_missing_type():
    res = ResolveResult("p.example.test", ("198.51.100.7", "2001:db8::7"), 60, 1060)
    assert res.for_family(socket.AF_INET).addresses == ("198.51.100.7",)
    assert res.for_family(6).addresses == ("2001:db8::7",)
    assert res.for_family(None) is res
    v4only = ResolveResult("p.example.test", ("198.51.100.7",), 60, 1060)
    r6 = v4only.for_family(socket.AF_INET6)
    assert r6.addresses == () and r6.error == "p.example.test: no AAAA record"
    with pytest.raises(ValueError):
        res.for_family(99)


def test_ip_literal_is_returned_without_dns():
    r = PeerResolver(["192.0.2.53"])

    async def main():
        return await r.resolve("198.51.100.1"), await r.resolve("2001:db8::1", socket.AF_INET)

    lit, wrong_family = asyncio.run(main())
    assert lit.ok and lit.addresses == ("198.51.100.1",) and lit.expires_at == float("inf")
    assert wrong_family.addresses == () and wrong_family.error
    assert r.names() == []      # literals are not cached / never due


def test_constructor_validation():
    with pytest.raises(ValueError):
        PeerResolver(["ns.example.test"])
    with pytest.raises(ValueError):
        PeerResolver([])
    with pytest.raises(ValueError):
        PeerResolver(min_ttl=10, max_ttl=5)
    with pytest.raises(ValueError):
        PeerResolver(timeout=0)
    with pytest.raises(ValueError):
        normalize_name(" . ")


def _response(rcode: int) -> dns.message.Message:
    q = dns.message.make_query("peer.example.test", "A")
    resp = dns.message.make_response(q)
    resp.set_rcode(rcode)
    return resp


def test_error_texts():
    r = PeerResolver(["192.0.2.53", "192.0.2.54"], timeout=2.0)
    name = "peer.example.test"
    assert r.error_text(name, dns.resolver.NXDOMAIN()) == \
        "peer.example.test: name does not exist (NXDOMAIN)"
    assert r.error_text(name, dns.resolver.LifetimeTimeout(timeout=2.0, errors=[])) == \
        "peer.example.test: no answer from 192.0.2.53, 192.0.2.54 within 2s"
    q = dns.message.make_query(name, "A")
    exc = dns.resolver.NoNameservers(request=q, errors=[
        ("Do53:192.0.2.53@53", False, 53, "SERVFAIL", _response(dns.rcode.SERVFAIL)),
        ("Do53:192.0.2.54@5353", False, 5353, "REFUSED", _response(dns.rcode.REFUSED)),
    ])
    assert r.error_text(name, exc) == \
        "peer.example.test: 192.0.2.53 answered SERVFAIL; 192.0.2.54 port 5353 answered REFUSED"
    exc = dns.resolver.NoNameservers(request=q, errors=[
        ("Do53:192.0.2.53@53", False, 53, ConnectionRefusedError(111, "Connection refused"), None),
    ])
    assert r.error_text(name, exc) == "peer.example.test: 192.0.2.53: Connection refused"
    assert r.error_text(name, OSError(101, "Network is unreachable")) == \
        "peer.example.test: cannot query 192.0.2.53, 192.0.2.54: Network is unreachable"
    r53 = PeerResolver(["192.0.2.53"], port=5353, timeout=0.5)
    assert r53.error_text(name, dns.resolver.LifetimeTimeout(timeout=0.5, errors=[])) == \
        "peer.example.test: no answer from 192.0.2.53 port 5353 within 0.5s"
