"""Our gateway with ``crypto_workers = 2`` as responder to strongSwan: the handshake crypto runs in
worker processes (vpn_gw.daemon.crypto_pool), the tunnel works, and stopping the daemon leaves
no worker process behind (checked by PID).

PSK with MODP-3072 (the key exchange is handed to a worker: it costs ~2 ms; x25519 is computed
in the event loop, docs/engine.md), also after a worker was killed, and certificates (ECDSA
P-256, RSA-3072: chain check and both signatures in a worker).
"""
from __future__ import annotations

import os
import secrets
import signal
import time

import netns
import ours_helpers as H
import pytest
from test_ours_vs_strongswan_certs import _pki

pytestmark = [pytest.mark.interop, pytest.mark.timeout(90)]

WORKERS = {"crypto_workers": 2}


def _wait_workers(env: H.Env, n: int = 2, timeout: float = 20.0) -> dict:
    """The "crypto" stats once ``n`` workers run (they start in the background: the gateway
    never waits for them), or as they are at the timeout."""
    end = time.monotonic() + timeout
    while True:
        crypto = env.ours.control("stats")["crypto"]
        if len(crypto["pids"]) == n or time.monotonic() > end:
            return crypto
        time.sleep(0.05)


def _run(env: H.Env, ike: str, esp: str, jobs: dict[str, int]) -> set[int]:
    crypto = _wait_workers(env)
    assert crypto["workers"] == 2 and len(crypto["pids"]) == 2, crypto
    env.sw.initiate(child=H.CHILD, timeout=20)
    osa, oc, ssa, sc = env.wait_both_child(timeout=15)
    H.assert_same_sa(osa, oc, ssa, sc, env.topo, we_initiated=False, ike=ike, esp=esp)
    env.ping_both_ways(count=2)
    crypto = env.ours.control("stats")["crypto"]
    assert crypto["jobs"] >= sum(jobs.values()) and crypto["retried_inline"] == 0 and crypto["failed"] == 0, crypto
    assert crypto["pending"] == 0
    pids = netns.descendants(env.ours.proc.pid)
    assert set(crypto["pids"]) <= pids, (crypto["pids"], pids)
    return pids


def test_psk_modp3072_with_workers(sswan_workdir):
    ike, esp = H.SUITES[2]
    psk = "test-only-" + secrets.token_hex(12)
    t0 = time.monotonic()
    with H.ours_vs_strongswan(sswan_workdir, prefix="oswk", gateway=WORKERS,
                              sw_config=lambda t: H.sw_conf(t, ike=ike, esp=esp, psk=psk),
                              ours_connections=lambda t: [H.ours_conn(t, ike=ike, esp=esp, psk=psk)]) as env:
        pids = _run(env, ike, esp, {"init": 1})
        # A worker dies: the next set-up still completes (its job computed inline, a new pool
        # started), and the new workers are stopped with the daemon as well.
        os.kill(env.ours.control("stats")["crypto"]["pids"][0], signal.SIGKILL)
        env.sw.terminate(ike=H.CONN)
        env.wait_ours_empty(timeout=10)
        env.sw.initiate(child=H.CHILD, timeout=20)
        env.wait_both_child(timeout=15)
        env.ping_both_ways(count=1)
        crypto = env.ours.control("stats")["crypto"]
        assert crypto["pool_restarts"] == 1 and crypto["retried_inline"] >= 1 and crypto["failed"] == 0, crypto
        assert len(_wait_workers(env)["pids"]) == 2
        pids |= netns.descendants(env.ours.proc.pid)
        env.ours.stop()
    assert [p for p in pids if netns.pid_alive(p)] == [], "worker processes left behind"
    assert time.monotonic() - t0 < 75


@pytest.mark.parametrize("kind,size", [("ecdsa", 256), ("rsa", 3072)], ids=["ecdsa", "rsa3072"])
def test_certificates_with_workers(sswan_workdir, kind, size):
    ike, esp = H.SUITES[0]
    ca, chain, ours, theirs = _pki(sswan_workdir, kind, size)

    def setup(topo, sw, _wd):
        sw.add_cert(theirs)
        sw.add_ca(ca)

    def ours_conns(topo):
        return [H.ours_conn(topo, ike=ike, esp=esp, auth="pubkey", certs=[str(ours.cert_path)],
                            private_key=str(ours.key_path), cacerts=[str(ca.cert_path)])]
    t0 = time.monotonic()
    with H.ours_vs_strongswan(sswan_workdir, prefix="oswk", gateway=WORKERS, setup=setup,
                              sw_config=lambda t: H.sw_conf(t, ike=ike, esp=esp, auth="pubkey",
                                                            cert=f"{theirs.name}.pem"),
                              ours_connections=ours_conns) as env:
        pids = _run(env, ike, esp, {"auth": 1})
        assert env.ours.ike_sas()[0]["remote_id"] == H.SW_ID
        env.ours.stop()
    assert [p for p in pids if netns.pid_alive(p)] == [], "worker processes left behind"
    assert time.monotonic() - t0 < 60
