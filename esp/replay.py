"""Anti-replay window: RFC 4303 section 3.4.3 semantics, RFC 6479 ring-of-blocks bitmap, and the
ESN high-order-bit inference of RFC 4303 Appendix A2.

Semantics (RFC 4303 3.4.3 / A2.1): ``T`` (``top``) is the highest sequence number authenticated
so far; the window of size ``W`` covers ``T - W + 1 .. T``. A sequence number is acceptable if it
is greater than ``T``, or inside the window and not yet seen. Sequence number 0 is never
acceptable (the first packet of an SA carries 1). The caller must ``check()`` before verifying
the ICV and ``update()`` only after the ICV verified, so forged packets never move the window.

Storage (RFC 6479): the bitmap is a ring of ``W / 32 + 1`` 32-bit blocks. Sliding the window
forward clears whole blocks instead of shifting bits; the spare block keeps every sequence
number of the window representable while the block holding ``T`` is only partly used.
"""
from __future__ import annotations

BLOCK_BITS = 32
_BLOCK_SHIFT = 5
_LOC_MASK = BLOCK_BITS - 1
MASK32 = 0xFFFFFFFF
MAX_SEQ_ESN = (1 << 64) - 1
MAX_SEQ_32 = MASK32
MIN_WINDOW = 32  # RFC 4303 3.4.3: a minimum window size of 32 packets MUST be supported


class ReplayWindow:
    """Sliding anti-replay window over full (32- or 64-bit) sequence numbers."""

    __slots__ = ("size", "esn", "top", "_nblocks", "_bitmap", "_max")

    def __init__(self, size: int = 1024, *, esn: bool = False) -> None:
        if size < MIN_WINDOW:
            raise ValueError(f"anti-replay window must be at least {MIN_WINDOW}")
        self.size = -(-size // BLOCK_BITS) * BLOCK_BITS  # round up to a multiple of 32
        if self.size > MASK32:
            raise ValueError("anti-replay window too large")
        self.esn = esn
        self.top = 0  # T; 0 means "nothing authenticated yet"
        self._nblocks = self.size // BLOCK_BITS + 1
        self._bitmap = [0] * self._nblocks
        self._max = MAX_SEQ_ESN if esn else MAX_SEQ_32

    @property
    def bottom(self) -> int:
        """B, the lowest sequence number still inside the window (may be <= 0 early on)."""
        return self.top - self.size + 1

    def infer_seq(self, seq_low: int) -> int:
        """Full sequence number of a packet carrying the low 32 bits ``seq_low``.

        Without ESN this is ``seq_low``. With ESN it applies RFC 4303 Appendix A2.2: with
        ``Bl = Tl - W + 1 (mod 2^32)``, case A (``Tl >= W - 1``) gives ``Th`` if ``Seql >= Bl``
        else ``Th + 1``; case B (``Tl < W - 1``, the window spans two subspaces) gives
        ``Th - 1`` if ``Seql >= Bl`` else ``Th``. In case B with ``Th == 0`` there is no earlier
        subspace, so ``Th`` is used (as DPDK does): such a packet is a forward jump. The result
        is only a guess to authenticate with; it is trusted once the ICV verified.
        """
        if not self.esn:
            return seq_low
        w = self.size
        th, tl = self.top >> 32, self.top & MASK32
        bl = (tl - w + 1) & MASK32
        if tl >= w - 1:  # Case A: window within one subspace
            seqh = th if seq_low >= bl else th + 1
        elif seq_low >= bl:  # Case B, packet from the older subspace
            seqh = th - 1 if th > 0 else th
        else:  # Case B, packet from the current subspace
            seqh = th
        return (seqh << 32) | seq_low

    def check(self, seq: int) -> bool:
        """True if ``seq`` (full sequence number) is not a replay and not too old."""
        if seq <= 0 or seq > self._max:
            return False
        if seq > self.top:
            return True
        if self.top - seq >= self.size:
            return False  # left of the window
        block = self._bitmap[(seq >> _BLOCK_SHIFT) % self._nblocks]
        return not (block >> (seq & _LOC_MASK)) & 1

    def update(self, seq: int) -> None:
        """Record ``seq`` as received; call only after the packet's ICV verified."""
        if seq <= 0 or seq > self._max:
            raise ValueError("sequence number out of range")
        if seq > self.top:
            cur = self.top >> _BLOCK_SHIFT
            new = seq >> _BLOCK_SHIFT
            for i in range(cur + 1, cur + 1 + min(new - cur, self._nblocks)):
                self._bitmap[i % self._nblocks] = 0
            self.top = seq
        elif self.top - seq >= self.size:
            return  # too old to be represented; check() refuses it anyway
        idx = (seq >> _BLOCK_SHIFT) % self._nblocks
        self._bitmap[idx] |= 1 << (seq & _LOC_MASK)

    def __repr__(self) -> str:
        return f"ReplayWindow(size={self.size}, esn={self.esn}, top={self.top})"
