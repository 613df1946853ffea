"""A fleet of two of our gateways publishing themselves under ONE name (``[[ddns]] mode =
"member"``, docs/fleet.md "One DNS name"), against Knot DNS and PostgreSQL started by the test::

    gateway A  wan 192.0.2.1/25    -- r -- dns 192.0.2.153 (Knot, zone example.test)
    gateway B  wan 198.51.100.1/24 -/
    PostgreSQL on a Unix socket (the pool database: heartbeats and the members' records)

The zone already has a record under the name that is no gateway's (203.0.113.250): members
add and delete only their own records, so it must survive everything.

1. Both gateways start: both records are present (plus the foreign one).
2. A's WAN address changes: exactly A's old record is replaced by its new one.
3. A stops cleanly (SIGTERM): its record is withdrawn, B's stays; A's rows leave the database.
4. A restarts and is published again; then A is SIGKILLed: B withdraws A's record once A's
   heartbeat lapsed (heartbeat_timeout 3 s), and logs it.

Knot, PostgreSQL and the gateways are processes of the test, stopped by PID; the ``e2e``
fixture deletes the namespaces and asserts nothing is left, pass or fail.
"""
from __future__ import annotations

import asyncio
import base64
import signal
import time

import pytest

from tests.gateway import OurGateway
from tests.netns import kill_pid, wait_until
from tests.netns_e2e import ddns_tools as D
from tests.postgres_server import Postgres
from vpn_gw.pools.postgres import PgPoolStore

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

ZONE = "example.test"
NAME = "vpn.example.test"
FOREIGN = "203.0.113.250"
KEY = D.TsigKey("fleet-key", base64.b64encode(bytes(range(40, 72))).decode())
GW_B, GW_B_RTR = "198.51.100.1", "198.51.100.254"
ZONE_TEXT = f"""\
$ORIGIN {ZONE}.
$TTL 2
@            SOA ns hostmaster 1 60 60 3600 2
@            NS  ns
ns           A   {D.DNS_IP}
vpn          2 A {FOREIGN}
"""


def _pool_and_ddns(conn_file, member: str) -> str:
    return (f'\n[[pool]]\nname = "rw"\naddrs = "10.99.0.0/24"\nbackend = "postgresql"\n'
            f'database = "file:{conn_file}"\nfleet_member = "{member}"\n'
            f'heartbeat_interval = "1s"\nheartbeat_timeout = "3s"\n'
            + D.ddns_toml([{"interface": "wan", "names": [NAME], "method": "rfc2136", "server": D.DNS_IP,
                            "zone": ZONE, "tsig_name": KEY.name, "tsig_secret": KEY.secret, "ttl": 5,
                            "families": [4], "mode": "member", "fleet_pool": "rw"}]))


def _db(conninfo: str, fn):
    async def run():
        s = PgPoolStore(conninfo, "checker", heartbeat_timeout=3.0)
        try:
            return await fn(s)
        finally:
            await s.close()
    return asyncio.run(run())


def _events(gw: OurGateway, event: str, **match) -> list[dict]:
    return [r for r in gw.log_lines() if r.get("event") == event
            and all(r.get(k) == v for k, v in match.items())]


@pytest.fixture
def fleet(e2e):
    if not D.knot_available():
        pytest.fail("Knot DNS (knotd, knotc) is not installed: run scripts/setup.sh")
    t = D.dyn_topology(e2e.grp, branch=False, hosts=False)
    gb = e2e.grp.add("gb")
    e2e.grp.veth(gb, "wan", t.router, "togb", a_addrs=[f"{GW_B}/24"], b_addrs=[f"{GW_B_RTR}/24"])
    gb.ip("route", "add", "default", "via", GW_B_RTR)
    gb.wait_ping(D.DNS_IP, timeout=10)
    knot = D.KnotServer(t.dns, e2e.tmp, D.DNS_IP, ZONE, ZONE_TEXT, KEY)
    try:
        with Postgres() as pg:
            async def prep(s):
                await s.init_schema()
                await s.add_pool("rw", "10.99.0.0/24")
            _db(pg.conninfo, prep)
            conn_file = e2e.tmp / "pooldb.conn"
            conn_file.write_text(pg.conninfo + " connect_timeout=2\n")
            conn_file.chmod(0o600)
            knot.start()
            yield t, gb, knot, pg, conn_file
            for gw in e2e.gateways:
                gw.stop()
    finally:
        knot.stop()


def _gateway(e2e, ns, name: str, conn_file, member: str) -> OurGateway:
    gw = OurGateway(ns, e2e.tmp, name, [], None)
    with open(gw.config, "a") as fh:
        fh.write(_pool_and_ddns(conn_file, member))
    if gw not in e2e.gateways:
        e2e.gateways.append(gw)
    return gw.start()


def _wait_records(knot, want: list[str], gws: list[OurGateway], timeout: float = 15.0) -> float:
    t0 = time.monotonic()
    try:
        wait_until(lambda: knot.query(NAME)[0] == sorted(want), timeout=timeout, interval=0.2,
                   what=f"{NAME} A = {sorted(want)}")
    except TimeoutError:
        tails = "\n".join(f"--- {g.name}\n{g.log_tail(30)}" for g in gws)
        raise AssertionError(f"{NAME}: {knot.query(NAME)}, want {sorted(want)}\n{tails}") from None
    return time.monotonic() - t0


def test_two_members_share_one_name_and_withdraw_their_records(e2e, fleet, record_property):
    t, gb, knot, pg, conn_file = fleet
    assert knot.query(NAME)[0] == [FOREIGN]
    a = _gateway(e2e, t.hub, "gw-a", conn_file, "gw-a")
    b = _gateway(e2e, gb, "gw-b", conn_file, "gw-b")
    gws = [a, b]

    # 1. both members published, the foreign record untouched
    _wait_records(knot, [D.HUB_WAN, GW_B, FOREIGN], gws)
    assert knot.query(NAME)[1] == 5    # our TTL (RFC 2136 adding to a set sets the set's TTL)
    rows = _db(pg.conninfo, lambda s: s.dns_records())
    assert [(g, n, addr) for g, n, addr, _ in rows] == [("gw-a", NAME, D.HUB_WAN), ("gw-b", NAME, GW_B)]

    # 2. A's address changes: only A's record moves
    new_a = "192.0.2.2"
    t.renumber_hub(D.HUB_WAN, new_a)
    _wait_records(knot, [new_a, GW_B, FOREIGN], gws)
    rows = _db(pg.conninfo, lambda s: s.dns_records())
    assert [(g, addr) for g, _, addr, _ in rows] == [("gw-a", new_a), ("gw-b", GW_B)]

    # 3. A stops cleanly: exactly its record goes, before it deletes its SAs
    assert kill_pid(a.proc.pid, timeout=10)
    a.proc.wait(timeout=5)
    assert knot.query(NAME)[0] == sorted([GW_B, FOREIGN]), a.log_tail(30)   # gone by the time A exited
    assert _events(a, "withdrew our DNS records", addresses=[new_a])
    rows = _db(pg.conninfo, lambda s: s.dns_records())
    assert [(g, addr) for g, _, addr, _ in rows] == [("gw-b", GW_B)]

    # 4. A comes back, then dies without a word: B withdraws A's record after the heartbeat lapse
    a.start()
    _wait_records(knot, [new_a, GW_B, FOREIGN], gws)
    kill_pid(a.proc.pid, sig=signal.SIGKILL)
    a.proc.wait(timeout=5)
    killed = time.monotonic()
    assert knot.query(NAME)[0] == sorted([new_a, GW_B, FOREIGN])   # a dead member cannot withdraw
    _wait_records(knot, [GW_B, FOREIGN], gws, timeout=20)
    lapse = time.monotonic() - killed
    # B logs the reaping after the database transaction that follows the DNS update commits:
    # the line may come a moment after the record is gone from the zone
    wait_until(lambda: _events(b, "withdrew the DNS record of a fleet member whose heartbeat lapsed"),
               timeout=5, interval=0.1, what="b's log line about the reaped record")
    reaped = _events(b, "withdrew the DNS record of a fleet member whose heartbeat lapsed")
    assert [(r["member"], r["address"]) for r in reaped] == [("gw-a", new_a)]
    rows = _db(pg.conninfo, lambda s: s.dns_records())
    assert [(g, addr) for g, _, addr, _ in rows] == [("gw-b", GW_B)]
    assert lapse >= 3.0 - 1.0 - 0.2, lapse   # never before the heartbeat timeout (less one interval)
    print(f"\nSIGKILLed member's record withdrawn by the other {lapse:.1f} s after the kill "
          f"(heartbeat_timeout 3 s, interval 1 s)")
    record_property("reap_seconds", round(lapse, 2))
    assert KEY.secret not in a.log.read_text() + b.log.read_text()
