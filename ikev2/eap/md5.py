"""EAP-MD5-Challenge (RFC 3748 5.4), the CHAP algorithm of RFC 1994 carried in EAP.

Request Type-Data: Value-Size (1) | Value (the challenge) | Name.  Response Type-Data:
Value-Size = 16 | MD5(Identifier | secret | challenge) | Name, where Identifier is the EAP
Identifier of the Request/Response (RFC 1994 4.1).  One round, no mutual authentication and
no key: EAP-MD5 yields no MSK, so IKEv2 keys the AUTH payloads with SK_pi/SK_pr
(RFC 7296 2.16) and RFC 5998/RFC 7296 forbid it with EAP-only authentication.  The server
needs the cleartext password.
"""
from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from .packet import EapError, MethodResult, PeerResult

__all__ = ["md5_challenge_response", "Md5ServerMethod", "Md5PeerMethod", "CHALLENGE_LEN"]

CHALLENGE_LEN = 16


def md5_challenge_response(identifier: int, secret: bytes, challenge: bytes) -> bytes:
    """RFC 1994 4.1: MD5(Identifier | secret | Challenge)."""
    return hashlib.md5(bytes([identifier & 0xFF]) + secret + challenge).digest()


def _parse_value(type_data: bytes, what: str) -> tuple[bytes, bytes]:
    if not type_data:
        raise EapError(f"EAP-MD5 {what} without Value-Size")
    size = type_data[0]
    if size == 0 or len(type_data) < 1 + size:
        raise EapError(f"EAP-MD5 {what}: Value-Size {size} does not fit {len(type_data) - 1} octets")
    return type_data[1:1 + size], type_data[1 + size:]


class Md5ServerMethod:
    name = "md5"
    eap_type = 4

    def __init__(self, random_bytes: Callable[[int], bytes], identity: str, password: str | None,
                 server_name: bytes = b"vpn-gw"):
        self.random_bytes = random_bytes
        self.identity = identity
        self.password = password
        self.server_name = server_name
        self.challenge = b""

    def start(self, identifier: int) -> bytes:
        self.challenge = self.random_bytes(CHALLENGE_LEN)
        if len(self.challenge) != CHALLENGE_LEN:
            raise EapError("random_bytes returned the wrong number of octets")
        return bytes([CHALLENGE_LEN]) + self.challenge + self.server_name

    def process(self, identifier: int, type_data: bytes) -> MethodResult:
        value, _name = _parse_value(type_data, "Response")
        if len(value) != 16:
            raise EapError(f"EAP-MD5 Response value of {len(value)} octets, expected 16")
        if self.password is None:
            return MethodResult(done=True, reason=f"unknown user {self.identity!r}")
        expected = md5_challenge_response(identifier, self.password.encode("utf-8"), self.challenge)
        if hmac.compare_digest(expected, value):
            return MethodResult(done=True, success=True, reason="EAP-MD5 succeeded")
        return MethodResult(done=True, reason=f"wrong password for {self.identity!r} (EAP-MD5)")


class Md5PeerMethod:
    name = "md5"
    eap_type = 4

    def __init__(self, identity: str, password: str):
        self.identity = identity
        self.password = password
        self.may_succeed = False
        self.msk = None

    def process(self, identifier: int, type_data: bytes) -> PeerResult:
        challenge, _name = _parse_value(type_data, "Request")
        value = md5_challenge_response(identifier, self.password.encode("utf-8"), challenge)
        self.may_succeed = True  # one-way method: the server's verdict is final
        return PeerResult(response=bytes([16]) + value + self.identity.encode("utf-8"))
