"""The compiled helpers (vpn_gw/accel/_accel.c) against the pure-Python code
they replace, which stays the reference: the same checksums, the same verdicts, the same bytes.

In this project's setup (scripts/setup.sh installs a C compiler and Python's headers) the
module must be built: ``test_the_compiled_module_is_in_use`` fails otherwise (also when
VPN_GW_PURE_PYTHON is set), so the tests below never pass by comparing the Python code with
itself."""
from __future__ import annotations

import random
import shutil
import struct
import sysconfig
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esp.ip import checksum
from tests.test_gro import flows, tcp4
from tests.test_gro_udp import udp4 as flow_udp4
from tests.test_tso import tcp6, vnet
from vpn_gw import accel
from vpn_gw.dataplane.userspace import gro, tso


def ones_sum(data: bytes) -> int:
    """RFC 1071, word by word (esp.ip.checksum, uncomplemented): the ones' complement sum of the
    big-endian 16-bit words."""
    return ~checksum(data) & 0xFFFF


def test_the_compiled_module_is_in_use():
    headers = Path(sysconfig.get_paths()["include"], "Python.h").exists()
    if not (shutil.which("cc") and headers):
        pytest.fail("no C compiler or Python headers: scripts/setup.sh installs both")
    assert accel.COMPILED, accel.describe()
    assert accel.describe() == "compiled (_accel)"
    assert tso.segment is not tso.segment_py
    assert gro._checksums_ok is gro._checksums_ok_compiled


# ---- csum_words

@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=3000), max_size=8))
def test_csum_words_is_the_ones_complement_sum_of_each_buffer(bufs):
    c = accel.csum_words(bufs)
    assert 0 <= c <= 0xFFFF
    want = sum(ones_sum(b) for b in bufs)
    assert c % 0xFFFF == want % 0xFFFF
    assert (c == 0) == (want == 0)


@pytest.mark.parametrize("data", [b"", b"\0" * 9, b"\xff" * 2, b"\xff" * 1400, b"\xff", b"\x01",
                                  b"\x12\x34\x56", bytes(range(256)) * 6])
def test_csum_words_edges(data):
    for kind in (bytes, bytearray, memoryview):
        c = accel.csum_words([kind(data)])
        assert c % 0xFFFF == ones_sum(data) % 0xFFFF
        assert (c == 0) == (ones_sum(data) == 0)


def test_csum_words_refuses_what_is_not_a_buffer():
    with pytest.raises(TypeError):
        accel.csum_words([b"ab", "cd"])
    with pytest.raises(TypeError):
        accel.csum_words(5)


# ---- the decrypt side's verdicts (gro._checksums_ok) and NEEDS_CSUM completion

@settings(max_examples=300, deadline=None)
@given(st.data())
def test_run_verdicts_agree_on_good_and_corrupted_runs(data):
    pkts = data.draw(flows())
    assert gro._checksums_ok_compiled(pkts) is gro._checksums_ok_py(pkts) is True
    k = data.draw(st.integers(0, len(pkts) - 1))
    off = data.draw(st.integers(0, len(pkts[k]) - 1))
    bad = bytearray(pkts[k])
    bad[off] ^= data.draw(st.integers(1, 255))
    pkts[k] = bytes(bad)
    assert gro._checksums_ok_compiled(pkts) is gro._checksums_ok_py(pkts) is False
    assert gro._checksums_ok_compiled([pkts[k]]) is False


def udp4(payload: bytes, ident: int = 1) -> bytes:
    src, dst = bytes([10, 1, 0, 2]), bytes([10, 2, 0, 2])
    udp = struct.pack("!HHHH", 4000, 5201, 8 + len(payload), 0) + payload
    c = checksum(src + dst + struct.pack("!BBH", 0, 17, len(udp)) + udp) or 0xFFFF
    udp = udp[:6] + c.to_bytes(2, "big") + udp[8:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), ident, 0x4000, 64, 17, 0, src, dst)
    ip = ip[:10] + checksum(ip).to_bytes(2, "big") + ip[12:]
    return ip + udp


def test_udp_run_verdicts_agree():
    rnd = random.Random(7)
    for n in (1, 2, 17, 160, 1401):
        run = [udp4(rnd.randbytes(n), ident=k) for k in range(5)]
        assert gro._checksums_ok_compiled(run, 17) is gro._checksums_ok_py(run, 17) is True
        bad = bytearray(run[3])
        bad[-1] ^= 0x40
        run[3] = bytes(bad)
        assert gro._checksums_ok_compiled(run, 17) is gro._checksums_ok_py(run, 17) is False


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_udp_coalesce_writes_the_python_bytes(data):
    """The compiled run builder against gro._udp_run_py on random datagram lists: flows that
    differ, sizes that grow or shrink, corrupted bytes anywhere, headers the rules refuse; every
    start index. The same write (as one buffer) and the same count, or both None."""
    spec = data.draw(st.lists(st.tuples(st.integers(1, 1400), st.sampled_from([40000, 40001]),
                                        st.booleans(), st.sampled_from([63, 64])), min_size=1, max_size=80))
    pkts = [flow_udp4(bytes([k & 0xFF]) * size, ident=k, sport=sport, csum=cs, ttl=ttl)
            for k, (size, sport, cs, ttl) in enumerate(spec)]
    for _ in range(data.draw(st.integers(0, 3))):
        k = data.draw(st.integers(0, len(pkts) - 1))
        bad = bytearray(pkts[k])
        bad[data.draw(st.integers(0, len(bad) - 1))] ^= data.draw(st.integers(1, 255))
        pkts[k] = bytes(bad)
    for i in range(len(pkts)):
        want = gro._udp_run_py(pkts, i, len(pkts))
        got = accel.udp_coalesce(pkts, i, gro.MAX_SEGMENTS)
        if want is None:
            assert got is None
        else:
            assert got is not None
            assert got == (b"".join(bytes(b) for b in want[0]), want[1])


def test_udp_coalesce_edges():
    one = udp4(b"x" * 100)
    assert accel.udp_coalesce([one], 0, 64) is None  # a run needs two
    assert accel.udp_coalesce([one] * 70, 0, 64)[1] == 64
    assert accel.udp_coalesce([one] * 70, 64, 64)[1] == 6
    assert accel.udp_coalesce([one] * 3, 0, 2)[1] == 2
    big = udp4(b"y" * 1400)
    got = accel.udp_coalesce([big] * 64, 0, 64)  # 64 KiB at most
    assert got is not None and got[1] == 46 and len(got[0]) - 10 <= 65535
    for args in (([one, one], 2, 64), ([one, one], -1, 64), ([one, one], 0, 0)):
        with pytest.raises(ValueError):
            accel.udp_coalesce(*args)
    with pytest.raises(TypeError):
        accel.udp_coalesce([one, bytearray(one)], 0, 64)
    with pytest.raises(TypeError):
        accel.udp_coalesce((one, one), 0, 64)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 100, 1401])
def test_complete_checksum_agrees(n, monkeypatch):
    rnd = random.Random(n)
    good = tcp4(5, rnd.randbytes(n))
    partial = bytearray(good)
    tcp_len = len(good) - 20
    ps = ones_sum(good[12:20]) + 6 + tcp_len
    while ps > 0xFFFF:
        ps = (ps & 0xFFFF) + (ps >> 16)
    partial[36:38] = ps.to_bytes(2, "big")  # what a NEEDS_CSUM read holds: the pseudo-header sum
    hdr = struct.pack("=BBHHHH", 1, 0, 0, 0, 20, 16)
    compiled = gro.complete_checksum(hdr, bytes(partial))
    monkeypatch.setattr(gro, "csum_words", None)
    assert gro.complete_checksum(hdr, bytes(partial)) == compiled == good


# ---- the encrypt side's TSO segmentation

def both(v: bytes, pkt: bytes) -> list[bytes] | None:
    c = tso._segment_compiled(v, pkt)
    assert c == tso.segment_py(v, pkt)
    return c


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 1460), st.integers(0, 60), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF),
       st.sampled_from([0x10, 0x18, 0x19, 0x90, 0x99, 0x11]), st.booleans(), st.data())
def test_segments_are_byte_for_byte_the_python_ones(size, count, ident, seq, flags, v6, data):
    rnd = data.draw(st.randoms(use_true_random=False))
    extra = data.draw(st.integers(0, size - 1))
    payload = rnd.randbytes(count * size + extra)
    opts = data.draw(st.sampled_from([b"", b"\x01\x01\x08\x0a" + bytes(range(8))]))
    if v6:
        pkt, gso, ip_len = tcp6(seq, payload, flags=flags, opts=opts), 4, 40
    else:
        pkt, gso, ip_len = tcp4(seq, payload, flags=flags, opts=opts, ident=ident), 1, 20
    pkt = bytearray(pkt)
    pkt[ip_len + 16:ip_len + 18] = rnd.randbytes(2)  # NEEDS_CSUM leaves junk/a partial sum there
    gso_type = gso | data.draw(st.sampled_from([0, 0x80]))  # with or without the ECN bit
    segs = both(vnet(gso_type, ip_len + 20 + len(opts), size, ip_len), bytes(pkt))
    assert segs is not None and len(segs) == max(1, -(-len(payload) // size))
    assert b"".join(s[ip_len + 20 + len(opts):] for s in segs) == payload
    for s in segs:
        if v6:
            assert checksum(s[8:40] + struct.pack("!IxxxB", len(s) - 40, 6) + s[40:]) == 0
        else:
            assert checksum(s[:20]) == 0
            assert checksum(s[12:20] + struct.pack("!BBH", 0, 6, len(s) - 20) + s[20:]) == 0


def test_refusals_are_the_python_ones():
    good = tcp4(0, bytes(3000))
    g6 = tcp6(0, bytes(3000))
    cases = [
        (vnet(1, 40, 1000, 20), good), (vnet(1, 40, 0, 20), good), (vnet(3, 40, 1000, 20), good),
        (vnet(1, 40, 1000, 20), good[:30]), (vnet(1, 40, 1000, 20), good[:39]), (vnet(1, 40, 1000, 20), b""),
        (vnet(4, 40, 1000, 20), good), (vnet(1, 40, 1000, 20), g6), (vnet(4, 60, 1000, 40), g6),
        (vnet(4, 60, 1000, 40), g6[:59]), (vnet(1, 40, 1, 20), tcp4(0, bytes(200))),
        (vnet(1, 40, 0xFFFF, 20), good),
    ]
    frag = bytearray(good)
    frag[6] = 0x20  # MF
    cases.append((vnet(1, 40, 1000, 20), bytes(frag)))
    badlen = bytearray(good)
    badlen[2:4] = (len(good) - 1).to_bytes(2, "big")
    cases.append((vnet(1, 40, 1000, 20), bytes(badlen)))
    zerolen = bytearray(good)
    zerolen[2:4] = b"\0\0"  # "as long as the buffer": accepted
    cases.append((vnet(1, 40, 1000, 20), bytes(zerolen)))
    shortthl = bytearray(good)
    shortthl[32] = 0x40  # data offset 16 bytes
    cases.append((vnet(1, 40, 1000, 20), bytes(shortthl)))
    longthl = bytearray(tcp4(0, b""))
    longthl[32] = 0xF0  # 60-byte header in a 40-byte packet
    cases.append((vnet(1, 40, 1000, 20), bytes(longthl)))
    huge = bytearray(tcp4(0, b"") + bytes(70000 - 40))
    huge[2:4] = b"\0\0"
    cases.append((vnet(1, 40, 0xFFFF, 20), bytes(huge)))  # a 65 555-byte segment: refused
    verdicts = [both(v, p) is None for v, p in cases]
    assert verdicts == [False, True, True, True, True, True, True, True, False, True, True, False,
                        True, True, False, True, True, True]
    with pytest.raises(ValueError):
        tso._segment_compiled(b"\0" * 9, good)


# ---- recv_burst: the NAT-T socket's receive, against IkeSocket.recv_segments

def _ike_socket(address: str):
    from vpn_gw.transport.udp import IkeSocket
    s = IkeSocket(address, 0)
    s.port = s.sock.getsockname()[1]
    return s


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
def test_recv_burst_gives_what_recv_segments_gives(address):
    import socket

    from vpn_gw.transport.udp import BURST, BURST_SLOT
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    a, b = _ike_socket(address), _ike_socket(address)
    senders = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        for t in senders:
            t.bind((address, 0))
        rnd = random.Random(3)
        sent = []
        for k in range(BURST * 2 + 22):  # more than one burst: 64 + 64 + 22
            tx = senders[k % 2]
            data = rnd.randbytes(rnd.choice([1, 8, 160, 1400, 3000]))
            tx.sendto(data, (address, a.port))
            tx.sendto(data, (address, b.port))
            sent.append((data, tx.getsockname()[:2]))
        want = []
        while (got := b.recv_segments()) is not None:
            want.append(got)
        seen = []
        buf = a.burst_buffer()
        for _ in range(10):
            msgs = accel.recv_burst(a.fileno(), buf, BURST_SLOT, BURST)
            assert len(msgs) <= BURST
            for data, seg, name, dst in msgs:
                seen.append((data, seg, a.locals.get(dst) or a.local_of(dst), a.remotes.get(name) or a.remote_of(name)))
            if not msgs:
                break
        assert [(d, s, (loc[0], a.port), r) for d, s, loc, r in want] == seen
        assert [(d, r) for d, _s, _l, r in seen] == [(d, (ip, port)) for d, (ip, port) in sent]
        assert all(loc == (address, a.port) for _d, _s, loc, _r in seen)
        assert accel.recv_burst(a.fileno(), buf, BURST_SLOT, BURST) == []  # nothing queued
    finally:
        for s in (a, b):
            s.close()
        for t in senders:
            t.close()


def test_recv_burst_reports_udp_gro_segments():
    import socket
    import sys

    from vpn_gw.transport.udp import BURST, BURST_SLOT, SOL_UDP, UDP_SEGMENT
    a = _ike_socket("127.0.0.1")
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert a.enable_gro()
        payload = bytes(range(200)) * 7  # 1400 bytes: one GSO send of 5 x 280-byte datagrams
        tx.sendmsg([payload], [(SOL_UDP, UDP_SEGMENT, (280).to_bytes(2, sys.byteorder))], 0, ("127.0.0.1", a.port))
        tx.sendto(b"\xff", ("127.0.0.1", a.port))  # a keepalive: never coalesced with them
        msgs = accel.recv_burst(a.fileno(), a.burst_buffer(), BURST_SLOT, BURST)
        assert [(d, seg) for d, seg, _n, _l in msgs] == [(payload, 280), (b"\xff", 0)]
    finally:
        a.close()
        tx.close()


def test_recv_burst_refuses_bad_arguments():
    import os
    a = _ike_socket("127.0.0.1")
    try:
        buf = bytearray(1000)
        with pytest.raises(ValueError):
            accel.recv_burst(a.fileno(), buf, 100, 11)  # does not fit
        with pytest.raises(ValueError):
            accel.recv_burst(a.fileno(), buf, 10, 65)  # more than 64
        with pytest.raises(TypeError):
            accel.recv_burst(a.fileno(), bytes(1000), 100, 1)  # not writable
        r, w = os.pipe()
        os.close(w)
        with pytest.raises(OSError):
            accel.recv_burst(r, buf, 100, 1)  # not a socket
        os.close(r)
    finally:
        a.close()


# ---- read_burst: draining a TUN device, against os.read and the pure-Python header handling

def _socketpair():
    import socket
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)  # one packet per read, like TUN
    a.setblocking(False)
    return a, b


def _drain_all(fd: int, vnet: bool, count: int = 32) -> tuple[list[bytes], int, int, int, int]:
    buf = bytearray(65545)
    pkts: list[bytes] = []
    totals = [0, 0, 0, 0]
    for _ in range(100):
        got, *counts = accel.read_burst(fd, buf, count, vnet, tso.MAX_SEGMENTS)
        assert counts[0] <= count
        pkts += got
        totals = [t + c for t, c in zip(totals, counts, strict=True)]
        if counts[0] < count:
            break
    return pkts, *totals


def test_read_burst_reads_what_os_read_reads():
    import os
    a, b = _socketpair()
    try:
        rnd = random.Random(5)
        sent = [rnd.randbytes(rnd.choice([1, 60, 188, 1438, 9000])) for _ in range(50)]
        for p in sent:
            b.send(p)
        assert _drain_all(a.fileno(), False) == (sent, 50, 0, 0, 0)
        assert accel.read_burst(a.fileno(), bytearray(100), 32, False, 128) == ([], 0, 0, 0, 0)  # EAGAIN
        b.send(b"x" * 100)
        assert accel.read_burst(a.fileno(), bytearray(10), 4, False, 128)[0] == [b"x" * 10]  # as os.read(fd, 10)
        with pytest.raises(ValueError):
            accel.read_burst(a.fileno(), bytearray(100), 0, False, 128)
        r, w = os.pipe()
        os.close(r)
        with pytest.raises(OSError):
            accel.read_burst(w, bytearray(100), 4, False, 128)  # the first read's error is raised
        os.close(w)
    finally:
        a.close()
        b.close()


def _python_drain(reads: list[bytes]) -> tuple[list[bytes], int, int, int, int]:
    """What UserspaceDataPlane._drain/_unwrapped make of vnet reads (Tun.strip, Tun.unpack)."""
    from vpn_gw.dataplane.userspace.tun import Tun
    out: list[bytes] = []
    tso_reads = tso_segments = malformed = 0
    for pkt in reads:
        if len(pkt) < 10:
            malformed += 1  # (a TUN device never gives less than its header)
        elif pkt[1]:
            segs = tso.segment_py(pkt[:10], pkt[10:])
            if segs is None:
                malformed += 1
            else:
                tso_reads += 1
                tso_segments += len(segs)
                out += segs
        elif pkt[0]:
            stripped = Tun.strip(pkt)
            if stripped is None:
                malformed += 1
            else:
                out.append(stripped)
        else:
            out.append(pkt[10:])
    return out, len(reads), tso_reads, tso_segments, malformed


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_read_burst_with_vnet_headers_is_the_python_drain(data):
    rnd = data.draw(st.randoms(use_true_random=False))
    reads = []
    for _ in range(data.draw(st.integers(1, 40))):
        kind = data.draw(st.sampled_from(["plain", "tso", "tso-bad", "csum-tcp", "csum-udp", "csum-bad", "valid",
                                          "short"]))
        if kind == "plain":
            reads.append(bytes(10) + tcp4(rnd.randrange(2**32), rnd.randbytes(rnd.randrange(0, 1400))))
        elif kind in ("tso", "tso-bad"):
            size = rnd.randrange(1, 1400)
            pkt = bytearray(tcp4(rnd.randrange(2**32), rnd.randbytes(rnd.randrange(0, 20000)), flags=0x18))
            if kind == "tso-bad":
                pkt[9] = 17  # not TCP
            reads.append(vnet(1, 40, size, 20) + bytes(pkt))
        elif kind in ("csum-tcp", "csum-udp", "csum-bad"):
            if kind == "csum-udp":
                good = udp4(rnd.randbytes(rnd.randrange(0, 300)))
            else:
                good = tcp4(5, rnd.randbytes(rnd.randrange(0, 1400)))
            offset = 16 if kind != "csum-udp" else 6
            partial = bytearray(good)
            ps = ones_sum(good[12:20]) + (6 if offset == 16 else 17) + len(good) - 20
            while ps > 0xFFFF:
                ps = (ps & 0xFFFF) + (ps >> 16)
            partial[20 + offset:22 + offset] = ps.to_bytes(2, "big")
            start = 20 if kind != "csum-bad" else len(good) - 1  # bad: the field lies past the end
            reads.append(struct.pack("=BBHHHH", 1, 0, 0, 0, start, offset) + bytes(partial))
        elif kind == "valid":
            reads.append(struct.pack("=BBHHHH", 2, 0, 0, 0, 0, 0) + tcp4(1, b"abc"))  # DATA_VALID only
        else:
            reads.append(bytes(rnd.randrange(1, 10)))  # (a read of 0 bytes ends a burst)
    a, b = _socketpair()
    try:
        for r in reads:
            b.send(r)
        assert _drain_all(a.fileno(), True, count=7) == _python_drain(reads)
    finally:
        a.close()
        b.close()


# ---- read_runs / recv_runs: the same reads and receives, grouped as tests/burst_runs.py says

def _drain_runs(fd: int, vnet: bool, count: int) -> tuple[list, int, int, int, int, int]:
    buf = bytearray(65545)
    runs: list = []
    totals = [0, 0, 0, 0, 0]
    for _ in range(100):
        got, *counts = accel.read_runs(fd, buf, count, vnet, tso.MAX_SEGMENTS)
        runs.append(got)
        totals = [t + c for t, c in zip(totals, counts, strict=True)]
        if counts[0] < count:
            break
    return runs, *totals


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_read_runs_groups_what_read_burst_reads(data):
    """The same reads once through read_burst and once through read_runs: per call, read_runs
    gives tun_runs of what read_burst gives (IPv4 packets of a few address pairs in a row,
    IPv6, short and TSO reads among them), the same counters, and the packets' bytes."""
    rnd = data.draw(st.randoms(use_true_random=False))
    count = data.draw(st.sampled_from([1, 3, 7, 32]))
    pairs = [(bytes([10, 1, 0, 2]), bytes([10, 2, 0, k])) for k in range(1, 4)]
    reads = []
    for _ in range(data.draw(st.integers(0, 60))):
        kind = data.draw(st.sampled_from(["v4", "v4", "v4", "v6", "short", "tso"]))
        if kind == "v4":
            src, dst = rnd.choice(pairs)
            pkt = bytearray(tcp4(rnd.randrange(2**32), rnd.randbytes(rnd.randrange(0, 1400))))
            pkt[12:20] = src + dst
            reads.append(bytes(10) + bytes(pkt))
        elif kind == "v6":
            reads.append(bytes(10) + tcp6(rnd.randrange(2**32), rnd.randbytes(rnd.randrange(0, 200))))
        elif kind == "short":
            reads.append(bytes(10) + bytes([0x45]) + rnd.randbytes(rnd.randrange(0, 19)))
        else:
            size = rnd.randrange(100, 1400)
            reads.append(vnet(1, 40, size, 20) + tcp4(rnd.randrange(2**32), rnd.randbytes(rnd.randrange(0, 9000)),
                                                      flags=0x18))
    pairs_of_sockets = [_socketpair(), _socketpair()]
    try:
        for r in reads:
            for _a, b in pairs_of_sockets:
                b.send(r)
        (a1, _), (a2, _) = pairs_of_sockets
        runs, reads_n, tso_reads, tso_segments, malformed, nbytes = _drain_runs(a1.fileno(), True, count)
        want_pkts, *want_counts = _drain_all(a2.fileno(), True, count=count)
        assert [item for call in runs for item in call] == tun_runs_per_call(runs, want_pkts)
        assert [reads_n, tso_reads, tso_segments, malformed] == want_counts
        assert nbytes == sum(map(len, want_pkts))
        flat = [p for call in runs for _key, pkts, _longest in call for p in pkts]
        assert flat == want_pkts
    finally:
        for a, b in pairs_of_sockets:
            a.close()
            b.close()


def tun_runs_per_call(runs: list, pkts: list[bytes]) -> list:
    """tun_runs applied to each call's packets (a run never spans two calls)."""
    from tests.burst_runs import tun_runs
    out, at = [], 0
    for call in runs:
        n = sum(len(p) for _k, p, _l in call)
        out += tun_runs(pkts[at:at + n])
        at += n
    return out


def test_read_runs_keys_and_longest():
    a, b = _socketpair()
    try:
        x = tcp4(1, b"a" * 100)
        y = bytearray(tcp4(2, b"b" * 300))
        y[16:20] = bytes([10, 9, 9, 9])
        for p in (x, x, bytes(y), x, b"\x60" + bytes(39), b"\x45" * 5):
            b.send(p)
        runs, reads, *_c, nbytes = accel.read_runs(a.fileno(), bytearray(2000), 32, False, 128)
        assert reads == 6 and nbytes == 3 * len(x) + len(y) + 40 + 5
        assert [(k, len(p), n) for k, p, n in runs] == [
            (x[12:20], 2, len(x)), (bytes(y[12:20]), 1, len(y)), (x[12:20], 1, len(x)), (None, 2, 40)]
        with pytest.raises(ValueError):
            accel.read_runs(a.fileno(), bytearray(100), 0, False, 128)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
def test_recv_runs_groups_what_recv_burst_receives(address):
    """Two sockets receive the same datagrams from two sources: ESP of three SPIs, IKE (non-ESP
    marker), keepalives, runts, and UDP GRO messages of ESP (GSO sends). recv_runs on one gives
    socket_runs of recv_burst on the other, call by call, and counts the same datagrams and bytes."""
    import socket
    import sys

    from tests.burst_runs import socket_runs
    from vpn_gw.transport.udp import BURST, BURST_SLOT, SOL_UDP, UDP_SEGMENT
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    a, b = _ike_socket(address), _ike_socket(address)
    senders = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        assert a.enable_gro() and b.enable_gro()
        for t in senders:
            t.bind((address, 0))
        rnd = random.Random(11)
        spis = [k.to_bytes(4, "big") for k in (1, 2, 0x01020304)]
        for _ in range(120):
            tx = rnd.choice(senders)
            kind = rnd.choice(["esp", "esp", "esp", "ike", "keepalive", "runt", "gso"])
            if kind == "gso":
                spi = rnd.choice(spis)
                size = rnd.choice([60, 200])
                payload = b"".join(spi + rnd.randbytes(size - 4) for _ in range(rnd.randrange(2, 6)))
                payload += spi + rnd.randbytes(rnd.randrange(4, size - 4))  # the last one shorter
                for s in (a, b):
                    tx.sendmsg([payload], [(SOL_UDP, UDP_SEGMENT, size.to_bytes(2, sys.byteorder))], 0,
                               (address, s.port))
                continue
            data = {"esp": lambda: rnd.choice(spis) + rnd.randbytes(rnd.randrange(4, 300)),
                    "ike": lambda: bytes(4) + rnd.randbytes(40),
                    "keepalive": lambda: b"\xff",
                    "runt": lambda: rnd.randbytes(rnd.randrange(0, 8))}[kind]()
            for s in (a, b):
                tx.sendto(data, (address, s.port))
        seen, want = [], []
        totals = [0, 0, 0]
        for _ in range(40):
            items, messages, datagrams, nbytes = accel.recv_runs(a.fileno(), a.burst_buffer(), BURST_SLOT, BURST)
            msgs = accel.recv_burst(b.fileno(), b.burst_buffer(), BURST_SLOT, BURST)
            assert messages == len(msgs) <= BURST
            seen += items
            want += socket_runs(msgs)
            totals = [t + c for t, c in zip(totals, (messages, datagrams, nbytes), strict=True)]
            if not msgs:
                break
        assert totals[0] > BURST and any(len(run) > 2 for esp, run, _n, _l in seen if esp)
        # the same senders; the local address is each socket's own (its port differs)
        assert [(e, r, a.remote_of(n), a.local_of(d)[0]) for e, r, n, d in seen] == \
            [(e, r, b.remote_of(n), b.local_of(d)[0]) for e, r, n, d in want]
        assert totals[1] == sum(len(r) for _e, r, _n, _d in want)
        assert totals[2] == sum(len(d) for _e, r, _n, _d in want for d in r)
    finally:
        for s in (a, b):
            s.close()
        for t in senders:
            t.close()


@settings(max_examples=300, deadline=None)
@given(sizes=st.lists(st.one_of(st.sampled_from([60, 188, 1000, 1400]), st.integers(0, 1500)), max_size=200),
       max_segments=st.sampled_from([1, 2, 5, 64]), max_bytes=st.sampled_from([1, 1500, 4000, 65000]))
def test_gso_ends_cuts_where_the_python_loop_cuts(sizes, max_segments, max_bytes):
    """send_many's runs (transport/udp.py): the compiled cut and the Python reference agree, and
    every run obeys the kernel's rule (equal sizes but a shorter last, the segment and byte
    limits unless one datagram alone is bigger)."""
    from vpn_gw.transport.udp import gso_ends_py
    datagrams = [bytes(n) for n in sizes]
    assert accel.gso_ends is not None
    ends = accel.gso_ends(datagrams, max_segments, max_bytes)
    assert ends == gso_ends_py(datagrams, max_segments, max_bytes)
    start = 0
    for end in ends:
        run = sizes[start:end]
        assert 1 <= len(run) <= max_segments
        assert all(n == run[0] for n in run[:-1]) and run[-1] <= run[0]
        assert len(run) == 1 or sum(run) <= max_bytes
        start = end
    assert start == len(sizes)


def test_gso_ends_refuses_bad_arguments():
    assert accel.gso_ends is not None
    with pytest.raises(TypeError):
        accel.gso_ends((b"a",), 64, 65000)  # a list, not a tuple
    with pytest.raises(TypeError):
        accel.gso_ends([b"a", 5], 64, 65000)  # an item without a length
    with pytest.raises(ValueError):
        accel.gso_ends([b"a"], 0, 65000)
    assert accel.gso_ends([bytearray(3), memoryview(b"abc")], 64, 65000) == [2]
