"""Smoke test of the strongSwan harness: a PSK site-to-site pair in namespaces.

Brings up site <-> gw through tests/interop/strongswan.py, pings between the protected
hosts (the router in between has no route for them, so only the tunnel can carry the
ping), checks that list-sas shows the same INSTALLED SAs on both ends, terminates, and
verifies that no namespace or charon process is left behind.
"""

from __future__ import annotations

import secrets
import time

import netns
import pytest
import strongswan as ss

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]


def _fail_unless_strongswan() -> None:
    """strongSwan missing must make this test FAIL (not skip), with the reason."""
    try:
        ss.require_strongswan()
    except ss.StrongSwanMissing as exc:
        reason = str(exc)
    else:
        return
    pytest.fail(reason, pytrace=False)


def test_psk_pair_tunnel_and_cleanup(sswan_workdir):
    _fail_unless_strongswan()
    t0 = time.monotonic()
    psk = "test-only-" + secrets.token_hex(8)
    namespaces: list[str] = []
    pids: list[int] = []

    def setup(pair: ss.Pair) -> None:
        site_conf, gw_conf = ss.psk_site_to_site(
            pair.topo, psk, ike_proposals="aes256gcm16-prfsha256-x25519",
            esp_proposals="aes256gcm16")
        pair.site.write_swanctl_conf(site_conf)
        pair.gw.write_swanctl_conf(gw_conf)

    with ss.strongswan_pair(sswan_workdir, prefix="ssth", setup=setup,
                            log_levels=ss.KEY_LOG_LEVELS) as pair:
        topo = pair.topo
        namespaces = [n.name for n in topo.namespaces()]
        pids = [pair.site.pid, pair.gw.pid]
        assert all(netns.pid_alive(p) for p in pids)
        assert set(namespaces) <= set(netns.list_netns())

        # no tunnel yet: the protected networks cannot reach each other
        assert not topo.host_a.ping(topo.host_b_ip, count=1, wait=0.5)

        pair.site.initiate(child="net")
        site_sa, site_child = pair.site.wait_child("net", timeout=10)
        gw_sa, gw_child = pair.gw.wait_child("net", timeout=10)

        assert site_sa["state"] == gw_sa["state"] == "ESTABLISHED"
        assert site_child["state"] == gw_child["state"] == "INSTALLED"
        assert site_sa["initiator"] == "yes" and gw_sa.get("initiator") != "yes"
        assert (site_sa["initiator-spi"], site_sa["responder-spi"]) == \
            (gw_sa["initiator-spi"], gw_sa["responder-spi"])
        assert site_child["spi-in"] == gw_child["spi-out"]
        assert site_child["spi-out"] == gw_child["spi-in"]
        assert site_child["encap"] == "yes"  # kernel-libipsec: ESP in UDP/4500
        assert site_child["local-ts"] == [topo.site_net]
        assert site_child["remote-ts"] == [topo.gw_net]
        assert site_sa["encr-alg"] == "AES_GCM_16" and site_sa["dh-group"] == "CURVE_25519"

        assert topo.host_a.ping(topo.host_b_ip, count=3, interval=0.2), "no ping through the tunnel"
        assert topo.host_b.ping(topo.host_a_ip, count=1), "no ping back through the tunnel"
        _, site_child = pair.site.wait_child("net")
        assert int(site_child["packets-out"]) >= 3 and int(site_child["packets-in"]) >= 3

        # the log parser finds the IKE_SA's keys on both ends, and they agree
        site_log = ss.parse_log(pair.site.log_text())
        ike_site = ss.parse_ike_keys(site_log)
        ike_gw = ss.parse_ike_keys(ss.parse_log(pair.gw.log_text()))
        assert len(ike_site) == len(ike_gw) == 1
        assert (ike_site[0]["spi_i"], ike_site[0]["spi_r"]) == \
            (site_sa["initiator-spi"], site_sa["responder-spi"])
        assert ike_site[0]["we_initiated"] is True and ike_gw[0]["we_initiated"] is False
        for key in ("skeyseed", "sk_d", "sk_ei", "sk_er", "sk_pi", "sk_pr"):
            assert ike_site[0][key] and ike_site[0][key] == ike_gw[0][key], key
        child_keys = ss.parse_child_keys(site_log)
        assert [(c["spi_in"], c["spi_out"]) for c in child_keys] == \
            [(site_child["spi-in"], site_child["spi-out"])]
        summaries = ss.parse_summaries(site_log)
        assert [(s["dir"], s["exchange"], s["kind"]) for s in summaries[:4]] == [
            ("out", "IKE_SA_INIT", "request"), ("in", "IKE_SA_INIT", "response"),
            ("out", "IKE_AUTH", "request"), ("in", "IKE_AUTH", "response")]

        pair.site.terminate(ike="s2s")
        pair.site.wait_no_sas(timeout=10)
        pair.gw.wait_no_sas(timeout=10)
        assert not topo.host_a.ping(topo.host_b_ip, count=1, wait=0.5)

    # everything is gone: namespaces, charons
    assert not set(namespaces) & set(netns.list_netns()), "namespaces left behind"
    assert not [p for p in pids if netns.pid_alive(p)], "charon processes left behind"
    assert time.monotonic() - t0 < 30
