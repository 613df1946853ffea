"""Fixtures for the ours-to-ours namespace tests.

``e2e`` gives a fresh namespace group and a work directory; gateways started through it are
stopped (SIGTERM by PID) at teardown, then every namespace is deleted (which kills whatever
the test started in it), and the teardown asserts that no namespace and no process the test
started is left, whether the test passed or failed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.gateway import OurGateway, connection
from tests.netns import NetnsGroup, pid_alive, require_root
from tests.netns_e2e.topology import Site, two_sites


@dataclass
class E2E:
    grp: NetnsGroup
    tmp: Path
    gateways: list[OurGateway] = field(default_factory=list)

    def gateway(self, ns, name: str, connections: list[dict], listen: list[str],
                gateway: dict | None = None, wrapper: list[str] | None = None) -> OurGateway:
        gw = OurGateway(ns, self.tmp, name, connections, listen=listen, gateway=gateway, wrapper=wrapper)
        self.gateways.append(gw)
        return gw.start()

    def site_pair(self, *, transit_mtu: int | None = None, esp: str = "aes256gcm16",
                  route_based: bool = False, up: bool = True, gateway: dict | None = None,
                  wrapper: list[str] | None = None, **child_extra):
        """two_sites() plus our gateway on each side (a initiates), tunnel up unless up=False.

        route_based: connections get ``interface = "vti-a"/"vti-b"`` and 0.0.0.0/0 selectors
        (the caller adds the routes). gateway: extra [gateway] keys for both (path_mtu ...).
        wrapper: runs both daemons (e.g. ``["env", "VAR=1"]``; must exec them).
        child_extra goes into the child config (rekey_time ...).
        Returns (router, site_a, site_b, gw_a, gw_b)."""
        router, a, b = two_sites(self.grp, transit_mtu=transit_mtu)

        def conn(me: Site, peer: Site, me_tag: str, peer_tag: str) -> dict:
            ts = ("0.0.0.0/0", "0.0.0.0/0") if route_based else (me.lan, peer.lan)
            extra = {"interface": f"vti-{me_tag}"} if route_based else {}
            c = connection(f"to-{peer_tag}", me.wan, peer.wan, f"{me_tag}.example.org",
                           f"{peer_tag}.example.org", local_ts=ts[0], remote_ts=ts[1], esp=esp, **extra)
            c["children"][0].update(child_extra)
            return c
        ga = self.gateway(a.gw, "a", [conn(a, b, "a", "b")], [a.wan], gateway, wrapper)
        gb = self.gateway(b.gw, "b", [conn(b, a, "b", "a")], [b.wan], gateway, wrapper)
        if up:
            ga.up("to-b")
            ga.wait_children(1)
            gb.wait_children(1)
        return router, a, b, ga, gb


@pytest.fixture
def e2e(tmp_path):
    require_root()
    grp = NetnsGroup("e2e")
    env = E2E(grp, tmp_path)
    try:
        yield env
    finally:
        procs = []
        try:
            for gw in env.gateways:
                gw.stop()
        finally:
            procs = [p for ns in grp.namespaces for p in ns.procs]
            grp.close()
        assert grp.leftovers() == [], "namespaces left behind"
        assert [p.args for p in procs if pid_alive(p.pid)] == [], "processes left behind"
