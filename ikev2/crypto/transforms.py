"""Symmetric transforms of IKEv2 and ESP: encryption (ENCR), integrity (INTEG) and PRF.

One immutable object per IANA transform (and, for ENCR, per key size).  The same objects serve
the IKE SK payload (RFC 7296 3.14, RFC 5282, RFC 7634) and the ESP data plane (RFC 4303,
RFC 4106, RFC 7634): both use the same key layout (cipher key, then a 4-octet salt for the
AEADs) and the same nonce construction (salt || 8-octet explicit IV).

Names follow strongSwan so that status output reads the same as ``swanctl --list-sas``:
``name`` is the display form ("AES_GCM_16_256"), ``keyword`` the configuration form
("aes256gcm16").

Performance: building a cryptography cipher object costs about as much as sealing a
1400-octet packet, so :meth:`EncrAlgorithm.cipher_for_key` returns a reusable keyed object
(:class:`KeyedCipher`) that an SA keeps for its lifetime; :meth:`EncrAlgorithm.encrypt` and
:meth:`EncrAlgorithm.decrypt` use a small per-algorithm LRU of those objects.
"""
from __future__ import annotations

import hashlib
import hmac
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from ikev2.constants import EncrId, IntegId, PrfId
from ikev2.errors import CryptoError, IntegrityError

__all__ = [
    "EncrAlgorithm",
    "IntegAlgorithm",
    "PrfAlgorithm",
    "KeyedCipher",
    "ENCR_ALGORITHMS",
    "INTEG_ALGORITHMS",
    "PRF_ALGORITHMS",
    "encr_by_id",
    "integ_by_id",
    "prf_by_id",
    "clear_cipher_cache",
]

#: Octets of salt appended to the cipher key of the AEAD transforms (RFC 4106 8.1,
#: RFC 5282 7.1, RFC 7634 2 and 3).
AEAD_SALT_LEN = 4
#: Explicit IV carried in front of the ciphertext for the AEADs (RFC 4106 3.1, RFC 7634 2).
AEAD_IV_LEN = 8
AEAD_ICV_LEN = 16
AES_BLOCK = 16
_CACHE_SIZE = 64


class KeyedCipher:
    """An encryption transform bound to one key: reusable for every packet of an SA.

    ``encrypt(iv, plaintext, aad)`` / ``decrypt(iv, ciphertext, aad)`` have the semantics of
    :meth:`EncrAlgorithm.encrypt` / :meth:`EncrAlgorithm.decrypt` without the key argument.
    """

    __slots__ = ("algorithm", "salt", "_aead", "_aes")

    def __init__(self, algorithm: EncrAlgorithm, key: bytes):
        if len(key) != algorithm.key_len:
            raise CryptoError(
                f"{algorithm.name}: key must be {algorithm.key_len} octets, got {len(key)}")
        self.algorithm = algorithm
        self._aead: ChaCha20Poly1305 | AESGCM | None = None
        self._aes: algorithms.AES | None = None
        if algorithm.aead:
            cipher_key, self.salt = bytes(key[:-AEAD_SALT_LEN]), bytes(key[-AEAD_SALT_LEN:])
            if algorithm.transform_id == EncrId.CHACHA20_POLY1305:
                self._aead = ChaCha20Poly1305(cipher_key)
            else:
                self._aead = AESGCM(cipher_key)
        else:
            self.salt = b""
            self._aes = algorithms.AES(bytes(key))

    def _check_iv(self, iv: bytes) -> None:
        if len(iv) != self.algorithm.iv_len:
            raise CryptoError(
                f"{self.algorithm.name}: IV must be {self.algorithm.iv_len} octets, got {len(iv)}")

    def encrypt(self, iv: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
        self._check_iv(iv)
        if self._aead is not None:
            # RFC 4106 4 / RFC 5282 4 / RFC 7634 2: nonce = salt || IV; output = C || ICV.
            return self._aead.encrypt(self.salt + bytes(iv), bytes(plaintext), bytes(aad) or None)
        if len(plaintext) % AES_BLOCK:
            raise CryptoError(
                f"{self.algorithm.name}: plaintext length {len(plaintext)} is not a multiple "
                f"of {AES_BLOCK}")
        enc = Cipher(self._aes, modes.CBC(bytes(iv))).encryptor()  # type: ignore[arg-type]  # not AEAD: AES set
        return enc.update(bytes(plaintext)) + enc.finalize()

    def decrypt(self, iv: bytes, ciphertext: bytes, aad: bytes = b"") -> bytes:
        self._check_iv(iv)
        if self._aead is not None:
            if len(ciphertext) < self.algorithm.icv_len:
                raise CryptoError(
                    f"{self.algorithm.name}: ciphertext of {len(ciphertext)} octets is shorter "
                    f"than the {self.algorithm.icv_len}-octet ICV")
            try:
                return self._aead.decrypt(self.salt + bytes(iv), bytes(ciphertext),
                                          bytes(aad) or None)
            except InvalidTag:
                raise IntegrityError(f"{self.algorithm.name}: ICV check failed") from None
        if len(ciphertext) % AES_BLOCK:
            raise CryptoError(
                f"{self.algorithm.name}: ciphertext length {len(ciphertext)} is not a multiple "
                f"of {AES_BLOCK}")
        dec = Cipher(self._aes, modes.CBC(bytes(iv))).decryptor()  # type: ignore[arg-type]  # not AEAD: AES set
        return dec.update(bytes(ciphertext)) + dec.finalize()


@dataclass(frozen=True, eq=False)
class EncrAlgorithm:
    """An ENCR transform at one key size.

    ``key_len`` is the number of octets taken from prf+ / KEYMAT for one direction, including
    the 4-octet salt of the AEADs (RFC 5282 7.1, RFC 4106 8.1, RFC 7634 3).
    """

    transform_id: EncrId
    key_bits: int
    name: str
    keyword: str
    aead: bool
    key_len: int
    iv_len: int
    block_size: int
    icv_len: int
    #: True when the transform carries a Key Length attribute on the wire (AES); ChaCha20-
    #: Poly1305 must be sent without one (RFC 7634 3).
    key_length_attribute: bool = True
    _cache: OrderedDict[bytes, KeyedCipher] = field(default_factory=OrderedDict, repr=False,
                                                      compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def cipher_for_key(self, key: bytes) -> KeyedCipher:
        """A fresh reusable keyed cipher (an SA should keep it; nothing is cached)."""
        return KeyedCipher(self, key)

    # Alias with the name the ESP data plane was told about.
    aead_for_key = cipher_for_key

    def _keyed(self, key: bytes) -> KeyedCipher:
        key = bytes(key)
        with self._lock:
            kc = self._cache.get(key)
            if kc is not None:
                self._cache.move_to_end(key)
                return kc
        kc = KeyedCipher(self, key)
        with self._lock:
            self._cache[key] = kc
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return kc

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    def encrypt(self, key: bytes, iv: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
        """AEAD: ciphertext || ICV (nonce = salt || iv). CBC: plaintext must be block-aligned."""
        return self._keyed(key).encrypt(iv, plaintext, aad)

    def decrypt(self, key: bytes, iv: bytes, ciphertext: bytes, aad: bytes = b"") -> bytes:
        """Inverse of :meth:`encrypt`; IntegrityError on a bad AEAD tag, CryptoError on lengths."""
        return self._keyed(key).decrypt(iv, ciphertext, aad)

    def __repr__(self) -> str:
        return f"EncrAlgorithm({self.name})"


@dataclass(frozen=True)
class IntegAlgorithm:
    """An INTEG transform: HMAC truncated to ``icv_len`` octets (RFC 4868, RFC 2404)."""

    transform_id: IntegId
    name: str
    keyword: str
    key_len: int
    icv_len: int
    hash_name: str

    def compute(self, key: bytes, data: bytes) -> bytes:
        return hmac.digest(key, data, self.hash_name)[: self.icv_len]

    def verify(self, key: bytes, data: bytes, icv: bytes) -> bool:
        """Constant-time comparison of the truncated HMAC with ``icv``."""
        return hmac.compare_digest(self.compute(key, data), bytes(icv))


@dataclass(frozen=True)
class PrfAlgorithm:
    """A PRF transform (RFC 7296 3.3.2, RFC 4868 for the SHA-2 ones).

    ``key_len`` is the preferred key size, used for SK_d, SK_pi and SK_pr (RFC 7296 2.14);
    it equals the output size for the HMAC PRFs.  ``fixed_key`` is True for PRFs that only
    accept a key of exactly ``key_len`` octets (the AES-based ones, not implemented here);
    RFC 7296 2.14 then takes half of the SKEYSEED key from Ni and half from Nr.
    """

    transform_id: PrfId
    name: str
    keyword: str
    key_len: int
    output_len: int
    hash_name: str
    fixed_key: bool = False

    def __call__(self, key: bytes, data: bytes) -> bytes:
        return hmac.digest(key, data, self.hash_name)


# --- registries ---------------------------------------------------------------------------

def _aes_cbc(bits: int) -> EncrAlgorithm:
    return EncrAlgorithm(EncrId.AES_CBC, bits, f"AES_CBC_{bits}", f"aes{bits}", aead=False,
                         key_len=bits // 8, iv_len=16, block_size=16, icv_len=0)


def _aes_gcm16(bits: int) -> EncrAlgorithm:
    return EncrAlgorithm(EncrId.AES_GCM_16, bits, f"AES_GCM_16_{bits}", f"aes{bits}gcm16",
                         aead=True, key_len=bits // 8 + AEAD_SALT_LEN, iv_len=AEAD_IV_LEN,
                         block_size=4, icv_len=AEAD_ICV_LEN)


CHACHA20_POLY1305 = EncrAlgorithm(
    EncrId.CHACHA20_POLY1305, 256, "CHACHA20_POLY1305", "chacha20poly1305", aead=True,
    key_len=32 + AEAD_SALT_LEN, iv_len=AEAD_IV_LEN, block_size=4, icv_len=AEAD_ICV_LEN,
    key_length_attribute=False)

ENCR_ALGORITHMS: tuple[EncrAlgorithm, ...] = (
    _aes_cbc(128), _aes_cbc(192), _aes_cbc(256),
    _aes_gcm16(128), _aes_gcm16(192), _aes_gcm16(256),
    CHACHA20_POLY1305,
)

INTEG_ALGORITHMS: tuple[IntegAlgorithm, ...] = (
    IntegAlgorithm(IntegId.HMAC_SHA1_96, "HMAC_SHA1_96", "sha1", 20, 12, "sha1"),
    IntegAlgorithm(IntegId.HMAC_SHA2_256_128, "HMAC_SHA2_256_128", "sha256", 32, 16, "sha256"),
    IntegAlgorithm(IntegId.HMAC_SHA2_384_192, "HMAC_SHA2_384_192", "sha384", 48, 24, "sha384"),
    IntegAlgorithm(IntegId.HMAC_SHA2_512_256, "HMAC_SHA2_512_256", "sha512", 64, 32, "sha512"),
)

PRF_ALGORITHMS: tuple[PrfAlgorithm, ...] = (
    PrfAlgorithm(PrfId.HMAC_SHA1, "PRF_HMAC_SHA1", "prfsha1", 20, 20, "sha1"),
    PrfAlgorithm(PrfId.HMAC_SHA2_256, "PRF_HMAC_SHA2_256", "prfsha256", 32, 32, "sha256"),
    PrfAlgorithm(PrfId.HMAC_SHA2_384, "PRF_HMAC_SHA2_384", "prfsha384", 48, 48, "sha384"),
    PrfAlgorithm(PrfId.HMAC_SHA2_512, "PRF_HMAC_SHA2_512", "prfsha512", 64, 64, "sha512"),
)

_ENCR: dict[tuple[int, int], EncrAlgorithm] = {(a.transform_id, a.key_bits): a for a in ENCR_ALGORITHMS}
_INTEG: dict[int, IntegAlgorithm] = {a.transform_id: a for a in INTEG_ALGORITHMS}
_PRF: dict[int, PrfAlgorithm] = {a.transform_id: a for a in PRF_ALGORITHMS}

# Make sure hashlib knows every hash used (fails at import on an odd build, not mid-handshake).
for _hash_name in {a.hash_name for a in INTEG_ALGORITHMS} | {a.hash_name for a in PRF_ALGORITHMS}:
    hashlib.new(_hash_name)
del _hash_name


def encr_by_id(transform_id: int, key_bits: int | None) -> EncrAlgorithm | None:
    """The ENCR transform for an IANA id and Key Length attribute (bits), or None.

    ChaCha20-Poly1305 has no Key Length attribute (RFC 7634 3): ``key_bits`` must be None
    (256 is tolerated).  AES requires the attribute.
    """
    if transform_id == EncrId.CHACHA20_POLY1305:
        return CHACHA20_POLY1305 if key_bits in (None, 256) else None
    if key_bits is None:
        return None
    return _ENCR.get((transform_id, key_bits))


def integ_by_id(transform_id: int) -> IntegAlgorithm | None:
    return _INTEG.get(transform_id)


def prf_by_id(transform_id: int) -> PrfAlgorithm | None:
    return _PRF.get(transform_id)


def clear_cipher_cache() -> None:
    """Drop every cached keyed cipher (e.g. after deleting SAs)."""
    for a in ENCR_ALGORITHMS:
        a.clear_cache()
