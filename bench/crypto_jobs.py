#!/usr/bin/env python3
"""What each handshake job (ikev2.compute) costs inline and through the daemon's crypto pool
(vpn_gw.daemon.crypto_pool), to decide which jobs are worth handing to a worker (docs/engine.md,
"Handshake crypto off the event loop").

    PYTHONPATH=. .venv/bin/python bench/crypto_jobs.py [--n 300] [--workers 2] [--batch 1 --batch 8]

Per job kind: the CPU of one job run inline (the event loop's cost without workers); through a
pool, the CPU the event-loop process spends per job (submit, pickle, pipe, result, in batches of
``--batch`` jobs as one loop turn would queue them) and the workers' CPU per job; and the wall-clock
throughput of N jobs inline vs. through the pool (both cores busy when the machine has them free).
Not a test; prints a table with the machine's load.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tests" / "engine"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

HZ = os.sysconf("SC_CLK_TCK")


def cpu(pid: int) -> float:
    t = Path(f"/proc/{pid}/stat").read_text()
    f = t[t.rindex(")") + 2:].split()
    return (int(f[11]) + int(f[12])) / HZ


def jobs() -> dict:
    import certgen

    from ikev2.certs import cert_payload_data
    from ikev2.compute import AuthJob, InitKeysJob, private_key_der, signature_cost_us
    from ikev2.constants import HashAlgorithm
    from ikev2.crypto import auth as cauth
    from ikev2.crypto.dh import ke_method
    from ikev2.identity import Identity

    def init(g):
        peer = ke_method(g).generate(os.urandom)
        return InitKeysJob(group=g, peer_ke=peer.public_bytes, seed=os.urandom(32), prf=5, encr=20, encr_bits=256,
                           integ=None, ni=os.urandom(32), nr=os.urandom(32), spi_i=os.urandom(8), spi_r=os.urandom(8))

    def auth(kind):
        ca, chain, key = certgen.chain(kind, "client.example.org")
        _ca, _chain, gw_key = certgen.chain(kind, "gw.example.org")
        octets = os.urandom(600)
        method, sig = cauth.sign(key, octets, HashAlgorithm.SHA2_256)
        ident = Identity.parse("client.example.org")
        return AuthJob(ident_type=ident.id_type, ident_data=ident.data, ident_text=str(ident),
                       certs=tuple(cert_payload_data(c) for c in chain), cacerts=(cert_payload_data(ca),),
                       when=certgen.NOW.timestamp(), auth_method=method, auth_data=sig, peer_octets=octets,
                       our_key=private_key_der(gw_key), our_octets=octets, hash_alg=HashAlgorithm.SHA2_256,
                       sign_cost_us=signature_cost_us(gw_key))
    return {"INIT x25519": init(31), "INIT ecp256": init(19), "INIT modp2048": init(14),
            "AUTH ecdsa": auth("ecdsa"), "AUTH rsa3072": auth("rsa3072")}


async def through_pool(job, n: int, workers: int, batch: int) -> tuple[float, float, float]:
    """(event-loop process CPU per job, worker CPU per job, wall seconds) for n jobs."""
    from ikev2.compute import ComputeNeeded
    from vpn_gw.daemon.crypto_pool import CryptoPool
    done = asyncio.Event()
    got = [0]

    def deliver(token, result, reason):
        assert result is not None, reason
        got[0] += 1
        if got[0] == n:
            done.set()
    pool = CryptoPool(workers, deliver)
    pool.start()
    pids = pool.pids()
    for i in range(workers):  # warm up (key loading, first imports)
        pool.submit(ComputeNeeded(job=job, token=-1 - i))
    await asyncio.sleep(0.5)
    got[0] = 0
    c0, w0, t0 = time.process_time(), sum(cpu(p) for p in pids), time.monotonic()
    for start in range(0, n, batch):
        for i in range(start, min(n, start + batch)):
            pool.submit(ComputeNeeded(job=job, token=i + 1))
        await asyncio.sleep(0)  # one loop turn per batch
    await asyncio.wait_for(done.wait(), 120)
    wall = time.monotonic() - t0
    loop_cpu, worker_cpu = time.process_time() - c0, sum(cpu(p) for p in pids) - w0
    pool.close()
    return loop_cpu / n * 1e6, worker_cpu / n * 1e6, wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, action="append", help="jobs per loop turn (default 1 and 8)")
    args = ap.parse_args()
    import logging

    import structlog
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    from ikev2.compute import OffloadPolicy, estimated_cost_us, run
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"# {os.cpu_count()} CPUs, load {load}, n={args.n}, {args.workers} workers")
    print(f"{'job':<14} {'inline us':>9} {'est us':>6} {'handed':>6} {'batch':>5} {'loop us':>7} {'worker us':>9} "
          f"{'jobs/s inline':>13} {'jobs/s pool':>11}")
    for name, job in jobs().items():
        run(job)
        t0, c0 = time.monotonic(), time.process_time()
        for _ in range(args.n):
            run(job)
        inline_us = (time.process_time() - c0) / args.n * 1e6
        inline_rate = args.n / (time.monotonic() - t0)
        for batch in args.batch or [1, 8]:
            loop_us, worker_us, wall = asyncio.run(through_pool(job, args.n, args.workers, batch))
            print(f"{name:<14} {inline_us:>9.0f} {estimated_cost_us(job):>6.0f} "
                  f"{'yes' if OffloadPolicy().wants(job) else 'no':>6} {batch:>5} {loop_us:>7.0f} {worker_us:>9.0f} "
                  f"{inline_rate:>13.0f} {args.n / wall:>11.0f}")
    print(f"# load after {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
