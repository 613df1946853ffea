"""UDP encapsulation of ESP (RFC 3948): classify what arrives on UDP port 4500, build what leaves.

On port 4500 a datagram is one of (RFC 3948 sections 2.2, 2.3, 4):

* a NAT-keepalive: exactly one octet 0xFF; receivers ignore it;
* an IKE message: preceded by the 4-octet non-ESP marker (all zeros, i.e. SPI 0, which ESP never
  uses); the marker is stripped here;
* an ESP packet: starts with the (non-zero) SPI.
"""
from __future__ import annotations

from enum import Enum

from .errors import DropReason, EspError

NON_ESP_MARKER = b"\x00\x00\x00\x00"
KEEPALIVE = b"\xff"
IKE_HEADER_LEN = 28
ESP_MIN_LEN = 8  # SPI + sequence number


class Kind(str, Enum):
    KEEPALIVE = "keepalive"
    IKE = "ike"
    ESP = "esp"


def classify(datagram: bytes) -> tuple[Kind, bytes]:
    """Return (kind, body): body is b"" for a keepalive, the IKE message without the marker, or
    the ESP packet unchanged. Raises ``EspError(MALFORMED)`` for anything too short to be one
    of them."""
    n = len(datagram)
    if n == 1 and datagram == KEEPALIVE:
        return Kind.KEEPALIVE, b""
    if n < 4:
        raise EspError(DropReason.MALFORMED, f"{n}-byte datagram on the NAT-T port")
    if datagram[:4] == NON_ESP_MARKER:
        if n < 4 + IKE_HEADER_LEN:
            raise EspError(DropReason.MALFORMED, "IKE message shorter than its header")
        return Kind.IKE, bytes(datagram[4:])
    if n < ESP_MIN_LEN:
        raise EspError(DropReason.MALFORMED, "ESP packet shorter than its header")
    return Kind.ESP, datagram


def ike_with_marker(msg: bytes) -> bytes:
    """An IKE message as sent on port 4500: non-ESP marker + message."""
    return NON_ESP_MARKER + msg


def keepalive() -> bytes:
    """A NAT-keepalive datagram (RFC 3948 section 2.3)."""
    return KEEPALIVE
