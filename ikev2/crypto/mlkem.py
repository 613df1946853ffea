"""ML-KEM (FIPS 203) as IKEv2 key exchange methods 35/36/37 (ML-KEM-512/768/1024).

How a KEM maps onto the KE payload (draft-ietf-ipsecme-ikev2-mlkem, as strongSwan 6 does):

* the initiator generates a key pair and sends the *encapsulation key* ``ek`` as KE data
  (800 / 1184 / 1568 octets);
* the responder encapsulates to it and sends the *ciphertext* (768 / 1088 / 1568 octets);
  its shared secret is the 32-octet ``K`` of ``Encaps``;
* the initiator decapsulates the ciphertext and gets the same ``K``.

Both lengths are checked exactly; an encapsulation key that fails FIPS 203's modulus check
(7.2) is refused by OpenSSL and raises :class:`InvalidKeyExchange`.  A ciphertext of the right
length never fails: ML-KEM answers a forged one with the implicit-rejection key, and the IKE
SA then fails at the first integrity check, as with a wrong DH value.

Randomness: key generation takes the 64-octet seed d || z from the injected
``random_bytes`` (FIPS 203 ``ML-KEM.KeyGen_internal``), so the initiator's half is
reproducible.  Encapsulation draws its 32-octet message ``m`` from OpenSSL's RNG: the
``cryptography`` package offers no way to pass it in (as for the RSA-PSS salt, see
docs/crypto.md).

Availability: cryptography binds OpenSSL's ML-KEM.  The parameter sets it does not bind
(cryptography 50 has ML-KEM-768 and ML-KEM-1024, not ML-KEM-512), or all of them when the
linked OpenSSL has no ML-KEM (< 3.5), are *known* but *unavailable*: ``unavailable_reason``
says why, proposal parsing refuses them with that reason, and nothing falls back to another
method.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ikev2.constants import DhId
from ikev2.errors import CryptoError, InvalidKeyExchange

from .kex import RandomBytes

__all__ = ["MlKemMethod", "MlKemPrivate", "MLKEM_METHODS", "mlkem_backend_text"]

SEED_LEN = 64  # d || z
SHARED_SECRET_LEN = 32


# (private key class, public key class) of cryptography's ML-KEM binding, or None; and why not.
_Impl = tuple[tuple[Any, Any] | None, str]


def _classes(bits: int) -> _Impl:
    """(private class, public class) from cryptography, or (None, reason)."""
    try:
        from cryptography.hazmat.primitives.asymmetric import mlkem
    except ImportError as exc:  # cryptography too old
        return None, f"the installed cryptography has no ML-KEM module ({exc})"
    priv = getattr(mlkem, f"MLKEM{bits}PrivateKey", None)
    pub = getattr(mlkem, f"MLKEM{bits}PublicKey", None)
    if priv is None or pub is None:
        import cryptography
        return None, (f"ML-KEM-{bits} is not available: cryptography {cryptography.__version__} "
                      f"does not bind it")
    try:  # the linked OpenSSL may lack ML-KEM (< 3.5) although the Python class exists
        priv.from_seed_bytes(bytes(SEED_LEN)).public_key()
    except Exception as exc:  # UnsupportedAlgorithm and friends
        return None, f"ML-KEM-{bits} is not available in the linked OpenSSL ({exc})"
    return (priv, pub), ""


def mlkem_backend_text() -> str:
    """One line for logs/`check`: the OpenSSL version and which parameter sets work."""
    try:
        from cryptography.hazmat.backends.openssl.backend import backend
        version = backend.openssl_version_text()
    except Exception:  # pragma: no cover - depends on the installation
        version = "unknown OpenSSL"
    ok = [m.name for m in MLKEM_METHODS if m.available]
    return f"{version}: " + (", ".join(ok) if ok else "no ML-KEM")


@dataclass(frozen=True, eq=False)
class MlKemMethod:
    """One ML-KEM parameter set, with the interface of ``dh.KeyExchangeMethod``."""

    group: DhId
    name: str
    keyword: str
    bits: int
    ek_len: int  # initiator's KE data (encapsulation key)
    ct_len: int  # responder's KE data (ciphertext)
    kind: str = "mlkem"

    @property
    def public_len(self) -> int:
        """KE data length of the initiator (the encapsulation key)."""
        return self.ek_len

    @property
    def _impl(self) -> _Impl:
        cache = _IMPL.get(self.bits)
        if cache is None:
            cache = _IMPL[self.bits] = _classes(self.bits)
        return cache

    @property
    def available(self) -> bool:
        return self._impl[0] is not None

    @property
    def unavailable_reason(self) -> str:
        return self._impl[1]

    def _require(self) -> tuple[Any, Any]:
        classes, why = self._impl
        if classes is None:
            raise CryptoError(why)
        return classes

    def generate(self, random_bytes: RandomBytes) -> MlKemPrivate:
        """Initiator: a key pair from a 64-octet seed d || z drawn from ``random_bytes``."""
        seed = bytes(random_bytes(SEED_LEN))
        if len(seed) != SEED_LEN:
            raise CryptoError(f"random_bytes({SEED_LEN}) returned {len(seed)} octets")
        return self.private_from_value(seed)

    def private_from_value(self, value: bytes) -> MlKemPrivate:
        """Our key pair from its 64-octet seed d || z (known-answer tests)."""
        priv_cls, _ = self._require()
        value = bytes(value)
        if len(value) != SEED_LEN:
            raise CryptoError(f"{self.name}: the seed is {len(value)} octets, expected {SEED_LEN}")
        key = priv_cls.from_seed_bytes(value)
        return MlKemPrivate(self, key.public_key().public_bytes_raw(), key)

    def respond(self, random_bytes: RandomBytes, peer_public: bytes) -> tuple[bytes, bytes]:
        """Responder: encapsulate to the initiator's key; (ciphertext, shared secret)."""
        _, pub_cls = self._require()
        peer_public = bytes(peer_public)
        if len(peer_public) != self.ek_len:
            raise InvalidKeyExchange(f"{self.name}: encapsulation key is {len(peer_public)} "
                                     f"octets, expected {self.ek_len}")
        try:
            ek = pub_cls.from_public_bytes(peer_public)
        except ValueError:
            raise InvalidKeyExchange(f"{self.name}: encapsulation key fails the FIPS 203 "
                                     f"modulus check") from None
        shared, ct = ek.encapsulate()
        if len(ct) != self.ct_len or len(shared) != SHARED_SECRET_LEN:  # pragma: no cover
            raise CryptoError(f"{self.name}: OpenSSL returned unexpected lengths")
        return ct, shared

    def __repr__(self) -> str:
        return f"MlKemMethod({self.name})"


class MlKemPrivate:
    """The initiator's ML-KEM key pair: ``public_bytes`` is the encapsulation key."""

    def __init__(self, method: MlKemMethod, public_bytes: bytes, key: Any) -> None:
        self.method = method
        self.public_bytes = public_bytes
        self._key = key

    def shared_secret(self, peer_public: bytes) -> bytes:
        """Decapsulate the responder's ciphertext."""
        m = self.method
        peer_public = bytes(peer_public)
        if len(peer_public) != m.ct_len:
            raise InvalidKeyExchange(f"{m.name}: ciphertext is {len(peer_public)} octets, "
                                     f"expected {m.ct_len}")
        if self._key is None:
            raise CryptoError(f"{m.name}: key pair already used")
        try:
            return bytes(self._key.decapsulate(peer_public))
        except ValueError as exc:  # pragma: no cover - lengths are checked above
            raise InvalidKeyExchange(f"{m.name}: decapsulation failed: {exc}") from None

    def __repr__(self) -> str:
        return f"<MlKemPrivate {self.method.name}>"


_IMPL: dict[int, _Impl] = {}

MLKEM_METHODS: tuple[MlKemMethod, ...] = (
    MlKemMethod(DhId.ML_KEM_512, "ML_KEM_512", "mlkem512", 512, 800, 768),
    MlKemMethod(DhId.ML_KEM_768, "ML_KEM_768", "mlkem768", 768, 1184, 1088),
    MlKemMethod(DhId.ML_KEM_1024, "ML_KEM_1024", "mlkem1024", 1024, 1568, 1568),
)
