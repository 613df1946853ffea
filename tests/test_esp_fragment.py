"""Tunnel MTU, red-side IPv4 fragmentation (RFC 791), ICMP Fragmentation Needed (RFC 792/1191)
and ICMPv6 Packet Too Big (RFC 4443). Checksums are verified with an independent routine."""
from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esp import (
    Direction,
    DropReason,
    EncrTransform,
    EspCipher,
    EspError,
    EspSA,
    IntegTransform,
    decide,
    encapsulate,
    fragment_ipv4,
    icmp_frag_needed,
    icmpv6_packet_too_big,
    tunnel_mtu,
)

SRC4, DST4, GW4 = bytes([192, 0, 2, 10]), bytes([198, 51, 100, 7]), "192.0.2.1"
SRC6 = bytes.fromhex("20010db8000000000000000000000010")
DST6 = bytes.fromhex("20010db8000100000000000000000020")
GW6 = "2001:db8::1"


def ones_sum_ok(data: bytes) -> bool:
    """Independent RFC 1071 verification: the one's complement sum over data incl. checksum
    field is 0xFFFF."""
    if len(data) % 2:
        data += b"\0"
    acc = 0
    for i in range(0, len(data), 2):
        acc += (data[i] << 8) | data[i + 1]
        acc = (acc & 0xFFFF) + (acc >> 16)
    return acc == 0xFFFF


def v4(payload: bytes, *, df: bool = False, mf: bool = False, offset: int = 0,
       options: bytes = b"", proto: int = 17, src: bytes = SRC4, dst: bytes = DST4,
       ident: int = 0xBEEF, tos: int = 0x28) -> bytes:
    hlen = 20 + len(options)
    flags = (0x4000 if df else 0) | (0x2000 if mf else 0) | offset
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | hlen // 4, tos, hlen + len(payload), ident, flags,
                      61, proto, 0, src, dst) + options
    acc = sum(struct.unpack(f"!{hlen // 2}H", hdr))
    while acc >> 16:
        acc = (acc & 0xFFFF) + (acc >> 16)
    hdr = hdr[:10] + struct.pack("!H", ~acc & 0xFFFF) + hdr[12:]
    return hdr + payload


def v6(payload: bytes, *, nh: int = 17, src: bytes = SRC6, dst: bytes = DST6) -> bytes:
    return struct.pack("!IHBB", 6 << 28, len(payload), nh, 64) + src + dst + payload


def fields(pkt: bytes) -> dict[str, int | bytes]:
    vihl, tos, total, ident, frag, ttl, proto, _ = struct.unpack_from("!BBHHHBBH", pkt)
    hlen = (vihl & 15) * 4
    return dict(hlen=hlen, tos=tos, total=total, ident=ident, df=(frag >> 14) & 1,
                mf=(frag >> 13) & 1, offset=(frag & 0x1FFF) * 8, ttl=ttl, proto=proto,
                src=pkt[12:16], dst=pkt[16:20], options=pkt[20:hlen], data=pkt[hlen:total])


def reassemble(frags: list[bytes]) -> tuple[int, bytes, bool]:
    """Tiny reassembler: (first offset, contiguous data, final MF)."""
    parts = sorted((fields(f) for f in frags), key=lambda f: f["offset"])  # type: ignore[arg-type, return-value]
    keys = {(p["src"], p["dst"], p["proto"], p["ident"]) for p in parts}
    assert len(keys) == 1
    data, expect = b"", parts[0]["offset"]
    for p in parts:
        assert p["offset"] == expect, "hole or overlap"
        data += p["data"]  # type: ignore[operator]
        expect += len(p["data"])  # type: ignore[arg-type]
    assert all(p["mf"] for p in parts[:-1])
    return parts[0]["offset"], data, bool(parts[-1]["mf"])  # type: ignore[return-value]


# -- fragmentation ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mtu", [68, 69, 75, 76, 100, 576, 1000, 1279, 1400])
@pytest.mark.parametrize("size", [100, 1001, 1480, 4000])
def test_fragments_reassemble_to_the_original(mtu: int, size: int) -> None:
    payload = os.urandom(size)
    pkt = v4(payload)
    frags = fragment_ipv4(pkt, mtu)
    if len(pkt) <= mtu:
        assert frags == [pkt]
        return
    assert len(frags) > 1
    for f in frags:
        ff = fields(f)
        assert len(f) <= mtu and ff["total"] == len(f)
        assert ones_sum_ok(f[: ff["hlen"]])  # type: ignore[index]
        assert ff["offset"] % 8 == 0  # type: ignore[operator]
        assert (ff["tos"], ff["ttl"], ff["proto"], ff["ident"]) == (0x28, 61, 17, 0xBEEF)
        assert ff["df"] == 0
    for f in frags[:-1]:
        assert len(fields(f)["data"]) % 8 == 0  # type: ignore[arg-type]
    assert reassemble(frags) == (0, payload, False)


def test_options_copied_per_copy_flag() -> None:
    router_alert = bytes([0x94, 4, 0, 0])  # copy flag set
    record_route = bytes([0x07, 7, 4, 0, 0, 0, 0])  # copy flag clear
    options = router_alert + record_route + b"\x01"  # NOP pads to 12
    payload = os.urandom(600)
    frags = fragment_ipv4(v4(payload, options=options), 256)
    assert fields(frags[0])["options"] == options
    for f in frags[1:]:
        assert fields(f)["options"] == router_alert
        assert fields(f)["hlen"] == 24
        assert ones_sum_ok(f[:24])
    assert reassemble(frags)[1] == payload


def test_malformed_options_are_refused() -> None:
    with pytest.raises(EspError) as err:
        fragment_ipv4(v4(bytes(200), options=bytes([0x94, 9, 0, 0])), 100)
    assert err.value.reason is DropReason.MALFORMED


@pytest.mark.parametrize("mf", [True, False])
def test_already_fragmented_packet(mf: bool) -> None:
    payload = os.urandom(1200)
    frag = v4(payload, mf=mf, offset=185)  # offset 1480 bytes
    assert decide(frag, 1300) == "pass"
    assert fragment_ipv4(frag, 1300) == [frag]  # fits: passes as it is
    assert decide(frag, 500) == "fragment"
    pieces = fragment_ipv4(frag, 500)
    assert all(len(p) <= 500 for p in pieces)
    assert reassemble(pieces) == (1480, payload, mf)  # last piece keeps the original MF


def test_df_set_is_refused() -> None:
    pkt = v4(bytes(1400), df=True)
    assert decide(pkt, 1400) == "icmp"
    with pytest.raises(EspError) as err:
        fragment_ipv4(pkt, 1400)
    assert err.value.reason is DropReason.DF_SET
    assert fragment_ipv4(pkt, 1420) == [pkt]  # fits: DF does not matter


def test_link_padding_ignored_and_bad_input_raises_typed_error() -> None:
    pkt = v4(bytes(300))
    assert reassemble(fragment_ipv4(pkt + b"\xee" * 6, 100))[1] == bytes(300)
    bad_csum = bytearray(pkt)
    bad_csum[10] ^= 1
    for bad in (b"", pkt[:19], bytes(bad_csum), pkt[:-1], b"\x46" + pkt[1:], b"\x65" + pkt[1:]):
        with pytest.raises(EspError) as err:
            fragment_ipv4(bad, 100)
        assert err.value.reason is DropReason.MALFORMED
    with pytest.raises(EspError) as err:
        fragment_ipv4(pkt, 60)
    assert err.value.reason is DropReason.BAD_MTU


@settings(max_examples=150, deadline=None)
@given(size=st.integers(0, 3000), mtu=st.integers(68, 1600), opt_words=st.integers(0, 10))
def test_fragmentation_property(size: int, mtu: int, opt_words: int) -> None:
    options = (bytes([0x94, 4, 0, 0]) * opt_words)[: 4 * opt_words]
    payload = bytes(i & 0xFF for i in range(size))
    frags = fragment_ipv4(v4(payload, options=options), mtu)
    assert all(len(f) <= mtu for f in frags)
    assert all(ones_sum_ok(f[: fields(f)["hlen"]]) for f in frags)  # type: ignore[misc]
    assert reassemble(frags) == (0, payload, False)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=100), mtu=st.integers(0, 2000))
def test_garbage_only_raises_esp_error(data: bytes, mtu: int) -> None:
    for fn in (fragment_ipv4, decide):
        try:
            fn(data, mtu)  # type: ignore[operator]
        except EspError:
            pass


# -- ICMP Fragmentation Needed -----------------------------------------------------------------------
@pytest.mark.parametrize("options", [b"", bytes([0x94, 4, 0, 0]) * 3])
def test_icmp_frag_needed(options: bytes) -> None:
    orig = v4(os.urandom(1400), df=True, options=options, proto=6, tos=0xB8)
    msg = icmp_frag_needed(orig, 1372, GW4)
    ip = fields(msg)
    assert ip["hlen"] == 20 and ip["total"] == len(msg)
    assert ones_sum_ok(msg[:20])
    assert ip["proto"] == 1 and ip["src"] == bytes([192, 0, 2, 1]) and ip["dst"] == SRC4
    assert ip["df"] == 0 and ip["mf"] == 0 and ip["offset"] == 0
    assert ip["tos"] == 0xC0 | (0xB8 & 0x1E)
    icmp = msg[20:]
    assert ones_sum_ok(icmp)
    typ, code, _csum, unused, mtu = struct.unpack_from("!BBHHH", icmp)
    assert (typ, code, unused, mtu) == (3, 4, 0, 1372)
    hlen = 20 + len(options)
    assert icmp[8:] == orig[: hlen + 8]  # original header + first 64 bits of data


def test_icmp_frag_needed_bounds() -> None:
    orig = v4(bytes(100), df=True)
    with pytest.raises(EspError):
        icmp_frag_needed(orig, 67, GW4)
    with pytest.raises(EspError):
        icmp_frag_needed(orig[:10], 576, GW4)
    short = v4(b"abc", df=True)  # fewer than 8 data bytes: quote what there is
    assert icmp_frag_needed(short, 576, GW4)[28:] == short


@pytest.mark.parametrize(
    ("pkt", "expected"),
    [
        (v4(bytes(1500), df=True), "icmp"),
        (v4(bytes([3, 1]) + bytes(1500), df=True, proto=1), "drop"),  # ICMP error
        (v4(bytes([8, 0]) + bytes(1500), df=True, proto=1), "icmp"),  # echo request
        (v4(bytes(1500), df=True, offset=10, mf=True), "drop"),  # non-initial fragment
        (v4(bytes(1500), df=True, dst=bytes([224, 0, 0, 5])), "drop"),  # multicast dst
        (v4(bytes(1500), df=True, dst=bytes([255] * 4)), "drop"),  # broadcast
        (v4(bytes(1500), df=True, src=bytes(4)), "drop"),  # unspecified source
        (v4(bytes(1500), df=True, src=bytes([127, 0, 0, 1])), "drop"),
        (v4(bytes(1500)), "fragment"),
        (v4(bytes(1000), df=True), "pass"),
    ],
)
def test_decide_ipv4(pkt: bytes, expected: str) -> None:
    assert decide(pkt, 1400) == expected


# -- ICMPv6 Packet Too Big ---------------------------------------------------------------------------
def test_icmpv6_packet_too_big() -> None:
    orig = v6(os.urandom(2000), nh=6)
    msg = icmpv6_packet_too_big(orig, 1400, GW6)
    assert len(msg) == 1280  # as much of the original as fits in the minimum MTU
    ver, plen, nh, hlim = struct.unpack_from("!IHBB", msg)
    assert ver >> 28 == 6 and plen == len(msg) - 40 and nh == 58 and hlim == 64
    src, dst = msg[8:24], msg[24:40]
    assert src == bytes.fromhex("20010db8000000000000000000000001") and dst == SRC6
    icmp = msg[40:]
    typ, code, _csum, mtu = struct.unpack_from("!BBHI", icmp)
    assert (typ, code, mtu) == (2, 0, 1400)
    assert icmp[8:] == orig[: 1280 - 48]
    pseudo = src + dst + struct.pack("!I", len(icmp)) + b"\0\0\0" + bytes([58])
    assert ones_sum_ok(pseudo + icmp)


def test_icmpv6_short_original_and_minimum_mtu() -> None:
    orig = v6(bytes(1300))
    msg = icmpv6_packet_too_big(orig, 1000, GW6)
    assert struct.unpack_from("!I", msg, 44)[0] == 1280  # never below the IPv6 minimum
    small = v6(bytes(10))
    msg = icmpv6_packet_too_big(small, 1300, GW6)
    assert msg[48:] == small
    assert ones_sum_ok(msg[8:40] + struct.pack("!I", len(msg) - 40) + b"\0\0\0:" + msg[40:])


@pytest.mark.parametrize(
    ("pkt", "mtu", "expected"),
    [
        (v6(bytes(1360)), 1400, "pass"),
        (v6(bytes(1400)), 1300, "icmp"),
        (v6(bytes(1200)), 1000, "pass"),  # <= 1280: the tunnel must carry it (outer frag)
        (v6(bytes([1, 0]) + bytes(1500), nh=58), 1300, "drop"),  # ICMPv6 error
        (v6(bytes([128, 0]) + bytes(1500), nh=58), 1300, "icmp"),  # echo request
        # hop-by-hop options header before an ICMPv6 error
        (v6(bytes([58, 0, 1, 4, 0, 0, 0, 0]) + bytes([3, 0]) + bytes(1500), nh=0), 1300, "drop"),
        (v6(bytes(1500), src=bytes.fromhex("ff02" + "00" * 13 + "01")), 1300, "drop"),
        (v6(bytes(1500), dst=bytes.fromhex("ff02" + "00" * 13 + "01")), 1300, "icmp"),
    ],
)
def test_decide_ipv6(pkt: bytes, mtu: int, expected: str) -> None:
    assert decide(pkt, mtu) == expected


# -- tunnel MTU exactness ----------------------------------------------------------------------------
CIPHERS = [
    (EncrTransform.AES_GCM_16, 128, None, 20, 0),
    (EncrTransform.AES_GCM_16, 256, None, 36, 0),
    (EncrTransform.CHACHA20_POLY1305, 256, None, 36, 0),
    (EncrTransform.AES_CBC, 128, IntegTransform.HMAC_SHA1_96, 16, 20),
    (EncrTransform.AES_CBC, 128, IntegTransform.HMAC_SHA2_256_128, 16, 32),
    (EncrTransform.AES_CBC, 256, IntegTransform.HMAC_SHA2_384_192, 32, 48),
    (EncrTransform.AES_CBC, 256, IntegTransform.HMAC_SHA2_512_256, 32, 64),
]


@pytest.mark.parametrize("udp_encap", [False, True], ids=["esp", "udp-esp"])
@pytest.mark.parametrize("outer_family", [4, 6])
@pytest.mark.parametrize("spec", CIPHERS, ids=lambda s: f"{s[0].name}-{s[1]}-{s[2]}")
def test_tunnel_mtu_is_exact(spec: tuple, outer_family: int, udp_encap: bool) -> None:  # type: ignore[type-arg]
    encr, bits, integ, klen, ilen = spec
    sa = EspSA(Direction.OUT, 0x1000, EspCipher(encr, bits, integ, bytes(klen), bytes(ilen)))
    outer_hdr = (20 if outer_family == 4 else 40) + (8 if udp_encap else 0)
    for path_mtu in [576, 1280, 1400, 1492, 1500, 9000] + list(range(600, 700)):
        inner_mtu = tunnel_mtu(path_mtu, outer_family, sa.cipher, udp_encap=udp_encap)
        fits = outer_hdr + len(encapsulate(sa, v4(bytes(inner_mtu - 20)), 4))
        too_big = outer_hdr + len(encapsulate(sa, v4(bytes(inner_mtu - 19)), 4))
        assert fits <= path_mtu < too_big, (path_mtu, inner_mtu, fits, too_big)


def test_tunnel_mtu_known_values_and_tiny_paths() -> None:
    gcm = EspCipher(EncrTransform.AES_GCM_16, 128, None, bytes(20))
    # 1500 - 20 - 8 - 8 - 16 = 1448 = 362 * 4 -> 1446
    assert tunnel_mtu(1500, 4, gcm) == 1446
    cbc = EspCipher(EncrTransform.AES_CBC, 128, IntegTransform.HMAC_SHA2_256_128, bytes(16), bytes(32))
    # 1500 - 40 - 8 - 8 - 16 - 16 = 1412 -> 1408 - 2 = 1406
    assert tunnel_mtu(1500, 6, cbc, udp_encap=True) == 1406
    assert tunnel_mtu(40, 4, gcm) == 0
    with pytest.raises(ValueError):
        tunnel_mtu(1500, 5, gcm)
