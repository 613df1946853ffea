"""Our gateway to our gateway through real namespaces: IKE on the wire, ESP in UDP 4500, pings."""
from __future__ import annotations

import pytest

from tests.gateway import OurGateway, connection, wait_for
from tests.netns import NetnsGroup, require_root
from tests.netns_e2e.topology import two_sites

pytestmark = pytest.mark.netns


@pytest.fixture
def sites(tmp_path):
    require_root()
    grp = NetnsGroup("e2e")
    try:
        yield grp, two_sites(grp), tmp_path
    finally:
        grp.close()
        assert grp.leftovers() == []


def test_policy_based_ping_and_status(sites):
    grp, (router, a, b), tmp = sites
    ga = OurGateway(a.gw, tmp, "a", [connection("to-b", a.wan, b.wan, "a.example.org", "b.example.org",
                                                local_ts=a.lan, remote_ts=b.lan)], listen=[a.wan])
    gb = OurGateway(b.gw, tmp, "b", [connection("to-a", b.wan, a.wan, "b.example.org", "a.example.org",
                                                local_ts=b.lan, remote_ts=a.lan)], listen=[b.wan])
    try:
        ga.start()
        gb.start()
        assert not a.host.ping(b.host_ip, count=1, timeout=1)  # no tunnel yet: no route on the router
        ga.up("to-b")
        (sa_a, ch_a), = ga.wait_children(1)
        (sa_b, ch_b), = gb.wait_children(1)
        assert (sa_a["spi_i"], sa_a["spi_r"]) == (sa_b["spi_i"], sa_b["spi_r"])
        assert ch_a["spi_in"] == ch_b["spi_out"] and ch_a["spi_out"] == ch_b["spi_in"]
        assert sa_a["local_port"] == 4500 and sa_a["remote_port"] == 4500
        a.host.wait_ping(b.host_ip, timeout=5)
        assert a.host.ping(b.host_ip, count=3, timeout=2)
        (_, ch_a), = ga.children()
        assert ch_a["packets_out"] >= 3 and ch_a["packets_in"] >= 3
        gb.down("to-a")
        wait_for(lambda: ga.status() == [] and gb.status() == [], 5, "both sides to delete the IKE SA")
        assert not a.host.ping(b.host_ip, count=1, timeout=1)
    finally:
        ga.stop()
        gb.stop()


def test_reload_adds_connection_without_touching_running_sas(sites):
    grp, (router, a, b), tmp = sites
    conn_ab = connection("to-b", a.wan, b.wan, "a.example.org", "b.example.org", local_ts=a.lan, remote_ts=b.lan)
    ga = OurGateway(a.gw, tmp, "a", [conn_ab], listen=[a.wan])
    gb = OurGateway(b.gw, tmp, "b", [connection("to-a", b.wan, a.wan, "b.example.org", "a.example.org",
                                                local_ts=b.lan, remote_ts=a.lan)], listen=[b.wan])
    try:
        ga.start()
        gb.start()
        ga.up("to-b")
        (before, _), = ga.wait_children(1)
        # Add a second connection to the file and reload: the running SA keeps its SPIs.
        from tests.gateway import render_toml
        extra = connection("spare", a.wan, "203.0.113.77", "a.example.org", "spare.example.org",
                           local_ts=a.lan, remote_ts="10.9.0.0/24")
        ga.config.write_text(render_toml({"control_socket": str(ga.socket), "listen": [a.wan]}, [conn_ab, extra]))
        out = ga.cli("reload", "-s", str(ga.socket)).stdout
        assert "added spare" in out
        (after, _), = ga.wait_children(1)
        assert (after["spi_i"], after["spi_r"]) == (before["spi_i"], before["spi_r"])
        # A broken file is refused with the line number, and nothing changes.
        ga.config.write_text(ga.config.read_text().replace('ike_proposals = ["aes256gcm16-prfsha256-x25519"]',
                                                           'ike_proposals = ["aes999-nonsense"]', 1))
        bad = ga.cli("reload", "-s", str(ga.socket), check=False)
        assert bad.returncode != 0 and "vpn-gw.toml:" in (bad.stderr + bad.stdout)
        assert ga.ike_sas()[0]["spi_i"] == before["spi_i"]
    finally:
        ga.stop()
        gb.stop()


def test_trap_policy_starts_tunnel_and_delivers_first_packets(sites):
    grp, (router, a, b), tmp = sites
    ga = OurGateway(a.gw, tmp, "a", [connection("to-b", a.wan, b.wan, "a.example.org", "b.example.org",
                                                local_ts=a.lan, remote_ts=b.lan, start_action="trap")],
                    listen=[a.wan])
    gb = OurGateway(b.gw, tmp, "b", [connection("to-a", b.wan, a.wan, "b.example.org", "a.example.org",
                                                local_ts=b.lan, remote_ts=a.lan)], listen=[b.wan])
    try:
        ga.start()
        gb.start()
        assert ga.status() == []  # nothing negotiated until traffic arrives
        # One ping: its echo request is held by the trap policy and sent once the SA is up.
        r = a.host.run(["ping", "-c", "1", "-W", "5", b.host_ip], check=False, timeout=10)
        assert r.returncode == 0, r.stdout + r.stderr
        (sa, ch), = ga.children()
        assert ch["packets_out"] >= 1
        assert any(l.get("event") == "traffic for a trap policy: starting the connection" for l in ga.log_lines())
    finally:
        ga.stop()
        gb.stop()


def test_dpd_action_trap_restarts_on_traffic(sites):
    grp, (router, a, b), tmp = sites
    fast = {"retransmit_timeout": "0.5s", "retransmit_tries": 1}
    ga = OurGateway(a.gw, tmp, "a", [connection("to-b", a.wan, b.wan, "a.example.org", "b.example.org",
                                                local_ts=a.lan, remote_ts=b.lan, dpd_delay="1s",
                                                dpd_action="trap")], listen=[a.wan], gateway=fast)
    conn_b = [connection("to-a", b.wan, a.wan, "b.example.org", "a.example.org", local_ts=b.lan, remote_ts=a.lan)]
    gb = OurGateway(b.gw, tmp, "b", conn_b, listen=[b.wan])
    try:
        ga.start()
        gb.start()
        ga.up("to-b")
        ga.wait_children(1)
        gb.stop()  # the peer dies without a word
        wait_for(lambda: ga.status() == [], 10, "the dead peer to be detected")
        assert any(l.get("event") == "peer lost: trap policy installed, traffic will restart the connection"
                   for l in ga.log_lines())
        gb = OurGateway(b.gw, tmp, "b2", conn_b, listen=[b.wan])
        gb.start()
        r = a.host.run(["ping", "-c", "1", "-W", "5", b.host_ip], check=False, timeout=10)
        assert r.returncode == 0, r.stdout + r.stderr
        assert ga.children()
    finally:
        ga.stop()
        gb.stop()
