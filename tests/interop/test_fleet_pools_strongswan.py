"""Our gateway with a PostgreSQL pool (``backend = "postgresql"``) and strongSwan road-warriors.

PostgreSQL (tests/postgres_server.py) runs on a Unix socket in a temporary directory; the
gateway in its namespace reaches it through the file system (Unix sockets are not network
namespaced). Another fleet member ("gw-other", a PgPoolStore in the test) holds leases too.
Checked: the client gets its sticky address from the shared pool (bound earlier through the
other gateway), addresses online at the other gateway are not handed out, the lease shows
online at our fleet member; with the database stopped a new client is refused with the reason
logged while the established one keeps pinging.
"""
from __future__ import annotations

import asyncio
import secrets
import sys
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parent.parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import ra_helpers as R  # noqa: E402
from ra_helpers import User  # noqa: E402

from tests.postgres_server import Postgres  # noqa: E402
from vpn_gw.pools.postgres import PgPoolStore  # noqa: E402

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

HOST_A = "10.10.0.2"


def _run(coro):
    return asyncio.run(coro)


async def _prepare(conninfo: str):
    admin = PgPoolStore(conninfo, "admin")
    await admin.init_schema()
    await admin.add_pool("rw", R.POOL)
    await admin.close()
    other = PgPoolStore(conninfo, "gw-other")
    await other.recover()
    alice_before = await other.acquire(["rw"], "alice@example.org", 4)   # alice was here before
    await other.release("alice@example.org")
    zed = await other.acquire(["rw"], "zed@example.org", 4)              # online at gw-other
    await other.close()
    return alice_before, zed


async def _leases(conninfo: str):
    s = PgPoolStore(conninfo, "reader")
    try:
        return {lz.identity: lz for lz in await s.leases("rw")}
    finally:
        await s.close()


def test_postgres_pool_sticky_across_fleet_and_database_down(sswan_workdir):
    alice = User("alice@example.org", "pw-" + secrets.token_hex(8))
    bob = User("bob@example.org", "pw-" + secrets.token_hex(8))
    psk = "test-only-" + secrets.token_hex(12)
    users_file = sswan_workdir / "users.toml"
    users_file.write_text(R.users_toml([alice, bob]))
    users_file.chmod(0o600)
    with Postgres() as pg:
        alice_before, zed = _run(_prepare(pg.conninfo))
        assert alice_before == ("rw", "10.99.0.1") and zed == ("rw", "10.99.0.2")

        def config_text(topo, ours_dir: Path) -> str:
            text = (ours_dir / "vpn-gw.toml").read_text()
            conn = ours_dir / "pooldb.conn"
            conn.write_text(pg.conninfo + " connect_timeout=2\n")
            conn.chmod(0o600)
            dns = ", ".join(f'"{d}"' for d in R.OURS_DNS)
            return text + (f'\n[[pool]]\nname = "rw"\naddrs = "{R.POOL}"\ndns = [{dns}]\n'
                           f'backend = "postgresql"\ndatabase = "file:{conn}"\nfleet_member = "gw-test"\n'
                           f'heartbeat_interval = "2s"\nheartbeat_timeout = "30s"\n')

        with R.ra_env(sswan_workdir, prefix="rpg", ours_role="gateway",
                      sw_config=lambda t: R.sw_clients_conf(t, [alice, bob], psk=psk),
                      ours_connections=lambda t: [R.ours_gateway_conn(t, method="mschapv2",
                                                                      users_file=users_file, psk=psk)],
                      ours_config_text=config_text, n_client_addrs=2) as env:
            env.sw.initiate(child=R.CHILD, ike="c0", timeout=20)
            env.ours_established(1, timeout=10)
            vip = env.sw_vip("c0")
            assert vip == "10.99.0.1", f"not alice's sticky address from the shared pool: {vip}"
            assert set(R.OURS_DNS) <= set(env.sw_resolv())
            env.topo.gw.wait_ping(HOST_A, src=vip, timeout=5)
            leases = _run(_leases(pg.conninfo))
            assert leases["alice@example.org"].gateway == "gw-test" and leases["alice@example.org"].online
            assert leases["zed@example.org"].gateway == "gw-other"

            # the database goes away: bob is refused, alice keeps working
            pg.stop()
            res = env.sw.initiate(child=R.CHILD, ike="c1", timeout=20, check=False)
            assert res.returncode != 0, res.stdout
            assert "parsed IKE_AUTH response 5 [ N(INT_ADDR_FAIL) ]" in env.sw.log_text()
            refused = env.log_events("new client refused: pool database unavailable")
            assert refused and refused[0]["identity"] == "bob@example.org", refused
            assert "pool database" in refused[0]["error"]
            assert env.sw_vip("c1") is None
            assert env.topo.gw.ping(HOST_A, count=3, interval=0.2, src=vip), "established SA broken"
