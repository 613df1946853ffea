"""atheris harness for the compiled AEAD ESP path (esp/_aead.c, esp/compiled.py) against the
pure-Python path it replaces (esp/packet.py, esp/cipher.py, esp/replay.py): for every input the
C and the Python answers must be equal, and nothing but the documented results may come out.

From the input: the cipher (AES-GCM-16 128/192/256, ChaCha20-Poly1305), ESN, window size,
allowed next headers, the key and the window's starting top; then a sequence of operations on
a compiled inbound SA and a pure-Python one with that key, side by side:

* raw bytes (with or without the SA's SPI in front) fed to both ``decapsulate``;
* a packet sealed by both ``Aead.seal`` and the Python ``seal_packet`` (the bytes must be
  equal), at a sequence number near the window, then bent (a byte flipped anywhere, truncated,
  extended) and fed to both;
* a packet around an arbitrary plaintext (any padding and next header) sealed by the Python
  cipher, bent and fed to both;
* moving ``top`` of both windows;
* a run of 2-9 packets (as the data plane hands them over: ChaCha20-Poly1305 four at a time):
  ``Aead.seal_many`` of inner packets against the Python ``seal_packet`` of each, then the
  packets bent and fed to ``decapsulate_many`` (one compiled call) against the Python
  ``decapsulate`` of each in order: the same inner packets, counters and window.

After each packet: the same (next header, inner) or the same DropReason, the same counters, the
same window (top, bottom, repr); at the end the same ``check()`` answers around the window.

The C code is not instrumented (libFuzzer's coverage comes from the Python side it is compared
with).

Run: .venv/bin/python tests/fuzz/fuzz_esp_compiled.py [libFuzzer flags] [CORPUS_DIR ...]
(bench/fuzz_harnesses.py runs it for longer.)
"""
from __future__ import annotations

import struct
import sys
from typing import Any

import atheris

with atheris.instrument_imports():
    from esp import replay as pure_replay
    from esp.cipher import EspCipher
    from esp.errors import DropReason, EspError
    from esp.packet import decapsulate, decapsulate_many
    from esp.sa import Direction, EspSA

from esp import compiled

SPI = 0xC0FFEE01
M32 = (1 << 32) - 1
M64 = (1 << 64) - 1
KINDS = [(20, 128), (20, 192), (20, 256), (28, 256)]  # encr id, key bits
ALLOWED = [frozenset({4, 41}), frozenset({4, 41, 6, 17}), frozenset(range(256)), frozenset({17}), frozenset()]

if not compiled.COMPILED:
    sys.exit(f"the compiled ESP path is not in use: {compiled.describe()}")


def _outcome(sa: EspSA, pkt: bytes) -> tuple[int, bytes] | DropReason:
    try:
        nh, inner = decapsulate(sa, pkt)
    except EspError as e:
        if not isinstance(e.reason, DropReason):
            raise AssertionError(f"not a DropReason: {e.reason!r}") from None
        return e.reason
    if type(inner) is not bytes or type(nh) is not int:
        raise AssertionError(f"decapsulate returned {type(nh)}, {type(inner)}")
    return nh, inner


def _window(w: Any) -> tuple[int, int, int, bool, str]:
    return w.top, w.bottom, w.size, w.esn, repr(w)


def _compare(fast: EspSA, ref: EspSA, what: str) -> None:
    a, b = fast.stats, ref.stats
    if (a.packets, a.bytes, a.drops) != (b.packets, b.bytes, b.drops):
        raise AssertionError(f"{what}: counters differ: {a} vs {b}")
    if _window(fast.replay) != _window(ref.replay):
        raise AssertionError(f"{what}: windows differ: {_window(fast.replay)} vs {_window(ref.replay)}")


def _bend(fdp: atheris.FuzzedDataProvider, pkt: bytes) -> bytes:
    b = bytearray(pkt)
    how = fdp.ConsumeIntInRange(0, 5)
    if how == 1 and b:  # flip a byte anywhere: header, IV, ciphertext, tag
        b[fdp.ConsumeIntInRange(0, len(b) - 1)] ^= fdp.ConsumeIntInRange(1, 255)
    elif how == 2 and b:
        del b[fdp.ConsumeIntInRange(0, len(b) - 1):]
    elif how == 3:
        b += fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 8))
    elif how == 4 and len(b) >= 8:
        b[4:8] = fdp.ConsumeIntInRange(0, M32).to_bytes(4, "big")
    return bytes(b)  # 0, 5: unchanged


def _seq(fdp: atheris.FuzzedDataProvider, top: int, window: int, mx: int) -> int:
    mode = fdp.ConsumeIntInRange(0, 3)
    if mode == 0:
        seq = top + fdp.ConsumeIntInRange(-window - 8, 2 * window)
    elif mode == 1:  # around a 2^32 boundary
        seq = ((top >> 32) + fdp.ConsumeIntInRange(0, 1) << 32) + fdp.ConsumeIntInRange(-window - 8, window + 8)
    elif mode == 2:
        seq = top + 1
    else:
        seq = fdp.ConsumeIntInRange(0, mx)
    return min(max(seq, 0), mx)


def _run(fdp: atheris.FuzzedDataProvider, fast: EspSA, ref: EspSA, out: EspCipher, sealer: Any, esn: bool,
         window: int, mx: int, step: int) -> None:
    """One run: sealed together (compiled) and one by one (Python), opened together (compiled)
    and one by one (Python)."""
    count = fdp.ConsumeIntInRange(2, 9)
    first = _seq(fdp, ref.replay.top, window, max(mx - count, 0))
    inners = []
    for _ in range(count):
        body = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 700))
        inners.append(bytes([fdp.PickValueInList([0x45, 0x60, 0x00])]) + body)
    sealed, total = sealer.seal_many(SPI, first, inners, esn)
    want = [out.seal_packet(SPI, first + i, p, 4 if p[0] >> 4 == 4 else 41, esn) for i, p in enumerate(inners)]
    if sealed != want or total != sum(map(len, inners)):
        raise AssertionError(f"step {step}: seal_many differs from seal_packet (first {first}, esn {esn}, "
                             f"sizes {[len(p) for p in inners]})")
    pkts = [_bend(fdp, p) for p in sealed]
    outcomes = [_outcome(ref, p) for p in pkts]
    checked, unchecked, policy, opened = decapsulate_many(fast, pkts, None)
    delivered = [o[1] for o in outcomes if not isinstance(o, DropReason)]
    if checked or policy or unchecked != delivered or opened != len(delivered):
        raise AssertionError(f"step {step}: decapsulate_many differs on {[p.hex() for p in pkts]}: C "
                             f"{len(unchecked)} delivered, Python {outcomes!r}")
    _compare(fast, ref, f"step {step} (run)")


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    encr, bits = KINDS[fdp.ConsumeIntInRange(0, len(KINDS) - 1)]
    esn = fdp.ConsumeBool()
    window = fdp.PickValueInList([32, 64, 1024])
    allowed = ALLOWED[fdp.ConsumeIntInRange(0, len(ALLOWED) - 1)]
    key = fdp.ConsumeBytes(bits // 8 + 4).ljust(bits // 8 + 4, b"\x5a")
    mx = M64 if esn else M32
    top = fdp.PickValueInList([0, 0, 1000, (1 << 32) - window // 2, M32 - 5, (7 << 32) - 3, M64 - 5,
                               fdp.ConsumeIntInRange(0, mx)])
    top = min(top, mx)

    fast = EspSA(Direction.IN, SPI, EspCipher(encr, bits, None, key), esn=esn, replay_window=window,
                 allowed_next_headers=allowed)
    ref = EspSA(Direction.IN, SPI, EspCipher(encr, bits, None, key), esn=esn, replay_window=window,
                allowed_next_headers=allowed)
    ref.cipher.fast = None  # the pure-Python reference
    ref.replay = pure_replay.ReplayWindow(window, esn=esn)
    out = EspCipher(encr, bits, None, key)
    sealer = out.fast
    out.fast = None  # seal_packet below runs the Python code
    if fast.cipher.fast is None or type(fast.replay) is not compiled.CompiledReplayWindow or sealer is None:
        raise AssertionError("the compiled path is not in use")
    assert fast.replay is not None and ref.replay is not None
    fast.replay.top = ref.replay.top = top

    for step in range(fdp.ConsumeIntInRange(1, 12)):
        if not fdp.remaining_bytes():
            break
        op = fdp.ConsumeIntInRange(0, 4)
        if op == 4:
            _run(fdp, fast, ref, out, sealer, esn, window, mx, step)
            continue
        if op == 3:
            t = min(ref.replay.top + fdp.ConsumeIntInRange(-2 * window, 2 * window), mx)
            fast.replay.top = ref.replay.top = max(t, 0)
            continue
        if op == 0:
            pkt = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 200))
            if fdp.ConsumeBool():
                pkt = struct.pack("!I", SPI) + pkt
        elif op == 1:
            seq = _seq(fdp, ref.replay.top, window, mx)
            spi = SPI if fdp.ConsumeIntInRange(0, 15) else fdp.ConsumeIntInRange(0, M32)
            payload = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 300))
            nh = fdp.ConsumeIntInRange(0, 255)
            packet_esn = esn if fdp.ConsumeIntInRange(0, 15) else not esn
            pkt = out.seal_packet(spi, seq, payload, nh, packet_esn)
            c = sealer.seal(spi, seq, payload, nh, packet_esn)
            if c != pkt:
                raise AssertionError(f"seal differs: spi {spi:#x} seq {seq} nh {nh} esn {packet_esn} "
                                     f"payload {payload.hex()}: {c.hex()} vs {pkt.hex()}")
            pkt = _bend(fdp, pkt)
        else:
            seq = _seq(fdp, ref.replay.top, window, mx)
            plaintext = fdp.ConsumeBytes(4 * fdp.ConsumeIntInRange(1, 40))
            plaintext += bytes(-len(plaintext) & 3 if plaintext else 4)
            header = struct.pack("!II", SPI, seq & M32)
            seq_hi = (seq >> 32).to_bytes(4, "big") if esn else b""
            pkt = _bend(fdp, header + out.seal(header, seq.to_bytes(8, "big"), plaintext, seq_hi))
        want = _outcome(ref, pkt)
        got = _outcome(fast, pkt)
        if got != want:
            raise AssertionError(f"step {step}: decapsulate differs on {pkt.hex()} (window "
                                 f"{ref.replay!r}): C {got!r}, Python {want!r}")
        _compare(fast, ref, f"step {step}")

    t = ref.replay.top
    for s in [*range(max(0, t - window - 2), max(0, t - window + 34)), *range(max(0, t - 40), t + 3)]:
        if fast.replay.check(s) != ref.replay.check(s):
            raise AssertionError(f"check({s}) differs for {ref.replay!r}")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
