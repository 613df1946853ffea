"""IKEv2 message codec (RFC 7296 3.1-3.2): header and payload chain, encode and decode.

``decode_message`` reads one datagram (without the non-ESP marker). Encrypted content stays in an
``SKPayload``/``SKFPayload`` as received; ``ikev2.sk`` decrypts it and decodes the inner chain with
``decode_payloads``. Every malformation raises ``ParseError``; nothing else escapes.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TypeVar

from .constants import (
    GENERIC_PAYLOAD_HEADER_LEN,
    IKE_HEADER_LEN,
    IKE_MAJOR_VERSION,
    ExchangeType,
    HeaderFlag,
    PayloadType,
    enum_or_int,
)
from .errors import ParseError, UnsupportedCriticalPayload
from .payloads import PAYLOAD_CLASSES, NotifyPayload, Payload, Reader, SKFPayload, SKPayload, UnknownPayload

PayloadT = TypeVar("PayloadT", bound=Payload)

_HEADER = struct.Struct("!8s8sBBBBII")
MAX_MESSAGE_LEN = 65535


class UnsupportedVersion(ParseError):
    """The header's major version is not 2 (answer with INVALID_MAJOR_VERSION, RFC 7296 2.5)."""

    def __init__(self, major: int, minor: int):
        self.major, self.minor = major, minor
        super().__init__(f"unsupported IKE version {major}.{minor}", 17, "header")


@dataclass
class Header:
    spi_i: bytes
    spi_r: bytes
    next_payload: int
    major: int
    minor: int
    exchange: int
    flags: int
    message_id: int
    length: int

    @property
    def is_response(self) -> bool:
        return bool(self.flags & HeaderFlag.RESPONSE)

    @property
    def is_initiator(self) -> bool:
        return bool(self.flags & HeaderFlag.INITIATOR)


def decode_header(data: bytes) -> Header:
    """Decode and check the fixed header: length field equal to the datagram, version 2."""
    if len(data) < IKE_HEADER_LEN:
        raise ParseError(f"datagram of {len(data)} bytes is shorter than the IKE header", 0, "header")
    spi_i, spi_r, nxt, ver, exch, flags, mid, length = _HEADER.unpack_from(data)
    major, minor = ver >> 4, ver & 0x0F
    if length != len(data):
        kind = "truncated" if length > len(data) else "trailing bytes after"
        raise ParseError(f"{kind} message: header length {length}, datagram {len(data)} bytes", 24, "header")
    if major != IKE_MAJOR_VERSION:
        raise UnsupportedVersion(major, minor)
    return Header(spi_i, spi_r, nxt, major, minor, exch, flags, mid, length)


@dataclass
class Message:
    """One IKE message. For an encrypted message received from the wire, ``payloads`` ends with the
    SK/SKF payload until ``ikev2.sk`` replaces the chain with the decrypted inner payloads."""
    spi_i: bytes
    spi_r: bytes
    exchange: int
    message_id: int
    flags: int = 0
    payloads: list[Payload] = field(default_factory=list)
    minor_version: int = 0
    # Set by ikev2.sk when it decrypts: the inner payloads as received (RFC 9242 IntAuth_P).
    plain_inner: bytes = field(default=b"", repr=False, compare=False)
    # (payloads list, its length, notifies by type): see _notify_index
    _notify_cache: tuple[list[Payload], int, dict[int, list[NotifyPayload]]] | None = field(
        default=None, init=False, repr=False, compare=False)

    @property
    def is_response(self) -> bool:
        return bool(self.flags & HeaderFlag.RESPONSE)

    @property
    def is_initiator(self) -> bool:
        return bool(self.flags & HeaderFlag.INITIATOR)

    @property
    def exchange_name(self) -> str:
        e = enum_or_int(ExchangeType, self.exchange)
        return e.name if hasattr(e, "name") else str(e)

    def get(self, cls: type[PayloadT]) -> PayloadT | None:
        """First payload of this class, or None."""
        for p in self.payloads:
            if type(p) is cls:
                return p
        return None

    def all(self, cls: type[PayloadT]) -> list[PayloadT]:
        return [p for p in self.payloads if type(p) is cls]

    def notifies(self, ntype: int | None = None) -> list[NotifyPayload]:
        if ntype is None:
            return [p for p in self.payloads if isinstance(p, NotifyPayload)]
        return list(self._notify_index().get(ntype, ()))

    def notify(self, ntype: int) -> NotifyPayload | None:
        found = self._notify_index().get(ntype)
        return found[0] if found else None

    def _notify_index(self) -> dict[int, list[NotifyPayload]]:
        """Notify payloads by type, built on first use (a handler asks for ten or so types per
        message); rebuilt if the payload list was replaced or changed length (ikev2.sk swaps
        in the decrypted payloads)."""
        payloads = self.payloads
        kept = self._notify_cache
        if kept is not None and kept[0] is payloads and kept[1] == len(payloads):
            return kept[2]
        index: dict[int, list[NotifyPayload]] = {}
        for p in payloads:
            if type(p) is NotifyPayload:
                index.setdefault(p.notify_type, []).append(p)
        self._notify_cache = (payloads, len(payloads), index)
        return index

    @property
    def encrypted(self) -> SKPayload | SKFPayload | None:
        if self.payloads and isinstance(self.payloads[-1], (SKPayload, SKFPayload)):
            return self.payloads[-1]
        return None

    def summary(self) -> str:
        """strongSwan-like one-line summary, e.g. 'IKE_SA_INIT request 0 [ SA KE No N(NATD_S_IP) ]'."""
        from .summary import payload_summary
        kind = "response" if self.is_response else "request"
        return f"{self.exchange_name} {kind} {self.message_id} [ {payload_summary(self.payloads)} ]"


def encode_header(spi_i: bytes, spi_r: bytes, next_payload: int, exchange: int, flags: int,
                  message_id: int, length: int, minor: int = 0) -> bytes:
    if len(spi_i) != 8 or len(spi_r) != 8:
        raise ValueError("IKE SPIs are 8 bytes")
    return _HEADER.pack(spi_i, spi_r, next_payload, (IKE_MAJOR_VERSION << 4) | minor, exchange,
                        flags, message_id, length)


def _next_field(p: Payload, following: Payload | None) -> int:
    if isinstance(p, (SKPayload, SKFPayload)):
        if following is not None:
            raise ValueError("the SK/SKF payload must be the last payload")
        return p.first_inner
    return following.type if following is not None else PayloadType.NONE


def encode_payloads(payloads: list[Payload]) -> tuple[int, bytes]:
    """Encode a chain; returns (type of the first payload, bytes)."""
    out = bytearray()
    for i, p in enumerate(payloads):
        body = p.encode_body()
        length = GENERIC_PAYLOAD_HEADER_LEN + len(body)
        if length > 0xFFFF:
            raise ValueError(f"{p.type_name} payload of {length} bytes is too long")
        nxt = _next_field(p, payloads[i + 1] if i + 1 < len(payloads) else None)
        out += struct.pack("!BBH", nxt, 0x80 if p.critical else 0, length) + body
    first = payloads[0].type if payloads else PayloadType.NONE
    return first, bytes(out)


def encode_message(msg: Message) -> bytes:
    first, body = encode_payloads(msg.payloads)
    length = IKE_HEADER_LEN + len(body)
    if length > MAX_MESSAGE_LEN:
        raise ValueError(f"message of {length} bytes exceeds {MAX_MESSAGE_LEN}")
    return encode_header(msg.spi_i, msg.spi_r, first, msg.exchange, msg.flags, msg.message_id,
                         length, msg.minor_version) + body


_GENERIC = struct.Struct("!BBH")
# payload type -> the name error messages use ("SA", "Notify", ...)
_PAYLOAD_NAMES = {t: c.__name__.removesuffix("Payload") for t, c in PAYLOAD_CLASSES.items()}


def decode_payloads(data: bytes, first_type: int, base: int = 0, inner: bool = False) -> list[Payload]:
    """Decode a payload chain that starts with a payload of ``first_type``.

    ``base`` is the offset of ``data`` within the message (for error messages). An SK or SKF
    payload ends the chain (its next-payload field names the first inner payload); inside
    encrypted content (``inner``) they are not allowed.
    """
    payloads: list[Payload] = []
    pos = 0
    size = len(data)
    ptype = first_type
    classes = PAYLOAD_CLASSES
    while ptype:  # PayloadType.NONE = 0 ends the chain
        if pos + GENERIC_PAYLOAD_HEADER_LEN > size:
            raise ParseError(f"truncated: {size - pos} bytes left for a payload header",
                             base + pos, _payload_name(ptype))
        nxt, flags, length = _GENERIC.unpack_from(data, pos)
        if length < GENERIC_PAYLOAD_HEADER_LEN:
            raise ParseError(f"payload length {length} < 4", base + pos, _payload_name(ptype))
        end = pos + length
        if end > size:
            raise ParseError(f"payload length {length} exceeds the {size - pos} bytes left",
                             base + pos, _payload_name(ptype))
        critical = flags & 0x80 != 0
        body_start = pos + GENERIC_PAYLOAD_HEADER_LEN
        cls = classes.get(ptype)
        encrypted = cls is SKPayload or cls is SKFPayload
        if cls is None:
            if critical:
                raise UnsupportedCriticalPayload(ptype, base + pos)
            payload: Payload = UnknownPayload(type=ptype, body=data[body_start:end])
        else:
            if inner and encrypted:
                raise ParseError("encrypted payload inside encrypted content", base + pos, _payload_name(ptype))
            name = _PAYLOAD_NAMES[ptype]
            r = Reader(data[body_start:end], base + body_start, name)
            try:
                payload = cls.decode_body(r)
            except (ValueError, struct.error, IndexError, UnicodeError) as e:  # defensive: never leak
                raise ParseError(f"malformed {name} payload: {e}", base + pos, name) from None
            if r.pos != r.end:
                r.done(name)  # raises: trailing bytes
        payload.critical = critical
        payloads.append(payload)
        if encrypted:  # ends the chain; its next-payload field names the first inner payload
            payload.first_inner = nxt  # type: ignore[attr-defined]
            payload.offset = base + pos  # type: ignore[attr-defined]
            if end != size:
                raise ParseError(f"{size - end} bytes after the encrypted payload", base + end,
                                 _payload_name(ptype))
            return payloads
        pos = end
        ptype = nxt
    if pos != size:
        raise ParseError(f"{size - pos} trailing bytes after the last payload", base + pos, "chain")
    return payloads


def _payload_name(ptype: int) -> str:
    return _PAYLOAD_NAMES.get(ptype) or str(ptype)


def decode_message(data: bytes) -> Message:
    """Decode one IKE message (bytes after the non-ESP marker, if any)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ParseError("message is not bytes", 0, "header")
    data = bytes(data)
    h = decode_header(data)
    payloads = decode_payloads(data[IKE_HEADER_LEN:], h.next_payload, IKE_HEADER_LEN)
    return Message(h.spi_i, h.spi_r, h.exchange, h.message_id, h.flags, payloads, h.minor)
