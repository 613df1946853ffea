"""The daemon's side of PostgreSQL pools (``backend = "postgresql"``, docs/fleet.md).

* ``assigner(conn)``: the connection's asynchronous address assigner (ikev2.assign_async);
* ``on_event(ev)``: ``AddressNeeded`` → leases from the database in a task, handed back with
  ``IkeManager.assignment_ready``; ``VirtualIpAssigned``/``IkeDown`` → the lease is released
  when the IKE SA goes;
* ``start()``: schema check, this gateway's leases from a previous life go offline, heartbeat
  task; ``stop()``: closes.

Database unreachable: the new client is refused (INTERNAL_ADDRESS_FAILURE) with the reason
logged; established SAs are not touched; a release that fails is logged (the lease then stays
online until this gateway's heartbeat lapses or it restarts: never handed out twice).
"""
from __future__ import annotations

import asyncio
import ipaddress
import time

import structlog

from ikev2 import events as E
from ikev2.assign_async import AddressNeeded

from .postgres import PgPoolStore, PoolDbError

log = structlog.get_logger("vpn_gw.pools")


class _Assigner:
    asynchronous = True

    def __init__(self, conn):
        self.conn = conn

    def __call__(self, identity, req):  # pragma: no cover - the engine never calls it
        raise RuntimeError("asynchronous assigner called synchronously")


class PgPoolService:
    def __init__(self, config, gateway):
        self.gw = gateway
        self.pools = {p.name: p for p in config.pools if p.backend == "postgresql"}
        self.stores: dict[tuple, PgPoolStore] = {}
        for p in self.pools.values():
            s = p.postgres
            if s.key not in self.stores:
                self.stores[s.key] = PgPoolStore(s.database.reveal(), s.fleet_member,
                                                 heartbeat_timeout=s.heartbeat_timeout)
        self._owner: dict[int, tuple[str, tuple[str, ...]]] = {}  # ike_id -> (identity, pools)
        self._tasks: set[asyncio.Task] = set()
        self._heartbeats: list[asyncio.Task] = []
        self.refused = 0

    def uses(self, conn) -> bool:
        return any(p in self.pools for p in getattr(conn, "pools", ()))

    def assigner(self, conn) -> _Assigner:
        return _Assigner(conn)

    def _store(self, pool_name: str) -> PgPoolStore:
        return self.stores[self.pools[pool_name].postgres.key]

    # ------------------------------------------------------------------ events

    def on_event(self, ev) -> None:
        if isinstance(ev, AddressNeeded) and isinstance(ev.assigner, _Assigner):
            self._spawn(self._assign(ev))
        elif isinstance(ev, E.IkeDown) and ev.ike_id in self._owner:
            identity, names = self._owner.pop(ev.ike_id)
            self._spawn(self._release(identity, names))

    def _spawn(self, coro) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _assign(self, ev: AddressNeeded) -> None:
        from ikev2.cp import Assignment
        conn = ev.assigner.conn
        names = [n for n in conn.pools if n in self.pools]
        addrs, dns, subnets = [], [], []
        framed = self.gw.radius.framed(ev.identity) if getattr(self.gw, "radius", None) else None
        try:
            for version in sorted(ev.request.address_families):
                fixed = framed and (framed.ip4 if version == 4 else framed.ip6)
                if fixed:
                    addrs.append(ipaddress.ip_address(fixed))
                    continue
                fam = [n for n in names if self.pools[n].version == version]
                if not fam:
                    continue
                got = await self._store(fam[0]).acquire(fam, ev.identity, version,
                                                        requested=ev.request.requested(version))
                if got is None:
                    log.warning("address pool exhausted", connection=conn.name, identity=ev.identity,
                                family=version)
                    continue
                pool_name, addr = got
                addrs.append(ipaddress.ip_address(addr))
                self._owner[ev.ike_id] = (ev.identity, tuple(names))
                pc = self.pools[pool_name]
                dns += [d for d in pc.dns if d not in dns]
                subnets += [n for n in pc.subnets if n not in subnets]
        except PoolDbError as e:
            self.refused += 1
            log.error("new client refused: pool database unavailable", connection=conn.name,
                      identity=ev.identity, error=str(e))
            addrs = []
        if framed and framed.dns:
            dns = [ipaddress.ip_address(d) for d in framed.dns]
        assignment = Assignment(addresses=tuple(addrs), dns=tuple(dns), subnets=tuple(subnets)) \
            if addrs else None
        if not self.gw.manager.assignment_ready(ev.ike_id, ev.ticket, assignment, time.monotonic()):
            owner = self._owner.pop(ev.ike_id, None)  # the IKE SA went meanwhile
            if owner is not None:
                await self._release(*owner)
        self.gw.flush()

    async def _release(self, identity: str, names: tuple[str, ...]) -> None:
        by_store: dict[tuple, list[str]] = {}
        for n in names:
            by_store.setdefault(self.pools[n].postgres.key, []).append(n)
        for key, ns in by_store.items():
            try:
                rel = await self.stores[key].release(identity, ns)
                log.info("virtual IP released (lease kept for the same identity)", identity=identity,
                         addresses=[a for _, a in rel], backend="postgresql")
            except PoolDbError as e:
                log.error("cannot release a lease in the pool database", identity=identity, error=str(e))

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        for key, store in self.stores.items():
            try:
                n = await store.recover()
                st = await store.status()
                known = {p["name"]: p["addrs"] for p in st["pools"]}
                for p in self.pools.values():
                    if p.postgres.key != key:
                        continue
                    if p.name not in known:
                        log.error("pool missing in the database (vpn-gw pool add)", pool=p.name)
                    elif known[p.name] != p.addrs:
                        log.error("pool differs in the database", pool=p.name, config=p.addrs,
                                  database=known[p.name])
                log.info("pool database ready", fleet_member=store.gateway, leases_set_offline=n)
            except PoolDbError as e:
                log.error("pool database unavailable at start: new clients refused until it is back",
                          error=str(e))
            interval = min(p.postgres.heartbeat_interval for p in self.pools.values()
                           if p.postgres.key == key)
            self._heartbeats.append(asyncio.get_running_loop().create_task(self._beat(store, interval)))

    async def _beat(self, store: PgPoolStore, interval: float) -> None:
        failing = False
        while True:
            try:
                await store.heartbeat()
                if failing:
                    log.info("pool database reachable again")
                failing = False
            except PoolDbError as e:
                if not failing:
                    log.error("pool database heartbeat failed", error=str(e))
                failing = True
            await asyncio.sleep(interval)

    async def stop(self, timeout: float = 3.0) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
        for t in self._heartbeats + list(self._tasks):
            t.cancel()
        for s in self.stores.values():
            try:
                await s.close()
            except Exception as e:  # noqa: BLE001 - closing a broken connection
                log.debug("closing the pool database connection failed", error=str(e))
