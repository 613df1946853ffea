"""A swanctl.conf converted by `vpn-gw import-swanctl` brings the same tunnel up against strongSwan.

The migration case: the site gateway ran strongSwan with a swanctl.conf (written here, the
mirror image of strongSwan's own in topo.gw); it is converted, our gateway runs the result in
topo.site, initiates (`vpn-gw up`), and the protected hosts ping each other through the tunnel.
"""
from __future__ import annotations

import secrets
import subprocess
import sys
import tomllib

import ours_helpers as H
import pytest

pytestmark = [pytest.mark.interop, pytest.mark.timeout(90)]

IKE, ESP = H.SUITES[0]


def _site_swanctl(topo, psk: str) -> str:
    return f"""
# the site gateway's swanctl.conf while it still ran strongSwan
connections {{
    {H.CONN} {{
        version = 2
        local_addrs = {topo.site_ip}
        remote_addrs = {topo.gw_ip}
        proposals = {IKE}
        encap = yes
        dpd_delay = 30s
        local {{
            auth = psk
            id = {H.OURS_ID}
        }}
        remote {{
            auth = psk
            id = {H.SW_ID}
        }}
        children {{
            {H.CHILD} {{
                local_ts = {topo.site_net}
                remote_ts = {topo.gw_net}
                esp_proposals = {ESP}
                start_action = none
            }}
        }}
    }}
}}
secrets {{
    ike-1 {{
        id-1 = {H.SW_ID}
        secret = "{psk}"
    }}
}}
"""


def test_converted_config_brings_tunnel_up(sswan_workdir):
    psk = "test-only-" + secrets.token_hex(12)
    converted: dict = {}

    def ours_connections(topo):
        src = sswan_workdir / "site-swanctl.conf"
        src.write_text(_site_swanctl(topo, psk))
        p = subprocess.run([sys.executable, "-m", "vpn_gw", "import-swanctl", str(src)],
                           capture_output=True, text=True, timeout=60, check=False)
        assert p.returncode == 0, p.stderr
        assert p.stderr == "", f"unexpected unconverted items:\n{p.stderr}"
        doc = tomllib.loads(p.stdout)
        converted.update(doc)
        conns = []
        for c in doc["connection"]:
            c = dict(c)
            c["children"] = c.pop("child")
            conns.append(c)
        return conns

    with H.ours_vs_strongswan(sswan_workdir, prefix="oswi",
                              sw_config=lambda t: H.sw_conf(t, ike=IKE, esp=ESP, psk=psk),
                              ours_connections=ours_connections) as env:
        assert converted["gateway"]["listen"] == [env.topo.site_ip]
        assert env.no_ping(), "protected hosts reach each other without a tunnel"
        env.ours.up(H.CONN)
        osa, oc, ssa, sc = env.wait_both_child(timeout=10)
        H.assert_same_sa(osa, oc, ssa, sc, env.topo, we_initiated=True, ike=IKE, esp=ESP)
        env.ping_both_ways(count=3)
