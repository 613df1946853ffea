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
    for tag, wan, rtr, lan_net in (("a", "192.0.2.1", "192.0.2.254", "10.1.0"),
                                   ("b", "198.51.100.1", "198.51.100.254", "10.2.0")):
        gw = grp.add(f"gw{tag}", forwarding=True)
        host = grp.add(f"h{tag}")
        grp.veth(gw, "wan", router, f"to{tag}", a_addrs=[f"{wan}/24"], b_addrs=[f"{rtr}/24"], mtu=transit_mtu)
        grp.veth(host, "eth0", gw, "lan", a_addrs=[f"{lan_net}.2/24"], b_addrs=[f"{lan_net}.1/24"])
        gw.ip("route", "add", "default", "via", rtr)
        host.ip("route", "add", "default", "via", f"{lan_net}.1")
        sites.append(Site(gw, host, wan, f"{lan_net}.0/24", f"{lan_net}.1", f"{lan_net}.2"))
    return router, sites[0], sites[1]


@dataclass
class Branch:
    n: int
    gw: Netns
    host: Netns
    wan: str
    lan: str
    host_ip: str


@dataclass
class Hub:
    router: Netns
    gw: Netns
    host: Netns
    wan: str
    lan: str
    host_ip: str
    branches: list[Branch]


def hub_and_branches(grp: NetnsGroup, n: int = 3) -> Hub:
    """A hub and ``n`` branches (n <= 3) around one router, each with a host behind it:

        host-h 10.0.0.2 -- hub 192.0.2.1 -- router -- 198.51.100.{1,65,129}/26 brN -- 10.N.0.2 host-N

    The router knows only the outer networks: branch-to-hub traffic needs a tunnel.
    """
    assert 1 <= n <= 3
    router = grp.add("r", forwarding=True)
    hub = grp.add("hub", forwarding=True)
    hh = grp.add("hh")
    grp.veth(hub, "wan", router, "tohub", a_addrs=["192.0.2.1/24"], b_addrs=["192.0.2.254/24"])
    grp.veth(hh, "eth0", hub, "lan", a_addrs=["10.0.0.2/24"], b_addrs=["10.0.0.1/24"])
    hub.ip("route", "add", "default", "via", "192.0.2.254")
    hh.ip("route", "add", "default", "via", "10.0.0.1")
    branches = []
    for i in range(1, n + 1):
        base = 64 * (i - 1)
        wan, rtr = f"198.51.100.{base + 1}", f"198.51.100.{base + 62}"
        gw = grp.add(f"b{i}", forwarding=True)
        host = grp.add(f"h{i}")
        grp.veth(gw, "wan", router, f"tob{i}", a_addrs=[f"{wan}/26"], b_addrs=[f"{rtr}/26"])
        grp.veth(host, "eth0", gw, "lan", a_addrs=[f"10.{i}.0.2/24"], b_addrs=[f"10.{i}.0.1/24"])
        gw.ip("route", "add", "default", "via", rtr)
        host.ip("route", "add", "default", "via", f"10.{i}.0.1")
        branches.append(Branch(i, gw, host, wan, f"10.{i}.0.0/24", f"10.{i}.0.2"))
    return Hub(router, hub, hh, "192.0.2.1", "10.0.0.0/24", "10.0.0.2", branches)
