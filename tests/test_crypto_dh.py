"""Key exchange: RFC 5903 / RFC 7748 known answers, RFC 6989 checks, MODP behaviour."""
from __future__ import annotations

import hashlib
import warnings

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ikev2.constants import DhId
from ikev2.crypto import dh
from ikev2.crypto.dh import KE_METHODS, ke_by_id
from ikev2.errors import CryptoError, InvalidKeyExchange


def h(s: str) -> bytes:
    return bytes.fromhex("".join(s.split()))


class Stream:
    """A deterministic random_bytes(n) for tests."""

    def __init__(self, seed: bytes):
        self.seed = seed
        self.counter = 0

    def __call__(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            self.counter += 1
            out += hashlib.sha256(self.seed + self.counter.to_bytes(4, "big")).digest()
        return out[:n]


# ---------------------------------------------------------------------------------------------
# RFC 5903 section 8: i (initiator private), g^i = (gix, giy), r, g^r = (grx, gry), and the
# shared secret girx.  Copied from the RFC's test vectors (sections 8.1, 8.2, 8.3).
# ---------------------------------------------------------------------------------------------
RFC5903 = {
    # 8.1.  256-Bit Random ECP Group
    DhId.ECP_256: dict(
        i="C88F01F5 10D9AC3F 70A292DA A2316DE5 44E9AAB8 AFE84049 C62A9C57 862D1433",
        gix="DAD0B653 94221CF9 B051E1FE CA5787D0 98DFE637 FC90B9EF 945D0C37 72581180",
        giy="5271A046 1CDB8252 D61F1C45 6FA3E59A B1F45B33 ACCF5F58 389E0577 B8990BB3",
        r="C6EF9C5D 78AE012A 011164AC B397CE20 88685D8F 06BF9BE0 B283AB46 476BEE53",
        grx="D12DFB52 89C8D4F8 1208B702 70398C34 2296970A 0BCCB74C 736FC755 4494BF63",
        gry="56FBF3CA 366CC23E 8157854C 13C58D6A AC23F046 ADA30F83 53E74F33 039872AB",
        girx="D6840F6B 42F6EDAF D13116E0 E1256520 2FEF8E9E CE7DCE03 812464D0 4B9442DE",
    ),
    # 8.2.  384-Bit Random ECP Group
    DhId.ECP_384: dict(
        i="099F3C70 34D4A2C6 99884D73 A375A67F 7624EF7C 6B3C0F16 0647B674 14DCE655"
          "E35B5380 41E649EE 3FAEF896 783AB194",
        gix="667842D7 D180AC2C DE6F74F3 7551F557 55C7645C 20EF73E3 1634FE72 B4C55EE6"
            "DE3AC808 ACB4BDB4 C88732AE E95F41AA",
        giy="9482ED1F C0EEB9CA FC498462 5CCFC23F 65032149 E0E144AD A0241815 35A0F38E"
            "EB9FCFF3 C2C947DA E69B4C63 4573A81C",
        r="41CB0779 B4BDB85D 47846725 FBEC3C94 30FAB46C C8DC5060 855CC9BD A0AA2942"
          "E0308312 916B8ED2 960E4BD5 5A7448FC",
        grx="E558DBEF 53EECDE3 D3FCCFC1 AEA08A89 A987475D 12FD950D 83CFA417 32BC509D"
            "0D1AC43A 0336DEF9 6FDA41D0 774A3571",
        gry="DCFBEC7A ACF31964 72169E83 8430367F 66EEBE3C 6E70C416 DD5F0C68 759DD1FF"
            "F83FA401 42209DFF 5EAAD96D B9E6386C",
        girx="11187331 C279962D 93D60424 3FD592CB 9D0A926F 422E4718 7521287E 7156C5C4"
             "D6031355 69B9E9D0 9CF5D4A2 70F59746",
    ),
    # 8.3.  521-Bit Random ECP Group
    DhId.ECP_521: dict(
        i="0037ADE9 319A89F4 DABDB3EF 411AACCC A5123C61 ACAB57B5 393DCE47 608172A0"
          "95AA85A3 0FE1C295 2C6771D9 37BA9777 F5957B26 39BAB072 462F68C2 7A57382D 4A52",
        gix="0015417E 84DBF28C 0AD3C278 713349DC 7DF153C8 97A1891B D98BAB43 57C9ECBE"
            "E1E3BF42 E00B8E38 0AEAE57C 2D107564 94188594 2AF5A7F4 601723C4 195D176C ED3E",
        giy="017CAE20 B6641D2E EB695786 D8C94614 6239D099 E18E1D5A 514C739D 7CB4A10A"
            "D8A78801 5AC405D7 799DC75E 7B7D5B6C F2261A6A 7F150743 8BF01BEB 6CA3926F 9582",
        r="0145BA99 A847AF43 793FDD0E 872E7CDF A16BE30F DC780F97 BCCC3F07 8380201E"
          "9C677D60 0B343757 A3BDBF2A 3163E4C2 F869CCA7 458AA4A4 EFFC311F 5CB15168 5EB9",
        grx="00D0B397 5AC4B799 F5BEA16D 5E13E9AF 971D5E9B 984C9F39 728B5E57 39735A21"
            "9B97C356 436ADC6E 95BB0352 F6BE64A6 C2912D4E F2D0433C ED2B6171 640012D9 460F",
        gry="015C6822 6383956E 3BD066E7 97B623C2 7CE0EAC2 F551A10C 2C724D98 52077B87"
            "220B6536 C5C408A1 D2AEBB8E 86D678AE 49CB5709 1F473229 6579AB44 FCD17F0F C56A",
        girx="01144C7D 79AE6956 BC8EDB8E 7C787C45 21CB086F A64407F9 7894E5E6 B2D79B04"
             "D1427E73 CA4BAA24 0A347868 59810C06 B3C715A3 A8CC3151 F2BEE417 996D19F3 DDEA",
    ),
}


@pytest.mark.parametrize("group", list(RFC5903), ids=lambda g: g.name)
def test_ecp_rfc5903(group):
    v = RFC5903[group]
    m = ke_by_id(group)
    # Cross-check the published keys with cryptography directly (RFC 5903 7: x || y).
    key = ec.derive_private_key(int.from_bytes(h(v["i"]), "big"), m.curve)
    nums = key.public_key().public_numbers()
    flen = m.public_len // 2
    assert nums.x.to_bytes(flen, "big") + nums.y.to_bytes(flen, "big") == h(v["gix"]) + h(v["giy"])

    ours_i = m.private_from_value(int.from_bytes(h(v["i"]), "big"))
    ours_r = m.private_from_value(int.from_bytes(h(v["r"]), "big"))
    assert ours_i.public_bytes == h(v["gix"]) + h(v["giy"])
    assert ours_r.public_bytes == h(v["grx"]) + h(v["gry"])
    assert ours_i.shared_secret(ours_r.public_bytes) == h(v["girx"])
    assert ours_r.shared_secret(ours_i.public_bytes) == h(v["girx"])


@pytest.mark.parametrize("group", list(RFC5903), ids=lambda g: g.name)
def test_ecp_rfc6989_rejections(group):
    v = RFC5903[group]
    m = ke_by_id(group)
    ours = m.private_from_value(int.from_bytes(h(v["i"]), "big"))
    good = h(v["grx"]) + h(v["gry"])
    flen = m.public_len // 2
    off_curve = good[:-1] + bytes([good[-1] ^ 1])
    bad_values = {
        "not on curve": off_curve,
        "too short": good[:-1],
        "too long": good + b"\x00",
        "SEC1 uncompressed prefix": b"\x04" + good,
        "infinity (all zero)": bytes(m.public_len),
        "x = p": m.field_p.to_bytes(flen, "big") + h(v["gry"]),
        "y >= p": h(v["grx"]) + b"\xff" * flen,
        "empty": b"",
    }
    for why, value in bad_values.items():
        with pytest.raises(InvalidKeyExchange):
            ours.shared_secret(value)
            pytest.fail(f"accepted: {why}")


def test_ecp_group_orders():
    """The orders used to reduce random scalars are the curves' (n-1 valid, n refused)."""
    for m in KE_METHODS:
        if m.kind == "ecp":
            ec.derive_private_key(m.order - 1, m.curve)
            with pytest.raises(ValueError):
                ec.derive_private_key(m.order, m.curve)


# ---------------------------------------------------------------------------------------------
# RFC 7748 section 6.1 (X25519) and 6.2 (X448) Diffie-Hellman test vectors.
# ---------------------------------------------------------------------------------------------
RFC7748 = {
    DhId.CURVE25519: dict(
        a="77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        A="8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a",
        b="5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
        B="de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f",
        K="4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742",
    ),
    DhId.CURVE448: dict(
        a="9a8f4925d1519f5775cf46b04b5800d4ee9ee8bae8bc5565d498c28d"
          "d9c9baf574a9419744897391006382a6f127ab1d9ac2d8c0a598726b",
        A="9b08f7cc31b7e3e67d22d5aea121074a273bd2b83de09c63faa73d2c"
          "22c5d9bbc836647241d953d40c5b12da88120d53177f80e532c41fa0",
        b="1c306a7ac2a0e2e0990b294470cba339e6453772b075811d8fad0d1d"
          "6927c120bb5ee8972b0d3e21374c9c921b09d1b0366f10b65173992d",
        B="3eb7a829b0cd20f5bcfc0b599b6feccf6da4627107bdb0d4f345b430"
          "27d8b972fc3e34fb4232a13ca706dcb57aec3dae07bdc1c67bf33609",
        K="07fff4181ac6cc95ec1c16a94a0f74d12da232ce40a77552281d282b"
          "b60c0b56fd2464c335543936521c24403085d59a449a5037514a879d",
    ),
}


@pytest.mark.parametrize("group", list(RFC7748), ids=lambda g: g.name)
def test_montgomery_rfc7748(group):
    v = RFC7748[group]
    m = ke_by_id(group)
    alice = m.private_from_value(h(v["a"]))
    bob = m.private_from_value(h(v["b"]))
    assert alice.public_bytes == h(v["A"])
    assert bob.public_bytes == h(v["B"])
    assert alice.shared_secret(bob.public_bytes) == h(v["K"])
    assert bob.shared_secret(alice.public_bytes) == h(v["K"])


@pytest.mark.parametrize("group", list(RFC7748), ids=lambda g: g.name)
def test_montgomery_rfc6989_rejections(group):
    m = ke_by_id(group)
    ours = m.private_from_value(h(RFC7748[group]["a"]))
    n = m.public_len
    # u = 0 and u = 1 are points of small order: X25519/X448 give the all-zero output, which
    # RFC 7748 6 / RFC 8031 2.3 require to be refused.
    for low_order in (bytes(n), b"\x01" + bytes(n - 1)):
        with pytest.raises(InvalidKeyExchange, match="all-zero"):
            ours.shared_secret(low_order)
    for wrong in (b"", bytes(n - 1), h(RFC7748[group]["B"]) + b"\x00"):
        with pytest.raises(InvalidKeyExchange, match="octets"):
            ours.shared_secret(wrong)


# ---------------------------------------------------------------------------------------------
# MODP
# ---------------------------------------------------------------------------------------------

def _pi_floor(bits: int) -> int:
    """floor(2^bits * pi) by Machin's formula with 64 guard bits."""
    guard = 64
    one = 1 << (bits + guard)

    def arctan_inv(x: int) -> int:
        total = term = one // x
        x2, n, sign = x * x, 1, -1
        while term:
            term //= x2
            total += sign * (term // (2 * n + 1))
            sign, n = -sign, n + 1
        return total

    return (4 * (4 * arctan_inv(5) - arctan_inv(239))) >> guard


@pytest.mark.parametrize("group,bits,k", [(DhId.MODP_2048, 2048, 124476),
                                          (DhId.MODP_3072, 3072, 1690314),
                                          (DhId.MODP_4096, 4096, 240904)])
def test_modp_primes_rfc3526(group, bits, k):
    """RFC 3526 3-5: p = 2^N - 2^(N-64) - 1 + 2^64 * { [2^(N-130) pi] + k }, generator 2."""
    p = 2**bits - 2**(bits - 64) - 1 + 2**64 * (_pi_floor(bits - 130) + k)
    m = ke_by_id(group)
    assert m.modp_p == p and m.modp_g == 2 and m.public_len == bits // 8


@pytest.mark.parametrize("group", [DhId.MODP_2048, DhId.MODP_3072, DhId.MODP_4096],
                         ids=lambda g: g.name)
def test_modp_agreement_matches_pow(group):
    m = ke_by_id(group)
    a = m.generate(Stream(b"a"))
    b = m.generate(Stream(b"b"))
    x_a = int.from_bytes(Stream(b"a")(m.exponent_len), "big") | (1 << (8 * m.exponent_len - 1))
    x_b = int.from_bytes(Stream(b"b")(m.exponent_len), "big") | (1 << (8 * m.exponent_len - 1))
    assert a.public_bytes == pow(2, x_a, m.modp_p).to_bytes(m.public_len, "big")
    expected = pow(2, x_a * x_b, m.modp_p).to_bytes(m.public_len, "big")
    assert a.shared_secret(b.public_bytes) == expected
    assert b.shared_secret(a.public_bytes) == expected


def test_modp_left_padding():
    """Public value and g^ir are left-padded to the prime length (RFC 7296 3.4, 2.14)."""
    m = ke_by_id(DhId.MODP_2048)
    ours = m.private_from_value(5)
    assert ours.public_bytes == (2**5).to_bytes(256, "big")
    assert ours.shared_secret((3).to_bytes(256, "big")) == (3**5).to_bytes(256, "big")


def test_modp_rfc6989_rejections():
    m = ke_by_id(DhId.MODP_2048)
    p = m.modp_p
    ours = m.generate(Stream(b"x"))
    for y in (0, 1, p - 1, p, p + 1, 2**2048 - 1):
        with pytest.raises(InvalidKeyExchange, match="out of range"):
            ours.shared_secret(y.to_bytes(256, "big"))
    for wrong in (b"", (2).to_bytes(255, "big"), (2).to_bytes(257, "big")):
        with pytest.raises(InvalidKeyExchange, match="octets"):
            ours.shared_secret(wrong)
    # y = 2 and y = p - 2 are legitimate.
    assert len(ours.shared_secret((2).to_bytes(256, "big"))) == 256
    assert len(ours.shared_secret((p - 2).to_bytes(256, "big"))) == 256


def test_modp_uses_openssl_and_emits_no_warning():
    dh._set_modp_backend(None)  # re-run the backend probe inside the recorder
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            m = ke_by_id(DhId.MODP_3072)
            a = m.generate(Stream(b"1"))
            b = m.generate(Stream(b"2"))
            assert a.shared_secret(b.public_bytes) == b.shared_secret(a.public_bytes)
            assert dh.modp_backend().name == "openssl"
        assert [str(w.message) for w in caught] == []
    finally:
        dh._set_modp_backend(None)


def test_modp_python_fallback_agrees_with_openssl():
    m = ke_by_id(DhId.MODP_2048)
    a_ssl = m.generate(Stream(b"A"))
    b_ssl = m.generate(Stream(b"B"))
    secret = a_ssl.shared_secret(b_ssl.public_bytes)
    dh._set_modp_backend(dh._PythonModp())
    try:
        a_py = m.generate(Stream(b"A"))
        assert a_py.public_bytes == a_ssl.public_bytes
        assert a_py.shared_secret(b_ssl.public_bytes) == secret
        # A key made under OpenSSL still works once the fallback is active, and vice versa.
        assert a_ssl.shared_secret(b_ssl.public_bytes) == secret
    finally:
        dh._set_modp_backend(None)
    assert a_py.shared_secret(b_ssl.public_bytes) == secret


# ---------------------------------------------------------------------------------------------
# All groups
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("m", KE_METHODS, ids=lambda m: m.name)
def test_generate_is_deterministic_and_agrees(m):
    a1 = m.generate(Stream(b"seed-a"))
    a2 = m.generate(Stream(b"seed-a"))
    b = m.generate(Stream(b"seed-b"))
    assert a1.public_bytes == a2.public_bytes != b.public_bytes
    assert len(a1.public_bytes) == m.public_len
    s = a1.shared_secret(b.public_bytes)
    assert s == b.shared_secret(a2.public_bytes)
    assert len(s) == {"modp": m.public_len, "ecp": m.public_len // 2}.get(m.kind, m.public_len)


def test_registry():
    assert [(m.group, m.name, m.keyword, m.public_len) for m in KE_METHODS] == [
        (DhId.MODP_2048, "MODP_2048", "modp2048", 256),
        (DhId.MODP_3072, "MODP_3072", "modp3072", 384),
        (DhId.MODP_4096, "MODP_4096", "modp4096", 512),
        (DhId.ECP_256, "ECP_256", "ecp256", 64),
        (DhId.ECP_384, "ECP_384", "ecp384", 96),
        (DhId.ECP_521, "ECP_521", "ecp521", 132),
        (DhId.CURVE25519, "CURVE_25519", "x25519", 32),
        (DhId.CURVE448, "CURVE_448", "x448", 56),
    ]
    assert ke_by_id(DhId.MODP_1024) is None
    assert ke_by_id(DhId.ECP_192) is None


def test_short_random_source_is_an_error():
    with pytest.raises(CryptoError):
        ke_by_id(DhId.CURVE25519).generate(lambda n: b"\x00" * (n - 1))
