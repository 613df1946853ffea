"""Post-quantum IKE against strongSwan 6.0.6: ML-KEM hybrids (RFC 9370 over RFC 9242) and alone.

Our gateway (userspace ESP) in ``topo.site``, charon-6 (kernel-libipsec) in ``topo.gw``.
Both views must show the same SA and every negotiated key exchange; pings cross the tunnel.
Skips only when ../shared/peers is absent (see tests/interop/strongswan6.py).
"""
from __future__ import annotations

import re
import secrets

import pytest

import ours_helpers as H
import strongswan6 as S6

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
