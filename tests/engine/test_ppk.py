"""RFC 8784 post-quantum preshared keys, ours to ours in memory."""
from __future__ import annotations

import pytest

from ikev2.constants import ExchangeType, NotifyType
from ikev2.crypto.ppk import parse_ppk_identity, ppk_identity_data, ppk_key
from ikev2.crypto.transforms import prf_by_id
from ikev2.errors import ParseError
from ikev2.events import AuthFailed, ChildUp, IkeUp
from ikev2.message import decode_message
from tests.engine.harness import pair, site_to_site

PPK = bytes(range(32))
OTHER = bytes(range(1, 33))


def _run(init_kw, resp_kw, track=False):
    hq, _ = site_to_site()
    _, br = site_to_site()
    for k, v in resp_kw.items():
        setattr(hq, k, v)
    for k, v in init_kw.items():
        setattr(br, k, v)
    link = pair(br, hq)
    sa = link.a.initiate("hq", 0.0)
    link.run(2.0)
    return link, sa


def _ups(link):
    return [e for e in link.events_a + link.events_b if isinstance(e, IkeUp)]


def _child_keys_agree(link):
    a = next(e for e in link.events_a if isinstance(e, ChildUp))
    b = next(e for e in link.events_b if isinstance(e, ChildUp))
    return a.keys.encr_key_out == b.keys.encr_key_in


def _notifies(link, exchange):
    out = []
    for _t, _s, _d, data in link.trace:
        msg = decode_message(data)
        if msg.exchange == exchange:
            out.append(msg)
    return out


def test_ppk_used_both_sides_changes_sk_d():
    link, sa = _run(dict(ppk_id=b"ppk-1", ppk=PPK), dict(ppk_id=b"ppk-1", ppk=PPK))
    assert len(_ups(link)) == 2 and _child_keys_agree(link)
    resp = link.b.sas[0]
    assert sa.ppk_used and resp.ppk_used and sa.status(2.0)["ppk"] is True
    assert sa.keys.sk_d == resp.keys.sk_d
    init = _notifies(link, ExchangeType.IKE_SA_INIT)
    assert all(m.notify(NotifyType.USE_PPK) is not None for m in init)


def test_ppk_keys_are_prf_plus_of_the_ppk():
    prf = prf_by_id(5)  # HMAC-SHA2-256
    sk = bytes(32)
    assert ppk_key(prf, PPK, sk) == prf(PPK, sk + b"\x01")  # one block: T1 = prf(K, S | 0x01)
    assert len(ppk_key(prf_by_id(6), PPK, bytes(48))) == 48


def test_ppk_identity_codec():
    assert ppk_identity_data(b"abc") == b"\x02abc"
    assert parse_ppk_identity(b"\x02abc") == b"abc" and parse_ppk_identity(b"\x01x") == b"x"
    for bad in (b"", b"\x02", b"\x07abc"):
        with pytest.raises(ParseError):
            parse_ppk_identity(bad)


def test_optional_ppk_falls_back_when_responder_has_none():
    link, sa = _run(dict(ppk_id=b"ppk-1", ppk=PPK), {})
    assert len(_ups(link)) == 2 and _child_keys_agree(link)
    assert not sa.ppk_used and not link.b.sas[0].ppk_used
    # the responder sent no USE_PPK, so no PPK_IDENTITY went out either
    assert all(m.notify(NotifyType.USE_PPK) is None for m in _notifies(link, ExchangeType.IKE_SA_INIT)
               if m.is_response)


def test_optional_ppk_with_unknown_ppk_id_uses_no_ppk_auth():
    link, sa = _run(dict(ppk_id=b"ppk-1", ppk=PPK), dict(ppk_id=b"ppk-2", ppk=OTHER))
    assert len(_ups(link)) == 2 and _child_keys_agree(link)
    assert not sa.ppk_used


@pytest.mark.parametrize("side", ["initiator", "responder"])
def test_required_ppk_without_peer_ppk_fails(side):
    if side == "initiator":
        link, sa = _run(dict(ppk_id=b"ppk-1", ppk=PPK, ppk_required=True), {})
    else:
        link, sa = _run({}, dict(ppk_id=b"ppk-1", ppk=PPK, ppk_required=True))
    assert not _ups(link)
    fails = [e.reason for e in link.events_a + link.events_b if isinstance(e, AuthFailed)]
    assert any("PPK required" in r for r in fails), fails


def test_mismatched_ppk_is_refused():
    """Same PPK_ID, different PPK: AUTH with SK_pi' does not verify (required on both)."""
    link, sa = _run(dict(ppk_id=b"ppk-1", ppk=PPK, ppk_required=True),
                    dict(ppk_id=b"ppk-1", ppk=OTHER, ppk_required=True))
    assert not _ups(link)
    fails = [e.reason for e in link.events_b if isinstance(e, AuthFailed)]
    assert any("PSK authentication" in r for r in fails), fails


def test_mismatched_optional_ppk_is_refused_too():
    """Optional, but the responder has a PPK for that PPK_ID: it must use it (no fallback)."""
    link, sa = _run(dict(ppk_id=b"ppk-1", ppk=PPK), dict(ppk_id=b"ppk-1", ppk=OTHER))
    assert not _ups(link)
