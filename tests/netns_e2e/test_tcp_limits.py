"""TCP encapsulation against idle and descriptor-hungry clients, on the real daemon (issue 14):

    gw-a 192.0.2.1 (clients: tests/netns_e2e/tcp_clients.py) -- router -- 198.51.100.1 gw-b (our gateway)
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.gateway import connection
from tests.netns import kill_pid
from tests.netns_e2e.topology import two_sites

pytestmark = pytest.mark.netns


def _hub(e2e, b, a, settings: dict):
    conn = connection("branch", b.wan, a.wan, "hub.example.org", "branch.example.org", local_ts=b.lan, remote_ts=a.lan)
    return e2e.gateway(b.gw, "hub", [conn], [b.wan], settings)


def _clients(ns, host: str, count: int, hold: float, keepalive: float) -> subprocess.Popen:
    return ns.popen([sys.executable, "-m", "tests.netns_e2e.tcp_clients", host, "4500", str(count), str(hold),
                     str(keepalive)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(p: subprocess.Popen, timeout: float) -> list[dict]:
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            kill_pid(p.pid)
    assert p.returncode == 0, err
    return [json.loads(line) for line in out.splitlines()]


def _no_traceback(gw) -> None:
    text = gw.log.read_text(errors="replace")
    assert "Traceback" not in text and '"exception"' not in text, gw.log_tail(60)


def test_idle_unauthenticated_connections_expire_despite_keepalives(e2e):
    _router, a, b = two_sites(e2e.grp)
    hub = _hub(e2e, b, a, {"tcp_idle_timeout": "2s"})
    p = _clients(a.gw, b.wan, 5, hold=10.0, keepalive=0.5)
    first, done = _finish(p, timeout=30)
    assert first == {"connected": 5, "refused": 0}
    assert done["open"] == 0, done
    # closed 2 s after the prefix (+ up to 1 s sweep), although a keepalive came every 0.5 s
    assert all(1.5 <= t <= 6.0 for t in done["closed_after"]), done
    tcp = hub.control("stats")["tcp"]
    assert tcp["closed_idle"] == 5 and tcp["keepalive_in"] >= 10, tcp
    _no_traceback(hub)


def test_control_socket_answers_when_tcp_clients_take_every_descriptor(e2e):
    _router, a, b = two_sites(e2e.grp)
    hub = _hub(e2e, b, a, {"tcp_max_per_source": 1000, "tcp_idle_timeout": "60s"})
    r = subprocess.run(["prlimit", f"--pid={hub.proc.pid}", "--nofile=256:256"], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stderr
    time.sleep(1.5)  # the TCP sweep (every second) picks up the new limit
    assert hub.control("stats")["tcp"]["fd_limit"] == 256
    p = _clients(a.gw, b.wan, 320, hold=8.0, keepalive=0)
    try:
        first = json.loads(p.stdout.readline())
        assert first["connected"] + first["refused"] == 320
        answered = 0
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:  # the control socket keeps answering while they hold on
            tcp = hub.control("stats", timeout=2.0)["tcp"]
            assert hub.control("status", timeout=2.0) == []
            answered += 1
            time.sleep(0.3)
        assert answered >= 5
        assert tcp["refused_fd_reserve"] > 0, tcp
        assert tcp["accepted_open"] <= 256 - 64, tcp
    finally:
        _finish(p, timeout=30)
    assert hub.cli("status", "-s", str(hub.socket)).returncode == 0
    _no_traceback(hub)
