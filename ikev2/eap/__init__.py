"""EAP for IKEv2 (RFC 7296 2.16): authenticator and peer state machines, sans-IO.

Methods: EAP-MSCHAPv2 (RFC 2759, RFC 3079 keys, draft-kamath-pppext-eap-mschapv2), EAP-MD5
(RFC 3748 5.4, no MSK) and EAP-TLS (RFC 5216, RFC 9190; needs pyOpenSSL).  See docs/eap.md.

    from ikev2.eap import EapServer, EapClient, UserDB, TlsConfig, nt_hash
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .client import EapClient
from .packet import METHODS, EapError, EapPacket, EapStep
from .server import EapServer
from .users import User, UserDB, UserFileError, nt_hash

if TYPE_CHECKING:
    from .tls import TlsConfig, tls_available

__all__ = [
    "EapServer", "EapClient", "EapStep", "EapError", "EapPacket", "METHODS",
    "TlsConfig", "tls_available", "User", "UserDB", "UserFileError", "nt_hash",
]


def __getattr__(name: str) -> Any:
    """EAP-TLS (pyOpenSSL, cryptography.x509: ~30 ms of every start-up) loads on first use."""
    if name in ("TlsConfig", "tls_available"):
        from . import tls
        return getattr(tls, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
