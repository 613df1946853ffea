"""Route-based hub on kernel ESP, inside the QEMU guest: three branches with identical 0.0.0.0/0
selectors, each landing on its own XFRM interface (own if_id) because the hub chooses the
connection by the branch's IKE identity. The hub is our daemon (``dataplane = "xfrm"``, routes
from its config); the branches are strongSwan's charon with its kernel-netlink backend, each
with its own XFRM interface.

Topology (tests/netns_e2e/topology.hub_and_branches): host-h 10.0.0.2 -- hub 192.0.2.1 --
router -- 198.51.100.{1,65,129}/26 brN -- 10.N.0.2 host-N.
"""
from __future__ import annotations

import json

import pytest

from tests.gateway import connection
from tests.kernel_guest.guest_tests.test_guest_xfrm import KernelGateway, _wait_states, fact
from tests.netns import NetnsGroup
from tests.netns_e2e.topology import hub_and_branches

ANY = "0.0.0.0/0"
SWAN_PLUGINS = "random nonce openssl pem pkcs1 x509 pubkey kdf kernel-netlink socket-default vici"


def _psk(n: int) -> str:
    return f"guest-hub-branch{n}-0123456789"


def _rx_packets(ns, ifname: str) -> int:
    out = json.loads(ns.run(["ip", "-s", "-j", "link", "show", ifname]).stdout)
    return out[0]["stats64"]["rx"]["packets"]


@pytest.fixture(scope="module")
def hub():
    grp = NetnsGroup("kh")
    try:
        yield hub_and_branches(grp, 3)
    finally:
        grp.close()


def test_hub_three_branches_identical_selectors_own_interfaces(hub, tmp_path):
    from tests.interop.strongswan import Charon

    conns = [connection(f"br{b.n}", hub.wan, "%any", "hub.example.org", f"br{b.n}.example.org",
                        local_ts=ANY, remote_ts=ANY, psk=_psk(b.n), interface=f"xbr{b.n}", if_id=100 + b.n,
                        routes=[b.lan]) for b in hub.branches]
    ghub = KernelGateway(hub.gw, tmp_path, "hub", conns, listen=[hub.wan])
    charons = []
    for b in hub.branches:
        b.gw.ip("link", "add", "xhub", "type", "xfrm", "dev", "wan", "if_id", "42")
        b.gw.ip("link", "set", "xhub", "up")
        b.gw.ip("route", "add", hub.lan, "dev", "xhub")
        sw = Charon(b.gw, tmp_path / f"charon{b.n}", plugins=SWAN_PLUGINS, retransmit_timeout=2.0,
                    retransmit_tries=3, charon_settings={"install_routes": "no"})
        sw.write_swanctl_conf({
            "connections": {"hub": {
                "version": 2, "local_addrs": b.wan, "remote_addrs": hub.wan,
                "proposals": "aes256gcm16-prfsha256-x25519",
                "local": {"auth": "psk", "id": f"br{b.n}.example.org"},
                "remote": {"auth": "psk", "id": "hub.example.org"},
                "children": {"net": {"local_ts": ANY, "remote_ts": ANY, "esp_proposals": "aes256gcm16",
                                     "mode": "tunnel", "if_id_in": 42, "if_id_out": 42}}}},
            "secrets": {"ike-hub": {"id-a": f"br{b.n}.example.org", "id-b": "hub.example.org",
                                    "secret": _psk(b.n)}}})
        charons.append(sw)
    try:
        ghub.start_nowait()
        for sw in charons:
            sw.start(timeout=60)
            sw.load_all()
        ghub.wait_started()
        hub_routes = hub.gw.run(["ip", "route"]).stdout
        for b in hub.branches:
            assert f"{b.lan} dev xbr{b.n}" in hub_routes, hub_routes
        for sw in charons:
            sw.initiate(child="net", timeout=40)
        ghub.wait_children(3, timeout=40)
        sas = {sa["name"]: sa for sa in ghub.ike_sas()}
        assert set(sas) == {"br1", "br2", "br3"}
        for b in hub.branches:
            assert sas[f"br{b.n}"]["remote_id"] == f"br{b.n}.example.org"
            assert sas[f"br{b.n}"]["remote_addr"] == b.wan  # the identity chose the connection
        for b in hub.branches:
            b.host.wait_ping(hub.host_ip, timeout=10)
        landed = {}
        for b in hub.branches:
            before = {n: _rx_packets(hub.gw, f"xbr{n}") for n in (1, 2, 3)}
            assert b.host.ping(hub.host_ip, count=5, interval=0.1, timeout=5)
            after = {n: _rx_packets(hub.gw, f"xbr{n}") for n in (1, 2, 3)}
            landed[b.n] = {n: after[n] - before[n] for n in (1, 2, 3)}
        states = hub.gw.run(["ip", "xfrm", "state"]).stdout
        fact("hub_three_branches", {"landed": landed, "routes": hub_routes,
                                    "if_ids": sorted(int(x, 16) for x in
                                                     {ln.split()[1] for ln in states.splitlines()
                                                      if ln.strip().startswith("if_id")})})
        for b in hub.branches:
            assert landed[b.n][b.n] >= 5, landed
            assert all(landed[b.n][n] == 0 for n in (1, 2, 3) if n != b.n), landed
        for sw in charons:
            sw.terminate(ike="hub", timeout=20)
        assert _wait_states(hub.gw, 0, timeout=20)
    finally:
        fact("hub_logs", {"hub": ghub.log_tail(20), "charon1": charons[0].log_tail(15) if charons else ""})
        ghub.stop()
        for sw in charons:
            sw.stop()
        for b in hub.branches:
            b.gw.run(["ip", "link", "del", "xhub"], check=False)
    routes_after = hub.gw.run(["ip", "route"]).stdout
    assert "xbr" not in routes_after and hub.gw.run(["ip", "xfrm", "policy"]).stdout.strip() == ""
