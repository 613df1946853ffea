"""ESP packet processing: round trips for every cipher, tampering, padding, dummy packets,
next header checks, TFC padding, strict parsing, ESN across 2^32."""
from __future__ import annotations

import os
import struct
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esp import (
    Direction,
    DropReason,
    EncrTransform,
    EspCipher,
    EspError,
    EspSA,
    IntegTransform,
    decapsulate,
    encapsulate,
    esp_seal,
    peek_spi,
)
from esp.ip import checksum
from esp.packet import ESP_HEADER_LEN

# name -> (encr, key bits, integ, encr key length, integ key length)
CIPHERS = {
    "aes-gcm-128": (EncrTransform.AES_GCM_16, 128, None, 20, 0),
    "aes-gcm-192": (EncrTransform.AES_GCM_16, 192, None, 28, 0),
    "aes-gcm-256": (EncrTransform.AES_GCM_16, 256, None, 36, 0),
    "chacha20-poly1305": (EncrTransform.CHACHA20_POLY1305, 256, None, 36, 0),
    "aes-cbc-128/sha1-96": (EncrTransform.AES_CBC, 128, IntegTransform.HMAC_SHA1_96, 16, 20),
    "aes-cbc-128/sha256-128": (EncrTransform.AES_CBC, 128, IntegTransform.HMAC_SHA2_256_128, 16, 32),
    "aes-cbc-192/sha384-192": (EncrTransform.AES_CBC, 192, IntegTransform.HMAC_SHA2_384_192, 24, 48),
    "aes-cbc-256/sha512-256": (EncrTransform.AES_CBC, 256, IntegTransform.HMAC_SHA2_512_256, 32, 64),
}

SPI = 0xC0FFEE01


def make_cipher(name: str, seed: int = 1) -> EspCipher:
    encr, bits, integ, klen, ilen = CIPHERS[name]
    ekey = bytes((seed * 7 + i) & 0xFF for i in range(klen))
    ikey = bytes((seed * 13 + 3 * i) & 0xFF for i in range(ilen))
    return EspCipher(encr, bits, integ, ekey, ikey)


def make_pair(name: str, *, esn: bool = False, window: int = 1024, **kw: object) -> tuple[EspSA, EspSA]:
    out = EspSA(Direction.OUT, SPI, make_cipher(name), esn=esn, **kw)  # type: ignore[arg-type]
    inb = EspSA(Direction.IN, SPI, make_cipher(name), esn=esn, replay_window=window, **kw)  # type: ignore[arg-type]
    return out, inb


def ipv4_packet(payload: bytes, *, proto: int = 17, ident: int = 0x1234) -> bytes:
    total = 20 + len(payload)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, ident, 0, 64, proto, 0,
                      bytes([10, 0, 0, 1]), bytes([10, 0, 1, 2]))
    hdr = hdr[:10] + checksum(hdr).to_bytes(2, "big") + hdr[12:]
    return hdr + payload


def ipv6_packet(payload: bytes, *, nh: int = 17) -> bytes:
    return (struct.pack("!IHBB", 6 << 28, len(payload), nh, 64)
            + bytes.fromhex("20010db8000000000000000000000001")
            + bytes.fromhex("20010db8000000000000000000000002") + payload)


def encrypt_raw(cipher: EspCipher, seq: int, plaintext: bytes, *, esn: bool = False) -> bytes:
    """An ESP packet around an arbitrary (possibly badly padded) plaintext."""
    header = struct.pack("!II", SPI, seq & 0xFFFFFFFF)
    seq_hi = (seq >> 32).to_bytes(4, "big") if esn else b""
    return header + cipher.seal(header, cipher.iv_for(seq), plaintext, seq_hi)


# -- round trips ---------------------------------------------------------------------------------
@pytest.mark.parametrize("esn", [False, True], ids=["no-esn", "esn"])
@pytest.mark.parametrize("name", list(CIPHERS))
def test_round_trip_every_cipher(name: str, esn: bool) -> None:
    out, inb = make_pair(name, esn=esn)
    for size in (0, 1, 2, 3, 13, 14, 15, 16, 17, 100, 1400):
        for builder, nh in ((ipv4_packet, 4), (ipv6_packet, 41)):
            inner = builder(os.urandom(size))
            packet = encapsulate(out, inner, nh)
            # layout: 4-byte aligned ciphertext (block aligned for CBC), minimal padding
            c = out.cipher
            ct_len = len(packet) - ESP_HEADER_LEN - c.iv_len - c.icv_len
            assert ct_len % c.align == 0 and 0 <= ct_len - len(inner) - 2 < c.align
            assert peek_spi(packet) == SPI
            assert decapsulate(inb, packet) == (nh, inner)
    assert out.stats.packets == inb.stats.packets == 22
    assert out.stats.bytes == inb.stats.bytes
    assert inb.replay is not None and inb.replay.top == 22
    assert not inb.stats.drops and not out.stats.drops


@pytest.mark.parametrize("name", ["aes-gcm-128", "chacha20-poly1305"])
def test_aead_iv_is_the_sequence_number(name: str) -> None:
    out, _ = make_pair(name, esn=True)
    out.seq = (7 << 32) + 41
    packet = encapsulate(out, ipv4_packet(b"x"), 4)
    assert packet[4:8] == (42).to_bytes(4, "big")  # low 32 bits on the wire
    assert packet[8:16] == ((7 << 32) + 42).to_bytes(8, "big")  # explicit IV = 64-bit seq


def test_cbc_iv_comes_from_injected_random() -> None:
    calls: list[int] = []

    def rnd(n: int) -> bytes:
        calls.append(n)
        return bytes([len(calls)]) * n

    c = EspCipher(EncrTransform.AES_CBC, 128, IntegTransform.HMAC_SHA2_256_128, bytes(16),
                  bytes(32), random_bytes=rnd)
    out = EspSA(Direction.OUT, SPI, c)
    p1 = encapsulate(out, ipv4_packet(b"a"), 4)
    p2 = encapsulate(out, ipv4_packet(b"a"), 4)
    assert calls == [16, 16]
    assert p1[8:24] == b"\x01" * 16 and p2[8:24] == b"\x02" * 16


def test_esn_traffic_across_2_32_both_orders() -> None:
    out, inb = make_pair("aes-gcm-256", esn=True, window=64)
    out.seq = (1 << 32) - 3
    packets = [encapsulate(out, ipv4_packet(bytes([i])), 4) for i in range(6)]
    # seqs 2^32-2 .. 2^32+3: wire carries only the low 32 bits
    assert [int.from_bytes(p[4:8], "big") for p in packets] == [
        0xFFFFFFFE, 0xFFFFFFFF, 0, 1, 2, 3]
    order = [0, 3, 1, 5, 2, 4]  # jumps into the next subspace, then late packets from the old one
    for i in order:
        assert decapsulate(inb, packets[i])[1] == ipv4_packet(bytes([i]))
    assert inb.replay is not None and inb.replay.top == (1 << 32) + 3
    for p in packets:  # all replays now
        with pytest.raises(EspError) as err:
            decapsulate(inb, p)
        assert err.value.reason is DropReason.REPLAY


# -- integrity -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CIPHERS))
def test_every_tampered_byte_fails_authentication(name: str) -> None:
    out, inb = make_pair(name)
    inner = ipv4_packet(b"payload" * 5)
    packet = encapsulate(out, inner, 4)
    for i in range(len(packet)):
        bad = bytearray(packet)
        bad[i] ^= 0x01
        with pytest.raises(EspError) as err:
            decapsulate(inb, bytes(bad))
        if i < 4:
            assert err.value.reason is DropReason.SPI_MISMATCH
        elif i == 7:  # seq 1 became 0, which is never acceptable
            assert err.value.reason is DropReason.REPLAY
        else:
            # seq bytes change the inferred sequence number: still only an ICV failure
            assert err.value.reason is DropReason.AUTH_FAILED, i
    assert inb.replay is not None and inb.replay.top == 0  # forged packets never moved the window
    assert decapsulate(inb, packet) == (4, inner)


def test_failed_icv_does_not_advance_window_or_mark_seq() -> None:
    out, inb = make_pair("aes-gcm-128", window=32)
    good = [encapsulate(out, ipv4_packet(bytes([i])), 4) for i in range(100)]
    decapsulate(inb, good[0])
    forged = bytearray(good[99])
    forged[-1] ^= 0xFF  # seq 100, bad tag: far right of the window
    with pytest.raises(EspError) as err:
        decapsulate(inb, bytes(forged))
    assert err.value.reason is DropReason.AUTH_FAILED
    assert inb.replay is not None and inb.replay.top == 1
    decapsulate(inb, good[1])  # seq 2 still accepted: window did not jump to 100
    decapsulate(inb, good[99])  # the genuine seq 100 is not marked as seen
    assert inb.stats.drops[DropReason.AUTH_FAILED] == 1


def test_wrong_key_fails() -> None:
    out, _ = make_pair("chacha20-poly1305")
    other = EspSA(Direction.IN, SPI, make_cipher("chacha20-poly1305", seed=2))
    with pytest.raises(EspError) as err:
        decapsulate(other, encapsulate(out, ipv4_packet(b"x"), 4))
    assert err.value.reason is DropReason.AUTH_FAILED


# -- trailer checks ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["aes-gcm-128", "aes-cbc-128/sha256-128"])
@pytest.mark.parametrize("kind", ["non-monotonic", "zeros", "pad-too-long"])
def test_bad_padding(name: str, kind: str) -> None:
    _, inb = make_pair(name)
    cipher = make_cipher(name)
    payload = b"\x45"
    pad = -(len(payload) + 2) % cipher.align
    if pad < 3:
        pad += cipher.align
    padding = bytearray(range(1, pad + 1))
    if kind == "non-monotonic":
        padding[2] = 0x77
    elif kind == "zeros":
        padding = bytearray(pad)
    plaintext = payload + bytes(padding) + bytes((pad, 4))
    if kind == "pad-too-long":
        plaintext = bytes(cipher.align - 2) + bytes((cipher.align - 1, 4))
    assert len(plaintext) % cipher.align == 0
    packet = encrypt_raw(cipher, 1, plaintext)
    with pytest.raises(EspError) as err:
        decapsulate(inb, packet)
    assert err.value.reason is DropReason.BAD_PADDING
    assert inb.stats.drops[DropReason.BAD_PADDING] == 1
    # authentic packet: the window moved (RFC 4303 3.4.3: update iff the ICV verified)
    assert inb.replay is not None and inb.replay.top == 1


def test_dummy_packet_is_dropped_and_counted() -> None:
    out, inb = make_pair("aes-gcm-256")
    packet = encapsulate(out, b"\x00" * 40, 59)  # TFC dummy packet
    with pytest.raises(EspError) as err:
        decapsulate(inb, packet)
    assert err.value.reason is DropReason.DUMMY
    assert inb.stats.drops[DropReason.DUMMY] == 1 and inb.stats.packets == 0
    with pytest.raises(EspError) as err:  # and it cannot be replayed
        decapsulate(inb, packet)
    assert err.value.reason is DropReason.REPLAY


def test_next_header_not_allowed() -> None:
    out, inb = make_pair("aes-gcm-128")
    with pytest.raises(EspError) as err:
        decapsulate(inb, encapsulate(out, b"\x08\x00\x00\x00", 1))  # transport-mode ICMP
    assert err.value.reason is DropReason.BAD_NEXT_HEADER


@pytest.mark.parametrize(("inner", "nh"), [
    (ipv6_packet(b"abc"), 4),  # claims IPv4, is IPv6
    (ipv4_packet(b"abc"), 41),  # claims IPv6, is IPv4
    (ipv4_packet(b"abc")[:19], 4),  # truncated IPv4 header
    (ipv4_packet(b"abcdef")[:-1], 4),  # total length beyond the payload
    (b"", 41),
])
def test_inner_packet_must_match_next_header(inner: bytes, nh: int) -> None:
    out, inb = make_pair("aes-gcm-128")
    with pytest.raises(EspError) as err:
        decapsulate(inb, encapsulate(out, inner, nh))
    assert err.value.reason is DropReason.MALFORMED


@pytest.mark.parametrize(("builder", "nh"), [(ipv4_packet, 4), (ipv6_packet, 41)])
def test_tfc_padding_after_inner_packet_is_stripped(builder: Callable[[bytes], bytes], nh: int) -> None:
    out, inb = make_pair("aes-cbc-128/sha1-96")
    inner = builder(b"data")
    packet = encapsulate(out, inner + bytes(37), nh)  # RFC 4303 2.7 TFC padding
    assert decapsulate(inb, packet) == (nh, inner)


# -- strict parsing --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CIPHERS))
def test_short_and_misaligned_packets_are_malformed(name: str) -> None:
    out, inb = make_pair(name)
    packet = encapsulate(out, ipv4_packet(b"0123456789"), 4)
    for cut in range(len(packet)):
        with pytest.raises(EspError) as err:
            decapsulate(inb, packet[:cut])
        assert err.value.reason in (DropReason.MALFORMED, DropReason.AUTH_FAILED), cut
        if cut < ESP_HEADER_LEN + inb.cipher.iv_len + inb.cipher.icv_len + inb.cipher.align:
            assert err.value.reason is DropReason.MALFORMED, cut
    assert inb.replay is not None and inb.replay.top == 0


def test_peek_spi_and_spi_mismatch() -> None:
    with pytest.raises(EspError):
        peek_spi(b"\x00" * 7)
    out, _ = make_pair("aes-gcm-128")
    other = EspSA(Direction.IN, SPI + 1, make_cipher("aes-gcm-128"))
    with pytest.raises(EspError) as err:
        decapsulate(other, encapsulate(out, ipv4_packet(b""), 4))
    assert err.value.reason is DropReason.SPI_MISMATCH


def test_sequence_number_zero_is_a_replay() -> None:
    cipher = make_cipher("aes-gcm-128")
    _, inb = make_pair("aes-gcm-128")
    packet = esp_seal(cipher, SPI, 0, bytes(8), ipv4_packet(b""), 4)
    with pytest.raises(EspError) as err:
        decapsulate(inb, packet)
    assert err.value.reason is DropReason.REPLAY


def test_direction_misuse_is_a_programming_error() -> None:
    out, inb = make_pair("aes-gcm-128")
    with pytest.raises(ValueError):
        encapsulate(inb, b"", 4)
    with pytest.raises(ValueError):
        decapsulate(out, b"")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=200), name=st.sampled_from(sorted(CIPHERS)))
def test_garbage_only_raises_esp_error(data: bytes, name: str) -> None:
    _, inb = make_pair(name)
    with pytest.raises(EspError):
        decapsulate(inb, struct.pack("!I", SPI) + data)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_bit_flips_never_deliver(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(CIPHERS)))
    out, inb = make_pair(name)
    packet = bytearray(encapsulate(out, ipv4_packet(data.draw(st.binary(max_size=64))), 4))
    idx = data.draw(st.integers(4, len(packet) - 1))
    packet[idx] ^= data.draw(st.integers(1, 255))
    with pytest.raises(EspError) as err:
        decapsulate(inb, bytes(packet))
    assert err.value.reason in (DropReason.AUTH_FAILED, DropReason.MALFORMED, DropReason.REPLAY)


# -- configuration errors ------------------------------------------------------------------------
@pytest.mark.parametrize("args", [
    (EncrTransform.AES_GCM_16, 128, None, bytes(16)),  # salt missing
    (EncrTransform.AES_GCM_16, 64, None, bytes(12)),
    (EncrTransform.AES_GCM_16, 128, IntegTransform.HMAC_SHA2_256_128, bytes(20), bytes(32)),
    (EncrTransform.CHACHA20_POLY1305, 128, None, bytes(20)),
    (EncrTransform.AES_CBC, 128, None, bytes(16)),  # no integrity
    (EncrTransform.AES_CBC, 128, IntegTransform.HMAC_SHA2_256_128, bytes(16), bytes(20)),
    (EncrTransform.AES_CBC, 100, IntegTransform.HMAC_SHA1_96, bytes(13), bytes(20)),
    (3, 192, IntegTransform.HMAC_SHA1_96, bytes(24), bytes(20)),  # 3DES: not supported
    (EncrTransform.AES_CBC, 128, 5, bytes(16), bytes(16)),  # AES-XCBC: not supported
])
def test_bad_configuration_raises_value_error(args: tuple) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError):
        EspCipher(*args)
