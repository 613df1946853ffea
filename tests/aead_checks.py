"""Checks both short-packet AEADs of esp._aead share (tests/test_esp_chapoly.py,
tests/test_esp_aesgcm.py)."""
from __future__ import annotations

import random
from collections.abc import Callable, Iterable

Seal = Callable[[bytes, bytes, bytes, bytes], bytes]
Open = Callable[[bytes, bytes, bytes, bytes], "bytes | None"]


def assert_forgeries_refused(seal: Seal, open_: Open, lengths: Iterable[int], aad_len: int,
                             rng: random.Random) -> None:
    """One flipped bit anywhere (AAD, ciphertext, tag), another nonce or another key: not
    authentic, so nothing decrypted comes back (None)."""
    for n in lengths:
        key, nonce, aad, plaintext = rng.randbytes(32), rng.randbytes(12), rng.randbytes(aad_len), rng.randbytes(n)
        sealed = seal(key, nonce, aad, plaintext)
        assert open_(key, nonce, aad, sealed) == plaintext
        for _ in range(20):
            bad = bytearray(sealed)
            bad[rng.randrange(len(bad))] ^= 1 << rng.randrange(8)
            assert open_(key, nonce, aad, bytes(bad)) is None
            bad_aad = bytearray(aad)
            bad_aad[rng.randrange(len(aad))] ^= 1 << rng.randrange(8)
            assert open_(key, nonce, bytes(bad_aad), sealed) is None
        assert open_(key, rng.randbytes(12), aad, sealed) is None
        assert open_(rng.randbytes(32), nonce, aad, sealed) is None
