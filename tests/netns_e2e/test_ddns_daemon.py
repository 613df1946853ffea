"""The daemon's dynamic-DNS duties end to end, against Knot DNS in a namespace
(topology: tests/netns_e2e/ddns_tools.py ``dyn_topology``)::

    hh 10.0.0.2 -- hub 192.0.2.1/25 -- r -- br 198.51.100.1/24 (later 203.0.113.1/24) -- bh 10.1.0.2
                                       |
                        dns 192.0.2.153 (Knot, zone example.test, TTL 2 s), 192.0.2.180 (dyndns2)

1. The hub initiates to ``branch1.dyn.example.test`` (``start_action = "start"``): the tunnel
   comes up to the address in DNS and hosts behind both ends ping each other.
2. The branch really moves (198.51.100.1 -> 203.0.113.1) and its A record is replaced by an
   RFC 2136 update (TSIG) while the tunnel is up: the hub follows, and the test records how
   (address adoption or liveness failure + re-initiation) and how long pings were lost.
3. DNS alone never moves an SA: the A record changes to an address where nothing answers
   while the branch stays put; the hub checks the current path, which answers, so the SA keeps
   its address and SPIs.
4. Publishing: a gateway with an rfc2136 ``[[ddns]]`` table updates Knot at start and when its
   WAN address changes; with a wrong TSIG secret the update is refused (BADSIG) and logged,
   and no secret appears in the log.
5. dyndns2 publishing over plain HTTP against tests/dyndns2_server.py.

Regression tests for bugs these tests found in the first daemon wiring (7bfc88b): a failed
publication was never retried at ``retry_at``; an unanswering DNS server delayed the gateway's
start by the publish timeout (the initial publication was awaited before the sockets opened);
an FQDN written in mixed case or with a trailing dot was dropped from TTL watching.

Knot and the gateways are processes in the test's namespaces, stopped by PID; the ``e2e``
fixture (conftest.py) deletes the namespaces and asserts nothing is left, pass or fail.
The outage of test 2 is printed (``pytest -s``) and recorded as a test property.
"""
from __future__ import annotations

import base64
import time
from datetime import datetime

import pytest

from tests.dyndns2_server import Dyndns2TestServer
from tests.gateway import OurGateway, connection
from tests.netns import wait_until
from tests.netns_e2e import ddns_tools as D
from tests.netns_e2e.mobility_topology import Pinger, ours_roaming

pytestmark = [pytest.mark.netns, pytest.mark.timeout(90)]

ZONE = "example.test"
BRANCH_NAME = "branch1.dyn.example.test"
HUB_ID = "hub.example.test"
KEY = D.TsigKey("ddns-key", base64.b64encode(bytes(range(100, 132))).decode())
WRONG_SECRET = base64.b64encode(bytes(range(200, 232))).decode()
PSK = "ddns-e2e-psk-0123456789"
DYNDNS_PASSWORD = "dyndns-pw-Zq7xK2"
FAST = {"retransmit_timeout": "1s", "retransmit_tries": 2}
ZONE_TEXT = f"""\
$ORIGIN {ZONE}.
$TTL 2
@            SOA ns hostmaster 1 60 60 3600 2
@            NS  ns
ns           A   {D.DNS_IP}
branch1.dyn  2 A {D.BR_OLD}
gw           2 A 203.0.113.200
"""


class Dyn:
    """One test's world: topology, Knot, our gateways (registered with the e2e fixture)."""

    def __init__(self, e2e, branch: bool = True):
        self.e2e = e2e
        self.t = D.dyn_topology(e2e.grp, branch=branch, hosts=branch)
        self.knot = D.KnotServer(self.t.dns, e2e.tmp, D.DNS_IP, ZONE, ZONE_TEXT, KEY)
        self.servers: list[Dyndns2TestServer] = []
        self.pingers: list[Pinger] = []

    def gateway(self, ns, name: str, conns: list[dict], listen: list[str] | None,
                ddns: list[dict] | None = None, **gateway) -> OurGateway:
        gw = OurGateway(ns, self.e2e.tmp, name, conns, listen=listen, gateway={**FAST, **gateway})
        if ddns:
            with open(gw.config, "a") as fh:
                fh.write(D.ddns_toml(ddns))
        self.e2e.gateways.append(gw)
        return gw.start()

    def hub_and_branch(self) -> tuple[OurGateway, OurGateway]:
        """The branch (responder, roaming: no local_addrs) and the hub initiating to its FQDN."""
        br = self.gateway(self.t.branch, "branch", [
            ours_roaming("hub", D.HUB_WAN, BRANCH_NAME, HUB_ID, local_ts=D.BR_LAN,
                         remote_ts=D.HUB_LAN, psk=PSK)], None)
        hub = self.gateway(self.t.hub, "hub", [
            connection("branch1", D.HUB_WAN, BRANCH_NAME, HUB_ID, BRANCH_NAME, local_ts=D.HUB_LAN,
                       remote_ts=D.BR_LAN, psk=PSK, start_action="start", dpd_delay="2s",
                       dpd_action="restart")],
            [D.HUB_WAN], dns_servers=[D.DNS_IP], dns_min_ttl="1s", dns_timeout="1s")
        return hub, br

    def pinger(self, name: str) -> Pinger:
        p = Pinger(self.t.hh, D.BR_HOST, self.e2e.tmp / f"{name}.ping")
        self.pingers.append(p)
        return p.start()

    def dyndns2_server(self, **kw) -> Dyndns2TestServer:
        srv = D.in_netns(self.t.dns, lambda: Dyndns2TestServer(D.WEB_IP, **kw))
        self.servers.append(srv)
        return srv.start()

    def close(self) -> None:
        """Stop what this test started, by PID (the e2e fixture then deletes the namespaces)."""
        try:
            for p in self.pingers:
                p.stop()
            for s in self.servers:
                s.stop()
            for gw in self.e2e.gateways:
                gw.stop()
        finally:
            self.knot.stop()


@pytest.fixture
def dyn(e2e):
    if not D.knot_available():
        pytest.fail("Knot DNS (knotd, knotc) is not installed: run scripts/setup.sh")
    world = None
    try:
        world = Dyn(e2e)
        yield world
    finally:
        if world is not None:
            world.close()
            assert world.knot.proc is None or world.knot.proc.poll() is not None, "knotd left behind"


@pytest.fixture
def dyn_single(e2e):
    """Only hub (our publishing gateway), router and DNS: for the publishing tests."""
    if not D.knot_available():
        pytest.fail("Knot DNS (knotd, knotc) is not installed: run scripts/setup.sh")
    world = None
    try:
        world = Dyn(e2e, branch=False)
        yield world
    finally:
        if world is not None:
            world.close()
            assert world.knot.proc is None or world.knot.proc.poll() is not None, "knotd left behind"


# --------------------------------------------------------------------------- helpers


def _tail(gw: OurGateway, n: int = 40) -> str:
    """The last n log lines of the daemon itself (pyroute2 logs every netlink message at debug)."""
    lines = [ln for ln in gw.log.read_text(errors="replace").splitlines() if '"logger": "pyroute2' not in ln]
    return "\n".join(lines[-n:])


def _ts(rec: dict) -> float:
    return datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00")).timestamp()


def _events(gw: OurGateway, event: str, **match) -> list[dict]:
    return [r for r in gw.log_lines() if r.get("event") == event
            and all(r.get(k) == v for k, v in match.items())]


def _sa(gw: OurGateway) -> dict | None:
    """The only established IKE SA with an installed child, or None."""
    sas = [s for s in gw.control("status", timeout=5.0) if s["state"] == "ESTABLISHED"
           and any(c["state"] == "INSTALLED" for c in s["children"])]
    return sas[0] if len(sas) == 1 else None


def _wait_sa(gw: OurGateway, timeout: float, remote: str | None = None) -> dict:
    def ok():
        sa = _sa(gw)
        return sa if sa is not None and (remote is None or sa["remote_addr"] == remote) else None
    try:
        return wait_until(ok, timeout=timeout, interval=0.2, what=f"{gw.name}: SA to {remote}")
    except TimeoutError:
        raise AssertionError(f"{gw.name}: no single established SA{' to ' + remote if remote else ''} "
                             f"after {timeout}s: {gw.control('status', timeout=5.0)}\n{_tail(gw, 60)}") from None


def _spis(sa: dict) -> tuple:
    return sa["spi_i"], sa["spi_r"], tuple((c["spi_in"], c["spi_out"]) for c in sa["children"])


def _tunnel_up(dyn: Dyn) -> tuple[OurGateway, OurGateway, dict]:
    dyn.knot.start()
    hub, br = dyn.hub_and_branch()
    sa = _wait_sa(hub, 25, remote=D.BR_OLD)
    _wait_sa(br, 10)
    dyn.t.hh.wait_ping(D.BR_HOST, timeout=10)
    return hub, br, sa


# --------------------------------------------------------------------------- 1. initiation


def test_hub_initiates_to_the_address_in_dns(dyn):
    hub, br, sa = _tunnel_up(dyn)
    assert sa["name"] == "branch1" and sa["initiator"] is True
    assert (sa["local_addr"], sa["remote_addr"]) == (D.HUB_WAN, D.BR_OLD)
    resolved = _events(hub, "resolved peer name", name=BRANCH_NAME)
    assert resolved and resolved[0]["addresses"] == [D.BR_OLD], resolved
    bsa = _sa(br)
    assert (bsa["spi_i"], bsa["spi_r"]) == (sa["spi_i"], sa["spi_r"])
    assert bsa["remote_addr"] == D.HUB_WAN and bsa["local_addr"] == D.BR_OLD
    assert dyn.t.hh.ping(D.BR_HOST, count=3, interval=0.2, timeout=5)
    assert dyn.t.bh.ping(D.HUB_HOST, count=3, interval=0.2, timeout=5)


# --------------------------------------------------------------------------- 2. the branch moves


def test_branch_moves_and_dns_follows(dyn, record_property):
    hub, br, before = _tunnel_up(dyn)
    pinger = dyn.pinger("move")
    wait_until(lambda: len(pinger.replies()) >= 10, timeout=5, what="pings before the move")

    t_move = time.time()
    dyn.t.move_branch()
    assert dyn.knot.update(BRANCH_NAME, "A", [D.BR_NEW], 2, from_ns=dyn.t.dns) == "NOERROR"
    assert dyn.knot.query(BRANCH_NAME) == ([D.BR_NEW], 2)

    after = _wait_sa(hub, 40, remote=D.BR_NEW)
    t_sa = time.time()
    wait_until(lambda: pinger.first_reply_after(t_sa) is not None, timeout=10, what="pings after the move")
    time.sleep(1.0)
    pinger.stop()
    gap = pinger.gap(t_move)
    assert gap is not None, "no reply on one side of the move"
    outage_ms = gap[0]

    adopted = _spis(after)[:2] == _spis(before)[:2]
    how = "address adoption (same IKE SA)" if adopted else "liveness failure + re-initiation (new IKE SA)"
    events = [(r.get("event"), r.get("reason") or r.get("error") or r.get("addresses") or "")
              for r in hub.log_lines() if r.get("event") in (
                  "peer's DNS name now points elsewhere; checking the current path (only authenticated "
                  "packets move an SA)", "IKE_SA down", "re-initiating", "resolved peer name",
                  "peer address changed")]
    print(f"\nbranch move: the hub followed by {how}; ping outage {outage_ms:.0f} ms"
          f"\nhub events: {events}")
    record_property("ddns_move_mechanism", how)
    record_property("ddns_move_outage_ms", round(outage_ms))

    if not adopted:
        # the old SA died of the liveness failure and the restart re-resolved the name
        down = _events(hub, "IKE_SA down", connection="branch1")
        assert down, _tail(hub, 60)
        assert _events(hub, "re-initiating", connection="branch1")
        assert [D.BR_NEW] in [r["addresses"] for r in _events(hub, "resolved peer name", name=BRANCH_NAME)]
    # the hub's status ends with the branch's new address; the branch dropped its stale SA
    final = hub.control("status", timeout=5.0)
    assert [(s["name"], s["remote_addr"], s["state"]) for s in final] == [("branch1", D.BR_NEW, "ESTABLISHED")]
    bsa = _wait_sa(br, 5)
    assert bsa["local_addr"] == D.BR_NEW and (bsa["spi_i"], bsa["spi_r"]) == (after["spi_i"], after["spi_r"])
    assert dyn.t.hh.ping(D.BR_HOST, count=3, interval=0.2, timeout=5)
    assert dyn.t.bh.ping(D.HUB_HOST, count=3, interval=0.2, timeout=5)
    assert outage_ms < 30_000


# --------------------------------------------------------------------------- 3. DNS alone


CHECKING = "peer's DNS name now points elsewhere; checking the current path (only authenticated packets move an SA)"


def test_dns_alone_never_moves_an_sa(dyn):
    hub, br, before = _tunnel_up(dyn)
    nobody = "198.51.100.99"  # on the branch's link, no host there
    pinger = dyn.pinger("dnsonly")
    wait_until(lambda: len(pinger.replies()) >= 10, timeout=5, what="pings before the change")
    t0 = time.time()
    assert dyn.knot.update(BRANCH_NAME, "A", [nobody], 2, from_ns=dyn.t.dns) == "NOERROR"

    # the TTL (2 s) runs out, the hub sees the new address and checks the current path
    try:
        wait_until(lambda: _events(hub, CHECKING, name=BRANCH_NAME), timeout=12, interval=0.2,
                   what="the hub to notice the DNS change")
    except TimeoutError:
        raise AssertionError(f"the hub never noticed the DNS change\n{_tail(hub, 60)}") from None
    check = _events(hub, CHECKING, name=BRANCH_NAME)[0]
    assert check["current"] == D.BR_OLD and check["dns"] == [nobody], check
    # ... longer than a failed check would take (1 + 1.8 + 3.24 s with retransmit 1s x 2)
    time.sleep(8)
    pinger.stop()

    after = _sa(hub)
    assert after is not None and after["remote_addr"] == D.BR_OLD
    assert _spis(after) == _spis(before), "the SA was replaced"
    liveness = [r for r in _events(hub, "exchange", connection="branch1", outcome="liveness check")
                if r.get("role") == "initiator"]
    assert liveness and all(r["peer"] == f"{D.BR_OLD}:4500" for r in liveness), liveness
    assert not _events(hub, "IKE_SA down"), _tail(hub, 60)
    assert not [r for r in hub.log_lines() if nobody in str(r.get("remote", "")) or nobody in str(r.get("peer", ""))]
    gap = pinger.gap(t0)
    assert gap is not None and gap[0] < 3000, gap  # a lost SA costs >= 11 s (liveness + 5 s restart)
    bsa = _sa(br)
    assert (bsa["spi_i"], bsa["spi_r"]) == (before["spi_i"], before["spi_r"])


# --------------------------------------------------------------------------- 4. RFC 2136 publishing


def _rfc2136_table(secret: str) -> dict:
    return {"interface": "wan", "names": ["gw.example.test"], "method": "rfc2136", "server": D.DNS_IP,
            "zone": ZONE, "tsig_name": KEY.name, "tsig_secret": secret, "ttl": 5, "families": [4]}


def test_rfc2136_publishing_at_start_and_on_change(dyn_single):
    dyn = dyn_single
    dyn.knot.start()
    assert dyn.knot.query("gw.example.test") == (["203.0.113.200"], 2)
    gw = dyn.gateway(dyn.t.hub, "pub", [], None, ddns=[_rfc2136_table(KEY.secret)],
                     metrics_listen="127.0.0.1:9273")
    try:
        wait_until(lambda: dyn.knot.query("gw.example.test") == ([D.HUB_WAN], 5), timeout=10, interval=0.2,
                   what="the A record of gw.example.test at start")
    except TimeoutError:
        raise AssertionError(f"{dyn.knot.query('gw.example.test')}\n{_tail(gw, 40)}") from None
    assert _events(gw, "published our address", addresses=[D.HUB_WAN])
    from tests.netns_e2e.test_metrics import scrape
    m = scrape(dyn.t.hub)   # counted in the metrics too (docs/metrics.md)
    assert m[("vpngw_ddns_publish_total", (("method", "rfc2136"), ("result", "ok")))] >= 1

    # the WAN address changes (ip addr add new / del old; the default route stays)
    new = "192.0.2.2"
    t0 = time.monotonic()
    dyn.t.renumber_hub(D.HUB_WAN, new)
    try:
        wait_until(lambda: dyn.knot.query("gw.example.test") == ([new], 5), timeout=10, interval=0.2,
                   what="the new A record")
    except TimeoutError:
        raise AssertionError(f"A record: {dyn.knot.query('gw.example.test')}\n{_tail(gw, 40)}") from None
    print(f"\nA record updated {time.monotonic() - t0:.2f} s after the address change")
    assert KEY.secret not in gw.log.read_text()


def test_rfc2136_wrong_tsig_secret_is_refused_and_logged(dyn_single):
    dyn = dyn_single
    dyn.knot.start()
    gw = dyn.gateway(dyn.t.hub, "badkey", [], None, ddns=[_rfc2136_table(WRONG_SECRET)],
                     metrics_listen="127.0.0.1:9273")
    try:
        failed = wait_until(lambda: _events(gw, "publishing our address failed"), timeout=10, interval=0.2,
                            what="the failure in the log")
    except TimeoutError:
        raise AssertionError(_tail(gw, 40)) from None
    rec = failed[0]
    assert rec["level"] == "warning" and rec["method"] == "rfc2136" and rec["names"] == ["gw.example.test"]
    assert rec["error"].startswith(f"TSIG key rejected by {D.DNS_IP}: BADSIG"), rec
    assert "ddns-key" in rec["error"]
    assert dyn.knot.query("gw.example.test") == (["203.0.113.200"], 2)  # nothing changed
    text = gw.log.read_text()
    assert WRONG_SECRET not in text and KEY.secret not in text
    assert base64.b64decode(WRONG_SECRET).hex() not in text
    assert gw.proc.poll() is None  # the gateway keeps running
    from tests.netns_e2e.test_metrics import scrape
    m = scrape(dyn.t.hub)
    assert m[("vpngw_ddns_publish_total", (("method", "rfc2136"), ("result", "failed")))] >= 1


# --------------------------------------------------------------------------- 5. dyndns2


def test_dyndns2_publishing_over_http(dyn_single):
    dyn = dyn_single
    srv = dyn.dyndns2_server(port=8245, users={"alice": DYNDNS_PASSWORD})
    names = ["home.example.test", "vpn.example.test"]
    gw = dyn.gateway(dyn.t.hub, "dyndns2", [], None, ddns=[{
        "interface": "wan", "names": names, "method": "dyndns2", "server": D.WEB_IP, "scheme": "http",
        "port": 8245, "user": "alice", "password": DYNDNS_PASSWORD}])
    try:
        wait_until(lambda: srv.requests, timeout=10, interval=0.1, what="the dyndns2 request")
    except TimeoutError:
        raise AssertionError(_tail(gw, 40)) from None

    def check(req, address: str) -> None:
        assert req.method == "GET" and req.path == "/nic/update"
        assert req.hostnames == names
        assert req.param("myip") == address
        assert req.param("mx") == "NOCHG" and req.param("wildcard") == "NOCHG"
        assert (req.user, req.password) == ("alice", DYNDNS_PASSWORD)
        assert req.headers["User-Agent"] == "vpn-gw/0.1"
        assert req.client == D.HUB_WAN and req.status == 200
        assert req.answer == f"good {address}\ngood {address}"
    check(srv.requests[0], D.HUB_WAN)
    wait_until(lambda: _events(gw, "published our address", method="dyndns2"), timeout=10,
               what="the success in the log")

    # a new WAN address is sent at once
    new = "192.0.2.3"
    dyn.t.renumber_hub(D.HUB_WAN, new)
    try:
        wait_until(lambda: len(srv.requests) >= 2 and srv.requests[-1].param("myip") == new, timeout=10,
                   interval=0.1, what="the dyndns2 request for the new address")
    except TimeoutError:
        raise AssertionError(f"{[r.raw_query for r in srv.requests]}\n{_tail(gw, 40)}") from None
    assert len(srv.requests) == 2, [r.raw_query for r in srv.requests]
    r2 = srv.requests[1]
    assert r2.hostnames == names and (r2.user, r2.password) == ("alice", DYNDNS_PASSWORD)
    assert DYNDNS_PASSWORD not in gw.log.read_text()


# --------------------------------------------------------------------------- regressions


def test_failed_publication_is_retried(dyn_single):
    """docs/ddns.md: "a timer per [[ddns]] republishes every update_period and after a failure at
    result.retry_at" (30 s for RFC 2136). A DHCP-like renumbering (old address deleted, new one
    added, the default route a moment later) makes the first publication fail. (Was: the failure
    was only logged; DNS stayed stale until update_period, 1 h by default.)"""
    dyn = dyn_single
    dyn.knot.start()
    gw = dyn.gateway(dyn.t.hub, "retry", [], None, ddns=[_rfc2136_table(KEY.secret)])
    wait_until(lambda: dyn.knot.query("gw.example.test") == ([D.HUB_WAN], 5), timeout=5, interval=0.2,
               what="the A record at start")
    new = "192.0.2.2"
    dyn.t.hub.del_addr("wan", f"{D.HUB_WAN}/25")   # takes the default route with it
    dyn.t.hub.add_addr("wan", f"{new}/25")
    try:
        failed = wait_until(lambda: _events(gw, "publishing our address failed"), timeout=5, interval=0.1,
                            what="the failed publication")
    except TimeoutError:
        raise AssertionError(_tail(gw, 40)) from None
    assert failed[0]["error"].startswith(f"cannot reach {D.DNS_IP}"), failed
    dyn.t.hub.ip("route", "replace", "default", "via", D.HUB_RTR)
    try:
        wait_until(lambda: dyn.knot.query("gw.example.test") == ([new], 5), timeout=45, interval=0.5,
                   what="the retried publication")
    except TimeoutError:
        raise AssertionError(f"A record still {dyn.knot.query('gw.example.test')}\n{_tail(gw, 20)}") from None


def test_unanswering_dns_server_does_not_delay_start(dyn_single):
    """The initial publication must not hold up the gateway's start (IKE sockets, control
    socket, start_action = "start"). (Was: Gateway.serve() awaited DdnsService.start(), which
    awaited the first publication: 5 s per RFC 2136 table, 15 s per dyndns2 table.)"""
    dyn = dyn_single
    table = {**_rfc2136_table(KEY.secret), "server": "192.0.2.199"}   # nobody there
    gw = dyn.gateway(dyn.t.hub, "slow", [], None, ddns=[table])
    try:
        failed = wait_until(lambda: _events(gw, "publishing our address failed"), timeout=15, interval=0.2,
                            what="the publication to time out")
    except TimeoutError:
        raise AssertionError(_tail(gw, 40)) from None
    assert failed[0]["error"] == "no answer from 192.0.2.199 within 5s", failed
    started = _events(gw, "vpn-gw started")
    assert started
    # the gateway was up (sockets, control socket) before the 5 s publication gave up
    late = _ts(started[0]) - _ts(failed[0])
    assert late < 0, f"'vpn-gw started' logged {late:.2f} s after the publication timed out"


MIXED = "Branch1.Dyn.Example.Test."


def test_fqdn_written_in_mixed_case_with_dot_is_still_watched(dyn):
    """remote_addrs FQDNs are DNS names: case and a trailing dot do not matter. The TTL-expiry
    check must happen for "Branch1.Dyn.Example.Test." as for "branch1.dyn.example.test". (Was:
    Gateway.sas_for_fqdn() compared the resolver's normalised name with the name as written, found
    no SA, and the name was forgotten: never re-resolved while the SA was up.)"""
    dyn.knot.start()
    br = dyn.gateway(dyn.t.branch, "branch", [
        ours_roaming("hub", D.HUB_WAN, BRANCH_NAME, HUB_ID, local_ts=D.BR_LAN,
                     remote_ts=D.HUB_LAN, psk=PSK)], None)
    hub = dyn.gateway(dyn.t.hub, "hub", [
        connection("branch1", D.HUB_WAN, MIXED, HUB_ID, BRANCH_NAME, local_ts=D.HUB_LAN,
                   remote_ts=D.BR_LAN, psk=PSK, start_action="start", dpd_delay="2s",
                   dpd_action="restart")],
        [D.HUB_WAN], dns_servers=[D.DNS_IP], dns_min_ttl="1s", dns_timeout="1s")
    before = _wait_sa(hub, 25, remote=D.BR_OLD)
    _wait_sa(br, 10)
    assert dyn.knot.update(BRANCH_NAME, "A", ["198.51.100.99"], 2, from_ns=dyn.t.dns) == "NOERROR"
    try:
        wait_until(lambda: _events(hub, CHECKING), timeout=12, interval=0.2, what="the hub to notice the DNS change")
    except TimeoutError:
        raise AssertionError(f"the hub never noticed the DNS change\n{_tail(hub, 30)}") from None
    check = _events(hub, CHECKING)[0]
    assert check["current"] == D.BR_OLD and check["dns"] == ["198.51.100.99"], check
    time.sleep(2)
    after = _sa(hub)
    assert after is not None and after["remote_addr"] == D.BR_OLD and _spis(after) == _spis(before)
