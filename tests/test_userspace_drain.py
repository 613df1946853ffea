"""The encrypt side's drain (UserspaceDataPlane._drain_bursts): the short lane for the common
run of packets (IPv4, Child SA known from the interface or the flow cache, within the MTU, SA already
touched) protects exactly what the full path (``_outbound``) protects, in the same order, with
the same sequence numbers and counters; everything else still takes the full path (too big:
fragmented; IPv6; unknown flows; the first packet of a lifetime poll period)."""
from __future__ import annotations

import struct
import types

import pytest

from esp import Direction, EspCipher, EspSA, Lifetime, decapsulate
from esp.ip import checksum
from tests.burst_runs import tun_runs
from vpn_gw.dataplane.userspace import plane as P

KEY = bytes(range(36))
SPI = 0x1234


def udp4(payload: bytes, src: bytes, dst: bytes, ident: int, df: bool = False) -> bytes:
    udp = struct.pack("!HHHH", 4000, 5201, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), ident, 0x4000 if df else 0, 64, 17, 0, src, dst)
    return ip[:10] + checksum(ip).to_bytes(2, "big") + ip[12:] + udp


def udp6(payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", 4000, 5201, 8 + len(payload), 0) + payload
    return struct.pack("!IHBB16s16s", 6 << 28, len(udp), 17, 64, bytes(15) + b"\1", bytes(15) + b"\2") + udp


def plane(route_based: bool):
    out = EspSA(Direction.OUT, SPI, EspCipher(20, 256, None, KEY), lifetime=Lifetime())
    inn = EspSA(Direction.IN, SPI, EspCipher(20, 256, None, KEY), replay_window=4096, lifetime=Lifetime())
    tun = types.SimpleNamespace(name="vpngw0", route_based=route_based, fd=-1, vnet_hdr=True, write=lambda p: None)
    sel = lambda lo, hi, v=4: P._Selector(v, lo, hi, 0, 0, 65535)  # noqa: E731
    local = [sel(0x0A010000, 0x0A0100FF), sel(0, (1 << 128) - 1, 6)]
    remote = [sel(0x0A020000, 0x0A0200FF), sel(0, (1 << 128) - 1, 6)]
    child = P._Child("c", 1, SPI.to_bytes(4, "big"), SPI.to_bytes(4, "big"), inn, out,
                     ("192.0.2.1", 4500), ("192.0.2.2", 4500), local, remote, tun, 1400)
    sent: list[bytes] = []
    dp = P.UserspaceDataPlane(lambda d, lo, re: sent.append(d), lambda n: None)
    dp.send_udp_batch = lambda ds, lo, re: sent.extend(ds)
    if route_based:
        dp.by_tun["vpngw0"] = {child.spi_in: child}
    else:
        dp.spd["vpngw0"] = P.OutboundIndex()
        dp.spd["vpngw0"].add(child, True)
    return dp, tun, child, sent


def drain(dp, tun, bursts: list[list[bytes]]) -> None:
    it = iter(bursts)

    def read_runs(fd, buf, count, vnet, max_segments):  # (vpn_gw.accel.read_runs, from given packets)
        pkts = next(it, [])
        return tun_runs(pkts), len(pkts) if len(pkts) < count else count, 0, 0, 0, sum(map(len, pkts))

    dp._tx = tx = {}
    try:
        dp._drain_bursts(tun, read_runs)
    finally:
        dp._tx = None
        for child, held in tx.values():
            dp._seal_and_send(child, held)


@pytest.mark.parametrize("route_based", [True, False])
def test_the_lane_protects_what_the_full_path_protects(route_based):
    a, b = bytes([10, 1, 0, 2]), bytes([10, 2, 0, 2])
    pkts = [udp4(bytes([k]) * 160, a, b, k) for k in range(P.READ_BURST)]
    pkts[3] = udp4(b"x" * 2000, a, b, 3)           # too big for the MTU: fragmented (full path)
    pkts[5] = udp6(b"six" * 10)                     # IPv6: full path
    pkts[7] = udp4(b"other", a, bytes([10, 2, 0, 9]), 7)  # a flow not cached yet: full path
    pkts[9] = udp4(b"out of policy", a, bytes([192, 0, 2, 77]), 9)  # no SA (policy-based): dropped
    bursts = [pkts, pkts[:10]]
    dp, tun, child, sent = plane(route_based)
    lane = 0
    real_outbound = dp._outbound

    def counting_outbound(t, p):
        nonlocal lane
        lane -= 1
        real_outbound(t, p)
    dp._outbound = counting_outbound
    drain(dp, tun, bursts)
    got = [decapsulate(child.sa_in, d)[1] for d in sent]
    want: list[bytes] = []
    for p in pkts + pkts[:10]:
        if len(p) > 1400:
            want.extend(P.fragment_ipv4(p, 1400))
        elif route_based or p[16:20] != bytes([192, 0, 2, 77]):
            want.append(p)
    assert got == want  # same packets, same order, every one decrypts in sequence
    assert child.sa_out.seq == len(want) and child.sa_out.stats.packets == len(want)
    assert child.sa_out.stats.bytes == sum(map(len, want))
    # the lane took the rest, one run at a time (packets in a row with the same addresses). The
    # full path saw, route-based: the first run (packets 0-4: its first packet touches the SA,
    # and packet 3 is too big for the MTU, so the whole run goes packet by packet) and the IPv6
    # packet, in both bursts (5 + 1 twice); policy-based also, in the first burst, the new flow
    # (then cached) and the flow without an SA (never cached), which it sees again in the second.
    assert -lane == (12 if route_based else 15)


def test_an_untouched_sa_goes_the_full_path_once():
    dp, tun, child, sent = plane(True)
    a, b = bytes([10, 1, 0, 2]), bytes([10, 2, 0, 2])
    drain(dp, tun, [[udp4(b"1", a, b, 1), udp4(b"2", a, b, 2)]])
    assert child.touched and child in dp._touched  # the lifetime poll will look at it
    assert len(sent) == 2
