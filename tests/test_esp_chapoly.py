"""ChaCha20-Poly1305 of esp/chapoly.c, which seals and opens the ESP packets of ChaCha20-Poly1305
SAs up to 640 bytes of ciphertext (longer ones go through libcrypto): RFC 8439's AEAD vector,
every length across its four-block passes against another implementation (cryptography, on
OpenSSL), forgeries refused, and Poly1305's carries and final reduction against a big-integer
reference on the inputs that reach them. The ESP packets themselves are compared with the
pure-Python path in tests/test_esp_compiled.py, on both sides of the 640-byte switch (below)."""
from __future__ import annotations

import importlib
import random
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from esp import EspCipher, compiled
from tests.aead_checks import assert_forgeries_refused

P1305 = (1 << 130) - 5


def needs_module() -> Any:
    """esp._aead; the setup builds it, so a missing module fails here instead of skipping."""
    assert compiled.COMPILED, compiled.describe()
    return importlib.import_module("esp._aead")


LEVELS = {0: "SSE2", 1: "SSSE3", 2: "AVX-512VL"}


@pytest.fixture(params=sorted(LEVELS))
def chacha_level(request: pytest.FixtureRequest) -> Iterator[int]:
    """Each version of the four-block ChaCha20 this CPU runs (x86-64 has SSE2 at least)."""
    m = needs_module()
    assert m.simd()[2], "the SIMD ChaCha20 is built on x86-64"
    try:
        if m.use_simd(True, request.param)[1] != request.param:
            pytest.skip(f"this CPU has no {LEVELS[request.param]}: a lower level covers it")
        yield request.param
    finally:
        m.use_simd(True, -1)  # back to the best this CPU has


def poly1305_padded_reference(key: bytes, message: bytes) -> bytes:
    """RFC 8439 2.5.1 in big integers, over message zero-padded to 16-byte blocks."""
    r = int.from_bytes(key[:16], "little") & 0x0FFFFFFC0FFFFFFC0FFFFFFC0FFFFFFF
    s = int.from_bytes(key[16:], "little")
    padded = message + bytes(-len(message) % 16)
    h = 0
    for i in range(0, len(padded), 16):
        h = (h + int.from_bytes(padded[i:i + 16], "little") + (1 << 128)) * r % P1305
    return ((h + s) % (1 << 128)).to_bytes(16, "little")


def test_rfc8439_aead_vector(chacha_level: int) -> None:
    """RFC 8439 2.8.2: the sunscreen text, its ciphertext and tag; and opening it back."""
    m = needs_module()
    key = bytes(range(0x80, 0xA0))
    nonce = bytes.fromhex("070000004041424344454647")
    aad = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
    plaintext = (b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip "
                 b"for the future, sunscreen would be it.")
    sealed = m.chapoly_seal(key, nonce, aad, plaintext)
    assert sealed[:16].hex() == "d31a8d34648e60db7b86afbc53ef7ec2"
    assert sealed[-16:].hex() == "1ae10b594f09e26a7e902ecbd0600691"
    assert sealed[:-16] == ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)[:-16]
    assert m.chapoly_open(key, nonce, aad, sealed) == plaintext


@pytest.mark.parametrize("aad_len", [0, 8, 12, 13, 16, 31])
def test_every_length_matches_openssl(aad_len: int, chacha_level: int) -> None:
    """Every length from 0 to 1100 bytes (the first pass covers 192, every further one 256, the
    packet path switches at 640) and some of 64 KiB, random keys and nonces: the same
    ciphertext and tag as OpenSSL's, opened back to the plaintext."""
    m = needs_module()
    rng = random.Random(8439 + aad_len)
    lengths = list(range(1101)) + [4095, 4096, 4097, 65535 - 16, 65535]
    for n in lengths:
        key, nonce = rng.randbytes(32), rng.randbytes(12)
        aad, plaintext = rng.randbytes(aad_len), rng.randbytes(n)
        sealed = m.chapoly_seal(key, nonce, aad, plaintext)
        assert sealed == ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad), n
        assert m.chapoly_open(key, nonce, aad, sealed) == plaintext, n


def test_forgeries_are_refused(chacha_level: int) -> None:
    """One flipped bit anywhere (AAD, ciphertext, tag), another nonce or key: not authentic,
    and nothing decrypted comes back."""
    m = needs_module()
    lengths = (0, 1, 15, 16, 63, 64, 191, 192, 193, 300, 447, 448, 449, 640)  # around each pass's end
    assert_forgeries_refused(m.chapoly_seal, m.chapoly_open, lengths, 12, random.Random(7))


def test_bad_arguments_raise_typed_errors() -> None:
    m = needs_module()
    with pytest.raises(ValueError):
        m.chapoly_seal(bytes(31), bytes(12), b"", b"x")
    with pytest.raises(ValueError):
        m.chapoly_open(bytes(32), bytes(11), b"", bytes(16))
    with pytest.raises(ValueError):
        m.chapoly_open(bytes(32), bytes(12), b"", bytes(15))
    with pytest.raises(TypeError):
        m.chapoly_seal(bytes(32), bytes(12), b"")


def _edge_keys(rng: random.Random) -> list[bytes]:
    """r at its clamped maximum and at 1 and 2; s zero and all ones (the final addition wraps)."""
    r_max = (0x0FFFFFFC0FFFFFFC0FFFFFFC0FFFFFFF).to_bytes(16, "little")
    keys = []
    for r in (r_max, (1).to_bytes(16, "little"), (2).to_bytes(16, "little"),
              bytes.fromhex("01000000000000000400000000000000"), rng.randbytes(16)):
        for s in (bytes(16), b"\xff" * 16, rng.randbytes(16)):
            keys.append(r + s)
    return keys


def _edge_messages(rng: random.Random) -> list[bytes]:
    """Blocks that drive h to, just below and just above 2^130 - 5, the carries of every limb."""
    ff = b"\xff" * 16
    return [
        b"", ff, ff * 2, ff * 7, b"\xfd" + b"\xff" * 15,
        ff + b"\xf0" + b"\xff" * 15 + b"\x11" + bytes(15),
        ff + b"\xfb" + b"\xfe" * 15 + b"\x01" * 16,
        bytes.fromhex("e33594d7505e43b900000000000000003394d7505e4379cd01000000000000000000"
                      "000000000000000000000000000001000000000000000000000000000000"),
        (P1305 - (1 << 128) - 1).to_bytes(17, "little")[:16],
        b"\x00" * 16, b"\x80" * 48, rng.randbytes(33), rng.randbytes(200), rng.randbytes(1000),
    ]


def test_poly1305_edge_cases_match_big_integers() -> None:
    m = needs_module()
    rng = random.Random(1305)
    for key in _edge_keys(rng):
        for msg in _edge_messages(rng):
            got = m.poly1305_padded(key, msg)
            assert got == poly1305_padded_reference(key, msg), (key.hex(), msg.hex())
    for _ in range(3000):
        key = rng.randbytes(32)
        msg = rng.choice([b"\xff", b"\x00", b"\xfe"]) * rng.randrange(0, 80) + rng.randbytes(rng.randrange(0, 40))
        assert m.poly1305_padded(key, msg) == poly1305_padded_reference(key, msg)


def test_rfc8439_poly1305_vectors_with_whole_blocks() -> None:
    """RFC 8439 A.3 #1 and #5-#9 (messages of whole blocks, where padding changes nothing)."""
    m = needs_module()
    ff = b"\xff" * 16
    r2, r1 = (2).to_bytes(16, "little"), (1).to_bytes(16, "little")
    cases = [
        (bytes(32), bytes(64), bytes(16)),
        (r2 + bytes(16), ff, b"\x03" + bytes(15)),
        (r2 + ff, b"\x02" + bytes(15), b"\x03" + bytes(15)),
        (r1 + bytes(16), ff + b"\xf0" + b"\xff" * 15 + b"\x11" + bytes(15), b"\x05" + bytes(15)),
        (r1 + bytes(16), ff + b"\xfb" + b"\xfe" * 15 + b"\x01" * 16, bytes(16)),
        (r2 + bytes(16), b"\xfd" + b"\xff" * 15, b"\xfa" + b"\xff" * 15),
    ]
    for key, msg, tag in cases:
        assert poly1305_padded_reference(key, msg) == tag  # the reference agrees with the RFC
        assert m.poly1305_padded(key, msg) == tag


@pytest.mark.parametrize("payload_len", [0, 100, 150, 494, 600, 634, 637, 638, 639, 640, 700, 1400])
def test_esp_packets_on_both_sides_of_the_switch(payload_len: int, chacha_level: int) -> None:
    """The compiled ESP seal (chapoly.c up to 640 bytes of ciphertext, libcrypto beyond) gives
    the bytes of the pure-Python reference, and each opens the other's packets."""
    rng = random.Random(payload_len)
    key = rng.randbytes(36)
    fast = EspCipher(28, 256, None, key)
    ref = EspCipher(28, 256, None, key)
    ref.fast = None
    assert fast.fast is not None, compiled.describe()
    payload = rng.randbytes(payload_len)
    for seq in (1, 2, 0xFFFFFFFF, 0x1_0000_0000):
        for esn in (False, True):
            a = fast.fast.seal(0xC0FFEE01, seq, payload, 4, esn)
            b = ref.seal_packet(0xC0FFEE01, seq, payload, 4, esn=esn)
            assert a == b
