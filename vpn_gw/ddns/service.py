"""The daemon's dynamic-DNS duties (see docs/ddns.md):

* peers named by FQDN: resolve on every initiation (and retry), and when a name's TTL expires
  while its IKE SA is up; DNS never moves an SA — if the name now points elsewhere, the SA is
  asked for a liveness check, and only if that fails is the connection restarted (towards the
  new address);
* publishing our own address: one netlink watcher per WAN interface, one publisher per
  ``[[ddns]]`` table (RFC 2136 + TSIG, or dyndns2), re-published every ``update_period``.
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


def is_fqdn(target: str) -> bool:
    try:
        ipaddress.ip_address(target)
        return False
    except ValueError:
        return True


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
                                      ttl=t.ttl, families=t.families)
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
            res = await pub.publish(addrs)
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

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._watch_ttls()))
        for t in self.tables:
            self.publishers.append((t, self._publisher(t)))
        for iface in {t.interface for t in self.tables}:
            self._spawn(self._start_watcher(iface))
        if self.publishers:
            self._tasks.append(loop.create_task(self._periodic()))

    async def _start_watcher(self, iface: str) -> None:
        w = ddns.AddressWatcher(iface, self._on_change(iface))
        try:
            await w.start()
            self.watchers[iface] = w
        except Exception as e:  # noqa: BLE001 - a missing interface must not stop the gateway
            log.error("cannot watch interface for DDNS", interface=iface, error=str(e))

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for w in self.watchers.values():
            await w.stop()
