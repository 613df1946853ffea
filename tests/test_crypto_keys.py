"""prf+ and the key schedule of RFC 7296 2.13, 2.14, 2.17, 2.18, checked against independent
computations written straight from the RFC text with the standard library's hmac module."""
from __future__ import annotations

import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ikev2.constants import EncrId, IntegId, PrfId
from ikev2.crypto.keys import (
    derive_child_keys,
    derive_ike_keys,
    derive_rekeyed_ike_keys,
    prf_plus,
    skeyseed_key,
)
from ikev2.crypto.transforms import PRF_ALGORITHMS, PrfAlgorithm, encr_by_id, integ_by_id, prf_by_id
from ikev2.errors import CryptoError

NI = bytes(range(32))
NR = bytes(range(100, 132))
SPI_I = bytes.fromhex("0102030405060708")
SPI_R = bytes.fromhex("a1a2a3a4a5a6a7a8")
GIR = bytes(range(200, 256)) * 4


def ref_prf_plus(hash_name: str, key: bytes, seed: bytes, length: int) -> bytes:
    """RFC 7296 2.13, literally: T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n)."""
    out, t, n = b"", b"", 1
    while len(out) < length:
        t = hmac.new(key, t + seed + bytes([n]), hash_name).digest()
        out += t
        n += 1
    return out[:length]


@pytest.mark.parametrize("prf", PRF_ALGORITHMS, ids=lambda p: p.name)
@pytest.mark.parametrize("length", [0, 1, 20, 32, 33, 64, 65, 200, 1000])
def test_prf_plus_matches_definition(prf, length):
    key, seed = b"K" * 17, b"seed material"
    assert prf_plus(prf, key, seed, length) == ref_prf_plus(prf.hash_name, key, seed, length)


def test_prf_plus_first_block_explicit():
    prf = prf_by_id(PrfId.HMAC_SHA2_256)
    t1 = hmac.new(b"k", b"s\x01", "sha256").digest()
    t2 = hmac.new(b"k", t1 + b"s\x02", "sha256").digest()
    assert prf_plus(prf, b"k", b"s", 64) == t1 + t2


@pytest.mark.parametrize("prf", PRF_ALGORITHMS, ids=lambda p: p.name)
def test_prf_plus_255_block_limit(prf):
    assert len(prf_plus(prf, b"k", b"s", 255 * prf.output_len)) == 255 * prf.output_len
    with pytest.raises(CryptoError, match="255"):
        prf_plus(prf, b"k", b"s", 255 * prf.output_len + 1)


@settings(max_examples=30, deadline=None)
@given(key=st.binary(max_size=80), seed=st.binary(max_size=80), length=st.integers(0, 700))
def test_prf_plus_property(key, seed, length):
    prf = prf_by_id(PrfId.HMAC_SHA2_384)
    assert prf_plus(prf, key, seed, length) == ref_prf_plus("sha384", key, seed, length)


SUITES = [
    # (encr, key bits, integ, prf) -> expected lengths (SK_d, SK_a, SK_e, SK_p)
    (EncrId.AES_GCM_16, 256, None, PrfId.HMAC_SHA2_256, (32, 0, 36, 32)),
    (EncrId.AES_GCM_16, 128, None, PrfId.HMAC_SHA2_512, (64, 0, 20, 64)),
    (EncrId.CHACHA20_POLY1305, None, None, PrfId.HMAC_SHA2_384, (48, 0, 36, 48)),
    (EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128, PrfId.HMAC_SHA2_256, (32, 32, 16, 32)),
    (EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_384_192, PrfId.HMAC_SHA2_384, (48, 48, 32, 48)),
    (EncrId.AES_CBC, 192, IntegId.HMAC_SHA2_512_256, PrfId.HMAC_SHA2_512, (64, 64, 24, 64)),
    (EncrId.AES_CBC, 128, IntegId.HMAC_SHA1_96, PrfId.HMAC_SHA1, (20, 20, 16, 20)),
]


@pytest.mark.parametrize("encr_id,bits,integ_id,prf_id,lens", SUITES)
def test_derive_ike_keys(encr_id, bits, integ_id, prf_id, lens):
    encr = encr_by_id(encr_id, bits)
    integ = integ_by_id(integ_id) if integ_id is not None else None
    prf = prf_by_id(prf_id)
    skeyseed, keys = derive_ike_keys(prf, encr, integ, GIR, NI, NR, SPI_I, SPI_R)

    # RFC 7296 2.14, independently.
    ref_seed = hmac.new(NI + NR, GIR, prf.hash_name).digest()
    assert skeyseed == ref_seed
    d, a, e, p = lens
    total = d + 2 * a + 2 * e + 2 * p
    km = ref_prf_plus(prf.hash_name, ref_seed, NI + NR + SPI_I + SPI_R, total)
    expected, pos = [], 0
    for size in (d, a, a, e, e, p, p):
        expected.append(km[pos:pos + size])
        pos += size
    assert [keys.sk_d, keys.sk_ai, keys.sk_ar, keys.sk_ei, keys.sk_er, keys.sk_pi,
            keys.sk_pr] == expected
    # SPIs given as integers give the same keys.
    _, keys2 = derive_ike_keys(prf, encr, integ, GIR, NI, NR,
                               int.from_bytes(SPI_I, "big"), int.from_bytes(SPI_R, "big"))
    assert keys2 == keys
    assert "octets" in repr(keys) and keys.sk_d.hex() not in repr(keys)
    keys.wipe()
    assert keys.sk_d == keys.sk_ei == keys.sk_pr == b""


def test_derive_ike_keys_rejects_inconsistent_suites():
    prf = prf_by_id(PrfId.HMAC_SHA2_256)
    with pytest.raises(CryptoError):
        derive_ike_keys(prf, encr_by_id(EncrId.AES_GCM_16, 256),
                        integ_by_id(IntegId.HMAC_SHA2_256_128), GIR, NI, NR, SPI_I, SPI_R)
    with pytest.raises(CryptoError):
        derive_ike_keys(prf, encr_by_id(EncrId.AES_CBC, 256), None, GIR, NI, NR, SPI_I, SPI_R)
    with pytest.raises(CryptoError):
        derive_ike_keys(prf, encr_by_id(EncrId.AES_CBC, 256),
                        integ_by_id(IntegId.HMAC_SHA2_256_128), GIR, NI, NR, b"short", SPI_R)


def test_skeyseed_key_fixed_size_prf_rule():
    """RFC 7296 2.14: a fixed-key PRF takes half its key from Ni and half from Nr."""
    fixed = PrfAlgorithm(PrfId.AES128_XCBC, "PRF_AES128_XCBC", "prfaesxcbc", 16, 16, "sha256",
                         fixed_key=True)
    assert skeyseed_key(fixed, NI, NR) == NI[:8] + NR[:8]
    assert skeyseed_key(fixed, NI[:8], NR[:8]) == NI[:8] + NR[:8]
    hmac_prf = prf_by_id(PrfId.HMAC_SHA2_256)
    assert skeyseed_key(hmac_prf, NI, NR) == NI + NR


def test_derive_rekeyed_ike_keys():
    old_prf = prf_by_id(PrfId.HMAC_SHA2_512)
    new_prf = prf_by_id(PrfId.HMAC_SHA2_256)
    encr = encr_by_id(EncrId.AES_GCM_16, 256)
    old_sk_d = b"D" * 64
    new_spi_i, new_spi_r = b"\x11" * 8, b"\x22" * 8
    skeyseed, keys = derive_rekeyed_ike_keys(old_prf, old_sk_d, new_prf, encr, None, GIR, NI, NR,
                                             new_spi_i, new_spi_r)
    # RFC 7296 2.18: SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr) with the OLD PRF ...
    assert skeyseed == hmac.new(old_sk_d, GIR + NI + NR, "sha512").digest()
    # ... then the keys as in 2.14 with the NEW PRF.
    km = ref_prf_plus("sha256", skeyseed, NI + NR + new_spi_i + new_spi_r, 32 + 36 * 2 + 64)
    assert keys.sk_d == km[:32]
    assert keys.sk_ai == keys.sk_ar == b""
    assert keys.sk_ei == km[32:68] and keys.sk_er == km[68:104]
    assert keys.sk_pi == km[104:136] and keys.sk_pr == km[136:168]


@pytest.mark.parametrize("pfs", [False, True])
@pytest.mark.parametrize("encr_id,bits,integ_id", [
    (EncrId.AES_GCM_16, 256, None),
    (EncrId.CHACHA20_POLY1305, None, None),
    (EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128),
    (EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_512_256),
])
def test_derive_child_keys(encr_id, bits, integ_id, pfs):
    prf = prf_by_id(PrfId.HMAC_SHA2_256)
    encr = encr_by_id(encr_id, bits)
    integ = integ_by_id(integ_id) if integ_id else None
    sk_d = b"d" * 32
    keys = derive_child_keys(prf, sk_d, encr, integ, NI, NR, GIR if pfs else None)
    e, a = encr.key_len, integ.key_len if integ else 0
    # RFC 7296 2.17: KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr), initiator->responder first,
    # encryption key before integrity key.
    km = ref_prf_plus("sha256", sk_d, (GIR if pfs else b"") + NI + NR, 2 * (e + a))
    assert keys.encr_i == km[:e]
    assert keys.integ_i == km[e:e + a]
    assert keys.encr_r == km[e + a:2 * e + a]
    assert keys.integ_r == km[2 * e + a:]
    assert len(keys.encr_r) == e and len(keys.integ_r) == a


def test_child_keys_differ_with_pfs():
    prf = prf_by_id(PrfId.HMAC_SHA2_256)
    encr = encr_by_id(EncrId.AES_GCM_16, 128)
    a = derive_child_keys(prf, b"d" * 32, encr, None, NI, NR)
    b = derive_child_keys(prf, b"d" * 32, encr, None, NI, NR, GIR)
    assert a.encr_i != b.encr_i
