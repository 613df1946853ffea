"""Timers fire on time while the gateway's UDP socket is kept busy (issue 13).

A continuously readable IKE socket must not starve the engine's timers (DPD, retransmissions,
rekeys, half-open expiry). Our gateway holds one IKE SA with ``dpd_delay = 1s`` (and
retransmissions every 1 s, no back-off), so it sends one timer-driven INFORMATIONAL request
about every second: a new DPD check when the last was answered, a retransmission when the
answer was lost. From the peer's namespace, a second address floods the gateway's NAT-T socket
(the one the IKE SA uses) with IKE datagrams for unknown SPIs, bounded in time and count, so
fast that the socket's receive queue overflows (checked: the kernel counted receive-buffer
drops in the gateway's namespace). A capture on the peer's side of the link records the
gateway's requests: during the flood they keep coming about every second.
"""
from __future__ import annotations

import time
from itertools import pairwise

import pytest

from tests.gateway import connection, wait_for
from tests.netns_e2e import tools

pytestmark = pytest.mark.netns

GW, PEER, FLOODER = "198.51.100.1", "198.51.100.2", "198.51.100.3"
FLOOD_SECONDS = 6.0
FLOOD_MAX = 2_000_000                       # datagrams per flooding process (bound besides the time)
FLOOD_PROCESSES = 2                         # one no longer outruns the gateway's batched receive
MAX_GAP = 2.5                               # s between two timer-driven requests (1 s nominal)

# Python run in the peer's namespace: IKE_AUTH-looking requests (random SPIs no IKE SA has;
# with the non-ESP marker on 4500) to GW:PORT, as fast as it can, for SECS seconds or CAP
# datagrams at most, from PROCS processes (forked; the first waits for the others). Each
# process writes its line "sent errors" with one write(2), which a pipe keeps whole.
FLOOD = r"""
import os, socket, struct, sys, time
dst, src = (sys.argv[1], int(sys.argv[2])), sys.argv[3]
secs, cap, procs = float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
children = []
for _ in range(procs - 1):
    pid = os.fork()
    if pid == 0:
        children = None
        break
    children.append(pid)
marker = b"" if dst[1] == 500 else bytes(4)
pkts = []
for _ in range(256):
    body = os.urandom(64)
    hdr = os.urandom(16) + bytes([46, 0x20, 35, 0x08]) + struct.pack("!II", 1, 28 + len(body))
    pkts.append(marker + hdr + body)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0))
s.setblocking(False)
n = errors = 0
end = time.monotonic() + secs
while n < cap and time.monotonic() < end:
    for p in pkts:
        try:
            s.sendto(p, dst)
            n += 1
        except OSError:
            errors += 1
os.write(1, f"{n} {errors}\n".encode())  # one write: lines of the processes never interleave
if children is None:
    os._exit(0)
for pid in children:
    os.waitpid(pid, 0)
"""


def udp_rcvbuf_errors(ns) -> int:
    """RcvbufErrors of the namespace's UDP (IPv4) counters."""
    lines = [line.split() for line in ns.run(["cat", "/proc/net/snmp"]).stdout.splitlines()
             if line.startswith("Udp:")]
    head, vals = lines[0], lines[1]
    return int(vals[head.index("RcvbufErrors")])


def gateway_requests(pcap, port: int, spi_i: bytes, spi_r: bytes) -> list[float]:
    """Times of the INFORMATIONAL requests the gateway sent on this IKE SA (from ``port``)."""
    times = []
    for p in tools.ipv4_packets(pcap):
        if p.src != GW or p.proto != 17 or p.sport != port:
            continue
        ike = p.udp_payload
        if port != 500:
            if ike[:4] != b"\0\0\0\0":
                continue
            ike = ike[4:]
        if len(ike) < 28:
            continue
        exchange, flags = ike[18], ike[19]
        if ike[:8] == spi_i and ike[8:16] == spi_r and exchange == 37 and not flags & 0x20:
            times.append(p.time)
    return times


def test_dpd_fires_on_time_while_the_socket_is_flooded(e2e):
    grp = e2e.grp
    gw_ns, peer_ns = grp.add("gw"), grp.add("peer")
    grp.veth(gw_ns, "wan0", peer_ns, "wan0", a_addrs=[f"{GW}/24"], b_addrs=[f"{PEER}/24", f"{FLOODER}/24"])
    timers = {"retransmit_timeout": "1s", "retransmit_base": 1.0, "retransmit_tries": 20,
              "dataplane": "none"}
    gw = e2e.gateway(gw_ns, "gw", [connection("peer", GW, PEER, "gw.example.org", "peer.example.org",
                                              local_ts="10.1.0.0/24", remote_ts="10.2.0.0/24",
                                              dpd_delay="1s")], [GW], timers)
    peer = e2e.gateway(peer_ns, "peer", [connection("gw", PEER, GW, "peer.example.org", "gw.example.org",
                                                    local_ts="10.2.0.0/24", remote_ts="10.1.0.0/24")],
                       [PEER], {"dataplane": "none"})
    peer.up("gw")
    (sa,) = wait_for(lambda: gw.ike_sas(), 10, "the gateway's IKE SA")
    spi_i, spi_r = bytes.fromhex(sa["spi_i"]), bytes.fromhex(sa["spi_r"])
    port = sa["local_port"]
    assert port in (500, 4500)

    cap = tools.Capture(peer_ns, "wan0", e2e.tmp / "gw-out.pcap", f"udp and src host {GW}").start()
    try:
        # baseline: the gateway's DPD runs about every second with a quiet socket
        time.sleep(3.0)
        drops_before = udp_rcvbuf_errors(gw_ns)
        t_flood = time.time()
        flood = peer_ns.run([tools.PYTHON, "-c", FLOOD, GW, str(port), FLOODER, str(FLOOD_SECONDS),
                             str(FLOOD_MAX), str(FLOOD_PROCESSES)], timeout=FLOOD_SECONDS + 30)
        t_end = time.time()
        numbers = [int(w) for w in flood.stdout.split()]  # "sent errors" of each process
        assert len(numbers) == 2 * FLOOD_PROCESSES, flood.stdout
        sent = sum(numbers[0::2])
        drops = udp_rcvbuf_errors(gw_ns) - drops_before
        time.sleep(1.5)
    finally:
        cap.stop()
    times = gateway_requests(cap.path, port, spi_i, spi_r)
    quiet = [t for t in times if t < t_flood]
    during = [t for t in times if t_flood <= t <= t_end]
    # the flood really kept the socket busy: its queue overflowed
    assert sent > 10_000, f"the flood sent only {sent} datagrams"
    assert drops > 0, f"the gateway's socket never overflowed ({sent} datagrams sent): not a flood"
    assert len(quiet) >= 2, f"no DPD before the flood: {quiet}"
    # about one request per second during the flood, none late
    assert len(during) >= int((t_end - t_flood) / MAX_GAP), \
        f"{len(during)} requests in a {t_end - t_flood:.1f} s flood: {[round(t - t_flood, 2) for t in during]}"
    edges = [t_flood] + during + [t_end]
    gaps = [b - a for a, b in pairwise(edges)]
    assert max(gaps) <= MAX_GAP, \
        f"a timer came late during the flood: gaps {[round(g, 2) for g in gaps]} ({sent} datagrams, {drops} dropped)"
