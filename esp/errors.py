"""The one typed error of the ESP packet layer, and the reasons it carries.

Every packet that the packet layer refuses raises ``EspError(reason)``; the data plane counts
drops by ``reason`` (an ``EspSA`` also counts them itself, see ``esp.sa.SaStats``). Malformed
input never escapes as ``IndexError``/``struct.error``/``ValueError``: lengths are checked before
use. Configuration mistakes (a wrong key length, an unknown transform) are programming errors
and raise ``ValueError`` at SA set-up time, never on the packet path.
"""
from __future__ import annotations

from enum import Enum


class DropReason(str, Enum):
    """Why a packet was not delivered. The values are stable strings usable as counter keys."""

    MALFORMED = "malformed"  # too short, misaligned, bad IP header, not ESP at all ...
    SPI_MISMATCH = "spi_mismatch"  # packet's SPI is not the SA's (caller looked up the wrong SA)
    AUTH_FAILED = "auth_failed"  # ICV / AEAD tag did not verify
    REPLAY = "replay"  # duplicate, left of the anti-replay window, or sequence number 0
    BAD_PADDING = "bad_padding"  # pad length too long or padding bytes not 1, 2, 3, ...
    BAD_NEXT_HEADER = "bad_next_header"  # next header not allowed on this SA, or inner mismatch
    DUMMY = "dummy"  # authentic TFC dummy packet (next header 59): dropped by design
    SEQ_EXHAUSTED = "seq_exhausted"  # outbound sequence number would cycle (RFC 4303 3.3.3)
    LIFETIME_EXPIRED = "lifetime_expired"  # hard lifetime (time, bytes or packets) reached
    SA_DEAD = "sa_dead"  # SA was wiped
    DF_SET = "df_set"  # fragmentation refused: Don't Fragment is set
    BAD_MTU = "bad_mtu"  # MTU below what the protocol allows (68 for IPv4)


class EspError(Exception):
    """A packet was refused. ``reason`` is a ``DropReason``; ``detail`` is for logs only."""

    def __init__(self, reason: DropReason, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
