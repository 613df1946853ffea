"""atheris harness for ESP decapsulation after a valid ICV (esp.packet.decapsulate).

An outer decoder fuzzer never gets past the ICV; this one does: it builds real SAs (AES-GCM,
ChaCha20-Poly1305, AES-CBC + HMAC, with and without ESN), lets the fuzzer choose the whole
plaintext that gets encrypted (inner packet, padding, Pad Length, Next Header) and the sequence
number, seals it with the outbound keys and decapsulates it with the inbound SA, i.e. exactly
what an authenticated but hostile peer can send. Properties:

* only EspError escapes, with a DropReason, and the SA counts it under that reason;
* an accepted packet returns an allowed next header and an inner packet that is a prefix of
  what was encrypted (TFC padding stripped, never bytes that were not sent);
* the anti-replay window moved for every authentic packet (RFC 4303 3.4.3), and the same packet
  again is refused as a replay.

Run: .venv/bin/python tests/fuzz/fuzz_esp_decap.py [libFuzzer flags] [CORPUS_DIR ...]
(bench/fuzz_harnesses.py runs it for longer.)
"""
from __future__ import annotations

import struct
import sys

import atheris

with atheris.instrument_imports():
    from esp import (
        Direction,
        DropReason,
        EncrTransform,
        EspCipher,
        EspError,
        EspSA,
        IntegTransform,
        decapsulate,
    )

SPI = 0xC0FFEE01
CIPHERS = [  # encr, key bits, integ, encr key length, integ key length
    (EncrTransform.AES_GCM_16, 128, None, 20, 0),
    (EncrTransform.AES_GCM_16, 256, None, 36, 0),
    (EncrTransform.CHACHA20_POLY1305, 256, None, 36, 0),
    (EncrTransform.AES_CBC, 128, IntegTransform.HMAC_SHA1_96, 16, 20),
    (EncrTransform.AES_CBC, 256, IntegTransform.HMAC_SHA2_256_128, 32, 32),
]


def _cipher(i: int) -> EspCipher:
    encr, bits, integ, klen, ilen = CIPHERS[i]
    return EspCipher(encr, bits, integ, bytes(range(klen)), bytes(range(7, 7 + ilen)),
                     random_bytes=lambda n: bytes(n))  # deterministic CBC IVs


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    which = fdp.ConsumeIntInRange(0, len(CIPHERS) - 1)
    esn = fdp.ConsumeBool()
    seq = fdp.ConsumeIntInRange(1, (1 << 64) - 1 if esn else (1 << 32) - 1)
    plaintext = fdp.ConsumeBytes(fdp.remaining_bytes())
    out_cipher = _cipher(which)
    if out_cipher.align > 1 and len(plaintext) % out_cipher.align:  # CBC: whole blocks only
        plaintext += bytes(out_cipher.align - len(plaintext) % out_cipher.align)
    header = struct.pack("!II", SPI, seq & 0xFFFFFFFF)
    seq_hi = (seq >> 32).to_bytes(4, "big") if esn else b""
    packet = header + out_cipher.seal(header, out_cipher.iv_for(seq), plaintext, seq_hi)

    sa = EspSA(Direction.IN, SPI, _cipher(which), esn=esn, replay_window=64)
    if esn and sa.replay is not None:
        sa.replay.top = seq - 1  # the window is just below this sequence number
    try:
        nh, inner = decapsulate(sa, packet)
    except EspError as e:
        if not isinstance(e.reason, DropReason) or sa.stats.drops.get(e.reason) != 1:
            raise AssertionError(f"{e.reason!r} not counted: {sa.stats.drops}") from None
        if e.reason in (DropReason.AUTH_FAILED, DropReason.SPI_MISMATCH):
            raise AssertionError(f"a correctly sealed packet was refused: {e}") from None
    else:
        if nh not in sa.allowed_next_headers or not plaintext.startswith(inner):
            raise AssertionError("accepted packet does not match what was sent")
    if sa.replay is not None and sa.replay.check(seq) and len(plaintext) >= 2:
        raise AssertionError("an authentic packet left the replay window open for itself")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
