"""PostgreSQL address pools (vpn_gw.pools.postgres) against a real PostgreSQL started by the test
(initdb + postgres as the postgres user, Unix socket only, stopped by PID): schema migrations,
two gateways allocating concurrently never hand out one address, sticky leases across gateways,
heartbeat lapse, database down."""
from __future__ import annotations

import asyncio
import os

import pytest

from tests.postgres_server import Postgres
from vpn_gw.pools.postgres import SCHEMA_VERSION, PgPoolStore, PoolDbError

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def pg():
    if os.geteuid() != 0:
        pytest.fail("the PostgreSQL tests need root (they run the server as the postgres user)")
    with Postgres() as server:
        yield server


def run(coro):
    return asyncio.run(coro)


async def _fresh(pg, *gateways, timeout=30.0):
    """Stores for ``gateways`` on a freshly initialised database with pool rw = 10.99.0.0/27."""
    admin = PgPoolStore(pg.conninfo, "admin")
    await admin.init_schema()
    async def reset(cur):
        await cur.execute("TRUNCATE vpngw_pools, vpngw_leases, vpngw_gateways, vpngw_dns_records")
    await admin._run(reset)
    assert await admin.add_pool("rw", "10.99.0.0/27") == 30
    await admin.close()
    stores = [PgPoolStore(pg.conninfo, g, heartbeat_timeout=timeout) for g in gateways]
    for s in stores:
        await s.recover()
    return stores


def test_init_is_versioned_and_idempotent(pg):
    async def main():
        s = PgPoolStore(pg.conninfo, "gw1")
        first = await s.init_schema()
        again = await s.init_schema()
        await s.close()
        return first, again
    first, again = run(main())
    assert first[1] == SCHEMA_VERSION and again == (SCHEMA_VERSION, SCHEMA_VERSION)


def test_concurrent_allocation_from_two_gateways_never_doubles(pg):
    async def main():
        a, b = await _fresh(pg, "gw-a", "gw-b")
        # 2 gateways x 20 identities at the same time, 30 addresses
        async def take(store, who):
            return await store.acquire(["rw"], who, 4)
        # each store serialises its own calls; the two stores race each other
        res = await asyncio.gather(*[take(a, f"a{i}") for i in range(20)],
                                   *[take(b, f"b{i}") for i in range(20)])
        leases = await a.leases("rw")
        await a.close()
        await b.close()
        return res, leases
    res, leases = run(main())
    got = [r[1] for r in res if r is not None]
    assert len(got) == 30 and len(set(got)) == 30          # 30 addresses, each once
    assert sum(r is None for r in res) == 10                 # the other 10 refused: exhausted
    assert len({lz.address for lz in leases}) == len(leases) == 30
    assert {lz.gateway for lz in leases} == {"gw-a", "gw-b"}


def test_sticky_across_gateways_and_released_on_delete(pg):
    async def main():
        a, b = await _fresh(pg, "gw-a", "gw-b")
        first = await a.acquire(["rw"], "alice", 4)
        await b.acquire(["rw"], "bob", 4)
        rel = await a.release("alice")
        st = await a.status()
        # alice comes back through the other gateway: same address
        again = await b.acquire(["rw"], "alice", 4)
        # a release from gw-a now does not touch the lease gw-b holds
        none = await a.release("alice")
        leases = {lz.identity: lz for lz in await a.leases()}
        await a.close()
        await b.close()
        return first, rel, st, again, none, leases
    first, rel, st, again, none, leases = run(main())
    assert first == ("rw", "10.99.0.1") and rel == [("rw", "10.99.0.1")]
    pool = st["pools"][0]
    assert (pool["size"], pool["bound"], pool["online"], pool["offline"]) == (30, 2, 1, 1)
    assert again == first and none == []
    assert leases["alice"].gateway == "gw-b" and leases["alice"].online


def test_dead_gateway_leases_reusable_only_after_heartbeat_lapse(pg):
    async def main():
        a, b = await _fresh(pg, "gw-a", "gw-b", timeout=1.5)
        admin = PgPoolStore(pg.conninfo, "admin")
        await admin.add_pool("tiny", "10.98.0.5-10.98.0.5")
        await admin.close()
        held = await a.acquire(["tiny"], "carol", 4)          # gw-a "crashes" holding it
        await b.heartbeat()
        before = await b.acquire(["tiny"], "dave", 4)          # gw-a still alive: not reusable
        back_early = await b.acquire(["tiny"], "carol", 4)     # but carol gets it back at once
        await b.release("carol")
        await a.acquire(["tiny"], "carol", 4)                  # gw-a takes it again ...
        await asyncio.sleep(2.0)                               # ... and dies: heartbeat lapses
        await b.heartbeat()
        after = await b.acquire(["tiny"], "dave", 4)           # now reclaimed
        await a.close()
        await b.close()
        return held, before, back_early, after
    held, before, back_early, after = run(main())
    assert held == ("tiny", "10.98.0.5")
    assert before is None
    assert back_early == held
    assert after == held


def test_dns_records_of_a_dead_member_are_reaped_once_and_never_a_live_ones(pg):
    """[[ddns]] mode = "member" with fleet_pool (docs/fleet.md "One DNS name")."""
    name = "vpn.example.test"

    async def main():
        a, b, c = await _fresh(pg, "gw-a", "gw-b", "gw-c", timeout=1.5)
        try:
            assert await a.dns_register([name], ["192.0.2.1"]) == []
            assert await b.dns_register([name], ["198.51.100.1"]) == []
            # A's address changes: its earlier record is reported (to be withdrawn), kept until unregistered
            assert await a.dns_register([name], ["192.0.2.2"]) == ["192.0.2.1"]
            await a.dns_unregister([name], ["192.0.2.1"])
            # C publishes the same address as A (a shared VIP): it must survive A's death
            await c.dns_register([name], ["192.0.2.2"])
            withdrawn: list[list[str]] = []

            async def withdraw(addrs):
                withdrawn.append(addrs)
                return True
            assert await b.dns_reap([name], withdraw) == []   # everyone alive
            await asyncio.sleep(2.0)                           # A and C die (no heartbeat) ...
            await b.heartbeat()
            await c.heartbeat()                                # ... C comes back
            assert await b.dns_reap([name], withdraw) == [("gw-a", "192.0.2.2")]
            assert withdrawn == []                             # C still publishes 192.0.2.2: not withdrawn
            rows = await b.dns_records()
            assert [(g, addr) for g, _, addr, _ in rows] == [("gw-b", "198.51.100.1"), ("gw-c", "192.0.2.2")]

            await asyncio.sleep(2.0)                           # now C dies too
            await b.heartbeat()

            async def refuse(addrs):
                withdrawn.append(addrs)
                return False                                   # the DNS server said no
            assert await b.dns_reap([name], refuse) == []
            assert len(await b.dns_records()) == 2             # rows kept: tried again next time
            assert await b.dns_reap([name], withdraw) == [("gw-c", "192.0.2.2")]
            assert withdrawn == [["192.0.2.2"], ["192.0.2.2"]]
            assert await b.dns_reap(["other.example.test"], withdraw) == []   # other names untouched
            await b.dns_unregister([name])
            assert await b.dns_records() == []
        finally:
            for s in (a, b, c):
                await s.close()
    run(main())


def test_database_down_is_a_clear_error():
    async def main():
        s = PgPoolStore("host=/nonexistent-dir port=5432 dbname=postgres user=postgres", "gw",
                        connect_timeout=1)
        with pytest.raises(PoolDbError, match="cannot connect to the pool database"):
            await s.acquire(["rw"], "alice", 4)
    run(main())


def test_schema_missing_is_a_clear_error(pg):
    async def main():
        s = PgPoolStore(pg.conninfo.replace("dbname=postgres", "dbname=template1"), "gw")
        with pytest.raises(PoolDbError, match="no vpn-gw schema .*vpn-gw pool init"):
            await s.acquire(["rw"], "alice", 4)
        await s.close()
    run(main())


def test_cli_pool_init_add_status_del(pg, tmp_path):
    import json as _json
    import subprocess
    import sys
    conn = tmp_path / "db.conn"
    conn.write_text(pg.conninfo.replace("dbname=postgres", "dbname=template1") + "\n")
    conn.chmod(0o600)
    cfg = tmp_path / "gw.toml"
    cfg.write_text(f'''
[[pool]]
name = "fleet"
addrs = "10.97.0.0/28"
backend = "postgresql"
database = "file:{conn}"
fleet_member = "gw1"

[[connection]]
name = "rw"
local_id = "vpn.example.org"
auth = "psk"
psk = "a-long-enough-pre-shared-key"
remote_auth = "psk"
pools = ["fleet"]
[[connection.child]]
name = "rw"
local_ts = ["0.0.0.0/0"]
remote_ts = ["0.0.0.0/0"]
''')

    def cli(*a, check=True):
        r = subprocess.run([sys.executable, "-m", "vpn_gw", "pool", "-c", str(cfg), *a],
                           capture_output=True, text=True, timeout=60)
        assert (r.returncode == 0) == check, r.stdout + r.stderr
        return r
    before = cli("status", check=False)
    assert "no vpn-gw schema" in before.stderr and "vpn-gw pool init" in before.stderr
    assert "schema version" in cli("init").stdout
    assert "(unchanged)" in cli("init").stdout
    assert "14 addresses" in cli("add", "fleet").stdout
    assert "exists already" in cli("add", "fleet", check=False).stderr
    st = _json.loads(cli("status", "--json").stdout)
    assert st["pools"] == [{"name": "fleet", "addrs": "10.97.0.0/28", "size": 14, "bound": 0,
                            "online": 0, "offline": 0, "free": 14}]
    assert "pool fleet deleted" in cli("del", "fleet").stdout
    assert "no pool 'fleet'" in cli("del", "fleet", check=False).stderr


def test_hanging_database_is_a_timeout_then_recovers(pg):
    """The server stops answering (SIGSTOP of the backend serving the gateway): the call fails
    within op_timeout with a clear error
    instead of hanging (and holding up every later allocation); after SIGCONT the next call
    works on a new connection, and nothing was allocated by the failed one."""
    import signal

    async def main():
        (a,) = await _fresh(pg, "gw-a")
        a.op_timeout = 1.0
        await a.acquire(["rw"], "alice", 4)
        backend = a._conn.info.backend_pid
        os.kill(backend, signal.SIGSTOP)
        try:
            t = asyncio.get_running_loop().time()
            with pytest.raises(PoolDbError, match="did not answer within 1s"):
                await a.acquire(["rw"], "bob", 4)
            took = asyncio.get_running_loop().time() - t
        finally:
            os.kill(backend, signal.SIGCONT)
        again = await a.acquire(["rw"], "bob", 4)
        leases = await a.leases("rw")
        await a.close()
        return took, again, leases
    took, again, leases = run(main())
    assert took < 3.0
    assert again == ("rw", "10.99.0.2")
    assert sorted(lz.identity for lz in leases) == ["alice", "bob"]
