"""AUTH payload data: PSK / EAP MSK (RFC 7296 2.15, 2.16) and signatures (RFC 7427, RFC 4754)."""
from __future__ import annotations

import hmac

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa

from ikev2.constants import AuthMethod, HashAlgorithm, PrfId
from ikev2.crypto.auth import (
    algorithm_identifier,
    eap_msk_auth_data,
    psk_auth_data,
    sign,
    signed_octets,
    supported_hash_algorithms,
    verify,
)
from ikev2.crypto.transforms import prf_by_id
from ikev2.errors import CryptoError

PRF256 = prf_by_id(PrfId.HMAC_SHA2_256)
OCTETS = b"RealMessage1" + b"NonceRData" + b"M" * 32


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_keys():
    return {name: ec.generate_private_key(curve) for name, curve in
            (("p256", ec.SECP256R1()), ("p384", ec.SECP384R1()), ("p521", ec.SECP521R1()))}


# --- shared key ------------------------------------------------------------------------------

def test_psk_auth_matches_independent_hmac():
    psk = b"a very secret pre-shared key"
    expected = hmac.new(hmac.new(psk, b"Key Pad for IKEv2", "sha256").digest(), OCTETS,
                        "sha256").digest()
    assert psk_auth_data(PRF256, psk, OCTETS) == expected
    assert psk_auth_data(PRF256, psk.decode(), OCTETS) == expected
    assert psk_auth_data(PRF256, psk + b"x", OCTETS) != expected


def test_eap_msk_auth_same_construction():
    msk = bytes(range(64))
    prf = prf_by_id(PrfId.HMAC_SHA2_512)
    expected = hmac.new(hmac.new(msk, b"Key Pad for IKEv2", "sha512").digest(), OCTETS,
                        "sha512").digest()
    assert eap_msk_auth_data(prf, msk, OCTETS) == expected


def test_signed_octets():
    sk_p = b"P" * 32
    id_body = bytes([2, 0, 0, 0]) + b"gw.example.org"  # ID_FQDN + reserved + data
    octets = signed_octets(b"message", b"peer-nonce", PRF256, sk_p, id_body)
    assert octets == b"message" + b"peer-nonce" + hmac.new(sk_p, id_body, "sha256").digest()


# --- RFC 7427 AlgorithmIdentifiers -----------------------------------------------------------
# RFC 7427 Appendix A encodings (as listed by the msgboxio/ike Go implementation, "asn1
# objects from rfc7427").
RFC7427_SHA256_WITH_RSA = "300d06092a864886f70d01010b0500"
RFC7427_SHA384_WITH_RSA = "300d06092a864886f70d01010c0500"
RFC7427_SHA512_WITH_RSA = "300d06092a864886f70d01010d0500"
RFC7427_ECDSA_SHA256 = "300a06082a8648ce3d040302"
RFC7427_ECDSA_SHA384 = "300a06082a8648ce3d040303"
RFC7427_ECDSA_SHA512 = "300a06082a8648ce3d040304"
# A.4.3 RSASSA-PSS with SHA-256 (with the explicit trailerField [3] INTEGER 1).
RFC7427_PSS_SHA256_WITH_TRAILER = (
    "304606092a864886f70d01010a3039a00f300d06096086480165030402010500a11c301a06092a864886f70d"
    "010108300d06096086480165030402010500a203020120a303020101")
# The DER form without the DEFAULT trailerField, as strongSwan builds it (signature_params.c)
# and as RFC 4055 / X.509 use it.
PSS_SHA256_DER = (
    "304106092a864886f70d01010a3034a00f300d06096086480165030402010500a11c301a06092a864886f70d"
    "010108300d06096086480165030402010500a203020120")


def test_algorithm_identifiers():
    pkcs1 = "rsa-pkcs1"
    assert algorithm_identifier(pkcs1, HashAlgorithm.SHA2_256).hex() == RFC7427_SHA256_WITH_RSA
    assert algorithm_identifier(pkcs1, HashAlgorithm.SHA2_384).hex() == RFC7427_SHA384_WITH_RSA
    assert algorithm_identifier(pkcs1, HashAlgorithm.SHA2_512).hex() == RFC7427_SHA512_WITH_RSA
    assert algorithm_identifier("ecdsa", HashAlgorithm.SHA2_256).hex() == RFC7427_ECDSA_SHA256
    assert algorithm_identifier("ecdsa", HashAlgorithm.SHA2_384).hex() == RFC7427_ECDSA_SHA384
    assert algorithm_identifier("ecdsa", HashAlgorithm.SHA2_512).hex() == RFC7427_ECDSA_SHA512
    assert algorithm_identifier("rsa-pss", HashAlgorithm.SHA2_256).hex() == PSS_SHA256_DER
    assert algorithm_identifier("ed25519").hex() == "300506032b6570"
    assert algorithm_identifier("ed448").hex() == "300506032b6571"


# --- sign / verify round trips ---------------------------------------------------------------

@pytest.mark.parametrize("h", [HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384,
                               HashAlgorithm.SHA2_512])
def test_rsa_pss_roundtrip(rsa_key, h):
    method, data = sign(rsa_key, OCTETS, h)
    assert method == AuthMethod.DIGITAL_SIGNATURE
    algid = data[1:1 + data[0]]
    assert algid == algorithm_identifier("rsa-pss", h)
    assert len(data) == 1 + len(algid) + 256
    pub = rsa_key.public_key()
    assert verify(pub, method, data, OCTETS)
    assert not verify(pub, method, data, OCTETS + b"x")
    tampered = bytearray(data)
    tampered[-1] ^= 1
    assert not verify(pub, method, bytes(tampered), OCTETS)


def test_rsa_pss_default_is_sha256_strongswan_form(rsa_key):
    _, data = sign(rsa_key, OCTETS)
    assert data[0] == 0x43 and data[1:1 + 0x43].hex() == PSS_SHA256_DER


def test_rsa_pss_rfc7427_form_with_trailer_verifies(rsa_key):
    sig = rsa_key.sign(OCTETS, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
                       hashes.SHA256())
    algid = bytes.fromhex(RFC7427_PSS_SHA256_WITH_TRAILER)
    auth = bytes([len(algid)]) + algid + sig
    assert verify(rsa_key.public_key(), AuthMethod.DIGITAL_SIGNATURE, auth, OCTETS)
    # the same signature claimed with another salt length fails
    other = bytearray(auth)
    other[1 + algid.index(bytes.fromhex("a203020120")) + 4] = 0x21
    assert not verify(rsa_key.public_key(), AuthMethod.DIGITAL_SIGNATURE, bytes(other), OCTETS)


def test_rsa_pkcs1_in_method_14_and_method_1(rsa_key):
    pub = rsa_key.public_key()
    method, data = sign(rsa_key, OCTETS, HashAlgorithm.SHA2_384, rsa_pss=False)
    assert data[1:1 + data[0]].hex() == RFC7427_SHA384_WITH_RSA
    assert verify(pub, method, data, OCTETS)
    method, data = sign(rsa_key, OCTETS, method=AuthMethod.RSA_SIG)
    assert method == AuthMethod.RSA_SIG and len(data) == 256
    assert verify(pub, AuthMethod.RSA_SIG, data, OCTETS)
    assert not verify(pub, AuthMethod.RSA_SIG, data, OCTETS[:-1])
    # SHA-1 is refused inside method 14.
    sha1_sig = rsa_key.sign(OCTETS, padding.PKCS1v15(), hashes.SHA1())
    sha1_algid = bytes.fromhex("300d06092a864886f70d0101050500")
    assert not verify(pub, 14, bytes([len(sha1_algid)]) + sha1_algid + sha1_sig, OCTETS)
    with pytest.raises(CryptoError):
        sign(rsa_key, OCTETS, HashAlgorithm.SHA1)


@pytest.mark.parametrize("name,default_hash", [("p256", HashAlgorithm.SHA2_256),
                                               ("p384", HashAlgorithm.SHA2_384),
                                               ("p521", HashAlgorithm.SHA2_512)])
def test_ecdsa_roundtrip(ec_keys, name, default_hash):
    key = ec_keys[name]
    pub = key.public_key()
    method, data = sign(key, OCTETS)
    assert method == AuthMethod.DIGITAL_SIGNATURE
    assert data[1:1 + data[0]] == algorithm_identifier("ecdsa", default_hash)
    assert data[1 + data[0]] == 0x30  # DER Ecdsa-Sig-Value (RFC 7427 3)
    assert verify(pub, method, data, OCTETS)
    assert not verify(pub, method, data, b"other octets")
    # deterministic (RFC 6979) signatures: same input, same output
    assert sign(key, OCTETS)[1] == data
    # any SHA-2 hash may be used with any curve under method 14
    _, data256 = sign(key, OCTETS, HashAlgorithm.SHA2_256)
    assert verify(pub, 14, data256, OCTETS)
    # the wrong key fails
    other = ec_keys["p256" if name != "p256" else "p384"].public_key()
    assert not verify(other, method, data, OCTETS)


@pytest.mark.parametrize("method,name,size", [(AuthMethod.ECDSA_SHA256_P256, "p256", 32),
                                              (AuthMethod.ECDSA_SHA384_P384, "p384", 48),
                                              (AuthMethod.ECDSA_SHA512_P521, "p521", 66)])
def test_ecdsa_rfc4754_methods(ec_keys, method, name, size):
    key = ec_keys[name]
    m, data = sign(key, OCTETS, method=method)
    assert m == method and len(data) == 2 * size  # r || s
    assert verify(key.public_key(), method, data, OCTETS)
    assert not verify(key.public_key(), method, data, OCTETS + b"!")
    assert not verify(key.public_key(), method, data[:-1], OCTETS)
    wrong_method = AuthMethod.ECDSA_SHA384_P384 if name == "p256" else \
        AuthMethod.ECDSA_SHA256_P256
    assert not verify(key.public_key(), wrong_method, data, OCTETS)


@pytest.mark.parametrize("keycls", [ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey])
def test_eddsa_roundtrip(keycls):
    key = keycls.generate()
    method, data = sign(key, OCTETS)
    assert method == AuthMethod.DIGITAL_SIGNATURE
    assert data[1:1 + data[0]] == algorithm_identifier(
        "ed25519" if keycls is ed25519.Ed25519PrivateKey else "ed448")
    assert verify(key.public_key(), method, data, OCTETS)
    assert not verify(key.public_key(), method, data, OCTETS + b"x")
    assert sign(key, OCTETS, HashAlgorithm.IDENTITY) == (method, data)
    with pytest.raises(CryptoError):
        sign(key, OCTETS, HashAlgorithm.SHA2_256)


def test_key_type_mismatch_is_false(rsa_key, ec_keys):
    _, rsa_auth = sign(rsa_key, OCTETS)
    _, ec_auth = sign(ec_keys["p256"], OCTETS)
    assert not verify(ec_keys["p256"].public_key(), 14, rsa_auth, OCTETS)
    assert not verify(rsa_key.public_key(), 14, ec_auth, OCTETS)
    assert not verify(ed25519.Ed25519PrivateKey.generate().public_key(), 14, ec_auth, OCTETS)


GARBAGE = [
    b"", b"\x00", b"\x01", b"\xff" * 3, b"\x05\x30\x03\x06\x01\x2a", b"\x0f" + b"\x30" * 40,
    b"\x07\x30\x05\x06\x03\x2b\x65\x70",  # Ed25519 AlgorithmIdentifier, no signature
    b"\x02\x30\x80" + b"\x00" * 70,  # indefinite length
    b"\x0d" + bytes.fromhex("300b06092a864886f70d01010a") + b"\x00" * 256,  # PSS, empty params
    bytes([0x43]) + bytes.fromhex(PSS_SHA256_DER) + b"\x00" * 10,  # short signature
    bytes([0x43]) + bytes.fromhex(PSS_SHA256_DER)[:-1] + b"\xff" + b"\x00" * 256,  # huge salt
]


@pytest.mark.parametrize("auth_data", GARBAGE)
@pytest.mark.parametrize("method", [1, 2, 9, 10, 11, 14, 99])
def test_garbage_never_raises(rsa_key, ec_keys, auth_data, method):
    for pub in (rsa_key.public_key(), ec_keys["p256"].public_key(),
                ed25519.Ed25519PrivateKey.generate().public_key(), None, object()):
        assert verify(pub, method, auth_data, OCTETS) is False


def test_supported_hash_algorithms():
    assert supported_hash_algorithms() == [HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384,
                                           HashAlgorithm.SHA2_512, HashAlgorithm.IDENTITY]


def test_sign_errors(ec_keys):
    with pytest.raises(CryptoError):
        sign(object(), OCTETS)
    with pytest.raises(CryptoError):
        sign(ec_keys["p384"], OCTETS, method=AuthMethod.ECDSA_SHA256_P256)
    with pytest.raises(CryptoError):
        sign(ec_keys["p256"], OCTETS, method=AuthMethod.PSK)
