"""``[gateway] outbound_worker = true``: the userspace data plane's encrypting direction in a
second process (vpn_gw/dataplane/userspace/outbound_worker.py), between two gateways of ours in
real namespaces.

What must hold: traffic both ways, counters exact (what one gateway sealed is what the other
opened, packet for packet and byte for byte), volume lifetimes of the outbound direction
enforced by the worker, trap policies and TCP paths (both need the daemon) working, a killed
worker replaced without renegotiation (sequence numbers continue past a gap, the peer's replay
window accepts them), the daemon taking the direction back after repeated deaths, and no worker
outliving its daemon.
"""
from __future__ import annotations

import os
import signal
import time

import pytest

from tests.gateway import connection, wait_for
from tests.netns_e2e import tools
from tests.netns_e2e.test_tcp_encap import DROP_UDP, firewall
from tests.netns_e2e.topology import two_sites

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

WORKER = {"outbound_worker": True}


def _child(gw) -> dict:
    chs = [c for _sa, c in gw.children()]
    assert len(chs) == 1, chs
    return chs[0]


def _worker(gw) -> dict:
    return gw.control("stats")["dataplane"]["outbound_worker"]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _ready_worker(gw, timeout: float = 10.0) -> dict:
    w: dict = {}

    def ready() -> bool:
        nonlocal w
        w = _worker(gw)
        return bool(w["ready"] and w["worker"])  # its first statistics came back too
    wait_for(ready, timeout, "the outbound worker to be ready")
    return w


def _settled_counters(ga, gb, timeout: float = 10.0) -> tuple[dict, dict]:
    """Both gateways' Child SA once the counters stop moving (the tunnel is idle)."""
    last: tuple | None = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = (_child(ga), _child(gb))
        key = tuple((c["packets_in"], c["packets_out"]) for c in now)
        if key == last:
            return now
        last = key
        time.sleep(0.5)
    raise AssertionError(f"counters still moving after {timeout}s: {last}")


def test_worker_carries_both_directions_with_exact_counters(e2e):
    router, a, b, ga, gb = e2e.site_pair(gateway=WORKER)
    started = [r for r in ga.log_lines() if r.get("event") == "vpn-gw started"]
    w = _ready_worker(ga)
    assert started and started[0]["outbound_worker"] == w["pid"], (started, w)
    with open(f"/proc/{w['pid']}/cmdline", "rb") as f:
        assert b"vpn_gw.dataplane.userspace.outbound_worker" in f.read()
    a.host.wait_ping(b.host_ip, timeout=5)
    for extra in (None, ["-R"]):  # a -> b, then b -> a
        res = tools.iperf3(a.host, b.host, b.host_ip, seconds=2, extra=extra)
        assert res["end"]["sum_received"]["bytes"] > 5_000_000, res["end"]["sum_received"]
    ca, cb = _settled_counters(ga, gb)
    # what a sealed (counted in its worker) is what b opened (counted in its daemon), and back
    assert (ca["packets_out"], ca["bytes_out"]) == (cb["packets_in"], cb["bytes_in"]), (ca, cb)
    assert (cb["packets_out"], cb["bytes_out"]) == (ca["packets_in"], ca["bytes_in"]), (ca, cb)
    assert ca["packets_out"] > 3000 and cb["packets_out"] > 3000
    assert not ca["drops"] and not cb["drops"], (ca["drops"], cb["drops"])
    for gw in (ga, gb):  # the worker read the TUN device (TSO super-packets); the daemon did not
        dp = gw.control("stats")["dataplane"]
        assert dp["tso"]["reads"] == 0, dp["tso"]
        assert dp["outbound_worker"]["worker"]["tso"]["reads"] > 0, dp["outbound_worker"]
        assert dp["outbound_worker"]["restarts"] == 0


def test_outbound_volume_lifetime_is_enforced_by_the_worker(e2e):
    """rekey_bytes = 4 MB on a only: a's outbound bytes (counted only in its worker) pass it
    within one iperf3 run a -> b, while a's inbound (the ACKs) stays far below; the worker
    reports the soft limit and a rekeys the Child SA (b has no volume limit: the rekey is a's)."""
    router, a, b = two_sites(e2e.grp)
    conn_a = connection("to-b", a.wan, b.wan, "a.example.org", "b.example.org", local_ts=a.lan, remote_ts=b.lan)
    conn_a["children"][0].update(rekey_bytes="4MB", life_bytes="1G")
    gb = e2e.gateway(b.gw, "b", [connection("to-a", b.wan, a.wan, "b.example.org", "a.example.org",
                                            local_ts=b.lan, remote_ts=a.lan)], [b.wan], WORKER)
    ga = e2e.gateway(a.gw, "a", [conn_a], [a.wan], WORKER)
    ga.up("to-b")
    ga.wait_children(1)
    gb.wait_children(1)
    _ready_worker(ga)
    a.host.wait_ping(b.host_ip, timeout=5)
    spi_before = _child(ga)["spi_in"]
    tools.iperf3(a.host, b.host, b.host_ip, seconds=2)
    wait_for(lambda: any(r.get("event") == "CHILD_SA reached its soft volume limit: rekeying"
                         and r.get("spi_in") == spi_before for r in ga.log_lines()), 10,
             "a's worker to report the soft volume limit of the old Child SA")
    wait_for(lambda: [c["spi_in"] for _s, c in ga.children()] not in ([], [spi_before]), 10, "the rekey")
    assert a.host.ping(b.host_ip, count=3, timeout=5)


def test_killed_worker_is_replaced_without_renegotiation(e2e):
    """(Prometheus shows it: vpngw_outbound_worker_up stays 1 once the new worker is ready, the
    restarts counter counts it.)"""
    from tests.netns_e2e.test_metrics import scrape
    router, a, b, ga, gb = e2e.site_pair(gateway={**WORKER, "metrics_listen": "127.0.0.1:9273"})
    first = _ready_worker(ga)["pid"]
    m = scrape(a.gw)
    assert (m[("vpngw_outbound_worker_up", ())], m[("vpngw_outbound_worker_restarts_total", ())]) == (1, 0)
    a.host.wait_ping(b.host_ip, timeout=5)
    tools.iperf3(a.host, b.host, b.host_ip, seconds=1)
    before_a, before_b = _settled_counters(ga, gb)
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: _worker(ga)["pid"] not in (None, first) and _worker(ga)["ready"], 10, "a new worker")
    assert not _alive(first)
    a.host.wait_ping(b.host_ip, timeout=5)
    tools.iperf3(a.host, b.host, b.host_ip, seconds=1)
    after_a, after_b = _settled_counters(ga, gb)
    # the same Child SA (no rekey, no new handshake), its counters continued, nothing refused
    assert (after_a["spi_in"], after_a["spi_out"]) == (before_a["spi_in"], before_a["spi_out"])
    assert after_a["packets_out"] > before_a["packets_out"]
    assert (after_a["packets_out"], after_a["bytes_out"]) == (after_b["packets_in"], after_b["bytes_in"])
    assert not after_b["drops"], after_b["drops"]  # no replay: the numbers went on past a gap
    assert _worker(ga)["restarts"] == 1
    m = scrape(a.gw)
    assert (m[("vpngw_outbound_worker_up", ())], m[("vpngw_outbound_worker_restarts_total", ())]) == (1, 1)
    died = [r for r in ga.log_lines() if r.get("event") == "outbound worker process died"]
    assert died and died[0]["pid"] == first, died


def test_daemon_takes_the_direction_back_after_repeated_deaths(e2e):
    router, a, b, ga, gb = e2e.site_pair(gateway=WORKER)
    a.host.wait_ping(b.host_ip, timeout=5)
    killed = []
    for _ in range(6):  # MAX_RESTARTS = 5 within a minute: the sixth death is one too many
        w = _ready_worker(ga)
        killed.append(w["pid"])
        os.kill(w["pid"], signal.SIGKILL)
        wait_for(lambda: _worker(ga)["given_up"] or _worker(ga)["pid"] not in (None, killed[-1]), 10,
                 "the worker's replacement or none")
    wait_for(lambda: _worker(ga)["given_up"], 5, "the daemon to give up")
    assert _worker(ga)["pid"] is None and _worker(ga)["restarts"] == 5 and not _worker(ga)["ready"]
    assert any(r.get("event") == "outbound worker died too often: the daemon encrypts in its own process from now on"
               for r in ga.log_lines())
    assert not any(_alive(p) for p in killed)
    before = _child(ga)
    res = tools.iperf3(a.host, b.host, b.host_ip, seconds=1)
    assert res["end"]["sum_received"]["bytes"] > 1_000_000
    ca, cb = _settled_counters(ga, gb)
    assert ca["spi_in"] == before["spi_in"] and ga.control("stats")["dataplane"]["tso"]["reads"] > 0
    assert (ca["packets_out"], ca["bytes_out"]) == (cb["packets_in"], cb["bytes_in"]), (ca, cb)
    assert not cb["drops"], cb["drops"]


def test_worker_stops_with_the_daemon(e2e):
    router, a, b, ga, gb = e2e.site_pair(gateway=WORKER)
    pid = _ready_worker(ga)["pid"]
    ga.stop()
    wait_for(lambda: not _alive(pid), 5, "the worker to exit with the daemon")
    # and when the daemon is killed outright, its worker goes too (PR_SET_PDEATHSIG)
    pid_b = _ready_worker(gb)["pid"]
    gb.proc.kill()
    wait_for(lambda: not _alive(pid_b), 5, "the worker to exit when its daemon is killed")


def test_trap_policy_with_the_worker(e2e):
    """start_action = trap: the worker finds no Child SA for the first packet, hands it to the
    daemon, whose trap starts the connection and holds it; once the SA is up the daemon hands the
    held packet back to the worker, which seals it (the ping's first echo gets its answer)."""
    router, a, b = two_sites(e2e.grp)
    gb = e2e.gateway(b.gw, "b", [connection("to-a", b.wan, a.wan, "b.example.org", "a.example.org",
                                            local_ts=b.lan, remote_ts=a.lan)], [b.wan], WORKER)
    ga = e2e.gateway(a.gw, "a", [connection("to-b", a.wan, b.wan, "a.example.org", "b.example.org",
                                            local_ts=a.lan, remote_ts=b.lan, start_action="trap")], [a.wan], WORKER)
    _ready_worker(ga)
    assert ga.status() == []
    r = a.host.run(["ping", "-c", "1", "-W", "8", b.host_ip], check=False, timeout=15)
    assert r.returncode == 0, r.stdout + r.stderr
    (_sa, ch), = ga.children()
    assert ch["packets_out"] >= 1 and _child(gb)["packets_out"] >= 1  # the echo, its answer (b's worker)
    assert any(e.get("event") == "traffic for a trap policy: starting the connection" for e in ga.log_lines())
    assert any(e.get("event") == "sending packets held by the trap policy" for e in ga.log_lines())


def test_tcp_path_esp_goes_through_the_daemon(e2e):
    """UDP blocked, the client on TCP (RFC 9329): both workers hand their ESP to their daemon,
    which writes it to the TCP stream."""
    router, a, b = two_sites(e2e.grp)
    firewall(router, DROP_UDP)
    hub = e2e.gateway(b.gw, "hub", [connection("branch", b.wan, a.wan, "hub.example.org", "branch.example.org",
                                               local_ts=b.lan, remote_ts=a.lan)], [b.wan], WORKER)
    client = e2e.gateway(a.gw, "client", [connection("to-hub", a.wan, b.wan, "branch.example.org",
                                                     "hub.example.org", local_ts=a.lan, remote_ts=b.lan,
                                                     transport="tcp")], [a.wan], WORKER)
    client.up("to-hub")
    client.wait_children(1)
    hub.wait_children(1)
    a.host.wait_ping(b.host_ip, timeout=10)
    assert a.host.ping(b.host_ip, count=5, timeout=10)
    ca, cb = _settled_counters(client, hub)
    assert ca["packets_out"] >= 5 and cb["packets_out"] >= 5
    assert (ca["packets_out"], ca["bytes_out"]) == (cb["packets_in"], cb["bytes_in"]), (ca, cb)
    assert (cb["packets_out"], cb["bytes_out"]) == (ca["packets_in"], ca["bytes_in"]), (ca, cb)
    for gw in (client, hub):  # each received the other's ESP on the TCP stream (UDP is dropped)
        assert gw.control("stats")["tcp"]["esp_in"] >= 5, gw.control("stats")["tcp"]
