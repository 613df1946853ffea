"""Address pools (vpn_gw/pools/local.py): allocation, sticky leases, reclaiming, persistence."""
from __future__ import annotations

import ipaddress
import json
import os
import stat
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpn_gw.pools import AddressPool, Lease, LeaseFileError, LeaseStore, PoolSet, default_lease_file, parse_pool_addrs

ip = ipaddress.ip_address


# -- ranges --------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,first,last,size", [
    ("10.99.0.0/24", "10.99.0.1", "10.99.0.254", 254),
    ("10.99.0.0/30", "10.99.0.1", "10.99.0.2", 2),
    ("10.99.0.0/31", "10.99.0.0", "10.99.0.1", 2),
    ("10.99.0.7/32", "10.99.0.7", "10.99.0.7", 1),
    ("10.99.0.7", "10.99.0.7", "10.99.0.7", 1),
    ("10.99.0.10-10.99.0.200", "10.99.0.10", "10.99.0.200", 191),
    (" 10.99.0.10 - 10.99.0.10 ", "10.99.0.10", "10.99.0.10", 1),
    ("fd00:99::/120", "fd00:99::1", "fd00:99::ff", 255),
    ("fd00:99::/64", "fd00:99::1", "fd00:99::ffff:ffff:ffff:ffff", 2**64 - 1),
    ("fd00::a-fd00::f", "fd00::a", "fd00::f", 6),
])
def test_pool_bounds(text, first, last, size):
    p = AddressPool("p", text)
    assert (p.first, p.last, p.size) == (ip(first), ip(last), size)
    assert p.free == size and p.version == ip(first).version


def test_addrs_normalised():
    assert AddressPool("p", "10.99.0.10 - 10.99.0.20").addrs == "10.99.0.10-10.99.0.20"
    assert AddressPool("p", ipaddress.ip_network("10.0.0.0/24")).addrs == "10.0.0.0/24"
    assert AddressPool("p", "10.99.0.7").addrs == "10.99.0.7/32"


@pytest.mark.parametrize("text,msg", [
    ("10.99.0.1/24", "host bits set (did you mean '10.99.0.0/24', or a range '10.99.0.1-10.99.0.255'?)"),
    ("10.99.0.200-10.99.0.10", "reversed (did you mean '10.99.0.10-10.99.0.200'?)"),
    ("10.99.0.1-fd00::1", "mixes IPv4 and IPv6"),
    ("10.99.0.1-", "not a range"),
    ("pool", "neither a CIDR subnet"),
    ("10.0.0.0/33", "neither a CIDR subnet"),
])
def test_bad_addrs(text, msg):
    with pytest.raises(ValueError) as ei:
        parse_pool_addrs(text)
    assert msg in str(ei.value)


def test_contains():
    p = AddressPool("p", "10.99.0.0/29", exclude=["10.99.0.3"])
    assert "10.99.0.1" in p and ip("10.99.0.6") in p
    for out in ("10.99.0.0", "10.99.0.7", "10.99.0.3", "10.98.0.1", "::1", "bogus"):
        assert out not in p


# -- allocation ----------------------------------------------------------------------------------

def test_lowest_first_and_exhaustion():
    p = AddressPool("p", "10.99.0.0/29")  # .1-.6
    got = [p.acquire(f"u{i}") for i in range(6)]
    assert got == [ip(f"10.99.0.{i}") for i in range(1, 7)]
    assert p.acquire("u6") is None
    assert (p.online, p.offline, p.free) == (6, 0, 0)


def test_sticky_after_release_and_other_identities_in_between():
    p = AddressPool("p", "10.99.0.0/24")
    a = p.acquire("alice", now=1)
    assert p.release("alice", now=2) == a
    assert p.lease("alice") == Lease(a, "alice", 0, 2.0)
    b = p.acquire("bob", now=3)
    assert b != a                      # alice's offline lease is not handed out while free ones exist
    assert p.acquire("alice", now=4) == a
    assert p.lease("alice").is_online and p.lease("alice").since == 4


def test_concurrent_sessions_share_the_address_and_count_holders():
    p = AddressPool("p", "10.99.0.0/24")
    a = p.acquire("alice")
    assert p.acquire("alice") == a     # make-before-break reauthentication
    assert p.lease("alice").online == 2
    assert p.release("alice") == a and p.lease("alice").is_online
    assert p.release("alice") == a and not p.lease("alice").is_online
    assert p.release("alice") is None  # one too many: harmless
    assert p.release("nobody") is None


def test_reclaims_oldest_offline_only_when_exhausted():
    p = AddressPool("p", "10.99.0.1-10.99.0.3")
    a, b, c = (p.acquire(x, now=0) for x in ("a", "b", "c"))
    p.release("b", now=10)
    p.release("a", now=20)
    assert p.acquire("d", now=30) == b          # b went offline first
    assert p.lease("b") is None and p.owner(b).identity == "d"
    assert p.acquire("e", now=31) == a
    assert p.acquire("f", now=32) is None        # everything online
    assert p.acquire("b", now=33) is None        # b lost its address and nothing is free
    assert p.acquire("g", reclaim=False) is None


def test_reclaim_order_survives_reacquire():
    p = AddressPool("p", "10.99.0.1-10.99.0.2")
    a = p.acquire("a")
    b = p.acquire("b")
    p.release("a", now=1)
    p.release("b", now=2)
    p.acquire("a", now=3)      # a back online: its stale offline entry must not be reclaimed
    p.release("a", now=4)
    assert p.acquire("c", now=5) == b
    assert p.lease("a").address == a


def test_reclaim_ties_broken_by_release_order_without_time():
    p = AddressPool("p", "10.99.0.1-10.99.0.2")
    p.acquire("a")
    p.acquire("b")
    p.release("b")
    p.release("a")
    assert p.acquire("c") == ip("10.99.0.2")


def test_requested_address_honoured_when_free():
    p = AddressPool("p", "10.99.0.0/24")
    assert p.acquire("alice", requested="10.99.0.77") == ip("10.99.0.77")
    assert p.acquire("bob", requested="10.99.0.77") == ip("10.99.0.1")   # taken
    assert p.acquire("carol", requested="10.98.0.1") == ip("10.99.0.2")  # not in the pool
    assert p.acquire("dave", requested="garbage") == ip("10.99.0.3")
    assert p.acquire("alice", requested="10.99.0.5") == ip("10.99.0.77")  # sticky wins
    # the cursor skips the requested address later on
    q = AddressPool("q", "10.99.0.1-10.99.0.3")
    q.acquire("x", requested="10.99.0.2")
    assert [q.acquire("y"), q.acquire("z"), q.acquire("w")] == [ip("10.99.0.1"), ip("10.99.0.3"), None]


def test_exclude():
    p = AddressPool("p", "10.99.0.0/28", exclude=["10.99.0.1", "10.99.0.4/30", "10.99.0.9-10.99.0.20",
                                                 ip("10.99.0.3"), "fd00::1", "192.0.2.1"])
    assert p.size == 14 - 1 - 1 - 4 - 6
    got = []
    while (a := p.acquire(f"u{len(got)}")) is not None:
        got.append(str(a))
    assert got == ["10.99.0.2", "10.99.0.8"]


def test_forget_and_prune_free_addresses():
    p = AddressPool("p", "10.99.0.1-10.99.0.4")
    for i, x in enumerate("abcd"):
        p.acquire(x, now=i)
    p.release("a", now=10)
    p.release("b", now=20)
    p.release("c", now=30)
    assert p.forget("nobody") is None
    assert [x.identity for x in p.prune(older_than=25)] == ["a", "b"]
    assert p.lease("a") is None and p.free == 2
    assert p.forget("d") == ip("10.99.0.4")     # online leases can be forgotten too
    assert p.acquire("e") == ip("10.99.0.1")    # lowest free again
    assert p.acquire("f") == ip("10.99.0.2")
    assert p.acquire("g") == ip("10.99.0.4")
    assert p.acquire("h") == ip("10.99.0.3")    # c was offline: reclaimed last
    assert p.lease("c") is None


def test_leases_and_queries():
    p = AddressPool("p", "10.99.0.0/24")
    p.acquire("b")
    p.acquire("a", requested="10.99.0.100")
    p.release("b", now=5)
    assert [(str(x.address), x.identity, x.online) for x in p.leases()] == [
        ("10.99.0.1", "b", 0), ("10.99.0.100", "a", 1)]
    assert p.owner("10.99.0.100").identity == "a" and p.owner("fd00::1") is None
    assert (p.online, p.offline, p.free) == (1, 1, 252)
    assert "online=1" in repr(p)


def test_huge_ipv6_pool_is_not_materialised():
    p = AddressPool("p", "fd00:99::/64", exclude=["fd00:99::1-fd00:99::ffff"])
    assert p.acquire("a") == ip("fd00:99::1:0")
    assert p.free == 2**64 - 1 - 0xFFFF - 1


def test_identity_must_be_a_non_empty_string():
    p = AddressPool("p", "10.99.0.0/24")
    with pytest.raises(TypeError):
        p.acquire(b"alice")
    with pytest.raises(ValueError):
        p.acquire("")


def test_changes_counter():
    p = AddressPool("p", "10.99.0.0/24")
    n = p.changes
    p.acquire("a")
    p.release("a")
    p.release("a")
    assert p.changes == n + 2


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["acq", "rel", "forget", "prune"]),
                          st.sampled_from("abcdefgh"), st.booleans()), max_size=60))
def test_invariants_under_random_operations(ops):
    p = AddressPool("p", "10.99.0.0/29", exclude=["10.99.0.3"])   # 5 usable
    holders: dict[str, int] = {}
    for t, (op, who, flag) in enumerate(ops):
        if op == "acq":
            had = p.lease(who)
            a = p.acquire(who, now=t, requested="10.99.0.5" if flag else None)
            if had is not None:
                assert a == had.address                      # sticky
            if a is None:
                assert p.online == p.size                    # only when every address is online
            else:
                assert a in p
                holders[who] = holders.get(who, 0) + 1 if had is not None else 1
        elif op == "rel":
            p.release(who, now=t)
        elif op == "forget":
            p.forget(who)
        else:
            p.prune(older_than=t - 3)
        leases = p.leases()
        assert len({x.address for x in leases}) == len(leases)
        assert len({x.identity for x in leases}) == len(leases)
        assert p.online + p.offline + p.free == p.size
        assert all(x.address in p for x in leases)


# -- persistence ---------------------------------------------------------------------------------

def test_store_roundtrip_restart_keeps_stickiness(tmp_path):
    path = tmp_path / "leases" / "rw.json"
    p = AddressPool("rw", "10.99.0.0/24")
    a = p.acquire("alice@example.org", now=100)
    b = p.acquire("bob", now=101)
    p.release("bob", now=150)
    store = LeaseStore(path)
    store.save(p)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    doc = json.loads(path.read_text())
    assert doc == {"format": 1, "pool": "rw", "addrs": "10.99.0.0/24", "leases": [
        {"address": "10.99.0.1", "identity": "alice@example.org", "since": 100},
        {"address": "10.99.0.2", "identity": "bob", "since": 150}]}
    assert list(tmp_path.joinpath("leases").iterdir()) == [path]   # no temp files left

    q = AddressPool("rw", "10.99.0.0/24")          # "after a restart"
    assert q.restore(store.load()) == []
    assert q.online == 0 and q.offline == 2         # nothing is online after a restart
    assert q.acquire("newcomer") == ip("10.99.0.3")
    assert q.acquire("bob") == b and q.acquire("alice@example.org") == a


def test_restore_oldest_first_and_rejections():
    p = AddressPool("rw", "10.99.0.1-10.99.0.3")
    rejected = p.restore([
        Lease(ip("10.99.0.2"), "new", 1, 200.0),
        Lease(ip("10.99.0.1"), "old", 0, 100.0),
        Lease(ip("10.99.0.9"), "gone", 0, 50.0),       # the pool shrank
        Lease(ip("10.99.0.1"), "dup-addr", 0, 300.0),
        Lease(ip("10.99.0.3"), "old", 0, 400.0),        # second lease of one identity
    ])
    assert [(x.identity, why) for x, why in rejected] == [
        ("gone", "10.99.0.9 is not in pool 'rw' (10.99.0.1-10.99.0.3)"),
        ("dup-addr", "10.99.0.1 is already leased to 'old'"),
        ("old", "identity 'old' already has 10.99.0.1"),
    ]
    assert p.online == 0                               # restored leases are offline
    assert p.acquire("x") == ip("10.99.0.3")
    assert p.acquire("y") == ip("10.99.0.1")           # oldest offline reclaimed first


def test_store_missing_file_is_empty(tmp_path):
    assert LeaseStore(tmp_path / "none.json").load() == []


@pytest.mark.parametrize("content,msg", [
    (b"{not json", "not a JSON lease file"),
    (b"[]", "not a lease file of format 1"),
    (b'{"format": 2, "leases": []}', "not a lease file of format 1"),
    (b'{"format": 1}', "'leases' must be a list"),
    (b'{"format": 1, "leases": [1]}', "lease #1: not an object"),
    (b'{"format": 1, "leases": [{"address": "10.0.0.1", "identity": ""}]}', "lease #1: identity"),
    (b'{"format": 1, "leases": [{"address": "10.0.0.1", "identity": "a", "since": "x"}]}', "since"),
    (b'{"format": 1, "leases": [{"address": "nope", "identity": "a"}]}', "lease #1:"),
    (b'{"format": 1, "leases": [{"address": 5, "identity": "a"}]}', "address must be a string"),
    (b"\xff\xfe", "not a JSON lease file"),
])
def test_store_bad_files(tmp_path, content, msg):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(LeaseFileError) as ei:
        LeaseStore(path).load()
    assert msg in str(ei.value) and str(path) in str(ei.value) and not ei.value.unreadable


def test_store_unreadable(tmp_path):
    with pytest.raises(LeaseFileError) as ei:
        LeaseStore(tmp_path).load()     # a directory
    assert ei.value.unreadable


def test_save_is_atomic_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "rw.json"
    p = AddressPool("rw", "10.99.0.0/24")
    p.acquire("a")
    store = LeaseStore(path)
    store.save(p)
    before = path.read_bytes()
    p.acquire("b")

    def boom(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        store.save(p)
    assert path.read_bytes() == before
    assert [x.name for x in tmp_path.iterdir()] == ["rw.json"]


def test_default_lease_file():
    assert str(default_lease_file("rw")) == "/var/lib/vpn-gw/pool-rw.json"


# -- PoolSet -------------------------------------------------------------------------------------

def make_set(tmp_path=None):
    pools = [AddressPool("a", "10.99.0.1-10.99.0.2"), AddressPool("b", "10.98.0.0/30"),
             AddressPool("v6", "fd00:99::/120")]
    stores = {p.name: LeaseStore(tmp_path / f"{p.name}.json") for p in pools} if tmp_path else None
    return PoolSet(pools, stores)


def test_poolset_order_family_and_fallthrough():
    ps = make_set()
    assert ps.acquire(["a", "b", "v6"], "u1", 4) == ("a", ip("10.99.0.1"))
    assert ps.acquire(["a", "b", "v6"], "u1", 6) == ("v6", ip("fd00:99::1"))
    assert ps.acquire(["a", "b"], "u2", 4) == ("a", ip("10.99.0.2"))
    assert ps.acquire(["a", "b"], "u3", 4) == ("b", ip("10.98.0.1"))   # a is full
    assert ps.acquire(["a"], "u4", 6) is None                           # no IPv6 pool listed
    with pytest.raises(KeyError):
        ps.acquire(["nope"], "u5", 4)


def test_poolset_free_addresses_before_reclaiming():
    ps = make_set()
    ps.acquire(["a"], "u1", 4)
    ps.acquire(["a"], "u2", 4)
    ps.release("u1", now=5)
    # a has an offline lease, b has free addresses: b first
    assert ps.acquire(["a", "b"], "u3", 4) == ("b", ip("10.98.0.1"))
    assert ps.acquire(["a", "b"], "u4", 4) == ("b", ip("10.98.0.2"))
    assert ps.acquire(["a", "b"], "u5", 4) == ("a", ip("10.99.0.1"))    # now reclaim


def test_poolset_sticky_across_pools_and_requested():
    ps = make_set()
    ps.acquire(["b"], "alice", 4)
    ps.release("alice")
    assert ps.acquire(["a", "b"], "alice", 4) == ("b", ip("10.98.0.1"))
    assert ps.acquire(["a", "b"], "bob", 4, requested="10.98.0.2") == ("b", ip("10.98.0.2"))
    assert ps.acquire(["a", "b"], "carol", 4, requested="10.98.0.2") == ("a", ip("10.99.0.1"))
    assert ps.find("10.98.0.2") == ("b", ps["b"].lease("bob"))
    assert ps.find("10.97.0.1") is None


def test_poolset_release():
    ps = make_set()
    ps.acquire(["a"], "u", 4)
    ps.acquire(["v6"], "u", 6)
    assert ps.release("u", names=["v6"]) == [("v6", ip("fd00:99::1"))]
    assert ps.release("u") == [("a", ip("10.99.0.1"))]
    assert ps.release("u") == []


def test_poolset_mapping_and_validation(tmp_path):
    ps = make_set()
    assert ps.names == ("a", "b", "v6") and len(ps) == 3 and "a" in ps and "z" not in ps
    assert [p.name for p in ps] == ["a", "b", "v6"] and ps["b"].addrs == "10.98.0.0/30"
    with pytest.raises(ValueError, match="duplicate"):
        PoolSet([AddressPool("a", "10.0.0.0/24"), AddressPool("a", "10.1.0.0/24")])
    with pytest.raises(ValueError, match="unknown pools"):
        PoolSet([], {"x": LeaseStore(tmp_path / "x")})


def test_poolset_persistence_roundtrip(tmp_path):
    ps = make_set(tmp_path)
    assert ps.load() == []
    assert ps.save() == []                       # nothing changed since load
    ps.acquire(["a"], "alice", 4, now=1)
    assert ps.save() == ["a"]
    assert ps.save() == []
    assert sorted(ps.save(force=True)) == ["a", "b", "v6"]
    again = make_set(tmp_path)
    assert again.load() == []
    assert again["a"].lease("alice") == Lease(ip("10.99.0.1"), "alice", 0, 1.0)
    assert again.acquire(["a"], "alice", 4) == ("a", ip("10.99.0.1"))


def test_poolset_load_notes_and_bad_file(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"format": 1, "leases": [
        {"address": "10.99.0.1", "identity": "x", "since": 1},
        {"address": "10.50.0.1", "identity": "y", "since": 2}]}))
    (tmp_path / "b.json").write_text("garbage")
    ps = make_set(tmp_path)
    notes = ps.load()
    assert notes[0] == ("pool 'a': dropped stored lease of 'y': 10.50.0.1 is not in pool 'a' "
                        "(10.99.0.1-10.99.0.2)")
    assert notes[1].startswith("pool 'b': ") and "moved to" in notes[1] and notes[1].endswith(
        "starting with no leases")
    assert (tmp_path / "b.json.bad").read_text() == "garbage" and not (tmp_path / "b.json").exists()
    assert ps["a"].lease("x") is not None


def test_poolset_from_config(tmp_path):
    cfgs = [SimpleNamespace(name="rw", addrs="10.99.0.0/24", lease_file=tmp_path / "rw.json"),
            SimpleNamespace(name="r6", addrs="fd00::/120", lease_file=None)]
    ps = PoolSet.from_config(cfgs, exclude=["10.99.0.1"])
    assert ps.names == ("rw", "r6") and set(ps.stores) == {"rw"}
    assert ps.acquire(["rw"], "a", 4) == ("rw", ip("10.99.0.2"))
    assert PoolSet.from_config(cfgs, persist=False).stores == {}
