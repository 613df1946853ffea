"""ESP Security Association state: direction, SPI, cipher, sequence numbers, anti-replay window,
counters and lifetimes. Pure state: no clock reads (``now`` is passed in), no I/O.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

from .cipher import EspCipher
from .compiled import CompiledReplayWindow, next_header_mask
from .errors import DropReason, EspError
from .ip import PROTO_IPIP, PROTO_IPV6
from .replay import MAX_SEQ_32, MAX_SEQ_ESN, ReplayWindow

TUNNEL_NEXT_HEADERS = frozenset({PROTO_IPIP, PROTO_IPV6})
# Rekey warning before sequence-number exhaustion: "soft" once fewer than this many numbers
# are left (without ESN: at 2^32 - 2^20).
SEQ_SOFT_MARGIN = 1 << 20

LifetimeState = Literal["soft", "hard"] | None


class Direction(str, Enum):
    IN = "in"
    OUT = "out"


@dataclass(frozen=True, slots=True)
class Lifetime:
    """Soft/hard limits; ``None`` means unlimited. Bytes count inner (clear-text) IP bytes."""

    soft_seconds: float | None = None
    hard_seconds: float | None = None
    soft_bytes: int | None = None
    hard_bytes: int | None = None
    soft_packets: int | None = None
    hard_packets: int | None = None

    def __post_init__(self) -> None:
        for soft, hard, what in (
            (self.soft_seconds, self.hard_seconds, "seconds"),
            (self.soft_bytes, self.hard_bytes, "bytes"),
            (self.soft_packets, self.hard_packets, "packets"),
        ):
            if soft is not None and soft < 0 or hard is not None and hard < 0:
                raise ValueError(f"negative lifetime ({what})")
            if soft is not None and hard is not None and soft > hard:
                raise ValueError(f"soft lifetime above hard lifetime ({what})")


@dataclass(slots=True)
class SaStats:
    """Counters of delivered traffic and of drops by reason (DUMMY included)."""

    packets: int = 0
    bytes: int = 0
    drops: Counter[DropReason] = field(default_factory=Counter)

    def record_drop(self, reason: DropReason) -> None:
        self.drops[reason] += 1


class EspSA:
    """One direction of an ESP SA.

    Outbound SAs keep the last sequence number used (``seq``, starting at 0, so the first packet
    carries 1, RFC 4303 3.3.3); inbound SAs keep a ``ReplayWindow``. Without ESN the sequence
    number never passes 2^32 - 1: ``next_seq`` raises ``SEQ_EXHAUSTED`` instead of cycling;
    ``check_lifetime`` reports "soft" ``seq_soft_margin`` numbers earlier so the SA is rekeyed
    in time.
    """

    def __init__(
        self,
        direction: Direction,
        spi: int,
        cipher: EspCipher,
        *,
        esn: bool = False,
        replay_window: int = 1024,
        lifetime: Lifetime = Lifetime(),
        created_at: float = 0.0,
        allowed_next_headers: frozenset[int] = TUNNEL_NEXT_HEADERS,
        seq_soft_margin: int = SEQ_SOFT_MARGIN,
    ) -> None:
        if not 0 < spi <= 0xFFFFFFFF:
            raise ValueError("SPI must be 1 .. 2^32-1 (0 is reserved, RFC 4303 2.1)")
        self.direction = Direction(direction)
        self.spi = spi
        self.cipher = cipher
        self.esn = esn
        self.lifetime = lifetime
        self.created_at = created_at
        self.allowed_next_headers = frozenset(allowed_next_headers)  # (sets nh_mask too)
        self.seq_limit = MAX_SEQ_ESN if esn else MAX_SEQ_32
        self.seq_soft_margin = seq_soft_margin
        self.seq = 0
        # the compiled window when built (esp/compiled.py): the same interface and behaviour
        window = CompiledReplayWindow or ReplayWindow
        self.replay = window(replay_window, esn=esn) if self.direction is Direction.IN else None
        self.stats = SaStats()
        self.expired = False
        self.dead = False

    @property
    def allowed_next_headers(self) -> frozenset[int]:
        """Next headers this SA delivers (tunnel mode: IPv4, IPv6); others are BAD_NEXT_HEADER."""
        return self._allowed_next_headers

    @allowed_next_headers.setter
    def allowed_next_headers(self, value: frozenset[int]) -> None:
        self._allowed_next_headers = frozenset(value)
        self.nh_mask = next_header_mask(self._allowed_next_headers)  # the compiled path's bitmap

    # -- sequence numbers -------------------------------------------------------------------
    def next_seq(self) -> int:
        """Allocate the next outbound sequence number (full 64-bit value with ESN)."""
        if self.seq >= self.seq_limit:
            raise EspError(DropReason.SEQ_EXHAUSTED, f"SPI {self.spi:#010x}")
        self.seq += 1
        return self.seq

    def _highest_seq(self) -> int:
        if self.replay is not None:
            return self.replay.top
        return self.seq

    # -- lifetimes ----------------------------------------------------------------------------
    def check_lifetime(self, now: float) -> LifetimeState:
        """"hard", "soft" or None for the SA's state at time ``now`` (same clock as
        ``created_at``). Reaching a hard time/byte/packet limit marks the SA expired: from then
        on it refuses packets (``LIFETIME_EXPIRED``). Sequence-number exhaustion counts too:
        "hard" when no number is left (``encapsulate`` then raises ``SEQ_EXHAUSTED``), "soft"
        when fewer than ``seq_soft_margin`` are.
        """
        lt = self.lifetime
        age = now - self.created_at
        st = self.stats
        top = self._highest_seq()
        if (
            (lt.hard_seconds is not None and age >= lt.hard_seconds)
            or (lt.hard_bytes is not None and st.bytes >= lt.hard_bytes)
            or (lt.hard_packets is not None and st.packets >= lt.hard_packets)
        ):
            self.expired = True
        if self.dead or self.expired or top >= self.seq_limit:
            # (an exhausted outbound SA keeps refusing with SEQ_EXHAUSTED, see next_seq)
            return "hard"
        if (
            (lt.soft_seconds is not None and age >= lt.soft_seconds)
            or (lt.soft_bytes is not None and st.bytes >= lt.soft_bytes)
            or (lt.soft_packets is not None and st.packets >= lt.soft_packets)
            or top > self.seq_limit - self.seq_soft_margin  # 2^32 - 2^20 without ESN
        ):
            return "soft"
        return None

    def ensure_usable(self) -> None:
        """Raise unless the SA may process another packet (checks limits that need no clock)."""
        if self.dead:
            raise EspError(DropReason.SA_DEAD, f"SPI {self.spi:#010x}")
        lt = self.lifetime
        if (
            self.expired
            or (lt.hard_bytes is not None and self.stats.bytes >= lt.hard_bytes)
            or (lt.hard_packets is not None and self.stats.packets >= lt.hard_packets)
        ):
            self.expired = True
            raise EspError(DropReason.LIFETIME_EXPIRED, f"SPI {self.spi:#010x}")

    # -- teardown -----------------------------------------------------------------------------
    def wipe(self) -> None:
        """Drop the key material; the SA refuses every further packet (``SA_DEAD``)."""
        self.cipher.wipe()
        self.dead = True

    def __repr__(self) -> str:
        return (
            f"EspSA({self.direction.value}, spi={self.spi:#010x}, {self.cipher.name}, "
            f"esn={self.esn}, seq={self._highest_seq()})"
        )
