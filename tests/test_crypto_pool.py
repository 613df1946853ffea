"""The daemon's crypto worker pool (vpn_gw.daemon.crypto_pool): jobs run in other processes and
come back into the event loop, a killed worker's job is retried inline, close leaves no process."""
from __future__ import annotations

import asyncio
import os
import signal
import time

from ikev2.compute import ComputeNeeded, InitKeysJob, InitKeysResult, run
from vpn_gw.daemon.crypto_pool import CryptoPool, _alive, resolve_workers


def job(i: int) -> InitKeysJob:
    return InitKeysJob(group=14, peer_ke=(2).to_bytes(256, "big"), seed=bytes([i]) * 32, prf=5, encr=20,
                       encr_bits=256, integ=None, ni=b"n" * 32, nr=b"r" * 32, spi_i=b"i" * 8, spi_r=b"r" * 8)


def test_resolve_workers():
    assert resolve_workers("auto", cpus=1) == 0
    assert resolve_workers("auto", cpus=4) == 4
    assert resolve_workers(0) == 0 and resolve_workers(3) == 3


async def _collect(pool: CryptoPool, got: dict, n: int, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < end:
        await asyncio.sleep(0.01)


def test_jobs_in_workers_crash_retried_inline_and_no_process_left():
    got: dict[int, tuple] = {}

    async def main():
        pool = CryptoPool(2, lambda token, result, reason: got.__setitem__(token, (result, reason)))
        pool.start()
        assert pool.wait_started()
        await asyncio.sleep(0)  # (_started runs in the loop)
        pids = pool.pids()
        assert len(pids) == 2 and os.getpid() not in pids and all(_alive(p) for p in pids)
        for i in range(4):
            pool.submit(ComputeNeeded(job=job(i), token=i + 1))
        await _collect(pool, got, 4)
        assert sorted(got) == [1, 2, 3, 4]
        for i in range(4):  # the same bytes as computed here
            result, reason = got[i + 1]
            assert reason == "" and isinstance(result, InitKeysResult)
            assert result == run(job(i))
        # A worker dies while jobs are queued: they are computed inline, a new pool takes over.
        os.kill(pids[0], signal.SIGKILL)
        await asyncio.sleep(0.3)
        for i in range(4, 8):  # (the first batch finds the pool broken: inline, and a new pool starts)
            pool.submit(ComputeNeeded(job=job(i), token=i + 1))
        await _collect(pool, got, 8)
        assert sorted(got) == list(range(1, 9))
        assert all(got[i + 1][0] == run(job(i)) for i in range(4, 8))
        assert pool.counters["retried_inline"] >= 1 and pool.counters["pool_restarts"] == 1
        assert pool.wait_started()
        await asyncio.sleep(0)
        new_pids = pool.pids()
        assert len(new_pids) == 2 and not set(new_pids) & set(pids)
        assert pool.pending == 0
        pool.close()
        return pids + new_pids

    all_pids = asyncio.run(main())
    time.sleep(0.2)
    assert [p for p in all_pids if _alive(p)] == []


def test_submit_after_close_fails_cleanly():
    got = {}

    async def main():
        pool = CryptoPool(1, lambda token, result, reason: got.__setitem__(token, (result, reason)))
        pool.start()
        pool.close()
        pool.submit(ComputeNeeded(job=job(0), token=7))

    asyncio.run(main())
    assert got == {7: (None, "gateway stopping")}


def test_a_failing_job_fails_alone():
    got: dict[int, tuple] = {}
    bad = InitKeysJob(group=14, peer_ke=b"", seed=b"", prf=999, encr=20, encr_bits=256, integ=None,
                      ni=b"", nr=b"", spi_i=b"", spi_r=b"")

    async def main():
        pool = CryptoPool(1, lambda token, result, reason: got.__setitem__(token, (result, reason)))
        pool.start()
        assert pool.wait_started()
        await asyncio.sleep(0)
        try:
            for token, j in ((1, job(1)), (2, bad), (3, job(3))):  # one batch (same loop turn)
                pool.submit(ComputeNeeded(job=j, token=token))
            await _collect(pool, got, 3)
            assert pool.counters["failed"] == 1 and pool.counters["retried_inline"] == 0
        finally:
            pool.close()

    asyncio.run(main())
    assert got[2] == (None, "ValueError")
    assert got[1] == (run(job(1)), "") and got[3] == (run(job(3)), "")


def test_lazy_start_computes_inline_until_the_workers_run():
    """crypto_workers = "auto": nothing runs until a job arrives; that job is computed inline
    (the caller never waits for workers), and the pool it started takes the next ones."""
    got: dict[int, tuple] = {}

    async def main():
        pool = CryptoPool(2, lambda token, result, reason: got.__setitem__(token, (result, reason)))
        pool.start(eager=False)
        try:
            assert pool.pids() == [] and not pool.wait_started(0.1)
            pool.submit(ComputeNeeded(job=job(0), token=1))
            assert got == {1: (run(job(0)), "")}  # at once, inline
            assert pool.counters["inline"] == 1 and pool.counters["jobs"] == 0  # (jobs = handed out)
            assert pool.wait_started()
            await asyncio.sleep(0)  # (the pool is taken in the event loop)
            assert len(pool.pids()) == 2
            pool.submit(ComputeNeeded(job=job(1), token=2))
            await _collect(pool, got, 2)
            assert got[2] == (run(job(1)), "") and pool.counters["inline"] == 1 and pool.counters["jobs"] == 1
        finally:
            pool.close()

    asyncio.run(main())
