"""vpn_gw/metrics.py without a daemon: the config key, the event counters, label values.
(The real gateway is scraped in tests/netns_e2e/test_metrics.py.)"""
from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vpn_gw.config import ConfigError, load_config
from vpn_gw.metrics import GatewayMetrics


def _cfg(tmp_path, value: str):
    p = tmp_path / "gw.toml"
    p.write_text(f'[gateway]\nmetrics_listen = "{value}"\n')
    return load_config(str(p))


@pytest.mark.parametrize("value,want", [("127.0.0.1:9273", ("127.0.0.1", 9273)),
                                        ("[::1]:9100", ("::1", 9100)), ("", None)])
def test_metrics_listen_values(tmp_path, value, want):
    assert _cfg(tmp_path, value).metrics_listen == want


@pytest.mark.parametrize("value", ["9273", "localhost:9273", "127.0.0.1:0", "127.0.0.1:99999", "::1:9273"])
def test_metrics_listen_bad(tmp_path, value):
    with pytest.raises(ConfigError) as e:
        _cfg(tmp_path, value)
    assert "metrics_listen" in str(e.value) and "ADDRESS:PORT" in str(e.value)


def test_event_counters_and_bounded_labels():
    m = GatewayMetrics()
    m.on_log("asking for a cookie", {"peer": "192.0.2.9:500"})
    m.on_log("EAP authentication failed", {"method": "eap-mschapv2", "reason": "wrong password"})
    m.on_log("EAP authentication succeeded", {"method": "eap-md5"})
    m.on_log("sending request", {})
    m.exchange_done("CREATE_CHILD_SA", "responder", "refused: NO_PROPOSAL_CHOSEN (no match)")
    m.exchange_done("CREATE_CHILD_SA", "responder", "created child")
    m.ike_up(0.02)
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for f in text_string_to_metric_families(m.render().decode()) for s in f.samples}
    assert got[("vpngw_cookies_sent_total", ())] == 1
    assert got[("vpngw_eap_authentications_total", (("method", "eap-mschapv2"), ("result", "failure")))] == 1
    assert got[("vpngw_eap_authentications_total", (("method", "eap-md5"), ("result", "success")))] == 1
    ex = {k[1]: v for k, v in got.items() if k[0] == "vpngw_exchanges_total"}
    assert ex == {(("exchange", "CREATE_CHILD_SA"), ("result", "refused"), ("role", "responder")): 1,
                  (("exchange", "CREATE_CHILD_SA"), ("result", "ok"), ("role", "responder")): 1}
    assert got[("vpngw_ike_setup_seconds_bucket", (("le", "0.025"),))] == 1
    assert got[("vpngw_ike_setup_seconds_bucket", (("le", "0.01"),))] == 0


def test_grafana_dashboard_uses_only_exported_metrics():
    """Every vpngw_* name in the example dashboard is one the gateway exports."""
    import json
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    dash = json.loads((root / "examples/grafana/vpn-gw-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    used = set(re.findall(r"vpngw_[a-z_]+", exprs))
    documented = set(re.findall(r"`(vpngw_[a-z_]+)`", (root / "docs/metrics.md").read_text()))
    suffixes = ("_total", "_bucket", "_count", "_sum")
    base = {next((u[: -len(s)] for s in suffixes if u.endswith(s) and u[: -len(s)] in documented), u)
            for u in used}
    assert used and base <= documented | {u for u in used if u in documented}, base - documented


def test_collector_reads_a_real_gateway_pools_and_probe_counters(tmp_path):
    """A real Gateway object (not serving): pool size and leases, configured connections shown
    with zero SAs, probe counters; all read at scrape time."""
    from vpn_gw.daemon.gateway import Gateway
    from vpn_gw.dataplane import RecordingDataPlane
    p = tmp_path / "gw.toml"
    p.write_text(f'''[gateway]
control_socket = "{tmp_path}/c.sock"
metrics_listen = "127.0.0.1:9273"
[[pool]]
name = "rw"
addrs = "10.99.0.10-10.99.0.19"
lease_file = "{tmp_path}/leases.json"
[[connection]]
name = "roadwarriors"
psk = "0sAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
pools = ["rw"]
  [[connection.child]]
  name = "rw"
  local_ts = ["10.1.0.0/24"]
  remote_ts = ["0.0.0.0/0"]
''')
    gw = Gateway(load_config(str(p)), dataplane=RecordingDataPlane())
    gw.pools.acquire(["rw"], "alice@example.org", 4)
    gw.pools.acquire(["rw"], "bob@example.org", 4)
    gw.probe_responder.answered += 3
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for f in text_string_to_metric_families(gw.metrics.render().decode()) for s in f.samples}
    assert got[("vpngw_pool_addresses", (("pool", "rw"),))] == 10
    assert got[("vpngw_pool_leases", (("pool", "rw"), ("state", "online")))] == 2
    assert got[("vpngw_pool_leases", (("pool", "rw"), ("state", "offline")))] == 0
    assert got[("vpngw_ike_sas", (("connection", "roadwarriors"), ("state", "established")))] == 0
    assert got[("vpngw_traffic_bytes_total", (("connection", "roadwarriors"), ("direction", "in")))] == 0
    assert got[("vpngw_probe_requests_total", (("result", "answered"),))] == 3
