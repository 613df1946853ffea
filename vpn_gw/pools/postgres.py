"""Address pools shared by a fleet of gateways, in PostgreSQL (psycopg 3, async).

Every gateway of the fleet points at the same database. Leases are rows, one per address of a
pool (created by ``vpn-gw pool add``); allocation takes row locks in a transaction
(``FOR UPDATE SKIP LOCKED``), so two gateways can never hand out one address: the primary key
is the address, the identity is unique per pool, and a row is only ever bound under its lock.

Same order of choice as the local pools (docs/remote-access.md):

1. the identity's existing lease in the listed pools, online or offline, on any gateway
   (**sticky across the fleet**);
2. the requested address if it is free (bound to nobody);
3. the lowest free address;
4. the oldest *offline* lease of another identity — offline means released, or held by a gateway
   whose heartbeat lapsed (a crashed gateway's leases become reusable only then; their
   identities still find them first under 1. until then and afterwards, unless reclaimed);
5. nothing (exhausted).

Heartbeats: each gateway upserts ``gateways(name, heartbeat = now())`` every
``heartbeat_interval``; the database's clock is the only one used, so gateways' clocks need not
agree. A lease is online when ``online > 0`` and its gateway's heartbeat is younger than
``heartbeat_timeout``.

Errors: every database failure is :class:`PoolDbError` with a one-line reason (unreachable,
authentication, schema missing or too old); the caller refuses the new client and logs it.
The connection is re-opened on the next call.
"""
from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vpn_gw.pools.local import _usable_bounds, parse_pool_addrs

MAX_POOL_SIZE = 1 << 16  # rows per pool (one per address)

# Versioned migrations: MIGRATIONS[i] brings the schema from version i to i + 1.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE vpngw_pools (
        id      serial PRIMARY KEY,
        name    text NOT NULL UNIQUE,
        addrs   text NOT NULL,
        family  smallint NOT NULL CHECK (family IN (4, 6))
    );
    CREATE TABLE vpngw_leases (
        pool_id     integer NOT NULL REFERENCES vpngw_pools(id) ON DELETE CASCADE,
        address     inet NOT NULL,
        identity    text,
        gateway     text,
        online      integer NOT NULL DEFAULT 0 CHECK (online >= 0),
        acquired    timestamptz,
        released    timestamptz,
        PRIMARY KEY (pool_id, address),
        UNIQUE (pool_id, identity),
        CHECK (identity IS NOT NULL OR online = 0)
    );
    CREATE INDEX vpngw_leases_free ON vpngw_leases (pool_id, address) WHERE identity IS NULL;
    CREATE TABLE vpngw_gateways (
        name        text PRIMARY KEY,
        heartbeat   timestamptz NOT NULL
    );
    """,
    # 2: the DNS records each fleet member published under the fleet's name ([[ddns]]
    # mode = "member"), so that a live member can withdraw those of a dead one (docs/fleet.md)
    """
    CREATE TABLE vpngw_dns_records (
        gateway     text NOT NULL,
        name        text NOT NULL,
        address     inet NOT NULL,
        PRIMARY KEY (gateway, name, address)
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class PoolDbError(Exception):
    """The pool database failed (one-line reason, no secrets)."""


@dataclass(frozen=True)
class PgLease:
    pool: str
    address: str
    identity: str | None
    gateway: str | None
    online: bool


def _family_rows(addrs: str) -> tuple[int, list[str]]:
    first, last, net = parse_pool_addrs(addrs)
    lo, hi = _usable_bounds(first, last, net)
    n = hi - lo + 1
    if n <= 0:
        raise ValueError(f"pool {addrs!r} has no usable address")
    if n > MAX_POOL_SIZE:
        raise ValueError(f"pool {addrs!r} has {n} addresses; at most {MAX_POOL_SIZE} in one "
                         f"PostgreSQL pool (use several pools)")
    make = ipaddress.IPv4Address if first.version == 4 else ipaddress.IPv6Address
    return first.version, [str(make(i)) for i in range(lo, hi + 1)]


def _why(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


class PgPoolStore:
    """One gateway's view of the shared pools. All methods are coroutines; calls are serialised
    on one connection (a lock), each in its own transaction."""

    def __init__(self, conninfo: str, gateway: str, *, heartbeat_timeout: float = 30.0,
                 connect_timeout: float = 5.0, op_timeout: float = 5.0):
        self.conninfo = conninfo
        self.op_timeout = op_timeout  # a call that takes longer fails (the server hangs or the path is gone)
        self.gateway = gateway
        self.heartbeat_timeout = heartbeat_timeout
        self.connect_timeout = connect_timeout
        self._conn = None
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ plumbing

    async def _connection(self):
        import psycopg
        if self._conn is None or self._conn.closed or self._conn.broken:
            try:
                self._conn = await psycopg.AsyncConnection.connect(
                    self.conninfo, connect_timeout=max(1, int(self.connect_timeout)),
                    application_name=f"vpn-gw {self.gateway}")
            except psycopg.Error as e:
                raise PoolDbError(f"cannot connect to the pool database: {_why(e)}") from None
        return self._conn

    async def _run(self, fn, *, check_schema: bool = True):
        """fn(cursor) in a transaction; psycopg errors become PoolDbError."""
        import psycopg

        async def txn(conn):
            async with conn.transaction(), conn.cursor() as cur:
                if check_schema:
                    await self._check_schema(cur)
                return await fn(cur)

        async with self._lock:
            conn = await self._connection()
            task = asyncio.ensure_future(txn(conn))
            done, _ = await asyncio.wait({task}, timeout=self.op_timeout)
            if not done:
                # the server (or the path to it) hangs: drop this connection without waiting for
                # it (psycopg's own cancellation waits up to 5 s more); the next call opens a new
                # one. The transaction never committed.
                self._conn = None
                try:
                    conn.pgconn.finish()
                except Exception:  # noqa: BLE001, S110 - it is being thrown away
                    pass
                task.cancel()
                task.add_done_callback(lambda t: t.cancelled() or t.exception())  # consumed
                raise PoolDbError(f"pool database did not answer within {self.op_timeout:g}s")
            try:
                return task.result()
            except psycopg.errors.UniqueViolation as e:
                raise _Conflict(_why(e)) from None
            except psycopg.Error as e:
                raise PoolDbError(f"pool database: {_why(e)}") from None

    async def _check_schema(self, cur) -> None:
        await cur.execute("SELECT to_regclass('vpngw_schema')")
        if (await cur.fetchone())[0] is None:
            raise PoolDbError("the pool database has no vpn-gw schema (run `vpn-gw pool init`)")
        await cur.execute("SELECT version FROM vpngw_schema")
        v = (await cur.fetchone())[0]
        if v != SCHEMA_VERSION:
            raise PoolDbError(f"pool database schema is version {v}, this vpn-gw needs "
                              f"{SCHEMA_VERSION} (run `vpn-gw pool init`)")

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    # ------------------------------------------------------------------ administration

    async def init_schema(self) -> tuple[int, int]:
        """Create or migrate the schema; returns (version before, version after)."""
        async def fn(cur):
            await cur.execute("SELECT pg_advisory_xact_lock(4242001)")  # one migrator at a time
            await cur.execute("CREATE TABLE IF NOT EXISTS vpngw_schema (version integer NOT NULL)")
            await cur.execute("SELECT version FROM vpngw_schema")
            row = await cur.fetchone()
            before = row[0] if row else 0
            if row is None:
                await cur.execute("INSERT INTO vpngw_schema VALUES (0)")
            if before > SCHEMA_VERSION:
                raise PoolDbError(f"pool database schema version {before} is newer than this "
                                  f"vpn-gw ({SCHEMA_VERSION})")
            for sql in MIGRATIONS[before:]:
                await cur.execute(sql)
            await cur.execute("UPDATE vpngw_schema SET version = %s", (SCHEMA_VERSION,))
            return before, SCHEMA_VERSION
        return await self._run(fn, check_schema=False)

    async def add_pool(self, name: str, addrs: str) -> int:
        family, rows = _family_rows(addrs)

        async def fn(cur):
            await cur.execute("SELECT 1 FROM vpngw_pools WHERE name = %s", (name,))
            if await cur.fetchone():
                raise PoolDbError(f"pool {name!r} exists already (delete it first)")
            await cur.execute("INSERT INTO vpngw_pools (name, addrs, family) VALUES (%s, %s, %s) "
                              "RETURNING id", (name, addrs, family))
            pid = (await cur.fetchone())[0]
            await cur.execute("INSERT INTO vpngw_leases (pool_id, address) "
                              "SELECT %s, a::inet FROM unnest(%s::text[]) AS a", (pid, rows))
            return len(rows)
        return await self._run(fn)

    async def del_pool(self, name: str, *, force: bool = False) -> int:
        async def fn(cur):
            await cur.execute(f"SELECT count(*) FILTER (WHERE {self._online_sql('l')}) "
                              "FROM vpngw_leases l JOIN vpngw_pools p ON p.id = l.pool_id "
                              "LEFT JOIN vpngw_gateways g ON g.name = l.gateway WHERE p.name = %s",
                              (self.heartbeat_timeout, name))
            online = (await cur.fetchone())[0]
            if online and not force:
                raise PoolDbError(f"pool {name!r} has {online} online lease(s) (--force deletes anyway)")
            await cur.execute("DELETE FROM vpngw_pools WHERE name = %s", (name,))
            if cur.rowcount == 0:
                raise PoolDbError(f"no pool {name!r}")
            return online
        return await self._run(fn)

    @staticmethod
    def _online_sql(t: str) -> str:
        return (f"({t}.online > 0 AND g.heartbeat IS NOT NULL AND "
                f"g.heartbeat > now() - make_interval(secs => %s))")

    async def status(self) -> dict[str, Any]:
        async def fn(cur):
            await cur.execute(
                f"SELECT p.name, p.addrs, count(*), count(l.identity), "
                f"count(*) FILTER (WHERE {self._online_sql('l')}) "
                "FROM vpngw_pools p JOIN vpngw_leases l ON l.pool_id = p.id "
                "LEFT JOIN vpngw_gateways g ON g.name = l.gateway GROUP BY p.name, p.addrs ORDER BY p.name",
                (self.heartbeat_timeout,))
            pools = [{"name": n, "addrs": a, "size": s, "bound": b, "online": o,
                      "offline": b - o, "free": s - b} for n, a, s, b, o in await cur.fetchall()]
            await cur.execute("SELECT name, extract(epoch FROM now() - heartbeat) FROM vpngw_gateways "
                              "ORDER BY name")
            gws = [{"name": n, "heartbeat_age": float(age),
                    "alive": float(age) < self.heartbeat_timeout} for n, age in await cur.fetchall()]
            return {"pools": pools, "gateways": gws}
        return await self._run(fn)

    async def leases(self, pool: str | None = None) -> list[PgLease]:
        async def fn(cur):
            await cur.execute(
                f"SELECT p.name, host(l.address), l.identity, l.gateway, {self._online_sql('l')} "
                "FROM vpngw_leases l JOIN vpngw_pools p ON p.id = l.pool_id "
                "LEFT JOIN vpngw_gateways g ON g.name = l.gateway "
                "WHERE l.identity IS NOT NULL AND (%s::text IS NULL OR p.name = %s) "
                "ORDER BY p.name, l.address", (self.heartbeat_timeout, pool, pool))
            return [PgLease(*r) for r in await cur.fetchall()]
        return await self._run(fn)

    # ------------------------------------------------------------------ the gateway's calls

    async def heartbeat(self) -> None:
        async def fn(cur):
            await cur.execute("INSERT INTO vpngw_gateways (name, heartbeat) VALUES (%s, now()) "
                              "ON CONFLICT (name) DO UPDATE SET heartbeat = now()", (self.gateway,))
        await self._run(fn)

    async def recover(self) -> int:
        """At start: this gateway's leases from its previous life go offline (no SA survives a
        restart); still bound to their identities (sticky). Returns how many."""
        async def fn(cur):
            await cur.execute("UPDATE vpngw_leases SET online = 0, released = now() "
                              "WHERE gateway = %s AND online > 0", (self.gateway,))
            n = cur.rowcount
            await cur.execute("INSERT INTO vpngw_gateways (name, heartbeat) VALUES (%s, now()) "
                              "ON CONFLICT (name) DO UPDATE SET heartbeat = now()", (self.gateway,))
            return n
        return await self._run(fn)

    # ------------------------------------------------------------------ the fleet's DNS records

    async def dns_register(self, names: Sequence[str], addresses: Sequence[str]) -> list[str]:
        """This gateway publishes ``addresses`` under ``names``: recorded (with a fresh heartbeat,
        so no other member reaps them meanwhile) before the DNS update is sent. Returns this
        gateway's other addresses recorded under these names (from a previous life or before an
        address change): the caller withdraws them from DNS too."""
        async def fn(cur):
            await cur.execute("INSERT INTO vpngw_gateways (name, heartbeat) VALUES (%s, now()) "
                              "ON CONFLICT (name) DO UPDATE SET heartbeat = now()", (self.gateway,))
            await cur.execute("SELECT DISTINCT host(address) FROM vpngw_dns_records WHERE gateway = %s "
                              "AND name = ANY(%s) AND NOT (host(address) = ANY(%s))",
                              (self.gateway, list(names), list(addresses)))
            stale = [r[0] for r in await cur.fetchall()]
            for name in names:
                for a in addresses:
                    await cur.execute("INSERT INTO vpngw_dns_records (gateway, name, address) "
                                      "VALUES (%s, %s, %s) ON CONFLICT DO NOTHING", (self.gateway, name, a))
            return stale
        return await self._run(fn)

    async def dns_unregister(self, names: Sequence[str], addresses: Sequence[str] | None = None) -> None:
        """This gateway's records under ``names`` (all, or only ``addresses``) were withdrawn."""
        async def fn(cur):
            if addresses is None:
                await cur.execute("DELETE FROM vpngw_dns_records WHERE gateway = %s AND name = ANY(%s)",
                                  (self.gateway, list(names)))
            else:
                await cur.execute("DELETE FROM vpngw_dns_records WHERE gateway = %s AND name = ANY(%s) "
                                  "AND host(address) = ANY(%s)", (self.gateway, list(names), list(addresses)))
        await self._run(fn)

    async def dns_records(self) -> list[tuple[str, str, str, bool]]:
        """Every member's recorded DNS records: (gateway, name, address, gateway alive)."""
        async def fn(cur):
            await cur.execute(
                "SELECT r.gateway, r.name, host(r.address), "
                "coalesce(g.heartbeat > now() - make_interval(secs => %s), false) "
                "FROM vpngw_dns_records r LEFT JOIN vpngw_gateways g ON g.name = r.gateway "
                "ORDER BY r.gateway, r.name, r.address", (self.heartbeat_timeout,))
            return [(g, n, a, bool(alive)) for g, n, a, alive in await cur.fetchall()]
        return await self._run(fn)

    async def dns_reap(self, names: Sequence[str], withdraw) -> list[tuple[str, str]]:
        """Withdraw the DNS records under ``names`` of members whose heartbeat lapsed:
        ``await withdraw(addresses)`` (True when DNS no longer has them) runs while their rows
        are locked (one live member reaps, the others skip them; a dead member that comes back
        records its new publication only after this transaction). An address that a live
        member also publishes is not withdrawn. Returns the (gateway, address) pairs withdrawn."""
        async def fn(cur):
            await cur.execute(
                "SELECT r.gateway, host(r.address) FROM vpngw_dns_records r "
                "LEFT JOIN vpngw_gateways g ON g.name = r.gateway "
                "WHERE r.name = ANY(%s) AND r.gateway <> %s AND (g.heartbeat IS NULL OR "
                "g.heartbeat <= now() - make_interval(secs => %s)) "
                "FOR UPDATE OF r SKIP LOCKED", (list(names), self.gateway, self.heartbeat_timeout))
            dead = sorted(set(await cur.fetchall()))
            if not dead:
                return []
            await cur.execute(
                "SELECT DISTINCT host(r.address) FROM vpngw_dns_records r JOIN vpngw_gateways g "
                "ON g.name = r.gateway WHERE r.name = ANY(%s) AND "
                "g.heartbeat > now() - make_interval(secs => %s)", (list(names), self.heartbeat_timeout))
            live = {r[0] for r in await cur.fetchall()}
            addrs = sorted({a for _, a in dead if a not in live})
            if addrs and not await withdraw(addrs):
                return []
            for gw, a in dead:
                await cur.execute("DELETE FROM vpngw_dns_records WHERE gateway = %s AND name = ANY(%s) "
                                  "AND host(address) = %s", (gw, list(names), a))
            return dead
        return await self._run(fn)

    async def acquire(self, names: Sequence[str], identity: str, version: int, *,
                      requested: Any = None) -> tuple[str, str] | None:
        """(pool, address) for ``identity`` from the first of ``names`` that has one (see the
        module docstring for the order), or None if all are exhausted."""
        if not identity:
            raise ValueError("empty identity")
        req = str(requested) if requested is not None and not ipaddress.ip_address(requested).is_unspecified \
            else None
        for _ in range(3):  # a unique violation = another gateway bound this identity meanwhile
            try:
                return await self._run(lambda cur: self._acquire(cur, list(names), identity, version, req))
            except _Conflict:
                continue
        raise PoolDbError(f"could not allocate for {identity!r}: concurrent updates")

    async def _acquire(self, cur, names: list[str], identity: str, version: int, req: str | None):
        await cur.execute("SELECT id, name FROM vpngw_pools WHERE name = ANY(%s) AND family = %s",
                          (names, version))
        ids = {name: pid for pid, name in await cur.fetchall()}
        ordered = [(n, ids[n]) for n in names if n in ids]
        if not ordered:
            return None
        pool_ids = [pid for _, pid in ordered]
        name_of = {pid: n for n, pid in ordered}
        # 1. sticky: the identity's lease in any of the pools
        await cur.execute("SELECT pool_id, host(address), gateway, online FROM vpngw_leases "
                          "WHERE pool_id = ANY(%s) AND identity = %s ORDER BY pool_id "
                          "FOR UPDATE", (pool_ids, identity))
        rows = await cur.fetchall()
        if rows:
            pid, addr, gw, online = rows[0]
            await cur.execute("UPDATE vpngw_leases SET gateway = %s, online = %s, acquired = now(), "
                              "released = NULL WHERE pool_id = %s AND address = %s",
                              (self.gateway, online + 1 if gw == self.gateway else 1, pid, addr))
            return name_of[pid], addr
        # 2. the requested address, if free
        if req is not None:
            await cur.execute("SELECT pool_id, host(address) FROM vpngw_leases WHERE pool_id = ANY(%s) "
                              "AND address = %s::inet AND identity IS NULL FOR UPDATE SKIP LOCKED",
                              (pool_ids, req))
            row = await cur.fetchone()
            if row:
                return await self._bind(cur, row[0], row[1], identity, name_of)
        # 3. the lowest free address, pool by pool
        for _, pid in ordered:
            await cur.execute("SELECT host(address) FROM vpngw_leases WHERE pool_id = %s AND "
                              "identity IS NULL ORDER BY address LIMIT 1 FOR UPDATE SKIP LOCKED", (pid,))
            row = await cur.fetchone()
            if row:
                return await self._bind(cur, pid, row[0], identity, name_of)
        # 4. the oldest offline lease (released, or its gateway's heartbeat lapsed)
        for _, pid in ordered:
            await cur.execute(
                "SELECT host(l.address) FROM vpngw_leases l LEFT JOIN vpngw_gateways g "
                "ON g.name = l.gateway WHERE l.pool_id = %s AND l.identity IS NOT NULL AND NOT "
                f"{self._online_sql('l')} ORDER BY l.released NULLS FIRST, l.address LIMIT 1 "
                "FOR UPDATE OF l SKIP LOCKED", (pid, self.heartbeat_timeout))
            row = await cur.fetchone()
            if row:
                return await self._bind(cur, pid, row[0], identity, name_of)
        return None

    async def _bind(self, cur, pid: int, addr: str, identity: str, name_of) -> tuple[str, str]:
        await cur.execute("UPDATE vpngw_leases SET identity = %s, gateway = %s, online = 1, "
                          "acquired = now(), released = NULL WHERE pool_id = %s AND address = %s",
                          (identity, self.gateway, pid, addr))
        return name_of[pid], addr

    async def release(self, identity: str, names: Sequence[str] | None = None) -> list[tuple[str, str]]:
        """One session of ``identity`` on this gateway ended; the lease stays bound (sticky).
        A lease meanwhile taken over by another gateway is left alone."""
        async def fn(cur):
            await cur.execute(
                "UPDATE vpngw_leases l SET online = greatest(online - 1, 0), "
                "released = CASE WHEN online <= 1 THEN now() ELSE released END "
                "FROM vpngw_pools p WHERE p.id = l.pool_id AND l.identity = %s AND l.gateway = %s "
                "AND l.online > 0 AND (%s::text[] IS NULL OR p.name = ANY(%s)) "
                "RETURNING p.name, host(l.address)",
                (identity, self.gateway, list(names) if names is not None else None,
                 list(names) if names is not None else None))
            return [tuple(r) for r in await cur.fetchall()]
        return await self._run(fn)


class _Conflict(Exception):
    pass
