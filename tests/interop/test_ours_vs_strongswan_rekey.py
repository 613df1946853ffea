"""Rekeying between our gateway and strongSwan: CHILD_SA and IKE_SA, started by either side,
on IKE SAs established by either side.

After each rekey both sides agree on the new SPIs, the old ones are gone on both sides and the
tunnel still carries pings. After an IKE rekey a CHILD rekey over the new IKE SA (started by
the other side) proves that both ends derived the same new IKE keys (SK_e/SK_a/SK_d).
"""
from __future__ import annotations

import secrets
import time

import ours_helpers as H
import pytest

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

IKE, ESP = H.SUITES[1]  # aes128-sha256-ecp256 / aes128-sha256: CBC + HMAC both in IKE and ESP


def _env(workdir, prefix):
    psk = "test-only-" + secrets.token_hex(12)
    return H.ours_vs_strongswan(
        workdir, prefix=prefix,
        sw_config=lambda t: H.sw_conf(t, ike=IKE, esp=ESP, psk=psk),
        ours_connections=lambda t: [H.ours_conn(t, ike=IKE, esp=ESP, psk=psk)])


def _establish(env: H.Env, by: str):
    if by == "ours":
        env.ours.up(H.CONN)
    else:
        env.sw.initiate(child=H.CHILD, timeout=15)
    got = env.wait_both_child(timeout=10)
    env.ping_both_ways(count=1)
    return got


@pytest.mark.parametrize("rekey_by", ["ours", "strongswan"])
@pytest.mark.parametrize("established_by", ["ours", "strongswan"])
def test_child_rekey(sswan_workdir, established_by, rekey_by):
    t0 = time.monotonic()
    with _env(sswan_workdir, "oswrc") as env:
        _osa, oc, _ssa, _sc = _establish(env, established_by)
        H.rekey_child(env, rekey_by)
        osa, oc2, ssa, sc2 = H.wait_child_rekeyed(env, oc)
        H.assert_same_sa(osa, oc2, ssa, sc2, env.topo, we_initiated=established_by == "ours", ike=IKE, esp=ESP)
        assert osa["spi_i"] == _osa["spi_i"] and osa["spi_r"] == _osa["spi_r"], "IKE SA changed on a CHILD rekey"
        env.ping_both_ways(count=2)
        _, oc3, _, _ = env.wait_both_child(timeout=5)
        assert min(H.counters(oc3)) >= 2, "new CHILD_SA carried no traffic"
        # strongSwan logs the rekey in its CHILD_SA bookkeeping
        assert "rekeyed" in env.sw.log_text() or "closing CHILD_SA" in env.sw.log_text()
    assert time.monotonic() - t0 < 40


@pytest.mark.parametrize("rekey_by", ["ours", "strongswan"])
@pytest.mark.parametrize("established_by", ["ours", "strongswan"])
def test_ike_rekey(sswan_workdir, established_by, rekey_by):
    t0 = time.monotonic()
    with _env(sswan_workdir, "oswri") as env:
        osa, oc, ssa, sc = _establish(env, established_by)
        old = H.ike_spis(osa)
        if rekey_by == "ours":
            res = env.ours.rekey(H.CONN, ike=True)
            assert res["what"] == "ike", res
        else:
            env.sw.rekey(ike=H.CONN)
        o, s = H.wait_ike_rekeyed(env, old)
        assert o["initiator"] is (rekey_by == "ours"), "the rekey initiator becomes the new IKE SA's initiator"
        assert (s.get("initiator") == "yes") is (rekey_by != "ours")
        assert H.split_ours_algorithms(o["algorithms"])["dh"] == s["dh-group"]
        # the CHILD_SA moved to the new IKE SA unchanged
        osa2, oc2, ssa2, sc2 = env.wait_both_child(timeout=5)
        assert (oc2["spi_in"], oc2["spi_out"]) == (oc["spi_in"], oc["spi_out"])
        env.ping_both_ways(count=1)
        # the new IKE SA's keys work both ways: a CHILD rekey started by the other side
        other = "strongswan" if rekey_by == "ours" else "ours"
        H.rekey_child(env, other)
        osa3, oc3, ssa3, sc3 = H.wait_child_rekeyed(env, oc2)
        assert H.ike_spis(osa3) == H.ike_spis(o)
        env.ping_both_ways(count=1)
        assert "IKE_SA s2s[1] rekeyed" in env.sw.log_text() or "rekeyed between" in env.sw.log_text()
    assert time.monotonic() - t0 < 40


@pytest.mark.parametrize("rekey_by", ["ours", "strongswan"])
def test_child_rekey_with_pfs(sswan_workdir, rekey_by):
    """ESP proposal with a key exchange (aes128-sha256-ecp256): the initial CHILD_SA (IKE_AUTH)
    has no KE, the rekey's CREATE_CHILD_SA carries KE payloads both ways and both sides
    report the DH group on the new CHILD_SA."""
    t0 = time.monotonic()
    esp_pfs = ESP + "-ecp256"
    psk = "test-only-" + secrets.token_hex(12)
    with H.ours_vs_strongswan(
            sswan_workdir, prefix="oswrp",
            sw_config=lambda t: H.sw_conf(t, ike=IKE, esp=esp_pfs, psk=psk),
            ours_connections=lambda t: [H.ours_conn(t, ike=IKE, esp=esp_pfs, psk=psk)]) as env:
        osa, oc, ssa, sc = _establish(env, "ours")
        H.assert_same_sa(osa, oc, ssa, sc, env.topo, we_initiated=True, ike=IKE, esp=ESP)  # no DH yet
        H.rekey_child(env, rekey_by)
        osa, oc2, ssa, sc2 = H.wait_child_rekeyed(env, oc)
        H.assert_same_sa(osa, oc2, ssa, sc2, env.topo, we_initiated=True, ike=IKE, esp=esp_pfs)
        ccsa = [s for s in H.sw_summaries(env.sw) if s["exchange"] == "CREATE_CHILD_SA"]
        assert len(ccsa) == 2, ccsa
        for s in ccsa:
            pl = s["payloads"].split()
            assert "KE" in pl, f"no KE payload in the rekey: {s}"
            if s["kind"] == "request":
                assert "N(REKEY_SA)" in pl, s
        env.ping_both_ways(count=1)
    assert time.monotonic() - t0 < 40


# --------------------------------------------------------------------------- lost DELETE response

# strongSwan's INFORMATIONAL responses (IKE on 4500: non-ESP marker, exchange type 37 at byte
# 18 of the IKE header, R flag 0x20 in byte 19) are dropped on the router.
DROP_INFO_RESPONSES = """table inet lostdel {{
  chain c {{
    type filter hook forward priority 0; policy accept;
    ip saddr {sw} udp dport 4500 @th,64,32 0 @th,240,8 37 @th,248,8 & 0x20 == 0x20 counter drop
  }}
}}"""
GIVE_UP = 1.0 + 1.4 + 1.96 + 2.744 + 1.0  # FAST_RETRANSMIT schedule + slack


def _rekey_ike_losing_delete_response(env: H.Env) -> None:
    """We rekey the IKE SA; strongSwan gets our DELETE for the old one, removes it and answers,
    the answer is lost: our retransmissions of the DELETE can never be answered."""
    osa = next(sa for sa in env.status() if sa["state"] == "ESTABLISHED")
    env.topo.router.run(["nft", "-f", "-"], input=DROP_INFO_RESPONSES.format(sw=env.topo.gw_ip))
    env.ours.rekey(osa["name"], ike=True)
    env.sw.wait_log(r"received DELETE for IKE_SA", timeout=5)
    H.wait_log_event(env.ours, "retransmitting request", timeout=5, exchange="INFORMATIONAL")
    time.sleep(GIVE_UP)  # until we gave up on the DELETE


def test_lost_delete_response_after_ike_rekey(sswan_workdir):
    t0 = time.monotonic()
    psk = "test-only-" + secrets.token_hex(12)
    with H.ours_vs_strongswan(
            sswan_workdir, prefix="oswrd",
            sw_config=lambda t: H.sw_conf(t, ike=IKE, esp=ESP, psk=psk),
            ours_connections=lambda t: [H.ours_conn(t, ike=IKE, esp=ESP, psk=psk)],
            gateway=H.FAST_RETRANSMIT) as env:
        osa, oc, ssa, sc = _establish(env, "ours")
        _rekey_ike_losing_delete_response(env)
        o, s = H.wait_ike_rekeyed(env, H.ike_spis(osa), timeout=5)
        env.ping_both_ways(count=1)
        downs = H.ours_events(env.ours, "IKE_SA down")
        assert not downs, f"spurious IKE_SA down while the rekeyed IKE SA is up: {downs}"
    assert time.monotonic() - t0 < 40


def test_lost_delete_response_after_ike_rekey_keeps_vip(sswan_workdir):
    import ra_helpers as R  # remote-access helpers (our client against a strongSwan gateway)
    t0 = time.monotonic()
    user, password, psk = "alice@example.org", "pw-" + secrets.token_hex(8), "test-only-" + secrets.token_hex(12)
    dns_file = sswan_workdir / "ours-resolv.conf"
    with R.ra_env(
            sswan_workdir, prefix="oswrv", ours_role="client", gateway=H.FAST_RETRANSMIT,
            sw_config=lambda t: R.sw_gateway_conf(t, method="md5", user=user, password=password, psk=psk),
            ours_connections=lambda t: [R.ours_client_conn(t, method="md5", user=user, dns_file=dns_file,
                                                           password=password, psk=psk)]) as env:
        topo = env.topo
        env.ours.up(R.CONN)
        sa = env.sw.wait_child(R.CHILD, timeout=10)[0]
        vip = (sa.get("remote-vips") or [None])[0]
        assert R.in_pool(vip), sa
        topo.site.wait_ping(topo.host_b_ip, src=vip, timeout=5)
        _rekey_ike_losing_delete_response(env)
        assert vip in [a.split("/")[0] for a in topo.site.addresses()], \
            f"our virtual IP {vip} was removed while the tunnel is up: {topo.site.addresses()}"
        assert topo.site.ping(topo.host_b_ip, count=2, src=vip), "no ping from the VIP after the IKE rekey"
    assert time.monotonic() - t0 < 40
