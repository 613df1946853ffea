#!/usr/bin/env python3
"""In-process cost per packet of the compiled ESP path's AEAD work, short packets through
esp/aesgcm.c and esp/chapoly.c (the default) against all through libcrypto (esp._aead
short_path(False)): ``Aead.seal_many`` of 64 packets and ``Aead.decapsulate_many`` of the same
64 ESP packets, per inner packet size. Not a test; prints microseconds per packet (best of
--repeats) and the ratio. One core; run it on an idle machine.

    .venv/bin/python bench/aead_short.py [--sizes 64,188,512,1024,1400] [--repeats 15]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from esp import compiled  # noqa: E402

SPI = 0xC0FFEE01
BATCH = 64
KINDS = [("AES-GCM-128", 20, 16), ("AES-GCM-256", 20, 32), ("ChaCha20-Poly1305", 28, 32)]


def ipv4_udp(size: int) -> bytes:
    """An IPv4/UDP packet of ``size`` bytes (header checksums left zero: only the AEAD looks)."""
    total = size.to_bytes(2, "big")
    return (b"\x45\x00" + total + b"\x00\x01\x40\x00\x40\x11\x00\x00" + bytes([10, 0, 0, 1, 10, 0, 0, 2])
            + b"\x30\x39\x13\x89" + (size - 20).to_bytes(2, "big") + b"\x00\x00" + os.urandom(size - 28))


def per_packet(fn, repeats: int, loops: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(loops):
            fn()
        best = min(best, (time.perf_counter() - t) / (loops * BATCH))
    return best * 1e6


def measure(encr: int, klen: int, size: int, repeats: int) -> tuple[float, float]:
    aead = compiled.Aead(encr, os.urandom(klen + 4))
    packets = [ipv4_udp(size)] * BATCH
    allowed = bytearray(32)
    allowed[0] |= 1 << 4  # next header 4 (IPv4), as the SA's nh_mask has it
    sealed, _ = aead.seal_many(SPI, 1, packets, False)
    window = compiled.CompiledReplayWindow  # a fresh window per call: the same 64 sequence numbers

    def seal() -> None:
        aead.seal_many(SPI, 1, packets, False)

    def open_() -> None:
        out = aead.decapsulate_many(sealed, SPI, window(1024), bytes(allowed), None)
        assert out[2] == BATCH, out[5]

    loops = max(1, 20000 // (BATCH * max(1, size // 200)))
    return per_packet(seal, repeats, loops), per_packet(open_, repeats, loops)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="64,188,512,1024,1400")
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    if not compiled.COMPILED:
        sys.exit(f"the compiled ESP path is not in use: {compiled.describe()}")
    from esp import _aead
    aes_here, vaes, chacha_simd, level, runs = _aead.simd()
    print(f"aesgcm.c runs here: {aes_here} (VAES: {vaes}); chapoly.c SIMD: {chacha_simd} "
          f"(level {level}: 0 SSE2, 1 SSSE3, 2 AVX-512VL; runs four at a time: {runs}); "
          f"load average {os.getloadavg()[0]:.2f}")
    print("| cipher | inner bytes | seal us/packet: short path / libcrypto | open us/packet: short path / libcrypto |")
    print("|---|---:|---|---|")
    for name, encr, klen in KINDS:
        for size in (int(s) for s in args.sizes.split(",")):
            _aead.short_path(True)
            seal_s, open_s = measure(encr, klen, size, args.repeats)
            _aead.short_path(False)
            try:
                seal_l, open_l = measure(encr, klen, size, args.repeats)
            finally:
                _aead.short_path(True)
            print(f"| {name} | {size} | {seal_s:.3f} / {seal_l:.3f} ({seal_l / seal_s:.2f}x) "
                  f"| {open_s:.3f} / {open_l:.3f} ({open_l / open_s:.2f}x) |")


if __name__ == "__main__":
    main()
