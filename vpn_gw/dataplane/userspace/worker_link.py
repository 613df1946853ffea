"""The daemon's side of the outbound worker process (``[gateway] outbound_worker``; the worker
is vpn_gw.dataplane.userspace.outbound_worker, the messages worker_protocol).

Starts the worker (``python -m``, never a fork of the running daemon), sends it what it needs,
reads what it sends back, and restarts it if it dies: the plane then hands the new worker every
device, socket, counter segment and Child SA again, each SA's sequence numbers continuing
``RESTART_SEQ_GAP`` past the last number the old worker recorded (it records after each sealed
batch, and a batch is far smaller than the gap), so no sequence number is ever used twice under
one key and the peers see nothing but a short gap. After ``MAX_RESTARTS`` deaths within
``RESTART_WINDOW`` seconds the daemon stops restarting it and takes the outbound direction back
into its own event loop (logged), with the same rule for the sequence numbers.
"""
from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import structlog

from vpn_gw.dataplane.userspace import worker_protocol as P

log = structlog.get_logger("vpn_gw.dataplane")

MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
RESTART_SEQ_GAP = 1 << 16  # sequence numbers skipped when another process takes an SA over
STOP_TIMEOUT = 2.0


class OutboundWorker:
    def __init__(self, plane: Any, *, log_level: str = "info", log_format: str = "console", holdoff_us: int = 0):
        self.plane = plane  # UserspaceDataPlane (the callbacks: _worker_*)
        self.log_level, self.log_format, self.holdoff_us = log_level, log_format, holdoff_us
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.backlog: deque[tuple[bytes, list[int]]] = deque()  # messages the socket did not take yet
        self.deaths: list[float] = []
        self.restarts = 0
        self.ready = False
        self.closing = False
        self.given_up = False
        self.stats: dict = {}  # the worker's last statistics (sent once a second)
        self.sent = self.received = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    # ------------------------------------------------------------------ process

    def start(self) -> None:
        a, b = P.socketpair()
        a.setblocking(False)
        cmd = [sys.executable, "-m", "vpn_gw.dataplane.userspace.outbound_worker", "--fd", str(b.fileno()),
               "--log-level", self.log_level, "--log-format", self.log_format, "--holdoff-us", str(self.holdoff_us)]
        try:
            self.proc = subprocess.Popen(cmd, pass_fds=(b.fileno(),), stdin=subprocess.DEVNULL)
        finally:
            b.close()
        self.sock = a
        self.ready = False
        asyncio.get_running_loop().add_reader(a.fileno(), self._readable)
        log.info("outbound worker process started", pid=self.proc.pid)

    async def stop(self) -> None:
        """Ask the worker to exit; kill it (by PID) if it has not within STOP_TIMEOUT."""
        self.closing = True
        proc = self.proc
        if self.sock is not None:
            try:
                self.sock.send(P.encode((P.STOP,)))
            except OSError:
                pass
        self._close_socket()
        if proc is None:
            return
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.run_in_executor(None, proc.wait), STOP_TIMEOUT)
        except TimeoutError:
            log.warning("outbound worker did not stop: killing it", pid=proc.pid)
            proc.kill()
            await loop.run_in_executor(None, proc.wait)
        self.proc = None

    def _close_socket(self) -> None:
        if self.sock is None:
            return
        loop = asyncio.get_running_loop()
        for remove in (loop.remove_reader, loop.remove_writer):
            try:
                remove(self.sock.fileno())
            except (ValueError, OSError):
                pass
        self.sock.close()
        self.sock = None
        for _data, fds in self.backlog:
            for fd in fds:
                os.close(fd)
        self.backlog.clear()

    def _died(self, why: str) -> None:
        self.ready = False
        self._close_socket()
        proc, self.proc = self.proc, None
        code = None
        if proc is not None:
            try:
                code = proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
        if self.closing:
            return
        now = time.monotonic()
        self.deaths = [t for t in self.deaths if now - t < RESTART_WINDOW] + [now]
        log.error("outbound worker process died", pid=proc.pid if proc else None, returncode=code, reason=why)
        if len(self.deaths) > MAX_RESTARTS:
            log.error("outbound worker died too often: the daemon encrypts in its own process from now on",
                      deaths=len(self.deaths), window_s=RESTART_WINDOW)
            self.given_up = True
            self.plane._worker_gave_up()
            return
        self.restarts += 1
        try:
            self.start()
        except OSError as e:
            log.error("cannot restart the outbound worker: the daemon encrypts in its own process",
                      error=str(e))
            self.given_up = True
            self.plane._worker_gave_up()
            return
        self.plane._worker_restarted()

    # ------------------------------------------------------------------ messages

    def send(self, msg: tuple, fds: Sequence[int] = ()) -> None:
        """Queue a message (in order); descriptors are duplicated if it has to wait."""
        if self.sock is None:
            return
        data = P.encode(msg)
        if not self.backlog:
            try:
                if fds:
                    socket.send_fds(self.sock, [data], list(fds))
                else:
                    self.sock.send(data)
                self.sent += 1
                return
            except BlockingIOError:
                pass
            except OSError as e:
                self._died(f"send failed: {e}")
                return
            asyncio.get_running_loop().add_writer(self.sock.fileno(), self._writable)
        self.backlog.append((data, [os.dup(fd) for fd in fds]))

    def _writable(self) -> None:
        while self.backlog and self.sock is not None:
            data, fds = self.backlog[0]
            try:
                if fds:
                    socket.send_fds(self.sock, [data], fds)
                else:
                    self.sock.send(data)
            except BlockingIOError:
                return
            except OSError as e:
                self._died(f"send failed: {e}")
                return
            self.backlog.popleft()
            self.sent += 1
            for fd in fds:
                os.close(fd)
        if self.sock is not None:
            asyncio.get_running_loop().remove_writer(self.sock.fileno())

    def _readable(self) -> None:
        for _ in range(256):
            if self.sock is None:
                return
            try:
                got = P.receive(self.sock)
            except BlockingIOError:
                return
            except P.WorkerProtocolError as e:
                log.error("bad message from the outbound worker", error=str(e))
                continue
            except OSError as e:
                self._died(str(e))
                return
            if got is None:
                self._died("its socket closed")
                return
            msg, fds = got
            for fd in fds:
                os.close(fd)
            self.received += 1
            try:
                self._handle(msg)
            except Exception as e:  # noqa: BLE001 - a bad message never stops the daemon
                log.error("message from the outbound worker failed", kind=msg[0], error=f"{type(e).__name__}: {e}")

    def _handle(self, msg: tuple) -> None:
        kind = msg[0]
        if kind == P.VIA_DAEMON:
            _, local, remote, datagrams = msg
            for d in datagrams:
                self.plane.send_udp(d, tuple(local), tuple(remote))
        elif kind == P.UNMATCHED:
            self.plane._worker_unmatched(msg[1], msg[2])
        elif kind == P.EXPIRY:
            self.plane._worker_expiry(msg[1], msg[2])
        elif kind == P.STATS:
            if isinstance(msg[1], dict):
                self.stats = msg[1]
        elif kind == P.READY:
            self.ready = True
            log.info("outbound worker process ready", pid=msg[1])
        else:
            raise P.WorkerProtocolError(f"unknown message kind {kind!r}")

    def describe(self) -> dict:
        return {"pid": self.pid, "ready": self.ready, "restarts": self.restarts, "given_up": self.given_up,
                "messages_sent": self.sent, "messages_received": self.received, "backlog": len(self.backlog),
                "worker": self.stats}
