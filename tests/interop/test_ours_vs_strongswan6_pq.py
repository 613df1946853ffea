"""Post-quantum IKE against strongSwan 6.0.6: ML-KEM hybrids (RFC 9370 over RFC 9242) and alone.

Our gateway (userspace ESP) in ``topo.site``, charon-6 (kernel-libipsec) in ``topo.gw``.
Both views must show the same SA and every negotiated key exchange; pings cross the tunnel.
Skips only when ../shared/peers is absent (see tests/interop/strongswan6.py).
"""
from __future__ import annotations

import re
import secrets

import netns
import ours_helpers as H
import pytest
import strongswan6 as S6

from tests.gateway import GatewayError

pytestmark = [pytest.mark.interop, pytest.mark.timeout(90)]

ESP = "aes256gcm16"


def _env(workdir, prefix, ike, psk, fragment_size=None, charon=None):
    S6.require_strongswan6()
    return H.ours_vs_strongswan(
        workdir, prefix=prefix,
        sw_config=lambda t: H.sw_conf(t, ike=ike, esp=ESP, psk=psk),
        ours_connections=lambda t: [H.ours_conn(t, ike=ike, esp=ESP, psk=psk)],
        charon_kwargs=S6.charon6_kwargs(fragment_size=fragment_size, log_levels=S6.LOG_LEVELS, **(charon or {})))


CASES = [
    # (IKE proposal, strongSwan's name for it, our key_exchanges, fragmented IKE_INTERMEDIATE)
    ("aes256gcm16-prfsha384-x25519-ke1_mlkem768",
     "AES_GCM_16_256/PRF_HMAC_SHA2_384/CURVE_25519/KE1_ML_KEM_768", ["CURVE_25519", "ML_KEM_768"]),
    ("aes256gcm16-prfsha384-mlkem768",
     "AES_GCM_16_256/PRF_HMAC_SHA2_384/ML_KEM_768", ["ML_KEM_768"]),
    ("aes256gcm16-prfsha384-ecp384-ke1_mlkem1024",
     "AES_GCM_16_256/PRF_HMAC_SHA2_384/ECP_384/KE1_ML_KEM_1024", ["ECP_384", "ML_KEM_1024"]),
]


@pytest.mark.parametrize("role", ["initiator", "responder"])
@pytest.mark.parametrize("ike,sw_name,kes", CASES, ids=["x25519+mlkem768", "mlkem768", "ecp384+mlkem1024"])
def test_pq_suite_role_and_ping(sswan_workdir, ike, sw_name, kes, role):
    psk = "test-only-" + secrets.token_hex(12)
    with _env(sswan_workdir, "opq", ike, psk) as env:
        if role == "initiator":
            env.ours.up(H.CONN)
        else:
            env.sw.initiate(child=H.CHILD, timeout=20)
        osa, oc, ssa, sc = env.wait_both_child(timeout=15)
        assert osa["algorithms"] == sw_name
        assert osa["key_exchanges"] == kes
        # strongSwan's view of the same IKE SA: same SPIs, same additional KE.
        assert osa["spi_i"] == ssa["initiator-spi"] and osa["spi_r"] == ssa["responder-spi"]
        sw_ke = [ssa.get("dh-group")] + [ssa.get(f"ake{i}") for i in range(1, 8)]
        assert [k for k in sw_ke if k] == kes, sorted(ssa)
        env.ping_both_ways(count=2)
        # the daemon's startup line names the ML-KEM sets the linked OpenSSL offers
        started = [r for r in env.ours.log_lines() if r.get("event") == "vpn-gw started"]
        assert started and all(k in started[0].get("mlkem", "") for k in kes if k.startswith("ML_KEM")), started
        log = env.sw.log_text()
        if len(kes) > 1:
            # one IKE_INTERMEDIATE carrying the ML-KEM shares, then IKE_AUTH with message ID 2
            assert re.search(r"IKE_INTERMEDIATE (request|response) 1 \[ KE \]", log), log[-3000:]
            assert re.search(r"IKE_AUTH (request|response) 2 ", log)
        else:
            assert "IKE_INTERMEDIATE" not in log
        if "ML_KEM_1024" in kes:
            # ML-KEM-1024 key shares do not fit in one 1280-byte datagram: fragments both ways.
            assert re.search(r"IKE_INTERMEDIATE (request|response) 1 \[ EF\(\d/\d\) \]", log), \
                "strongSwan did not fragment/receive fragments of IKE_INTERMEDIATE"


# --------------------------------------------------------------------------- rekeys (IKE_FOLLOWUP_KE)

HYBRID = "aes256gcm16-prfsha384-x25519-ke1_mlkem768"
ESP_PFS = "aes256gcm16-x25519-ke1_mlkem768"


def _pfs_env(workdir, prefix):
    S6.require_strongswan6()
    psk = "test-only-" + secrets.token_hex(12)
    return H.ours_vs_strongswan(
        workdir, prefix=prefix,
        sw_config=lambda t: H.sw_conf(t, ike=HYBRID, esp=ESP_PFS, psk=psk),
        ours_connections=lambda t: [H.ours_conn(t, ike=HYBRID, esp=ESP_PFS, psk=psk)],
        charon_kwargs=S6.charon6_kwargs(log_levels=S6.LOG_LEVELS))


def _followups(env, kind):
    """Message IDs of the IKE_FOLLOWUP_KE messages strongSwan logged (fragments counted once)."""
    return sorted({s.get("mid") for s in H.sw_summaries(env.sw)
                   if s["exchange"] == "IKE_FOLLOWUP_KE" and s["kind"] == kind})


@pytest.mark.parametrize("rekey_by", ["ours", "strongswan"])
def test_child_rekey_with_mlkem_followup(sswan_workdir, rekey_by):
    """Child SA PFS x25519 + ML-KEM-768: CREATE_CHILD_SA, then IKE_FOLLOWUP_KE (its request
    in 2 fragments); both sides show the new CHILD_SA with both key exchanges."""
    with _pfs_env(sswan_workdir, "opqc") as env:
        env.ours.up(H.CONN)
        osa, oc, ssa, sc = env.wait_both_child(timeout=15)
        H.rekey_child(env, rekey_by)
        osa, oc2, ssa, sc2 = H.wait_child_rekeyed(env, oc)
        assert oc2["algorithms"] == "AES_GCM_16_256/CURVE_25519/KE1_ML_KEM_768/NO_EXT_SEQ", oc2
        assert sc2.get("dh-group") == "CURVE_25519" and sc2.get("ake1") == "ML_KEM_768", sorted(sc2)
        assert len(_followups(env, "request")) == 1 and len(_followups(env, "response")) == 1
        env.ping_both_ways(count=2)


@pytest.mark.parametrize("rekey_by", ["ours", "strongswan"])
def test_ike_rekey_with_mlkem_followup(sswan_workdir, rekey_by):
    """IKE rekey of a hybrid IKE SA: CREATE_CHILD_SA + IKE_FOLLOWUP_KE; then a CHILD rekey by
    the other side over the new IKE SA proves both derived the same keys."""
    with _pfs_env(sswan_workdir, "opqi") as env:
        env.ours.up(H.CONN)
        osa, oc, ssa, sc = env.wait_both_child(timeout=15)
        if rekey_by == "ours":
            env.ours.rekey(H.CONN, ike=True)
        else:
            env.sw.rekey(ike=H.CONN)
        o, s = H.wait_ike_rekeyed(env, H.ike_spis(osa))
        assert o["key_exchanges"] == ["CURVE_25519", "ML_KEM_768"]
        assert s.get("dh-group") == "CURVE_25519" and s.get("ake1") == "ML_KEM_768"
        assert _followups(env, "request") and _followups(env, "response")
        env.ping_both_ways(count=1)
        H.rekey_child(env, "strongswan" if rekey_by == "ours" else "ours")
        _osa, oc3, _ssa, _sc3 = H.wait_child_rekeyed(env, oc)
        assert H.ike_spis(_osa) == H.ike_spis(o)
        env.ping_both_ways(count=1)


# --------------------------------------------------------------------------- PPK (RFC 8784)

PPK_ID = "pq-ppk-1"


def _ppk_env(workdir, prefix, *, sw_ppk, ours_ppk, sw_required, ours_required, ike=HYBRID):
    """strongSwan 6 and ours with PSK + (maybe) a PPK; ``*_ppk`` None = no PPK on that side."""
    S6.require_strongswan6()
    psk = "test-only-" + secrets.token_hex(12)

    def sw_conf(t):
        conn = {"ppk_required": "yes" if sw_required else "no"}
        if sw_ppk is not None:
            conn["ppk_id"] = PPK_ID
        c = H.sw_conf(t, ike=ike, esp=ESP, psk=psk, conn=conn)
        if sw_ppk is not None:
            c["secrets"]["ppk-1"] = {"secret": "0x" + sw_ppk.hex(), "id": PPK_ID}
        return c

    extra = {}
    if ours_ppk is not None:
        extra = {"ppk_id": PPK_ID, "ppk": "0x" + ours_ppk.hex(), "ppk_required": ours_required}
    return H.ours_vs_strongswan(
        workdir, prefix=prefix, sw_config=sw_conf,
        ours_connections=lambda t: [H.ours_conn(t, ike=ike, esp=ESP, psk=psk, **extra)],
        charon_kwargs=S6.charon6_kwargs(log_levels=S6.LOG_LEVELS))


@pytest.mark.parametrize("role", ["initiator", "responder"])
def test_ppk_required_both_sides(sswan_workdir, role):
    ppk = secrets.token_bytes(32)
    with _ppk_env(sswan_workdir, "opqp", sw_ppk=ppk, ours_ppk=ppk, sw_required=True,
                  ours_required=True) as env:
        if role == "initiator":
            env.ours.up(H.CONN)
        else:
            env.sw.initiate(child=H.CHILD, timeout=20)
        osa, oc, ssa, sc = env.wait_both_child(timeout=15)
        assert osa["ppk"] is True
        assert f"using PPK for PPK_ID '{PPK_ID}'" in env.sw.log_text()
        env.ping_both_ways(count=1)  # Child keys from SK_d' agree
        # and an IKE rekey from SK_d' too
        env.ours.rekey(H.CONN, ike=True) if role == "initiator" else env.sw.rekey(ike=H.CONN)
        H.wait_ike_rekeyed(env, H.ike_spis(osa))
        env.ping_both_ways(count=1)


def test_ppk_optional_falls_back_when_strongswan_has_none(sswan_workdir):
    ppk = secrets.token_bytes(32)
    with _ppk_env(sswan_workdir, "opqo", sw_ppk=None, ours_ppk=ppk, sw_required=False,
                  ours_required=False) as env:
        env.ours.up(H.CONN)
        osa, oc, ssa, sc = env.wait_both_child(timeout=15)
        assert osa["ppk"] is False
        env.ping_both_ways(count=1)


@pytest.mark.parametrize("role", ["initiator", "responder"])
def test_mismatched_ppk_is_refused(sswan_workdir, role):
    with _ppk_env(sswan_workdir, "opqm", sw_ppk=secrets.token_bytes(32), ours_ppk=secrets.token_bytes(32),
                  sw_required=False, ours_required=False) as env:
        if role == "initiator":
            # strongSwan has a PPK for our PPK_ID, so it must use it (no NO_PPK_AUTH fallback)
            with pytest.raises(GatewayError, match="AUTHENTICATION_FAILED"):
                env.ours.up(H.CONN)
            assert "MAC mismatched" in env.sw.log_text()
        else:
            env.sw.initiate(child=H.CHILD, timeout=20, check=False)
            H.wait_log_event(env.ours, "IKE_SA down", timeout=10)
            assert [e for e in H.ours_events(env.ours, "request refused")
                    if "PSK authentication" in e.get("reason", "")], "we did not refuse the wrong PPK"
        assert not [sa for sa in env.status() if sa["state"] == "ESTABLISHED"]
        assert all(s.get("state") != "ESTABLISHED" for s in env.sw.list_sas())


def test_new_child_sa_with_mlkem_pfs_from_strongswan(sswan_workdir):
    """A second CHILD_SA (narrower selectors, child "net2") started by strongSwan over the hybrid
    IKE SA: CREATE_CHILD_SA with x25519 + IKE_FOLLOWUP_KE with ML-KEM-768 (not a rekey)."""
    S6.require_strongswan6()
    psk = "test-only-" + secrets.token_hex(12)

    def sw_conf(t):
        c = H.sw_conf(t, ike=HYBRID, esp=ESP_PFS, psk=psk)
        c["connections"][H.CONN]["children"]["net2"] = {
            "local_ts": "10.20.0.0/25", "remote_ts": "10.10.0.0/25", "esp_proposals": ESP_PFS,
            "start_action": "none"}
        return c
    with H.ours_vs_strongswan(
            sswan_workdir, prefix="opqn", sw_config=sw_conf,
            ours_connections=lambda t: [H.ours_conn(t, ike=HYBRID, esp=ESP_PFS, psk=psk)],
            charon_kwargs=S6.charon6_kwargs(log_levels=S6.LOG_LEVELS)) as env:
        env.ours.up(H.CONN)
        osa, oc, ssa, sc = env.wait_both_child(timeout=15)
        env.sw.initiate(child="net2", timeout=20)
        _sa, c2 = env.sw.wait_child("net2", timeout=10)
        assert c2.get("dh-group") == "CURVE_25519" and c2.get("ake1") == "ML_KEM_768", sorted(c2)

        def ours_two():
            kids = [c for sa in env.status() for c in sa["children"] if c["state"] == "INSTALLED"]
            return kids if len(kids) == 2 else None
        kids = netns.wait_until(ours_two, timeout=10, interval=0.1, what="our second CHILD_SA")
        new = next(c for c in kids if c["spi_in"] == c2["spi-out"])
        assert new["algorithms"] == "AES_GCM_16_256/CURVE_25519/KE1_ML_KEM_768/NO_EXT_SEQ"
        assert new["local_ts"] == ["10.10.0.0/25"] and new["remote_ts"] == ["10.20.0.0/25"]
        assert _followups(env, "request")
        assert not [s for s in H.sw_summaries(env.sw) if "N(REKEY_SA)" in s["payloads"]]
        # the new pair carries traffic (host_a 10.10.0.2 and host_b 10.20.0.2 are in the /25s)
        env.ping_both_ways(count=2)
        kids = ours_two()
        assert min(int(next(c for c in kids if c["spi_in"] == new["spi_in"])[k])
                   for k in ("packets_in", "packets_out")) >= 1
