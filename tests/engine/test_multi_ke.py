"""RFC 9370 multiple key exchanges over RFC 9242 IKE_INTERMEDIATE, ours to ours in memory."""
from __future__ import annotations

import pytest

from ikev2.constants import ExchangeType, PayloadType
from ikev2.events import AuthFailed, ChildUp, IkeDown, IkeUp
from ikev2.message import decode_message
from tests.engine.harness import pair, site_to_site


def _exchanges(link):
    """(exchange, is_response, fragment?, length) of every datagram, in order."""
    out = []
    for _now, _src, _dst, data in link.trace:
        msg = decode_message(data)
        out.append((ExchangeType(msg.exchange).name, msg.is_response,
                    msg.payloads[-1].type == PayloadType.SKF if msg.payloads else False, len(data)))
    return out


def _up(ike, **kw):
    hq, br = site_to_site(ike=ike, **kw)
    link = pair(br, hq)
    sa = link.a.initiate("hq", 0.0)
    link.run(2.0)
    return link, sa


def _established(link):
    ups = [e for e in link.events_a + link.events_b if isinstance(e, IkeUp)]
    kids = [e for e in link.events_a + link.events_b if isinstance(e, ChildUp)]
    return ups, kids


def test_x25519_plus_mlkem768_runs_one_intermediate_and_comes_up():
    link, sa = _up(("aes256gcm16-prfsha384-x25519-ke1_mlkem768",))
    ups, kids = _established(link)
    assert len(ups) == 2 and len(kids) == 2, [e for e in link.events_a + link.events_b]
    assert ups[0].proposal == "AES_GCM_16_256/PRF_HMAC_SHA2_384/CURVE_25519/KE1_ML_KEM_768"
    kinds = [(x, r) for x, r, _f, _l in _exchanges(link)]
    assert kinds[:6] == [("IKE_SA_INIT", False), ("IKE_SA_INIT", True),
                         ("IKE_INTERMEDIATE", False), ("IKE_INTERMEDIATE", False),  # 2 fragments
                         ("IKE_INTERMEDIATE", True), ("IKE_AUTH", False)]
    assert sa.status(2.0)["key_exchanges"] == ["CURVE_25519", "ML_KEM_768"]
    # The Child SA keys agree (they come from the SK_d after the ML-KEM update).
    a = next(e for e in link.events_a if isinstance(e, ChildUp))
    b = next(e for e in link.events_b if isinstance(e, ChildUp))
    assert a.keys.encr_key_out == b.keys.encr_key_in


def test_keys_change_after_the_additional_exchange(monkeypatch):
    """SK_* after IKE_INTERMEDIATE = RFC 9370 update of the IKE_SA_INIT keys, on both sides."""
    import dataclasses

    from ikev2 import exchange_intermediate
    from ikev2.multi_ke import updated_ike_keys
    calls = []

    def recording(suite, keys, shared, ni, nr, spi_i, spi_r):
        calls.append((dataclasses.replace(keys), shared))
        return updated_ike_keys(suite, keys, shared, ni, nr, spi_i, spi_r)

    monkeypatch.setattr(exchange_intermediate, "updated_ike_keys", recording)
    link, sa = _up(("aes256gcm16-prfsha384-x25519-ke1_mlkem768",))
    assert len(calls) == 2  # initiator and responder
    (old_i, shared_i), (old_r, shared_r) = calls
    assert shared_i == shared_r and len(shared_i) == 32
    assert old_i.sk_d == old_r.sk_d
    new = updated_ike_keys(sa.suite, old_i, shared_i, sa.ni, sa.nr, sa.spi_i, sa.spi_r)
    assert new.sk_d != old_i.sk_d and new.sk_ei != old_i.sk_ei
    assert (sa.keys.sk_d, sa.keys.sk_ei, sa.keys.sk_pr) == (new.sk_d, new.sk_ei, new.sk_pr)
    assert sa._int_chain.exchanges == 1 and len(sa._int_chain.i) == 48


def test_two_additional_key_exchanges_fragmented():
    link, sa = _up(("aes256gcm16-prfsha384-ecp384-ke1_mlkem768-ke2_mlkem1024",))
    ups, kids = _established(link)
    assert len(ups) == 2 and len(kids) == 2
    ex = _exchanges(link)
    inter_req = [f for x, r, f, _l in ex if x == "IKE_INTERMEDIATE" and not r]
    assert len(inter_req) >= 4 and all(inter_req)  # both requests needed fragments
    assert all(size <= 1280 - 28 for _x, _r, _f, size in ex if _x == "IKE_INTERMEDIATE")
    assert sa.status(2.0)["key_exchanges"] == ["ECP_384", "ML_KEM_768", "ML_KEM_1024"]


def test_mlkem768_alone_needs_no_intermediate():
    link, sa = _up(("aes256gcm16-prfsha384-mlkem768",))
    ups, kids = _established(link)
    assert len(ups) == 2 and len(kids) == 2
    assert ups[0].proposal == "AES_GCM_16_256/PRF_HMAC_SHA2_384/ML_KEM_768"
    assert "IKE_INTERMEDIATE" not in {x for x, *_ in _exchanges(link)}
    lens = [size for x, _r, _f, size in _exchanges(link) if x == "IKE_SA_INIT"]
    assert lens[0] > 1184 and lens[1] > 1088


def test_optional_additional_exchange_negotiated_to_none():
    hq, _ = site_to_site(ike=("aes256gcm16-prfsha384-x25519",))
    _, br = site_to_site(ike=("aes256gcm16-prfsha384-x25519-ke1_mlkem768-ke1_none",))
    link = pair(br, hq)
    sa = link.a.initiate("hq", 0.0)
    link.run(2.0)
    ups, kids = _established(link)
    assert len(ups) == 2
    assert "IKE_INTERMEDIATE" not in {x for x, *_ in _exchanges(link)}
    assert sa.status(2.0)["key_exchanges"] == ["CURVE_25519"]


def test_mandatory_additional_exchange_against_classic_peer_fails():
    hq, _ = site_to_site(ike=("aes256gcm16-prfsha384-x25519",))
    _, br = site_to_site(ike=("aes256gcm16-prfsha384-x25519-ke1_mlkem768",))
    link = pair(br, hq)
    link.a.initiate("hq", 0.0)
    link.run(2.0)
    assert not [e for e in link.events_a if isinstance(e, IkeUp)]
    assert any("NO_PROPOSAL_CHOSEN" in e.reason for e in link.events_a if isinstance(e, IkeDown))


def test_tampered_intermediate_content_breaks_auth():
    """The IntAuth chain binds IKE_INTERMEDIATE into AUTH: a responder whose chain differs
    (simulated by corrupting it after the exchange) refuses the initiator's AUTH."""
    hq, br = site_to_site(ike=("aes256gcm16-prfsha384-x25519-ke1_mlkem768",))
    link = pair(br, hq)
    link.a.initiate("hq", 0.0)
    # When the IKE_AUTH request is on its way, the responder's IntAuth_i is replaced.
    seen = {}

    def drop(data, src, dst):
        msg = decode_message(data)
        if msg.exchange == ExchangeType.IKE_AUTH and not msg.is_response and not seen.get("done"):
            seen["done"] = True
            for sa in link.b.by_spi.values():
                sa._int_chain.i = bytes(len(sa._int_chain.i))
        return False

    link.drop_filter = drop
    link.run(2.0)
    assert seen.get("done")
    assert not [e for e in link.events_a + link.events_b if isinstance(e, IkeUp)]
    assert any("PSK authentication" in e.reason for e in link.events_b if isinstance(e, AuthFailed))



# --- CREATE_CHILD_SA with IKE_FOLLOWUP_KE (RFC 9370 2.2.4) ---------------------------------------

from ikev2.events import IkeRekeyed  # noqa: E402
from tests.engine.test_exchanges import events, installed_pairs, up  # noqa: E402

HYBRID_ESP = ("aes256gcm16-x25519-ke1_mlkem768",)


def _pfs_pair(ike=("aes256gcm16-prfsha384-x25519-ke1_mlkem768",), esp=HYBRID_ESP):
    from ikev2.crypto.proposals import parse_proposal
    hq, br = site_to_site(ike=ike)
    for p in (hq, br):
        p.children[0].esp_proposals[:] = [parse_proposal(e, 3) for e in esp]
    link = pair(br, hq)
    up(link)
    return link


def _followups(link):
    return [(x, r) for x, r, _f, _l in _exchanges(link) if x == "IKE_FOLLOWUP_KE"]


@pytest.mark.parametrize("who", ["initiator", "responder"])
def test_child_rekey_with_additional_key_exchange(who):
    link = _pfs_pair()
    mgr = link.a if who == "initiator" else link.b
    sa = mgr.sas[0]
    old = sa.children[0]
    assert "KE1_ML_KEM_768" not in old.proposal_text  # IKE_AUTH carries no KE for the Child SA
    assert sa.rekey_child(old.spi_in, link.now)
    link.run(link.now + 2.0)
    ca, cb = installed_pairs(link)
    assert ca == cb and len(ca) == 1 and old.spi_in not in {s for s, _ in ca}
    new = sa.children[0]
    assert new.proposal_text == "AES_GCM_16_256/CURVE_25519/KE1_ML_KEM_768/NO_EXT_SEQ"
    assert _followups(link) == [("IKE_FOLLOWUP_KE", False), ("IKE_FOLLOWUP_KE", False),
                                ("IKE_FOLLOWUP_KE", True)]  # request in 2 fragments
    a = [e for e in events(link.events_a, ChildUp) if e.rekey_of][-1]
    b = [e for e in events(link.events_b, ChildUp) if e.rekey_of][-1]
    assert a.keys.encr_key_out == b.keys.encr_key_in and a.keys.encr_key_in == b.keys.encr_key_out


def test_child_keymat_includes_every_secret(monkeypatch):
    """KEYMAT = prf+(SK_d, SK(0) | Ni | Nr | SK(1)): the followup's secret after the nonces."""
    from ikev2 import exchange_child
    seen = []
    real = exchange_child.derive_child_keys

    def spy(prf, sk_d, encr, integ, ni, nr, shared_secret=None, additional=b""):
        seen.append((shared_secret, additional))
        return real(prf, sk_d, encr, integ, ni, nr, shared_secret, additional)

    monkeypatch.setattr(exchange_child, "derive_child_keys", spy)
    link = _pfs_pair()
    sa = link.a.sas[0]
    sa.rekey_child(sa.children[0].spi_in, link.now)
    link.run(link.now + 2.0)
    rekeyed = [s for s in seen if s[0]]
    assert len(rekeyed) == 2 and rekeyed[0] == rekeyed[1]
    assert (len(rekeyed[0][0]), len(rekeyed[0][1])) == (32, 32)  # x25519 g^ir, ML-KEM-768 K


def test_new_child_sa_with_pfs_and_followup():
    from tests.engine.harness import child
    hq, br = site_to_site()
    for p, (lts, rts) in ((hq, ("10.1.5.0/24", "10.2.5.0/24")), (br, ("10.2.5.0/24", "10.1.5.0/24"))):
        p.children.append(child("voice", lts, rts, esp=HYBRID_ESP))
    link = pair(br, hq)
    sa = up(link)
    assert sorted(c.name for c in sa.children) == ["net", "voice"]
    voice = next(c for c in sa.children if c.name == "voice")
    assert "KE1_ML_KEM_768" in voice.proposal_text
    assert ("IKE_FOLLOWUP_KE", True) in _followups(link)


@pytest.mark.parametrize("who", ["initiator", "responder"])
def test_ike_rekey_with_additional_key_exchange(who):
    link = _pfs_pair()
    mgr = link.a if who == "initiator" else link.b
    before = installed_pairs(link)
    old = mgr.sas[0]
    old_spis = (old.spi_i, old.spi_r)
    old.rekey_ike(link.now)
    link.run(link.now + 2.0)
    assert len(link.a.sas) == 1 and len(link.b.sas) == 1
    na, nb = link.a.sas[0], link.b.sas[0]
    assert (na.spi_i, na.spi_r) == (nb.spi_i, nb.spi_r) != old_spis
    assert na.keys.sk_d == nb.keys.sk_d and na.keys.sk_ei == nb.keys.sk_ei
    assert na.key_exchange_names() == ["CURVE_25519", "ML_KEM_768"]
    assert installed_pairs(link) == before
    assert events(link.events_a, IkeRekeyed) and events(link.events_b, IkeRekeyed)
    assert _followups(link)
    # The new IKE SA works: a Child rekey (with its own followup) over it.
    na.rekey_child(na.children[0].spi_in, link.now)
    link.run(link.now + 2.0)
    ca, cb = installed_pairs(link)
    assert ca == cb and len(ca) == 1 and ca != before[0]


def test_followup_with_unknown_link_gets_state_not_found():
    from ikev2 import payloads as P
    from ikev2.constants import NotifyType
    link = _pfs_pair()
    a, b = link.a.sas[0], link.b.sas[0]
    got = []
    a._request("bogus followup", lambda: (
        ExchangeType.IKE_FOLLOWUP_KE,
        [P.KEPayload(group=36, data=bytes(1184)),
         P.NotifyPayload(notify_type=NotifyType.ADDITIONAL_KEY_EXCHANGE, data=b"12345678")],
        lambda m: got.append([n.notify_type for n in m.notifies()])))
    a._pump(link.now)
    link.run(link.now + 1.0)
    assert got == [[NotifyType.STATE_NOT_FOUND]]
    assert a.state.value == "established" and b.state.value == "established"


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_hybrid_converges_under_loss_duplication_reordering(seed):
    """IKE_INTERMEDIATE (fragmented request) survives lost, duplicated and reordered datagrams:
    retransmissions are answered from the cached response, made before the key update."""
    hq, br = site_to_site(ike=("aes256gcm16-prfsha384-x25519-ke1_mlkem768",))
    hq.retransmit_tries = br.retransmit_tries = 8
    # (fast retransmissions: the whole set-up must fit in the responder's 30 s half-open limit)
    hq.retransmit_timeout = br.retransmit_timeout = 1.0
    hq.retransmit_base = br.retransmit_base = 1.4
    link = pair(br, hq, seed=str(seed), loss=0.2, duplicate=0.2, reorder=0.3)
    link.a.initiate("hq", 0.0)
    link.run(300.0)
    ups, kids = _established(link)
    assert len(ups) == 2 and len(kids) == 2, [type(e).__name__ for e in link.events_a + link.events_b]
    a = next(e for e in link.events_a if isinstance(e, ChildUp))
    b = next(e for e in link.events_b if isinstance(e, ChildUp))
    assert a.keys.encr_key_out == b.keys.encr_key_in
