"""EAP for IKEv2 (RFC 7296 2.16): authenticator and peer state machines, sans-IO.

Methods: EAP-MSCHAPv2 (RFC 2759, RFC 3079 keys, draft-kamath-pppext-eap-mschapv2), EAP-MD5
(RFC 3748 5.4, no MSK) and EAP-TLS (RFC 5216, RFC 9190; needs pyOpenSSL).  See docs/eap.md.

    from ikev2.eap import EapServer, EapClient, UserDB, TlsConfig, nt_hash
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import EapClient
    from .packet import METHODS, EapError, EapPacket, EapStep
    from .server import EapServer
    from .tls import TlsConfig, tls_available
    from .users import User, UserDB, UserFileError, nt_hash

__all__ = [
    "EapServer", "EapClient", "EapStep", "EapError", "EapPacket", "METHODS",
    "TlsConfig", "tls_available", "User", "UserDB", "UserFileError", "nt_hash",
]

# Every name loads its module on first use: a gateway without EAP (PSK, certificates) never
# imports the methods (MSCHAPv2, DES, MD4: ~10 ms of every start-up), nor EAP-TLS (pyOpenSSL,
# cryptography.x509: ~30 ms); the engine itself needs only .packet and .async_server.
_HOME = {"EapClient": "client", "EapServer": "server", "METHODS": "packet", "EapError": "packet",
         "EapPacket": "packet", "EapStep": "packet", "TlsConfig": "tls", "tls_available": "tls",
         "User": "users", "UserDB": "users", "UserFileError": "users", "nt_hash": "users"}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
