"""ESP payload protection: the cipher/ICV half of an SA, built once per SA.

Supported (IKEv2 transform IDs, IANA "Transform Type 1/3"):

* ``ENCR_AES_GCM_16`` (20), 128/192/256-bit keys: RFC 4106. Key material is key | 4-byte salt;
  nonce = salt | 8-byte explicit IV; AAD = SPI | seq (or SPI | seq high | seq low with ESN,
  RFC 4106 section 5); 16-byte ICV.
* ``ENCR_CHACHA20_POLY1305`` (28): RFC 7634, same layout as GCM (32-byte key | 4-byte salt).
* ``ENCR_AES_CBC`` (12), 128/192/256: RFC 3602, random 16-byte IV, together with one of
  ``AUTH_HMAC_SHA1_96`` (2, RFC 2404), ``AUTH_HMAC_SHA2_256_128`` (12),
  ``AUTH_HMAC_SHA2_384_192`` (13), ``AUTH_HMAC_SHA2_512_256`` (14) (RFC 4868). The ICV covers
  SPI | seq | IV | ciphertext, followed by the high-order 32 ESN bits when ESN is on (those bits
  are authenticated but not transmitted, RFC 4303 section 2.2.1).

AEAD IVs are never random: the explicit IV is the 64-bit ESP sequence number (as the Linux
"seqiv" generator and strongSwan do). A sequence number is used once per SA and the SA's key is
used by one SA only, so the nonce never repeats. CBC IVs must be unpredictable (RFC 3602
section 3), so they come from the injected ``random_bytes`` callable (default ``os.urandom``).

Encryption without integrity protection (CBC with no HMAC) is refused by design.
"""
from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from hmac import compare_digest

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from . import compiled
from .errors import DropReason, EspError


class EncrTransform(IntEnum):
    """ESP encryption transforms this module implements (IKEv2 Transform Type 1 IDs)."""

    AES_CBC = 12
    AES_GCM_16 = 20
    CHACHA20_POLY1305 = 28


class IntegTransform(IntEnum):
    """ESP integrity transforms this module implements (IKEv2 Transform Type 3 IDs)."""

    NONE = 0
    HMAC_SHA1_96 = 2
    HMAC_SHA2_256_128 = 12
    HMAC_SHA2_384_192 = 13
    HMAC_SHA2_512_256 = 14


# integ id -> (hash factory, key length, ICV length)
_INTEG: dict[int, tuple[Callable[[], hashes.HashAlgorithm], int, int]] = {
    IntegTransform.HMAC_SHA1_96: (hashes.SHA1, 20, 12),
    IntegTransform.HMAC_SHA2_256_128: (hashes.SHA256, 32, 16),
    IntegTransform.HMAC_SHA2_384_192: (hashes.SHA384, 48, 24),
    IntegTransform.HMAC_SHA2_512_256: (hashes.SHA512, 64, 32),
}

SALT_LEN = 4
_HDR_IV = struct.Struct("!IIQ")  # SPI | low 32 bits of seq | explicit IV (the 64-bit seq)
_AAD_ESN = struct.Struct("!III")  # SPI | high | low 32 bits of seq (RFC 4106 5)
_MASK32 = 0xFFFFFFFF
# AEAD trailers (padding to 4 bytes, RFC 4303 2.4 default padding 1, 2, 3) per (pad, next header)
_AEAD_TRAILERS = {(pad, nh): bytes(range(1, pad + 1)) + bytes((pad, nh)) for pad in range(4) for nh in range(256)}
AEAD_IV_LEN = 8
AEAD_ICV_LEN = 16
CBC_IV_LEN = 16
AES_BLOCK = 16


@dataclass(frozen=True, slots=True)
class EspOverhead:
    """Per-packet expansion parameters of a cipher (see docs/esp.md for the MTU formula).

    ``align`` is the length that IV-less ciphertext (payload + padding + 2-byte trailer) is
    padded to: the cipher block size, at least 4 (RFC 4303 section 2.4).
    """

    iv_len: int
    icv_len: int
    align: int


class EspCipher:
    """Encrypts/authenticates ESP payloads for one SA. Not thread-safe; one per SA direction."""

    def __init__(
        self,
        encr_id: int,
        key_bits: int | None,
        integ_id: int | None,
        encr_key: bytes,
        integ_key: bytes = b"",
        *,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        try:
            encr = EncrTransform(encr_id)
        except ValueError:
            raise ValueError(f"unsupported ESP encryption transform {encr_id}") from None
        if (integ_id or 0) not in _INTEG and integ_id:
            raise ValueError(f"unsupported ESP integrity transform {integ_id}")
        integ = IntegTransform(integ_id or 0)
        encr_key = bytes(encr_key)
        self._random_bytes = random_bytes
        self._aead: AESGCM | ChaCha20Poly1305 | None = None
        self._aes: algorithms.AES | None = None
        self._hmac: crypto_hmac.HMAC | None = None
        self._salt = b""
        # the compiled packet path (esp/compiled.py) for AEAD SAs, when built
        self.fast: compiled.AeadType | None = None
        self.encr_id = encr
        self.integ_id = integ
        self.wiped = False

        if encr in (EncrTransform.AES_GCM_16, EncrTransform.CHACHA20_POLY1305):
            if integ is not IntegTransform.NONE:
                raise ValueError("AEAD transforms take no integrity transform (RFC 7296 3.3)")
            if encr is EncrTransform.AES_GCM_16:
                if key_bits not in (128, 192, 256):
                    raise ValueError(f"AES-GCM key size {key_bits} not 128/192/256")
            elif key_bits not in (None, 0, 256):
                raise ValueError("ChaCha20-Poly1305 takes a 256-bit key")
            else:
                key_bits = 256
            assert key_bits is not None
            if len(encr_key) != key_bits // 8 + SALT_LEN:
                raise ValueError(f"AEAD key material must be {key_bits // 8} + 4 (salt) bytes")
            key, self._salt = encr_key[:-SALT_LEN], encr_key[-SALT_LEN:]
            self._aead = AESGCM(key) if encr is EncrTransform.AES_GCM_16 else ChaCha20Poly1305(key)
            if compiled.Aead is not None:
                self.fast = compiled.Aead(int(encr), encr_key)
            self.is_aead = True
            self.iv_len, self.icv_len, self.align = AEAD_IV_LEN, AEAD_ICV_LEN, 4
            self.name = (
                f"aes-gcm-16-{key_bits}" if encr is EncrTransform.AES_GCM_16 else "chacha20-poly1305"
            )
        else:  # AES-CBC + HMAC
            if key_bits not in (128, 192, 256):
                raise ValueError(f"AES-CBC key size {key_bits} not 128/192/256")
            if len(encr_key) != key_bits // 8:
                raise ValueError(f"AES-CBC key must be {key_bits // 8} bytes")
            if integ is IntegTransform.NONE:
                raise ValueError("AES-CBC without an integrity transform is refused")
            hash_factory, integ_key_len, icv_len = _INTEG[integ]
            if len(integ_key) != integ_key_len:
                raise ValueError(f"{integ.name} key must be {integ_key_len} bytes")
            self._aes = algorithms.AES(encr_key)
            self._hmac = crypto_hmac.HMAC(bytes(integ_key), hash_factory())
            self.is_aead = False
            self.iv_len, self.icv_len, self.align = CBC_IV_LEN, icv_len, AES_BLOCK
            self.name = f"aes-cbc-{key_bits}/{integ.name.lower().replace('_', '-')}"

    # -- parameters ---------------------------------------------------------------------------
    @property
    def overhead(self) -> EspOverhead:
        return EspOverhead(self.iv_len, self.icv_len, self.align)

    def iv_for(self, seq: int) -> bytes:
        """The explicit IV for the packet with (64-bit) sequence number ``seq``."""
        if self.is_aead:
            return seq.to_bytes(AEAD_IV_LEN, "big")
        iv = self._random_bytes(CBC_IV_LEN)
        if len(iv) != CBC_IV_LEN:
            raise ValueError("random_bytes returned the wrong length")
        return iv

    # -- the packet path ----------------------------------------------------------------------
    def seal(self, header: bytes, iv: bytes, plaintext: bytes, seq_hi: bytes = b"") -> bytes:
        """Protect ``plaintext`` (payload | padding | pad length | next header).

        ``header`` is the 8-byte ESP header (SPI | low 32 bits of seq); ``seq_hi`` the 4 high
        ESN bytes, or empty without ESN. Returns IV | ciphertext | ICV.
        """
        if self.wiped:
            raise EspError(DropReason.SA_DEAD, "cipher wiped")
        if len(iv) != self.iv_len:
            raise ValueError("wrong IV length")
        if len(plaintext) % self.align:
            raise ValueError("plaintext not aligned to the cipher's block/4 bytes")
        if self._aead is not None:
            aad = header[:4] + seq_hi + header[4:8]
            return iv + self._aead.encrypt(self._salt + iv, plaintext, aad)
        assert self._aes is not None and self._hmac is not None
        enc = Cipher(self._aes, modes.CBC(iv)).encryptor()
        body = iv + enc.update(plaintext) + enc.finalize()
        return body + self.icv(header, body, seq_hi)

    def open(self, header: bytes, body: bytes, seq_hi: bytes = b"") -> bytes:
        """Verify and decrypt ``body`` (IV | ciphertext | ICV); returns the plaintext.

        Raises ``EspError(MALFORMED)`` for impossible lengths and ``EspError(AUTH_FAILED)`` when
        the ICV does not verify (compared in constant time; nothing is decrypted before the
        HMAC check in the CBC case).
        """
        if self.wiped:
            raise EspError(DropReason.SA_DEAD, "cipher wiped")
        ct_len = len(body) - self.iv_len - self.icv_len
        if ct_len < self.align or ct_len % self.align:
            raise EspError(DropReason.MALFORMED, f"ciphertext length {ct_len} impossible")
        iv = body[: self.iv_len]
        if self._aead is not None:
            aad = header[:4] + seq_hi + header[4:8]
            try:
                return self._aead.decrypt(self._salt + iv, body[self.iv_len :], aad)
            except InvalidTag:
                raise EspError(DropReason.AUTH_FAILED, "AEAD tag") from None
        assert self._aes is not None and self._hmac is not None
        split = len(body) - self.icv_len
        if not compare_digest(self.icv(header, body[:split], seq_hi), body[split:]):
            raise EspError(DropReason.AUTH_FAILED, "HMAC")
        dec = Cipher(self._aes, modes.CBC(iv)).decryptor()
        return dec.update(body[self.iv_len : split]) + dec.finalize()

    # -- AEAD fast path (the data plane): whole packets, no intermediate objects ---------------
    def seal_packet(self, spi: int, seq: int, payload: bytes, next_header: int, esn: bool) -> bytes:
        """AEAD only: the whole ESP packet for ``payload`` with full sequence number ``seq``
        (explicit IV = seq, minimal padding). Same bytes as ``esp_seal`` with ``iv_for(seq)``."""
        aead = self._aead
        if aead is None:
            raise EspError(DropReason.SA_DEAD, "cipher wiped") if self.wiped else ValueError("not an AEAD cipher")
        if self.fast is not None:
            return self.fast.seal(spi, seq, payload, next_header, esn)
        hdr = _HDR_IV.pack(spi, seq & _MASK32, seq)
        aad = _AAD_ESN.pack(spi, seq >> 32, seq & _MASK32) if esn else hdr[:8]
        trailer = _AEAD_TRAILERS[(-(len(payload) + 2) & 3, next_header)]
        return hdr + aead.encrypt(self._salt + hdr[8:], payload + trailer, aad)

    def open_packet(self, packet: bytes, seq: int, esn: bool) -> bytes:
        """AEAD only: verify and decrypt a whole ESP packet (length already checked against
        the minimum) assuming full sequence number ``seq``; returns the plaintext."""
        aead = self._aead
        if aead is None:
            raise EspError(DropReason.SA_DEAD, "cipher wiped") if self.wiped else ValueError("not an AEAD cipher")
        ct_len = len(packet) - 32  # header 8, IV 8, ICV 16
        if ct_len < 4 or ct_len & 3:
            raise EspError(DropReason.MALFORMED, f"ciphertext length {ct_len} impossible")
        aad = _AAD_ESN.pack(int.from_bytes(packet[:4], "big"), seq >> 32, seq & _MASK32) if esn \
            else bytes(packet[:8])
        try:
            return aead.decrypt(self._salt + bytes(packet[8:16]), packet[16:], aad)
        except InvalidTag:
            raise EspError(DropReason.AUTH_FAILED, "AEAD tag") from None

    def icv(self, *parts: bytes) -> bytes:
        """Truncated HMAC over the concatenation of ``parts`` (non-AEAD ciphers only)."""
        if self._hmac is None:
            raise EspError(DropReason.SA_DEAD, "no integrity key") if self.wiped else ValueError(
                "AEAD ciphers have no separate ICV"
            )
        mac = self._hmac.copy()
        for part in parts:
            mac.update(part)
        return mac.finalize()[: self.icv_len]

    def wipe(self) -> None:
        """Drop every reference to key material; the cipher refuses further use.

        Python cannot overwrite the immutable key ``bytes`` the caller passed in, nor the copies
        inside the ``cryptography`` objects: this releases them so they can be freed. The
        compiled path's copy (``fast``) is freed and cleansed at once.
        """
        self._aead = None
        if self.fast is not None:
            self.fast.wipe()  # frees OpenSSL's contexts (cleansed) and overwrites the salt
            self.fast = None
        self._aes = None
        self._hmac = None
        self._salt = b""
        self.wiped = True

    def __repr__(self) -> str:
        return f"EspCipher({self.name}{', wiped' if self.wiped else ''})"
