#!/usr/bin/env python3
"""Cost of answering one IKE_SA_INIT while the engine holds many IKE SAs (single process, no
sockets): what the daemon does per received datagram (receive, then drain datagrams and events,
then ask for the next deadline). Not a test; prints CPU milliseconds per INIT (median of batches
of 25) for each number held, then the cost of the stateless COOKIE fast path (ikev2.admission):
a spoofed IKE_SA_INIT, each from another source address, answered with a COOKIE while the
gateway is above ``cookie_threshold``.

The held SAs are copies of one really established responder IKE SA (own SPI and number, no Child
SAs), so they sit in every index and timer like real ones without paying for N handshakes.

    .venv/bin/python bench/ike_init_cost.py [--held 0,10000,100000] [--inits 50] [--spoofed 20000]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ikev2.ike_sa import State  # noqa: E402
from ikev2.manager import IkeManager  # noqa: E402
from tests.engine.harness import Link, child, hold_copies, psk_policy  # noqa: E402

GW, CLIENT = "192.0.2.1", "198.51.100.7"


def policies() -> tuple:
    gw = psk_policy("rw", "gw.example.org", "%any", GW, "%any", [child("net", "10.1.0.0/24", "0.0.0.0/0")])
    gw.remote_addrs = []
    cl = psk_policy("gw", "client.example.org", "gw.example.org", CLIENT, GW,
                    [child("net", "0.0.0.0/0", "10.1.0.0/24")])
    return gw, cl


def measure(held: int, inits: int) -> float:
    gw_pol, cl_pol = policies()
    gw = IkeManager([gw_pol], os.urandom, half_open_limit=10**9, cookie_threshold=10**9,
                    half_open_per_address=0, new_sa_rate_per_address=0)
    client = IkeManager([cl_pol], os.urandom)
    link = Link(client, gw, CLIENT, GW)
    first = client.initiate("gw", 0.0)
    link.run(2.0)
    assert first.state == State.ESTABLISHED, first.state
    template = next(sa for sa in gw.sas if sa.state == State.ESTABLISHED)
    hold_copies(gw, template, held)
    datagrams = []
    for _ in range(inits):
        client.initiate("gw", 3.0)
        datagrams += [(d, s, t) for d, s, t in client.pop_datagrams()]
    # CPU time of this process (other processes on a shared machine distort wall time), per
    # batch of 25 INITs; the median batch.
    batches = []
    for i in range(0, len(datagrams), 25):
        t0 = time.process_time()
        for data, src, dst in datagrams[i:i + 25]:
            gw.receive(data, dst, src, 3.0)
            gw.pop_datagrams()
            gw.pop_events()
            gw.next_deadline()
        batches.append((time.process_time() - t0) / len(datagrams[i:i + 25]) * 1000)
    return statistics.median(batches)


def measure_cookie_path(n: int) -> tuple[float, float]:
    """CPU microseconds per spoofed IKE_SA_INIT answered with a COOKIE (the daemon's per-datagram
    calls included), and the same for one that carries a stale COOKIE (checked, then answered)."""
    gw_pol, cl_pol = policies()
    gw = IkeManager([gw_pol], os.urandom, cookie_threshold=0)
    client = IkeManager([cl_pol], os.urandom)
    client.initiate("gw", 0.0)
    (init, _s, _d), = client.pop_datagrams()
    sources = [(f"2001:db8::{i + 1:x}", 500) for i in range(n)]  # every one another (spoofed) address
    out = []
    for probe in (init, None):
        if probe is None:  # an INIT carrying a COOKIE of another address: checked and refused
            gw.receive(init, (GW, 500), (CLIENT, 500), 0.0)
            (reply, rs, rd), = gw.pop_datagrams()
            client.receive(reply, rs, rd, 0.0)
            (probe, _s, _d), = client.pop_datagrams()
        t0 = time.process_time()
        for src in sources:
            gw.receive(probe, (GW, 500), src, 1.0)
            gw.pop_datagrams()
            gw.pop_events()
            gw.next_deadline()
        out.append((time.process_time() - t0) / n * 1e6)
        assert not gw.sas and gw.counters()["cookies_sent"] >= n
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--held", default="0,10000,100000")
    ap.add_argument("--inits", type=int, default=50)
    ap.add_argument("--spoofed", type=int, default=20000)
    args = ap.parse_args()
    if args.spoofed:
        plain, forged = measure_cookie_path(args.spoofed)
        print(f"COOKIE fast path: {plain:.1f} us per spoofed IKE_SA_INIT answered "
              f"({forged:.1f} us with a wrong COOKIE to check first)", flush=True)
    print(f"{'IKE SAs held':>13}  {'ms per IKE_SA_INIT answered':>28}")
    for n in (int(x) for x in args.held.split(",")):
        print(f"{n:>13,}  {measure(n, args.inits):>28.3f}", flush=True)


if __name__ == "__main__":
    main()
