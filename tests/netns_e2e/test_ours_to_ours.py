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


def _trap_pair(a, b, tmp):
    """Site a with a trap policy towards site b (which only responds)."""
    ga = OurGateway(a.gw, tmp, "a", [connection("to-b", a.wan, b.wan, "a.example.org", "b.example.org",
                                                local_ts=a.lan, remote_ts=b.lan, start_action="trap")],
                    listen=[a.wan])
    gb = OurGateway(b.gw, tmp, "b", [connection("to-a", b.wan, a.wan, "b.example.org", "a.example.org",
                                                local_ts=b.lan, remote_ts=a.lan)], listen=[b.wan])
    return ga, gb


def _ping_once(site, dst: str) -> None:
    r = site.host.run(["ping", "-c", "1", "-W", "5", dst], check=False, timeout=10)
    assert r.returncode == 0, r.stdout + r.stderr


def _acquires(gw) -> int:
    return sum(e.get("event") == "traffic for a trap policy: starting the connection" for e in gw.log_lines())


def test_trap_policy_starts_tunnel_and_delivers_first_packets(sites):
    grp, (router, a, b), tmp = sites
    ga, gb = _trap_pair(a, b, tmp)
    try:
        ga.start()
        gb.start()
        assert ga.status() == []  # nothing negotiated until traffic arrives
        # One ping: its echo request is held by the trap policy and sent once the SA is up.
        _ping_once(a, b.host_ip)
        (sa, ch), = ga.children()
        assert ch["packets_out"] >= 1
        assert _acquires(ga) >= 1
    finally:
        ga.stop()
        gb.stop()


def test_trap_rearms_after_the_peer_deletes_the_sa(sites):
    """Issue 15 item 15: the peer deleting what the trap brought up leaves the trap working (its
    route into the TUN stays): the next packet brings the tunnel up again."""
    grp, (router, a, b), tmp = sites
    ga, gb = _trap_pair(a, b, tmp)
    try:
        ga.start()
        gb.start()
        for rnd in range(2):
            _ping_once(a, b.host_ip)
            (sa, ch), = ga.children()
            assert _acquires(ga) == rnd + 1
            gb.down("to-a")  # the peer deletes the IKE SA and its Child SA
            wait_for(lambda: ga.status() == [], 10, "the peer's delete")
            assert b.lan in a.gw.ip("route", "show", "dev", "vpngw0"), "the trap's route is gone"
    finally:
        ga.stop()
        gb.stop()


def test_trap_asks_for_a_deleted_child_again_over_the_same_ike_sa(sites):
    """The Child SA the trap brought up is deleted (here at its hard packet limit) while the
    IKE SA stays: the next packet asks for a new Child SA over that IKE SA."""
    grp, (router, a, b), tmp = sites
    conn_a = connection("to-b", a.wan, b.wan, "a.example.org", "b.example.org", local_ts=a.lan, remote_ts=b.lan,
                        start_action="trap")
    conn_a["children"][0]["life_packets"] = 20
    ga = OurGateway(a.gw, tmp, "a", [conn_a], listen=[a.wan])
    gb = OurGateway(b.gw, tmp, "b", [connection("to-a", b.wan, a.wan, "b.example.org", "a.example.org",
                                                local_ts=b.lan, remote_ts=a.lan)], listen=[b.wan])
    try:
        ga.start()
        gb.start()
        _ping_once(a, b.host_ip)
        (sa, first), = ga.children()
        a.host.ping(b.host_ip, count=25, interval=0.01, timeout=10)
        # (the pings after the limit may already bring the next Child SA up)
        wait_for(lambda: all(c["spi_in"] != first["spi_in"] for _, c in ga.children()), 10,
                 "the Child SA to be deleted at its packet limit")
        assert [s_["spi_i"] for s_ in ga.ike_sas()] == [sa["spi_i"]]  # the IKE SA stays
        _ping_once(a, b.host_ip)
        (sa2, second), = ga.children()
        assert sa2["spi_i"] == sa["spi_i"] and second["spi_in"] != first["spi_in"]
        assert any(e.get("event") == "traffic for a trap policy: asking for the Child SA again"
                   for e in ga.log_lines())
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
        for rnd in range(2):  # the trap re-arms: a second loss is handled like the first
            gb.stop()  # the peer dies without a word
            wait_for(lambda: ga.status() == [], 10, "the dead peer to be detected")
            assert any(e.get("event") == "peer lost: trap policy installed, traffic will restart the connection"
                       for e in ga.log_lines())
            gb = OurGateway(b.gw, tmp, f"b{rnd + 2}", conn_b, listen=[b.wan])
            gb.start()
            _ping_once(a, b.host_ip)
            assert ga.children()
            assert _acquires(ga) == rnd + 1
    finally:
        ga.stop()
        gb.stop()


# Runs the daemon in its own mount namespace where /dev/net is an empty tmpfs: no TUN device can
# be created, as on a host without the tun module. exec keeps the PID (the test stops it by PID).
NO_TUN = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
          'mount -t tmpfs none /dev/net && exec "$@"', "no-tun"]


def test_no_tun_device_fails_the_child_visibly(sites):
    """Issue 15 item 17: without TUN the Child SA is not reported as installed: the start-up log
    says TUN is unavailable, `vpn-gw up` fails naming the reason, status shows it, the Child
    SA is deleted (on both sides)."""
    grp, (router, a, b), tmp = sites
    ga = OurGateway(a.gw, tmp, "a", [connection("to-b", a.wan, b.wan, "a.example.org", "b.example.org",
                                                local_ts=a.lan, remote_ts=b.lan)], listen=[a.wan], wrapper=NO_TUN)
    gb = OurGateway(b.gw, tmp, "b", [connection("to-a", b.wan, a.wan, "b.example.org", "a.example.org",
                                                local_ts=b.lan, remote_ts=a.lan)], listen=[b.wan])
    try:
        ga.start()
        gb.start()
        assert any(e.get("event", "").startswith("TUN unavailable") and e.get("level") == "error"
                   for e in ga.log_lines()), ga.log_tail()
        r = ga.cli("up", "to-b", "-s", str(ga.socket), check=False)
        assert r.returncode != 0, r.stdout
        assert "not installed" in r.stderr + r.stdout and "/dev/net/tun" in r.stderr + r.stdout, r.stderr
        failed = [e for e in ga.log_lines() if e.get("event") == "CHILD_SA installation failed: deleting it"]
        assert failed and failed[0]["level"] == "error" and "/dev/net/tun" in failed[0]["error"]
        (sa,) = ga.status()
        assert sa["install_errors"] and "not installed" in sa["install_errors"][0]
        wait_for(lambda: ga.children() == [] and gb.children() == [], 5, "the Child SA to be deleted on both sides")
    finally:
        ga.stop()
        gb.stop()
