#!/usr/bin/env python3
"""Round-trip time through the tunnel while it carries a small-packet UDP load: what the
wake-up holdoff (``[gateway] holdoff_us``, vpn_gw/holdoff.py) costs in latency.

    sudo .venv/bin/python bench/latency_under_load.py                      # defaults below
    sudo .venv/bin/python bench/latency_under_load.py --rates 0,40000,120000 --seconds 4 \
        --pairs ours-ours,ours-ours-holdoff,sw-sw-tuned --rounds 2

Pairs as in bench/throughput.py (the same topology and tuning, all tunnels up at once, pairs
interleaved, order reversed each round). Per pair and offered rate: iperf3 sends 160-byte UDP
datagrams host_a -> host_b at the rate (0: no load) for ``--seconds`` while
tests/netns_e2e/fast_ping.py pings host_a -> host_b 100 times a second; printed per run: the
RTT median, 90th and 99th percentile and maximum of the echoes answered, how many were lost,
and what iperf3 delivered. The load runs through the same gateways (the encrypting gateway's
TUN reader and the decrypting gateway's NAT-T socket are the readers a holdoff holds off), the
echo replies come back through the idle direction. A benchmark, not a test; needs root,
iperf3, strongSwan for the sw pair.
"""
from __future__ import annotations

import argparse
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import throughput as tp  # noqa: E402  (its Setup, topology and imports of tests/)

from tests.netns_e2e import tools  # noqa: E402

FAST_PING = Path(tp.ROOT) / "tests" / "netns_e2e" / "fast_ping.py"
PING_INTERVAL = 0.01
RTT_RE = re.compile(r"icmp_seq=(\d+) .*time=([\d.]+) ms")


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def run_one(setup: tp.Setup, rate: int, seconds: float) -> dict:
    """One run: fast_ping for ``seconds`` (+ margins), iperf3 UDP at ``rate`` meanwhile."""
    t = setup.topo
    with tempfile.TemporaryFile() as out:
        pinger = t.host_a.popen([sys.executable, str(FAST_PING), t.host_b_ip, str(PING_INTERVAL)], stdout=out)
        try:
            time.sleep(0.3)
            delivered = 0
            if rate:
                res = tools.iperf3(t.host_a, t.host_b, t.host_b_ip, seconds=seconds,
                                   extra=["-u", "-l", "160", "-b", str(rate * 160 * 8), "-w", tp.UDP_SOCKBUF])
                s = res["end"]["sum"]
                delivered = round((s["packets"] - s["lost_packets"]) / s["seconds"])
            else:
                time.sleep(seconds)
            time.sleep(0.2)
        finally:
            pinger.send_signal(signal.SIGTERM)
            try:
                pinger.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pinger.kill()
                pinger.wait()
        out.seek(0)
        text = out.read().decode(errors="replace")
    rtts = {int(m.group(1)): float(m.group(2)) for m in RTT_RE.finditer(text)}
    sent = max(rtts) if rtts else 0
    values = list(rtts.values())
    return {"rate": rate, "delivered": delivered, "echoes": sent, "lost": sent - len(values),
            "median": statistics.median(values) if values else None,
            "p90": percentile(values, 0.9) if values else None,
            "p99": percentile(values, 0.99) if values else None,
            "max": max(values) if values else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", default="ours-ours,ours-ours-holdoff,sw-sw-tuned")
    ap.add_argument("--rates", default="0,40000,120000", help="offered UDP datagrams/s, 0 = no load")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cipher", default="aes256gcm16")
    args = ap.parse_args(argv)
    pairs = args.pairs.split(",")
    rates = [int(x) for x in args.rates.split(",")]
    if any("sw" in p for p in pairs) and ss_missing():
        pairs = [p for p in pairs if "sw" not in p]
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(f"holdoff pair: holdoff_us = {tp.HOLDOFF_US}; pings every {PING_INTERVAL * 1000:g} ms; "
          f"load: 160-byte UDP for {args.seconds:g} s per run")
    results: dict[tuple[str, int], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="lat-") as d:
        setups = {}
        try:
            for p in pairs:
                setups[p] = tp.Setup(p, args.cipher, Path(d) / p).__enter__()
            for r in range(args.rounds):
                order = pairs if r % 2 == 0 else list(reversed(pairs))
                for p in order:
                    for rate in rates:
                        res = run_one(setups[p], rate, args.seconds)
                        results.setdefault((p, rate), []).append(res)
                        print(f"  [r{r + 1}/{args.rounds}] {p:18} offered {rate:6} pps: "
                              f"delivered {res['delivered']:6} pps; "
                              f"RTT ms median {fmt(res['median'])}, p90 {fmt(res['p90'])}, p99 {fmt(res['p99'])}, "
                              f"max {fmt(res['max'])}; echoes {res['echoes']}, lost {res['lost']}", flush=True)
        finally:
            for s in setups.values():
                s.close()
    print()
    print("| pair | offered pps | delivered pps (median) | RTT median ms | p90 ms | p99 ms | max ms | echoes lost |")
    print("|---|---|---|---|---|---|---|---|")
    for (p, rate), runs in results.items():
        def med(key, runs=runs):
            vals = [x[key] for x in runs if x[key] is not None]
            return statistics.median(vals) if vals else None
        print(f"| {p} | {rate} | {med('delivered'):.0f} | {fmt(med('median'))} | {fmt(med('p90'))} | "
              f"{fmt(med('p99'))} | {fmt(max((x['max'] for x in runs if x['max'] is not None), default=None))} | "
              f"{sum(x['lost'] for x in runs)} of {sum(x['echoes'] for x in runs)} |")
    return 0


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def ss_missing() -> bool:
    missing = tp.ss.missing_strongswan_parts()
    if missing:
        print(f"strongSwan missing ({', '.join(missing)}): its pairs left out", file=sys.stderr)
    return bool(missing)


if __name__ == "__main__":
    sys.exit(main())
