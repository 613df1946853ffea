"""Branch-to-branch topology in namespaces for our gateways (and strongSwan):

    host-a 10.1.0.2 -- 10.1.0.1 gw-a 192.0.2.1 -- 192.0.2.254 router 198.51.100.254 -- 198.51.100.1 gw-b 10.2.0.2 ...

The router has no route to 10/8: host-to-host traffic only passes through a tunnel.
"""
from __future__ import annotations

from dataclasses import dataclass

from tests.netns import Netns, NetnsGroup


@dataclass
class Site:
    gw: Netns
    host: Netns
    wan: str
    lan: str  # protected subnet
    gw_lan: str
    host_ip: str


def two_sites(grp: NetnsGroup, transit_mtu: int | None = None) -> tuple[Netns, Site, Site]:
    router = grp.add("r", forwarding=True)
    sites = []
    for tag, wan, rtr, lan_net, idx in (("a", "192.0.2.1", "192.0.2.254", "10.1.0", 1),
                                        ("b", "198.51.100.1", "198.51.100.254", "10.2.0", 2)):
        gw = grp.add(f"gw{tag}", forwarding=True)
        host = grp.add(f"h{tag}")
        grp.veth(gw, "wan", router, f"to{tag}", a_addrs=[f"{wan}/24"], b_addrs=[f"{rtr}/24"], mtu=transit_mtu)
        grp.veth(host, "eth0", gw, "lan", a_addrs=[f"{lan_net}.2/24"], b_addrs=[f"{lan_net}.1/24"])
        gw.ip("route", "add", "default", "via", rtr)
        host.ip("route", "add", "default", "via", f"{lan_net}.1")
        sites.append(Site(gw, host, wan, f"{lan_net}.0/24", f"{lan_net}.1", f"{lan_net}.2"))
    return router, sites[0], sites[1]
