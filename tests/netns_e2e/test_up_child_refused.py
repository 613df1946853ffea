"""`vpn-gw up NAME` when the peer refuses the only Child SA (issue 15, item 16): the IKE SA comes
up, but like `swanctl --initiate` the command reports the Child SA's failure and exits 1."""
from __future__ import annotations

import pytest

from tests.gateway import connection

pytestmark = pytest.mark.netns


def test_up_reports_refused_child_and_exits_1(e2e):
    from tests.netns_e2e.topology import two_sites
    router, a, b = two_sites(e2e.grp)
    # a asks for a subnet b does not protect: b answers IKE_AUTH with TS_UNACCEPTABLE
    ga = e2e.gateway(a.gw, "a", [connection("to-b", a.wan, b.wan, "a.example.org", "b.example.org",
                                            local_ts=a.lan, remote_ts="10.99.0.0/24")], [a.wan])
    e2e.gateway(b.gw, "b", [connection("to-a", b.wan, a.wan, "b.example.org", "a.example.org",
                                       local_ts=b.lan, remote_ts=a.lan)], [b.wan])
    p = ga.cli("up", "to-b", "-s", str(ga.socket), check=False)
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert p.stderr.strip() == ("vpn-gw: connection 'to-b': IKE SA established, but Child SA 'net' "
                                "failed: peer refused it: TS_UNACCEPTABLE"), p.stderr
    assert "established" not in p.stdout
    (sa,) = ga.status()
    assert sa["state"] == "ESTABLISHED" and sa["children"] == []


def test_up_succeeds_with_the_child(e2e):
    router, a, b, ga, gb = e2e.site_pair(up=False)
    p = ga.cli("up", "to-b", "-s", str(ga.socket))
    assert p.returncode == 0 and p.stdout.strip() == "to-b: established"
    (sa,) = ga.status()
    assert [c["state"] for c in sa["children"]] == ["INSTALLED"]
