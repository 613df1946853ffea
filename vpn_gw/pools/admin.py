"""``vpn-gw pool init|status|add|del``: administration of the PostgreSQL pools, like strongSwan's
``pool`` utility (docs/fleet.md). The database comes from ``--database CONNINFO`` or from the
``database`` of the ``backend = "postgresql"`` pools of ``-c FILE``."""
from __future__ import annotations

import asyncio
import json
import sys


def _database(args) -> tuple[str, dict]:
    """(conninfo, {pool name: addrs} from the configuration)."""
    pools: dict[str, str] = {}
    conninfo = args.database
    if args.config:
        from vpn_gw.config import load_config
        cfg = load_config(args.config)
        pg = [p for p in cfg.pools if p.postgres is not None]
        pools = {p.name: p.addrs for p in pg}
        dbs = {p.postgres.database.reveal() for p in pg if p.postgres is not None}
        if conninfo is None:
            if len(dbs) != 1:
                raise _Fail(f"{args.config}: {'no' if not dbs else 'more than one'} PostgreSQL pool "
                            f"database; give --database")
            conninfo = dbs.pop()
    if conninfo is None:
        raise _Fail("give -c FILE (a configuration with backend = \"postgresql\" pools) or --database")
    return conninfo, pools


class _Fail(Exception):
    pass


async def _main(args) -> int:
    from vpn_gw.pools.postgres import PgPoolStore
    conninfo, pools = _database(args)
    store = PgPoolStore(conninfo, "vpn-gw pool")
    try:
        if args.pool_command == "init":
            before, after = await store.init_schema()
            print(f"schema version {after}" + (" (unchanged)" if before == after else f" (was {before})"))
        elif args.pool_command == "add":
            addrs = args.addrs or pools.get(args.name)
            if addrs is None:
                raise _Fail(f"no addresses for pool {args.name!r}: give them, or a configuration "
                            f"that defines it")
            try:
                n = await store.add_pool(args.name, addrs)
            except ValueError as e:
                raise _Fail(str(e)) from None
            print(f"pool {args.name}: {addrs}, {n} addresses")
        elif args.pool_command == "del":
            online = await store.del_pool(args.name, force=args.force)
            print(f"pool {args.name} deleted" + (f" ({online} online leases dropped)" if online else ""))
        else:
            st = await store.status()
            if args.leases:
                st["leases"] = [lz.__dict__ for lz in await store.leases()]
            if args.json:
                print(json.dumps(st, indent=2))
            else:
                for p in st["pools"]:
                    print(f"{p['name']:<16} {p['addrs']:<28} size {p['size']:>6}  online {p['online']:>6}"
                          f"  offline {p['offline']:>6}  free {p['free']:>6}")
                for g in st["gateways"]:
                    print(f"gateway {g['name']:<24} heartbeat {g['heartbeat_age']:.0f}s ago"
                          f"{'' if g['alive'] else '  (dead)'}")
                for lz in st.get("leases", []):
                    print(f"  {lz['pool']:<14} {lz['address']:<40} {lz['identity']:<32} "
                          f"{lz['gateway'] or '-':<16} {'online' if lz['online'] else 'offline'}")
    finally:
        await store.close()
    return 0


def cmd_pool(args) -> int:
    from vpn_gw.config import ConfigError
    from vpn_gw.pools.postgres import PoolDbError
    try:
        return asyncio.run(_main(args))
    except (_Fail, PoolDbError) as e:
        print(f"vpn-gw pool: {e}", file=sys.stderr)
        return 1
    except ConfigError as e:
        print(f"vpn-gw pool: {e}", file=sys.stderr)
        return 1


def add_parser(sub, common) -> None:
    pl = sub.add_parser("pool", parents=[common], help="administer PostgreSQL address pools (docs/fleet.md)",
                        description="Administer the address pools that a fleet of gateways shares in "
                                    "PostgreSQL ([[pool]] backend = \"postgresql\", docs/fleet.md): create "
                                    "or migrate the schema (init), show pools, leases and gateway heartbeats "
                                    "(status), add or delete a pool. Exit 0 on success, 1 on an error "
                                    "(database unreachable, unknown pool, pool in use without --force).")
    pl.add_argument("-c", "--config", metavar="FILE", help="configuration with backend = \"postgresql\" pools")
    pl.add_argument("--database", metavar="CONNINFO", help="libpq connection string (instead of -c)")
    ps = pl.add_subparsers(dest="pool_command", metavar="POOL_COMMAND")
    ps.required = True
    ps.add_parser("init", help="create or migrate the schema")
    st = ps.add_parser("status", help="pools, leases, gateways and their heartbeats")
    st.add_argument("--json", action="store_true")
    st.add_argument("--leases", action="store_true", help="list the bound leases too")
    a = ps.add_parser("add", help="add a pool (one row per address)")
    a.add_argument("name")
    a.add_argument("addrs", nargs="?", help="CIDR or range (default: the pool's addrs in -c FILE)")
    d = ps.add_parser("del", help="delete a pool and its leases")
    d.add_argument("name")
    d.add_argument("--force", action="store_true", help="even with online leases")
    pl.set_defaults(func=cmd_pool)
