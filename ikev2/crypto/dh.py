"""Key exchange methods (Transform Type 4): MODP, ECP and Montgomery-curve groups.

KE payload encodings (RFC 7296 3.4):

* MODP (RFC 3526 groups 14-16): g^x mod p, left-padded with zeros to the prime's length;
  the shared secret g^ir is encoded the same way (RFC 7296 2.14).
* ECP (RFC 5903 groups 19-21): public value x || y, each coordinate at the field size
  (RFC 5903 7); the shared secret is the x coordinate alone, at the field size.
* Curve25519 / Curve448 (RFC 8031 groups 31/32): the 32/56-octet u-coordinate; the shared
  secret is the 32/56-octet X25519/X448 output (RFC 7748 6).

Peer values are checked as RFC 6989 asks, and failures raise :class:`InvalidKeyExchange`.

Private keys are derived from an injected ``random_bytes(n)`` callable, so a key exchange is
reproducible given the same random stream (the protocol core stays deterministic).

MODP and the cryptography deprecation of finite-field DH: see docs/crypto.md.  In short,
the modular exponentiations run inside OpenSSL (constant-time ``BN_mod_exp_mont_consttime``,
both for g^x, computed by OpenSSL when it loads the PKCS#8 private key, and for y^x in
``exchange``) while cryptography still offers DH; its CryptographyDeprecationWarning is
silenced for exactly those calls.  If the API goes away, a pure-Python ``pow()`` fallback,
which is NOT constant-time, takes over and says so once through :mod:`logging`.
"""
from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from cryptography.hazmat.primitives.asymmetric import ec, x448, x25519

from ikev2.constants import DhId
from ikev2.errors import CryptoError, InvalidKeyExchange

from .kex import KeyExchange
from .mlkem import MLKEM_METHODS

__all__ = [
    "KeyExchangeMethod",
    "KeyExchangePrivate",
    "KE_METHODS",
    "KeyExchange",
    "ke_by_id",
    "ke_method",
    "ALL_KE_METHODS",
    "modp_backend",
]

log = logging.getLogger(__name__)

RandomBytes = Callable[[int], bytes]


def _take(random_bytes: RandomBytes, n: int) -> bytes:
    data = bytes(random_bytes(n))
    if len(data) != n:
        raise CryptoError(f"random_bytes({n}) returned {len(data)} octets")
    return data


# ---------------------------------------------------------------------------------------------
# RFC 3526 MODP groups.  The primes are p = 2^N - 2^(N-64) - 1 + 2^64 * ([2^(N-130) pi] + k);
# tests/test_crypto_dh.py recomputes them from that formula.  Generator 2 for all.
# ---------------------------------------------------------------------------------------------

MODP_2048_P = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A0879"
    "8E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B"
    "0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA4836"
    "1C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804"
    "F1746C08CA18217C32905E462E36CE3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6"
    "955817183995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF",
    16)
MODP_3072_P = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A0879"
    "8E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B"
    "0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA4836"
    "1C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804"
    "F1746C08CA18217C32905E462E36CE3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6"
    "955817183995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33A85521ABDF1CBA64"
    "ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7ABF5AE8CDB0933D71E8C94E04A25619DCEE3D226"
    "1AD2EE6BF12FFA06D98A0864D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2"
    "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A93AD2CAFFFFFFFFFFFFFFFF",
    16)
MODP_4096_P = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A0879"
    "8E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B"
    "0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA4836"
    "1C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804"
    "F1746C08CA18217C32905E462E36CE3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6"
    "955817183995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33A85521ABDF1CBA64"
    "ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7ABF5AE8CDB0933D71E8C94E04A25619DCEE3D226"
    "1AD2EE6BF12FFA06D98A0864D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2"
    "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A92108011A723C12A787E6D788719A10BDBA5B2699C32718"
    "6AF4E23C1A946834B6150BDA2583E9CA2AD44CE8DBBBC2DB04DE8EF92E8EFC141FBECAA6287C59474E6BC05D"
    "99B2964FA090C3A2233BA186515BE7ED1F612970CEE2D7AFB81BDD762170481CD0069127D5B05AA993B4EA98"
    "8D8FDDC186FFB7DC90A6C08F4DF435C934063199FFFFFFFFFFFFFFFF",
    16)


# --- minimal DER encoder for the PKCS#8 / SubjectPublicKeyInfo DH structures -------------------

def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def _tlv(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(value)) + value


def _der_int(x: int) -> bytes:
    return _tlv(0x02, x.to_bytes(x.bit_length() // 8 + 1, "big"))


def _der_seq(*items: bytes) -> bytes:
    return _tlv(0x30, b"".join(items))


_OID_DH_KEY_AGREEMENT = bytes.fromhex("06092a864886f70d010301")  # 1.2.840.113549.1.3.1 (PKCS#3)
_FFDH_WARNING = r"Diffie-Hellman over finite fields \(FFDH\) is deprecated"


class _OpenSSLModp:
    """MODP through OpenSSL's DH (constant-time modexp) via cryptography's serialization API.

    Only ``cryptography.hazmat.primitives.serialization`` is used; the deprecated DH names of
    ``cryptography.hazmat.primitives.asymmetric.dh`` are never touched.  Loading a DH key
    emits a CryptographyDeprecationWarning; it is filtered (by category and message) for the
    duration of these calls only.  ``warnings.catch_warnings`` swaps process-global state,
    so the calls are serialized with a lock.
    """

    name = "openssl"
    _lock = threading.Lock()

    def __init__(self) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.utils import CryptographyDeprecationWarning
        self._ser = serialization
        self._warning_cls = CryptographyDeprecationWarning

    @contextmanager
    def _quiet(self) -> Iterator[None]:
        with self._lock, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_FFDH_WARNING, category=self._warning_cls)
            yield

    @staticmethod
    def _algid(p: int, g: int) -> bytes:
        return _der_seq(_OID_DH_KEY_AGREEMENT, _der_seq(_der_int(p), _der_int(g)))

    def keypair(self, p: int, g: int, x: int) -> tuple[Any, int]:
        """Load x as a PKCS#8 DH key: OpenSSL computes y = g^x mod p (constant time)."""
        pkcs8 = _der_seq(_der_int(0), self._algid(p, g), _tlv(0x04, _der_int(x)))
        with self._quiet():
            key = self._ser.load_der_private_key(pkcs8, None)
            y: int = key.public_key().public_numbers().y  # type: ignore[union-attr]  # a DH key
        return key, y

    def shared(self, key: Any, p: int, g: int, x: int, y_peer: int) -> int:
        spki = _der_seq(self._algid(p, g), _tlv(0x03, b"\x00" + _der_int(y_peer)))
        with self._quiet():
            peer = self._ser.load_der_public_key(spki)
            secret = key.exchange(peer)
        return int.from_bytes(secret, "big")


class _PythonModp:
    """Fallback: Python's built-in ``pow``.  Correct, but NOT constant-time."""

    name = "python-pow"

    def keypair(self, p: int, g: int, x: int) -> tuple[Any, int]:
        return None, pow(g, x, p)

    def shared(self, key: Any, p: int, g: int, x: int, y_peer: int) -> int:
        return pow(y_peer, x, p)


class ModpBackend(Protocol):
    """Modular exponentiation for the MODP groups: ``keypair`` gives (backend key, g^x mod p)."""

    name: str

    def keypair(self, p: int, g: int, x: int) -> tuple[Any, int]: ...

    def shared(self, key: Any, p: int, g: int, x: int, y_peer: int) -> int: ...


def _select_modp_backend() -> ModpBackend:
    try:
        backend = _OpenSSLModp()
        # Probe once with a tiny exponent in the 2048-bit group.
        key, y = backend.keypair(MODP_2048_P, 2, 0x1234567)
        if y != pow(2, 0x1234567, MODP_2048_P):
            raise CryptoError("OpenSSL DH probe returned a wrong public value")
        if backend.shared(key, MODP_2048_P, 2, 0x1234567, 4) != pow(4, 0x1234567, MODP_2048_P):
            raise CryptoError("OpenSSL DH probe returned a wrong shared secret")
        return backend
    except Exception as exc:  # pragma: no cover - depends on the installed cryptography
        log.warning("finite-field DH is not available through cryptography (%s); MODP groups "
                    "fall back to Python pow(), which is not constant-time", exc)
        return _PythonModp()


_modp_backend: ModpBackend | None = None
_modp_backend_lock = threading.Lock()


def modp_backend() -> ModpBackend:
    """The MODP implementation in use ("openssl" or "python-pow"), chosen on first use."""
    global _modp_backend
    if _modp_backend is None:
        with _modp_backend_lock:
            if _modp_backend is None:
                _modp_backend = _select_modp_backend()
    return _modp_backend


def _set_modp_backend(backend: ModpBackend | None) -> None:
    """For tests: force a backend (None re-runs the selection)."""
    global _modp_backend
    _modp_backend = backend


# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class KeyExchangeMethod:
    """One key exchange method (DH group)."""

    group: DhId
    name: str
    keyword: str
    public_len: int
    kind: str  # "modp", "ecp", "x25519", "x448"
    modp_p: int = 0
    modp_g: int = 0
    exponent_len: int = 0
    curve: ec.EllipticCurve | None = None
    field_p: int = 0
    order: int = 0

    # Diffie-Hellman groups are always there (see mlkem.MlKemMethod for the KEMs).
    available: ClassVar[bool] = True
    unavailable_reason: ClassVar[str] = ""

    def generate(self, random_bytes: RandomBytes) -> KeyExchangePrivate:
        """A fresh private value drawn from ``random_bytes``; deterministic given that stream."""
        if self.kind == "modp":
            # Exponent of at least twice the group's strength (RFC 3526 8; the lengths
            # strongSwan uses), top bit set so that it is never small.
            raw = _take(random_bytes, self.exponent_len)
            return self.private_from_value(
                int.from_bytes(raw, "big") | (1 << (8 * self.exponent_len - 1)))
        if self.kind == "ecp":
            # FIPS 186-4 B.4.1: 64 extra bits, then reduce into [1, n-1].
            nbytes = (self.order.bit_length() + 7) // 8 + 8
            d = int.from_bytes(_take(random_bytes, nbytes), "big") % (self.order - 1) + 1
            return _EcpPrivate.from_scalar(self, d)
        return self.private_from_value(_take(random_bytes, self.public_len))

    def respond(self, random_bytes: RandomBytes, peer_public: bytes) -> tuple[bytes, bytes]:
        """Responder: our KE data and the shared secret, given the initiator's KE data.

        Same call for a KEM (``mlkem.MlKemMethod.respond`` encapsulates), so the exchanges
        need not know which kind of method they run.
        """
        priv = self.generate(random_bytes)
        return priv.public_bytes, priv.shared_secret(peer_public)

    def private_from_value(self, value: int | bytes) -> KeyExchangePrivate:
        """Our half from a known private value (known-answer tests, interop debugging).

        MODP: the exponent x (int); ECP: the scalar (int, 1 <= d < n); X25519/X448: the
        32/56-octet private key.
        """
        if self.kind == "modp":
            x = int(value)
            if not 1 < x < self.modp_p - 1:
                raise CryptoError(f"{self.name}: private exponent out of range")
            key, y = modp_backend().keypair(self.modp_p, self.modp_g, x)
            return _ModpPrivate(self, y.to_bytes(self.public_len, "big"), x, key)
        if self.kind == "ecp":
            if not 0 < int(value) < self.order:
                raise CryptoError(f"{self.name}: private scalar out of range")
            return _EcpPrivate.from_scalar(self, int(value))
        try:
            if self.kind == "x25519":
                key = x25519.X25519PrivateKey.from_private_bytes(bytes(value))
            else:
                key = x448.X448PrivateKey.from_private_bytes(bytes(value))
        except ValueError as exc:
            raise CryptoError(f"{self.name}: {exc}") from None
        return _MontPrivate(self, key.public_key().public_bytes_raw(), key)

    def __repr__(self) -> str:
        return f"KeyExchangeMethod({self.name})"


class KeyExchangePrivate:
    """Our half of one key exchange: the KE payload data and the means to finish it."""

    method: KeyExchangeMethod
    public_bytes: bytes

    def shared_secret(self, peer_public: bytes) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def _bad(self, why: str) -> InvalidKeyExchange:
        return InvalidKeyExchange(f"{self.method.name}: {why}")

    def _check_len(self, peer_public: bytes) -> None:
        if len(peer_public) != self.method.public_len:
            raise self._bad(f"peer public value is {len(peer_public)} octets, expected "
                            f"{self.method.public_len}")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.method.name}>"


class _ModpPrivate(KeyExchangePrivate):
    def __init__(self, method: KeyExchangeMethod, public_bytes: bytes, x: int, key: Any):
        self.method = method
        self.public_bytes = public_bytes
        self._x = x
        self._key = key

    def shared_secret(self, peer_public: bytes) -> bytes:
        self._check_len(peer_public)
        m = self.method
        y = int.from_bytes(peer_public, "big")
        # RFC 6989 2.1: 1 < y < p-1.  For the RFC 3526 safe-prime groups this is sufficient
        # (RFC 6989 2.2: no subgroup check is needed for safe primes).
        if not 1 < y < m.modp_p - 1:
            raise self._bad("peer public value is out of range (must satisfy 1 < y < p-1)")
        backend = modp_backend()
        key = self._key
        if backend.name == "openssl" and key is None:  # created while the fallback was active
            key, _ = backend.keypair(m.modp_p, m.modp_g, self._x)
        elif backend.name != "openssl":
            key = None
        try:
            z = backend.shared(key, m.modp_p, m.modp_g, self._x, y)
        except ValueError as exc:
            raise self._bad(f"key exchange failed: {exc}") from None
        if z <= 1 or z == m.modp_p - 1:
            raise self._bad("degenerate shared secret")
        return z.to_bytes(m.public_len, "big")


class _EcpPrivate(KeyExchangePrivate):
    def __init__(self, method: KeyExchangeMethod, public_bytes: bytes, key: ec.EllipticCurvePrivateKey):
        self.method = method
        self.public_bytes = public_bytes
        self._key = key

    @classmethod
    def from_scalar(cls, method: KeyExchangeMethod, d: int) -> _EcpPrivate:
        if method.curve is None:
            raise CryptoError(f"{method.name}: not an elliptic curve group")
        key = ec.derive_private_key(d, method.curve)
        pub = key.public_key().public_numbers()
        flen = method.public_len // 2
        return cls(method, pub.x.to_bytes(flen, "big") + pub.y.to_bytes(flen, "big"), key)

    def shared_secret(self, peer_public: bytes) -> bytes:
        self._check_len(peer_public)
        m = self.method
        flen = m.public_len // 2
        x = int.from_bytes(peer_public[:flen], "big")
        y = int.from_bytes(peer_public[flen:], "big")
        # RFC 6989 2.3: the coordinates must be field elements and the point on the curve
        # (and not the point at infinity, which has no x || y encoding).
        if x >= m.field_p or y >= m.field_p:
            raise self._bad("peer public value has a coordinate outside the field")
        if (x, y) == (0, 0):
            raise self._bad("peer public value is the point at infinity")
        if m.curve is None:
            raise CryptoError(f"{m.name}: not an elliptic curve group")
        try:
            peer = ec.EllipticCurvePublicKey.from_encoded_point(
                m.curve, b"\x04" + bytes(peer_public))
        except ValueError:
            raise self._bad("peer public value is not a point on the curve") from None
        try:
            z = self._key.exchange(ec.ECDH(), peer)
        except ValueError as exc:
            raise self._bad(f"key exchange failed: {exc}") from None
        # RFC 5903 7: the x coordinate, at the field size.
        return z.rjust(flen, b"\x00")


class _MontPrivate(KeyExchangePrivate):
    def __init__(self, method: KeyExchangeMethod, public_bytes: bytes,
                 key: x25519.X25519PrivateKey | x448.X448PrivateKey):
        self.method = method
        self.public_bytes = public_bytes
        self._key = key

    def shared_secret(self, peer_public: bytes) -> bytes:
        self._check_len(peer_public)
        try:
            if isinstance(self._key, x25519.X25519PrivateKey):
                z = self._key.exchange(x25519.X25519PublicKey.from_public_bytes(bytes(peer_public)))
            else:
                z = self._key.exchange(x448.X448PublicKey.from_public_bytes(bytes(peer_public)))
        except ValueError:
            # OpenSSL refuses an all-zero result (small-order peer point) itself.
            raise self._bad("peer public value yields the all-zero shared secret "
                            "(small-order point)") from None
        # RFC 7748 6.1/6.2, RFC 8031 2.3: reject the all-zero output, in constant time.
        acc = 0
        for b in z:
            acc |= b
        if acc == 0:
            raise self._bad("peer public value yields the all-zero shared secret "
                            "(small-order point)")
        return z


# --- registry --------------------------------------------------------------------------------

_P256_P = 2**256 - 2**224 + 2**192 + 2**96 - 1
_P384_P = 2**384 - 2**128 - 2**96 + 2**32 - 1
_P521_P = 2**521 - 1
# Group orders (FIPS 186-4 D.1.2 / SEC 2), used only to reduce random scalars.
_P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_P384_N = int(
    "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF"
    "581A0DB248B0A77AECEC196ACCC52973",
    16)
_P521_N = int(
    "01FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFA51868783BF2F966B7FCC0148F7"
    "09A5D03BB5C9B8899C47AEBB6FB71E91386409", 16)

KE_METHODS: tuple[KeyExchangeMethod, ...] = (
    KeyExchangeMethod(DhId.MODP_2048, "MODP_2048", "modp2048", 256, "modp",
                      modp_p=MODP_2048_P, modp_g=2, exponent_len=48),
    KeyExchangeMethod(DhId.MODP_3072, "MODP_3072", "modp3072", 384, "modp",
                      modp_p=MODP_3072_P, modp_g=2, exponent_len=48),
    KeyExchangeMethod(DhId.MODP_4096, "MODP_4096", "modp4096", 512, "modp",
                      modp_p=MODP_4096_P, modp_g=2, exponent_len=64),
    KeyExchangeMethod(DhId.ECP_256, "ECP_256", "ecp256", 64, "ecp", curve=ec.SECP256R1(),
                      field_p=_P256_P, order=_P256_N),
    KeyExchangeMethod(DhId.ECP_384, "ECP_384", "ecp384", 96, "ecp", curve=ec.SECP384R1(),
                      field_p=_P384_P, order=_P384_N),
    KeyExchangeMethod(DhId.ECP_521, "ECP_521", "ecp521", 132, "ecp", curve=ec.SECP521R1(),
                      field_p=_P521_P, order=_P521_N),
    KeyExchangeMethod(DhId.CURVE25519, "CURVE_25519", "x25519", 32, "x25519"),
    KeyExchangeMethod(DhId.CURVE448, "CURVE_448", "x448", 56, "x448"),
)

# Every key exchange method, Diffie-Hellman groups and KEMs (ML-KEM-512/768/1024, whether or
# not the linked OpenSSL offers them: ``method.available`` tells).
ALL_KE_METHODS: tuple[KeyExchange, ...] = KE_METHODS + MLKEM_METHODS

_BY_ID: dict[int, KeyExchange] = {m.group: m for m in ALL_KE_METHODS}


def ke_by_id(group: int) -> KeyExchange | None:
    """The KeyExchangeMethod or MlKemMethod with IANA id ``group``, or None."""
    return _BY_ID.get(group)


def ke_method(group: int | None) -> KeyExchange:
    """The method of a group we offered or chose ourselves (so known; else an internal error)."""
    method = _BY_ID.get(group) if group is not None else None
    if method is None:
        raise ValueError(f"unsupported key exchange method {group}")
    return method
