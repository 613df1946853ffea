"""Liveness checks (RFC 7296 2.4, "DPD") between our gateway and strongSwan.

* strongSwan with ``dpd_delay = 2s`` sends empty INFORMATIONAL requests; we answer, its IKE SA
  stays up over several intervals.
* our ``dpd_delay = "2s"`` sends them; strongSwan answers.
* strongSwan killed (SIGKILL by PID, so it cannot send a DELETE): our liveness check goes
  unanswered and, after the retransmissions, our IKE SA is deleted. The retransmission
  schedule is shortened with the ``[gateway]`` keys ``retransmit_timeout``/``retransmit_base``/
  ``retransmit_tries`` (defaults 4 s, 1.8, 5 = about 165 s).
"""
from __future__ import annotations

import re
import secrets
import signal
import time

import netns
import ours_helpers as H
import pytest

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

IKE, ESP = H.SUITES[0]
DPD = 2.0


def _env(workdir, prefix, *, sw_dpd: bool = False, ours_dpd: bool = False, gateway=None):
    psk = "test-only-" + secrets.token_hex(12)
    conn = {"dpd_delay": f"{DPD:g}s"} if sw_dpd else {}
    extra = {"dpd_delay": f"{DPD:g}s"} if ours_dpd else {}
    return H.ours_vs_strongswan(
        workdir, prefix=prefix,
        sw_config=lambda t: H.sw_conf(t, ike=IKE, esp=ESP, psk=psk, conn=conn),
        ours_connections=lambda t: [H.ours_conn(t, ike=IKE, esp=ESP, psk=psk, **extra)],
        gateway=gateway)


def _sw_informational(env: H.Env, direction: str, kind: str) -> list[dict]:
    """strongSwan's empty INFORMATIONAL messages ('out' = generated, 'in' = parsed)."""
    return [s for s in H.sw_summaries(env.sw) if s["exchange"] == "INFORMATIONAL"
            and s["dir"] == direction and s["kind"] == kind and s["payloads"] == ""]


def _runnable_seconds(pid: int) -> float:
    """Time the process' main thread was on a CPU or waiting for one (/proc/PID/schedstat):
    about the wall time for a busy loop, whatever the machine's load; ~0 for an idle loop."""
    with open(f"/proc/{pid}/schedstat") as f:
        on_cpu, run_delay, _slices = (int(x) for x in f.read().split())
    return (on_cpu + run_delay) / 1e9


@pytest.mark.parametrize("established_by", ["ours", "strongswan"])
def test_strongswan_dpd_we_answer(sswan_workdir, established_by):
    t0 = time.monotonic()
    with _env(sswan_workdir, "oswlv", sw_dpd=True) as env:
        if established_by == "ours":
            env.ours.up(H.CONN)
        else:
            env.sw.initiate(child=H.CHILD, timeout=15)
        osa, oc, ssa, sc = env.wait_both_child(timeout=10)
        # no traffic: strongSwan checks every 2 s; wait for 3 answered checks
        netns.wait_until(lambda: len(_sw_informational(env, "in", "response")) >= 3, timeout=4 * DPD + 4,
                         interval=0.2, what="3 answered strongSwan liveness checks")
        reqs = _sw_informational(env, "out", "request")
        resps = _sw_informational(env, "in", "response")
        assert len(reqs) >= 3
        assert {r["mid"] for r in resps} >= {r["mid"] for r in reqs[:3]}, "a liveness check went unanswered"
        assert "retransmit" not in env.sw.log_text(), "strongSwan had to retransmit a liveness check"
        # nothing changed: same IKE SA and CHILD_SA on both sides
        osa2, oc2, ssa2, sc2 = env.wait_both_child(timeout=5)
        assert (osa2["spi_i"], osa2["spi_r"]) == (osa["spi_i"], osa["spi_r"])
        assert (ssa2["initiator-spi"], ssa2["responder-spi"]) == (ssa["initiator-spi"], ssa["responder-spi"])
        assert oc2["spi_in"] == oc["spi_in"]
        env.ping_both_ways(count=1)
    assert time.monotonic() - t0 < 40


def test_ours_dpd_strongswan_answers(sswan_workdir):
    t0 = time.monotonic()
    with _env(sswan_workdir, "oswlo", ours_dpd=True) as env:
        env.ours.up(H.CONN)
        osa, oc, ssa, sc = env.wait_both_child(timeout=10)
        done = H.wait_log_event(env.ours, "exchange", timeout=4 * DPD + 4, n=3, outcome="liveness check",
                                exchange="INFORMATIONAL", role="initiator")
        assert len(done) >= 3
        parsed = _sw_informational(env, "in", "request")
        answered = _sw_informational(env, "out", "response")
        assert len(parsed) >= 3 and len(answered) >= 3, "strongSwan did not see/answer our liveness checks"
        assert not [r for r in env.ours.log_lines() if r.get("event") == "retransmitting request"]
        osa2, oc2, ssa2, sc2 = env.wait_both_child(timeout=5)
        assert (osa2["spi_i"], osa2["spi_r"]) == (osa["spi_i"], osa["spi_r"])
        env.ping_both_ways(count=1)
    assert time.monotonic() - t0 < 40


def _kill_strongswan_and_wait(env: H.Env) -> tuple[float, dict]:
    """SIGKILL charon, then wait for our IKE SA to go. Returns (seconds, our IkeDown log record)."""
    pid = env.sw.pid
    netns.kill_pid(pid, timeout=2.0, sig=signal.SIGKILL)
    env.sw.proc.wait(timeout=5)
    t_kill = time.monotonic()
    env.wait_ours_empty(timeout=20)
    took = time.monotonic() - t_kill
    downs = [r for r in env.ours.log_lines() if r.get("event") == "IKE_SA down"]
    assert downs, "no 'IKE_SA down' in our log"
    return took, downs[-1]


def test_dead_strongswan_detected(sswan_workdir):
    """Kill strongSwan; our DPD (2 s) + 1 + 3 retransmissions (1 s, x1.4) delete the IKE SA
    within dpd_delay + ~7 s, the reason names the unanswered liveness check."""
    t0 = time.monotonic()
    with _env(sswan_workdir, "oswld", ours_dpd=True, gateway=H.FAST_RETRANSMIT) as env:
        env.ours.up(H.CONN)
        env.wait_both_child(timeout=10)
        env.ping_both_ways(count=1)
        took, down = _kill_strongswan_and_wait(env)
        # 2 s until the check + 1 + 1.4 + 1.96 + 2.74 s of retransmissions (~9.1 s), some slack
        assert 5.0 <= took <= 15.0, f"IKE SA deleted after {took:.1f}s"
        assert re.search(r"liveness", down.get("reason", "")), down
        retrans = [r for r in env.ours.log_lines() if r.get("event") == "retransmitting request"
                   and r.get("exchange") == "INFORMATIONAL"]
        assert len(retrans) == H.FAST_RETRANSMIT["retransmit_tries"], retrans
        assert env.no_ping()
    assert time.monotonic() - t0 < 40


def test_dead_peer_retransmissions_do_not_spin(sswan_workdir):
    """While our liveness check to a dead peer is being retransmitted, the daemon idles."""
    with _env(sswan_workdir, "oswls", ours_dpd=True, gateway=H.FAST_RETRANSMIT) as env:
        env.ours.up(H.CONN)
        env.wait_both_child(timeout=10)
        pid = env.ours.proc.pid
        # control: with a live peer the established daemon idles (liveness answered in ms)
        c0, w0 = _runnable_seconds(pid), time.monotonic()
        time.sleep(2.5)
        idle = (_runnable_seconds(pid) - c0) / (time.monotonic() - w0)
        assert idle < 0.3, f"our daemon was runnable {idle:.0%} of the time with a live peer"
        netns.kill_pid(env.sw.pid, timeout=2.0, sig=signal.SIGKILL)
        env.sw.proc.wait(timeout=5)
        # the first retransmission proves that a liveness check is outstanding (dead peer);
        # the next ones follow after 1.4 s and 1.96 s, the give-up only ~4.7 s later
        H.wait_log_event(env.ours, "retransmitting request", timeout=DPD + 4, exchange="INFORMATIONAL")
        c0, w0 = _runnable_seconds(pid), time.monotonic()
        time.sleep(3.0)
        busy = (_runnable_seconds(pid) - c0) / (time.monotonic() - w0)
        assert env.status(), "IKE SA already gone: the measurement window is wrong"
        assert busy < 0.3, f"our daemon was runnable {busy:.0%} of the time while waiting for a dead peer"
