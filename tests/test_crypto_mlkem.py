"""ML-KEM (FIPS 203) through the crypto layer: known answers, exact lengths, refusals."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from ikev2.constants import DhId, ProtocolId
from ikev2.crypto import mlkem
from ikev2.crypto.dh import ALL_KE_METHODS, ke_by_id
from ikev2.crypto.mlkem import MLKEM_METHODS
from ikev2.crypto.proposals import parse_proposal
from ikev2.errors import CryptoError, InvalidKeyExchange, ProposalError

KAT = json.loads((Path(__file__).parent / "data" / "mlkem_kat.json").read_text())


def _vectors():
    for bits, vecs in KAT["vectors"].items():
        for v in vecs:
            yield pytest.param(int(bits), v, id=f"ML-KEM-{bits}-count{v['count']}")


@pytest.mark.parametrize("bits,v", list(_vectors()))
def test_fips203_known_answers(bits, v):
    m = ke_by_id({512: DhId.ML_KEM_512, 768: DhId.ML_KEM_768, 1024: DhId.ML_KEM_1024}[bits])
    if not m.available:
        pytest.skip(m.unavailable_reason)  # e.g. ML-KEM-512: cryptography does not bind it
    seed = bytes.fromhex(v["d"]) + bytes.fromhex(v["z"])
    ours = m.private_from_value(seed)
    # KeyGen: the initiator's KE data is exactly FIPS 203's encapsulation key.
    assert ours.public_bytes == bytes.fromhex(v["pk"])
    assert len(ours.public_bytes) == m.ek_len
    # Decaps of the vector's ciphertext gives its shared secret ...
    assert ours.shared_secret(bytes.fromhex(v["ct"])) == bytes.fromhex(v["ss"])
    # ... and a forged ciphertext gives the implicit-rejection key, not an error.
    assert ours.shared_secret(bytes.fromhex(v["ct_n"])) == bytes.fromhex(v["ss_n"])


def test_the_same_seed_from_the_injected_rng_gives_the_same_key():
    m = ke_by_id(DhId.ML_KEM_768)
    stream = iter([b"\x01" * 64, b"\x01" * 64, b"\x02" * 64])
    a, b, c = (m.generate(lambda n: next(stream)) for _ in range(3))
    assert a.public_bytes == b.public_bytes != c.public_bytes


@pytest.mark.parametrize("m", [m for m in MLKEM_METHODS if m.available], ids=lambda m: m.name)
def test_responder_encapsulates_and_initiator_decapsulates(m):
    ours = m.generate(os.urandom)
    ct, shared = m.respond(os.urandom, ours.public_bytes)
    assert (len(ours.public_bytes), len(ct), len(shared)) == (m.ek_len, m.ct_len, 32)
    assert ours.shared_secret(ct) == shared


@pytest.mark.parametrize("m", [m for m in MLKEM_METHODS if m.available], ids=lambda m: m.name)
def test_lengths_are_checked_exactly(m):
    ours = m.generate(os.urandom)
    for bad in (ours.public_bytes[:-1], ours.public_bytes + b"\0", b""):
        with pytest.raises(InvalidKeyExchange, match="encapsulation key is"):
            m.respond(os.urandom, bad)
    ct, _ = m.respond(os.urandom, ours.public_bytes)
    for bad in (ct[:-1], ct + b"\0"):
        with pytest.raises(InvalidKeyExchange, match="ciphertext is"):
            ours.shared_secret(bad)


def test_encapsulation_key_failing_the_modulus_check_is_refused():
    m = ke_by_id(DhId.ML_KEM_768)
    ek = bytearray(m.generate(os.urandom).public_bytes)
    ek[0:2] = b"\xff\xff"  # first 12-bit coefficient = 0xfff >= q = 3329
    with pytest.raises(InvalidKeyExchange, match="modulus check"):
        m.respond(os.urandom, bytes(ek))


def test_registry_ids_and_lengths():
    assert [(m.group, m.name, m.keyword, m.ek_len, m.ct_len) for m in MLKEM_METHODS] == [
        (35, "ML_KEM_512", "mlkem512", 800, 768),
        (36, "ML_KEM_768", "mlkem768", 1184, 1088),
        (37, "ML_KEM_1024", "mlkem1024", 1568, 1568),
    ]
    assert all(ke_by_id(m.group) is m for m in MLKEM_METHODS)
    assert set(MLKEM_METHODS) <= set(ALL_KE_METHODS)


def test_unavailable_parameter_set_is_refused_not_replaced(monkeypatch):
    m = ke_by_id(DhId.ML_KEM_768)
    monkeypatch.setitem(mlkem._IMPL, 768,
                        (None, "ML-KEM-768 is not available in the linked OpenSSL (test)"))
    with pytest.raises(ProposalError, match="not available in the linked OpenSSL"):
        parse_proposal("aes256gcm16-prfsha384-x25519-ke1_mlkem768", ProtocolId.IKE)
    with pytest.raises(ProposalError, match="not available"):
        parse_proposal("aes256gcm16-prfsha384-mlkem768", ProtocolId.IKE)
    with pytest.raises(CryptoError, match="not available"):
        m.generate(os.urandom)


def test_mlkem512_is_refused_with_the_reason_when_unbound():
    m = ke_by_id(DhId.ML_KEM_512)
    if m.available:
        pytest.skip("this cryptography binds ML-KEM-512")
    with pytest.raises(ProposalError, match="ML-KEM-512 is not available"):
        parse_proposal("aes256gcm16-prfsha384-x25519-ke1_mlkem512", ProtocolId.IKE)


# --- proposal syntax (strongSwan 6) -------------------------------------------------------------

from ikev2.constants import TransformType  # noqa: E402
from ikev2.crypto.proposals import child_suite, choose_proposal, ike_suite, proposal_display, proposal_keywords  # noqa: E402


@pytest.mark.parametrize("text,display", [
    ("aes256gcm16-prfsha384-x25519-ke1_mlkem768",
     "AES_GCM_16_256/PRF_HMAC_SHA2_384/CURVE_25519/KE1_ML_KEM_768"),
    ("aes256gcm16-prfsha384-mlkem768", "AES_GCM_16_256/PRF_HMAC_SHA2_384/ML_KEM_768"),
    ("aes256gcm16-prfsha384-ecp384-ke1_mlkem768-ke2_mlkem1024",
     "AES_GCM_16_256/PRF_HMAC_SHA2_384/ECP_384/KE1_ML_KEM_768/KE2_ML_KEM_1024"),
    ("aes256gcm16-prfsha384-x25519-ke1_mlkem768-ke1_none",
     "AES_GCM_16_256/PRF_HMAC_SHA2_384/CURVE_25519/KE1_ML_KEM_768/KE1_NONE"),
])
def test_ike_proposal_syntax_round_trips(text, display):
    p = parse_proposal(text, ProtocolId.IKE)
    assert proposal_display(p) == display
    assert proposal_keywords(p) == text
    assert parse_proposal(proposal_keywords(p), ProtocolId.IKE).transforms == p.transforms


def test_addke_transform_types_on_the_wire():
    p = parse_proposal("aes256gcm16-prfsha384-x25519-ke1_mlkem768-ke3_mlkem1024", ProtocolId.IKE)
    assert [(t.type, t.id) for t in p.transforms if t.type >= 4] == [
        (TransformType.DH, 31), (TransformType.ADDKE1, 36), (TransformType.ADDKE3, 37)]
    s = ike_suite(p)
    assert [m.name for m in s.all_ke] == ["CURVE_25519", "ML_KEM_768", "ML_KEM_1024"]


def test_esp_proposal_with_additional_key_exchange():
    p = parse_proposal("aes256gcm16-x25519-ke1_mlkem768", ProtocolId.ESP)
    assert proposal_display(p) == "AES_GCM_16_256/CURVE_25519/KE1_ML_KEM_768/NO_EXT_SEQ"
    c = child_suite(p)
    assert c.ke.name == "CURVE_25519" and [m.name for m in c.additional] == ["ML_KEM_768"]


@pytest.mark.parametrize("text,why", [
    ("aes256gcm16-prfsha384-ke1_mlkem768", "needs a key exchange method"),
    ("aes256gcm16-prfsha384-x25519-ke1_aes128", "not a key exchange method"),
    ("aes256gcm16-prfsha384-x25519-ke8_mlkem768", "unknown algorithm keyword"),
    ("aes256gcm16-prfsha384-x25519-ke1_modp1024", "weak"),
])
def test_bad_additional_key_exchanges_are_refused(text, why):
    with pytest.raises(ProposalError, match=why):
        parse_proposal(text, ProtocolId.IKE)


def test_selection_none_allowed_per_type():
    ours = [parse_proposal("aes256gcm16-prfsha384-x25519-ke1_mlkem768-ke1_none", ProtocolId.IKE)]
    classic = [parse_proposal("aes256gcm16-prfsha384-x25519", ProtocolId.IKE)]
    hybrid = [parse_proposal("aes256gcm16-prfsha384-x25519-ke1_mlkem768", ProtocolId.IKE)]
    assert proposal_display(choose_proposal(ours, classic)) == \
        "AES_GCM_16_256/PRF_HMAC_SHA2_384/CURVE_25519"
    assert proposal_display(choose_proposal(ours, hybrid)) == \
        "AES_GCM_16_256/PRF_HMAC_SHA2_384/CURVE_25519/KE1_ML_KEM_768"
    # Mandatory on one side, absent on the other: no match.
    assert choose_proposal(hybrid, classic) is None
    assert choose_proposal(classic, hybrid) is None
    # A different method in the same ADDKE slot: no match.
    other = [parse_proposal("aes256gcm16-prfsha384-x25519-ke1_mlkem1024", ProtocolId.IKE)]
    assert choose_proposal(hybrid, other) is None


def test_backend_text_names_exactly_the_usable_sets():
    """The daemon's startup line ("vpn-gw started", field mlkem) says which sets work here."""
    text = mlkem.mlkem_backend_text()
    for m in MLKEM_METHODS:
        assert (m.name in text) == m.available, (m.name, text)
    if not any(m.available for m in MLKEM_METHODS):
        assert text.endswith("no ML-KEM")


def test_kem_and_dh_methods_meet_the_key_exchange_protocol():
    """The exchanges only use ikev2.crypto.kex.KeyExchange: generate (initiator) and respond
    (responder) agree for a DH group and a KEM alike."""
    rng = random.Random(7)
    methods = [ke_by_id(DhId.CURVE25519)] + [k for k in MLKEM_METHODS if k.available]
    assert len(methods) > 1  # cryptography 50 binds ML-KEM-768 and ML-KEM-1024
    for m in methods:
        assert m is not None
        ours = m.generate(rng.randbytes)
        theirs, shared = m.respond(rng.randbytes, ours.public_bytes)
        assert ours.shared_secret(theirs) == shared
        assert ours.method is m
