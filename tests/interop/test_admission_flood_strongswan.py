"""Responder admission under a COOKIE-answering flood (issue 14), with strongSwan as the
legitimate initiator: a flooder namespace behind the router sends 50 IKE_SA_INIT/s to our
gateway and answers every COOKIE (our engine as initiator, IKE_AUTH withheld); strongSwan,
from another address, still connects, passing our COOKIE challenge (the new versioned format)
on the way because the gateway is above ``cookie_threshold``."""
from __future__ import annotations

import secrets
import subprocess
import sys

import ours_helpers as H
import pytest

from tests.gateway import ROOT, connection, wait_for
from tests.netns_e2e.test_admission_flood import FLOOD  # the same flooder

pytestmark = [pytest.mark.interop, pytest.mark.timeout(90)]

IKE, ESP = H.SUITES[0]
FLOODER, FLOODER_GW = "203.0.113.66", "203.0.113.1"
FLOOD_SECONDS, FLOOD_RATE = 10.0, 50.0



def test_strongswan_connects_while_one_address_floods_and_answers_cookies(sswan_workdir):
    psk = "test-only-" + secrets.token_hex(12)
    settings = {"half_open_limit": 10, "cookie_threshold": 2, "half_open_per_address": 5,
                "new_sa_rate_per_address": 0}

    def ours(t):
        return [H.ours_conn(t, ike=IKE, esp=ESP, psk=psk),
                connection("flood", t.site_ip, FLOODER, H.OURS_ID, "flooder.example.org",
                           local_ts="10.10.0.0/24", remote_ts="10.9.0.0/24")]

    with H.ours_vs_strongswan(sswan_workdir, prefix="oswadm", gateway=settings,
                              sw_config=lambda t: H.sw_conf(t, ike=IKE, esp=ESP, psk=psk),
                              ours_connections=ours) as env:
        t = env.topo
        fl = t.group.add("fl")
        t.group.veth(fl, "wan0", t.router, "r5", a_addrs=[f"{FLOODER}/24"], b_addrs=[f"{FLOODER_GW}/24"])
        fl.add_route("default", via=FLOODER_GW)
        flood = fl.popen([sys.executable, "-c", FLOOD, str(ROOT), FLOODER, t.site_ip, str(FLOOD_SECONDS),
                          str(FLOOD_RATE)], stdout=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: env.ours.control("stats")["ike"]["dropped"].get("per-address half-open limit reached"),
                     FLOOD_SECONDS, "the per-address limit to stop the flooder")
            during = env.ours.control("stats")["ike"]
            env.sw.initiate(child=H.CHILD, timeout=20)
            env.wait_both_child()
            assert flood.poll() is None, "the flood ended before strongSwan connected"
            env.ping_both_ways()
            out, _ = flood.communicate(timeout=FLOOD_SECONDS + 30)
        finally:
            if flood.poll() is None:
                flood.kill()
                flood.wait(5)
        inits, cookies, withheld, _ = map(int, out.split())
        stats = env.ours.control("stats")["ike"]
        assert inits >= FLOOD_SECONDS * FLOOD_RATE * 0.5 and cookies > 0 and withheld > 0, out
        assert during["half_open"] <= 5, during
        # strongSwan came in with one of our COOKIEs (the gateway was above the threshold)
        assert stats["inits_admitted_with_cookie"] > during["inits_admitted_with_cookie"], (during, stats)
        assert not [ln for ln in env.ours.log_lines() if "Traceback" in str(ln)]
