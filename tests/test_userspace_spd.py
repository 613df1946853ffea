"""The userspace data plane's outbound SPD index (vpn_gw/dataplane/userspace/spd.py): the same
choice as a scan of every Child SA (most specific remote prefix, then the newest), with a number
of Child SAs visited per lookup that does not grow with the Child SAs held (counted, not timed)."""
from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from ikev2.payloads import TrafficSelector, TsType
from vpn_gw.dataplane.userspace.plane import _Child, _in_ranges, _Selector
from vpn_gw.dataplane.userspace.spd import OutboundIndex, prefixes

V4 = 2**32


def child(n: int, local: str, remote: TrafficSelector | str) -> _Child:
    rts = remote if isinstance(remote, TrafficSelector) else TrafficSelector.from_network(remote)
    return _Child("c", n, n.to_bytes(4, "big"), b"out", None, None, ("192.0.2.1", 4500),  # type: ignore[arg-type]
                  ("198.51.100.1", 4500), [_Selector.from_ts(TrafficSelector.from_network(local))],
                  [_Selector.from_ts(rts)], None, 1400)  # type: ignore[arg-type]


def ip(a: str) -> int:
    return int(ipaddress.ip_address(a))


def v4_range(lo: int, hi: int) -> TrafficSelector:
    return TrafficSelector(TsType.TS_IPV4_ADDR_RANGE, start_addr=ipaddress.IPv4Address(lo),
                           end_addr=ipaddress.IPv4Address(hi))


def by_src(src: int):
    return lambda c: _in_ranges(c.fast_local[4], src)


def reference(children: list[_Child], dst: int, src: int) -> _Child | None:
    """A scan of every Child SA: the longest remote prefix holding dst, newest first."""
    best, best_len = None, -1
    for c in children:  # oldest first: a later one of the same length wins
        if not by_src(src)(c):
            continue
        for sel in c.remote_ts:
            for plen, net in prefixes(sel.lo, sel.hi, 32):
                if net <= dst < net + (1 << (32 - plen)) and plen >= best_len:
                    best, best_len = c, plen
    return best


@settings(max_examples=300, deadline=None)
@given(st.integers(0, V4 - 1), st.integers(0, V4 - 1))
def test_prefixes_cover_a_range_exactly(a, b):
    lo, hi = min(a, b), max(a, b)
    blocks = list(prefixes(lo, hi, 32))
    assert len(blocks) <= 62
    at = lo
    for plen, net in blocks:
        size = 1 << (32 - plen)
        assert net == at and net % size == 0  # contiguous, aligned CIDR blocks
        at += size
    assert at == hi + 1


ranges = st.tuples(st.integers(0, 255), st.integers(0, 255)).map(
    lambda t: v4_range(ip("10.0.0.0") + min(t), ip("10.0.0.0") + max(t)))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(ranges, st.sampled_from(["203.0.113.0/25", "203.0.113.128/25", "0.0.0.0/0"])),
                min_size=1, max_size=12),
       st.lists(st.integers(0, 11), max_size=6), st.integers(0, 300), st.sampled_from(["203.0.113.1", "203.0.113.200"]))
def test_lookup_agrees_with_a_scan(sels, removed, dst_off, src):
    idx: OutboundIndex[_Child] = OutboundIndex()
    children = [child(n, local, remote) for n, (remote, local) in enumerate(sels)]
    for c in children:
        idx.add(c)
    for r in removed:
        if r < len(children):
            idx.remove(children[r])
    alive = [c for i, c in enumerate(children) if i not in removed]
    dst = ip("10.0.0.0") + dst_off
    assert idx.lookup(4, dst, by_src(ip(src))) is reference(alive, dst, ip(src))


def test_100k_remote_access_clients_one_visit_per_lookup():
    """Each client's virtual IP is its Child SA's remote selector: one hash lookup finds it."""
    idx: OutboundIndex[_Child] = OutboundIndex()
    base = ip("10.64.0.0")
    clients = [child(n, "0.0.0.0/0", f"{ipaddress.IPv4Address(base + n)}/32") for n in range(100_000)]
    for c in clients:
        idx.add(c)
    for n in (0, 1, 50_000, 99_999):
        before = idx.visits
        assert idx.lookup(4, base + n, lambda c: True) is clients[n]
        assert idx.visits - before == 1
    before = idx.visits
    assert idx.lookup(4, base + 100_000, lambda c: True) is None  # nobody's
    assert idx.visits == before
    for c in clients[:50_000]:
        idx.remove(c)
    assert len(idx) == 50_000 and idx.lookup(4, base + 10, lambda c: True) is None
    assert idx.lookup(4, base + 60_000, lambda c: True) is clients[60_000]


def test_10k_site_ranges_and_a_catch_all_bounded_visits():
    """10,000 branch networks given as ranges (.0-.199 of a /24: 3 prefixes each) plus an older
    catch-all: a packet to a branch visits one Child SA, to the gap only the catch-all."""
    idx: OutboundIndex[_Child] = OutboundIndex()
    catch_all = child(0, "0.0.0.0/0", "10.0.0.0/8")
    idx.add(catch_all)
    branches = []
    for n in range(10_000):
        lo = ip("10.0.0.0") + (n << 8)
        c = child(n + 1, "0.0.0.0/0", v4_range(lo, lo + 199))
        idx.add(c)
        branches.append(c)
    for n in (0, 4_321, 9_999):
        before = idx.visits
        assert idx.lookup(4, ip("10.0.0.0") + (n << 8) + 150, lambda c: True) is branches[n]
        assert idx.visits - before == 1
        before = idx.visits
        assert idx.lookup(4, ip("10.0.0.0") + (n << 8) + 250, lambda c: True) is catch_all
        assert idx.visits - before == 1


def test_same_selectors_newest_first_and_rekey():
    """bench/ike_scale.py's case: 10,000 Child SAs with the same selectors: the newest is found
    with one visit; after it goes (a rekey's old SA deleted), the next newest."""
    idx: OutboundIndex[_Child] = OutboundIndex()
    cs = [child(n, "203.0.113.128/25", "203.0.113.0/25") for n in range(10_000)]
    for c in cs:
        idx.add(c)
    before = idx.visits
    assert idx.lookup(4, ip("203.0.113.7"), by_src(ip("203.0.113.130"))) is cs[-1]
    assert idx.visits - before == 1
    idx.remove(cs[-1])
    assert idx.lookup(4, ip("203.0.113.7"), by_src(ip("203.0.113.130"))) is cs[-2]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([4, 6]), st.integers(0, 2**128 - 1), st.integers(0, 2**128 - 1), st.integers(1, 128))
def test_network_strings_are_ipaddress_summaries(version, a, b, span_bits):
    """Child SA selectors to route destinations: the same text as ipaddress's summary."""
    bits = 32 if version == 4 else 128
    lo = a % (1 << bits)
    hi = min(lo + b % (1 << min(span_bits, bits)), (1 << bits) - 1)
    ip = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    want = [str(n) for n in ipaddress.summarize_address_range(ip(lo), ip(hi))]
    assert _Selector(version, lo, hi, 0, 0, 65535).network_strings() == want


# ---- the flow cache in front of the index (OutboundIndex.flows, UserspaceDataPlane._select)

def _plane_with(children: list[_Child]):
    from types import SimpleNamespace

    from vpn_gw.dataplane.userspace.plane import UserspaceDataPlane
    plane = UserspaceDataPlane(lambda *a: None, lambda name: None, keepalive_interval=0)
    idx: OutboundIndex[_Child] = OutboundIndex()
    for c in children:
        idx.add(c, c.fast_local is not None and c.fast_remote is not None)
    plane.spd["t0"] = idx
    return plane, SimpleNamespace(name="t0", route_based=False), idx


def udp4(src: str, dst: str, sport: int = 1000, dport: int = 53) -> bytes:
    import struct
    return struct.pack("!BBHHHBBH4s4sHHHH", 0x45, 0, 28, 0, 0, 64, 17, 0, ipaddress.IPv4Address(src).packed,
                       ipaddress.IPv4Address(dst).packed, sport, dport, 8, 0)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(8, 28), st.integers(0, 3)), min_size=1, max_size=12),
       st.lists(st.integers(0, 2**16 - 1), min_size=1, max_size=40))
def test_cached_answers_are_the_index_answers(nets, dsts):
    """Address-only selectors: the second packet of a flow comes from the cache and is what the
    index says; a new Child SA (a rekey, a more specific one) empties the cache at once."""
    children = [child(k, "10.1.0.0/16", f"10.{2 + sub}.0.0/{plen}") for k, (plen, sub) in enumerate(nets)]
    plane, tun, idx = _plane_with(children)
    for d in dsts:
        pkt = udp4("10.1.0.5", str(ipaddress.IPv4Address(ip("10.2.0.0") + d)))
        first = plane._select(tun, pkt)
        visits = idx.visits
        assert plane._select(tun, pkt) is first
        if first is not None:
            assert idx.visits == visits  # answered by the cache
            assert pkt[12:20] in idx.flows
        assert first is reference(children, int.from_bytes(pkt[16:20], "big"), ip("10.1.0.5"))
    newer = child(99, "10.1.0.0/16", "10.2.0.0/8")  # covers every destination above, newest
    idx.add(newer, True)
    assert idx.flows == {}
    children.append(newer)
    for d in dsts:
        pkt = udp4("10.1.0.5", str(ipaddress.IPv4Address(ip("10.2.0.0") + d)))
        assert plane._select(tun, pkt) is reference(children, int.from_bytes(pkt[16:20], "big"), ip("10.1.0.5"))
    idx.remove(newer)
    assert idx.flows == {}


def test_nothing_is_cached_while_a_policy_looks_at_ports():
    from vpn_gw.dataplane.userspace.spd import FLOW_CACHE_MAX
    dns = TrafficSelector.from_network("10.2.0.0/16")
    dns.ip_proto, dns.start_port, dns.end_port = 17, 53, 53
    plain = child(1, "10.1.0.0/16", "10.2.0.0/16")
    ported = child(2, "10.1.0.0/16", dns)
    plane, tun, idx = _plane_with([plain, ported])
    assert plane._select(tun, udp4("10.1.0.5", "10.2.0.9", dport=53)) is ported
    assert plane._select(tun, udp4("10.1.0.5", "10.2.0.9", dport=80)) is plain  # same addresses
    assert plane._select(tun, udp4("10.1.0.5", "10.2.0.9", dport=53)) is ported
    assert idx.flows == {}
    idx.remove(ported)
    for k in range(FLOW_CACHE_MAX + 10):  # bounded: emptied when full
        assert plane._select(tun, udp4("10.1.0.5", str(ipaddress.IPv4Address(ip("10.2.0.0") + k)))) is plain
        assert len(idx.flows) <= FLOW_CACHE_MAX
    assert 0 < len(idx.flows) <= FLOW_CACHE_MAX
    assert plane._select(tun, b"\x45" + bytes(10)) is None  # too short for an IPv4 header: no policy
