#!/usr/bin/env python3
"""Micro-benchmark of the ESP packet layer: encapsulate + decapsulate of 1400-byte inner packets,
per cipher, single core. Not a test; prints packets/s and Mbit/s (inner bytes, one direction).

    .venv/bin/python bench/esp_crypto.py [--seconds 1.0] [--size 1400]
"""
from __future__ import annotations

import argparse
import os
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from esp import (  # noqa: E402
    Direction,
    EncrTransform,
    EspCipher,
    EspSA,
    IntegTransform,
    decapsulate,
    encapsulate,
)
from esp.ip import checksum  # noqa: E402

CIPHERS = [
    ("aes-gcm-16-128", EncrTransform.AES_GCM_16, 128, None, 20, 0),
    ("aes-gcm-16-256", EncrTransform.AES_GCM_16, 256, None, 36, 0),
    ("chacha20-poly1305", EncrTransform.CHACHA20_POLY1305, 256, None, 36, 0),
    ("aes-cbc-128/hmac-sha1-96", EncrTransform.AES_CBC, 128, IntegTransform.HMAC_SHA1_96, 16, 20),
    ("aes-cbc-128/hmac-sha2-256-128", EncrTransform.AES_CBC, 128,
     IntegTransform.HMAC_SHA2_256_128, 16, 32),
    ("aes-cbc-256/hmac-sha2-512-256", EncrTransform.AES_CBC, 256,
     IntegTransform.HMAC_SHA2_512_256, 32, 64),
]


def inner_packet(size: int) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, 1, 0, 64, 17, 0, bytes([10, 0, 0, 1]),
                      bytes([10, 0, 0, 2]))
    hdr = hdr[:10] + checksum(hdr).to_bytes(2, "big") + hdr[12:]
    return hdr + os.urandom(size - 20)


def run(spec: tuple, seconds: float, size: int) -> tuple[float, float]:  # type: ignore[type-arg]
    _, encr, bits, integ, klen, ilen = spec
    ekey, ikey = os.urandom(klen), os.urandom(ilen)
    out = EspSA(Direction.OUT, 0x1001, EspCipher(encr, bits, integ, ekey, ikey), esn=True)
    inb = EspSA(Direction.IN, 0x1001, EspCipher(encr, bits, integ, ekey, ikey), esn=True)
    pkt = inner_packet(size)
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(200):
            nh, got = decapsulate(inb, encapsulate(out, pkt, 4))
        n += 200
        now = time.perf_counter()
        if now >= deadline:
            break
    assert got == pkt and nh == 4
    pps = n / (now - start)
    return pps, pps * size * 8 / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--size", type=int, default=1400)
    args = ap.parse_args()
    print(f"encapsulate+decapsulate, {args.size}-byte inner packets, {args.seconds:.1f} s each")
    print(f"{'cipher':32} {'packets/s':>12} {'Mbit/s':>10}")
    for spec in CIPHERS:
        pps, mbps = run(spec, args.seconds, args.size)
        print(f"{spec[0]:32} {pps:12,.0f} {mbps:10,.1f}")


if __name__ == "__main__":
    main()
