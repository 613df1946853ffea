#!/usr/bin/env python3
"""CPU a responder spends per IKE set-up inside the engine (no sockets, no daemon): IKE_SA_INIT +
IKE_AUTH with PSK, ``aes256gcm16-prfsha256-x25519``, one Child SA, from N distinct initiators
(``c<i>.client.example.org``), 32 in flight at a time, all kept; only the responder's calls are
timed (``receive``, then draining datagrams and events and asking for the next deadline, as the
daemon does). The figure the daemon's own CPU per set-up (bench/ike_scale.py) is made of, without
the load generator and the machine's load in it: for comparing engine changes.

    .venv/bin/python bench/ike_setup_cost.py [--n 3000] [--repeat 5] [--inline] [--gc default|off|daemon]
    .venv/bin/python bench/ike_setup_cost.py --profile      # + cProfile of the responder's calls

Prints µs of process CPU per set-up for each repetition, then the minimum and median (on a
shared machine the minimum is the steadier figure). ``--gc daemon`` (the default) uses the
daemon's collector thresholds (vpn_gw.daemon.gateway.GC_THRESHOLDS); ``--inline`` leaves the
engine's offload policy unset (the daemon sets one when it has crypto workers, the default).
"""
from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ikev2.compute import OffloadPolicy  # noqa: E402
from ikev2.ike_sa import State  # noqa: E402
from ikev2.manager import IkeManager  # noqa: E402
from tests.engine.harness import child, psk_policy  # noqa: E402

GW, CLIENT = "192.0.2.1", "198.51.100.7"
IN_FLIGHT = 32


class QuietLog:
    """The daemon's engine log at level warning: lines below it are not built (log_wants)."""
    def __call__(self, level: str, event: str, **fields: object) -> None:
        pass

    @staticmethod
    def wants(level: str) -> bool:
        return level in ("warning", "error")


def one_run(n: int, inline: bool, prof: cProfile.Profile | None) -> float:
    gw_pol = psk_policy("rw", "gw.example.org", "%any", GW, "%any", [child("net", "10.1.0.0/24", "0.0.0.0/0")])
    gw_pol.remote_addrs = []
    clients = [psk_policy(f"gw{i}", f"c{i}.client.example.org", "gw.example.org", CLIENT, GW,
                          [child("net", "0.0.0.0/0", "10.1.0.0/24")]) for i in range(n)]
    gw = IkeManager([gw_pol], os.urandom, log=QuietLog(), offload=None if inline else OffloadPolicy(),
                    half_open_limit=10**9, cookie_threshold=10**9, half_open_per_address=0,
                    new_sa_rate_per_address=0)
    client = IkeManager(clients, os.urandom)
    spent, now, done = 0.0, 1.0, 0

    def to_gw() -> list:
        nonlocal spent
        out: list = []
        t0 = time.process_time()
        if prof:
            prof.enable()
        for data, src, dst in client.pop_datagrams():
            gw.receive(data, dst, src, now)
            out += gw.pop_datagrams()
            gw.pop_events()
            gw.next_deadline()
        if prof:
            prof.disable()
        spent += time.process_time() - t0
        return out

    while done < n:
        batch = min(IN_FLIGHT, n - done)
        for k in range(batch):
            client.initiate(f"gw{done + k}", now)
        for _round in range(2):  # IKE_SA_INIT, then IKE_AUTH
            for data, src, dst in to_gw():
                client.receive(data, dst, src, now)
        client.pop_datagrams()
        client.pop_events()
        done += batch
        now += 0.01
    up = sum(1 for sa in gw.sas if sa.state == State.ESTABLISHED)
    if up != n:
        raise SystemExit(f"only {up} of {n} set-ups completed")
    return spent / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=3000, help="set-ups per run (= SAs held at the end)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--inline", action="store_true", help="no offload policy (compute everything inline)")
    ap.add_argument("--gc", choices=("default", "off", "daemon"), default="daemon")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of the responder (slower)")
    args = ap.parse_args()
    if args.gc == "off":
        gc.disable()
    elif args.gc == "daemon":
        from vpn_gw.daemon.gateway import GC_THRESHOLDS
        gc.set_threshold(*GC_THRESHOLDS)
    prof = cProfile.Profile() if args.profile else None
    runs = []
    for _ in range(args.repeat):
        runs.append(one_run(args.n, args.inline, prof))
        print(f"{runs[-1]:.0f} µs per set-up", flush=True)
    print(f"n={args.n} gc={args.gc} {'inline' if args.inline else 'offload policy'}: "
          f"min {min(runs):.0f} µs, median {statistics.median(runs):.0f} µs per set-up "
          f"(load {' '.join(Path('/proc/loadavg').read_text().split()[:3])})")
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
