"""prf+ and the IKEv2 key schedule (RFC 7296 2.13, 2.14, 2.17, 2.18).

Which octets go where:

* IKE SA (2.14)::

    SKEYSEED = prf(Ni | Nr, g^ir)
    {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr)

  SK_d, SK_pi and SK_pr are as long as the PRF's preferred key size; SK_a* as long as the
  integrity transform's key (absent with an AEAD); SK_e* as long as the encryption key,
  including the AEAD salt (RFC 5282 7.1, RFC 7634 3).

  The PRF key Ni | Nr is used whole with the HMAC PRFs.  RFC 7296 2.14: "If the negotiated
  PRF takes a fixed-length key and the lengths of Ni and Nr do not add up to that length,
  half the bits must come from Ni and half from Nr, taking the first bits of each" — that is
  what happens for a PRF whose ``fixed_key`` is True (AES-XCBC/CMAC, not implemented here).

* Rekeyed IKE SA (2.18)::

    SKEYSEED = prf_old(SK_d(old), g^ir(new) | Ni | Nr)

  with the *old* SA's PRF; the seven keys then come from the *new* SA's PRF as in 2.14, with
  the new SPIs.

* Child SA (2.17)::

    KEYMAT = prf+(SK_d, Ni | Nr)              or, with PFS,
    KEYMAT = prf+(SK_d, g^ir(new) | Ni | Nr)

  taken in the order encr_i, integ_i, encr_r, integ_r ("i" = initiator-to-responder).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from ikev2.errors import CryptoError

from .transforms import EncrAlgorithm, IntegAlgorithm, PrfAlgorithm

__all__ = [
    "prf_plus",
    "IkeKeys",
    "ChildKeys",
    "skeyseed_key",
    "derive_ike_keys",
    "derive_rekeyed_ike_keys",
    "derive_child_keys",
]

PRF_PLUS_MAX_BLOCKS = 255


def prf_plus(prf: PrfAlgorithm, key: bytes, seed: bytes, length: int) -> bytes:
    """prf+ (RFC 7296 2.13): T1 | T2 | ... with Tn = prf(K, Tn-1 | S | n), n = 1..255."""
    if length < 0:
        raise CryptoError(f"prf+: negative length {length}")
    blocks = -(-length // prf.output_len)
    if blocks > PRF_PLUS_MAX_BLOCKS:
        raise CryptoError(
            f"prf+: {length} octets need {blocks} blocks of {prf.output_len}, more than the "
            f"{PRF_PLUS_MAX_BLOCKS} the 1-octet counter allows")
    out = bytearray()
    t = b""
    seed = bytes(seed)
    for n in range(1, blocks + 1):
        t = prf(key, t + seed + bytes([n]))
        out += t
    return bytes(out[:length])


def _spi(spi: bytes | int) -> bytes:
    if isinstance(spi, int):
        return spi.to_bytes(8, "big")
    spi = bytes(spi)
    if len(spi) != 8:
        raise CryptoError(f"IKE SPI must be 8 octets, got {len(spi)}")
    return spi


def skeyseed_key(prf: PrfAlgorithm, ni: bytes, nr: bytes) -> bytes:
    """The PRF key for SKEYSEED: Ni | Nr, or half from each for a fixed-key PRF (2.14)."""
    if prf.fixed_key and len(ni) + len(nr) != prf.key_len:
        half = prf.key_len // 2
        return bytes(ni[:half]) + bytes(nr[: prf.key_len - half])
    return bytes(ni) + bytes(nr)


@dataclass(slots=True)
class IkeKeys:
    """The seven IKE SA keys of RFC 7296 2.14."""

    sk_d: bytes
    sk_ai: bytes
    sk_ar: bytes
    sk_ei: bytes
    sk_er: bytes
    sk_pi: bytes
    sk_pr: bytes

    def wipe(self) -> None:
        """Drop every key reference (Python cannot overwrite immutable bytes in place)."""
        for f in fields(self):
            setattr(self, f.name, b"")

    def __repr__(self) -> str:  # never print key material
        return "IkeKeys(" + ", ".join(f"{f.name}=<{len(getattr(self, f.name))} octets>"
                                      for f in fields(self)) + ")"


@dataclass(slots=True)
class ChildKeys:
    """KEYMAT of one Child SA pair; ``*_i`` protect initiator-to-responder traffic."""

    encr_i: bytes
    integ_i: bytes
    encr_r: bytes
    integ_r: bytes

    def wipe(self) -> None:
        for f in fields(self):
            setattr(self, f.name, b"")

    def __repr__(self) -> str:
        return "ChildKeys(" + ", ".join(f"{f.name}=<{len(getattr(self, f.name))} octets>"
                                        for f in fields(self)) + ")"


def _split_ike(prf: PrfAlgorithm, encr: EncrAlgorithm, integ: IntegAlgorithm | None,
               skeyseed: bytes, seed: bytes) -> IkeKeys:
    if encr.aead and integ is not None:
        raise CryptoError(f"{encr.name} is an AEAD and takes no integrity transform")
    if not encr.aead and integ is None:
        raise CryptoError(f"{encr.name} needs an integrity transform")
    a = integ.key_len if integ is not None else 0
    sizes = (prf.key_len, a, a, encr.key_len, encr.key_len, prf.key_len, prf.key_len)
    keymat = prf_plus(prf, skeyseed, seed, sum(sizes))
    parts = []
    pos = 0
    for size in sizes:
        parts.append(keymat[pos:pos + size])
        pos += size
    return IkeKeys(*parts)


def derive_ike_keys(prf: PrfAlgorithm, encr: EncrAlgorithm, integ: IntegAlgorithm | None,
                    shared_secret: bytes, ni: bytes, nr: bytes,
                    spi_i: bytes | int, spi_r: bytes | int) -> tuple[bytes, IkeKeys]:
    """(SKEYSEED, keys) for a new IKE SA (RFC 7296 2.14).  SPIs: 8 octets or int."""
    skeyseed = prf(skeyseed_key(prf, ni, nr), bytes(shared_secret))
    seed = bytes(ni) + bytes(nr) + _spi(spi_i) + _spi(spi_r)
    return skeyseed, _split_ike(prf, encr, integ, skeyseed, seed)


def derive_rekeyed_ike_keys(old_prf: PrfAlgorithm, old_sk_d: bytes, new_prf: PrfAlgorithm,
                            encr: EncrAlgorithm, integ: IntegAlgorithm | None,
                            shared_secret: bytes, ni: bytes, nr: bytes,
                            spi_i: bytes | int, spi_r: bytes | int,
                            additional: bytes = b"") -> tuple[bytes, IkeKeys]:
    """(SKEYSEED, keys) of an IKE SA rekeyed with CREATE_CHILD_SA (RFC 7296 2.18).

    ``ni``/``nr``/``spi_i``/``spi_r`` are those of the rekeying exchange and the new SA.
    ``additional``: SK(1) | ... | SK(n) of RFC 9370 IKE_FOLLOWUP_KE exchanges, which go
    after the nonces: SKEYSEED = prf(SK_d, SK(0) | Ni | Nr | SK(1) | ... | SK(n)).
    """
    skeyseed = old_prf(old_sk_d, bytes(shared_secret) + bytes(ni) + bytes(nr) + bytes(additional))
    seed = bytes(ni) + bytes(nr) + _spi(spi_i) + _spi(spi_r)
    return skeyseed, _split_ike(new_prf, encr, integ, skeyseed, seed)


def derive_child_keys(prf: PrfAlgorithm, sk_d: bytes, encr: EncrAlgorithm,
                      integ: IntegAlgorithm | None, ni: bytes, nr: bytes,
                      shared_secret: bytes | None = None, additional: bytes = b"") -> ChildKeys:
    """Child SA KEYMAT (RFC 7296 2.17): encr_i, integ_i, encr_r, integ_r.

    ``additional``: SK(1) | ... | SK(n) of RFC 9370 IKE_FOLLOWUP_KE exchanges:
    KEYMAT = prf+(SK_d, SK(0) | Ni | Nr | SK(1) | ... | SK(n))."""
    if encr.aead and integ is not None:
        raise CryptoError(f"{encr.name} is an AEAD and takes no integrity transform")
    if not encr.aead and integ is None:
        raise CryptoError(f"{encr.name} needs an integrity transform")
    e = encr.key_len
    a = integ.key_len if integ is not None else 0
    seed = (bytes(shared_secret) if shared_secret else b"") + bytes(ni) + bytes(nr) + bytes(additional)
    keymat = prf_plus(prf, sk_d, seed, 2 * (e + a))
    return ChildKeys(encr_i=keymat[:e], integ_i=keymat[e:e + a],
                     encr_r=keymat[e + a:2 * e + a], integ_r=keymat[2 * e + a:])
