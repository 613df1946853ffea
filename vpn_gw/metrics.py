"""Prometheus metrics of the gateway (docs/metrics.md), with prometheus_client.

Two kinds, so that nothing costs anything per packet:

* read at scrape time by :class:`GatewayCollector` from the state the gateway keeps anyway:
  IKE and Child SAs by connection and state, half-open SAs, traffic per connection (the data
  plane's per-SA counters, plus the totals of Child SAs already gone, kept by
  :meth:`GatewayMetrics.child_removed`), drops by reason (IKE layer and ESP layer), pool sizes
  and leases, probe answers;
* bumped by the daemon on events (:class:`GatewayMetrics` counters): exchanges by type and
  result, IKE set-up latency, COOKIEs sent, EAP results by method, DDNS publish results.

:class:`MetricsServer` serves ``GET /metrics`` from the daemon's own event loop (asyncio), so a
scrape reads the gateway's state in the same thread that changes it: no locks, no races.
"""
from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ikev2 import events as E

__all__ = ["SETUP_BUCKETS", "GatewayCollector", "GatewayMetrics", "MetricsServer"]

PREFIX = "vpngw"
SETUP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
MAX_REQUEST = 8192       # bytes of request line + headers we read
REQUEST_TIMEOUT = 5.0    # seconds a client may take to send them


class GatewayMetrics:
    """The registry and the event counters; :meth:`bind` adds the scrape-time collector."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.exchanges = Counter(f"{PREFIX}_exchanges", "Encrypted IKE exchanges completed (IKE_AUTH, "
                                 "CREATE_CHILD_SA, INFORMATIONAL), by type, our role and result (ok, "
                                 "refused, failed)", ["exchange", "role", "result"], registry=r)
        self.setup_seconds = Histogram(f"{PREFIX}_ike_setup_seconds", "Time from the first IKE_SA_INIT "
                                       "to the IKE SA established (both roles)", buckets=SETUP_BUCKETS,
                                       registry=r)
        self.cookies_sent = Counter(f"{PREFIX}_cookies_sent", "COOKIE challenges sent to IKE_SA_INIT "
                                    "requests (RFC 7296 2.6)", registry=r)
        self.eap = Counter(f"{PREFIX}_eap_authentications", "EAP authentications of clients, by method "
                           "and result", ["method", "result"], registry=r)
        self.auth_failures = Counter(f"{PREFIX}_auth_failures", "IKE SAs that failed authentication, by "
                                     "connection", ["connection"], registry=r)
        self.ddns_publish = Counter(f"{PREFIX}_ddns_publish", "Dynamic DNS publications, by method and "
                                    "result", ["method", "result"], registry=r)
        # totals of Child SAs that are gone, per connection: bytes_in, packets_in, bytes_out, packets_out
        self.retired: dict[str, list[int]] = {}
        self.retired_drops: dict[str, int] = {}

    def bind(self, gateway: Any) -> None:
        self.registry.register(GatewayCollector(gateway, self))

    # ---- events from the daemon
    def child_removed(self, connection: str, counters: Any) -> None:
        """Keep a deleted Child SA's traffic in its connection's totals (counters never go back)."""
        if counters is None:
            return
        t = self.retired.setdefault(connection, [0, 0, 0, 0])
        t[0] += counters.bytes_in
        t[1] += counters.packets_in
        t[2] += counters.bytes_out
        t[3] += counters.packets_out
        for reason, n in (counters.drops or {}).items():
            self.retired_drops[reason] = self.retired_drops.get(reason, 0) + n

    def exchange_done(self, exchange: str, role: str, outcome: str) -> None:
        # the engine's outcome is free text (for logs); the label keeps a few values
        o = outcome.lower()
        result = "refused" if o.startswith("refused") else "failed" if "fail" in o or "error" in o else "ok"
        self.exchanges.labels(exchange, role, result).inc()

    def ike_up(self, seconds: float) -> None:
        self.setup_seconds.observe(max(seconds, 0.0))

    def on_event(self, gw: Any, ev: Any) -> None:
        """The daemon calls this for every engine event, before acting on it."""
        if isinstance(ev, E.ExchangeDone):
            self.exchange_done(ev.exchange, ev.role, ev.outcome)
        elif isinstance(ev, E.ChildDown):
            self.child_removed(ev.ike_name, gw.dataplane.counters(ev.spi_in))
        elif isinstance(ev, E.IkeUp):
            sa = gw.manager.by_id(ev.ike_id)
            if sa is not None and getattr(sa, "established_at", None) is not None:
                self.ike_up(sa.established_at - sa.created)
        elif isinstance(ev, E.AuthFailed):
            self.auth_failures.labels(ev.ike_name or "?").inc()

    def on_log(self, event: str, fields: dict) -> None:
        """The engine's log lines (a dict lookup when the line is not one we count)."""
        if event == "asking for a cookie":
            self.cookies_sent.inc()
        elif event == "EAP authentication succeeded":
            self.eap.labels(str(fields.get("method", "?")), "success").inc()
        elif event == "EAP authentication failed":
            self.eap.labels(str(fields.get("method", "?")), "failure").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class GatewayCollector:
    """Reads the gateway's state when Prometheus scrapes (cost: one pass over the SAs)."""

    def __init__(self, gateway: Any, metrics: GatewayMetrics):
        self.gw = gateway
        self.m = metrics

    def describe(self):
        return []   # dynamic: do not collect at registration time

    def collect(self):
        gw = self.gw
        ike = GaugeMetricFamily(f"{PREFIX}_ike_sas", "IKE SAs by connection and state",
                                labels=["connection", "state"])
        child = GaugeMetricFamily(f"{PREFIX}_child_sas", "Child SAs by connection and state",
                                  labels=["connection", "state"])
        ike_n: dict[tuple[str, str], int] = {}
        child_n: dict[tuple[str, str], int] = {}
        traffic: dict[str, list[int]] = {k: list(v) for k, v in self.m.retired.items()}
        drops: dict[str, int] = dict(self.m.retired_drops)
        half_open = 0
        for sa in gw.manager.sas:
            state = sa.state.value
            if state == "deleted":
                continue
            if state == "init-done" and not sa.initiator:
                half_open += 1
            name = sa.name or "?"
            ike_n[(name, state)] = ike_n.get((name, state), 0) + 1
            for c in sa.children:
                cs = c.state.name.lower()
                child_n[(name, cs)] = child_n.get((name, cs), 0) + 1
                cnt = gw.dataplane.counters(c.spi_in)
                if cnt is None:
                    continue
                t = traffic.setdefault(name, [0, 0, 0, 0])
                t[0] += cnt.bytes_in
                t[1] += cnt.packets_in
                t[2] += cnt.bytes_out
                t[3] += cnt.packets_out
                for reason, n in (cnt.drops or {}).items():
                    drops[reason] = drops.get(reason, 0) + n
        for conn in gw.config.connections:   # every configured connection shows, also when down
            ike_n.setdefault((conn.name, "established"), 0)
            child_n.setdefault((conn.name, "installed"), 0)
            traffic.setdefault(conn.name, [0, 0, 0, 0])
        for (name, state), n in sorted(ike_n.items()):
            ike.add_metric([name, state], n)
        for (name, state), n in sorted(child_n.items()):
            child.add_metric([name, state], n)
        yield ike
        yield child
        yield GaugeMetricFamily(f"{PREFIX}_half_open_ike_sas", "Responder IKE SAs between IKE_SA_INIT "
                                "and IKE_AUTH", value=half_open)

        tb = CounterMetricFamily(f"{PREFIX}_traffic_bytes", "Inner IP bytes through the Child SAs of a "
                                 "connection", labels=["connection", "direction"])
        tp = CounterMetricFamily(f"{PREFIX}_traffic_packets", "Inner IP packets through the Child SAs "
                                 "of a connection", labels=["connection", "direction"])
        for name, (bi, pi, bo, po) in sorted(traffic.items()):
            tb.add_metric([name, "in"], bi)
            tb.add_metric([name, "out"], bo)
            tp.add_metric([name, "in"], pi)
            tp.add_metric([name, "out"], po)
        yield tb
        yield tp

        dr = CounterMetricFamily(f"{PREFIX}_drops", "Packets dropped, by layer and reason",
                                 labels=["layer", "reason"])
        for reason, n in sorted(getattr(gw.manager, "dropped", {}).items()):
            dr.add_metric(["ike", reason], n)
        for reason, n in sorted(drops.items()):
            dr.add_metric(["esp", str(reason)], n)
        dp_stats = gw.dataplane.stats() or {}
        unmatched = dp_stats.get("unmatched") or {}
        for reason, n in sorted(unmatched.items()):
            dr.add_metric(["dataplane", str(reason)], n)
        yield dr
        worker = dp_stats.get("outbound_worker")
        if worker is not None:  # [gateway] outbound_worker
            yield GaugeMetricFamily(f"{PREFIX}_outbound_worker_up", "1 while the outbound worker process "
                                    "runs and is ready, 0 while it restarts or after the daemon gave it up",
                                    value=1 if worker.get("ready") and not worker.get("given_up") else 0)
            yield CounterMetricFamily(f"{PREFIX}_outbound_worker_restarts", "Outbound worker processes "
                                      "started again after one died", value=worker.get("restarts", 0))

        size = GaugeMetricFamily(f"{PREFIX}_pool_addresses", "Addresses a pool hands out", labels=["pool"])
        leases = GaugeMetricFamily(f"{PREFIX}_pool_leases", "Leases of a pool: online (in use) or "
                                   "offline (kept for a returning client)", labels=["pool", "state"])
        for pool in gw.pools:
            online, offline = pool.online, pool.offline
            size.add_metric([pool.name], pool.size)
            leases.add_metric([pool.name, "online"], online)
            leases.add_metric([pool.name, "offline"], offline)
        yield size
        yield leases

        probe = CounterMetricFamily(f"{PREFIX}_probe_requests", "vpn-gw probe requests received, by "
                                    "what happened to them", labels=["result"])
        pc = gw.probe_responder.counters()
        probe.add_metric(["answered"], pc.get("answered", 0))
        probe.add_metric(["malformed"], pc.get("malformed", 0))
        probe.add_metric(["rate_limited"], pc.get("rate_limited_source", 0) + pc.get("rate_limited_global", 0))
        yield probe


class MetricsServer:
    """``GET /metrics`` over HTTP/1.0 on the event loop (one response per connection)."""

    def __init__(self, metrics: GatewayMetrics, host: str, port: int):
        self.metrics, self.host, self.port = metrics, host, port
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, self.host, self.port, reuse_address=True)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return
            if len(head) > MAX_REQUEST:
                return
            parts = head.split(b"\r\n", 1)[0].split()
            if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD"):
                status, body, ctype = b"405 Method Not Allowed", b"GET /metrics\n", b"text/plain"
            elif parts[1].split(b"?", 1)[0] != b"/metrics":
                status, body, ctype = b"404 Not Found", b"see /metrics\n", b"text/plain"
            else:
                status, body, ctype = b"200 OK", self.metrics.render(), CONTENT_TYPE_LATEST.encode()
            if parts and parts[0] == b"HEAD":
                body_out = b""
            else:
                body_out = body
            writer.write(b"HTTP/1.0 " + status + b"\r\nContent-Type: " + ctype + b"\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body_out)
            await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT)
        except (TimeoutError, OSError):
            pass
        finally:
            writer.close()

