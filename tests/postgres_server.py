"""A throw-away PostgreSQL cluster for tests: ``initdb`` in a temporary directory as the postgres
user, the server started directly (our child, stopped by PID), listening only on a Unix socket
in that directory (no TCP), or on a given address inside a network namespace."""
from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from tests.netns import stop_process


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed (scripts/setup.sh installs it)")
    return Path(found[-1]).parent


class Postgres:
    def __init__(self, workdir: Path | None = None, *, ns=None, listen: str = "", port: int = 5432):
        # the postgres user must reach the directory: pytest's tmp_path (0700, root) will not do
        import tempfile
        self.dir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="vpngw-pg-"))
        self.data = self.dir / "data"
        self.sock = self.dir / "sock"
        self.ns = ns
        self.listen = listen
        self.port = port
        self.proc: subprocess.Popen | None = None

    @property
    def conninfo(self) -> str:
        if self.listen:
            return f"host={self.listen} port={self.port} dbname=postgres user=postgres"
        return f"host={self.sock} port={self.port} dbname=postgres user=postgres"

    def __enter__(self) -> Postgres:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        self.cleanup()

    def start(self, timeout: float = 30.0) -> None:
        import pwd
        pw = pwd.getpwnam("postgres")
        self.sock.mkdir(parents=True, exist_ok=True)
        for p in (self.dir, self.sock):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        bindir = _bindir()
        subprocess.run([str(bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                        "--no-sync", "-E", "UTF8"], user="postgres", check=True, timeout=120,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.dir)
        argv = [str(bindir / "postgres"), "-D", str(self.data), "-k", str(self.sock), "-p", str(self.port),
                "-c", f"listen_addresses={self.listen}", "-c", "fsync=off", "-c", "max_connections=40",
                "-c", "shared_buffers=16MB"]
        log = open(self.dir / "postgres.log", "wb")
        if self.ns is not None:
            argv = self.ns.exec_argv(["runuser", "-u", "postgres", "--"] + argv)
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        else:
            self.proc = subprocess.Popen(argv, user="postgres", stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.dir)
        log.close()
        deadline = time.monotonic() + timeout
        sock = self.sock / f".s.PGSQL.{self.port}"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("PostgreSQL exited:\n" + (self.dir / "postgres.log").read_text()[-2000:])
            if sock.exists() and "ready to accept connections" in (self.dir / "postgres.log").read_text():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("PostgreSQL did not start:\n" + (self.dir / "postgres.log").read_text()[-2000:])

    def stop(self) -> None:
        # SIGTERM = "smart" shutdown would wait for clients; SIGINT = "fast" shutdown
        stop_process(self.proc, sig=signal.SIGINT, timeout=15)
        self.proc = None

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
