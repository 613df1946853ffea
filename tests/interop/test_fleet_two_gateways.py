"""A fleet of two of OUR gateways sharing one PostgreSQL pool, with strongSwan road-warriors
(reduced form of issue 17's fleet test: 4 clients instead of 20 on 2 shared cores, and the clients
are pointed at the surviving gateway by a second swanctl connection instead of redialling a DNS
name; the one-name part would add Knot DNS + the RFC 2136 publisher, not done here).

    strongSwan clients 198.51.100.11-14 (topo.gw) -- router -- gateway A 192.0.2.10 (topo.site)
                                                          \\-- gateway B 203.0.113.10 (ns "gb")

Both gateways protect 10.10.0.0/24 and have 10.10.0.1 on lo (the ping target). PostgreSQL runs
on a Unix socket (reached from both namespaces through the file system).

Checked: clients spread over both gateways get distinct addresses from the one pool; gateway A
is killed (SIGKILL: no release, its leases stay online under a heartbeat that stops); its
clients connect to B and get their same addresses back; at every step no address is bound twice
and no identity holds two addresses (checked in the database).
"""
from __future__ import annotations

import asyncio
import secrets
import signal
import sys
import time
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parent.parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import ra_helpers as R  # noqa: E402
from ra_helpers import User  # noqa: E402

from tests.gateway import OurGateway, render_toml  # noqa: E402
from tests.netns import kill_pid  # noqa: E402
from tests.postgres_server import Postgres  # noqa: E402
from vpn_gw.pools.postgres import PgPoolStore  # noqa: E402

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180)]

N = 4
GW_B = "203.0.113.10"
TARGET = "10.10.0.1"


def _run(coro):
    return asyncio.run(coro)


async def _db(conninfo: str, fn):
    s = PgPoolStore(conninfo, "checker")
    try:
        return await fn(s)
    finally:
        await s.close()


def _leases(conninfo: str):
    async def fn(s):
        return await s.leases("rw")
    return _run(_db(conninfo, fn))


def _assert_no_double(conninfo: str):
    leases = _leases(conninfo)
    addrs = [lz.address for lz in leases]
    ids = [lz.identity for lz in leases]
    assert len(addrs) == len(set(addrs)) and len(ids) == len(set(ids)), leases
    return {lz.identity: lz for lz in leases}


def _pool_toml(conn_file: Path, member: str) -> str:
    dns = ", ".join(f'"{d}"' for d in R.OURS_DNS)
    return (f'\n[[pool]]\nname = "rw"\naddrs = "{R.POOL}"\ndns = [{dns}]\nbackend = "postgresql"\n'
            f'database = "file:{conn_file}"\nfleet_member = "{member}"\n'
            f'heartbeat_interval = "1s"\nheartbeat_timeout = "3s"\n')


def test_two_gateways_share_a_pool_and_survive_one_dying(sswan_workdir):
    t0 = time.monotonic()
    users = [User(f"user{i}@example.org", "pw-" + secrets.token_hex(8)) for i in range(N)]
    psk = "test-only-" + secrets.token_hex(12)
    users_file = sswan_workdir / "users.toml"
    users_file.write_text(R.users_toml(users))
    users_file.chmod(0o600)
    gw_b: OurGateway | None = None
    with Postgres() as pg:
        async def prep(s):
            await s.init_schema()
            await s.add_pool("rw", R.POOL)
        _run(_db(pg.conninfo, prep))
        conn_file = sswan_workdir / "pooldb.conn"
        conn_file.write_text(pg.conninfo + " connect_timeout=2\n")
        conn_file.chmod(0o600)
        extra: dict = {}

        def setup(topo, sw):
            gb = topo.group.add("gb", forwarding=True)
            topo.group.veth(topo.router, "r9", gb, "wan0", a_addrs=["203.0.113.1/24"],
                            b_addrs=[f"{GW_B}/24"])
            gb.add_route("default", via="203.0.113.1")
            gb.add_addr("lo", f"{TARGET}/32")
            extra["gb"] = gb

        def sw_config(topo):
            conf = R.sw_clients_conf(topo, users, psk=psk)
            conns = conf["connections"]
            for i in range(N):
                c = dict(conns[f"c{i}"])
                c["remote_addrs"] = GW_B
                conns[f"c{i}b"] = c
            return conf

        def config_text(topo, ours_dir: Path) -> str:
            return (ours_dir / "vpn-gw.toml").read_text() + _pool_toml(conn_file, "gw-a")

        def ours_conn(topo, local_ip):
            c = R.ours_gateway_conn(topo, method="mschapv2", users_file=users_file, psk=psk)
            c["local_addrs"] = [local_ip]
            c["children"][0]["local_ts"] = ["10.10.0.0/24"]
            return c

        try:
            with R.ra_env(sswan_workdir, prefix="rfl", ours_role="gateway", setup=setup,
                          sw_config=sw_config, ours_connections=lambda t: [ours_conn(t, t.site_ip)],
                          ours_config_text=config_text, n_client_addrs=N) as env:
                # gateway B in its namespace, same pool database, same users
                gw_b = OurGateway(extra["gb"], sswan_workdir, "ours-b", [ours_conn(env.topo, GW_B)],
                                  listen=[GW_B])
                gw_b.config.write_text(render_toml({"control_socket": str(gw_b.socket), "listen": [GW_B],
                                                    **R.FAST}, [ours_conn(env.topo, GW_B)])
                                       + _pool_toml(conn_file, "gw-b"))
                gw_b.start()
                env.pids.append(gw_b.proc.pid)

                # clients 0, 1 on A, clients 2, 3 on B
                for i in range(N):
                    env.sw.initiate(child=R.CHILD, ike=f"c{i}" if i < 2 else f"c{i}b", timeout=20)
                vips = {}
                for i in range(N):
                    conn = f"c{i}" if i < 2 else f"c{i}b"
                    vips[i] = env.sw_vip(conn)
                    assert R.in_pool(vips[i]), (conn, vips[i])
                    env.topo.gw.wait_ping(TARGET, src=vips[i], timeout=5)
                assert len(set(vips.values())) == N, vips
                leases = _assert_no_double(pg.conninfo)
                assert {leases[u.name].gateway for u in users[:2]} == {"gw-a"}
                assert {leases[u.name].gateway for u in users[2:]} == {"gw-b"}

                # gateway A dies without a word
                kill_pid(env.ours.proc.pid, sig=signal.SIGKILL)
                env.ours.proc.wait(timeout=5)
                _assert_no_double(pg.conninfo)
                # its clients come back through B: same addresses
                for i in range(2):
                    env.sw.terminate(ike=f"c{i}", force=True, timeout=10, check=False)
                    env.sw.initiate(child=R.CHILD, ike=f"c{i}b", timeout=20)
                    assert env.sw_vip(f"c{i}b") == vips[i], (i, env.sw_vip(f"c{i}b"), vips[i])
                    env.topo.gw.wait_ping(TARGET, src=vips[i], timeout=5)
                leases = _assert_no_double(pg.conninfo)
                assert {leases[u.name].gateway for u in users} == {"gw-b"}
                assert all(leases[u.name].online for u in users)
                assert len(gw_b.ike_sas()) == N
        finally:
            if gw_b is not None:
                gw_b.stop()
    assert time.monotonic() - t0 < 150
