"""Signals on the real daemon (issue 14): SIGHUP reloads like `vpn-gw reload` and keeps the tunnel,
a reload applies `cookie_threshold` (the next IKE_SA_INIT is answered with a COOKIE), and a
restart-only change is refused with a message naming the key, in the reply and in the log."""
from __future__ import annotations

import os
import signal

import pytest

from tests.gateway import OurGateway, connection, render_toml, wait_for
from tests.netns import NetnsGroup, require_root
from tests.netns_e2e.topology import two_sites

pytestmark = pytest.mark.netns


@pytest.fixture
def sites(tmp_path):
    require_root()
    grp = NetnsGroup("sig")
    try:
        yield grp, two_sites(grp), tmp_path
    finally:
        grp.close()
        assert grp.leftovers() == []


def _events(gw: OurGateway, name: str) -> list[dict]:
    return [line for line in gw.log_lines() if line.get("event") == name]


def test_sighup_reloads_keeps_the_tunnel_and_applies_cookie_threshold(sites):
    _grp, (_router, a, b), tmp = sites
    conn_a = connection("to-b", a.wan, b.wan, "a.example.org", "b.example.org", local_ts=a.lan, remote_ts=b.lan)
    conn_b = connection("to-a", b.wan, a.wan, "b.example.org", "a.example.org", local_ts=b.lan, remote_ts=a.lan)
    ga = OurGateway(a.gw, tmp, "a", [conn_a], listen=[a.wan])
    gb_settings = {"control_socket": None, "listen": [b.wan], "cookie_threshold": 100}
    gb = OurGateway(b.gw, tmp, "b", [conn_b], listen=[b.wan], gateway={"cookie_threshold": 100})
    gb_settings["control_socket"] = str(gb.socket)
    try:
        ga.start()
        gb.start()
        ga.up("to-b")
        (before, _), = gb.wait_children(1)
        assert not _events(gb, "asking for a cookie")

        # SIGHUP with cookie_threshold = 0: applied, logged, the tunnel is untouched.
        gb.config.write_text(render_toml({**gb_settings, "cookie_threshold": 0}, [conn_b]))
        os.kill(gb.proc.pid, signal.SIGHUP)
        wait_for(lambda: _events(gb, "configuration reloaded"), 10, "the SIGHUP reload to be logged")
        (done,) = _events(gb, "configuration reloaded")
        assert done["origin"] == "SIGHUP" and done["gateway_changed"] == ["cookie_threshold"]
        assert gb.proc.poll() is None
        (after, _), = gb.wait_children(1)
        assert (after["spi_i"], after["spi_r"]) == (before["spi_i"], before["spi_r"])
        assert after["children"][0]["spi_in"] == before["children"][0]["spi_in"]
        a.host.wait_ping(b.host_ip, timeout=5)

        # The next IKE_SA_INIT gets a COOKIE challenge (threshold 0), and the initiator passes it.
        ga.down("to-b")
        wait_for(lambda: gb.status() == [], 10, "the responder to delete the IKE SA")
        ga.up("to-b")
        gb.wait_children(1)
        assert _events(gb, "asking for a cookie")

        # A restart-only key: `vpn-gw reload` fails naming it; SIGHUP logs the refusal; nothing changes.
        gb.config.write_text(render_toml({**gb_settings, "cookie_threshold": 0, "ike_port": 5000}, [conn_b]))
        bad = gb.cli("reload", "-s", str(gb.socket), check=False)
        assert bad.returncode != 0
        assert "reload refused: [gateway] ike_port can only change with a restart" in bad.stderr + bad.stdout
        os.kill(gb.proc.pid, signal.SIGHUP)
        wait_for(lambda: len(_events(gb, "reload refused")) == 2, 10, "the refused SIGHUP reload to be logged")
        assert {e["origin"] for e in _events(gb, "reload refused")} == {"control", "SIGHUP"}
        assert gb.proc.poll() is None and len(gb.ike_sas()) == 1
        a.host.wait_ping(b.host_ip, timeout=5)
        assert not [line for line in gb.log_lines() if "Traceback" in str(line)]
    finally:
        ga.stop()
        gb.stop()
