"""Crypto suite of the IKEv2 engine and the ESP data plane.

* :mod:`.transforms` - ENCR / INTEG / PRF transform objects (AES-CBC, AES-GCM-16,
  ChaCha20-Poly1305; HMAC-SHA1/SHA2).
* :mod:`.dh` - key exchange methods (MODP 2048-4096, ECP 256-521, Curve25519, Curve448) with
  RFC 6989 checks.
* :mod:`.keys` - prf+ and the IKE / Child SA key schedule (RFC 7296 2.13-2.18).
* :mod:`.auth` - AUTH payload data: PSK, EAP MSK, RFC 7427 signatures.
* :mod:`.proposals` - strongSwan-style proposal strings, selection, suites.

See docs/crypto.md.
"""
from .auth import (
    eap_msk_auth_data,
    psk_auth_data,
    sign,
    signed_octets,
    supported_hash_algorithms,
    verify,
)
from .dh import KE_METHODS, KeyExchangeMethod, KeyExchangePrivate, ke_by_id
from .keys import (
    ChildKeys,
    IkeKeys,
    derive_child_keys,
    derive_ike_keys,
    derive_rekeyed_ike_keys,
    prf_plus,
)
from .proposals import (
    ChildSuite,
    IkeSuite,
    child_suite,
    choose_proposal,
    format_proposal,
    ike_suite,
    parse_proposal,
    parse_proposals,
    proposal_display,
    proposal_keywords,
)
from .transforms import (
    ENCR_ALGORITHMS,
    INTEG_ALGORITHMS,
    PRF_ALGORITHMS,
    EncrAlgorithm,
    IntegAlgorithm,
    KeyedCipher,
    PrfAlgorithm,
    encr_by_id,
    integ_by_id,
    prf_by_id,
)

__all__ = [
    "EncrAlgorithm", "IntegAlgorithm", "PrfAlgorithm", "KeyedCipher",
    "ENCR_ALGORITHMS", "INTEG_ALGORITHMS", "PRF_ALGORITHMS",
    "encr_by_id", "integ_by_id", "prf_by_id",
    "KeyExchangeMethod", "KeyExchangePrivate", "KE_METHODS", "ke_by_id",
    "prf_plus", "IkeKeys", "ChildKeys",
    "derive_ike_keys", "derive_rekeyed_ike_keys", "derive_child_keys",
    "signed_octets", "psk_auth_data", "eap_msk_auth_data", "sign", "verify",
    "supported_hash_algorithms",
    "parse_proposal", "parse_proposals", "format_proposal", "proposal_keywords",
    "proposal_display", "choose_proposal", "IkeSuite", "ChildSuite", "ike_suite", "child_suite",
]
