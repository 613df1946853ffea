"""Multiple key exchanges (RFC 9370) and IKE_INTERMEDIATE authentication (RFC 9242): the pure parts.

* ``is_ke_transform``: transform types that carry a key exchange (4 and ADDKE1..7 = 6..12).
* ``updated_ike_keys``: the IKE SA keys after one additional key exchange (RFC 9370 2.2.2)::

      SKEYSEED(n) = prf(SK_d(n-1), SK(n) | Ni | Nr)
      {SK_d(n) | SK_ai(n) | SK_ar(n) | SK_ei(n) | SK_er(n) | SK_pi(n) | SK_pr(n)}
                  = prf+(SKEYSEED(n), Ni | Nr | SPIi | SPIr)

  (the IKE SA's own PRF, nonces and SPIs of IKE_SA_INIT).
* ``int_auth_ap`` / ``IntAuthChain``: RFC 9242 3.3.2::

      IntAuth_i1 = prf(SK_pi1,              IntAuth_i1_A | IntAuth_i1_P)
      IntAuth_iN = prf(SK_piN, IntAuth_iN-1 | IntAuth_iN_A | IntAuth_iN_P)   (same for _r)

  IntAuth_A is the message from the first octet of the IKE header to the last octet of the
  Encrypted payload header, IntAuth_P the inner payloads in clear (no IV, padding, pad
  length or ICV).  The Length fields in IntAuth_A count the inner payloads only (as if the
  Encrypted payload held nothing else), and for a message that travelled in fragments the
  header is that of one SK message (next payload SK, first inner payload type): both as
  strongSwan 6 computes them, so the result does not depend on the sender's padding or
  fragmentation.  SK_piN/SK_prN are the keys that protected exchange N (before the key
  update that exchange causes).

  AUTH then covers ``... | MACedID | IntAuth_iN | IntAuth_rN | IKE_AUTH_MID`` where the last
  is the 4-octet Message ID of the first IKE_AUTH request.  Nothing is appended when no
  IKE_INTERMEDIATE exchange took place.
"""
from __future__ import annotations

import struct

from .constants import GENERIC_PAYLOAD_HEADER_LEN, IKE_HEADER_LEN, PayloadType, TransformType
from .crypto.keys import IkeKeys, derive_rekeyed_ike_keys
from .crypto.proposals import IkeSuite
from .crypto.transforms import PrfAlgorithm
from .message import encode_header

__all__ = ["is_ke_transform", "updated_ike_keys", "int_auth_ap", "IntAuthChain", "KE_TRANSFORM_TYPES"]

KE_TRANSFORM_TYPES = frozenset([int(TransformType.DH)] + list(range(int(TransformType.ADDKE1),
                                                                       int(TransformType.ADDKE7) + 1)))


def is_ke_transform(ttype: int) -> bool:
    """Transform type 4 (KE) or 6..12 (Additional Key Exchange 1..7)."""
    return ttype in KE_TRANSFORM_TYPES


def updated_ike_keys(suite: IkeSuite, keys: IkeKeys, shared: bytes, ni: bytes, nr: bytes,
                     spi_i: bytes, spi_r: bytes) -> IkeKeys:
    """The keys after one additional key exchange with shared secret ``shared``."""
    _skeyseed, new = derive_rekeyed_ike_keys(suite.prf, keys.sk_d, suite.prf, suite.encr,
                                             suite.integ, shared, ni, nr, spi_i, spi_r)
    return new


def int_auth_ap(*, inner: bytes, first: int, spi_i: bytes, spi_r: bytes, exchange: int,
                flags: int, message_id: int) -> bytes:
    """IntAuth_A | IntAuth_P of one IKE_INTERMEDIATE message (sent or received, whole or in
    fragments): the IKE header and SK payload header with lengths that count the inner
    payloads only, then the inner payloads."""
    length = IKE_HEADER_LEN + GENERIC_PAYLOAD_HEADER_LEN + len(inner)
    head = encode_header(spi_i, spi_r, PayloadType.SK, exchange, flags, message_id, length) + \
        struct.pack("!BBH", first, 0, GENERIC_PAYLOAD_HEADER_LEN + len(inner))
    return head + bytes(inner)


class IntAuthChain:
    """IntAuth_iN and IntAuth_rN, updated after every IKE_INTERMEDIATE exchange."""

    __slots__ = ("i", "r", "exchanges")

    def __init__(self) -> None:
        self.i = b""
        self.r = b""
        self.exchanges = 0

    def add(self, prf: PrfAlgorithm, sk_pi: bytes, sk_pr: bytes, ap_i: bytes, ap_r: bytes) -> None:
        """One exchange: ``ap_i``/``ap_r`` = IntAuth_A|P of its request / response."""
        self.i = prf(sk_pi, self.i + ap_i)
        self.r = prf(sk_pr, self.r + ap_r)
        self.exchanges += 1

    def auth_suffix(self, ike_auth_mid: int) -> bytes:
        """What RFC 9242 appends to the AUTH octets (empty without IKE_INTERMEDIATE)."""
        if not self.exchanges:
            return b""
        return self.i + self.r + struct.pack("!I", ike_auth_mid)

    def __repr__(self) -> str:
        return f"IntAuthChain(exchanges={self.exchanges})"
