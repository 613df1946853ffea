"""EAP for IKEv2 (RFC 7296 2.16): authenticator and peer state machines, sans-IO.

Methods: EAP-MSCHAPv2 (RFC 2759, RFC 3079 keys, draft-kamath-pppext-eap-mschapv2), EAP-MD5
(RFC 3748 5.4, no MSK) and EAP-TLS (RFC 5216, RFC 9190; needs pyOpenSSL).  See docs/eap.md.

    from ikev2.eap import EapServer, EapClient, UserDB, TlsConfig, nt_hash
"""
from __future__ import annotations

from .client import EapClient
from .packet import METHODS, EapError, EapPacket, EapStep
from .server import EapServer
from .tls import TlsConfig, tls_available
from .users import User, UserDB, UserFileError, nt_hash

__all__ = [
    "EapServer", "EapClient", "EapStep", "EapError", "EapPacket", "METHODS",
    "TlsConfig", "tls_available", "User", "UserDB", "UserFileError", "nt_hash",
]
