"""The compiled AEAD ESP path (esp/_aead.c, loaded by esp/compiled.py) against the pure-Python
code it replaces, which stays the reference (esp/cipher.py, esp/packet.py, esp/replay.py): the
same packet bytes, the same verdicts and inner packets, the same counters, the same anti-replay
windows.

In this project's setup (scripts/setup.sh installs a C compiler, Python's headers and OpenSSL's)
the module must be built: ``test_the_compiled_module_is_in_use`` fails otherwise (also when
VPN_GW_PURE_PYTHON is set), so the comparisons below never pass by comparing the Python code
with itself. The reference side is built explicitly (``cipher.fast = None`` and an
esp.replay.ReplayWindow) and checked to run the Python code."""
from __future__ import annotations

import json
import random
import shutil
import struct
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import esp.replay
from esp import Direction, DropReason, EspCipher, EspError, EspSA, compiled, decapsulate, encapsulate, esp_seal
from esp.sa import TUNNEL_NEXT_HEADERS
from tests.test_esp_packet import ipv4_packet, ipv6_packet

ROOT = Path(__file__).resolve().parents[1]
SPI = 0xC0FFEE01
# name -> (encr id, key bits)
KINDS = {
    "aes-gcm-128": (20, 128),
    "aes-gcm-192": (20, 192),
    "aes-gcm-256": (20, 256),
    "chacha20-poly1305": (28, 256),
}
M32 = (1 << 32) - 1
M64 = (1 << 64) - 1


def key_of(kind: str, seed: int = 1) -> bytes:
    return bytes((seed * 7 + 31 * i) & 0xFF for i in range(KINDS[kind][1] // 8 + 4))


def cipher(kind: str, seed: int = 1, *, pure: bool = False) -> EspCipher:
    encr, bits = KINDS[kind]
    c = EspCipher(encr, bits, None, key_of(kind, seed))
    if pure:
        c.fast = None  # the Python reference (seal_packet/open_packet on cryptography's AEAD)
    else:
        assert c.fast is not None, compiled.describe()
    return c


def _forbidden(*_a: object, **_k: object) -> bytes:
    raise AssertionError("the compiled SA ran the Python AEAD code")


class Counting:
    """Wraps EspCipher.open_packet on the reference SA: proves the Python path ran."""

    def __init__(self, fn: Callable[..., bytes]) -> None:
        self.fn, self.calls = fn, 0

    def __call__(self, *a: Any) -> bytes:
        self.calls += 1
        return self.fn(*a)


def sa_pair(kind: str, *, esn: bool, window: int = 1024, allowed: frozenset[int] = TUNNEL_NEXT_HEADERS,
            seed: int = 1) -> tuple[EspSA, EspSA]:
    """(compiled inbound SA, pure-Python inbound SA) with the same key and parameters."""
    fast = EspSA(Direction.IN, SPI, cipher(kind, seed), esn=esn, replay_window=window,
                 allowed_next_headers=allowed)
    assert fast.cipher.fast is not None and type(fast.replay) is compiled.CompiledReplayWindow
    fast.cipher.open_packet = _forbidden  # type: ignore[method-assign]
    ref = EspSA(Direction.IN, SPI, cipher(kind, seed), esn=esn, replay_window=window,
                allowed_next_headers=allowed)
    ref.cipher.fast = None
    ref.replay = esp.replay.ReplayWindow(window, esn=esn)
    ref.cipher.open_packet = Counting(ref.cipher.open_packet)  # type: ignore[method-assign, assignment]
    assert type(ref.replay) is esp.replay.ReplayWindow
    return fast, ref


def outcome(sa: EspSA, pkt: bytes | bytearray) -> tuple[int, bytes] | DropReason:
    try:
        nh, inner = decapsulate(sa, pkt)  # type: ignore[arg-type]
    except EspError as e:
        assert isinstance(e.reason, DropReason)
        return e.reason
    assert type(inner) is bytes and type(nh) is int
    return nh, inner


def same_window(a: Any, b: Any, *, full: bool = True) -> None:
    assert (a.top, a.bottom, a.size, a.esn, repr(a)) == (b.top, b.bottom, b.size, b.esn, repr(b))
    if full:
        for s in range(max(0, a.top - a.size - 3), a.top + 4):
            assert a.check(s) == b.check(s), s


def same_sa(fast: EspSA, ref: EspSA, *, full: bool = True) -> None:
    assert (fast.stats.packets, fast.stats.bytes) == (ref.stats.packets, ref.stats.bytes)
    assert fast.stats.drops == ref.stats.drops
    same_window(fast.replay, ref.replay, full=full)


# ---- 1. built and in use

def test_the_compiled_module_is_in_use():
    headers = Path(sysconfig.get_paths()["include"], "Python.h").exists()
    openssl = Path("/usr/include/openssl/evp.h").exists()
    if not (shutil.which("cc") and headers and openssl):
        pytest.fail("no C compiler, Python headers or OpenSSL headers: scripts/setup.sh installs them")
    assert compiled.COMPILED, compiled.describe()
    assert compiled.describe() == f"compiled (_aead; short packets: {compiled.short_path()})"
    assert compiled.WHY_NOT == ""
    assert compiled.Aead is not None and compiled.CompiledReplayWindow is not None
    assert compiled.CompiledReplayWindow is not esp.replay.ReplayWindow
    for kind in KINDS:
        out = EspSA(Direction.OUT, SPI, cipher(kind), esn=True)
        inb = EspSA(Direction.IN, SPI, cipher(kind), esn=True)
        assert isinstance(out.cipher.fast, compiled.Aead) and isinstance(inb.cipher.fast, compiled.Aead)
        assert type(inb.replay) is compiled.CompiledReplayWindow and inb.replay.esn
    cbc = EspCipher(12, 128, 12, bytes(16), bytes(32))
    assert cbc.fast is None  # AES-CBC + HMAC stays in Python


def test_the_reference_side_really_runs_python():
    fast, ref = sa_pair("aes-gcm-128", esn=False)
    out = EspSA(Direction.OUT, SPI, cipher("aes-gcm-128", pure=True))
    pkt = encapsulate(out, ipv4_packet(b"x" * 30), 4)
    assert outcome(fast, pkt) == outcome(ref, pkt) == (4, ipv4_packet(b"x" * 30))
    assert ref.cipher.open_packet.calls == 1
    same_sa(fast, ref)


def test_next_header_mask_and_verdicts():
    rnd = random.Random(1)
    for allowed in (frozenset(), TUNNEL_NEXT_HEADERS, frozenset(range(256)),
                    frozenset(rnd.sample(range(256), 40))):
        mask = compiled.next_header_mask(allowed)
        assert len(mask) == 32
        assert {n for n in range(256) if mask[n >> 3] >> (n & 7) & 1} == allowed
    assert set(compiled.VERDICTS) == set(range(1, 9))
    assert len(set(compiled.VERDICTS.values())) == 8


# ---- 2. seal

payload_lengths = st.one_of(st.integers(0, 1500), st.sampled_from([4096, 9000, 65531, 65532, 65533, 65534, 65535]))
seqs = st.one_of(st.sampled_from([0, 1, 2, M32 - 1, M32, 1 << 32, (1 << 32) + 1, 1 << 63, M64 - 1, M64]),
                 st.integers(0, M64), st.integers(0, M32))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(sorted(KINDS)), n=payload_lengths, seq=seqs, esn=st.booleans(),
       nh=st.integers(0, 255), spi=st.one_of(st.just(SPI), st.integers(0, M32)),
       rnd=st.randoms(use_true_random=False))
def test_seal_is_byte_for_byte_the_python_seal(kind, n, seq, esn, nh, spi, rnd):
    fast, ref = cipher(kind), cipher(kind, pure=True)
    payload = rnd.randbytes(n)
    assert fast.fast is not None
    c = fast.fast.seal(spi, seq, payload, nh, esn)
    assert type(c) is bytes
    assert c == ref.seal_packet(spi, seq, payload, nh, esn)
    assert c == esp_seal(ref, spi, seq, seq.to_bytes(8, "big"), payload, nh, esn=esn)
    assert fast.seal_packet(spi, seq, payload, nh, esn) == c  # EspCipher delegates to it
    assert fast.fast.seal(spi, seq, bytearray(payload), nh, esn) == c
    assert fast.fast.seal(spi, seq, memoryview(payload), nh, esn) == c
    assert fast.fast.seal(spi, seq, memoryview(b"--" + payload)[2:], nh, esn) == c
    assert len(c) == 8 + 8 + n + (-(n + 2) & 3) + 2 + 16


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("esn", [False, True])
def test_encapsulate_gives_the_python_bytes(kind, esn):
    fast = EspSA(Direction.OUT, SPI, cipher(kind), esn=esn)
    ref = EspSA(Direction.OUT, SPI, cipher(kind, pure=True), esn=esn)
    fast.seq = ref.seq = (1 << 32) - 3 if esn else 0
    rnd = random.Random(2)
    for _ in range(6):
        inner = ipv4_packet(rnd.randbytes(rnd.randrange(0, 200)))
        nh = rnd.choice([4, 41, 59, 17])
        assert encapsulate(fast, inner, nh) == encapsulate(ref, inner, nh)
    assert (fast.seq, fast.stats) == (ref.seq, ref.stats)


def test_seal_refuses_bad_arguments():
    a = cipher("aes-gcm-128").fast
    assert a is not None
    assert a.seal(M32, M64, b"", 255, True)  # the extremes are fine
    for args in [(M32 + 1, 1, b"", 4, False), (-1, 1, b"", 4, False), (SPI, -1, b"", 4, False),
                 (SPI, M64 + 1, b"", 4, False), (SPI, 1, b"", 256, False), (SPI, 1, b"", -1, False),
                 (SPI, 1, bytes(65536), 4, False)]:
        with pytest.raises(ValueError):
            a.seal(*args)
    for args in [(SPI, 1, "text", 4, False), (SPI, 1.0, b"", 4, False), (SPI, 1, b"", None, False),
                 ("1", 1, b"", 4, False)]:
        with pytest.raises(TypeError):
            a.seal(*args)
    with pytest.raises(TypeError):
        a.seal(SPI, 1, b"", 4)


def test_wrong_keys_are_refused_like_espcipher():
    assert compiled.Aead is not None
    for encr, bits, klen in [(20, 128, 19), (20, 128, 21), (20, 192, 27), (20, 256, 35), (20, 256, 37),
                             (28, 256, 35), (28, 256, 20), (20, 128, 0), (12, 128, 20), (0, 128, 20)]:
        with pytest.raises(ValueError):
            compiled.Aead(encr, bytes(klen))
        with pytest.raises(ValueError):
            EspCipher(encr, bits, None, bytes(klen))
    with pytest.raises(TypeError):
        compiled.Aead(20, "x" * 20)
    for kind in KINDS:  # every valid length is accepted
        assert not compiled.Aead(KINDS[kind][0], key_of(kind)).wiped


def test_wipe():
    c = cipher("chacha20-poly1305")
    a = c.fast
    assert a is not None and not a.wiped and repr(a) == "Aead(keyed)"
    r = compiled.CompiledReplayWindow(64)
    assert a.decapsulate(b"\0" * 40, SPI, r, bytes(32)) == 2  # SPI mismatch while keyed
    c.wipe()
    assert c.fast is None and c.wiped and a.wiped and repr(a) == "Aead(wiped)"
    with pytest.raises(ValueError):
        a.seal(SPI, 1, b"", 4, False)
    assert compiled.VERDICTS[a.decapsulate(b"\0" * 40, SPI, r, bytes(32))] is DropReason.SA_DEAD
    a.wipe()  # twice is harmless
    assert a.wiped
    with pytest.raises(EspError) as e:
        c.seal_packet(SPI, 1, b"", 4, False)
    assert e.value.reason is DropReason.SA_DEAD
    fast, ref = sa_pair("aes-gcm-256", esn=False)
    fast.wipe()
    ref.wipe()
    assert outcome(fast, b"\0" * 60) is outcome(ref, b"\0" * 60) is DropReason.SA_DEAD
    same_sa(fast, ref)


def test_decapsulate_refuses_bad_arguments():
    a = cipher("aes-gcm-128").fast
    assert a is not None
    r = compiled.CompiledReplayWindow(64)
    with pytest.raises(TypeError):
        a.decapsulate(b"\0" * 40, SPI, esp.replay.ReplayWindow(64), bytes(32))
    with pytest.raises(ValueError):
        a.decapsulate(b"\0" * 40, SPI, r, bytes(31))
    with pytest.raises(ValueError):
        a.decapsulate(b"\0" * 40, M32 + 1, r, bytes(32))
    with pytest.raises(TypeError):
        a.decapsulate("x" * 40, SPI, r, bytes(32))
    with pytest.raises(TypeError):
        a.decapsulate(b"\0" * 40, SPI, r)


# ---- 3. decapsulate, side by side

def crafted(ref_out: EspCipher, seq: int, esn: bool, plaintext: bytes, spi: int = SPI) -> bytes:
    """An ESP packet around an arbitrary 4-byte aligned plaintext (any trailer)."""
    header = struct.pack("!II", spi, seq & M32)
    seq_hi = (seq >> 32).to_bytes(4, "big") if esn else b""
    return header + ref_out.seal(header, seq.to_bytes(8, "big"), plaintext, seq_hi)


CONTENTS = ["ipv4", "ipv6", "ipv4-tfc", "ipv6-tfc", "ipv4-bent", "ipv6-bent", "short", "dummy", "other", "raw",
            "raw-padded", "empty"]
MUTATIONS = ["none"] * 6 + ["flip", "truncate", "extend", "spi", "seqfield", "garbage"]


def make_packet(rnd: random.Random, ref_out: EspCipher, seq: int, esn: bool) -> bytes:
    """One sealed packet (valid padding or not) of a randomly chosen content kind."""
    kind = rnd.choice(CONTENTS)
    body = rnd.randbytes(rnd.choice([0, 1, 2, 3, rnd.randrange(0, 120)]))
    if kind == "raw":  # any trailer: mostly bad padding
        return crafted(ref_out, seq, esn, rnd.randbytes(4 * rnd.randrange(1, 12)))
    if kind == "raw-padded":  # a correct padding of any length (up to 255) before the trailer
        pad = rnd.randrange(0, 256)
        pt = body + bytes(range(1, pad + 1)) + bytes((pad, rnd.choice([4, 41, 17, 59, rnd.randrange(256)])))
        pt += bytes(-len(pt) & 3)  # (then the padding is not where the trailer says: refused)
        if rnd.random() < 0.5:
            pt = rnd.randbytes(-(len(body) + pad + 2) & 3) + pt[:len(body) + pad + 2]
        return crafted(ref_out, seq, esn, pt)
    if kind in ("ipv4", "ipv4-tfc", "ipv4-bent"):
        payload, nh = ipv4_packet(body), 4
    elif kind in ("ipv6", "ipv6-tfc", "ipv6-bent"):
        payload, nh = ipv6_packet(body), 41
    elif kind == "short":
        payload, nh = rnd.randbytes(rnd.randrange(0, 45)), rnd.choice([4, 41])
        if payload and rnd.random() < 0.7:
            payload = bytes((rnd.choice([0x45, 0x46, 0x4F, 0x44, 0x60]),)) + payload[1:]
    elif kind == "dummy":
        payload, nh = body, 59
    elif kind == "empty":
        payload, nh = b"", rnd.choice([4, 41, 17, 59])
    else:
        payload, nh = body, rnd.randrange(256)
    if kind.endswith("-tfc"):
        payload += rnd.randbytes(rnd.randrange(1, 40))
    if kind.endswith("-bent"):
        b = bytearray(payload)
        for _ in range(rnd.randrange(1, 3)):
            b[rnd.randrange(0, 8 if nh == 41 else 20)] = rnd.randrange(256)
        payload = bytes(b)
    return esp_seal(ref_out, SPI, seq, seq.to_bytes(8, "big"), payload, nh, esn=esn)


def mutate(rnd: random.Random, pkt: bytes) -> bytes:
    how = rnd.choice(MUTATIONS)
    b = bytearray(pkt)
    if how == "flip" and b:  # header, IV, ciphertext or tag
        b[rnd.randrange(len(b))] ^= rnd.randrange(1, 256)
    elif how == "truncate":
        del b[rnd.randrange(len(b)):]
    elif how == "extend":
        b += rnd.randbytes(rnd.randrange(1, 9))
    elif how == "spi":
        b[:4] = rnd.randrange(M32 + 1).to_bytes(4, "big")
    elif how == "seqfield":
        b[4:8] = rnd.randrange(M32 + 1).to_bytes(4, "big")
    elif how == "garbage":
        return rnd.randbytes(rnd.choice([0, 4, 7, 8, 33, 34, 35, 36, 40, rnd.randrange(100)]))
    return bytes(b)


def next_seq(rnd: random.Random, top: int, sent: list[int], window: int, esn: bool) -> int:
    mx = M64 if esn else M32
    mode = rnd.choice(["next", "next", "next", "replay", "old", "edge", "jump", "wrap", "any"])
    if mode == "replay" and sent:
        seq = rnd.choice(sent)
    elif mode == "old":
        seq = top - window - rnd.randrange(0, 50)
    elif mode == "edge":
        seq = top - window + rnd.randrange(-2, 4)
    elif mode == "jump":
        seq = top + rnd.randrange(1, 3 * window)
    elif mode == "wrap":
        seq = ((top >> 32) + rnd.choice([0, 1])) * (1 << 32) + rnd.randrange(-window - 5, window + 5)
    elif mode == "any":
        seq = rnd.randrange(0, mx + 1)
    else:
        seq = top + rnd.randrange(1, 4)
    return min(max(seq, 0), mx)


ALLOWED = [TUNNEL_NEXT_HEADERS, frozenset({4, 41, 6, 17}), frozenset(range(256)), frozenset({17}), frozenset()]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(sorted(KINDS)), esn=st.booleans(), window=st.sampled_from([32, 64, 1024]),
       allowed=st.sampled_from(ALLOWED), start=st.sampled_from(["zero", "low", "wrap", "high"]),
       steps=st.integers(1, 40), rnd=st.randoms(use_true_random=False))
def test_decapsulate_agrees_on_random_packet_streams(kind, esn, window, allowed, start, steps, rnd):
    fast, ref = sa_pair(kind, esn=esn, window=window, allowed=allowed)
    ref_out = cipher(kind, pure=True)
    top = {"zero": 0, "low": 1000, "wrap": (1 << 32) - window // 2, "high": M32 - 5}[start]
    if esn and start == "high":
        top = (7 << 32) + M32 - 5
    fast.replay.top = ref.replay.top = top
    sent: list[int] = []
    for _ in range(steps):
        seq = next_seq(rnd, ref.replay.top, sent, window, esn)
        pkt = mutate(rnd, make_packet(rnd, ref_out, seq, esn))
        sent.append(seq)
        want = outcome(ref, pkt)
        got = outcome(fast, bytearray(pkt) if rnd.random() < 0.1 else pkt)
        assert got == want, (pkt.hex(), seq)
        same_sa(fast, ref, full=False)
    same_sa(fast, ref)


def _one(kind: str, esn: bool, top: int, pkt_of: Callable[[EspCipher], bytes],
         allowed: frozenset[int] = TUNNEL_NEXT_HEADERS) -> tuple[int, bytes] | DropReason:
    fast, ref = sa_pair(kind, esn=esn, window=64, allowed=allowed)
    fast.replay.top = ref.replay.top = top  # type: ignore[union-attr]
    pkt = pkt_of(cipher(kind, pure=True))
    want = outcome(ref, pkt)
    assert outcome(fast, pkt) == want
    same_sa(fast, ref)
    return want


def seal(seq: int, payload: bytes, nh: int, esn: bool = False) -> Callable[[EspCipher], bytes]:
    return lambda c: esp_seal(c, SPI, seq, seq.to_bytes(8, "big"), payload, nh, esn=esn)


def raw(seq: int, plaintext: bytes, esn: bool = False) -> Callable[[EspCipher], bytes]:
    return lambda c: crafted(c, seq, esn, plaintext)


V4, V6 = ipv4_packet(b"abcdefgh"), ipv6_packet(b"abcdefgh")


def _bent(pkt: bytes, at: int, value: bytes) -> bytes:
    return pkt[:at] + value + pkt[at + len(value):]


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize(("case", "esn", "top", "pkt_of", "want"), [
    ("v4", False, 0, seal(1, V4, 4), (4, V4)),
    ("v6", False, 0, seal(1, V6, 41), (41, V6)),
    ("v4+tfc", False, 5, seal(6, V4 + bytes(13), 4), (4, V4)),
    ("v6+tfc", False, 5, seal(6, V6 + b"\xff" * 7, 41), (41, V6)),
    ("v4 total length too big", False, 0, seal(1, _bent(V4, 2, b"\x00\x40"), 4), DropReason.MALFORMED),
    ("v4 total length below IHL", False, 0, seal(1, _bent(V4, 2, b"\x00\x13"), 4), DropReason.MALFORMED),
    ("v4 IHL 4", False, 0, seal(1, _bent(V4, 0, b"\x44"), 4), DropReason.MALFORMED),
    ("v4 IHL 15", False, 0, seal(1, _bent(V4, 0, b"\x4f"), 4), DropReason.MALFORMED),
    ("v4 short", False, 0, seal(1, V4[:19], 4), DropReason.MALFORMED),
    ("v6 in nh 4", False, 0, seal(1, V6, 4), DropReason.MALFORMED),
    ("v4 in nh 41", False, 0, seal(1, V4, 41), DropReason.MALFORMED),
    ("v6 short", False, 0, seal(1, V6[:39], 41), DropReason.MALFORMED),
    ("v6 payload length too big", False, 0, seal(1, _bent(V6, 4, b"\x00\x09"), 41), DropReason.MALFORMED),
    ("v6 jumbogram", False, 0, seal(1, _bent(V6, 4, b"\x00\x00"), 41), DropReason.MALFORMED),
    ("v6 header only", False, 0, seal(1, _bent(V6, 4, b"\x00\x00")[:40], 41), (41, _bent(V6, 4, b"\x00\x00")[:40])),
    ("empty nh 4", False, 0, seal(1, b"", 4), DropReason.MALFORMED),
    ("empty nh 41", False, 0, seal(1, b"", 41), DropReason.MALFORMED),
    ("dummy", False, 0, seal(1, b"xyz", 59), DropReason.DUMMY),
    ("disallowed nh", False, 0, seal(1, V4, 17), DropReason.BAD_NEXT_HEADER),
    ("bad padding bytes", False, 0, raw(1, V4 + b"\x01\x03\x02\x04"), DropReason.BAD_PADDING),
    ("pad length too long", False, 0, raw(1, b"\x01\x02\xff\x04"), DropReason.BAD_PADDING),
    ("pad length exactly fills", False, 0, raw(1, b"\x01\x02\x02\x3b"), DropReason.DUMMY),
    ("max padding", False, 0, raw(1, V4 + bytes(range(1, 255)) + b"\xfe\x04"), (4, V4)),
    ("seq 0", False, 0, seal(0, V4, 4), DropReason.REPLAY),
    ("too old", False, 1000, seal(1000 - 64, V4, 4), DropReason.REPLAY),
    ("oldest in window", False, 1000, seal(1000 - 63, V4, 4), (4, V4)),
    ("far jump", False, 3, seal(M32, V4, 4), (4, V4)),
    ("wrong SPI", False, 0, lambda c: esp_seal(c, SPI + 1, 1, (1).to_bytes(8, "big"), V4, 4), DropReason.SPI_MISMATCH),
    ("header only", False, 0, lambda c: seal(1, V4, 4)(c)[:8], DropReason.MALFORMED),
    ("seven bytes", False, 0, lambda c: seal(1, V4, 4)(c)[:7], DropReason.MALFORMED),
    ("one short of the minimum", False, 0, lambda c: seal(1, V4, 4)(c)[:33], DropReason.MALFORMED),
    ("misaligned", False, 0, lambda c: seal(1, V4, 4)(c)[:-1], DropReason.MALFORMED),
    ("misaligned replay", False, 100, lambda c: seal(1, V4, 4)(c)[:-1], DropReason.REPLAY),
    ("tag", False, 0, lambda c: seal(1, V4, 4)(c)[:-1] + b"\0", DropReason.AUTH_FAILED),
    ("IV", False, 0, lambda c: _bent(seal(1, V4, 4)(c), 9, b"\x99"), DropReason.AUTH_FAILED),
    ("ciphertext", False, 0, lambda c: _bent(seal(1, V4, 4)(c), 20, b"\x99"), DropReason.AUTH_FAILED),
    ("seq field", False, 0, lambda c: _bent(seal(1, V4, 4)(c), 7, b"\x02"), DropReason.AUTH_FAILED),
    ("esn next subspace", True, (1 << 32) - 10, seal((1 << 32) + 5, V4, 4, True), (4, V4)),
    ("esn previous subspace", True, (1 << 32) + 10, seal((1 << 32) - 20, V4, 4, True), (4, V4)),
    ("esn sealed without high bits", True, (1 << 32) - 10, seal((1 << 32) + 5, V4, 4, False), DropReason.AUTH_FAILED),
    ("esn too old", True, (1 << 32) + 10, seal((1 << 32) - 60, V4, 4, True), DropReason.AUTH_FAILED),
    ("esn last subspace", True, M64 - 3, seal(M64, V4, 4, True), (4, V4)),
    ("esn beyond 2^64", True, M64 - 3, seal(M64 - 200, V4, 4, True), DropReason.REPLAY),
    ("esn start", True, 5, seal(M32 - 3, V4, 4, True), (4, V4)),
])
def test_decapsulate_cases(kind, case, esn, top, pkt_of, want):
    assert _one(kind, esn, top, pkt_of) == want


@pytest.mark.parametrize("esn", [False, True])
def test_replays_and_old_packets(esn):
    base = (1 << 32) - 40 if esn else 0
    order = [1, 2, 2, 1, 50, 5, 6, 7, 50, 6, 100, 40, 37, 36, 35, 101, 1]
    fast, ref = sa_pair("chacha20-poly1305", esn=esn, window=64)
    fast.replay.top = ref.replay.top = base
    c = cipher("chacha20-poly1305", pure=True)
    got = []
    for s in order:
        pkt = seal(base + s, V4, 4, esn)(c)
        want = outcome(ref, pkt)
        assert outcome(fast, pkt) == want
        same_sa(fast, ref)
        got.append(want if isinstance(want, DropReason) else "ok")
    r = DropReason.REPLAY
    old = DropReason.AUTH_FAILED if esn else r  # with ESN, too old for the window: read as the next subspace
    assert got == ["ok", "ok", r, r, "ok", "ok", "ok", "ok", r, r, "ok", "ok", "ok", old, old, "ok", old]


def test_decapsulate_with_every_next_header_allowed():
    for nh in range(256):
        got = _one("aes-gcm-128", False, 0, seal(1, b"payload", nh), frozenset(range(256)))
        if nh == 59:
            assert got is DropReason.DUMMY
        elif nh in (4, 41):
            assert got is DropReason.MALFORMED
        else:
            assert got == (nh, b"payload")


@pytest.mark.parametrize("n", [65530, 65531, 65532, 65534, 65535, 65536, 70001, 200000])
def test_the_largest_payloads_open_both_ways(n):
    """Payloads up to 65535 bytes (what Aead.seal accepts) come back out of decapsulate, and so
    do bigger ones the Python code sealed (no UDP datagram carries them, but the answers agree)."""
    payload = bytes(range(256)) * (n // 256) + bytes(n % 256)
    assert _one("aes-gcm-128", False, 0, seal(1, payload, 17), frozenset({17})) == (17, payload)


@pytest.mark.parametrize("n", [65568, 65572, 65576, 65600, 100000])
def test_big_unauthentic_packets(n):
    forged = struct.pack("!II", SPI, 1) + bytes(n - 8)
    assert _one("chacha20-poly1305", False, 0, lambda c: forged) is DropReason.AUTH_FAILED
    assert _one("aes-gcm-256", True, 0, lambda c: forged[:-1]) is DropReason.MALFORMED


# ---- 4. the replay window

SEQ_POINTS = [0, 1, 2, 31, 32, 33, 63, 64, 65, 1023, 1024, 1025, 4095, 4096, 4097, 1 << 31, M32 - 4096, M32 - 33,
              M32 - 1, M32, 1 << 32, (1 << 32) + 1, (1 << 32) + 31, (1 << 32) + 1024, (5 << 32) + 7, 1 << 63,
              M64 - 4097, M64 - 1025, M64 - 33, M64 - 1, M64, M64 + 1, -1, -(1 << 70), 1 << 70]


def _call(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", fn()
    except (ValueError, TypeError) as e:
        return type(e).__name__, None


@settings(max_examples=300, deadline=None)
@given(size=st.sampled_from([32, 33, 64, 1024, 4096]), esn=st.booleans(), data=st.data())
def test_replay_window_is_the_python_one(size, esn, data):
    c = compiled.CompiledReplayWindow(size, esn=esn)
    p = esp.replay.ReplayWindow(size, esn=esn)
    same_window(c, p)
    mx = M64 if esn else M32
    for _ in range(data.draw(st.integers(1, 60))):
        op = data.draw(st.sampled_from(["check", "update", "update", "update", "infer", "infer", "top"]))
        top = p.top
        if op == "infer":
            tl = top & M32
            low = data.draw(st.one_of(st.sampled_from([0, 1, M32, size - 1, size, (tl - size + 1) & M32,
                                                       (tl - size) & M32, (tl - size + 2) & M32, tl, (tl + 1) & M32]),
                                      st.integers(0, M32)))
            assert _call(partial(c.infer_seq, low)) == _call(partial(p.infer_seq, low)), (low, repr(p))
            full = p.infer_seq(low)
            assert c.check(full) == p.check(full)
            continue
        seq = data.draw(st.one_of(st.sampled_from(SEQ_POINTS), st.integers(top - size - 40, top + 3 * size),
                                  st.integers(0, mx)))
        if op == "top":
            seq = min(max(seq, 0), mx)
            c.top = p.top = seq
        elif op == "check":
            assert c.check(seq) == p.check(seq), seq
        else:
            assert _call(partial(c.update, seq)) == _call(partial(p.update, seq)), seq
        same_window(c, p, full=False)
    same_window(c, p)


def test_replay_window_bottom_near_the_top_of_the_64_bit_space():
    for top in (1 << 63, (1 << 63) + 1024, M64 - 1024, M64):
        c, p = compiled.CompiledReplayWindow(1024, esn=True), esp.replay.ReplayWindow(1024, esn=True)
        c.top = p.top = top
        assert c.bottom == p.bottom == top - 1023


def test_replay_window_constructor_errors_are_the_python_ones():
    cw = compiled.CompiledReplayWindow
    assert cw is not None
    for size in (31, 0, -1, -(1 << 70), M32, (1 << 32) - 31, 1 << 32, 1 << 70):
        with pytest.raises(ValueError) as ec:
            cw(size)
        with pytest.raises(ValueError) as ep:
            esp.replay.ReplayWindow(size)
        assert str(ec.value) == str(ep.value), size
    for size in ("64", None, 64.0, [64]):
        with pytest.raises(TypeError):
            cw(size)
        with pytest.raises(TypeError):
            esp.replay.ReplayWindow(size)
    with pytest.raises(TypeError):
        cw(64, True)
    with pytest.raises(TypeError):
        esp.replay.ReplayWindow(64, True)
    for size in (True, False):  # a bool is an int below 32 to both
        with pytest.raises(ValueError):
            cw(size)
        with pytest.raises(ValueError):
            esp.replay.ReplayWindow(size)
    for size, esn in ((32, False), (33, True), (1000, False), (M32 - 31, False)):
        if size > 1 << 20:
            continue  # (the Python bitmap of a 2^32 window takes gigabytes)
        same_window(cw(size, esn=esn), esp.replay.ReplayWindow(size, esn=esn))
    assert cw().size == esp.replay.ReplayWindow().size == 1024


# ---- 5. the environment switch

_PURE_SCRIPT = """
import json
import esp.compiled, esp.replay
from esp import Direction, EspCipher, EspSA, decapsulate, encapsulate
out = EspSA(Direction.OUT, 0xC0FFEE01, EspCipher(20, 128, None, bytes(range(20))), esn=True)
inb = EspSA(Direction.IN, 0xC0FFEE01, EspCipher(20, 128, None, bytes(range(20))), esn=True)
out.seq = (1 << 32) - 2
pkts = [encapsulate(out, bytes([0x45]) + bytes(range(19)), 17) for _ in range(3)]
inb.allowed_next_headers = frozenset({17})
inb.nh_mask = esp.compiled.next_header_mask(inb.allowed_next_headers)
inb.replay.top = (1 << 32) - 2
print(json.dumps({"compiled": esp.compiled.COMPILED, "why": esp.compiled.WHY_NOT,
                  "fast": [out.cipher.fast is None, inb.cipher.fast is None],
                  "window": type(inb.replay) is esp.replay.ReplayWindow,
                  "pkts": [p.hex() for p in pkts], "inner": [decapsulate(inb, p)[1].hex() for p in pkts],
                  "top": inb.replay.top}))
"""


def test_vpn_gw_pure_python_switches_to_the_python_path():
    import os
    env = dict(os.environ, VPN_GW_PURE_PYTHON="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", _PURE_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["compiled"] is False and got["why"] == "VPN_GW_PURE_PYTHON is set"
    assert got["fast"] == [True, True] and got["window"] is True
    inner = (bytes([0x45]) + bytes(range(19))).hex()
    assert got["inner"] == [inner] * 3 and got["top"] == (1 << 32) + 1
    # the same packets as the compiled path seals here
    out = EspSA(Direction.OUT, SPI, EspCipher(20, 128, None, bytes(range(20))), esn=True)
    assert out.cipher.fast is not None
    out.seq = (1 << 32) - 2
    assert [encapsulate(out, bytes.fromhex(inner), 17).hex() for _ in range(3)] == got["pkts"]


def test_load_optional_says_why_a_module_is_not_used(monkeypatch):
    """The one rule for both compiled modules (esp/compiled.py, vpn_gw/accel): missing, stale
    (another ABI) or switched off by VPN_GW_PURE_PYTHON, each with its reason."""
    module, why = compiled.load_optional("esp._no_such_module", 1)
    assert module is None and why.startswith("not built (")
    module, why = compiled.load_optional("esp._aead", compiled.ABI + 1)
    assert module is None and why == f"stale build (ABI {compiled.ABI}, want {compiled.ABI + 1})"
    monkeypatch.setenv("VPN_GW_PURE_PYTHON", "1")
    assert compiled.load_optional("esp._aead", compiled.ABI) == (None, "VPN_GW_PURE_PYTHON is set")
    monkeypatch.delenv("VPN_GW_PURE_PYTHON")
    from vpn_gw import accel
    module, why = compiled.load_optional("vpn_gw.accel._accel", accel.ABI)
    assert module is not None and why == ""


def test_changing_the_allowed_next_headers_reaches_the_compiled_path():
    out = EspSA(Direction.OUT, SPI, cipher("aes-gcm-256"))
    inb = EspSA(Direction.IN, SPI, cipher("aes-gcm-256"))
    inner = ipv4_packet(b"payload")
    inb.allowed_next_headers = frozenset({17})
    with pytest.raises(EspError) as e:
        decapsulate(inb, encapsulate(out, inner, 4))
    assert e.value.reason is DropReason.BAD_NEXT_HEADER
    inb.allowed_next_headers = frozenset({4})
    assert decapsulate(inb, encapsulate(out, inner, 4)) == (4, inner)


# ---- decapsulate_many: a run of packets of one SA in one call


def _partition(outcomes: list, in4: tuple[int, int, int, int] | None) -> tuple[list, list, int]:
    """What decapsulate_many must return, from the reference SA's per-packet outcomes."""
    checked, unchecked, policy = [], [], 0
    for o in outcomes:
        if isinstance(o, DropReason):
            continue
        inner = o[1]
        if in4 is not None and len(inner) >= 20 and inner[0] >> 4 == 4:
            src, dst = struct.unpack_from("!II", inner, 12)
            if in4[0] <= src <= in4[1] and in4[2] <= dst <= in4[3]:
                checked.append(inner)
            else:
                policy += 1
        else:
            unchecked.append(inner)
    return checked, unchecked, policy


IN4S = [None, (0, M32, 0, M32), (0x0A000000, 0x0AFFFFFF, 0, M32), (0, 0x7FFFFFFF, 0x80000000, M32), (5, 4, 0, M32)]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(sorted(KINDS)), esn=st.booleans(), window=st.sampled_from([32, 64, 1024]),
       allowed=st.sampled_from(ALLOWED), in4=st.sampled_from(IN4S), steps=st.integers(1, 40),
       rnd=st.randoms(use_true_random=False))
def test_decapsulate_many_agrees_with_decapsulate_packet_by_packet(kind, esn, window, allowed, in4, steps, rnd):
    """The same random streams as above (replays, old and jumping sequence numbers, bad
    padding, dummies, mutations), each as one run: the compiled call gives the inner packets
    the per-packet reference delivers, split by the IPv4 selector check, and leaves the SA in
    the same state (counters by reason, anti-replay window)."""
    from esp.packet import decapsulate_many
    fast, ref = sa_pair(kind, esn=esn, window=window, allowed=allowed)
    ref_out = cipher(kind, pure=True)
    fast.replay.top = ref.replay.top = 1000
    sent: list[int] = []
    pkts = []
    for _ in range(steps):
        seq = next_seq(rnd, ref.replay.top, sent, window, esn)
        sent.append(seq)
        pkts.append(mutate(rnd, make_packet(rnd, ref_out, seq, esn)))
    want = _partition([outcome(ref, p) for p in pkts], in4)
    checked, unchecked, policy, opened = decapsulate_many(fast, pkts, in4)
    assert (checked, unchecked, policy) == want
    assert opened == ref.stats.packets
    same_sa(fast, ref)


def test_decapsulate_many_takes_the_per_packet_path_when_a_check_needs_it():
    """A hard volume limit (checked per packet), a wiped SA, the pure-Python SA: packet by
    packet, everything unchecked, the same counters as decapsulate."""
    from esp.packet import decapsulate_many
    out = EspSA(Direction.OUT, SPI, cipher("aes-gcm-256"))
    inner = ipv4_packet(b"x" * 30)
    pkts = [encapsulate(out, inner, 4) for _ in range(5)]
    limited = EspSA(Direction.IN, SPI, cipher("aes-gcm-256"), lifetime=esp.Lifetime(hard_packets=3))
    checked, unchecked, policy, opened = decapsulate_many(limited, pkts, (0, M32, 0, M32))
    assert (checked, unchecked, policy, opened) == ([], [inner] * 3, 0, 3)
    assert limited.stats.drops[DropReason.LIFETIME_EXPIRED] == 2
    pure = EspSA(Direction.IN, SPI, cipher("aes-gcm-256", pure=True))
    pure.replay = esp.replay.ReplayWindow(1024)
    assert decapsulate_many(pure, pkts + pkts[:1], None) == ([], [inner] * 5, 0, 5)
    assert pure.stats.drops[DropReason.REPLAY] == 1
    dead = EspSA(Direction.IN, SPI, cipher("aes-gcm-256"))
    dead.wipe()
    assert decapsulate_many(dead, pkts, None) == ([], [], 0, 0)
    assert dead.stats.drops[DropReason.SA_DEAD] == 5
    with pytest.raises(ValueError):
        decapsulate_many(out, pkts)


def test_decapsulate_many_refuses_bad_arguments():
    a = cipher("aes-gcm-128").fast
    assert a is not None
    r = compiled.CompiledReplayWindow(64)
    for args, exc in [((b"\0" * 40,), TypeError),  # not a list
                      (([bytearray(40)],), TypeError),  # not bytes
                      (([b"\0" * 40], SPI, r, bytes(32), (1, 2, 3)), TypeError),  # in4 of 3
                      (([b"\0" * 40], SPI, r, bytes(32), (1, 2, 3, -1)), OverflowError),
                      (([b"\0" * 40], SPI, esp.replay.ReplayWindow(64), bytes(32), None), TypeError),
                      (([b"\0" * 40], M32 + 1, r, bytes(32), None), ValueError)]:
        full = args if len(args) == 5 else (args[0], SPI, r, bytes(32), None)
        with pytest.raises(exc):
            a.decapsulate_many(*full)
    assert a.decapsulate_many([], SPI, r, bytes(32), None) == ([], [], 0, 0, 0, [])
