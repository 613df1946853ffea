"""AES-GCM of esp/aesgcm.c, which seals and opens the ESP packets of AES-GCM-128/256 SAs up to 1024
bytes of ciphertext on x86-64 CPUs with AES-NI and PCLMULQDQ (longer ones, AES-192 and other CPUs
go through libcrypto): the GCM specification's test cases, every length across its sixteen-block
passes and GHASH runs against another implementation (cryptography, on OpenSSL), with the
counter blocks through VAES and through AES-NI, forgeries refused. The ESP packets themselves
are compared with the pure-Python path in tests/test_esp_compiled.py and below, on both sides
of the 1024-byte switch."""
from __future__ import annotations

import importlib
import random
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from esp import DropReason, EspCipher, compiled
from tests.aead_checks import assert_forgeries_refused
from tests.test_esp_compiled import SPI, _one, cipher, seal
from tests.test_esp_packet import ipv4_packet


def needs_module() -> Any:
    """esp._aead, and aesgcm.c running on this CPU (the machines this project runs on have
    AES-NI): a missing module or feature fails here instead of skipping."""
    assert compiled.COMPILED, compiled.describe()
    m = importlib.import_module("esp._aead")
    assert m.simd()[0], "aesgcm.c does not run on this CPU (no AES-NI/PCLMULQDQ?)"
    return m


@pytest.fixture(params=["vaes", "aesni"])
def counter_blocks(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each version of the counter blocks this CPU runs (VAES where it has AVX-512)."""
    m = needs_module()
    if request.param == "vaes" and not m.use_simd(True, -1)[0]:
        pytest.skip("this CPU has no VAES/AVX-512: the AES-NI version covers it")
    try:
        in_use = m.use_simd(request.param == "vaes", -1)[0]
        assert in_use == (request.param == "vaes")
        yield request.param
    finally:
        m.use_simd(True, -1)  # back to the best this CPU has


H = bytes.fromhex
# (key, nonce, aad, plaintext, ciphertext + tag): McGrew and Viega, "The Galois/Counter Mode of
# Operation", test cases 1-4 (AES-128) and 13-16 (AES-256)
TC_P = H("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
         "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39")
TC_P3 = TC_P + H("1aafd255")
TC_K = H("feffe9928665731c6d6a8f9467308308")
TC_IV = H("cafebabefacedbaddecaf888")
TC_A = H("feedfacedeadbeeffeedfacedeadbeefabaddad2")
VECTORS = [
    (bytes(16), bytes(12), b"", b"", H("58e2fccefa7e3061367f1d57a4e7455a")),
    (bytes(16), bytes(12), b"", bytes(16), H("0388dace60b6a392f328c2b971b2fe78ab6e47d42cec13bdf53a67b21257bddf")),
    (TC_K, TC_IV, b"", TC_P3, H(
        "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e21d514b25466931c7d8f6a5aac84aa05"
        "1ba30b396a0aac973d58e091473f5985" "4d5c2af327cd64a62cf35abd2ba6fab4")),
    (TC_K, TC_IV, TC_A, TC_P, H(
        "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e21d514b25466931c7d8f6a5aac84aa05"
        "1ba30b396a0aac973d58e091" "5bc94fbc3221a5db94fae95ae7121a47")),
    (bytes(32), bytes(12), b"", b"", H("530f8afbc74536b9a963b4f1c4cb738b")),
    (bytes(32), bytes(12), b"", bytes(16), H("cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919")),
    (TC_K + TC_K, TC_IV, TC_A, TC_P, H(
        "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838"
        "c5f61e6393ba7a0abcc9f662" "76fc6ece0f4e1768cddf8853bb2d551b")),
]


@pytest.mark.parametrize("vector", range(len(VECTORS)))
def test_gcm_specification_vectors(vector: int, counter_blocks: str) -> None:
    m = needs_module()
    key, nonce, aad, plaintext, sealed = VECTORS[vector]
    assert AESGCM(key).encrypt(nonce, plaintext, aad) == sealed  # the table is right
    assert m.aesgcm_seal(key, nonce, aad, plaintext) == sealed
    assert m.aesgcm_open(key, nonce, aad, sealed) == plaintext


@pytest.mark.parametrize("aad_len", [0, 8, 12, 20])
def test_every_length_matches_openssl(aad_len: int, counter_blocks: str) -> None:
    """Every length from 0 to 1100 bytes (first pass 240 bytes, then 256 per pass; GHASH reduces
    every 16 blocks; the packet path switches at 1024) and some far longer, both key sizes,
    random keys and nonces: OpenSSL's ciphertext and tag, opened back."""
    m = needs_module()
    rng = random.Random(38 + aad_len)
    lengths = list(range(1101)) + [4095, 4096, 4097, 65535 - 16, 65535]
    for n in lengths:
        key = rng.randbytes(rng.choice((16, 32)))
        nonce, aad, plaintext = rng.randbytes(12), rng.randbytes(aad_len), rng.randbytes(n)
        sealed = m.aesgcm_seal(key, nonce, aad, plaintext)
        assert sealed == AESGCM(key).encrypt(nonce, plaintext, aad), (n, len(key))
        assert m.aesgcm_open(key, nonce, aad, sealed) == plaintext, n


def test_forgeries_are_refused(counter_blocks: str) -> None:
    """One flipped bit anywhere (AAD, ciphertext, tag), another nonce or key: not authentic,
    and nothing decrypted comes back."""
    m = needs_module()
    lengths = (0, 1, 15, 16, 111, 112, 113, 239, 240, 241, 300, 1024)  # around each pass's end
    assert_forgeries_refused(m.aesgcm_seal, m.aesgcm_open, lengths, 8, random.Random(7))


def test_bad_arguments_raise_typed_errors() -> None:
    m = needs_module()
    with pytest.raises(ValueError):
        m.aesgcm_seal(bytes(24), bytes(12), b"", b"x")  # AES-192 stays with libcrypto
    with pytest.raises(ValueError):
        m.aesgcm_open(bytes(16), bytes(12), b"", bytes(15))
    with pytest.raises(ValueError):
        m.aesgcm_seal(bytes(16), bytes(8), b"", b"x")
    with pytest.raises(TypeError):
        m.aesgcm_open(bytes(16), bytes(12), b"")


@pytest.mark.parametrize("kind", ["aes-gcm-128", "aes-gcm-192", "aes-gcm-256"])
@pytest.mark.parametrize("inner_len", [20, 100, 160, 188, 1000, 1004, 1005, 1006, 1020, 1400])
def test_esp_packets_on_both_sides_of_the_switch(kind: str, inner_len: int, counter_blocks: str) -> None:
    """The compiled ESP seal (aesgcm.c up to 1024 bytes of ciphertext, libcrypto beyond and for
    AES-192) gives the bytes of the pure-Python reference; the compiled decapsulation opens
    the reference's packets to the same inner packet, and refuses them altered."""
    rng = random.Random(inner_len)
    fast, ref = cipher(kind), cipher(kind, pure=True)
    inner = ipv4_packet(rng.randbytes(inner_len - 20))
    for seq in (1, 0xFFFFFFFF, 0x1_0000_0000):
        for esn in (False, True):
            assert fast.fast is not None
            assert fast.fast.seal(SPI, seq, inner, 4, esn) == ref.seal_packet(SPI, seq, inner, 4, esn=esn)
    assert _one(kind, False, 0, seal(5, inner, 4)) == (4, inner)
    assert _one(kind, True, 0, seal(5, inner, 4, esn=True)) == (4, inner)

    def altered(c: EspCipher) -> bytes:
        pkt = bytearray(seal(6, inner, 4)(c))
        pkt[rng.randrange(8, len(pkt))] ^= 1 << rng.randrange(8)
        return bytes(pkt)

    for _ in range(5):
        assert _one(kind, False, 0, altered) is DropReason.AUTH_FAILED


@pytest.mark.parametrize("kind", ["aes-gcm-128", "aes-gcm-256", "chacha20-poly1305"])
def test_libcrypto_still_does_short_packets_when_asked(kind: str) -> None:
    """short_path(False) (benchmarks compare both) sends short packets through libcrypto again:
    the same bytes and inner packets as the pure-Python path, and the same as the short path."""
    m = needs_module()
    rng = random.Random(4106)
    inner = ipv4_packet(rng.randbytes(140))
    fast = cipher(kind)
    assert fast.fast is not None
    short = fast.fast.seal(SPI, 9, inner, 4, False)
    assert m.short_path(False) is True
    try:
        assert fast.fast.seal(SPI, 9, inner, 4, False) == short
        assert short == cipher(kind, pure=True).seal_packet(SPI, 9, inner, 4, esn=False)
        assert _one(kind, False, 0, seal(5, inner, 4)) == (4, inner)
    finally:
        assert m.short_path(True) is False


def test_the_log_says_which_code_runs_short_packets() -> None:
    """esp.compiled.describe() (the start-up log's and `vpn-gw stats`' esp_packet_path) names the
    instruction sets in use, and follows a change."""
    m = needs_module()
    try:
        m.use_simd(False, 0)
        assert compiled.short_path() == "AES-GCM AES-NI, ChaCha20-Poly1305 SSE2"
        assert compiled.describe() == "compiled (_aead; short packets: AES-GCM AES-NI, ChaCha20-Poly1305 SSE2)"
    finally:
        m.use_simd(True, -1)
    aes, vaes, chacha, level, runs = m.simd()
    assert compiled.short_path().startswith("AES-GCM VAES" if vaes else "AES-GCM AES-NI")
    assert compiled.short_path().endswith(", runs four at a time with IFMA") == runs
