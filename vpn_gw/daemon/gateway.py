"""The gateway daemon: a thin ``Gateway`` composing the parts that each do one job.

    transport.udp_service.UdpService   sockets on 500/4500: IKE -> engine, ESP -> data plane, probes
    transport.tcp.TcpService           RFC 9329 TCP paths (it sees the gateway as a ``TcpHost``)
    ikev2.manager.IkeManager           the sans-IO engine (datagrams and ticks in, datagrams and events out)
    daemon.scheduler.Scheduler         the one timer: engine deadlines and connection restarts
    daemon.events.EventRouter          engine events -> data plane, virtual IPs, restarts, traps, `up`
    daemon.control_handlers            the control socket's commands
    daemon.roaming / lifetimes / routes / traps / virtual_ips   the smaller jobs

``run(config, args)`` is what ``vpn-gw run`` calls. docs/architecture.md draws the whole flow.
"""
from __future__ import annotations

import asyncio
import gc
import os
import resource
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

import structlog

from esp import compiled as esp_compiled
from ikev2.compute import ComputeNeeded, OffloadPolicy, Result
from ikev2.crypto.mlkem import mlkem_backend_text
from ikev2.manager import IkeManager
from vpn_gw import accel
from vpn_gw.bind_errors import explain
from vpn_gw.config import ConfigError, GatewayConfig, diff_configs, load_config
from vpn_gw.control import ControlServer
from vpn_gw.daemon.control_handlers import ControlHandlers
from vpn_gw.daemon.crypto_pool import CryptoPool, resolve_workers
from vpn_gw.daemon.engine_log import EngineLog
from vpn_gw.daemon.events import RETRY_DELAY, EventRouter, Waiters
from vpn_gw.daemon.lifetimes import LifetimeWatcher
from vpn_gw.daemon.reload import ReloadRefused, apply_gateway_settings, check_live, configure_admission
from vpn_gw.daemon.roaming import RoamingWatcher
from vpn_gw.daemon.routes import ConnectionRoutes
from vpn_gw.daemon.scheduler import Scheduler
from vpn_gw.daemon.traps import Traps
from vpn_gw.daemon.virtual_ips import VirtualIps
from vpn_gw.dataplane import DataPlane, RecordingDataPlane
from vpn_gw.ddns.service import DdnsService, is_fqdn
from vpn_gw.holdoff import Holdoff
from vpn_gw.policies import ike_policy, initiate_target
from vpn_gw.pools import PoolSet, masquerade
from vpn_gw.probe import ProbeResponder
from vpn_gw.sdnotify import Notifier
from vpn_gw.transport.tcp import TcpService
from vpn_gw.transport.udp import route_source
from vpn_gw.transport.udp_service import DatagramSinks, UdpService

if TYPE_CHECKING:  # prometheus_client (~20 ms of start-up) only with [gateway] metrics_listen
    from vpn_gw.metrics import GatewayMetrics, MetricsServer

log = structlog.get_logger("vpn_gw")

Endpoint = tuple[str, int]

_POLICY_GATEWAY_KEYS = {"retransmit_timeout", "retransmit_base", "retransmit_tries"}  # copied into policies


class StartupError(RuntimeError):
    """The gateway cannot start (one-line reason for the user)."""


def make_dataplane(config: GatewayConfig, gw: Gateway) -> DataPlane:
    """The data plane the config asks for, wired to the gateway's ESP senders."""
    if config.dataplane == "userspace":
        from vpn_gw.dataplane.userspace.plane import UserspaceDataPlane
        return UserspaceDataPlane(gw.send_esp, gw.interface_for, path_mtu=config.path_mtu,
                                  keepalive_interval=config.keepalive_interval, offload=config.offload,
                                  tso=accel.COMPILED if config.tun_tso == "auto" else bool(config.tun_tso),
                                  holdoff=Holdoff(config.holdoff_us / 1e6) if config.holdoff_us else None,
                                  outbound_worker=config.outbound_worker)
    if config.dataplane == "xfrm":
        from vpn_gw.dataplane.xfrm.backend import XfrmDataPlane
        ifids = {c.interface: c.if_id for c in config.connections if c.interface}
        fragmenter = None
        if config.xfrm_fragmentation == "nfqueue":
            from vpn_gw.dataplane.xfrm.fragmenter import RedFragmenter
            fragmenter = RedFragmenter(config.xfrm_nfqueue, fail_open=config.xfrm_nfqueue_fail == "open")
        return XfrmDataPlane(gw.send_esp, gw.interface_for, if_id_for=ifids.get,
                             path_mtu=config.path_mtu, keepalive_interval=config.keepalive_interval,
                             endpoints_for=gw.endpoints_for, fragmenter=fragmenter)
    return RecordingDataPlane()


class Gateway:
    def __init__(self, config: GatewayConfig, dataplane: DataPlane | None = None):
        self.config = config
        self._conns = {c.name: c for c in config.connections}
        self.dataplane = dataplane if dataplane is not None else make_dataplane(config, self)
        self.started = time.time()
        self.held_down: set[str] = set()  # taken down by `vpn-gw down`: no automatic restart
        self.engine_log = EngineLog()
        self.radius = None  # remote_auth = "eap-radius" (docs/fleet.md)
        if config.radius is not None:
            from vpn_gw.radius.service import RadiusService
            self.radius = RadiusService(config.radius, self)
        self.fleet_pools = None  # [[pool]] backend = "postgresql" (docs/fleet.md)
        if any(p.backend == "postgresql" for p in config.pools):
            from vpn_gw.pools.fleet import PgPoolService
            self.fleet_pools = PgPoolService(config, self)
        self.virtual_ips = VirtualIps(PoolSet.from_config([p for p in config.pools if p.backend == "file"]),
                                      lambda: self.config,
                                      framed=self.radius.framed if self.radius is not None else None)
        self.log_override: dict[str, str] = {}  # `vpn-gw run --log-level/--log-format`: reload keeps them
        # [gateway] crypto_workers: handshake crypto in worker processes (vpn_gw.daemon.crypto_pool)
        workers = resolve_workers(config.crypto_workers)
        self.crypto = CryptoPool(workers, self._computed, self.flush) if workers else None
        self.manager = IkeManager([self._policy(c) for c in config.connections], os.urandom,
                                  log=self.engine_log, wall_offset=time.time() - time.monotonic(),
                                  half_open_limit=config.half_open_limit,
                                  cookie_threshold=config.cookie_threshold)
        configure_admission(self.manager, config)
        self.manager.set_activity_probe(self.dataplane.last_rx)
        if hasattr(self.dataplane, "send_udp_batch") and config.offload:
            self.dataplane.send_udp_batch = self.send_esp_batch
        if hasattr(self.dataplane, "on_peer_moved"):
            self.dataplane.on_peer_moved = self._esp_peer_moved
        self.scheduler = Scheduler(self.manager.next_deadline, self._on_timer)
        self.waiters = Waiters()
        self.events = EventRouter(self, self.waiters)
        self.traps = Traps(self.manager, self.dataplane, self.initiate, self.flush)
        self.probe_responder = ProbeResponder()  # docs/probe.md: stateless, rate-limited echo
        self.udp = UdpService(lambda: self.config, self.dataplane,
                              DatagramSinks(ike=self._ike_received, after_batch=self.flush,
                                            init_reply=self.manager.stateless_init_reply),
                              self.probe_responder, holdoff=getattr(self.dataplane, "holdoff", None))
        self.tcp = TcpService(self)  # RFC 9329 TCP paths (docs/tcp-encapsulation.md)
        self.ddns = DdnsService(config, self)
        self.routes = ConnectionRoutes()
        self.roaming = RoamingWatcher(self.manager, self.tcp.roam, self.flush)
        self.lifetimes = LifetimeWatcher(self.manager, self.dataplane, self.flush)
        self.control = ControlHandlers(self)
        self.notifier = Notifier()  # systemd Type=notify ($NOTIFY_SOCKET); a no-op without it
        self.metrics: GatewayMetrics | None = None  # [gateway] metrics_listen (docs/metrics.md)
        if config.metrics_listen is not None:
            from vpn_gw.metrics import GatewayMetrics
            self.metrics = GatewayMetrics()
            self.metrics.bind(self)
            self.engine_log.observer = self.metrics.on_log

    @property
    def pools(self) -> PoolSet:
        return self.virtual_ips.pools

    def _policy(self, conn: Any) -> Any:
        assigner = (self.fleet_pools.assigner(conn) if self.fleet_pools is not None and self.fleet_pools.uses(conn)
                    else lambda ident, req, c=conn: self.virtual_ips.assign(c, ident, req))
        return ike_policy(conn, self.config, address_assigner=assigner,
                          eap_backend=self.radius.backend if self.radius is not None else None)

    def connection(self, name: str) -> Any:
        return self._conns.get(name)

    def interface_for(self, name: str) -> str | None:
        conn = self.connection(name)
        return conn.interface if conn is not None else None

    def endpoints_for(self, name: str) -> tuple[str | None, str | None]:
        """(local, remote) outer addresses of a connection, for kernel trap-policy templates."""
        conn = self.connection(name)
        if conn is None:
            return None, None
        local = str(conn.local_addrs[0]) if conn.local_addrs else None
        target = initiate_target(conn)
        return local, (target if target and not is_fqdn(target) else None)

    # ------------------------------------------------------------------ datagrams in and out

    def _ike_received(self, data: bytes, local: Endpoint, remote: Endpoint) -> None:
        self.manager.receive(data, local, remote, time.monotonic())

    def _esp_peer_moved(self, ike_id: int, local: Endpoint, remote: Endpoint) -> None:
        self.manager.esp_adopt(ike_id, local, remote, time.monotonic())
        self.flush()

    def send_ike(self, data: bytes, local: Endpoint, remote: Endpoint) -> None:
        if not self.tcp.send_ike(data, local, remote):  # a TCP path: framed onto its connection
            self.udp.send_ike(data, local, remote)

    def send_esp(self, data: bytes, local: Endpoint, remote: Endpoint) -> None:
        if not self.tcp.send_esp(data, local, remote):
            self.udp.send_esp(data, local, remote)

    def send_esp_batch(self, datagrams: list[bytes], local: Endpoint, remote: Endpoint) -> None:
        if self.tcp.conns or self.tcp.dead:
            for d in datagrams:
                self.send_esp(d, local, remote)
            return
        self.udp.send_esp_many(datagrams, local, remote)

    def flush(self) -> None:
        """Send what the engine produced, act on its events, re-arm the timer."""
        m = self.manager
        for data, local, remote in m.pop_datagrams():
            self.send_ike(data, local, remote)
        for ev in m.pop_events():
            self.deliver(ev)
        for data, local, remote in m.pop_datagrams():  # events may have caused more
            self.send_ike(data, local, remote)
        self.scheduler.arm()

    def _computed(self, token: int, result: Result | None, reason: str) -> None:
        now = time.monotonic()
        if result is not None:
            self.manager.compute_done(token, result, now)
        else:
            self.manager.compute_failed(token, reason, now)

    def deliver(self, ev: Any) -> None:
        if isinstance(ev, ComputeNeeded) and self.crypto is not None:
            self.crypto.submit(ev)
            return
        try:
            if self.metrics is not None:  # before the router: a Child SA's counters still exist
                self.metrics.on_event(self, ev)
            if self.radius is not None:
                self.radius.on_event(ev)  # first: ChildDown counters are read before removal
            if self.fleet_pools is not None:
                self.fleet_pools.on_event(ev)
            self.events.handle(ev)
        except Exception as e:  # noqa: BLE001 - an event handler bug never stops the gateway
            log.error("event handling failed", event=type(ev).__name__, connection=ev.ike_name,
                      error=f"{type(e).__name__}: {e}", exc_info=True)

    def _on_timer(self, now: float) -> None:
        self.manager.tick(now)
        for name in self.scheduler.due_retries(now):
            try:
                self.initiate(name)
            except (OSError, ValueError) as e:
                log.warning("cannot initiate", connection=name, error=str(e))
                self.scheduler.retry_at(name, now + RETRY_DELAY)
        self.flush()

    # ------------------------------------------------------------------ initiating

    def initiate(self, name: str) -> Any:
        self.held_down.discard(name)
        conn = self.connection(name)
        if conn is None:
            raise ValueError(f"no connection named '{name}'")
        target = initiate_target(conn)
        if target is None:
            raise ValueError(f"connection '{name}' has no remote address to initiate to (remote_addrs is %any)")
        if is_fqdn(target):
            # A dynamic-DNS peer: resolve (honouring the TTL) on every initiation and retry.
            asyncio.get_running_loop().create_task(self._initiate_fqdn(name, target))
            return None
        return self.initiate_to(name, target)

    async def _initiate_fqdn(self, name: str, fqdn: str) -> None:
        addrs = await self.ddns.resolve(fqdn)
        usable = [a for a in addrs if _reachable(a)]
        if not usable:
            log.warning("cannot initiate: peer name did not resolve to a reachable address", connection=name,
                        name=fqdn, addresses=addrs)
            self.scheduler.retry_at(name, time.monotonic() + RETRY_DELAY)
            self.scheduler.arm()
            return
        try:
            self.initiate_to(name, usable[0])
        except (OSError, ValueError) as e:
            log.warning("cannot initiate", connection=name, error=str(e))

    def initiate_to(self, name: str, remote_ip: str, transport: str | None = None) -> Any:
        conn = self.connection(name)
        local_ip = str(conn.local_addrs[0]) if conn.local_addrs else route_source(remote_ip)
        if transport is None and self.tcp.takes(conn):
            return self.tcp.initiate(conn, remote_ip, local_ip)  # transport tcp/auto: asynchronous
        sa = self.manager.initiate(name, time.monotonic(), remote=(remote_ip, self.config.ike_port),
                                   local=(local_ip, self.config.ike_port))
        self.flush()
        return sa

    def initiation_failed(self, name: str, reason: str) -> None:
        """An initiation failed before any IKE SA existed (e.g. no TCP connection): reported like
        a failed IKE SA, so `up` waiters and the restart logic see an IkeDown."""
        from ikev2 import events as E
        ev = E.IkeDown(reason=reason)
        ev.ike_name = name
        self.deliver(ev)
        self.scheduler.arm()

    # ------------------------------------------------------------------ for DDNS

    def sas_for_fqdn(self, fqdn: str) -> list[Any]:
        """Established IKE SAs of connections whose remote_addrs name this FQDN."""
        def norm(n: str) -> str:
            return n.lower().rstrip(".")
        names = {c.name for c in self.config.connections
                 if norm(fqdn) in [norm(a) for a in c.remote_addrs if isinstance(a, str)]}
        return [sa for name in names for sa in self.manager.find(name) if sa.state.value == "established"]

    def liveness_check(self, sa: Any) -> None:
        sa.liveness(time.monotonic())
        self.flush()

    # ------------------------------------------------------------------ commands

    def check_local_addresses(self) -> int:
        return self.roaming.check()

    def stats(self) -> dict[str, Any]:
        return {"probe": self.probe_responder.counters(), "tcp": self.tcp.counters(),
                "dataplane": self.dataplane.stats(), "ike": self.manager.counters(),
                "crypto": self.crypto.stats() if self.crypto is not None else {"workers": 0}}

    def reload(self, origin: str = "control") -> dict[str, Any]:
        """Re-read the configuration file and apply it (`vpn-gw reload`, SIGHUP), telling systemd
        around it. Every outcome (applied, refused because a key needs a restart, failed with the
        config error) is logged; a refused or failed reload raises ValueError and changes nothing."""
        if self.config.source is None:
            raise ValueError("configuration was not loaded from a file")
        self.notifier.reloading()
        try:
            d = self._reload(self.config.source)
        except ReloadRefused as e:
            log.warning("reload refused", origin=origin, reason=str(e))
            raise
        except (ConfigError, ValueError, OSError) as e:
            log.error("reload failed: configuration not applied", origin=origin, error=str(e))
            raise
        finally:
            self.notifier.ready(f"{len(self.config.connections)} connections loaded")
        log.info("configuration reloaded", origin=origin, added=list(d.added), removed=list(d.removed),
                 changed=list(d.changed), unchanged=len(d.unchanged), gateway_changed=list(d.gateway_changed))
        return d.to_dict()

    def _reload_on_signal(self) -> None:
        try:
            self.reload(origin="SIGHUP")
        except (ConfigError, ValueError, OSError):
            pass  # logged by reload(); the daemon keeps running with the old configuration

    def _reload(self, source: Any) -> Any:
        new = load_config(source)
        d = diff_configs(self.config, new)
        check_live(d.gateway_changed)  # before anything changes
        for name in d.removed:
            self.manager.terminate(name, time.monotonic())
        pols = {p.name: p for p in self.manager.policies}
        old, self.config = self.config, new
        self._conns = {c.name: c for c in new.connections}
        apply_gateway_settings(self, old, new, d.gateway_changed)
        # Retransmission settings live in every policy: rebuild them all when they change.
        keep = set(d.unchanged) if not set(d.gateway_changed) & _POLICY_GATEWAY_KEYS else set()
        self.manager.policies = [pols[c.name] if c.name in keep else self._policy(c)
                                 for c in new.connections]
        for name in d.added:
            if self.connection(name).start_action == "start":
                self.initiate(name)
        self.flush()
        return d

    def status(self) -> list[dict[str, Any]]:
        from vpn_gw.daemon.status import status_entries
        return status_entries(self.manager, self.dataplane, self.tcp, time.monotonic(), time.time(),
                              install_errors=self.events.install_errors)

    # ------------------------------------------------------------------ lifecycle

    def open_sockets(self) -> None:
        self.udp.open()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        if self.dataplane.name == "xfrm":  # the userspace data plane does not use pyroute2
            from vpn_gw.dataplane.iproute import prewarm
            prewarm()  # pyroute2's import overlaps the rest of the start-up
        raise_open_files_limit()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload_on_signal)  # SIGHUP = `vpn-gw reload`
        await self.ddns.start()
        if self.radius is not None:
            await self.radius.start()
        if self.fleet_pools is not None:
            await self.fleet_pools.start()
        for note in self.pools.load():
            log.warning("address pool", note=note)
        try:
            if masquerade.install(self.config.pools):
                log.info("pool masquerading installed", table=masquerade.TABLE,
                         pools=[p.name for p in self.config.pools if p.masquerade])
        except masquerade.NatError as e:
            raise StartupError(str(e)) from None
        try:
            await self.dataplane.start()
        except Exception as e:  # noqa: BLE001 - e.g. no kernel ESP for dataplane = "xfrm"
            raise StartupError(f"cannot start the {self.dataplane.name} data plane: {e}") from None
        for conn in self.config.connections:
            if conn.interface:
                try:
                    self.dataplane.ensure_interface(conn.interface)
                except OSError as e:
                    log.error("cannot create the connection's interface", connection=conn.name,
                              interface=conn.interface, error=str(e))
        self.routes.install(self.config.connections)
        if self.crypto is not None:  # workers start in the background (or on first use); meanwhile inline
            self.crypto.start(loop, eager=self.config.crypto_workers != "auto")
            self.manager.offload = OffloadPolicy()
        self.udp.open()
        if hasattr(self.dataplane, "attach_sockets"):  # the outbound worker sends from the NAT-T sockets
            self.dataplane.attach_sockets(self.udp.esp_sockets())
            self.dataplane.path_via_daemon = self.tcp.carries  # type: ignore[attr-defined]
        await self.tcp.start()
        self.traps.install_all(self.config.connections)
        control = ControlServer(str(self.config.control_socket), self.control.handle)
        await control.start()
        metrics_server = await self._start_metrics()
        log.info("vpn-gw started", connections=len(self.config.connections),
                 control_socket=str(self.config.control_socket), dataplane=self.dataplane.name,
                 compiled_helpers=accel.describe(),  # checksums, TSO, ESP receive (vpn_gw/accel)
                 esp_packet_path=esp_compiled.describe(),  # AEAD seal/open, replay (esp/compiled.py)
                 holdoff_us=self.config.holdoff_us if self.dataplane.name == "userspace" else 0,  # vpn_gw/holdoff.py
                 outbound_worker=getattr(getattr(self.dataplane, "worker", None), "pid", None),  # its PID, or None
                 mlkem=mlkem_backend_text())  # which ML-KEM sets the linked OpenSSL offers
        self.notifier.ready(f"{len(self.config.connections)} connections loaded")
        for conn in self.config.connections:
            if conn.start_action == "start" and initiate_target(conn):
                try:
                    self.initiate(conn.name)
                except (OSError, ValueError) as e:
                    log.warning("cannot initiate", connection=conn.name, error=str(e))
                    self.scheduler.retry_at(conn.name, time.monotonic() + RETRY_DELAY)
        self.flush()
        if not gc.isenabled():  # `vpn-gw run` starts with it off (vpn_gw.cli.main)
            gc.freeze()  # what start-up made lives as long as the daemon: never scanned again
            gc.set_threshold(*GC_THRESHOLDS)
            gc.enable()
        watchers = [loop.create_task(self.roaming.run()), loop.create_task(self.lifetimes.run()),
                    loop.create_task(_log_summaries())]
        await stop.wait()
        self.notifier.stopping()
        for w in watchers:
            w.cancel()
        await self.ddns.withdraw()  # a fleet member leaves the name before its clients redial it
        log.info("stopping: deleting IKE SAs")
        now = time.monotonic()
        for sa in list(self.manager.sas):
            sa.delete(now, "gateway shutting down")
        self.flush()
        await asyncio.sleep(0.2)  # let the DELETEs leave (no retransmission at shutdown)
        if self.radius is not None:
            await self.radius.stop()  # accounting Stop for what is left
        if self.fleet_pools is not None:
            await self.fleet_pools.stop()
        self.scheduler.close()
        if self.crypto is not None:
            self.manager.offload = None
            self.crypto.close()
        loop.remove_signal_handler(signal.SIGHUP)
        await control.stop()
        if metrics_server is not None:
            await metrics_server.close()
        await self.tcp.close()
        self.udp.close()
        self.routes.remove()
        await self.dataplane.close()
        await self.ddns.stop()
        if any(p.masquerade for p in self.config.pools):
            masquerade.remove()
        log.info("vpn-gw stopped")


    async def _start_metrics(self) -> MetricsServer | None:
        if self.metrics is None or self.config.metrics_listen is None:
            return None
        from vpn_gw.metrics import MetricsServer
        host, port = self.config.metrics_listen
        server = MetricsServer(self.metrics, host, port)
        try:
            await server.start()
        except OSError as e:
            raise StartupError(explain(e, host, port, "TCP (metrics)", "[gateway] metrics_listen")) from None
        log.info("metrics served", url=f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics")
        return server


# The cyclic garbage collector's thresholds once running. Python's default (700, 10, 10) makes
# it walk the young objects every 700 allocations and every object (all IKE SAs held) every
# 100 young walks or so: ~10 % of the CPU of a set-up at 10k SAs held (engine benchmark, gc off
# vs default). Nearly everything the daemon allocates is freed by reference counting; the few
# cycles (exceptions with tracebacks, dead SAs' leftovers) are still collected, just later.
GC_THRESHOLDS = (10_000, 50, 50)


async def _log_summaries(every: float = 10.0) -> None:
    """Rate-limited log summaries ("suppressed N similar messages") also after a flood stops."""
    from vpn_gw.log import flush_all
    while True:
        await asyncio.sleep(every)
        try:
            flush_all()
        except Exception as e:  # noqa: BLE001 - logging never stops the gateway
            log.error("log summaries failed", error=f"{type(e).__name__}: {e}")


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (TCP clients each hold a descriptor; the
    TCP listener keeps a reserve below the soft limit, docs/tcp-encapsulation.md). Logged."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open-files limit", soft=soft, hard=hard, error=str(e))
    log.info("open-files limit", soft=soft, hard=hard)
    return soft, hard


def _reachable(ip: str) -> bool:
    try:
        route_source(ip)
        return True
    except OSError:
        return False


def run(config: GatewayConfig, args: Any = None) -> int:
    try:
        gw = Gateway(config)
        gw.log_override = {k: v for k in ("log_level", "log_format") if (v := getattr(args, k, None))}
        asyncio.run(gw.serve())
    except (StartupError, OSError) as e:
        log.error("vpn-gw cannot start", error=str(e))
        print(f"vpn-gw: {e}", file=sys.stderr)
        return 1
    return 0
