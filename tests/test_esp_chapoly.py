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


# ---- runs of packets: four at a time (chapoly_first4, chapoly_tags4; AVX-512VL with IFMA)


def needs_runs() -> Any:
    """esp._aead with the four-lane code in use: on a CPU without AVX-512 IFMA it does not run
    (the single-packet code, tested above, is what runs there), so these tests have nothing to
    check and say so."""
    m = needs_module()
    if not m.simd()[4]:
        pytest.skip("this CPU has no AVX-512 IFMA: runs go one packet at a time (tested above)")
    return m


def test_poly1305_four_lanes_match_big_integers() -> None:
    """The four-lane Poly1305 (IFMA, two blocks per step, masks for lanes that end early) gives
    each lane the big-integer result, with the edge keys and messages of the scalar test mixed
    across lanes of different lengths (odd and even block counts, empty lanes, 1-4 lanes)."""
    m = needs_runs()
    rng = random.Random(4)
    keys, messages = _edge_keys(rng), _edge_messages(rng)
    messages += [rng.randbytes(rng.randrange(0, 1073)) for _ in range(20)]
    checked = 0
    for _ in range(400):
        count = rng.randint(1, 4)
        ks = [rng.choice(keys) for _ in range(count)]
        ms = [rng.choice(messages) for _ in range(count)]
        assert m.poly1305_padded4(ks, ms) == [poly1305_padded_reference(k, x) for k, x in zip(ks, ms, strict=True)]
        checked += count
    assert checked > 800


def test_poly1305_four_lanes_fall_back_for_long_messages() -> None:
    """A message beyond the four-lane buffer (1 072 bytes) sends the call one lane at a time,
    with the same results."""
    m = needs_module()
    rng = random.Random(5)
    ks = [rng.randbytes(32) for _ in range(3)]
    ms = [rng.randbytes(100), rng.randbytes(1073), rng.randbytes(4000)]
    assert m.poly1305_padded4(ks, ms) == [poly1305_padded_reference(k, x) for k, x in zip(ks, ms, strict=True)]
    with pytest.raises(TypeError):
        m.poly1305_padded4([], [])
    with pytest.raises(TypeError):
        m.poly1305_padded4([bytes(32)] * 5, [b""] * 5)
    with pytest.raises(TypeError):
        m.poly1305_padded4([bytes(31)], [b""])


def _run_payloads(rng: random.Random, count: int) -> list[bytes]:
    """IPv4-looking packets of mixed lengths: short ones of every block count, ones at and past
    the 640-byte switch (which leave the group), so the lanes of a group differ."""
    sizes = [rng.choice([1, 20, 60, 150, 186, 188, 189, 190, 400, 600, 636, 638, 639, 700, 1400])
             for _ in range(count)]
    return [b"\x45" + rng.randbytes(n - 1) for n in sizes]


@pytest.mark.parametrize("esn", [False, True])
def test_runs_seal_as_single_packets_do(esn: bool, chacha_level: int) -> None:
    """seal_many (runs four at a time at the best level, one by one below it) gives for every
    run length 1-13 and mix of lengths the bytes seal() gives packet by packet, which the
    pure-Python reference gives too (checked above); and each packet opens alone."""
    m = needs_module()
    rng = random.Random(hash((esn, chacha_level)) & 0xFFFF)
    key = rng.randbytes(36)
    aead = m.Aead(28, key)
    for count in range(1, 14):
        payloads = _run_payloads(rng, count)
        first = rng.choice([1, 0xFFFFFFFD, 0x1_0000_0000 - 2, 7 << 40])
        sealed, total = aead.seal_many(0xC0FFEE01, first, payloads, esn)
        assert total == sum(len(p) for p in payloads)
        assert sealed == [aead.seal(0xC0FFEE01, first + i, p, 4, esn) for i, p in enumerate(payloads)]


def _verdicts_one_by_one(aead: Any, packets: list[bytes], esn: bool) -> list:
    window = compiled.CompiledReplayWindow(64, esn=esn)
    allowed = bytearray(32)
    allowed[0] |= 1 << 4
    return [aead.decapsulate(p, 0xC0FFEE01, window, bytes(allowed)) for p in packets], window.top


@pytest.mark.parametrize("esn", [False, True])
def test_runs_open_as_single_packets_do(esn: bool, chacha_level: int) -> None:
    """decapsulate_many over runs with forged tags, altered ciphertext, a wrong SPI, replays,
    truncations and long packets at every position of a group of four delivers exactly the
    packets decapsulate() delivers one by one, refuses the rest with the same verdicts, and
    leaves the replay window at the same place."""
    m = needs_module()
    rng = random.Random(hash((esn, chacha_level, 2)) & 0xFFFF)
    aead = m.Aead(28, rng.randbytes(36))
    allowed = bytearray(32)
    allowed[0] |= 1 << 4
    for count in range(1, 14):
        payloads = _run_payloads(rng, count)
        sealed, _ = aead.seal_many(0xC0FFEE01, 100, payloads, esn)
        packets = []
        for p in sealed:
            how = rng.randrange(8)
            if how == 1:  # forged tag
                p = p[:-1] + bytes([p[-1] ^ 1])
            elif how == 2:  # altered ciphertext
                p = p[:20] + bytes([p[20] ^ 0x80]) + p[21:]
            elif how == 3:  # another SPI
                p = b"\xc0\xff\xee\x02" + p[4:]
            elif how == 4 and packets:  # a replay of an earlier packet
                p = rng.choice(packets)
            elif how == 5:  # truncated
                p = p[:rng.randrange(0, len(p))]
            packets.append(p)
        want, top = _verdicts_one_by_one(aead, packets, esn)
        window = compiled.CompiledReplayWindow(64, esn=esn)
        inners, unchecked, opened, nbytes, policy, verdicts = aead.decapsulate_many(
            packets, 0xC0FFEE01, window, bytes(allowed), None)
        delivered = [w[1] for w in want if isinstance(w, tuple)]
        assert inners == [] and unchecked == delivered and opened == len(delivered) and policy == 0
        assert nbytes == sum(len(x) for x in delivered)
        assert verdicts == [w for w in want if not isinstance(w, tuple)]
        assert window.top == top
