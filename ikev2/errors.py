"""Typed errors of the protocol core.

The decoder raises only ``ParseError`` (and its subclass ``UnsupportedCriticalPayload``);
SK processing raises ``IntegrityError`` when a message fails authentication. The daemon turns
these into the notify RFC 7296 prescribes, or a logged drop.
"""
from __future__ import annotations


class IKEv2Error(Exception):
    """Base of every error the protocol core raises on purpose."""


class ParseError(IKEv2Error):
    """Malformed input: says what is wrong and where (byte offset, payload)."""

    def __init__(self, reason: str, offset: int | None = None, payload: str | None = None):
        self.reason = reason
        self.offset = offset
        self.payload = payload
        where = []
        if payload is not None:
            where.append(f"payload {payload}")
        if offset is not None:
            where.append(f"offset {offset}")
        super().__init__(f"{reason} ({', '.join(where)})" if where else reason)

    def at(self, offset: int | None = None, payload: str | None = None) -> ParseError:
        """Fill in location details that the raiser did not know; returns self."""
        if self.offset is None and offset is not None:
            self.offset = offset
        if self.payload is None and payload is not None:
            self.payload = payload
        where = []
        if self.payload is not None:
            where.append(f"payload {self.payload}")
        if self.offset is not None:
            where.append(f"offset {self.offset}")
        self.args = (f"{self.reason} ({', '.join(where)})" if where else self.reason,)
        return self


class UnsupportedCriticalPayload(ParseError):
    """A payload of unknown type had its critical bit set (RFC 7296 2.5)."""

    def __init__(self, payload_type: int, offset: int):
        self.payload_type = payload_type
        super().__init__(f"unsupported critical payload type {payload_type}", offset, str(payload_type))


class IntegrityError(IKEv2Error):
    """An encrypted payload (SK/SKF) or ESP packet failed its integrity check."""


class CryptoError(IKEv2Error):
    """A cryptographic operation was asked for something it cannot do (bad key length, ...)."""


class InvalidKeyExchange(CryptoError):
    """A peer's key-exchange value failed the RFC 6989 checks."""


class ProposalError(IKEv2Error):
    """A proposal string (configuration) is malformed, unknown or uses a weak algorithm."""


class AuthenticatedParseError(ParseError):
    """The content of a message that passed its integrity check is malformed: the peer gets
    INVALID_SYNTAX (RFC 7296 2.21.2) rather than a silent drop."""

    @classmethod
    def wrap(cls, e: ParseError) -> AuthenticatedParseError:
        new = cls(e.reason, e.offset, e.payload)
        new.__cause__ = e
        return new
