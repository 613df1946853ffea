#!/usr/bin/env python3
"""Would a second data plane process pay on this machine? The upper bound, measured.

    sudo .venv/bin/python bench/two_processes.py                  # 3 rounds x 5 s, AES-GCM-256
    sudo .venv/bin/python bench/two_processes.py --rounds 5 --seconds 10 --cipher chacha20poly1305

Two independent ours-ours tunnels, each on its own copy of bench/throughput.py's topology
(so two gateway processes on each side), carry one TCP stream each at the same time; one
tunnel (one process per side) carries the same two streams. Both tunnels are up for the whole
run; per round the single tunnel runs first, then both together. Printed: Mbit/s per round
and the ratio of the medians (two tunnels together / one tunnel). That ratio is what sharding
Child SAs over two worker processes could give at best here: no messages between processes,
no packets forwarded between workers (docs/esp.md "Using both cores"). A benchmark, not a
test; needs root and iperf3; only meaningful with nothing else running.
"""
from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import throughput as tp  # noqa: E402  (its Setup and the imports of tests/)

from tests.netns_e2e import tools  # noqa: E402


def mbits(setup: tp.Setup, streams: int, seconds: float, mss: int) -> float:
    t = setup.topo
    res = tools.iperf3(t.host_a, t.host_b, t.host_b_ip, seconds=seconds, streams=streams, extra=["-M", str(mss)])
    return res["end"]["sum_received"]["bits_per_second"] / 1e6


def run(setup: tp.Setup, key: str, got: dict[str, float], args: argparse.Namespace) -> None:
    """One stream through ``setup``'s tunnel (a thread of the two-tunnel run)."""
    got[key] = mbits(setup, 1, args.seconds, args.mss)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--cipher", default="aes256gcm16")
    ap.add_argument("--mss", type=int, default=1360)
    args = ap.parse_args(argv)
    print("command:", shlex.join([sys.executable, *sys.argv]))
    one: list[float] = []
    two: list[float] = []
    with tempfile.TemporaryDirectory(prefix="twoproc-") as d:
        setups: list[tp.Setup] = []
        try:
            for name in ("a", "b"):
                setups.append(tp.Setup("ours-ours", args.cipher, Path(d) / name).__enter__())
            a, b = setups
            for r in range(args.rounds):
                one.append(mbits(a, 2, args.seconds, args.mss))
                got: dict[str, float] = {}

                threads = [threading.Thread(target=run, args=(s, k, got, args)) for s, k in ((a, "a"), (b, "b"))]
                for th in threads:
                    th.start()
                for th in threads:
                    th.join()
                two.append(got["a"] + got["b"])
                print(f"round {r + 1}/{args.rounds}: one tunnel, 2 streams {one[-1]:.0f} Mbit/s; two tunnels, "
                      f"1 stream each {got['a']:.0f} + {got['b']:.0f} = {two[-1]:.0f} Mbit/s", flush=True)
        finally:
            for s in setups:
                s.close()
    print(f"medians: one tunnel {statistics.median(one):.0f} Mbit/s, two tunnels {statistics.median(two):.0f} "
          f"Mbit/s, ratio {statistics.median(two) / statistics.median(one):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
