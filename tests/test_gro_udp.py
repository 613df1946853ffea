"""vpn_gw.dataplane.userspace.gro with ``udp=True``: decrypted UDP datagrams of one flow coalesced
into one TUN write (GSO UDP_L4), what may not be merged, and the kernel's view of it (a real TUN
device in a namespace hands the datagrams to a UDP socket intact)."""
from __future__ import annotations

import json
import struct
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esp.ip import checksum
from tests.netns import NetnsGroup
from vpn_gw.dataplane.userspace import gro
from vpn_gw.dataplane.userspace.gro import (
    NO_OFFLOAD,
    VIRTIO_NET_HDR_GSO_UDP_L4,
    coalesce,
    coalesce_counted,
)

SRC, DST = bytes([10, 1, 0, 2]), bytes([10, 2, 0, 2])


def udp4(payload: bytes, *, ident: int = 1, sport: int = 40000, dport: int = 5201, df: bool = True,
         ttl: int = 63, tos: int = 0, src: bytes = SRC, dst: bytes = DST, csum: bool = True) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    if csum:
        c = checksum(src + dst + struct.pack("!BBH", 0, 17, len(udp)) + udp) or 0xFFFF
        udp = udp[:6] + c.to_bytes(2, "big") + udp[8:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + len(udp), ident, 0x4000 if df else 0, ttl, 17, 0, src, dst)
    ip = ip[:10] + checksum(ip).to_bytes(2, "big") + ip[12:]
    return ip + udp


@pytest.fixture(params=["python", "compiled"])
def udp_run(request, monkeypatch):
    """The tests that take it run with the reference (gro._udp_run_py) and with the compiled helper
    (vpn_gw.accel.udp_coalesce; tests/test_accel.py fails if it is not built)."""
    if request.param == "python":
        monkeypatch.setattr(gro, "_udp_run", gro._udp_run_py)
    elif gro.udp_coalesce is None:
        pytest.skip("compiled helpers not built (tests/test_accel.py fails for that)")
    else:
        monkeypatch.setattr(gro, "_udp_run", gro._udp_run_compiled)
    return request.param


def segment(bufs: list) -> list[bytes]:
    """What the kernel makes of one write (reference GSO for UDP_L4 with NEEDS_CSUM); the write's
    buffers are the virtio-net header, then the packet (as one buffer or several)."""
    whole = b"".join(bytes(b) for b in bufs)
    vnet, data = whole[:10], whole[10:]
    flags, gso_type, hdr_len, gso_size, cstart, coff = struct.unpack("=BBHHHH", vnet)
    if gso_type == 0:
        assert vnet == NO_OFFLOAD
        return [data]
    assert gso_type == VIRTIO_NET_HDR_GSO_UDP_L4 and flags == 1 and (hdr_len, cstart, coff) == (28, 20, 6)
    assert checksum(data[:20]) == 0  # the coalesced IP header is valid
    assert int.from_bytes(data[24:26], "big") == len(data) - 20
    hdr, payload = data[:28], data[28:]
    ident0 = int.from_bytes(hdr[4:6], "big")
    out = []
    chunks = [payload[o:o + gso_size] for o in range(0, len(payload), gso_size)]
    for k, chunk in enumerate(chunks):
        h = bytearray(hdr)
        h[2:4] = (28 + len(chunk)).to_bytes(2, "big")
        h[4:6] = ((ident0 + k) & 0xFFFF).to_bytes(2, "big")
        h[10:12] = b"\0\0"
        h[10:12] = checksum(bytes(h[:20])).to_bytes(2, "big")
        h[24:26] = (8 + len(chunk)).to_bytes(2, "big")
        h[26:28] = b"\0\0"
        c = checksum(bytes(h[12:20]) + struct.pack("!BBH", 0, 17, 8 + len(chunk)) + bytes(h[20:]) + chunk) or 0xFFFF
        h[26:28] = c.to_bytes(2, "big")
        out.append(bytes(h) + chunk)
    return out


def no_ident(p: bytes) -> bytes:
    return p[:4] + p[6:10] + p[12:]


def roundtrip(pkts: list[bytes]) -> list[list]:
    writes = coalesce(pkts, udp=True)
    got = [s for w in writes for s in segment(w)]
    assert [no_ident(p) for p in got] == [no_ident(p) for p in pkts]
    return writes


def nseg(w: list) -> int:
    return len(segment(w))


def test_small_datagrams_of_one_flow_become_one_write(udp_run):
    pkts = [udp4(bytes([k]) * 160, ident=k) for k in range(40)]
    writes = roundtrip(pkts)
    assert [nseg(w) for w in writes] == [40]
    assert coalesce(pkts) == [[NO_OFFLOAD, p] for p in pkts]  # off unless asked for


def test_at_most_64_and_a_short_last_datagram_ends_the_packet(udp_run):
    pkts = [udp4(b"x" * 100, ident=k) for k in range(70)]
    assert [nseg(w) for w in roundtrip(pkts)] == [64, 6]
    pkts = [udp4(b"a" * 100), udp4(b"b" * 100), udp4(b"c" * 50), udp4(b"d" * 100), udp4(b"e" * 100)]
    assert [nseg(w) for w in roundtrip(pkts)] == [3, 2]


def test_what_is_never_merged(udp_run):
    base = udp4(b"p" * 100)
    for other in (udp4(b"p" * 120),                          # longer than the first
                  udp4(b"p" * 100, sport=1),                 # another flow
                  udp4(b"p" * 100, dst=bytes([10, 2, 0, 3])),
                  udp4(b"p" * 100, ttl=1), udp4(b"p" * 100, tos=4), udp4(b"p" * 100, df=False),
                  udp4(b"p" * 100, csum=False)):             # no checksum: nothing to verify
        assert [nseg(w) for w in roundtrip([base, other])] == [1, 1]
    assert [nseg(w) for w in roundtrip([udp4(b"p" * 100, csum=False)] * 3)] == [1, 1, 1]
    frag = bytearray(udp4(b"p" * 100))
    frag[6] |= 0x20  # more fragments
    frag[10:12] = b"\0\0"
    frag[10:12] = checksum(bytes(frag[:20])).to_bytes(2, "big")
    assert [nseg(w) for w in roundtrip([bytes(frag), bytes(frag)])] == [1, 1]


def test_bad_checksum_is_written_alone_unchanged(udp_run):
    pkts = [udp4(bytes([k]) * 64, ident=k) for k in range(6)]
    bad = bytearray(pkts[3])
    bad[40] ^= 0x01
    pkts[3] = bytes(bad)
    writes = coalesce(pkts, udp=True)
    assert [nseg(w) for w in writes] == [3, 1, 2]
    assert bytes(writes[1][1]) == pkts[3]


def test_tcp_and_udp_mixed_keep_their_order(udp_run):
    from tests.test_gro import tcp4
    pkts = [udp4(b"u" * 80), udp4(b"u" * 80), tcp4(1, b"t" * 100), tcp4(101, b"t" * 100), udp4(b"u" * 80)]
    counted = coalesce_counted(pkts, udp=True)
    assert [n for _b, n in counted] == [2, 2, 1]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(1, 300), st.sampled_from([40000, 40001]), st.booleans()),
                min_size=1, max_size=90))
def test_random_runs_roundtrip(udp_run, spec):
    pkts = [udp4(bytes([k & 0xFF]) * size, ident=k, sport=sport, csum=cs) for k, (size, sport, cs) in enumerate(spec)]
    counted = coalesce_counted(pkts, udp=True)
    assert sum(n for _b, n in counted) == len(pkts)
    roundtrip(pkts)


# --------------------------------------------------------------------------- the real kernel

_KERNEL = r"""
import json, os, socket, struct, subprocess, sys
sys.path[:0] = [sys.argv[1]]
from tests.test_gro_udp import udp4
from vpn_gw.dataplane.userspace.gro import coalesce_counted
from vpn_gw.dataplane.userspace.tun import Tun
tun = Tun("tgro0", 1500, vnet_hdr=True)
subprocess.run(["ip", "addr", "add", "10.2.0.2/24", "dev", "tgro0"], check=True)
r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
r.bind(("10.2.0.2", 5201))
r.settimeout(2.0)
pkts = [udp4(bytes([k]) * 160, ident=k) for k in range(40)] + [udp4(b"z" * 77, ident=99)]
writes = [n for _b, n in coalesce_counted(pkts, udp=True)]
tun.write_many(pkts)
got = []
try:
    while len(got) < len(pkts):
        got.append(r.recv(2048).hex())
except socket.timeout:
    pass
print(json.dumps({"writes": writes, "udp_on": tun.coalescing_udp, "got": got,
                  "want": [p[28:].hex() for p in pkts]}))
"""


@pytest.mark.netns
def test_kernel_delivers_a_coalesced_write_as_the_original_datagrams(tmp_path):
    from pathlib import Path
    root = str(Path(__file__).resolve().parents[1])
    with NetnsGroup("tgro") as grp:
        ns = grp.add("k")
        ns.sysctl("net.ipv4.conf.all.rp_filter", 0)
        ns.sysctl("net.ipv4.conf.default.rp_filter", 0)
        out = ns.run([sys.executable, "-c", _KERNEL, root], timeout=30).stdout
    res = json.loads(out.strip().splitlines()[-1])
    assert res["writes"] == [41]  # one coalesced write: 40 datagrams and a shorter last one
    assert res["udp_on"] is True, "the kernel refused GSO UDP_L4 from the TUN device"
    assert res["got"] == res["want"]
