"""Post-quantum preshared keys (RFC 8784): the key derivation change and the PPK_IDENTITY data.

With a PPK both sides replace, once IKE_AUTH authenticates with it::

    SK_d'  = prf+(PPK, SK_d)      SK_pi' = prf+(PPK, SK_pi)      SK_pr' = prf+(PPK, SK_pr)

each as long as the key it replaces (RFC 8784 3).  SK_pi'/SK_pr' go into the AUTH
computation, SK_d' into every Child SA and the next IKE rekey.

PPK_IDENTITY notification data: one octet PPK_ID type, then the PPK_ID.  Type 2
(PPK_ID_FIXED) is what we send and strongSwan sends and accepts; type 1 (PPK_ID_OPAQUE) is
accepted on input too.
"""
from __future__ import annotations

from ikev2.errors import ParseError

from .keys import prf_plus
from .transforms import PrfAlgorithm

__all__ = ["ppk_key", "ppk_identity_data", "parse_ppk_identity", "PPK_ID_OPAQUE", "PPK_ID_FIXED"]

PPK_ID_OPAQUE = 1
PPK_ID_FIXED = 2


def ppk_key(prf: PrfAlgorithm, ppk: bytes, key: bytes) -> bytes:
    """prf+(PPK, key), as long as ``key``."""
    return prf_plus(prf, bytes(ppk), bytes(key), len(key))


def ppk_identity_data(ppk_id: bytes) -> bytes:
    return bytes([PPK_ID_FIXED]) + bytes(ppk_id)


def parse_ppk_identity(data: bytes) -> bytes:
    """The PPK_ID of a PPK_IDENTITY notification (ParseError if malformed)."""
    data = bytes(data)
    if len(data) < 2:
        raise ParseError(f"PPK_IDENTITY of {len(data)} octets: needs a type and a PPK_ID", 0,
                         "PPK_IDENTITY")
    if data[0] not in (PPK_ID_OPAQUE, PPK_ID_FIXED):
        raise ParseError(f"unknown PPK_ID type {data[0]}", 0, "PPK_IDENTITY")
    return data[1:]
