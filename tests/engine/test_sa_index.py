"""The manager's indexes and timer heap agree with the IKE SAs themselves through the life of real
SAs (set-up, Child SA rekey, IKE rekey, a rekey collision, delete), and the heap's own rules."""
from __future__ import annotations

import pytest

from ikev2.deadlines import DeadlineHeap
from ikev2.ike_sa import State
from ikev2.manager import IkeManager
from tests.engine.harness import pair, site_to_site


def assert_consistent(mgr: IkeManager) -> None:
    """Every lookup answers what a scan of all SAs answers."""
    live = [sa for sa in mgr.sas if sa.state != State.DELETED]
    assert len(live) == len(mgr.sas)  # deleted SAs are gone
    assert {spi: sa for spi, sa in mgr.by_spi.items()} == {sa.our_spi: sa for sa in live if sa.our_spi != bytes(8)}
    for sa in live:
        assert sa in mgr.find(sa.name)
        assert sa in mgr.find(peer=sa.remote[0])
        if sa.peer_id is not None:
            assert sa in mgr.find(peer_id=str(sa.peer_id))
        for c in sa.children:
            assert mgr.child_owner(c.spi_in) is sa
        want = sa.next_deadline()
        got = mgr._timers.deadline(sa)
        assert got == want, (sa.state, got, want)
    half_open = [sa for sa in live if not sa.initiator and sa.state == State.INIT_DONE]
    assert mgr.half_open_count() == len(half_open)
    by_state: dict[str, int] = {}
    for sa in live:
        by_state[sa.state.value] = by_state.get(sa.state.value, 0) + 1
    assert mgr.summary()["by_state"] == by_state
    assert mgr.summary()["child_sas"] == sum(len(sa.children) for sa in live)
    deadlines = [d for d in (sa.next_deadline() for sa in live) if d is not None]
    assert mgr.next_deadline() == (min(deadlines) if deadlines else None)


def checked_run(link, until: float) -> None:
    link.run(until)
    assert_consistent(link.a)
    assert_consistent(link.b)


@pytest.mark.parametrize("seed", ["c1", "c2", "c3"])
def test_indexes_follow_rekeys_collisions_and_deletes(seed):
    hq, br = site_to_site()
    link = pair(br, hq, seed=seed)
    link.a.initiate("hq", 0.0)
    checked_run(link, 2.0)
    a = link.a.sas[0]
    a.rekey_child(a.children[0].spi_in, link.now)  # a direct call, as the daemon makes
    checked_run(link, link.now + 2.0)
    link.a.sas[0].rekey_ike(link.now)
    checked_run(link, link.now + 2.0)
    ike_id = link.a.sas[0].ike_id
    assert link.a.by_id(ike_id) is link.a.sas[0]  # the successor keeps the number
    link.a.sas[0].rekey_ike(link.now)  # both ends at once: a collision
    link.b.sas[0].rekey_ike(link.now)
    checked_run(link, link.now + 5.0)
    assert len(link.a.sas) == 1 and len(link.b.sas) == 1
    link.a.terminate("hq", link.now)
    checked_run(link, link.now + 2.0)
    assert link.a.sas == [] and link.b.sas == []
    assert link.a.next_deadline() is None and link.b.summary()["ike_sas"] == 0


def test_deadline_heap_order_moves_and_lazy_deletion():
    heap: DeadlineHeap[str] = DeadlineHeap()
    heap.set("a", 5.0)
    heap.set("b", 1.0)
    heap.set("c", 1.0)  # same deadline: insertion order
    heap.set("d", 3.0)
    heap.set("b", 4.0)  # moved later: the old entry is skipped
    heap.remove("d")
    heap.set("e", None)  # no deadline: not held
    assert heap.next_deadline() == 1.0 and len(heap) == 3 and "e" not in heap
    assert heap.pop_due(0.5) == []
    assert heap.pop_due(4.0) == ["c", "b"]
    assert heap.next_deadline() == 5.0 and heap.deadline("a") == 5.0 and heap.deadline("b") is None
    assert heap.pop_due(10.0) == ["a"] and heap.next_deadline() is None


def test_deadline_heap_stays_proportional_to_its_items():
    heap: DeadlineHeap[int] = DeadlineHeap()
    for i in range(100):
        heap.set(i, float(i))
    for step in range(1, 200):  # every item moved 199 times
        for i in range(100):
            heap.set(i, float(i + step))
    assert len(heap._heap) <= max(2 * len(heap), 1024) + 1
    assert heap.pop_due(199.0) == [0]


def test_status_filters_and_summary():
    hq, br = site_to_site()
    link = pair(br, hq)
    link.a.initiate("hq", 0.0)
    link.run(2.0)
    gw = link.b  # hq's manager: connection "branch1", peer 198.51.100.1, peer id branch1.example.org
    (sa,) = gw.sas
    assert [s["id"] for s in gw.status(3.0, "branch1")] == [sa.ike_id]
    assert gw.status(3.0, "other") == []
    assert [s["id"] for s in gw.status(3.0, peer="198.51.100.1", peer_id="branch1.example.org")] == [sa.ike_id]
    assert gw.status(3.0, peer="203.0.113.9") == [] and gw.status(3.0, peer_id="nobody") == []
    assert [s["id"] for s in gw.status(3.0, "branch1", ike_id=sa.ike_id)] == [sa.ike_id]
    assert gw.status(3.0, "other", ike_id=sa.ike_id) == []
    assert gw.summary() == {"ike_sas": 1, "by_state": {"established": 1}, "half_open": 0, "child_sas": 1}
    assert gw.status(3.0) == list(gw.iter_status(3.0)) and len(gw.status(3.0)) == 1
