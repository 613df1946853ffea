"""Two engines in memory: every exchange, both roles, and what goes wrong on the way."""
from __future__ import annotations

import itertools

import pytest

from ikev2 import payloads as P
from ikev2.constants import ExchangeType, NotifyType
from ikev2.events import AuthFailed, ChildDown, ChildUp, IkeDown, IkeRekeyed, IkeUp
from ikev2.ike_sa import State
from ikev2.message import decode_message
from tests.engine.harness import child, pair, psk_policy, site_to_site


def events(lst, cls):
    return [e for e in lst if isinstance(e, cls)]


def up(link, name="hq", until=2.0):
    sa = link.a.initiate(name, link.now)
    link.run(link.now + until)
    return sa


def exchanges(link):
    out = []
    for _t, src, _dst, data in link.trace:
        try:
            m = decode_message(data)
        except Exception:
            continue
        out.append((src[0], ExchangeType(m.exchange).name, "resp" if m.is_response else "req", m.message_id))
    return out


def installed_pairs(link):
    """Child SAs both sides agree on: (spi_in of a, spi_out of a) mirrored on b."""
    ca = {(c.spi_in, c.spi_out) for sa in link.a.sas for c in sa.children}
    cb = {(c.spi_out, c.spi_in) for sa in link.b.sas for c in sa.children}
    return ca, cb


@pytest.mark.parametrize("ike,esp", [
    ("aes256gcm16-prfsha256-x25519", "aes256gcm16"),
    ("aes128-sha256-ecp256", "aes128-sha256"),
    ("aes256-sha384-modp3072", "aes256-sha384"),
    ("chacha20poly1305-prfsha512-x448", "chacha20poly1305"),
    ("aes256gcm16-prfsha384-ecp384", "aes256gcm16-esn"),
])
def test_suites(ike, esp):
    hq, br = site_to_site(ike=(ike,))
    for p in (hq, br):
        p.children[0].esp_proposals[:] = [__import__("ikev2.crypto.proposals", fromlist=["x"]).parse_proposal(esp, 3)]
    link = pair(br, hq)
    up(link)
    assert len(events(link.events_a, IkeUp)) == 1 and len(events(link.events_b, IkeUp)) == 1
    ca, cb = installed_pairs(link)
    assert ca == cb and len(ca) == 1


def test_responder_picks_connection_by_identity():
    """Three branches with identical 0/0 selectors: the responder binds each to the connection
    whose remote_id matches the peer's IDi, never by selectors."""
    hub_policies = [psk_policy(f"branch{i}", "hub.example.org", f"branch{i}.example.org", "192.0.2.1", "%any",
                               [child("net", "0.0.0.0/0", "0.0.0.0/0")], psk=f"secret-of-branch-{i}".encode())
                    for i in (1, 2, 3)]
    from ikev2.manager import IkeManager
    from tests.engine.harness import DetRandom, Link
    hub = IkeManager(hub_policies, DetRandom("hub"))
    for i in (1, 2, 3):
        br = psk_policy("hub", f"branch{i}.example.org", "hub.example.org", f"198.51.100.{i}", "192.0.2.1",
                        [child("net", "0.0.0.0/0", "0.0.0.0/0")], psk=f"secret-of-branch-{i}".encode())
        bm = IkeManager([br], DetRandom(f"b{i}"))
        link = Link(bm, hub, f"198.51.100.{i}", "192.0.2.1")
        bm.initiate("hub", 0.0)
        link.run(2.0)
        got = events(link.events_b, IkeUp)
        assert len(got) == 1 and got[0].ike_name == f"branch{i}"
        assert got[0].remote_id == f"branch{i}.example.org"
        assert events(link.events_b, ChildUp)[0].ike_name == f"branch{i}"


def test_wrong_psk_fails_with_authentication_failed():
    hq, br = site_to_site()
    br.local_auth.psk = br.remote_auth.psk = b"not the right secret"
    link = pair(br, hq)
    sa = up(link)
    assert sa.state == State.DELETED
    fa = events(link.events_a, AuthFailed)
    fb = events(link.events_b, AuthFailed)
    assert fb and "PSK authentication" in fb[0].reason
    assert fa and "AUTHENTICATION_FAILED" in fa[0].reason
    assert not events(link.events_a, IkeUp) and not events(link.events_b, IkeUp)
    assert not link.b.sas  # nothing left on the responder


def test_unknown_identity_rejected():
    hq, br = site_to_site()
    br.local_id = __import__("ikev2.identity", fromlist=["x"]).Identity.parse("intruder.example.org")
    link = pair(br, hq)
    up(link)
    assert any("no connection accepts peer identity 'intruder.example.org'" in e.reason
               for e in events(link.events_b, AuthFailed))


def test_no_proposal_chosen():
    hq, br = site_to_site()
    from ikev2.crypto.proposals import parse_proposal
    hq.ike_proposals = [parse_proposal("aes128-sha256-ecp256", 1)]
    link = pair(br, hq)
    sa = up(link)
    assert sa.state == State.DELETED
    assert "NO_PROPOSAL_CHOSEN" in events(link.events_a, IkeDown)[0].reason
    assert not link.b.sas


def test_invalid_ke_payload_retry_with_right_group():
    hq, br = site_to_site()
    from ikev2.crypto.proposals import parse_proposal
    br.ike_proposals = [parse_proposal("aes256gcm16-prfsha256-x25519-ecp256", 1)]
    hq.ike_proposals = [parse_proposal("aes256gcm16-prfsha256-ecp256", 1)]
    link = pair(br, hq)
    up(link)
    assert events(link.events_a, IkeUp)[0].proposal.endswith("ECP_256")
    ex = exchanges(link)
    assert [e for e in ex if e[1] == "IKE_SA_INIT"] == [
        ("198.51.100.1", "IKE_SA_INIT", "req", 0), ("192.0.2.1", "IKE_SA_INIT", "resp", 0),
        ("198.51.100.1", "IKE_SA_INIT", "req", 0), ("192.0.2.1", "IKE_SA_INIT", "resp", 0)]


def test_cookie_round_trip():
    hq, br = site_to_site()
    link = pair(br, hq)
    link.b.cookie_threshold = 0  # always ask for a cookie
    up(link)
    assert len(events(link.events_a, IkeUp)) == 1
    first_resp = decode_message([d for _t, s, _d, d in link.trace if s[0] == "192.0.2.1"][0])
    assert first_resp.notify(NotifyType.COOKIE) is not None


def test_half_open_limit_drops_new_inits():
    hq, br = site_to_site()
    link = pair(br, hq)
    link.b.half_open_limit = 0
    sa = up(link, until=1.0)
    assert sa.state == State.INIT_SENT
    assert link.b.dropped.get("half-open limit reached", 0) >= 1


def test_ts_unacceptable_keeps_ike_sa():
    hq, br = site_to_site()
    hq.children[0].remote_ts[:] = [P.TrafficSelector.from_network("10.99.0.0/24")]
    link = pair(br, hq)
    sa = up(link)
    assert sa.state == State.ESTABLISHED
    assert not sa.children


def test_ts_narrowing_to_responder_subset():
    hq, br = site_to_site()
    br.children[0].remote_ts[:] = [P.TrafficSelector.from_network("10.0.0.0/8")]
    link = pair(br, hq)
    sa = up(link)
    assert [str(t) for t in sa.children[0].remote_ts] == ["10.1.0.0/24"]


@pytest.mark.parametrize("loss,dup,reorder,seed", [(0.3, 0.0, 0.0, 1), (0.3, 0.0, 0.0, 7), (0.0, 0.5, 0.5, 3),
                                                   (0.2, 0.2, 0.3, 11)])
def test_converges_under_loss_duplication_reordering(loss, dup, reorder, seed):
    hq, br = site_to_site()
    hq.retransmit_tries = br.retransmit_tries = 8
    link = pair(br, hq, seed=str(seed), loss=loss, duplicate=dup, reorder=reorder)
    sa = up(link, until=300.0)
    assert sa.state == State.ESTABLISHED
    ca, cb = installed_pairs(link)
    assert ca == cb and len(ca) == 1
    assert len(events(link.events_b, IkeUp)) == 1  # the responder's cache answered retransmits


def test_retransmission_backoff_and_give_up():
    hq, br = site_to_site()
    link = pair(br, hq, drop_filter=lambda data, src, dst: src[0] == "198.51.100.1")
    sa = up(link, until=400.0)
    sends = [t for t, s, _d, _x in link.trace if s[0] == "198.51.100.1"]
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(sends)]
    assert len(sends) == br.retransmit_tries + 1
    assert gaps == [round(4.0 * 1.8 ** i, 2) for i in range(len(gaps))]
    assert sa.state == State.DELETED
    assert "did not answer" in events(link.events_a, IkeDown)[0].reason


@pytest.mark.parametrize("who", ["initiator", "responder"])
@pytest.mark.parametrize("pfs", [False, True])
def test_child_rekey(who, pfs):
    hq, br = site_to_site()
    if pfs:
        from ikev2.crypto.proposals import parse_proposal
        for p in (hq, br):
            p.children[0].esp_proposals[:] = [parse_proposal("aes256gcm16-ecp256", 3)]
    link = pair(br, hq)
    up(link)
    mgr = link.a if who == "initiator" else link.b
    sa = mgr.sas[0]
    old = sa.children[0]
    assert sa.rekey_child(old.spi_in, link.now)
    link.run(link.now + 2.0)
    ca, cb = installed_pairs(link)
    assert ca == cb and len(ca) == 1
    new_spi_in = next(iter(ca))[0]
    assert old.spi_in not in {s for s, _ in ca}
    ups = events(link.events_a if who == "initiator" else link.events_b, ChildUp)
    assert ups[-1].rekey_of == old.spi_in
    downs = events(link.events_a + link.events_b, ChildDown)
    assert len(downs) == 2 and all(d.reason in ("rekeyed", "deleted by peer", "deleted") for d in downs)
    new = next(c for c in link.a.sas[0].children if c.spi_in == new_spi_in)
    assert ("ECP_256" in new.proposal_text) == pfs  # the rekey ran a key exchange only with PFS


def test_simultaneous_child_rekey_collision_leaves_one_pair():
    hq, br = site_to_site()
    link = pair(br, hq)
    up(link)
    a, b = link.a.sas[0], link.b.sas[0]
    a.rekey_child(a.children[0].spi_in, link.now)
    b.rekey_child(b.children[0].spi_in, link.now)
    link.run(link.now + 5.0)
    ca, cb = installed_pairs(link)
    assert ca == cb and len(ca) == 1, (ca, cb)


@pytest.mark.parametrize("who", ["initiator", "responder"])
def test_ike_rekey_keeps_children(who):
    hq, br = site_to_site()
    link = pair(br, hq)
    up(link)
    mgr = link.a if who == "initiator" else link.b
    before = installed_pairs(link)
    old_spis = (mgr.sas[0].spi_i, mgr.sas[0].spi_r)
    mgr.sas[0].rekey_ike(link.now)
    link.run(link.now + 2.0)
    assert len(link.a.sas) == 1 and len(link.b.sas) == 1
    na, nb = link.a.sas[0], link.b.sas[0]
    assert (na.spi_i, na.spi_r) == (nb.spi_i, nb.spi_r) != old_spis
    assert na.initiator == (who == "initiator") and nb.initiator == (who != "initiator")
    assert installed_pairs(link) == before
    assert events(link.events_a, IkeRekeyed) and events(link.events_b, IkeRekeyed)
    # The new SA works: a child rekey over it succeeds.
    na.rekey_child(na.children[0].spi_in, link.now)
    link.run(link.now + 2.0)
    ca, cb = installed_pairs(link)
    assert ca == cb and len(ca) == 1 and ca != before[0]


@pytest.mark.parametrize("who", ["initiator", "responder"])
def test_delete_ike_sa(who):
    hq, br = site_to_site()
    link = pair(br, hq)
    up(link)
    mgr = link.a if who == "initiator" else link.b
    mgr.sas[0].delete(link.now)
    link.run(link.now + 2.0)
    assert not link.a.sas and not link.b.sas
    assert events(link.events_a, IkeDown) and events(link.events_b, IkeDown)
    assert len(events(link.events_a, ChildDown)) == 1 and len(events(link.events_b, ChildDown)) == 1


@pytest.mark.parametrize("who", ["initiator", "responder"])
def test_delete_child_sa(who):
    hq, br = site_to_site()
    link = pair(br, hq)
    up(link)
    mgr = link.a if who == "initiator" else link.b
    sa = mgr.sas[0]
    assert sa.delete_child(sa.children[0].spi_in, link.now)
    link.run(link.now + 2.0)
    assert not link.a.sas[0].children and not link.b.sas[0].children
    assert link.a.sas[0].state == State.ESTABLISHED


def test_request_missing_children_after_the_peer_deleted_one():
    """A trap's traffic over a live IKE SA whose Child SA the peer deleted: one CREATE_CHILD_SA,
    not repeated while it is under way; None when there is no established IKE SA to use."""
    hq, br = site_to_site()
    link = pair(br, hq)
    assert link.a.request_missing_children("hq", link.now) is None  # nothing up: initiate instead
    up(link)
    assert link.a.request_missing_children("hq", link.now) == 0  # the child is there
    old = link.a.sas[0].children[0].spi_in
    assert link.b.sas[0].delete_child(link.b.sas[0].children[0].spi_in, link.now)  # the peer deletes it
    link.run(link.now + 2.0)
    assert not link.a.sas[0].children
    assert link.a.request_missing_children("hq", link.now) == 1
    assert link.a.request_missing_children("hq", link.now) == 0  # already asked for
    link.run(link.now + 2.0)
    (c,) = link.a.sas[0].children
    assert c.spi_in != old and len(link.b.sas[0].children) == 1
    assert len(events(link.events_a, ChildUp)) == 2


def test_liveness_check_and_dead_peer():
    hq, br = site_to_site()
    br.dpd_delay = 10.0
    link = pair(br, hq)
    up(link)
    link.run(link.now + 12.0)
    infos = [e for e in exchanges(link) if e[1] == "INFORMATIONAL"]
    assert ("198.51.100.1", "INFORMATIONAL", "req", 2) in infos
    assert ("192.0.2.1", "INFORMATIONAL", "resp", 2) in infos
    # Now the hub disappears: after the retransmissions the branch gives up.
    link.drop_filter = lambda data, src, dst: True
    link.run(link.now + 200.0)
    assert link.a.sas == [] or link.a.sas[0].state == State.DELETED
    assert "did not answer liveness check" in events(link.events_a, IkeDown)[-1].reason


def test_additional_children_via_create_child_sa():
    hq, br = site_to_site()
    hq.children.append(child("voice", "10.1.5.0/24", "10.2.5.0/24"))
    br.children.append(child("voice", "10.2.5.0/24", "10.1.5.0/24"))
    link = pair(br, hq)
    sa = up(link)
    assert sorted(c.name for c in sa.children) == ["net", "voice"]
    assert ("198.51.100.1", "CREATE_CHILD_SA", "req", 2) in exchanges(link)


def test_responder_retransmits_cached_response():
    hq, br = site_to_site()
    link = pair(br, hq)
    up(link)
    before = len(link.trace)
    sa = link.a.sas[0]
    sa.liveness(link.now)
    req = [d for d, _s, _dst in link.a.pop_datagrams()]
    assert len(req) == 1
    for _ in range(3):
        link.b.receive(req[0], ("192.0.2.1", 4500), ("198.51.100.1", 4500), link.now)
    resps = link.b.pop_datagrams()
    assert len(resps) == 3 and len({r[0] for r in resps}) == 1
    assert before <= len(link.trace)


def test_unauthenticated_garbage_is_dropped_without_state_change():
    hq, br = site_to_site()
    link = pair(br, hq)
    up(link)
    sa = link.b.sas[0]
    good = sa.status(link.now)
    from ikev2.message import Message, encode_message
    fake = encode_message(Message(sa.spi_i, sa.spi_r, ExchangeType.INFORMATIONAL, sa.peer_next_mid, 0x08,
                                  [P.SKPayload(first_inner=42, data=bytes(60))]))
    link.b.receive(fake, ("192.0.2.1", 4500), ("203.0.113.9", 4500), link.now)
    assert link.b.pop_datagrams() == []
    assert sa.status(link.now) == good  # not moved to the forged address, nothing changed


def test_initial_contact_replaces_stale_sa():
    """The branch reboots (new manager, same identity) and reconnects with INITIAL_CONTACT: the
    hub drops the stale IKE SA and its Child SA at once."""
    hq, br = site_to_site()
    link = pair(br, hq)
    up(link)
    assert len(link.b.sas) == 1
    stale = link.b.sas[0]
    from ikev2.manager import IkeManager
    from tests.engine.harness import DetRandom
    link.a = IkeManager([br], DetRandom("rebooted"))
    up(link)
    assert len(link.b.sas) == 1 and link.b.sas[0] is not stale
    assert stale.state == State.DELETED
    downs = events(link.events_b, ChildDown)
    assert downs and downs[0].reason == "replaced after peer's INITIAL_CONTACT"


def test_simultaneous_ike_rekey_collision_leaves_one_ike_sa_with_the_children():
    """RFC 7296 2.8.2: both ends rekey the IKE SA at once: the new SA made with the lowest nonce
    is deleted by its initiator, the Child SA ends up on the survivor, nothing else is left."""
    for seed in ("c1", "c2", "c3", "c4"):
        hq, br = site_to_site()
        link = pair(br, hq, seed=seed)
        up(link)
        before = installed_pairs(link)
        link.a.sas[0].rekey_ike(link.now)
        link.b.sas[0].rekey_ike(link.now)
        link.run(link.now + 5.0)
        live_a = [sa for sa in link.a.sas if sa.state == State.ESTABLISHED]
        live_b = [sa for sa in link.b.sas if sa.state == State.ESTABLISHED]
        assert len(live_a) == 1 and len(live_b) == 1, (seed, [(s.spi_i.hex(), s.state) for s in link.a.sas])
        assert (live_a[0].spi_i, live_a[0].spi_r) == (live_b[0].spi_i, live_b[0].spi_r)
        assert installed_pairs(link) == before
        assert not [e for e in link.events_a + link.events_b if isinstance(e, IkeDown)]
        # The survivor works.
        live_a[0].rekey_child(live_a[0].children[0].spi_in, link.now)
        link.run(link.now + 2.0)
        ca, cb = installed_pairs(link)
        assert ca == cb and len(ca) == 1


def test_refused_first_child_is_an_event():
    """The responder refuses the Child SA of IKE_AUTH (TS_UNACCEPTABLE): the IKE SA is up and
    the initiator gets ChildFailed (what `vpn-gw up` reports), no ChildUp."""
    from ikev2.events import ChildFailed
    hq, br = site_to_site()
    br.children[0] = child("net", "10.2.0.0/24", "10.99.0.0/24")   # hq does not protect 10.99/24
    link = pair(br, hq)
    sa = up(link)
    assert sa.state == State.ESTABLISHED
    assert not events(link.events_a, ChildUp)
    (failed,) = events(link.events_a, ChildFailed)
    assert failed.child_name == "net" and failed.ike_id == sa.ike_id
    assert failed.reason == "peer refused it: TS_UNACCEPTABLE"
    kinds = [type(e).__name__ for e in link.events_a if isinstance(e, (IkeUp, ChildFailed))]
    assert kinds == ["IkeUp", "ChildFailed"]   # the order the `up` waiter relies on


def test_child_rekey_refused_without_a_group_says_how_to_allow_pfs():
    """Libreswan's default pfs=yes puts a key exchange into its Child rekeys: a gateway whose
    esp_proposals name no group refuses them, and the log line says what to configure."""
    hq, br = site_to_site()
    from ikev2.crypto.proposals import parse_proposal
    br.children[0].esp_proposals[:] = [parse_proposal("aes256gcm16-ecp256", 3)]  # the PFS side
    lines: list[tuple[str, str, dict]] = []
    link = pair(br, hq)
    link.b.log = lambda level, event, **kw: lines.append((level, event, kw))
    up(link)  # the first Child SA (in IKE_AUTH) has no key exchange: it comes up
    sa = link.a.sas[0]
    old = sa.children[0]
    assert sa.rekey_child(old.spi_in, link.now)
    link.run(link.now + 2.0)
    refused = [kw for _lvl, ev, kw in lines if ev == "request refused" and kw.get("notify") == "NO_PROPOSAL_CHOSEN"]
    assert refused, lines
    assert "pfs=yes" in refused[0]["reason"] and "esp_proposals" in refused[0]["reason"]
