"""Addresses that move: NAT-T port floating, address adoption, MOBIKE (RFC 4555)."""
from __future__ import annotations

from ikev2.events import LocalAddressChanged, PeerAddressChanged
from ikev2.ike_sa import State
from tests.engine.harness import pair, site_to_site


def up(link):
    link.a.initiate("hq", link.now)
    link.run(link.now + 2.0)
    return link.a.sas[0], link.b.sas[0]


def send_from(link, mgr_from, mgr_to, new_src, dst):
    """Deliver what mgr_from sends, rewriting its source address (a NAT or a roaming client)."""
    for data, _src, _dst in mgr_from.pop_datagrams():
        link.trace.append((link.now, new_src, dst, data))
        mgr_to.receive(data, dst, new_src, link.now)


def test_request_from_new_address_is_adopted():
    hq, br = site_to_site()
    hq.address_adoption = True
    link = pair(br, hq)
    a, b = up(link)
    spis = (b.spi_i, b.spi_r, [c.spi_in for c in b.children])
    a.liveness(link.now)
    send_from(link, link.a, link.b, ("203.0.113.5", 4500), ("192.0.2.1", 4500))
    assert b.remote == ("203.0.113.5", 4500)
    assert (b.spi_i, b.spi_r, [c.spi_in for c in b.children]) == spis  # no rekey, no new SA
    moved = [e for e in link.b.pop_events() if isinstance(e, PeerAddressChanged)]
    assert moved and moved[0].old == ("198.51.100.1", 4500) and moved[0].new == ("203.0.113.5", 4500)
    # The response went to the new address.
    out = link.b.pop_datagrams()
    assert out and out[0][2] == ("203.0.113.5", 4500)


def test_replayed_old_request_does_not_move_back():
    hq, br = site_to_site()
    hq.address_adoption = True
    link = pair(br, hq)
    a, b = up(link)
    a.liveness(link.now)
    old = link.a.pop_datagrams()
    for data, _s, _d in old:
        link.b.receive(data, ("192.0.2.1", 4500), ("198.51.100.1", 4500), link.now)
    link.a.receive(link.b.pop_datagrams()[0][0], ("198.51.100.1", 4500), ("192.0.2.1", 4500), link.now)
    a.liveness(link.now)
    send_from(link, link.a, link.b, ("203.0.113.5", 4500), ("192.0.2.1", 4500))
    assert b.remote == ("203.0.113.5", 4500)
    link.b.pop_datagrams()
    # An attacker replays the old request from the old address: it is a retransmission of an
    # already answered message ID (answered from cache at most), never a move.
    for data, _s, _d in old:
        link.b.receive(data, ("192.0.2.1", 4500), ("198.51.100.1", 4500), link.now)
    assert b.remote == ("203.0.113.5", 4500)


def test_adoption_off_keeps_address():
    hq, br = site_to_site()
    hq.address_adoption = False
    link = pair(br, hq)
    a, b = up(link)
    a.liveness(link.now)
    send_from(link, link.a, link.b, ("203.0.113.5", 4500), ("192.0.2.1", 4500))
    assert b.remote == ("198.51.100.1", 4500)


def test_auto_adoption_for_peer_behind_nat_and_port_float():
    """The branch sits behind a NAT: IKE_SA_INIT from one port, IKE_AUTH from another (port float
    to 4500 through the NAT), later the NAT mapping changes: each time the hub follows."""
    hq, br = site_to_site()
    hq.remote_addrs = ["203.0.113.99"]  # the NAT's public address; adoption is left at "auto"
    link = pair(br, hq)
    nat = ("203.0.113.99", 40000)
    link.a.initiate("hq", 0.0)
    for _ in range(3):
        send_from(link, link.a, link.b, nat if _ == 0 else ("203.0.113.99", 40001),
                  ("192.0.2.1", 500 if _ == 0 else 4500))
        for data, src, dst in link.b.pop_datagrams():
            link.a.receive(data, ("198.51.100.1", dst[1] if dst[1] in (500, 4500) else 4500), src, link.now)
    a, b = link.a.sas[0], link.b.sas[0]
    assert a.state == State.ESTABLISHED and b.state == State.ESTABLISHED
    assert b.nat_remote and b.remote == ("203.0.113.99", 40001)
    a.liveness(link.now)
    send_from(link, link.a, link.b, ("203.0.113.99", 50123), ("192.0.2.1", 4500))
    assert b.remote == ("203.0.113.99", 50123)


def test_local_move_without_mobike_sends_liveness_peer_adopts():
    hq, br = site_to_site()
    br.mobike = False
    hq.address_adoption = True
    link = pair(br, hq)
    a, b = up(link)
    link.a.local_address_changed("198.51.100.1", "198.51.100.77", link.now)
    assert a.local == ("198.51.100.77", 4500)
    assert [e for e in link.a.pop_events() if isinstance(e, LocalAddressChanged)]
    send_from(link, link.a, link.b, ("198.51.100.77", 4500), ("192.0.2.1", 4500))
    assert b.remote == ("198.51.100.77", 4500)


def test_mobike_update_sa_addresses():
    hq, br = site_to_site()
    hq.address_adoption = False  # MOBIKE alone must move it
    link = pair(br, hq)
    a, b = up(link)
    assert a.peer_mobike and b.peer_mobike
    link.a.local_address_changed("198.51.100.1", "203.0.113.10", link.now)
    out = link.a.pop_datagrams()
    assert len(out) == 1 and out[0][1] == ("203.0.113.10", 4500)
    for data, src, dst in out:
        link.b.receive(data, dst, src, link.now)
    assert b.remote == ("203.0.113.10", 4500)
    resp = link.b.pop_datagrams()
    assert resp[0][2] == ("203.0.113.10", 4500)
    for data, src, dst in resp:
        link.a.receive(data, dst, src, link.now)
    assert a.pending is None and a.state == State.ESTABLISHED
    # The Child SAs stay the same (no rekey).
    assert [c.spi_in for c in a.children] and len(a.children) == 1


def test_only_the_initiator_may_send_update_sa_addresses():
    hq, br = site_to_site()
    link = pair(br, hq)
    a, b = up(link)
    b.local_moved(("192.0.2.50", 4500), link.now)  # the responder moved: no MOBIKE update
    out = link.b.pop_datagrams()
    assert out and all(o[1] == ("192.0.2.50", 4500) for o in out)


def test_response_goes_back_to_the_request_source_even_without_adoption():
    """RFC 7296 2.11. A MOBIKE peer checks a new path with an empty INFORMATIONAL before it sends
    UPDATE_SA_ADDRESSES: the answer must reach it on that path."""
    hq, br = site_to_site()
    hq.address_adoption = False
    link = pair(br, hq)
    a, b = up(link)
    a.liveness(link.now)
    send_from(link, link.a, link.b, ("203.0.113.5", 4500), ("192.0.2.1", 4500))
    out = link.b.pop_datagrams()
    assert out and out[0][2] == ("203.0.113.5", 4500)
    assert b.remote == ("198.51.100.1", 4500)  # not adopted


def test_esp_encapsulation_follows_nat_detection_not_the_ike_port():
    """IKE floats to 4500 once NAT-D was exchanged, but ESP is UDP-encapsulated (ChildUp.encap,
    what a kernel data plane programs) only with a NAT on either side or a forced one (RFC 3948,
    RFC 4555 3.5): otherwise a kernel peer such as strongSwan expects plain ESP."""
    from ikev2.events import ChildUp

    def child_up(link):
        link.a.initiate("hq", link.now)
        link.run(link.now + 2.0)
        a, b = link.a.sas[0], link.b.sas[0]
        evs = [e for e in link.events_a + link.events_b if isinstance(e, ChildUp)]
        return a, b, evs

    a, b, evs = child_up(pair(*reversed(site_to_site())))
    assert a.local[1] == 4500 and b.local[1] == 4500  # floated
    assert len(evs) == 2 and not any(e.encap for e in evs) and not a.encap and not b.encap

    hq, br = site_to_site()
    br.forced_encap = True
    a, b, evs = child_up(pair(br, hq))
    assert a.nat_local and b.nat_remote
    assert len(evs) == 2 and all(e.encap for e in evs)

    hq, br = site_to_site()
    hq.remote_addrs = ["203.0.113.99"]
    link = pair(br, hq)
    link.a.initiate("hq", 0.0)
    for i in range(3):  # the branch's packets reach the hub through a NAT
        send_from(link, link.a, link.b, ("203.0.113.99", 40000 if i == 0 else 40001),
                  ("192.0.2.1", 500 if i == 0 else 4500))
        for data, src, dst in link.b.pop_datagrams():
            link.a.receive(data, ("198.51.100.1", dst[1] if dst[1] in (500, 4500) else 4500), src, link.now)
    evs = [e for m in (link.a, link.b) for e in m.pop_events() if isinstance(e, ChildUp)]
    assert link.b.sas[0].nat_remote and link.a.sas[0].nat_local
    assert len(evs) == 2 and all(e.encap for e in evs)


def _request_in_flight(link, a):
    """A liveness check sent on the old path and lost there (no answer yet)."""
    a.liveness(link.now)
    lost = link.a.pop_datagrams()
    assert len(lost) == 1 and a.pending is not None
    return lost[0][0], a.pending.message_id


def test_local_move_resends_the_request_in_flight_from_the_new_address_at_once():
    hq, br = site_to_site()
    br.mobike = False
    hq.address_adoption = True
    link = pair(br, hq)
    a, b = up(link)
    lost, mid = _request_in_flight(link, a)
    link.a.local_address_changed("198.51.100.1", "198.51.100.77", link.now)  # no time passes
    out = link.a.pop_datagrams()
    assert out and out[0] == (lost, ("198.51.100.77", 4500), ("192.0.2.1", 4500))  # same message, new path
    assert a.pending.message_id == mid and a.pending.tries == 0  # not counted as a retransmission
    for data, src, dst in out:
        link.b.receive(data, dst, src, link.now)
    assert b.remote == ("198.51.100.77", 4500)  # the adopting peer moved on the resent request
    link.run(link.now + 2.0)
    assert a.state == State.ESTABLISHED and a.pending is None and not a.queue  # the queued check went too


def test_mobike_update_follows_the_answer_to_the_request_in_flight():
    hq, br = site_to_site()
    hq.address_adoption = False  # MOBIKE alone must move it
    link = pair(br, hq)
    a, b = up(link)
    _lost, mid = _request_in_flight(link, a)
    link.a.local_address_changed("198.51.100.1", "203.0.113.10", link.now)
    out = link.a.pop_datagrams()
    assert len(out) == 1 and out[0][1] == ("203.0.113.10", 4500)  # the request in flight, at once
    for data, src, dst in out:
        link.b.receive(data, dst, src, link.now)
    resp = link.b.pop_datagrams()
    assert resp and resp[0][2] == ("203.0.113.10", 4500)  # answered to where it came from (RFC 7296 2.11)
    for data, src, dst in resp:
        link.a.receive(data, dst, src, link.now)
    update = link.a.pop_datagrams()  # the answer frees the window: UPDATE_SA_ADDRESSES leaves now
    assert len(update) == 1 and update[0][1] == ("203.0.113.10", 4500) and a.pending.message_id == mid + 1
    for data, src, dst in update:
        link.b.receive(data, dst, src, link.now)
    assert b.remote == ("203.0.113.10", 4500)
