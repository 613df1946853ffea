"""Handshake computations (ikev2.compute jobs) in worker processes, so a set-up's crypto does
not serialise on the event loop's thread: ``[gateway] crypto_workers`` (docs/config.md).

The engine emits ``ComputeNeeded(token, job)``; the gateway hands it to :meth:`CryptoPool.submit`.
The jobs submitted while the event loop handles one batch of datagrams leave together, split
over the workers (``ikev2.compute.run_batch``: one pickle and pipe round trip per worker, not
per job: ~100-150 us of the event loop's CPU each with ProcessPoolExecutor); the results come
back into the event loop (``call_soon_threadsafe``), where ``deliver(token, result, reason)``
feeds each to the engine (``IkeManager.compute_done``, or ``compute_failed`` with a reason).

- Workers are started with the ``forkserver`` method (never a fork of the running daemon with
  its sockets and threads), all of them at once, in the background: a thread waits for them
  (~0.3-1 s), so neither the gateway's start (restart recovery) nor the event loop waits; until
  they run, and whenever no pool runs, jobs are computed inline. ``crypto_workers = "auto"``
  starts them with the first job worth handing out (a PSK/X25519 gateway never runs them); an
  explicit count starts them with the daemon.
- A worker that dies (killed, out of memory) breaks the pool: each job it had is logged and run
  inline instead, and a new pool is started; a job that raises fails its IKE SA cleanly. No IKE
  SA waits for ever: a half-open SA whose result never comes expires (30 s) anyway.
- Key material: a job's result (the IKE SA's keys, our signature) goes back to the IKE SA; a
  worker keeps nothing of an SA (only the gateway's long-term private key and trust anchors,
  parsed once, ikev2.compute).
- Shutdown: ``close()`` cancels what is queued, waits for the workers to exit and kills any
  that does not (by PID); workers also get SIGTERM when their parent (the forkserver) dies.
"""
from __future__ import annotations

import asyncio
import functools
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import structlog

from ikev2.compute import ComputeNeeded, Result, run_batch

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

log = structlog.get_logger("vpn_gw")

Deliver = Callable[[int, "Result | None", str], None]  # (token, result or None, failure reason)


def resolve_workers(setting: str | int, cpus: int | None = None) -> int:
    """``crypto_workers``: "auto" = the number of CPUs when more than one, else 0 (inline)."""
    if setting == "auto":
        n = cpus if cpus is not None else (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                            else os.cpu_count() or 1)
        return n if n > 1 else 0
    return int(setting)


def _worker_init() -> None:
    """In each worker: die with the parent, leave Ctrl-C to the daemon."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _ready() -> int:
    time.sleep(0.05)  # keep this worker busy so that the next warm-up job starts another one
    return os.getpid()


class CryptoPool:
    """``workers`` processes running ikev2.compute jobs for one event loop."""

    def __init__(self, workers: int, deliver: Deliver, after: Callable[[], None] | None = None):
        if workers < 1:
            raise ValueError("a crypto pool needs at least one worker")
        self.workers = workers
        self._deliver = deliver
        self._after = after or (lambda: None)
        self._pool: ProcessPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._starting: Future[ProcessPoolExecutor] | None = None
        self._spawned = False
        self._queue: list[ComputeNeeded] = []
        self._scheduled = False
        self.pending = 0
        self.counters = {"jobs": 0, "retried_inline": 0, "inline": 0, "failed": 0, "pool_restarts": 0}

    def _new_pool(self) -> ProcessPoolExecutor:
        import multiprocessing  # here, not at start-up: most gateways never start workers
        from concurrent.futures import ProcessPoolExecutor
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["ikev2.compute"])
        pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_worker_init)
        # Start every worker now (the executor would start them one by one as jobs come).
        for f in [pool.submit(_ready) for _ in range(self.workers)]:
            f.result(timeout=30)
        return pool

    def start(self, loop: asyncio.AbstractEventLoop | None = None, eager: bool = True) -> None:
        """Start the workers in the background (``eager``), or only when the first job arrives
        (``crypto_workers = "auto"``: a gateway whose handshakes never hand a job out — PSK with
        X25519 — never runs them). Until they run, and if they cannot start (logged), jobs are
        computed inline."""
        self._loop = loop or asyncio.get_running_loop()
        if eager:
            self._spawn()

    def wait_started(self, timeout: float = 30.0) -> bool:
        """(Tests) block until the background start has finished; True if it gave a pool."""
        starting = self._starting
        if starting is None:
            return self._pool is not None
        try:
            starting.result(timeout)
        except Exception:  # noqa: BLE001 - a failed start is logged by _started; or timed out
            return False
        return True

    def _spawn(self) -> None:
        """Create a pool in a thread; _started takes it in the event loop."""
        fut: Future[ProcessPoolExecutor] = Future()
        self._starting = fut
        self._spawned = True
        loop = self._loop

        def create() -> None:
            try:
                fut.set_result(self._new_pool())
            except Exception as e:  # noqa: BLE001 - reported in the event loop
                fut.set_exception(e)
            if loop is not None:
                try:
                    loop.call_soon_threadsafe(self._started, fut)
                except RuntimeError:  # the loop is gone (daemon stopped): close() took care
                    pass

        threading.Thread(target=create, name="crypto-pool-start", daemon=True).start()

    def _started(self, fut: Future[ProcessPoolExecutor]) -> None:
        if self._starting is fut:
            self._starting = None
        if self._closed:
            return  # close() shut it down
        exc = fut.exception()
        if exc is not None:
            log.error("cannot start crypto workers, computing in the event loop", workers=self.workers,
                      error=f"{type(exc).__name__}: {exc}")
            return
        self._pool = fut.result()
        log.info("crypto workers restarted" if self.counters["pool_restarts"] else "crypto workers started",
                 workers=self.workers, pids=self.pids())

    def stats(self) -> dict[str, Any]:
        """The ``stats`` command's "crypto" section."""
        return {"workers": self.workers, "pids": self.pids(), "pending": self.pending, **self.counters}

    def pids(self) -> list[int]:
        """PIDs of the worker processes (and tests' proof that none is left after close)."""
        procs = getattr(self._pool, "_processes", None) or {}
        return sorted(p.pid for p in procs.values() if p.pid is not None)

    def submit(self, ev: ComputeNeeded) -> None:
        """Queue one job; the jobs queued while the loop runs one callback (one batch of
        datagrams) go out together, split over the workers (one round trip per worker)."""
        if self._closed or self._loop is None:
            self._deliver(ev.token, None, "gateway stopping")
            return
        if self._pool is None:  # not yet started, starting, or could not start: computed here
            if self._starting is None and not self._spawned:
                self._spawn()  # (lazy start: the first job worth handing out)
            self.counters["inline"] += 1
            self._run_inline([ev])
            return
        self.counters["jobs"] += 1
        self.pending += 1
        self._queue.append(ev)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._scheduled = False
        evs, self._queue = self._queue, []
        if not evs or self._closed:
            return
        k = min(self.workers, len(evs))
        loop = self._loop
        assert loop is not None
        for chunk in (evs[i::k] for i in range(k)):
            try:
                if self._pool is None:
                    raise RuntimeError("no crypto workers")
                fut = self._pool.submit(run_batch, [ev.job for ev in chunk])
            except RuntimeError as e:  # BrokenProcessPool is one too
                self._retry_inline(chunk, e)
                continue
            fut.add_done_callback(functools.partial(self._back, loop, chunk))

    def _back(self, loop: asyncio.AbstractEventLoop, chunk: list[ComputeNeeded], fut: Future[Any]) -> None:
        """(In the executor's thread) hand the finished batch to the event loop."""
        if not self._closed:
            loop.call_soon_threadsafe(self._done, chunk, fut)

    def _done(self, chunk: list[ComputeNeeded], fut: Future[Any]) -> None:
        if self._closed:
            return
        if fut.cancelled():
            self.pending -= len(chunk)
            for ev in chunk:
                self._deliver(ev.token, None, "cancelled")
            self._after()
            return
        exc = fut.exception()
        if exc is not None:
            self._retry_inline(chunk, exc)  # a worker died (BrokenProcessPool) or could not unpickle
            return
        self.pending -= len(chunk)
        for ev, (result, error) in zip(chunk, fut.result(), strict=True):
            if result is None:
                self.counters["failed"] += 1
                log.error("handshake computation failed", job=type(ev.job).__name__, ike_id=ev.ike_id, error=error)
                self._deliver(ev.token, None, error.split(":", 1)[0])
            else:
                self._deliver(ev.token, result, "")
        self._after()

    def _retry_inline(self, chunk: list[ComputeNeeded], exc: BaseException) -> None:
        """A worker died: these jobs run here, and a new pool takes the next ones."""
        self.pending -= len(chunk)
        self.counters["retried_inline"] += len(chunk)
        log.error("crypto worker failed, running its jobs inline", jobs=len(chunk),
                  error=f"{type(exc).__name__}: {exc}")
        self._restart()
        self._run_inline(chunk)

    def _run_inline(self, chunk: list[ComputeNeeded]) -> None:
        for ev, (result, error) in zip(chunk, run_batch([ev.job for ev in chunk]), strict=True):
            if result is None:
                self.counters["failed"] += 1
            self._deliver(ev.token, result, error.split(":", 1)[0])
        self._after()

    def _restart(self) -> None:
        old = self._pool
        if old is None or self._closed or not getattr(old, "_broken", False):
            return  # (already replaced for an earlier batch of the same crash)
        self.counters["pool_restarts"] += 1
        self._pool = None  # jobs run inline until the new pool runs
        old.shutdown(wait=False, cancel_futures=True)
        self._spawn()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the workers (queued jobs are cancelled; their SAs are being deleted anyway)."""
        if self._closed:
            return
        self._closed = True
        pool, self._pool = self._pool, None
        starting, self._starting = self._starting, None
        if pool is None and starting is not None:  # still starting: wait for it, then stop it
            try:
                pool = starting.result(timeout)
            except Exception:  # noqa: BLE001 - (a start that failed or hangs: pdeathsig ends them)
                pool = None
        if pool is None:
            return
        pids = sorted(p.pid for p in (getattr(pool, "_processes", None) or {}).values() if p.pid)
        pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + timeout
        for pid in pids:
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.01)
            if _alive(pid):
                log.warning("crypto worker did not stop, killing it", pid=pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        log.info("crypto workers stopped", pids=pids)


def _alive(pid: int) -> bool:
    """A process with this PID exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
