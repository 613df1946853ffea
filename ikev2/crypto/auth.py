"""AUTH payload computation and checking (RFC 7296 2.15, 2.16; RFC 7427; RFC 4754; RFC 8420).

* ``signed_octets`` builds the octets to sign/MAC (RFC 7296 2.15)::

      InitiatorSignedOctets = RealMessage1 | NonceRData | MACedIDForI
      MACedIDForI = prf(SK_pi, RestOfInitIDPayload)

  (and symmetrically for the responder).  ``id_body`` is RestOfIDPayload: the ID type, the
  three reserved octets and the identification data.

* Shared keys (2.15) and EAP (2.16)::

      AUTH = prf( prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>)

  with the MSK (or SK_pi/SK_pr when the EAP method derives no key) as the shared secret.

* Signatures: by default AUTH method 14, Digital Signature (RFC 7427 3): a 1-octet length,
  the DER AlgorithmIdentifier of the signature scheme, then the signature.  RSA keys sign
  with RSASSA-PSS (MGF1 with the same hash, salt = hash length, RFC 7427 A.4.3 / the
  parameters strongSwan sends), ECDSA keys with the DER Ecdsa-Sig-Value (RFC 7427 3), Ed25519
  and Ed448 with the "identity" hash (RFC 8420).  Verification also accepts RSASSA-PKCS1-v1_5
  under method 14, and the legacy methods 1 (RSA PKCS#1 v1.5 with SHA-1) and 9/10/11
  (ECDSA with r||s, RFC 4754).  SHA-1 is refused inside method 14 (RFC 8247 3.2).

``verify`` never raises on malformed input: anything it cannot check is simply False.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.backends.openssl.backend import backend as _openssl_backend
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from ikev2.constants import AuthMethod, HashAlgorithm
from ikev2.errors import CryptoError

from .transforms import PrfAlgorithm

__all__ = [
    "KEY_PAD",
    "signed_octets",
    "psk_auth_data",
    "eap_msk_auth_data",
    "sign",
    "verify",
    "supported_hash_algorithms",
    "algorithm_identifier",
]

KEY_PAD = b"Key Pad for IKEv2"


# --- shared-key AUTH -------------------------------------------------------------------------

def signed_octets(message: bytes, peer_nonce: bytes, prf: PrfAlgorithm, sk_p: bytes,
                  id_body: bytes) -> bytes:
    """RealMessage | NonceData (of the peer) | prf(SK_p, RestOfIDPayload) (RFC 7296 2.15)."""
    return bytes(message) + bytes(peer_nonce) + prf(sk_p, bytes(id_body))


def psk_auth_data(prf: PrfAlgorithm, psk: bytes, octets: bytes) -> bytes:
    """prf(prf(Shared Secret, "Key Pad for IKEv2"), octets) (RFC 7296 2.15)."""
    if isinstance(psk, str):
        psk = psk.encode()
    return prf(prf(bytes(psk), KEY_PAD), bytes(octets))


def eap_msk_auth_data(prf: PrfAlgorithm, msk_or_skp: bytes, octets: bytes) -> bytes:
    """The same construction keyed with the EAP MSK, or SK_p without one (RFC 7296 2.16)."""
    return prf(prf(bytes(msk_or_skp), KEY_PAD), bytes(octets))


# --- a little DER ----------------------------------------------------------------------------

def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def _tlv(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(value)) + value


def _seq(*items: bytes) -> bytes:
    return _tlv(0x30, b"".join(items))


class _DerError(ValueError):
    pass


def _read_tlv(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """(tag, value, next position); strict DER lengths, single-octet tags only."""
    if pos + 2 > len(data):
        raise _DerError("truncated")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise _DerError("multi-octet tag")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or pos + n > len(data):
            raise _DerError("bad length")
        length = int.from_bytes(data[pos:pos + n], "big")
        if length < 0x80 or data[pos] == 0:
            raise _DerError("non-minimal length")
        pos += n
    if pos + length > len(data):
        raise _DerError("truncated value")
    return tag, data[pos:pos + length], pos + length


def _read_all(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    pos = 0
    while pos < len(data):
        tag, value, pos = _read_tlv(data, pos)
        out.append((tag, value))
    return out


def _oid(dotted: str) -> bytes:
    """DER-encoded OBJECT IDENTIFIER (tag included)."""
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return _tlv(0x06, bytes(body))


_NULL = b"\x05\x00"

OID_RSA_PSS = _oid("1.2.840.113549.1.1.10")
OID_MGF1 = _oid("1.2.840.113549.1.1.8")
OID_ED25519 = _oid("1.3.101.112")
OID_ED448 = _oid("1.3.101.113")

_HASH_OIDS = {
    HashAlgorithm.SHA1: _oid("1.3.14.3.2.26"),
    HashAlgorithm.SHA2_256: _oid("2.16.840.1.101.3.4.2.1"),
    HashAlgorithm.SHA2_384: _oid("2.16.840.1.101.3.4.2.2"),
    HashAlgorithm.SHA2_512: _oid("2.16.840.1.101.3.4.2.3"),
}
_OID_TO_HASH = {v: k for k, v in _HASH_OIDS.items()}

_PKCS1_OIDS = {
    HashAlgorithm.SHA1: _oid("1.2.840.113549.1.1.5"),
    HashAlgorithm.SHA2_256: _oid("1.2.840.113549.1.1.11"),
    HashAlgorithm.SHA2_384: _oid("1.2.840.113549.1.1.12"),
    HashAlgorithm.SHA2_512: _oid("1.2.840.113549.1.1.13"),
}
_ECDSA_OIDS = {
    HashAlgorithm.SHA1: _oid("1.2.840.10045.4.1"),
    HashAlgorithm.SHA2_256: _oid("1.2.840.10045.4.3.2"),
    HashAlgorithm.SHA2_384: _oid("1.2.840.10045.4.3.3"),
    HashAlgorithm.SHA2_512: _oid("1.2.840.10045.4.3.4"),
}

_HASHES: dict[HashAlgorithm, Callable[[], hashes.HashAlgorithm]] = {
    HashAlgorithm.SHA1: hashes.SHA1,
    HashAlgorithm.SHA2_256: hashes.SHA256,
    HashAlgorithm.SHA2_384: hashes.SHA384,
    HashAlgorithm.SHA2_512: hashes.SHA512,
}
_HASH_LEN = {HashAlgorithm.SHA1: 20, HashAlgorithm.SHA2_256: 32, HashAlgorithm.SHA2_384: 48,
             HashAlgorithm.SHA2_512: 64}

# Hashes acceptable inside AUTH method 14 (RFC 8247 3.2: SHA-1 MUST NOT be used).
_STRONG = (HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_512)


def _pss_params(h: HashAlgorithm) -> bytes:
    """RSASSA-PSS-params with hash h, MGF1(h), saltLength = |h|, trailerField omitted (DEFAULT).

    This is the DER form strongSwan sends (signature_params.c) and RFC 4055 uses; RFC 7427
    A.4.3 prints the same fields plus an explicit trailerField 1, which is also accepted.
    """
    hash_id = _seq(_HASH_OIDS[h], _NULL)
    return _seq(_tlv(0xA0, hash_id),
                _tlv(0xA1, _seq(OID_MGF1, hash_id)),
                _tlv(0xA2, _tlv(0x02, bytes([_HASH_LEN[h]]))))


def algorithm_identifier(scheme: str, h: HashAlgorithm | None = None) -> bytes:
    """DER AlgorithmIdentifier for scheme "rsa-pss", "rsa-pkcs1", "ecdsa", "ed25519", "ed448"."""
    if h is None and scheme in ("rsa-pss", "rsa-pkcs1", "ecdsa"):
        raise CryptoError(f"signature scheme {scheme} needs a hash algorithm")
    if scheme == "rsa-pss":
        return _seq(OID_RSA_PSS, _pss_params(h))  # type: ignore[arg-type]  # checked above
    if scheme == "rsa-pkcs1":
        return _seq(_PKCS1_OIDS[h], _NULL)  # type: ignore[index]  # checked above
    if scheme == "ecdsa":
        return _seq(_ECDSA_OIDS[h])  # type: ignore[index]  # checked above
    if scheme == "ed25519":
        return _seq(OID_ED25519)
    if scheme == "ed448":
        return _seq(OID_ED448)
    raise CryptoError(f"unknown signature scheme {scheme!r}")


# --- parsing a received AlgorithmIdentifier ----------------------------------------------------

@dataclass(frozen=True)
class _Scheme:
    kind: str  # "rsa-pss", "rsa-pkcs1", "ecdsa", "ed25519", "ed448"
    hash: HashAlgorithm | None = None
    mgf_hash: HashAlgorithm | None = None
    salt_len: int = 0


def _parse_hash_algid(value: bytes) -> HashAlgorithm:
    items = _read_all(value)
    if not items or items[0][0] != 0x06:
        raise _DerError("hash AlgorithmIdentifier without OID")
    oid = _tlv(0x06, items[0][1])
    if oid not in _OID_TO_HASH:
        raise _DerError("unknown hash")
    if len(items) > 2 or (len(items) == 2 and items[1] != (0x05, b"")):
        raise _DerError("unexpected hash parameters")
    return _OID_TO_HASH[oid]


def _parse_pss(params: bytes | None) -> _Scheme:
    # RFC 4055 3.1 defaults: SHA-1, MGF1-SHA-1, salt 20, trailer 1.
    h = mgf = HashAlgorithm.SHA1
    salt = 20
    if params is not None:
        last = -1
        for tag, value in _read_all(params):
            order = {0xA0: 0, 0xA1: 1, 0xA2: 2, 0xA3: 3}.get(tag)
            if order is None or order <= last:
                raise _DerError("bad RSASSA-PSS-params")
            last = order
            inner = _read_all(value)
            if len(inner) != 1:
                raise _DerError("bad RSASSA-PSS-params field")
            itag, ivalue = inner[0]
            if order == 0:
                if itag != 0x30:
                    raise _DerError("bad hashAlgorithm")
                h = _parse_hash_algid(ivalue)
            elif order == 1:
                if itag != 0x30:
                    raise _DerError("bad maskGenAlgorithm")
                mitems = _read_all(ivalue)
                if len(mitems) != 2 or _tlv(0x06, mitems[0][1]) != OID_MGF1 or mitems[0][0] != 6 \
                        or mitems[1][0] != 0x30:
                    raise _DerError("unsupported mask generation function")
                mgf = _parse_hash_algid(mitems[1][1])
            else:
                if itag != 0x02 or not ivalue or ivalue[0] & 0x80 or len(ivalue) > 4:
                    raise _DerError("bad INTEGER")
                n = int.from_bytes(ivalue, "big")
                if order == 2:
                    salt = n
                elif n != 1:
                    raise _DerError("trailerField must be 1")
    return _Scheme("rsa-pss", h, mgf, salt)


def _parse_algid(der: bytes) -> _Scheme:
    tag, body, end = _read_tlv(der, 0)
    if tag != 0x30 or end != len(der):
        raise _DerError("AlgorithmIdentifier is not one SEQUENCE")
    items = _read_all(body)
    if not items or items[0][0] != 0x06 or len(items) > 2:
        raise _DerError("AlgorithmIdentifier without OID")
    oid = _tlv(0x06, items[0][1])
    params = _tlv(*items[1]) if len(items) == 2 else None
    if oid == OID_RSA_PSS:
        if params is None:
            return _parse_pss(None)
        if items[1][0] != 0x30:
            raise _DerError("RSASSA-PSS parameters are not a SEQUENCE")
        return _parse_pss(items[1][1])
    for h, o in _PKCS1_OIDS.items():
        if oid == o:
            if params not in (None, _NULL):
                raise _DerError("unexpected parameters")
            return _Scheme("rsa-pkcs1", h)
    for h, o in _ECDSA_OIDS.items():
        if oid == o:
            if params is not None:
                raise _DerError("unexpected parameters")
            return _Scheme("ecdsa", h)
    if oid in (OID_ED25519, OID_ED448):
        if params is not None:
            raise _DerError("unexpected parameters")
        return _Scheme("ed25519" if oid == OID_ED25519 else "ed448")
    raise _DerError("unknown signature algorithm")


# --- signing ---------------------------------------------------------------------------------

_ECDSA_DEFAULT_HASH = {"secp256r1": HashAlgorithm.SHA2_256, "secp384r1": HashAlgorithm.SHA2_384,
                       "secp521r1": HashAlgorithm.SHA2_512}
_RFC4754 = {
    AuthMethod.ECDSA_SHA256_P256: ("secp256r1", HashAlgorithm.SHA2_256, 32),
    AuthMethod.ECDSA_SHA384_P384: ("secp384r1", HashAlgorithm.SHA2_384, 48),
    AuthMethod.ECDSA_SHA512_P521: ("secp521r1", HashAlgorithm.SHA2_512, 66),
}


def _ecdsa(h: HashAlgorithm) -> ec.ECDSA:
    if _openssl_backend.ecdsa_deterministic_supported():
        # RFC 6979: no dependence on a random source for the nonce.
        return ec.ECDSA(_HASHES[h](), deterministic_signing=True)
    return ec.ECDSA(_HASHES[h]())  # pragma: no cover - old OpenSSL


def _pss(h: HashAlgorithm, mgf: HashAlgorithm, salt: int) -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(_HASHES[mgf]()), salt_length=salt)


def sign(private_key: object, octets: bytes, hash_alg: HashAlgorithm | None = None, *,
         method: AuthMethod = AuthMethod.DIGITAL_SIGNATURE,
         rsa_pss: bool = True) -> tuple[AuthMethod, bytes]:
    """Sign ``octets``; returns (AUTH method, AUTH data).

    ``hash_alg`` defaults to SHA-256 for RSA and to the curve's hash for ECDSA (as strongSwan
    does); EdDSA always uses IDENTITY.  ``method`` selects a legacy encoding (1 = RSA
    PKCS#1 v1.5 SHA-1, 9/10/11 = RFC 4754 ECDSA); ``rsa_pss=False`` signs RSA with PKCS#1 v1.5
    inside method 14.  Note the RSASSA-PSS salt comes from OpenSSL's RNG (cryptography offers
    no way to inject it); ECDSA uses RFC 6979 deterministic nonces.
    """
    octets = bytes(octets)
    method = AuthMethod(method)
    if method == AuthMethod.RSA_SIG:
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise CryptoError("AUTH method 1 needs an RSA key")
        return method, private_key.sign(octets, padding.PKCS1v15(), hashes.SHA1())
    if method in _RFC4754:
        curve, h, size = _RFC4754[method]
        if not isinstance(private_key, ec.EllipticCurvePrivateKey) or \
                private_key.curve.name != curve:
            raise CryptoError(f"AUTH method {int(method)} needs a {curve} key")
        r, s = decode_dss_signature(private_key.sign(octets, _ecdsa(h)))
        return method, r.to_bytes(size, "big") + s.to_bytes(size, "big")
    if method != AuthMethod.DIGITAL_SIGNATURE:
        raise CryptoError(f"AUTH method {int(method)} is not a signature method")

    if isinstance(private_key, rsa.RSAPrivateKey):
        h = HashAlgorithm(hash_alg) if hash_alg is not None else HashAlgorithm.SHA2_256
        if h not in _STRONG:
            raise CryptoError(f"hash {h.name} is not allowed for RSA signatures")
        if rsa_pss:
            algid = algorithm_identifier("rsa-pss", h)
            sig = private_key.sign(octets, _pss(h, h, _HASH_LEN[h]), _HASHES[h]())
        else:
            algid = algorithm_identifier("rsa-pkcs1", h)
            sig = private_key.sign(octets, padding.PKCS1v15(), _HASHES[h]())
    elif isinstance(private_key, ec.EllipticCurvePrivateKey):
        h = HashAlgorithm(hash_alg) if hash_alg is not None else \
            _ECDSA_DEFAULT_HASH.get(private_key.curve.name, HashAlgorithm.SHA2_256)
        if h not in _STRONG:
            raise CryptoError(f"hash {h.name} is not allowed for ECDSA signatures")
        algid = algorithm_identifier("ecdsa", h)
        sig = private_key.sign(octets, _ecdsa(h))
    elif isinstance(private_key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        if hash_alg not in (None, HashAlgorithm.IDENTITY):
            raise CryptoError("EdDSA signs with the IDENTITY hash only (RFC 8420)")
        ed = isinstance(private_key, ed25519.Ed25519PrivateKey)
        algid = algorithm_identifier("ed25519" if ed else "ed448")
        sig = private_key.sign(octets)
    else:
        raise CryptoError(f"unsupported private key type {type(private_key).__name__}")
    return AuthMethod.DIGITAL_SIGNATURE, bytes([len(algid)]) + algid + sig


# --- verification ----------------------------------------------------------------------------

def _verify_scheme(public_key: object, scheme: _Scheme, sig: bytes, octets: bytes) -> bool:
    h, mgf_h = scheme.hash, scheme.mgf_hash
    if scheme.kind in ("rsa-pss", "rsa-pkcs1"):
        if not isinstance(public_key, rsa.RSAPublicKey) or h is None or h not in _STRONG:
            return False
        pad: padding.AsymmetricPadding
        if scheme.kind == "rsa-pss":
            if mgf_h is None or mgf_h not in _STRONG:
                return False
            max_salt = (public_key.key_size + 6) // 8 - _HASH_LEN[h] - 2
            if scheme.salt_len > max_salt:
                return False
            pad = _pss(h, mgf_h, scheme.salt_len)
        else:
            pad = padding.PKCS1v15()
        public_key.verify(sig, octets, pad, _HASHES[h]())
        return True
    if scheme.kind == "ecdsa":
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or h is None or h not in _STRONG:
            return False
        # RFC 7427 3: the signature is the DER Ecdsa-Sig-Value; insist on canonical DER.
        r, s = decode_dss_signature(sig)
        if encode_dss_signature(r, s) != sig:
            return False
        public_key.verify(sig, octets, ec.ECDSA(_HASHES[h]()))
        return True
    if scheme.kind == "ed25519":
        if not isinstance(public_key, ed25519.Ed25519PublicKey):
            return False
        public_key.verify(sig, octets)
        return True
    if scheme.kind == "ed448":
        if not isinstance(public_key, ed448.Ed448PublicKey):
            return False
        public_key.verify(sig, octets)
        return True
    return False


def verify(public_key: object, method: int, auth_data: bytes, octets: bytes) -> bool:
    """Check a signature AUTH payload; any malformed or unsupported input gives False.

    ``public_key`` is a cryptography public key (an ``x509.Certificate`` is accepted too).
    """
    from cryptography import x509  # not at import: ~20 ms of every start-up, for certificates only
    try:
        if isinstance(public_key, x509.Certificate):
            public_key = public_key.public_key()
        auth_data = bytes(auth_data)
        octets = bytes(octets)
        if method == AuthMethod.DIGITAL_SIGNATURE:
            if not auth_data:
                return False
            n = auth_data[0]
            if n == 0 or len(auth_data) < 1 + n + 1:
                return False
            scheme = _parse_algid(auth_data[1:1 + n])
            return _verify_scheme(public_key, scheme, auth_data[1 + n:], octets)
        if method == AuthMethod.RSA_SIG:
            if not isinstance(public_key, rsa.RSAPublicKey):
                return False
            public_key.verify(auth_data, octets, padding.PKCS1v15(), hashes.SHA1())
            return True
        if method in _RFC4754:
            curve, h, size = _RFC4754[AuthMethod(method)]
            if not isinstance(public_key, ec.EllipticCurvePublicKey) or \
                    public_key.curve.name != curve or len(auth_data) != 2 * size:
                return False
            r = int.from_bytes(auth_data[:size], "big")
            s = int.from_bytes(auth_data[size:], "big")
            public_key.verify(encode_dss_signature(r, s), octets, ec.ECDSA(_HASHES[h]()))
            return True
        return False
    except InvalidSignature:
        return False
    except Exception:  # noqa: BLE001 - the contract is "never raises on garbage input"
        return False


def supported_hash_algorithms() -> list[HashAlgorithm]:
    """Hashes to announce in N(SIGNATURE_HASH_ALGORITHMS) (RFC 7427 4)."""
    return [HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_512,
            HashAlgorithm.IDENTITY]
