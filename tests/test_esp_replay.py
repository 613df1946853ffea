"""Anti-replay window (RFC 4303 3.4.3, RFC 6479 bitmap) and ESN inference (RFC 4303 A2)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esp import ReplayWindow

M32 = 1 << 32


def accept(w: ReplayWindow, seq: int) -> bool:
    """check + update, as decapsulate does for a packet whose ICV verified."""
    if not w.check(seq):
        return False
    w.update(seq)
    return True


@pytest.mark.parametrize("size", [32, 64, 1024, 4096])
def test_window_edges(size: int) -> None:
    w = ReplayWindow(size)
    assert w.size == size
    assert not w.check(0)  # sequence number 0 is never valid
    assert accept(w, 1)  # first packet
    assert not w.check(1)  # duplicate
    top = 10 * size + 5
    assert accept(w, top)  # large jump forward
    assert w.top == top
    left = top - size + 1
    assert w.check(left)  # exactly at the left edge: accepted
    assert not w.check(left - 1)  # one beyond: rejected
    assert not w.check(1)
    assert accept(w, left)
    assert not w.check(left)
    for s in range(left + 1, top):  # every number inside the window, once
        assert accept(w, s)
        assert not w.check(s)
    assert not w.check(top)
    # slide by one: the old left edge falls out, everything else is still remembered
    assert accept(w, top + 1)
    assert not w.check(left)
    assert all(not w.check(s) for s in range(left + 1, top + 2))


@pytest.mark.parametrize("size", [32, 64, 1024, 4096])
def test_jump_beyond_the_ring_clears_everything(size: int) -> None:
    w = ReplayWindow(size)
    for s in range(1, size + 1):
        assert accept(w, s)
    jump = 5 * size + 17
    assert accept(w, jump)
    # numbers inside the new window that were never received are acceptable
    assert all(w.check(s) for s in range(jump - size + 1, jump))
    assert not w.check(jump - size)


def test_window_size_rounding_and_minimum() -> None:
    assert ReplayWindow(33).size == 64
    assert ReplayWindow(100).size == 128
    with pytest.raises(ValueError):
        ReplayWindow(16)


def test_out_of_order_within_window() -> None:
    w = ReplayWindow(64)
    for s in (5, 3, 9, 4, 60, 1, 2, 64, 63, 100):
        assert accept(w, s), s
    assert [s for s in range(1, 101) if w.check(s)] == [
        s for s in range(37, 101) if s not in (60, 63, 64, 100)]


def test_non_esn_limits() -> None:
    w = ReplayWindow(64)
    assert w.infer_seq(0xFFFFFFFF) == 0xFFFFFFFF
    assert accept(w, 0xFFFFFFFF)
    assert not w.check(M32)  # beyond the 32-bit space
    with pytest.raises(ValueError):
        w.update(0)


# -- ESN (RFC 4303 Appendix A2) -----------------------------------------------------------------------
def esn_window(top: int, size: int = 64) -> ReplayWindow:
    w = ReplayWindow(size, esn=True)
    w.update(top)
    return w


def test_esn_case_a_same_subspace() -> None:
    w = esn_window(5 * M32 + 1000)  # Th = 5, Tl = 1000 >= W - 1
    assert w.infer_seq(1000 - 63) == 5 * M32 + 937  # Seql >= Bl: Th
    assert w.infer_seq(2000) == 5 * M32 + 2000  # ahead, same subspace
    assert w.infer_seq(1000 - 64) == 6 * M32 + 936  # Seql < Bl: Th + 1


def test_esn_rollover_forward_across_2_32() -> None:
    w = esn_window(M32 - 10)  # Case A just below 2^32
    seq = w.infer_seq(5)  # small low bits: the next subspace
    assert seq == M32 + 5
    assert accept(w, seq)
    assert w.top == M32 + 5
    assert w.infer_seq(0xFFFFFFF8) == M32 - 8  # now Case B: late packet from subspace 0
    assert accept(w, M32 - 8)
    assert not w.check(M32 - 10)  # seen before the rollover
    assert w.check(M32 - 9)  # never seen, still inside the window


def test_esn_rollover_backward_case_b() -> None:
    w = esn_window(M32 + 5)  # Th = 1, Tl = 5 < W - 1: window spans subspaces 0 and 1
    bl = (5 - 64 + 1) % M32
    assert w.infer_seq(bl) == bl  # Seql >= Bl: Th - 1 (the left edge itself)
    assert w.check(bl)
    assert w.infer_seq(bl - 1) == M32 + bl - 1  # Seql < Bl: Th (a huge jump, ICV decides)
    assert w.infer_seq(3) == M32 + 3
    assert w.infer_seq(6) == M32 + 6
    assert not w.check(bl - 1)  # the true old packet at B - 1 is left of the window


def test_esn_start_of_sa_has_no_previous_subspace() -> None:
    w = ReplayWindow(64, esn=True)  # T = 0: Case B with Th = 0
    assert w.infer_seq(1) == 1
    assert w.infer_seq(0xFFFFFFF0) == 0xFFFFFFF0  # no subspace -1: a forward jump
    assert not w.check(w.infer_seq(0))  # full sequence number 0 is never valid


def test_esn_top_of_64_bit_space() -> None:
    w = esn_window((1 << 64) - 2)
    assert accept(w, w.infer_seq(0xFFFFFFFF))
    assert w.top == (1 << 64) - 1
    assert not w.check(w.infer_seq(0))  # would be 2^64: beyond the space


# -- property test against a set-based model -------------------------------------------------------
class Model:
    def __init__(self, size: int) -> None:
        self.size, self.top, self.seen = size, 0, set()  # type: ignore[var-annotated]

    def check(self, seq: int) -> bool:
        if seq <= 0:
            return False
        if seq > self.top:
            return True
        return self.top - seq < self.size and seq not in self.seen

    def update(self, seq: int) -> None:
        self.seen.add(seq)
        self.top = max(self.top, seq)


@settings(max_examples=300, deadline=None)
@given(
    size=st.sampled_from([32, 64, 96, 1024]),
    ops=st.lists(
        st.tuples(st.booleans(), st.one_of(st.integers(0, 300), st.integers(0, 5000))),
        max_size=400,
    ),
)
def test_bitmap_matches_set_model(size: int, ops: list[tuple[bool, int]]) -> None:
    w, m = ReplayWindow(size), Model(size)
    base = 0
    for do_update, delta in ops:
        seq = max(base + delta - size, 0)  # mostly around and ahead of the top
        assert w.check(seq) == m.check(seq), (seq, w.top)
        if do_update and m.check(seq):
            w.update(seq)
            m.update(seq)
        base = m.top
    assert w.top == m.top
    for seq in range(max(m.top - size - 40, 0), m.top + 40):
        assert w.check(seq) == m.check(seq)


@settings(max_examples=200, deadline=None)
@given(start=st.integers(1, 3 * M32), steps=st.lists(st.integers(-100, 100), max_size=60))
def test_esn_inference_recovers_true_sequence_numbers(start: int, steps: list[int]) -> None:
    """Whenever the true sequence number lies within W - 1 behind or 2^32 - W ahead of T, the
    low 32 bits alone give it back (RFC 4303 A2.2)."""
    w = esn_window(start, 64)
    true = start
    for step in steps:
        true = max(1, true + step)
        if not (w.top - 63 <= true <= w.top + M32 - 64):
            continue
        assert w.infer_seq(true % M32) == true
        if w.check(true):
            w.update(true)
