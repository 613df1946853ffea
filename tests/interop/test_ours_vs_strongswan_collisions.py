"""Simultaneous rekeying (RFC 7296 2.8.1 / 2.8.2) between our gateway and strongSwan.

A real crossing is made deterministic with nftables on the router (IKE on 4500 only, ESP
passes): t=0 all IKE requests/responses dropped, strongSwan starts its rekey; t=0.5 we start
ours; t=1.2 requests pass, responses are still dropped, so each side's retransmitted request
reaches the other while its own request is outstanding (both answer, answers lost);
t=2.6 everything passes: our retransmission at t=2.9 fetches strongSwan's cached answer first
(strongSwan's next retransmission is only due at t=4.4). Retransmissions: ours 1 s x1.4,
strongSwan 1 s x1.4 (harness), 5 tries each, so nobody gives up.

Afterwards both sides must agree: one IKE SA (same SPIs), one CHILD_SA (crossed SPIs), no
leftovers, ping works. ``first`` = who starts first: with "ours" the roles in the schedule
above are swapped (strongSwan's answer to its own request then arrives first).
"""
from __future__ import annotations

import re
import secrets
import time

import netns
import ours_helpers as H
import pytest

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

IKE, ESP = H.SUITES[1]

TABLE = """table inet collide {
  chain c { type filter hook forward priority 0; policy accept; }
}"""
DROP_IKE = "udp dport 4500 @th,64,32 0 counter drop"  # non-ESP marker: IKE on 4500
# ... and only responses (IKE header flags, byte 19 of the header after the 4-byte marker: R = 0x20)
DROP_IKE_RESPONSES = "udp dport 4500 @th,64,32 0 @th,248,8 & 0x20 == 0x20 counter drop"


def _phase(router: netns.Netns, rule: str | None) -> None:
    router.run(["nft", "flush", "chain", "inet", "collide", "c"])
    if rule:
        router.run(["nft", "add", "rule", "inet", "collide", "c", *rule.split()])


def _at(t0: float, offset: float) -> None:
    time.sleep(max(0.0, t0 + offset - time.monotonic()))


def _crossing(env: H.Env, start_sw, start_ours) -> None:
    r = env.topo.router
    r.run(["nft", "-f", "-"], input=TABLE)
    _phase(r, DROP_IKE)
    t0 = time.monotonic()
    start_sw()
    _at(t0, 0.5)
    start_ours()
    assert time.monotonic() - t0 < 1.1, "too slow to start both rekeys in time"
    _at(t0, 1.2)
    _phase(r, DROP_IKE_RESPONSES)
    _at(t0, 2.6)
    _phase(r, None)


def _env(workdir, prefix):
    psk = "test-only-" + secrets.token_hex(12)
    return H.ours_vs_strongswan(
        workdir, prefix=prefix,
        sw_config=lambda t: H.sw_conf(t, ike=IKE, esp=ESP, psk=psk),
        ours_connections=lambda t: [H.ours_conn(t, ike=IKE, esp=ESP, psk=psk)],
        gateway={**H.FAST_RETRANSMIT, "retransmit_tries": 5},
        charon_kwargs={"retransmit_tries": 5})


def _starters(env: H.Env, what: str, first: str):
    """(start the first rekey, start the second) for ``first`` in ("peer", "ours")."""
    if what == "child":
        sw, ours = (lambda: env.sw.rekey(child=H.CHILD)), (lambda: env.ours.rekey(H.CONN, child=H.CHILD))
    else:
        sw, ours = (lambda: env.sw.rekey(ike=H.CONN)), (lambda: env.ours.rekey(H.CONN, ike=True))
    return (sw, ours) if first == "peer" else (ours, sw)


@pytest.mark.parametrize("first", ["peer", "ours"])
def test_simultaneous_child_rekey(sswan_workdir, first):
    t0 = time.monotonic()
    with _env(sswan_workdir, "oswcc") as env:
        env.ours.up(H.CONN)
        osa, oc, ssa, sc = env.wait_both_child(timeout=10)
        env.ping_both_ways(count=1)
        _crossing(env, *_starters(env, "child", first))
        assert "detected CHILD_REKEY collision" in env.sw.log_text(), "no real crossing happened"
        osa2, oc2, ssa2, sc2 = H.wait_child_rekeyed(env, oc, timeout=10)
        assert H.ike_spis(osa2) == H.ike_spis(osa)
        H.assert_same_sa(osa2, oc2, ssa2, sc2, env.topo, we_initiated=True, ike=IKE, esp=ESP)
        assert not H.ours_events(env.ours, "IKE_SA down")
        env.ping_both_ways(count=1)
    assert time.monotonic() - t0 < 40


def _ike_round(env: H.Env, first: str) -> str:
    """One crossing of IKE rekeys; checks that both sides converge and returns strongSwan's
    verdict text (what it logged about the collision)."""
    old = H.ike_spis(next(sa for sa in env.status() if sa["state"] == "ESTABLISHED"))
    _, oc, _, _ = env.wait_both_child(timeout=5)
    log_at = len(env.sw.log_text())
    downs = len(H.ours_events(env.ours, "IKE_SA down"))
    _crossing(env, *_starters(env, "ike", first))
    # strongSwan's next retransmission (t=4.4) completes its side in every case
    time.sleep(2.2)
    log = env.sw.log_text()[log_at:]
    assert "detected IKE_REKEY collision with IKE_REKEY" in log, "no real crossing happened"
    # one ESTABLISHED IKE SA each, same SPIs (a redundant or old SA may linger, not ESTABLISHED,
    # without CHILD_SAs, until it is deleted)
    o, s = H.wait_ike_rekeyed(env, old, timeout=8, allow_lingering=True)
    osa2, oc2, ssa2, sc2 = env.wait_both_child(timeout=5)
    assert H.ike_spis(osa2) == H.ike_spis(o) == (ssa2["initiator-spi"], ssa2["responder-spi"]), \
        "the CHILD_SA is not on the surviving IKE SA"
    assert (oc2["spi_in"], oc2["spi_out"]) == (oc["spi_in"], oc["spi_out"])
    established = [sa for sa in env.status() if sa["state"] == "ESTABLISHED"]
    assert len(established) == 1, f"we report {len(established)} ESTABLISHED IKE SAs: {established}"
    new_downs = H.ours_events(env.ours, "IKE_SA down")[downs:]
    assert not new_downs, f"spurious IKE_SA down during the collision: {new_downs}"
    env.ping_both_ways(count=1)
    return "\n".join(line for line in log.splitlines() if "collision" in line)


MAX_ROUNDS = 4


def test_simultaneous_ike_rekey_peer_first(sswan_workdir):
    """strongSwan starts first. Who wins depends on the nonces; rounds are repeated (on the
    surviving IKE SA) until one is won by our new SA (at most MAX_ROUNDS), the case where
    strongSwan aborts its half ('peer did not notice IKE_SA rekey collision') and never deletes
    the redundant SA it made with us. Each round must converge cleanly."""
    t0 = time.monotonic()
    with _env(sswan_workdir, "oswci") as env:
        env.ours.up(H.CONN)
        env.wait_both_child(timeout=10)
        env.ping_both_ways(count=1)
        verdicts = []
        for _ in range(MAX_ROUNDS):
            verdicts.append(_ike_round(env, "peer"))
            if re.search(r"collision lost|not notice", verdicts[-1]):
                break  # our new IKE SA won this round
        else:
            # (chance 1/2**MAX_ROUNDS) every round checked the path where strongSwan's SA survives
            print(f"our new IKE SA never won in {MAX_ROUNDS} rounds; strongSwan said: {verdicts}")
        before = env.wait_both_child(timeout=5)[1]
        H.rekey_child(env, "ours")  # the surviving IKE SA works
        H.wait_child_rekeyed(env, before, timeout=10)
    assert time.monotonic() - t0 < 40


def test_simultaneous_ike_rekey_ours_first(sswan_workdir):
    t0 = time.monotonic()
    with _env(sswan_workdir, "oswco") as env:
        env.ours.up(H.CONN)
        env.wait_both_child(timeout=10)
        env.ping_both_ways(count=1)
        _ike_round(env, "ours")
        before = env.wait_both_child(timeout=5)[1]
        H.rekey_child(env, "strongswan")  # the surviving IKE SA works
        H.wait_child_rekeyed(env, before, timeout=10)
    assert time.monotonic() - t0 < 40
