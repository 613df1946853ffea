"""The engine at scale (issue 13): with 10,000 IKE SAs held, one event touches a bounded number of
them, timers fire in deadline order touching only the due SAs, and a flood of datagrams neither
moves nor hides a due retransmission. Touches are counted by instrumenting IkeSA, not timed."""
from __future__ import annotations

import struct
from collections import defaultdict

import pytest

from ikev2 import payloads as P
from ikev2.constants import ExchangeType, HeaderFlag
from ikev2.ike_sa import IkeSA, State
from ikev2.manager import IkeManager
from ikev2.message import Message, encode_message
from tests.engine.harness import DetRandom, Link, child, hold_copies, psk_policy

GW, CLIENT = "192.0.2.1", "198.51.100.7"
HELD = 10_000
INSTRUMENTED = ("receive", "tick", "next_deadline", "pop_datagrams", "pop_events", "status")


def gateway_holding(n: int, setup=None) -> tuple[Link, IkeSA, list[IkeSA]]:
    """A gateway (responder for %any) and one client with an established IKE SA, plus ``n``
    more established IKE SAs held by the gateway."""
    gw_pol = psk_policy("rw", "gw.example.org", "%any", GW, "%any", [child("net", "10.1.0.0/24", "0.0.0.0/0")])
    gw_pol.remote_addrs = []
    cl_pol = psk_policy("gw", "client.example.org", "gw.example.org", CLIENT, GW,
                        [child("net", "0.0.0.0/0", "10.1.0.0/24")])
    gw = IkeManager([gw_pol], DetRandom("gw"), half_open_limit=10**6, cookie_threshold=10**6)
    client = IkeManager([cl_pol], DetRandom("client"))
    link = Link(client, gw, CLIENT, GW)
    first = client.initiate("gw", 0.0)
    link.run(2.0)
    assert first.state == State.ESTABLISHED
    template = next(sa for sa in gw.sas if sa.state == State.ESTABLISHED)
    held = hold_copies(gw, template, n, setup=setup)
    assert len(gw.sas) == n + 1
    return link, first, held


@pytest.fixture
def touches(monkeypatch):
    """method name -> the set of IKE SAs (by id) it was called on."""
    seen: dict[str, set[int]] = defaultdict(set)
    for name in INSTRUMENTED:
        original = getattr(IkeSA, name)

        def counted(self, *args, _name=name, _original=original, **kw):
            seen[_name].add(id(self))
            return _original(self, *args, **kw)
        monkeypatch.setattr(IkeSA, name, counted)
    return seen


def touched(seen: dict[str, set[int]]) -> set[int]:
    return set().union(*seen.values()) if seen else set()


def daemon_turn(mgr: IkeManager) -> None:
    """What the daemon does after a socket or timer wake-up."""
    mgr.pop_datagrams()
    mgr.pop_events()
    mgr.next_deadline()


def test_one_datagram_touches_a_bounded_number_of_sas(touches):
    link, first, _held = gateway_holding(HELD)
    gw, client = link.b, link.a
    # A new peer's IKE_SA_INIT: only the new half-open SA is touched.
    client.initiate("gw", 3.0)
    (init, src, dst), = client.pop_datagrams()
    touches.clear()
    gw.receive(init, dst, src, 3.0)
    daemon_turn(gw)
    assert len(touched(touches)) == 1
    assert gw.half_open_count() == 1 and gw.half_open_count(CLIENT) == 1
    # A request on an established IKE SA (liveness check): only that SA is touched.
    first.liveness(3.5)
    (req, src, dst), = client.pop_datagrams()
    touches.clear()
    gw.receive(req, dst, src, 3.5)
    daemon_turn(gw)
    assert len(touched(touches)) == 1
    assert len(gw.pop_datagrams()) == 0  # (the answer was drained by the turn above)
    # A datagram for an unknown SPI touches none.
    touches.clear()
    gw.receive(req[:8] + bytes(8) + req[16:], dst, src, 3.6)
    daemon_turn(gw)
    assert touched(touches) == set()
    # Lookups the daemon makes go through the indexes, not a scan.
    touches.clear()
    gw_sa = gw.by_spi[first.spi_r]
    assert gw.by_id(gw_sa.ike_id) is gw_sa
    assert gw.find(peer_id="client.example.org")[0].peer_id is not None
    assert gw.child_owner(gw_sa.children[0].spi_in) is gw_sa
    assert [st["id"] for st in gw.status(4.0, ike_id=gw_sa.ike_id)] == [gw_sa.ike_id]
    assert gw.summary()["by_state"] == {"established": HELD + 1, "init-done": 1}
    assert len(touched(touches)) == 1  # status() of that one SA


def test_timers_fire_in_deadline_order_and_touch_only_due_sas(touches):
    # Spread the held SAs' dead peer detection deadlines (last activity + 30 s) over 100 s, in
    # an order unrelated to their creation order.
    def spread(sa, i):
        sa.last_inbound = 2.0 + (i * 7919 % HELD) / 100.0
    link, _first, held = gateway_holding(HELD, setup=spread)
    gw = link.b
    fired: list[tuple[float, float, int]] = []  # (now, the SA's deadline then, SA number)
    original_tick = IkeSA.tick

    def recording_tick(self, now):
        fired.append((now, self.next_deadline(), self.ike_id))
        return original_tick(self, now)
    IkeSA.tick = recording_tick
    try:
        rounds = 0
        while (deadline := gw.next_deadline()) is not None and deadline < 60.0:
            before = len(fired)
            gw.tick(deadline)
            gw.pop_datagrams()  # (the peers never answer: DPD then retransmits)
            assert len(fired) > before  # something was due
            rounds += 1
            assert rounds < 10 * HELD
    finally:
        IkeSA.tick = original_tick
    times = [now for now, _d, _i in fired]
    assert times == sorted(times)
    assert all(dl is not None and dl <= now for now, dl, _i in fired)  # only due SAs ticked
    first_tick: dict[int, float] = {}
    for now, _dl, ike_id in fired:
        first_tick.setdefault(ike_id, now)
    expected = sorted((sa.last_inbound + sa.policy.dpd_delay, sa.ike_id) for sa in held
                      if sa.last_inbound + sa.policy.dpd_delay < 60.0)
    assert [i for _t, i in expected] == [i for i in first_tick if i in {e[1] for e in expected}]
    # Each SA was ticked at its deadline: once for DPD, then only for its retransmissions.
    per_sa = defaultdict(int)
    for _now, _dl, ike_id in fired:
        per_sa[ike_id] += 1
    assert max(per_sa.values()) <= 1 + 5  # DPD + retransmissions within the window


def test_flood_does_not_delay_a_due_retransmission(touches):
    link, first, _held = gateway_holding(HELD)
    client = link.a
    # The client's request goes unanswered: its retransmission is due at 10 + 4 s.
    first.liveness(10.0)
    assert len(client.pop_datagrams()) == 1
    assert client.next_deadline() == pytest.approx(14.0)
    # A flood arrives at the client from spoofed sources, across the deadline (12 s .. 16 s):
    # IKE_SA_INIT requests it has no connection for and datagrams for unknown SPIs.
    flood = []
    for i in range(5_000):
        spi = struct.pack("!Q", 0x1000 + i)
        msg = Message(spi, bytes(8), ExchangeType.IKE_SA_INIT, 0, HeaderFlag.INITIATOR,
                      [P.NoncePayload(data=bytes(32))])
        data = encode_message(msg)
        if i % 2 == 0:  # an INFORMATIONAL for an IKE SA that does not exist
            data = spi + struct.pack("!Q", i + 1) + data[16:18] + bytes([ExchangeType.INFORMATIONAL]) + data[19:]
        flood.append((12.0 + 4.0 * i / 5_000, data, (f"203.0.113.{i % 250 + 1}", 500)))
    retransmitted_at = None
    touches.clear()
    for n, (now, data, src) in enumerate(flood):
        client.receive(data, (CLIENT, 500), src, now)
        if n % 64 == 63:  # a bounded batch per loop turn, then due timers
            deadline = client.next_deadline()
            assert deadline is not None
            if retransmitted_at is None:
                assert deadline == pytest.approx(14.0)  # the flood never moved it
            if deadline <= now:
                client.tick(now)
                out = [d for d, _s, dst in client.pop_datagrams() if dst[0] == GW]
                if out and retransmitted_at is None:
                    retransmitted_at = now
            client.pop_datagrams()
            client.pop_events()
    assert retransmitted_at is not None and 14.0 <= retransmitted_at < 14.0 + 64 * 4.0 / 5_000 + 1e-9
    # The flood itself touched no IKE SA (it created none and found none); only the timer did.
    assert touched({k: v for k, v in touches.items() if k in ("receive",)}) == set()
    assert client.dropped == {"unknown IKE SPI": 2_500, "no connection for these addresses": 2_500}
