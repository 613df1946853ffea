"""EAP packets (RFC 3748 section 4), the typed error and the step result shared by the
authenticator (:mod:`.server`) and the peer (:mod:`.client`)."""
from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from ikev2.constants import EapCode, EapType
from ikev2.errors import IKEv2Error

__all__ = ["EapError", "EapStep", "EapPacket", "MethodResult", "PeerResult", "METHODS", "METHOD_TYPES",
           "method_name", "parse_methods"]


class EapError(IKEv2Error):
    """Malformed or unexpected EAP input, or an EAP configuration error.  ``reason`` is
    human-readable; the state machine that raised it is unchanged (the message is dropped)."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


# Method names used in configuration, in our order of preference when the peer may choose.
METHOD_TYPES: dict[str, int] = {
    "tls": EapType.TLS,
    "mschapv2": EapType.MSCHAPV2,
    "md5": EapType.MD5_CHALLENGE,
}
METHODS = tuple(METHOD_TYPES)
_NAMES = {v: k for k, v in METHOD_TYPES.items()}


def method_name(eap_type: int) -> str:
    """Configuration name of a method type ("mschapv2"), or "type N" for others."""
    if eap_type in _NAMES:
        return _NAMES[eap_type]
    try:
        return EapType(eap_type).name.lower()
    except ValueError:
        return f"type {eap_type}"


def parse_methods(value: str | Iterable[str]) -> tuple[str, ...]:
    """"mschapv2" / "tls, mschapv2" / ["tls", "md5"] -> validated tuple, order kept, no repeats."""
    if isinstance(value, str):
        items = [v.strip().lower() for v in value.split(",")]
    else:
        try:
            items = [str(v).strip().lower() for v in value]
        except TypeError:
            raise EapError(f"EAP methods must be a string or a list, not {type(value).__name__}") from None
    out: list[str] = []
    for m in items:
        if not m:
            continue
        if m not in METHOD_TYPES:
            raise EapError(f"unknown EAP method {m!r} (known: {', '.join(METHODS)})")
        if m not in out:
            out.append(m)
    if not out:
        raise EapError("no EAP method given")
    return tuple(out)


@dataclass(frozen=True)
class EapStep:
    """What one ``start``/``process`` call produced.

    ``send``: the next EAP message to transmit (a Request, Success or Failure from the
    authenticator; a Response from the peer), or None (nothing to send: a discarded message,
    or the peer's end of the conversation).  ``done``: the conversation is over; ``success``
    tells how it ended.  ``identity``: the peer's EAP identity once known.  ``msk``: the
    64-octet MSK on success of a key-deriving method (None for EAP-MD5).  ``reason``: a human
    explanation (failure cause, discarded message, notification text).  ``method``: the
    method name ("mschapv2", "md5", "tls") once one is under way.
    """

    send: bytes | None = None
    done: bool = False
    success: bool = False
    identity: str | None = None
    msk: bytes | None = None
    reason: str = ""
    method: str | None = None


@dataclass
class MethodResult:
    """Outcome of one authenticator-side method step: the Type-Data of the next Request, or
    the end of the method (``done``) with its verdict, MSK and reason."""
    request: bytes | None = None
    done: bool = False
    success: bool = False
    msk: bytes | None = None
    reason: str = ""


@dataclass
class PeerResult:
    """Outcome of one peer-side method step: the Type-Data of the Response to send (None:
    send nothing), and whether the method has failed (``reason`` says why)."""
    response: bytes | None = None
    failed: bool = False
    reason: str = ""


@dataclass(frozen=True)
class EapPacket:
    code: int
    identifier: int
    type: int | None = None
    data: bytes = b""

    @classmethod
    def parse(cls, msg: bytes) -> EapPacket:
        """Parse one EAP packet; raises :class:`EapError` on anything malformed.

        Octets beyond the Length field are link-layer padding and ignored (RFC 3748 4.1);
        a Length beyond the octets received is an error."""
        if not isinstance(msg, (bytes, bytearray, memoryview)):
            raise EapError(f"EAP message must be bytes, not {type(msg).__name__}")
        msg = bytes(msg)
        if len(msg) < 4:
            raise EapError(f"EAP message of {len(msg)} octets is shorter than its 4-octet header")
        code, ident, length = struct.unpack("!BBH", msg[:4])
        if length < 4 or length > len(msg):
            raise EapError(f"EAP Length field {length} does not fit the {len(msg)} octets received")
        msg = msg[:length]
        if code in (EapCode.SUCCESS, EapCode.FAILURE):
            if length != 4:
                raise EapError(f"EAP {EapCode(code).name} must be 4 octets, not {length}")
            return cls(code, ident)
        if code in (EapCode.REQUEST, EapCode.RESPONSE):
            if length < 5:
                raise EapError(f"EAP {EapCode(code).name} without a Type")
            return cls(code, ident, msg[4], msg[5:])
        raise EapError(f"unknown EAP Code {code}")

    def encode(self) -> bytes:
        body = b"" if self.type is None else bytes([self.type]) + self.data
        if 4 + len(body) > 0xFFFF:
            raise EapError("EAP packet longer than 65535 octets")
        return struct.pack("!BBH", self.code, self.identifier & 0xFF, 4 + len(body)) + body


def request(identifier: int, eap_type: int, data: bytes = b"") -> bytes:
    return EapPacket(EapCode.REQUEST, identifier, eap_type, data).encode()


def response(identifier: int, eap_type: int, data: bytes = b"") -> bytes:
    return EapPacket(EapCode.RESPONSE, identifier, eap_type, data).encode()


def success(identifier: int) -> bytes:
    return EapPacket(EapCode.SUCCESS, identifier).encode()


def failure(identifier: int) -> bytes:
    return EapPacket(EapCode.FAILURE, identifier).encode()
