"""IKE_AUTH with certificates (RFC 7427 signatures), chains, CERTREQ, and IKE fragmentation."""
from __future__ import annotations

import pytest

from ikev2 import payloads as P
from ikev2.constants import ExchangeType
from ikev2.events import AuthFailed
from ikev2.ike_sa import State
from ikev2.message import decode_message
from ikev2.policy import AuthConfig
from tests.engine.certgen import NOW, chain
from tests.engine.harness import pair, site_to_site


def cert_pair(kind, ca_kind=None, intermediates=0, pad_ou="", fragment_size=1280):
    hq, br = site_to_site(fragment_size=fragment_size)
    ca_hq, chain_hq, key_hq = chain(kind, "hq.example.org", ca_kind, intermediates, pad_ou)
    ca_br, chain_br, key_br = chain(kind, "branch1.example.org", ca_kind, intermediates, pad_ou)
    hq.local_auth = AuthConfig("pubkey", certs=chain_hq, private_key=key_hq)
    hq.remote_auth = AuthConfig("pubkey", cacerts=[ca_br])
    br.local_auth = AuthConfig("pubkey", certs=chain_br, private_key=key_br)
    br.remote_auth = AuthConfig("pubkey", cacerts=[ca_hq])
    link = pair(br, hq)
    wall = NOW.timestamp()
    link.a.wall_offset = link.b.wall_offset = wall
    return link


def run_up(link):
    sa = link.a.initiate("hq", 0.0)
    link.run(3.0)
    return sa


@pytest.mark.parametrize("kind", ["ecdsa", "ecdsa384", "rsa", "ed25519"])
def test_certificate_auth(kind):
    link = cert_pair(kind)
    sa = run_up(link)
    assert sa.state == State.ESTABLISHED, [e for e in link.events_a + link.events_b if isinstance(e, AuthFailed)]
    assert sa.children
    # The responder asked for certificates of its CA (CERTREQ in IKE_SA_INIT).
    resp = decode_message(next(d for _t, s, _d, d in link.trace if s[0] == "192.0.2.1"))
    assert resp.get(P.CertReqPayload) is not None


def test_chain_with_intermediate():
    link = cert_pair("ecdsa", intermediates=2)
    assert run_up(link).state == State.ESTABLISHED


def test_untrusted_ca_rejected():
    link = cert_pair("ecdsa")
    hq = link.b.policies[0]
    other_ca, _c, _k = chain("ecdsa", "someone")
    hq.remote_auth = AuthConfig("pubkey", cacerts=[other_ca])
    sa = run_up(link)
    assert sa.state == State.DELETED
    fails = [e.reason for e in link.events_b if isinstance(e, AuthFailed)]
    assert fails and "certificate of 'branch1.example.org' rejected" in fails[0]


def test_identity_not_in_certificate_rejected():
    link = cert_pair("ecdsa")
    br = link.a.policies[0]
    from ikev2.identity import Identity
    br.local_id = Identity.parse("other.example.org")
    hq = link.b.policies[0]
    from ikev2.identity import IdentityPattern
    hq.remote_id = IdentityPattern("%any")
    run_up(link)
    fails = [e.reason for e in link.events_b if isinstance(e, AuthFailed)]
    assert fails and "not confirmed by its certificate" in fails[0]


def test_expired_certificate_rejected():
    link = cert_pair("ecdsa")
    link.a.wall_offset = link.b.wall_offset = NOW.timestamp() + 400 * 86400
    run_up(link)
    fails = [e.reason for e in link.events_b + link.events_a if isinstance(e, AuthFailed)]
    assert fails and "expired" in fails[0]


def test_ike_auth_is_fragmented_with_large_chain():
    link = cert_pair("rsa3072", intermediates=3, pad_ou="x" * 400, fragment_size=576)
    sa = run_up(link)
    assert sa.state == State.ESTABLISHED
    auth_msgs = []
    for _t, src, _d, data in link.trace:
        m = decode_message(data)
        if m.exchange == ExchangeType.IKE_AUTH:
            auth_msgs.append((src[0], m))
    frags = [m for _s, m in auth_msgs if isinstance(m.payloads[-1], P.SKFPayload)]
    assert len(frags) >= 4
    assert all(len(d) + 28 + 4 <= 576 for _t, _s, _d, d in link.trace)  # IP+UDP+marker fit the size
    assert {m.payloads[-1].total_fragments for m in frags if m.is_response} and \
        {m.payloads[-1].total_fragments for m in frags if not m.is_response}
