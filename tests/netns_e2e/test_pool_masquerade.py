"""Remote access with Internet access: the pool is source-NATed behind the gateway's WAN."""
from __future__ import annotations

import pytest

from tests.gateway import OurGateway, render_toml
from tests.netns import NetnsGroup, require_root

pytestmark = pytest.mark.netns

PSK = "masquerade-test-psk-0123"


@pytest.mark.parametrize("client_remote_ts", ["203.0.113.0/24", "0.0.0.0/0"], ids=["split", "full-tunnel"])
def test_client_reaches_internet_host_through_masqueraded_pool(tmp_path, client_remote_ts):
    require_root()
    grp = NetnsGroup("nat")
    gw = cl = None
    try:
        router = grp.add("r", forwarding=True)
        gwns, clns, inet = grp.add("gw", forwarding=True), grp.add("cl"), grp.add("inet")
        grp.veth(gwns, "wan", router, "togw", a_addrs=["192.0.2.1/24"], b_addrs=["192.0.2.254/24"])
        grp.veth(clns, "wan", router, "tocl", a_addrs=["198.51.100.7/24"], b_addrs=["198.51.100.254/24"])
        grp.veth(inet, "eth0", router, "toinet", a_addrs=["203.0.113.5/24"], b_addrs=["203.0.113.254/24"])
        for ns, via in ((gwns, "192.0.2.254"), (clns, "198.51.100.254"), (inet, "203.0.113.254")):
            ns.ip("route", "add", "default", "via", via)
        gw_conf = render_toml({"control_socket": str(tmp_path / "gw.sock"), "listen": ["192.0.2.1"]}, [{
            "name": "rw", "local_addrs": ["192.0.2.1"], "remote_addrs": ["%any"], "local_id": "vpn.example.org",
            "remote_id": "*@example.org", "auth": "psk", "psk": PSK, "pools": ["rw"],
            "children": [{"name": "all", "local_ts": ["0.0.0.0/0"], "remote_ts": ["0.0.0.0/0"]}]}])
        gw_conf += ('\n[[pool]]\nname = "rw"\naddrs = "10.99.0.0/24"\ndns = ["10.99.0.53"]\n'
                    f'lease_file = "{tmp_path}/pool-rw.json"\nmasquerade = "wan"\n')
        gw = OurGateway(gwns, tmp_path, "gw", [])
        gw.config.write_text(gw_conf)
        gw.socket = tmp_path / "gw.sock"
        cl = OurGateway(clns, tmp_path, "cl", [{
            "name": "vpn", "remote_addrs": ["192.0.2.1"], "local_id": "alice@example.org",
            "remote_id": "vpn.example.org", "auth": "psk", "psk": PSK, "vips": ["0.0.0.0"],
            "dns_file": str(tmp_path / "resolv.conf"),
            "children": [{"name": "all", "local_ts": ["0.0.0.0/0"], "remote_ts": [client_remote_ts]}]}])
        gw.start()
        cl.start()
        assert "masquerade" in gwns.run(["nft", "list", "table", "inet", "vpn_gw_nat"]).stdout
        cl.up("vpn")
        (sa, ch), = cl.wait_children(1)
        vip = sa["virtual_ips"][0]
        assert vip.startswith("10.99.0.") and ch["local_ts"] == [f"{vip}/32"]
        assert "nameserver 10.99.0.53" in (tmp_path / "resolv.conf").read_text()
        # The Internet host has no route to 10.99/24: only the masquerade can bring replies back.
        clns.wait_ping("203.0.113.5", timeout=5, src=vip)
        assert clns.ping("203.0.113.5", count=2, timeout=2, src=vip)
        gw.stop()
        assert "vpn_gw_nat" not in gwns.run(["nft", "list", "tables"]).stdout  # removed at stop
    finally:
        for g in (cl, gw):
            if g is not None:
                g.stop()
        grp.close()
        assert grp.leftovers() == []
