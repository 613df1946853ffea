"""The daemon's dynamic-DNS duties (see docs/ddns.md):

* peers named by FQDN: resolve on every initiation (and retry), and when a name's TTL expires
  while its IKE SA is up; DNS never moves an SA — if the name now points elsewhere, the SA is
  asked for a liveness check, and only if that fails is the connection restarted (towards the
  new address);
* publishing our own address: one netlink watcher per WAN interface, one publisher per
  ``[[ddns]]`` table (RFC 2136 + TSIG, or dyndns2), re-published every ``update_period``;
* a fleet under one name (``mode = "member"``, docs/fleet.md): each gateway adds and withdraws
  only its own records; with ``fleet_pool``, the records are also kept in the pool database and
  a live member withdraws those of a member whose heartbeat lapsed.
"""
from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

import vpn_gw.ddns as ddns  # its modules load on first use: no DNS library at start-up without FQDNs

if TYPE_CHECKING:  # pragma: no cover
    from vpn_gw.ddns import AddressWatcher, PeerResolver

log = structlog.get_logger("vpn_gw.ddns")

CHECK_INTERVAL = 1.0
WITHDRAW_TIMEOUT = 2.0  # a withdrawal at shutdown or of a dead member's record waits at most this


def is_fqdn(target: str) -> bool:
    try:
        ipaddress.ip_address(target)
        return False
    except ValueError:
        return True


def _names(t) -> list[str]:
    """A table's names as kept in the pool database (lower case, no trailing dot)."""
    return [n.lower().rstrip(".") for n in t.names]


def _secret(v) -> str:
    v = v.reveal() if hasattr(v, "reveal") else v
    return v.decode() if isinstance(v, bytes) else str(v)


class DdnsService:
    def __init__(self, config, gateway):
        self.gw = gateway
        self._config = config
        self._resolver: PeerResolver | None = None  # made on the first FQDN to resolve
        self.tables = list(config.ddns)
        self.watchers: dict[str, AddressWatcher] = {}
        self.publishers: list[tuple[Any, Any]] = []  # (DdnsConfig, publisher)
        self._tasks: list[asyncio.Task] = []
        self._last_published: dict[int, float] = {}
        self._retry_at: dict[int, float] = {}  # [[ddns]] table -> when to retry a failed publication
        self._fleet: dict[int, tuple[Any, float]] = {}  # member table -> (PgPoolStore, reap interval)

    # ------------------------------------------------------------------ peer resolution

    @property
    def resolver(self) -> PeerResolver:
        if self._resolver is None:
            c = self._config
            self._resolver = ddns.PeerResolver([str(s) for s in c.dns_servers] or None, c.dns_port,
                                               c.dns_timeout, c.dns_min_ttl, c.dns_max_ttl)
        return self._resolver

    async def resolve(self, fqdn: str) -> list[str]:
        res = await self.resolver.resolve(fqdn)
        if res.error:
            if getattr(res, "previous", None):
                log.warning("DNS look-up failed, using the previous addresses", name=fqdn, error=res.error,
                            addresses=list(res.previous))
                return list(res.previous)
            log.warning("DNS look-up failed", name=fqdn, error=res.error)
            return []
        log.info("resolved peer name", name=fqdn, addresses=list(res.addresses), ttl=res.ttl)
        return list(res.addresses)

    async def _watch_ttls(self) -> None:
        while True:
            await asyncio.sleep(CHECK_INTERVAL)
            if self._resolver is None:
                continue  # nothing resolved yet
            for fqdn in self._resolver.due(time.monotonic()):
                sas = self.gw.sas_for_fqdn(fqdn)
                if not sas:
                    self.resolver.forget(fqdn)
                    continue
                addrs = await self.resolve(fqdn)
                for sa in sas:
                    if addrs and sa.remote[0] not in addrs:
                        log.info("peer's DNS name now points elsewhere; checking the current path "
                                 "(only authenticated packets move an SA)", name=fqdn,
                                 current=sa.remote[0], dns=addrs, connection=sa.name)
                        self.gw.liveness_check(sa)

    # ------------------------------------------------------------------ publishing

    def _publisher(self, t):
        if t.method == "rfc2136":
            return ddns.DnsUpdatePublisher(t.zone, list(t.names), t.server, t.port, tsig_name=t.tsig_name,
                                      tsig_secret_b64=_secret(t.tsig_secret), tsig_algorithm=t.tsig_algorithm,
                                      ttl=t.ttl, families=t.families, mode=t.mode)
        return ddns.Dyndns2Publisher(t.server, list(t.names), t.user, _secret(t.password), t.port, t.path,
                                t.scheme, str(t.ca_file) if t.ca_file else None, t.user_agent)

    async def _publish(self, t, pub, addresses: list[str], force: bool) -> None:
        self._retry_at.pop(id(t), None)
        addrs = [a for a in addresses if ipaddress.ip_address(a).version in t.families]
        if not addrs:
            log.info("nothing to publish (no address of the wanted families)", interface=t.interface,
                     names=list(t.names))
            return
        if t.method == "rfc2136":
            stale: list[str] = []
            fleet = self._fleet.get(id(t))
            if fleet is not None:
                try:  # recorded before it is sent: a member that reaps never misses it
                    stale = await fleet[0].dns_register(_names(t), addrs)
                except Exception as e:  # noqa: BLE001 - PoolDbError: DNS is published all the same
                    log.warning("cannot record our DNS records in the pool database (a crash would "
                                "leave them until this gateway restarts)", names=list(t.names), error=str(e))
            res = await pub.publish(addrs, withdraw=stale)
            if res.ok and stale:
                log.info("withdrew our earlier DNS records", names=list(t.names), addresses=stale)
                await self._unregister(t, stale)
        else:
            res = await pub.publish(addrs[0], force=force)
        self._last_published[id(t)] = time.monotonic()
        m = getattr(self.gw, "metrics", None)
        if m is not None:
            m.ddns_publish.labels(t.method, "ok" if res.ok else "failed").inc()
        if res.ok:
            log.info("published our address", method=t.method, names=list(t.names), addresses=addrs,
                     sent=getattr(res, "sent", True))
        else:
            log.warning("publishing our address failed", method=t.method, names=list(t.names),
                        error=res.error, stopped=getattr(res, "stopped", False))
            retry_at = getattr(res, "retry_at", None)
            if retry_at is not None and not getattr(res, "stopped", False):
                self._retry_at[id(t)] = retry_at

    def _on_change(self, interface: str) -> Callable:
        def cb(addresses: list[str]) -> None:
            # In the background: an unanswering DNS server or provider never delays the gateway.
            for t, pub in self.publishers:
                if t.interface == interface:
                    self._spawn(self._publish(t, pub, list(addresses), force=False))
        return cb

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(CHECK_INTERVAL * 5)
            now = time.monotonic()
            for t, pub in self.publishers:
                last = self._last_published.get(id(t), now)
                retry = self._retry_at.get(id(t))
                due_retry = retry is not None and now >= retry
                if due_retry or (t.update_period and now - last >= t.update_period):
                    w = self.watchers.get(t.interface)
                    await self._publish(t, pub, list(w.addresses) if w else [], force=True)

    # ------------------------------------------------------------------ fleet members

    async def _unregister(self, t, addresses: list[str] | None) -> None:
        fleet = self._fleet.get(id(t))
        if fleet is None:
            return
        try:
            await fleet[0].dns_unregister(_names(t), addresses)
        except Exception as e:  # noqa: BLE001 - PoolDbError
            log.warning("cannot update our DNS records in the pool database", error=str(e))

    async def _reap(self, t, pub, store, interval: float) -> None:
        """Withdraw the records of members whose heartbeat lapsed (every heartbeat interval)."""
        async def withdraw(addresses: list[str]) -> bool:
            try:
                res = await asyncio.wait_for(pub.withdraw_records(addresses), WITHDRAW_TIMEOUT)
            except TimeoutError:
                log.warning("withdrawing a dead fleet member's DNS records timed out", addresses=addresses)
                return False
            if not res.ok:
                log.warning("withdrawing a dead fleet member's DNS records failed", addresses=addresses,
                            error=res.error)
            return res.ok
        while True:
            await asyncio.sleep(interval)
            try:
                gone = await store.dns_reap(_names(t), withdraw)
            except Exception as e:  # noqa: BLE001 - PoolDbError: try again next interval
                log.debug("cannot check the fleet's DNS records", error=str(e))
                continue
            for member, address in gone:
                log.warning("withdrew the DNS record of a fleet member whose heartbeat lapsed",
                            member=member, address=address, names=list(t.names))

    async def withdraw(self) -> None:
        """At shutdown, before the SAs are deleted (their clients redial the name and must not
        find us): member-mode publishers delete exactly their own records."""
        for t, pub in self.publishers:
            if getattr(pub, "mode", "replace") != "member" or not pub.published:
                continue
            addrs = list(pub.published)
            try:
                res = await asyncio.wait_for(pub.withdraw(), WITHDRAW_TIMEOUT)
            except TimeoutError:
                log.warning("withdrawing our DNS records timed out", names=list(t.names), addresses=addrs)
                continue
            if res.ok:
                log.info("withdrew our DNS records", names=list(t.names), addresses=addrs)
                await self._unregister(t, addrs)
            else:
                log.warning("withdrawing our DNS records failed", names=list(t.names), error=res.error)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._watch_ttls()))
        for t in self.tables:
            pub = self._publisher(t)
            self.publishers.append((t, pub))
            if getattr(t, "mode", "replace") != "member":
                continue
            fleet_pools = getattr(self.gw, "fleet_pools", None)
            if t.fleet_pool is None or fleet_pools is None:
                log.warning("ddns member without fleet_pool: if this gateway dies without withdrawing "
                            "its record, the record stays until it restarts (clients retry the other "
                            "addresses of the name)", names=list(t.names))
                continue
            settings = fleet_pools.pools[t.fleet_pool].postgres
            store = fleet_pools.stores[settings.key]
            self._fleet[id(t)] = (store, settings.heartbeat_interval)
            self._tasks.append(loop.create_task(self._reap(t, pub, store, settings.heartbeat_interval)))
        for iface in {t.interface for t in self.tables}:
            self._spawn(self._start_watcher(iface))
        if self.publishers:
            self._tasks.append(loop.create_task(self._periodic()))

    async def _start_watcher(self, iface: str) -> None:
        """Start the interface's watcher; a failure (e.g. EBUSY from a netlink bind racing with
        the data plane's netlink socket at start-up) is retried after 1 s, doubling up to 30 s:
        a gateway must not stay unpublished for its whole life because of one failed start."""
        delay = 1.0
        while True:
            w = ddns.AddressWatcher(iface, self._on_change(iface))
            try:
                await w.start()
                self.watchers[iface] = w
                return
            except Exception as e:  # noqa: BLE001 - a missing interface must not stop the gateway
                log.error("cannot watch interface for DDNS (retrying)", interface=iface, error=str(e),
                          retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for w in self.watchers.values():
            await w.stop()
