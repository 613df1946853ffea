"""A fleet of two of OUR gateways under ONE DNS name, sharing one PostgreSQL pool and one
FreeRADIUS, with strongSwan road-warriors dialling the name (issue 17's fleet test).

    strongSwan clients 198.51.100.11.. (topo.gw) -- router -- gateway A 192.0.2.10 (topo.site)
                                                   |      \\-- gateway B 203.0.113.10 (ns "gb")
                      Knot DNS and FreeRADIUS 203.0.113.1 (in the router's namespace)

Both gateways publish vpn.example.test with ``[[ddns]] mode = "member"`` (each adds its own A
record) and ``fleet_pool = "rw"`` (a live member withdraws a dead one's record once its heartbeat
lapsed). Knot rotates the order of the records per query (``answer-rotation``), charon resolves
the name with the test's Knot (its /etc/resolv.conf is bind-mounted in its private mount
namespace), so the clients spread over both gateways. Both gateways protect 10.10.0.0/24 and
have 10.10.0.1 on lo (the ping target). PostgreSQL runs on a Unix socket (reached from both
namespaces through the file system). The users are in FreeRADIUS's users file: both gateways
relay the clients' EAP-MSCHAPv2 to it (``remote_auth = "eap-radius"``, NAS-Identifier gw-a /
gw-b) and send accounting, whose Start records (FreeRADIUS's detail file) are checked. FreeRADIUS
is launched with the other services and waited for only before the first client dials.

Checked: N = 200 clients (the whole test ~20 s on the shared 2-core machine) authenticated by
FreeRADIUS through either gateway (one accounting Start each, from the gateway it reached) spread
over both gateways get distinct addresses from the one pool; gateway A is killed (SIGKILL: no release, no
withdrawal); B withdraws A's record after A's heartbeat lapsed; A's clients redial the name,
land on B and get their same addresses back; at every step no address is bound twice and no
identity holds two addresses (checked in the database); the redialled clients' accounting
Start comes from gw-b.
"""
from __future__ import annotations

import asyncio
import base64
import secrets
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parent.parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import ra_helpers as R  # noqa: E402
from ra_helpers import User  # noqa: E402

from tests.freeradius import FreeRadius, wait_for  # noqa: E402
from tests.gateway import OurGateway, render_toml  # noqa: E402
from tests.netns import kill_pid, wait_until  # noqa: E402
from tests.netns_e2e import ddns_tools as D  # noqa: E402
from tests.postgres_server import Postgres  # noqa: E402
from vpn_gw.pools.postgres import PgPoolStore  # noqa: E402

pytestmark = [pytest.mark.interop, pytest.mark.timeout(240)]

N = 200                     # clients (issue 17 asks 20); 198.51.100.11-210, 200 of the pool's 253
GW_A = "192.0.2.10"
GW_B = "203.0.113.10"
DNS_IP = "203.0.113.1"      # the router's address on gateway B's link
TARGET = "10.10.0.1"
ZONE = "example.test"
NAME = "vpn.example.test"
KEY = D.TsigKey("fleet-key", base64.b64encode(bytes(range(70, 102))).decode())
ZONE_TEXT = f"""\
$ORIGIN {ZONE}.
$TTL 2
@            SOA ns hostmaster 1 60 60 3600 2
@            NS  ns
ns           A   {DNS_IP}
"""
PARALLEL = 4                # swanctl --initiate calls at once


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


def _radius_toml(secret_file: Path, member: str) -> str:
    return (f'\n[radius]\nservers = ["{DNS_IP}"]\nsecret = "file:{secret_file}"\n'
            f'nas_identifier = "{member}"\ntimeout = "1s"\nretries = 2\ndae_port = 0\n')


def _pool_toml(conn_file: Path, member: str, secret_file: Path) -> str:
    dns = ", ".join(f'"{d}"' for d in R.OURS_DNS)
    return _radius_toml(secret_file, member) + (
            f'\n[[pool]]\nname = "rw"\naddrs = "{R.POOL}"\ndns = [{dns}]\nbackend = "postgresql"\n'
            f'database = "file:{conn_file}"\nfleet_member = "{member}"\n'
            f'heartbeat_interval = "1s"\nheartbeat_timeout = "3s"\n'
            + D.ddns_toml([{"interface": "wan0", "names": [NAME], "method": "rfc2136", "server": DNS_IP,
                            "zone": ZONE, "tsig_name": KEY.name, "tsig_secret": KEY.secret, "ttl": 2,
                            "families": [4], "mode": "member", "fleet_pool": "rw"}]))


def _starts(fr: FreeRadius, n: int) -> dict[str, list[str]]:
    """User-Name -> the NAS-Identifiers of its accounting Start records, once there are n."""
    def starts():
        return [r for r in fr.detail_records() if r.get("Acct-Status-Type") == "Start"]
    assert wait_for(lambda: len(starts()) >= n, 10), f"{len(starts())} accounting Starts, want {n}"
    out: dict[str, list[str]] = {}
    for r in starts():
        out.setdefault(r["User-Name"], []).append(r["NAS-Identifier"])
    return out


def _dns(knot) -> list[str]:
    return knot.query(NAME)[0]


def _wait_dns(knot, want: list[str], gws, timeout: float) -> None:
    try:
        wait_until(lambda: _dns(knot) == sorted(want), timeout=timeout, interval=0.2,
                   what=f"{NAME} A = {sorted(want)}")
    except TimeoutError:
        tails = "\n".join(f"--- {g.name}\n{g.log_tail(30)}" for g in gws)
        raise AssertionError(f"{NAME}: {_dns(knot)}, want {sorted(want)}\n{tails}") from None


def _ping_all(env, vips) -> None:
    """One ping from every virtual IP to the target through the tunnel, PARALLEL at a time."""
    def one(vip):
        env.topo.gw.wait_ping(TARGET, src=vip, timeout=5)
    with ThreadPoolExecutor(PARALLEL) as pool:
        list(pool.map(one, vips))


def _initiate_all(env, conns: list[str]) -> None:
    """swanctl --initiate of every connection, PARALLEL at a time (each resolves the name)."""
    def one(c):
        env.sw.initiate(child=R.CHILD, ike=c, timeout=30)
    with ThreadPoolExecutor(PARALLEL) as pool:
        list(pool.map(one, conns))


def test_two_gateways_share_a_pool_and_survive_one_dying(sswan_workdir, record_property):
    t0 = time.monotonic()
    users = [User(f"user{i}@example.org", "pw-" + secrets.token_hex(8)) for i in range(N)]
    psk = "test-only-" + secrets.token_hex(12)
    radius_secret = "radius-" + secrets.token_hex(12)
    secret_file = sswan_workdir / "radius.secret"
    secret_file.write_text(radius_secret + "\n")
    secret_file.chmod(0o600)
    radius_users = "".join(f'"{u.name}"  Cleartext-Password := "{u.password}"\n' for u in users)
    lookup_resolv = sswan_workdir / "lookup-resolv.conf"   # charon's own look-ups: the test's Knot
    lookup_resolv.write_text(f"nameserver {DNS_IP}\noptions timeout:1 attempts:2\n")
    gw_b: OurGateway | None = None
    extra: dict = {}
    with Postgres() as pg:
        async def prep(s):
            await s.init_schema()
            await s.add_pool("rw", R.POOL)
        _run(_db(pg.conninfo, prep))
        conn_file = sswan_workdir / "pooldb.conn"
        conn_file.write_text(pg.conninfo + " connect_timeout=2\n")
        conn_file.chmod(0o600)

        def setup(topo, sw):
            gb = topo.group.add("gb", forwarding=True)
            topo.group.veth(topo.router, "r9", gb, "wan0", a_addrs=[f"{DNS_IP}/24"],
                            b_addrs=[f"{GW_B}/24"])
            gb.add_route("default", via=DNS_IP)
            gb.add_addr("lo", f"{TARGET}/32")
            extra["gb"] = gb
            # FreeRADIUS launched now, waited for just before the first client (its ~1 s start-up
            # overlaps Knot's, gateway A's and B's); Knot before gateway A starts and publishes
            extra["fr"] = FreeRadius(topo.router, sswan_workdir / "freeradius", users=radius_users,
                                     secret=radius_secret, address=DNS_IP)
            extra["fr"].launch()
            extra["knot"] = D.KnotServer(topo.router, sswan_workdir, DNS_IP, ZONE, ZONE_TEXT, KEY,
                                         answer_rotation=True).start()

        def sw_config(topo):
            conf = R.sw_clients_conf(topo, users, psk=psk)
            for c in conf["connections"].values():
                c["remote_addrs"] = NAME      # every client dials the fleet's name
            return conf

        def config_text(topo, ours_dir: Path) -> str:
            return (ours_dir / "vpn-gw.toml").read_text() + _pool_toml(conn_file, "gw-a", secret_file)

        def ours_conn(topo, local_ip):
            c = R.ours_gateway_conn(topo, method="radius", psk=psk)
            c["local_addrs"] = [local_ip]
            c["children"][0]["local_ts"] = ["10.10.0.0/24"]
            return c

        if not D.knot_available():
            pytest.fail("Knot DNS (knotd, knotc) is not installed: run scripts/setup.sh")
        try:
            with R.ra_env(sswan_workdir, prefix="rfl", ours_role="gateway", setup=setup,
                          sw_config=sw_config, ours_connections=lambda t: [ours_conn(t, t.site_ip)],
                          ours_config_text=config_text, n_client_addrs=N,
                          charon_kwargs={"lookup_resolv_conf": lookup_resolv}) as env:
                knot = extra["knot"]
                t_env = time.monotonic() - t0
                # gateway B in its namespace, same pool database, same users, same name
                gw_b = OurGateway(extra["gb"], sswan_workdir, "ours-b", [ours_conn(env.topo, GW_B)],
                                  listen=[GW_B])
                gw_b.config.write_text(render_toml({"control_socket": str(gw_b.socket), "listen": [GW_B],
                                                    **R.FAST}, [ours_conn(env.topo, GW_B)])
                                       + _pool_toml(conn_file, "gw-b", secret_file))
                gw_b.start()
                env.pids.append(gw_b.proc.pid)
                _wait_dns(knot, [GW_A, GW_B], [env.ours, gw_b], timeout=15)
                fr: FreeRadius = extra["fr"]
                t_fr = time.monotonic()
                fr.wait_ready()
                fr_wait_s = time.monotonic() - t_fr

                # N clients dial the name; Knot's rotation spreads them over both gateways
                t_up = time.monotonic()
                _initiate_all(env, [f"c{i}" for i in range(N)])
                up_s = time.monotonic() - t_up
                sas = {sa["name"]: sa for sa in env.sw.list_sas()}
                vips, via = {}, {}
                for i in range(N):
                    sa = sas.get(f"c{i}") or {}
                    vips[i], via[i] = (sa.get("local-vips") or [None])[0], sa.get("remote-host")
                    assert R.in_pool(vips[i]), (i, vips[i])
                t_ping = time.monotonic()
                _ping_all(env, vips.values())
                ping_s = time.monotonic() - t_ping
                assert len(set(vips.values())) == N, vips
                on_a = [i for i in range(N) if via[i] == GW_A]
                on_b = [i for i in range(N) if via[i] == GW_B]
                assert len(on_a) + len(on_b) == N, via
                assert on_a and on_b, f"all clients on one gateway: {via}"
                leases = _assert_no_double(pg.conninfo)
                assert {leases[users[i].name].gateway for i in on_a} == {"gw-a"}
                assert {leases[users[i].name].gateway for i in on_b} == {"gw-b"}
                # every client authenticated by FreeRADIUS; one accounting Start each, from its gateway
                starts = _starts(fr, N)
                assert {i: starts[users[i].name] for i in range(N)} == \
                    {i: ["gw-a" if i in on_a else "gw-b"] for i in range(N)}
                assert fr.log.read_text().count("Login OK: [") == N

                # gateway A dies without a word; B withdraws its record once A's heartbeat lapsed
                kill_pid(env.ours.proc.pid, sig=signal.SIGKILL)
                env.ours.proc.wait(timeout=5)
                killed = time.monotonic()
                _assert_no_double(pg.conninfo)
                _wait_dns(knot, [GW_B], [gw_b], timeout=20)
                withdrawn_s = time.monotonic() - killed
                # A's clients redial the name: they land on B with their same addresses
                # (--force without --timeout: charon drops the SA at once; with a timeout it would
                # wait that long for the dead gateway's answer to its DELETE)
                t_redial = time.monotonic()
                for i in on_a:
                    env.sw.swanctl("terminate", "--ike", f"c{i}", "--force", timeout=10, check=False)
                _initiate_all(env, [f"c{i}" for i in on_a])
                redial_s = time.monotonic() - t_redial
                sas = {sa["name"]: sa for sa in env.sw.list_sas()}
                for i in on_a:
                    sa = sas.get(f"c{i}") or {}
                    assert sa.get("remote-host") == GW_B, (i, sa)
                    assert (sa.get("local-vips") or [None])[0] == vips[i], (i, sa.get("local-vips"), vips[i])
                _ping_all(env, [vips[i] for i in on_a])
                leases = _assert_no_double(pg.conninfo)
                assert {leases[u.name].gateway for u in users} == {"gw-b"}
                assert all(leases[u.name].online for u in users)
                assert len(gw_b.ike_sas()) == N
                starts = _starts(fr, N + len(on_a))
                assert all(starts[users[i].name] == ["gw-a", "gw-b"] for i in on_a)
                print(f"\nset-up {t_env:.1f} s (then {fr_wait_s:.1f} s waiting for FreeRADIUS); "
                      f"{N} clients through {NAME}: {len(on_a)} on A, {len(on_b)} on B, "
                      f"up in {up_s:.1f} s, pinged in {ping_s:.1f} s; "
                      f"A's record withdrawn by B {withdrawn_s:.1f} s after SIGKILL; {len(on_a)} clients "
                      f"dropped and redialled onto B in {redial_s:.1f} s; total {time.monotonic() - t0:.1f} s")
                record_property("clients", N)
                record_property("spread", f"{len(on_a)}/{len(on_b)}")
                record_property("up_seconds", round(up_s, 1))
                record_property("withdrawn_seconds", round(withdrawn_s, 1))
            t_down = time.monotonic()
        finally:
            if gw_b is not None:
                gw_b.stop()
            if "knot" in extra:
                extra["knot"].stop()
            if "fr" in extra:
                extra["fr"].stop()
    print(f"tear-down {time.monotonic() - t_down:.1f} s, total {time.monotonic() - t0:.1f} s")
    assert time.monotonic() - t0 < 90
