"""Proposal strings (strongSwan syntax), formatting, responder selection and suites."""
from __future__ import annotations

import pytest

from ikev2.constants import DhId, EncrId, EsnId, IntegId, PrfId, ProtocolId, TransformType
from ikev2.crypto.proposals import (
    child_suite,
    choose_proposal,
    format_proposal,
    ike_suite,
    parse_proposal,
    parse_proposals,
    proposal_display,
    proposal_keywords,
)
from ikev2.errors import ProposalError
from ikev2.payloads import Proposal, Transform

IKE, ESP = ProtocolId.IKE, ProtocolId.ESP
T = TransformType


def tf(p: Proposal) -> list[tuple[int, int, int | None]]:
    return [(t.type, t.id, t.key_length) for t in p.transforms]


# --- parsing ---------------------------------------------------------------------------------

def test_parse_ike_aead():
    p = parse_proposal("aes256gcm16-prfsha256-x25519", IKE)
    assert (p.num, p.protocol, p.spi) == (1, IKE, b"")
    assert tf(p) == [(T.ENCR, EncrId.AES_GCM_16, 256), (T.PRF, PrfId.HMAC_SHA2_256, None),
                     (T.DH, DhId.CURVE25519, None)]


def test_parse_ike_integ_implies_prf():
    p = parse_proposal("aes128-sha256-ecp256", IKE)
    assert tf(p) == [(T.ENCR, EncrId.AES_CBC, 128), (T.PRF, PrfId.HMAC_SHA2_256, None),
                     (T.INTEG, IntegId.HMAC_SHA2_256_128, None), (T.DH, DhId.ECP_256, None)]
    p = parse_proposal("aes256-sha384-modp3072", IKE)
    assert tf(p) == [(T.ENCR, EncrId.AES_CBC, 256), (T.PRF, PrfId.HMAC_SHA2_384, None),
                     (T.INTEG, IntegId.HMAC_SHA2_384_192, None), (T.DH, DhId.MODP_3072, None)]
    # explicit PRF wins over the implied one
    p = parse_proposal("aes128-sha1-prfsha256-ecp256", IKE)
    assert [t.id for t in p.transforms if t.type == T.PRF] == [PrfId.HMAC_SHA2_256]


def test_parse_ike_chacha_has_no_key_length():
    p = parse_proposal("chacha20poly1305-prfsha512-x448", IKE)
    assert tf(p) == [(T.ENCR, EncrId.CHACHA20_POLY1305, None), (T.PRF, PrfId.HMAC_SHA2_512, None),
                     (T.DH, DhId.CURVE448, None)]


def test_parse_ike_several_per_kind():
    p = parse_proposal("aes256-aes128-sha256-sha384-ecp256-x25519", IKE)
    assert tf(p) == [
        (T.ENCR, EncrId.AES_CBC, 256), (T.ENCR, EncrId.AES_CBC, 128),
        (T.PRF, PrfId.HMAC_SHA2_256, None), (T.PRF, PrfId.HMAC_SHA2_384, None),
        (T.INTEG, IntegId.HMAC_SHA2_256_128, None), (T.INTEG, IntegId.HMAC_SHA2_384_192, None),
        (T.DH, DhId.ECP_256, None), (T.DH, DhId.CURVE25519, None),
    ]


def test_parse_esp():
    assert tf(parse_proposal("aes256gcm16", ESP)) == [
        (T.ENCR, EncrId.AES_GCM_16, 256), (T.ESN, EsnId.NO_ESN, None)]
    assert tf(parse_proposal("aes128-sha256-modp2048", ESP)) == [
        (T.ENCR, EncrId.AES_CBC, 128), (T.INTEG, IntegId.HMAC_SHA2_256_128, None),
        (T.DH, DhId.MODP_2048, None), (T.ESN, EsnId.NO_ESN, None)]
    assert tf(parse_proposal("aes256gcm16-esn", ESP))[-1] == (T.ESN, EsnId.ESN, None)
    assert tf(parse_proposal("aes256gcm16-noesn", ESP))[-1] == (T.ESN, EsnId.NO_ESN, None)
    assert [t.id for t in parse_proposal("aes256gcm16-esn-noesn", ESP).transforms
            if t.type == T.ESN] == [EsnId.ESN, EsnId.NO_ESN]
    assert tf(parse_proposal("chacha20poly1305", ESP))[0] == (T.ENCR, EncrId.CHACHA20_POLY1305,
                                                              None)


def test_parse_aliases_case_and_duplicates():
    assert tf(parse_proposal(" AES128-SHA2_256-Curve25519 ", IKE)) == \
        tf(parse_proposal("aes128-sha256-x25519", IKE))
    assert tf(parse_proposal("aes128-aes128-sha256-ecp256", IKE)) == \
        tf(parse_proposal("aes128-sha256-ecp256", IKE))
    assert tf(parse_proposal("aes-sha1-modp2048", IKE)) == [
        (T.ENCR, EncrId.AES_CBC, 128), (T.PRF, PrfId.HMAC_SHA1, None),
        (T.INTEG, IntegId.HMAC_SHA1_96, None), (T.DH, DhId.MODP_2048, None)]


@pytest.mark.parametrize("text,proto,match", [
    ("aes128-sha256-bogus", IKE, "unknown algorithm keyword 'bogus'"),
    ("3des-sha256-ecp256", IKE, "'3des'.*refused as weak"),
    ("des-sha256-ecp256", IKE, "'des'.*refused as weak"),
    ("aes128-md5-ecp256", IKE, "'md5'.*refused as weak"),
    ("aes128-sha256-modp1024", IKE, "'modp1024'.*refused as weak"),
    ("aes128-sha256-modp768", IKE, "'modp768'.*refused as weak"),
    ("aes128-sha256-modp1536", IKE, "'modp1536'.*refused as weak"),
    ("aes128-sha256-modp2048s256", IKE, "refused as weak"),
    ("null-sha256", ESP, "'null'.*refused as weak"),
    ("aes128ccm16-prfsha256-ecp256", IKE, "'aes128ccm16' is not supported"),
    ("aes128ctr-sha256-ecp256", IKE, "not supported"),
    ("aes256gcm16-sha256-x25519", IKE, "AEAD algorithm 'aes256gcm16' cannot be combined with "
                                       "integrity algorithm 'sha256'"),
    ("aes256gcm16-sha256", ESP, "cannot be combined"),
    ("aes256gcm16-aes256-sha256-x25519", IKE, "mixes AEAD"),
    ("sha256-prfsha256-x25519", IKE, "no encryption algorithm"),
    ("sha256", ESP, "no encryption algorithm"),
    ("aes128-ecp256", IKE, "needs an integrity algorithm"),
    ("aes128", ESP, "needs an integrity algorithm"),
    ("aes256gcm16-x25519", IKE, "needs a PRF"),
    ("aes128-sha256", IKE, "needs a key exchange method"),
    ("aes256gcm16-prfsha256-x25519-esn", IKE, "not allowed in IKE"),
    ("aes256gcm16-prfsha256", ESP, "PRF 'prfsha256' is not allowed in an ESP proposal"),
    ("aes128--sha256-ecp256", IKE, "empty algorithm keyword"),
    ("", IKE, "empty proposal"),
    ("   ", ESP, "empty proposal"),
])
def test_parse_errors(text, proto, match):
    with pytest.raises(ProposalError, match=match):
        parse_proposal(text, proto)


def test_parse_ah_is_refused():
    with pytest.raises(ProposalError, match="AH"):
        parse_proposal("sha256", ProtocolId.AH)


def test_parse_proposals_numbers():
    ps = parse_proposals("aes256gcm16-prfsha256-x25519, aes128-sha256-ecp256", IKE)
    assert [p.num for p in ps] == [1, 2]
    assert [p.num for p in parse_proposals(["aes256gcm16", "aes128-sha256"], ESP)] == [1, 2]


# --- formatting ------------------------------------------------------------------------------

@pytest.mark.parametrize("text,proto,keywords,display", [
    ("aes256gcm16-prfsha256-x25519", IKE, "aes256gcm16-prfsha256-x25519",
     "AES_GCM_16_256/PRF_HMAC_SHA2_256/CURVE_25519"),
    ("aes128-sha256-ecp256", IKE, "aes128-sha256-prfsha256-ecp256",
     "AES_CBC_128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/ECP_256"),
    ("chacha20poly1305-prfsha512-x448", IKE, "chacha20poly1305-prfsha512-x448",
     "CHACHA20_POLY1305/PRF_HMAC_SHA2_512/CURVE_448"),
    ("aes256gcm16", ESP, "aes256gcm16-noesn", "AES_GCM_16_256/NO_EXT_SEQ"),
    ("aes128-sha256-modp2048-esn", ESP, "aes128-sha256-modp2048-esn",
     "AES_CBC_128/HMAC_SHA2_256_128/MODP_2048/EXT_SEQ"),
])
def test_format(text, proto, keywords, display):
    p = parse_proposal(text, proto)
    assert proposal_keywords(p) == format_proposal(p) == keywords
    assert proposal_display(p) == display
    assert proposal_display(p, with_protocol=True) == f"{proto.name}:{display}"
    assert tf(parse_proposal(keywords, proto)) == tf(p)


def test_format_unknown_transforms():
    p = Proposal(1, IKE, b"", [Transform(T.ENCR, EncrId.DES3), Transform(T.PRF, 99),
                               Transform(T.DH, DhId.MODP_1024), Transform(9, 1)])
    assert proposal_display(p) == "DES3/PRF_99/MODP_1024/KE4_1"  # ADDKE4, unknown method 1


# --- selection -------------------------------------------------------------------------------

def ours(*texts, proto=IKE):
    return parse_proposals(list(texts), proto)


def test_choose_first_of_theirs_covered():
    our = ours("aes128-sha256-ecp256", "aes256gcm16-prfsha256-x25519")
    their = ours("aes256gcm16-prfsha384-x448", "aes256gcm16-prfsha256-x25519",
                 "aes128-sha256-ecp256")
    their[1].spi = b"\x01" * 8
    chosen = choose_proposal(our, their)
    assert chosen.num == 2 and chosen.spi == b"\x01" * 8
    assert proposal_display(chosen) == "AES_GCM_16_256/PRF_HMAC_SHA2_256/CURVE_25519"


def test_choose_picks_their_preferred_transform_and_one_per_type():
    our = ours("aes128-aes256-sha256-sha384-ecp256-x25519-modp2048")
    their = ours("aes256-aes128-sha384-sha256-x25519-ecp256")
    chosen = choose_proposal(our, their)
    assert proposal_display(chosen) == \
        "AES_CBC_256/HMAC_SHA2_384_192/PRF_HMAC_SHA2_384/CURVE_25519"
    assert sorted(t.type for t in chosen.transforms) == [T.ENCR, T.PRF, T.INTEG, T.DH]
    suite = ike_suite(chosen)
    assert (suite.encr.name, suite.prf.name, suite.integ.name, suite.ke.name) == \
        ("AES_CBC_256", "PRF_HMAC_SHA2_384", "HMAC_SHA2_384_192", "CURVE_25519")


def test_choose_key_length_must_match():
    assert choose_proposal(ours("aes128-sha256-ecp256"), ours("aes256-sha256-ecp256")) is None


def test_choose_none_when_nothing_matches():
    assert choose_proposal(ours("aes128-sha256-ecp256"), ours("aes128-sha256-x25519")) is None
    assert choose_proposal(ours("aes128-sha256-ecp256"), []) is None
    # protocol must match
    assert choose_proposal(ours("aes256gcm16", proto=ESP),
                           ours("aes256gcm16-prfsha256-x25519")) is None


def test_choose_esp_pfs_and_esn():
    # We want no PFS; they insist on a group: no match.
    assert choose_proposal(ours("aes256gcm16", proto=ESP),
                           ours("aes256gcm16-modp2048", proto=ESP)) is None
    # They offer PFS or NONE explicitly: we can pick NONE, echoed back.
    their = ours("aes256gcm16", proto=ESP)
    their[0].transforms.insert(1, Transform(T.DH, DhId.MODP_2048))
    their[0].transforms.insert(2, Transform(T.DH, DhId.NONE))
    chosen = choose_proposal(ours("aes256gcm16", proto=ESP), their)
    assert [(t.type, t.id) for t in chosen.transforms] == [
        (T.ENCR, EncrId.AES_GCM_16), (T.DH, DhId.NONE), (T.ESN, EsnId.NO_ESN)]
    assert child_suite(chosen).ke is None
    # We want PFS, they do not offer it: no match.
    assert choose_proposal(ours("aes256gcm16-ecp256", proto=ESP),
                           ours("aes256gcm16", proto=ESP)) is None
    # ESN: both allowed by us, they prefer ESN.
    chosen = choose_proposal(ours("aes256gcm16-ecp256-noesn-esn", proto=ESP),
                             ours("aes256gcm16-ecp256-esn-noesn", proto=ESP))
    suite = child_suite(chosen)
    assert suite.esn is True and suite.ke.name == "ECP_256" and suite.integ is None
    assert choose_proposal(ours("aes256gcm16-esn", proto=ESP),
                           ours("aes256gcm16", proto=ESP)) is None


def test_choose_integ_none_explicit_with_aead():
    their = ours("aes256gcm16-prfsha256-x25519")
    their[0].transforms.append(Transform(T.INTEG, IntegId.NONE))
    chosen = choose_proposal(ours("aes256gcm16-prfsha256-x25519"), their)
    assert (T.INTEG, IntegId.NONE) in [(t.type, t.id) for t in chosen.transforms]
    assert ike_suite(chosen).integ is None


def test_choose_skips_unknown_transform_type_and_attributes():
    their = ours("aes256gcm16-prfsha256-x25519", "aes128-sha256-ecp256")
    their[0].transforms.append(Transform(T.ADDKE1, 36))  # ML-KEM additional key exchange
    their[1].transforms[0].attributes.append((99, 1))  # unknown attribute on the ENCR
    our = ours("aes256gcm16-prfsha256-x25519", "aes128-sha256-ecp256")
    assert choose_proposal(our, their) is None
    their.append(ours("aes128-sha256-ecp256")[0])
    their[-1].num = 3
    assert choose_proposal(our, their).num == 3


# --- suites ----------------------------------------------------------------------------------

def test_ike_suite_and_child_suite():
    s = ike_suite(parse_proposal("aes256gcm16-prfsha256-x25519", IKE))
    assert (s.encr.name, s.prf.name, s.integ, s.ke.name) == \
        ("AES_GCM_16_256", "PRF_HMAC_SHA2_256", None, "CURVE_25519")
    c = child_suite(parse_proposal("aes128-sha256-modp2048", ESP))
    assert (c.encr.name, c.integ.name, c.ke.name, c.esn) == \
        ("AES_CBC_128", "HMAC_SHA2_256_128", "MODP_2048", False)


@pytest.mark.parametrize("transforms,match", [
    ([(T.ENCR, EncrId.AES_GCM_16, 256), (T.PRF, PrfId.HMAC_SHA2_256, None)],
     "no key exchange"),
    ([(T.PRF, PrfId.HMAC_SHA2_256, None), (T.DH, DhId.ECP_256, None)], "no encryption"),
    ([(T.ENCR, EncrId.AES_GCM_16, 256), (T.DH, DhId.ECP_256, None)], "no PRF"),
    ([(T.ENCR, EncrId.AES_CBC, 128), (T.PRF, PrfId.HMAC_SHA2_256, None),
      (T.DH, DhId.ECP_256, None)], "needs an integrity"),
    ([(T.ENCR, EncrId.AES_GCM_16, 256), (T.ENCR, EncrId.AES_GCM_16, 128),
      (T.PRF, PrfId.HMAC_SHA2_256, None), (T.DH, DhId.ECP_256, None)], "choose one"),
    ([(T.ENCR, EncrId.DES3, None), (T.PRF, PrfId.HMAC_SHA2_256, None),
      (T.DH, DhId.ECP_256, None)], "unsupported encryption"),
    ([(T.ENCR, EncrId.AES_GCM_16, 256), (T.PRF, PrfId.HMAC_MD5, None),
      (T.DH, DhId.ECP_256, None)], "unsupported PRF"),
    ([(T.ENCR, EncrId.AES_GCM_16, 256), (T.PRF, PrfId.HMAC_SHA2_256, None),
      (T.DH, DhId.MODP_1024, None)], "unsupported key exchange"),
])
def test_ike_suite_errors(transforms, match):
    p = Proposal(1, IKE, b"", [Transform(t, i, k) for t, i, k in transforms])
    with pytest.raises(ProposalError, match=match):
        ike_suite(p)


def test_child_suite_errors():
    with pytest.raises(ProposalError, match="not an ESP"):
        child_suite(parse_proposal("aes256gcm16-prfsha256-x25519", IKE))
    with pytest.raises(ProposalError, match="not an IKE"):
        ike_suite(parse_proposal("aes256gcm16", ESP))
    p = parse_proposal("aes256gcm16", ESP)
    p.transforms.append(Transform(T.PRF, PrfId.HMAC_SHA2_256))
    with pytest.raises(ProposalError, match="PRF"):
        child_suite(p)


# --- the memos (choose_proposal, proposal_display, suites) -----------------------------------

def test_memoised_choice_is_a_fresh_proposal_with_the_peers_number_and_spi():
    our = ours("aes256gcm16-prfsha256-x25519")
    first = ours("aes256gcm16-prfsha256-x25519")
    second = ours("aes256gcm16-prfsha256-x25519")
    second[0].num, second[0].spi = 7, b"\x01" * 8
    a, b = choose_proposal(our, first), choose_proposal(our, second)
    assert tf(a) == tf(b)
    assert (a.num, a.spi, b.num, b.spi) == (1, b"", 7, b"\x01" * 8)
    assert a.transforms[0] is not b.transforms[0]  # no transform object shared between SAs


def test_memo_follows_a_changed_offer():
    our = ours("aes256gcm16-prfsha256-x25519")
    their = ours("aes256gcm16-prfsha256-x25519")
    assert choose_proposal(our, their) is not None
    their[0].transforms[0].attributes.append((99, 1))  # now unselectable (unknown attribute)
    assert choose_proposal(our, their) is None
    their[0].transforms[0].attributes.clear()
    assert choose_proposal(our, their) is not None


def test_memos_are_bounded():
    from ikev2.crypto import proposals as mod
    our = ours("aes256gcm16-prfsha256-x25519")
    for i in range(mod.MEMO_MAX + 50):  # a peer sending ever-new offers
        their = ours("aes256gcm16-prfsha256-x25519")
        their[0].transforms.append(Transform(200, i))  # private-use transform type, ignored
        choose_proposal(our, their)
        proposal_display(their[0])
    assert 0 < len(mod._CHOICE) <= mod.MEMO_MAX
    assert 0 < len(mod._DISPLAY) <= mod.MEMO_MAX


def test_suite_errors_name_each_proposal_number():
    bad = ours("aes256gcm16-prfsha256-x25519")[0]
    bad.transforms = [t for t in bad.transforms if t.type != T.PRF]
    for num in (1, 5):
        bad.num = num
        with pytest.raises(ProposalError, match=f"proposal {num} has no PRF"):
            ike_suite(bad)
