#!/usr/bin/env python3
"""Cost of answering one IKE_SA_INIT while the engine holds many IKE SAs (single process, no
sockets): what the daemon does per received datagram (receive, then drain datagrams and events,
then ask for the next deadline). Not a test; prints CPU milliseconds per INIT (median of batches
of 25) for each number held.

The held SAs are copies of one really established responder IKE SA (own SPI and number, no Child
SAs), so they sit in every index and timer like real ones without paying for N handshakes.

    .venv/bin/python bench/ike_init_cost.py [--held 0,10000,100000] [--inits 50]
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
    gw = IkeManager([gw_pol], os.urandom, half_open_limit=10**9, cookie_threshold=10**9)
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--held", default="0,10000,100000")
    ap.add_argument("--inits", type=int, default=50)
    args = ap.parse_args()
    print(f"{'IKE SAs held':>13}  {'ms per IKE_SA_INIT answered':>28}")
    for n in (int(x) for x in args.held.split(",")):
        print(f"{n:>13,}  {measure(n, args.inits):>28.3f}", flush=True)


if __name__ == "__main__":
    main()
