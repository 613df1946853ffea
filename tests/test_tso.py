"""vpn_gw.dataplane.userspace.tso: cutting a TUN TSO super-packet into wire segments, checked
against segments built independently (esp.ip.checksum) and against gro.coalesce (its inverse)."""
from __future__ import annotations

import ipaddress
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from esp.ip import checksum
from tests.test_gro import flows, tcp4
from vpn_gw.dataplane.userspace.gro import NO_OFFLOAD, coalesce_counted
from vpn_gw.dataplane.userspace.tso import VIRTIO_NET_HDR_GSO_TCPV6, segment

SRC6, DST6 = ipaddress.ip_address("2001:db8:1::2").packed, ipaddress.ip_address("2001:db8:2::2").packed


def tcp6(seq: int, payload: bytes, *, flags: int = 0x10, opts: bytes = b"") -> bytes:
    thl = 20 + len(opts)
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, seq, 77, (thl // 4) << 4, flags, 500, 0, 0) + opts + payload
    c = checksum(SRC6 + DST6 + struct.pack("!IxxxB", len(tcp), 6) + tcp)
    tcp = tcp[:16] + c.to_bytes(2, "big") + tcp[18:]
    return struct.pack("!IHBB", 0x60000000, len(tcp), 6, 64) + SRC6 + DST6 + tcp


def vnet(gso_type: int, hdr_len: int, size: int, csum_start: int) -> bytes:
    return struct.pack("=BBHHHH", 1, gso_type, hdr_len, size, csum_start, 16)


@settings(max_examples=300, deadline=None)
@given(flows(), st.booleans())
def test_segmenting_undoes_coalescing_ipv4(pkts, push_last):
    if push_last:  # the last segment pushed, as a sender's TSO packet usually ends
        last = bytearray(pkts[-1])
        pkts[-1] = tcp4(int.from_bytes(last[24:28], "big"), bytes(last[20 + (last[32] >> 4) * 4:]),
                        flags=0x18, opts=bytes(last[40:20 + (last[32] >> 4) * 4]), src=bytes(last[12:16]),
                        ident=len(pkts) - 1)
    got = []
    for bufs, _n in coalesce_counted(pkts):
        if bytes(bufs[0]) == NO_OFFLOAD:
            got.append(bytes(bufs[1]))
        else:
            got += segment(bytes(bufs[0]), b"".join(bytes(b) for b in bufs[1:]))
    assert got == pkts  # byte for byte: lengths, identification, checksums, flags


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 1400), st.integers(1, 30), st.data())
def test_segmenting_ipv6_matches_independent_segments(size, count, data):
    last = data.draw(st.integers(1, size))
    opts = data.draw(st.sampled_from([b"", b"\x01\x01\x08\x0a" + bytes(range(8))]))
    seq0 = data.draw(st.integers(0, 0xFFFFFFFF))
    rnd = data.draw(st.randoms(use_true_random=False))
    payloads = [rnd.randbytes(size) for _ in range(count - 1)] + [rnd.randbytes(last)]
    want, seq = [], seq0
    for k, p in enumerate(payloads):
        want.append(tcp6(seq, p, flags=0x18 if k == count - 1 else 0x10, opts=opts))
        seq = (seq + len(p)) & 0xFFFFFFFF
    hl = 60 + len(opts)
    body = b"".join(payloads)
    first = bytearray(tcp6(seq0, b"", flags=0x18, opts=opts))
    first[4:6] = (hl - 40 + len(body)).to_bytes(2, "big")
    first[56:58] = b"\xab\xcd"  # whatever the kernel left in the checksum field
    assert segment(vnet(VIRTIO_NET_HDR_GSO_TCPV6, hl, size, 40), bytes(first) + body) == want


def test_fin_and_cwr_go_where_tso_puts_them():
    pl = [bytes([k]) * 100 for k in range(3)]
    base = tcp4(1000, b"".join(pl), flags=0x10 | 0x80 | 0x08 | 0x01, ident=5)  # ACK CWR PSH FIN
    segs = segment(vnet(1, 40, 100, 20), base)
    assert [s[33] for s in segs] == [0x10 | 0x80, 0x10, 0x10 | 0x08 | 0x01]
    assert [int.from_bytes(s[24:28], "big") for s in segs] == [1000, 1100, 1200]
    assert [int.from_bytes(s[4:6], "big") for s in segs] == [5, 6, 7]
    for s in segs:
        assert checksum(s[:20]) == 0
        assert checksum(s[12:20] + struct.pack("!BBH", 0, 6, len(s) - 20) + s[20:]) == 0


def test_malformed_super_packets_are_refused():
    good = tcp4(0, bytes(3000))
    assert segment(vnet(1, 40, 1000, 20), good) is not None
    assert segment(vnet(1, 40, 0, 20), good) is None  # no segment size
    assert segment(vnet(3, 40, 1000, 20), good) is None  # UDP GSO: not offered
    assert segment(vnet(1, 40, 1000, 20), good[:30]) is None  # truncated
    assert segment(vnet(4, 40, 1000, 20), good) is None  # says IPv6, is IPv4
    frag = bytearray(good)
    frag[6] = 0x20  # MF
    assert segment(vnet(1, 40, 1000, 20), bytes(frag)) is None
    assert segment(vnet(1, 40, 1, 20), tcp4(0, bytes(200))) is None  # over 128 segments
