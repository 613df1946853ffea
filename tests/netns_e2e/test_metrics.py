"""Prometheus metrics of a real gateway: a tunnel between two of our gateways in namespaces,
pings through it, then /metrics scraped over HTTP inside the gateway's namespace and parsed
with prometheus_client's own parser."""
from __future__ import annotations

import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.netns

URL = "http://127.0.0.1:9273/metrics"


def scrape(ns) -> dict[tuple[str, tuple], float]:
    p = ns.run([sys.executable, "-c", "import urllib.request, sys; "
                f"r = urllib.request.urlopen({URL!r}, timeout=5); "
                "sys.stdout.write(r.headers['Content-Type'] + '\\n' + r.read().decode())"],
               check=False, timeout=20)
    assert p.returncode == 0, p.stderr
    ctype, text = p.stdout.split("\n", 1)
    assert ctype.startswith("text/plain; version=")  # the Prometheus text format
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_of_a_tunnel(e2e):
    router, a, b, ga, gb = e2e.site_pair(gateway={"metrics_listen": "127.0.0.1:9273"})
    a.host.wait_ping(b.host_ip, timeout=5)
    assert a.host.ping(b.host_ip, count=5, timeout=2)

    m = scrape(a.gw)
    conn = (("connection", "to-b"),)
    assert m[("vpngw_ike_sas", (("connection", "to-b"), ("state", "established")))] == 1
    assert m[("vpngw_child_sas", (("connection", "to-b"), ("state", "installed")))] == 1
    assert m[("vpngw_half_open_ike_sas", ())] == 0
    assert m[("vpngw_traffic_packets_total", conn + (("direction", "out"),))] >= 5
    assert m[("vpngw_traffic_packets_total", conn + (("direction", "in"),))] >= 5
    assert m[("vpngw_traffic_bytes_total", conn + (("direction", "out"),))] >= 5 * 84
    # a initiated: IKE_AUTH done as initiator, one set-up observed
    assert m[("vpngw_exchanges_total", (("exchange", "IKE_AUTH"), ("result", "ok"),
                                        ("role", "initiator")))] >= 1, sorted(k for k in m if "exch" in k[0])
    assert m[("vpngw_ike_setup_seconds_count", ())] == 1
    assert 0 < m[("vpngw_ike_setup_seconds_sum", ())] < 5
    assert m[("vpngw_cookies_sent_total", ())] == 0

    # the responder's view; after the Child SA is gone its traffic stays in the totals
    mb = scrape(b.gw)
    assert mb[("vpngw_ike_sas", (("connection", "to-a"), ("state", "established")))] == 1
    assert mb[("vpngw_exchanges_total", (("exchange", "IKE_AUTH"), ("result", "ok"),
                                         ("role", "responder")))] == 1
    before = mb[("vpngw_traffic_packets_total", (("connection", "to-a"), ("direction", "in")))]
    assert before >= 5
    gb.down("to-a")
    from tests.gateway import wait_for
    wait_for(lambda: gb.status() == [], 5, "b to delete the IKE SA")
    mb = scrape(b.gw)
    assert mb[("vpngw_ike_sas", (("connection", "to-a"), ("state", "established")))] == 0
    assert mb[("vpngw_traffic_packets_total", (("connection", "to-a"), ("direction", "in")))] == before
