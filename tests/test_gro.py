"""vpn_gw.dataplane.userspace.gro: coalescing decrypted TCP segments into one TUN write, and back."""
from __future__ import annotations

import os
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from esp.ip import checksum
from vpn_gw.dataplane.userspace.gro import (
    NO_OFFLOAD,
    VIRTIO_NET_HDR_GSO_TCPV4,
    _checksums_ok,
    coalesce,
    coalesce_counted,
    complete_checksum,
)

SRC, DST = bytes([10, 1, 0, 2]), bytes([10, 2, 0, 2])


def tcp4(seq: int, payload: bytes, *, flags: int = 0x10, ident: int = 1, ack: int = 1000, window: int = 500,
         opts: bytes = b"", sport: int = 40000, df: bool = True, ttl: int = 63, src: bytes = SRC) -> bytes:
    thl = 20 + len(opts)
    tcp = struct.pack("!HHIIBBHHH", sport, 5201, seq, ack, (thl // 4) << 4, flags, window, 0, 0) + opts + payload
    pseudo = src + DST + struct.pack("!BBH", 0, 6, len(tcp))
    c = checksum(pseudo + tcp)
    tcp = tcp[:16] + c.to_bytes(2, "big") + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), ident, 0x4000 if df else 0, ttl, 6, 0, src, DST)
    ip = ip[:10] + checksum(ip).to_bytes(2, "big") + ip[12:]
    return ip + tcp


def segment(bufs: list) -> list[bytes]:
    """What the kernel makes of one write (reference GSO for TCPV4 with NEEDS_CSUM)."""
    vnet, data = bytes(bufs[0]), b"".join(bytes(b) for b in bufs[1:])
    flags, gso_type, hdr_len, gso_size, cstart, coff = struct.unpack("=BBHHHH", vnet)
    if gso_type == 0:
        assert vnet == NO_OFFLOAD
        return [data]
    assert gso_type == VIRTIO_NET_HDR_GSO_TCPV4 and flags == 1 and (cstart, coff) == (20, 16)
    assert checksum(data[:20]) == 0  # the coalesced IP header is valid
    hdr, payload = data[:hdr_len], data[hdr_len:]
    seq0 = int.from_bytes(hdr[24:28], "big")
    ident0 = int.from_bytes(hdr[4:6], "big")
    out = []
    chunks = [payload[o:o + gso_size] for o in range(0, len(payload), gso_size)]
    for k, chunk in enumerate(chunks):
        h = bytearray(hdr)
        h[2:4] = (hdr_len + len(chunk)).to_bytes(2, "big")
        h[4:6] = ((ident0 + k) & 0xFFFF).to_bytes(2, "big")
        h[10:12] = b"\0\0"
        h[10:12] = checksum(bytes(h[:20])).to_bytes(2, "big")
        h[24:28] = ((seq0 + k * gso_size) & 0xFFFFFFFF).to_bytes(4, "big")
        if k < len(chunks) - 1:
            h[33] &= ~0x08  # PSH only on the last segment
        h[36:38] = b"\0\0"
        tcp = bytes(h[20:]) + chunk
        c = checksum(bytes(h[12:20]) + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)
        h[36:38] = c.to_bytes(2, "big")
        out.append(bytes(h) + chunk)
    return out


def nseg(w: list) -> int:
    return 1 if bytes(w[0]) == NO_OFFLOAD else len(w) - 2


def no_ident(p: bytes) -> bytes:
    return p[:4] + p[6:10] + p[12:]


def roundtrip(pkts: list[bytes]) -> list[list]:
    writes = coalesce(pkts)
    got = [s for w in writes for s in segment(w)]
    assert [no_ident(p) for p in got] == [no_ident(p) for p in pkts]
    return writes


def test_bulk_segments_become_one_write():
    pl = [os.urandom(1386) for _ in range(10)]
    seq = 0xFFFFF000  # wraps
    pkts = []
    for p in pl:
        pkts.append(tcp4(seq, p, ident=7 + len(pkts)))
        seq = (seq + len(p)) & 0xFFFFFFFF
    writes = roundtrip(pkts)
    assert len(writes) == 1 and nseg(writes[0]) == 10


def test_short_last_segment_and_psh_end_the_packet():
    pkts = [tcp4(0, bytes(100)), tcp4(100, bytes(100)), tcp4(200, bytes(50), flags=0x18),
            tcp4(250, bytes(100)), tcp4(350, bytes(40)), tcp4(390, bytes(100))]
    writes = roundtrip(pkts)
    assert [nseg(w) for w in writes] == [3, 2, 1]
    hdr = bytes(writes[0][1])
    assert hdr[33] == 0x18  # PSH of the last segment kept


def test_what_is_never_merged():
    base = tcp4(0, bytes(100))
    cases = [
        tcp4(100, bytes(100), ack=1001),                 # other ACK number
        tcp4(100, bytes(100), window=501),               # other window
        tcp4(100, bytes(100), opts=b"\x01\x01\x08\x0a" + bytes(8)),  # other options
        tcp4(100, bytes(100), sport=40001),              # other flow
        tcp4(101, bytes(100)),                           # not the next sequence number
        tcp4(100, bytes(101)),                           # longer than the first
        tcp4(100, bytes(100), flags=0x11),               # FIN
        tcp4(100, bytes(100), df=False),                 # DF clear
        tcp4(100, bytes(100), ttl=62),                   # other TTL
        tcp4(100, b""),                                  # pure ACK
    ]
    for q in cases:
        assert len(roundtrip([base, q])) == 2, q.hex()


def test_bad_checksum_is_written_alone_unchanged():
    good = [tcp4(i * 100, os.urandom(100)) for i in range(4)]
    bad = bytearray(good[2])
    bad[-1] ^= 0xFF  # corrupted before the peer encrypted it
    pkts = [good[0], good[1], bytes(bad), good[3]]
    writes = coalesce(pkts)
    assert [nseg(w) for w in writes] == [2, 1, 1]
    assert writes[1] == [NO_OFFLOAD, bytes(bad)]


def test_non_tcp_and_ipv6_pass_through():
    udp = bytes.fromhex("4500001c0001000040110000") + SRC + DST + bytes(8)
    v6 = bytes([0x60]) + bytes(39)
    pkts = [udp, v6, tcp4(0, bytes(10))]
    assert coalesce(pkts) == [[NO_OFFLOAD, p] for p in pkts]


def test_complete_checksum_for_needs_csum_reads():
    pkt = tcp4(5, os.urandom(33))
    # what the kernel would hand over: pseudo-header sum in the field, NEEDS_CSUM
    tcp_len = len(pkt) - 20
    ps = sum(struct.unpack("!4H", pkt[12:20])) + 6 + tcp_len
    while ps > 0xFFFF:
        ps = (ps & 0xFFFF) + (ps >> 16)
    partial = pkt[:36] + ps.to_bytes(2, "big") + pkt[38:]
    vnet = struct.pack("=BBHHHH", 1, 0, 0, 0, 20, 16)
    assert complete_checksum(vnet, partial) == pkt
    assert complete_checksum(NO_OFFLOAD, pkt) == pkt
    assert complete_checksum(struct.pack("=BBHHHH", 0, 1, 40, 1000, 0, 0), pkt) is None


def test_counted_writes_cover_every_packet_once():
    from vpn_gw.dataplane.userspace.gro import coalesce_counted
    pkts = [tcp4(i * 100, os.urandom(100)) for i in range(5)] + [tcp4(0, b"", flags=0x10)]
    got = coalesce_counted(pkts)
    assert [n for _, n in got] == [5, 1] and sum(n for _, n in got) == len(pkts)


# ---- the whole-run checksum check against the reference (esp.ip.checksum), on random packets

def reference_ok(p: bytes) -> bool:
    """IP header and TCP checksum of an IPv4 packet without options, by the reference code."""
    tcp = p[20:]
    pseudo = p[12:20] + struct.pack("!BBH", 0, 6, len(tcp))
    return checksum(p[:20]) == 0 and checksum(pseudo + tcp) == 0


@st.composite
def flows(draw):
    """A run of consecutive segments of one flow: equal sizes (odd or even), a shorter last one."""
    size = draw(st.integers(1, 1460))
    count = draw(st.integers(1, 12))
    last = draw(st.integers(1, size))
    opts = draw(st.sampled_from([b"", b"\x01\x01\x08\x0a" + bytes(range(8))]))
    src = draw(st.binary(min_size=4, max_size=4))
    seq = draw(st.integers(0, 0xFFFFFFFF))
    rnd = draw(st.randoms(use_true_random=False))
    pkts = []
    for k in range(count):
        n = size if k < count - 1 else last
        pkts.append(tcp4(seq, rnd.randbytes(n), opts=opts, src=src, ident=k))
        seq = (seq + n) & 0xFFFFFFFF
    return pkts


@st.composite
def corruptions(draw, pkts):
    """(segment index, byte offset, xor mask): one byte changed, anywhere in the packet."""
    k = draw(st.integers(0, len(pkts) - 1))
    off = draw(st.integers(0, len(pkts[k]) - 1))
    return k, off, draw(st.integers(1, 255))


@settings(max_examples=300, deadline=None)
@given(flows())
def test_whole_run_sum_accepts_what_the_reference_accepts(pkts):
    assert all(reference_ok(p) for p in pkts)
    assert _checksums_ok(pkts)
    for p in pkts:
        assert _checksums_ok([p])


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_corrupted_segment_is_rejected_and_written_alone(data):
    pkts = data.draw(flows())
    k, off, mask = data.draw(corruptions(pkts))
    bad = bytearray(pkts[k])
    bad[off] ^= mask
    pkts[k] = bytes(bad)
    assert not reference_ok(pkts[k])
    assert _checksums_ok([pkts[k]]) is False
    assert _checksums_ok(pkts) is False
    writes = coalesce_counted(pkts)
    # every write, cut up by the kernel's rules, gives back exactly what arrived (a merged
    # corrupted segment would come back with its checksum "repaired")
    got = [s for w, _n in writes for s in segment(w)]
    assert [no_ident(p) for p in got] == [no_ident(p) for p in pkts]
    done = 0
    for w, n in writes:
        if done <= k < done + n:
            assert n == 1 and w == [NO_OFFLOAD, pkts[k]]
        done += n


@settings(max_examples=200, deadline=None)
@given(flows())
def test_random_runs_roundtrip_and_merge(pkts):
    writes = coalesce_counted(pkts)
    got = [s for w, _n in writes for s in segment(w)]
    assert [no_ident(p) for p in got] == [no_ident(p) for p in pkts]
    assert sum(n for _w, n in writes) == len(pkts)
    if len(pkts) > 1 and len(pkts[0]) - 20 > (pkts[0][32] >> 4) * 4:
        assert writes[0][1] == len(pkts)  # one flow, no PSH, all checksums right: one write
