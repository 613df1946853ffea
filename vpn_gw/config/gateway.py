"""``[gateway]``: daemon-wide settings, and ``GatewayConfig``, the whole validated file."""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vpn_gw.config.connection import ConnectionConfig
from vpn_gw.config.convert import (
    BAD,
    IPAddress,
    _Bad,
    _bool,
    _choice,
    _Ctx,
    _describe,
    _duration,
    _float,
    _int,
    _ip,
    _list,
    _listen_addr,
    _nonempty_str,
    _ok,
    _size,
    _Table,
)
from vpn_gw.config.ddns import DdnsConfig
from vpn_gw.config.errors import Problem
from vpn_gw.config.keys import _CONN_HINT, GATEWAY_KEYS
from vpn_gw.config.pools import PoolConfig

if TYPE_CHECKING:
    from vpn_gw.radius.settings import RadiusConfig

DEFAULT_CONTROL_SOCKET = "/run/vpn-gw/control.sock"


def default_control_socket() -> str:
    """control.sock in systemd's RuntimeDirectory= when set, else DEFAULT_CONTROL_SOCKET."""
    d = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return os.path.join(d, "control.sock") if d else DEFAULT_CONTROL_SOCKET


LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("console", "json")
DATAPLANES = ("userspace", "xfrm", "none")


@dataclass(frozen=True)
class GatewayConfig:
    """The whole file: ``[gateway]`` settings and the connections."""
    control_socket: Path
    listen: tuple[IPAddress, ...]
    ike_port: int
    natt_port: int
    log_level: str
    log_format: str
    half_open_limit: int
    cookie_threshold: int
    connections: tuple[ConnectionConfig, ...]
    dataplane: str = "userspace"            # userspace | xfrm | none
    path_mtu: int = 1500                    # outer path MTU for the tunnel MTU (red-side fragmentation)
    xfrm_fragmentation: str = "nfqueue"     # policy-based xfrm tunnels: nfqueue | off
    xfrm_nfqueue: int = 0x5647              # NFQUEUE number of the red-side fragmenter
    xfrm_nfqueue_fail: str = "open"         # open (bypass) | closed, when the queue reader is not running
    keepalive_interval: float = 20.0        # NAT-T keepalives, seconds, 0 = off
    offload: bool = True                    # userspace ESP: UDP GSO/GRO, coalesced TUN writes
    tun_tso: bool | str = "auto"            # userspace ESP: TSO super-packets from TUN, cut by us;
                                            # "auto" = on with the compiled helpers (vpn_gw/accel)
    holdoff_us: int = 0                     # userspace ESP: wake-up holdoff after a large drain, 0 = off
    outbound_worker: bool = False           # userspace ESP: encrypt in a second process
    tcp_port: int = 4500                    # RFC 9329 TCP encapsulation listener, 0 = off
    metrics_listen: tuple[str, int] | None = None  # Prometheus /metrics (vpn_gw/metrics.py), None = off
    tcp_max_connections: int = 4096         # accepted TCP connections, all sources together
    tcp_max_per_source: int = 64            # accepted TCP connections from one IP address
    tcp_idle_timeout: float = 30.0          # no established IKE SA and no IKE frame for this long: closed
    tcp_max_unauth_frame: int = 16384       # largest frame on a connection without an established IKE SA
    tcp_max_buffered: int = 32 << 20        # partial-frame bytes held by all TCP connections together
    half_open_per_address: int = 5          # half-open IKE SAs from one IP address (ikev2.admission), 0 = off
    new_sa_rate_per_address: float = 10.0   # new IKE SAs per second from one IP address, 0 = off
    new_sa_burst_per_address: int = 20      # ... token bucket depth
    cookie_secret_lifetime: float = 120.0   # COOKIE secret replaced this often
    cookie_grace: float = 30.0              # COOKIEs of the previous secret accepted this long after
    fragment_budget_per_sa: int = 64 << 10  # unfinished IKE fragment bytes per SA before IKE_AUTH
    fragment_budget_total: int = 8 << 20    # unfinished IKE fragment bytes, all SAs together
    retransmit_timeout: float = 4.0         # first retransmission of an IKE request, seconds
    retransmit_base: float = 1.8            # back-off factor
    retransmit_tries: int = 5               # retransmissions before giving up
    crypto_workers: str | int = "auto"      # handshake crypto worker processes: "auto" | 0 (inline) | N
    dns_servers: tuple[IPAddress, ...] = () # resolver for FQDN remote_addrs; () = /etc/resolv.conf
    dns_port: int = 53
    dns_timeout: float = 2.0
    dns_min_ttl: float = 5.0
    dns_max_ttl: float = 3600.0
    ddns: tuple[DdnsConfig, ...] = ()       # [[ddns]] tables
    pools: tuple[PoolConfig, ...] = ()      # [[pool]] tables
    radius: RadiusConfig | None = None      # [radius] (vpn_gw.radius.settings)
    source: Path | None = field(default=None, compare=False)
    warnings: tuple[Problem, ...] = field(default=(), compare=False)

    def connection(self, name: str) -> ConnectionConfig:
        for c in self.connections:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def connection_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.connections)

    def pool(self, name: str) -> PoolConfig:
        for p in self.pools:
            if p.name == name:
                return p
        raise KeyError(name)


def _crypto_workers(value: Any) -> str | int:
    """``crypto_workers``: "auto", or a number of worker processes 0..64 (0 = inline)."""
    if value == "auto":
        return "auto"
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 64:
        return value
    hint = " (write it without quotes)" if isinstance(value, str) and value.strip().isdigit() else ""
    raise _Bad(f'expected "auto" or a number of worker processes 0 to 64, got {_describe(value)}{hint}')


def _bool_or_auto(value: Any) -> bool | str:
    """true, false or "auto" (tun_tso)."""
    if value == "auto" or isinstance(value, bool):
        return value
    raise _Bad(f'expected true, false or "auto", got {_describe(value)}')


def _gateway_settings(ctx: _Ctx, data: dict) -> dict[str, Any]:
    """The [gateway] table: GatewayConfig's settings by field name (values may be BAD)."""
    gw_data = data.get("gateway", {})
    if not isinstance(gw_data, dict):
        ctx.error(("gateway",), f"expected a table ([gateway]), got {_describe(gw_data)}")
        gw_data = {}
    g = _Table(ctx, gw_data, ("gateway",), GATEWAY_KEYS, _CONN_HINT)
    control_socket = g.get("control_socket", _nonempty_str, default_control_socket())
    if control_socket is not BAD:
        control_socket = ctx.path(control_socket)
    listen = g.get("listen", _list(_ip, example='["0.0.0.0", "::"]'),
                   (ipaddress.ip_address("0.0.0.0"), ipaddress.ip_address("::")))
    ike_port = g.get("ike_port", _int(1, 65535), 500)
    natt_port = g.get("natt_port", _int(1, 65535), 4500)
    if _ok(ike_port, natt_port) and ike_port == natt_port:
        ctx.error(("gateway", "natt_port"), f"must differ from ike_port ({ike_port})")
    log_level = g.get("log_level", _choice(LOG_LEVELS), "info")
    log_format = g.get("log_format", _choice(LOG_FORMATS), "console")
    half_open_limit = g.get("half_open_limit", _int(1), 1000)
    cookie_threshold = g.get("cookie_threshold", _int(0), 100)
    if _ok(half_open_limit, cookie_threshold) and cookie_threshold >= half_open_limit:
        ctx.warn(("gateway", "cookie_threshold"), f"cookie_threshold ({cookie_threshold}) is not "
                 f"below half_open_limit ({half_open_limit}): COOKIEs will never be requested")

    dataplane = g.get("dataplane", _choice(DATAPLANES), "userspace")
    path_mtu = g.get("path_mtu", _int(576, 65535), 1500)
    xfrm_fragmentation = g.get("xfrm_fragmentation", _choice(("nfqueue", "off")), "nfqueue")
    xfrm_nfqueue = g.get("xfrm_nfqueue", _int(0, 65535), 0x5647)
    xfrm_nfqueue_fail = g.get("xfrm_nfqueue_fail", _choice(("open", "closed")), "open")
    keepalive_interval = g.get("keepalive_interval", _duration, 20.0)
    offload = g.get("offload", _bool, True)
    tun_tso = g.get("tun_tso", _bool_or_auto, "auto")
    holdoff_us = g.get("holdoff_us", _int(0, 10000), 0)
    outbound_worker = g.get("outbound_worker", _bool, False)
    if _ok(outbound_worker, dataplane) and outbound_worker and dataplane != "userspace":
        ctx.error(("gateway", "outbound_worker"),
                  f'outbound_worker is for the userspace data plane, not dataplane = "{dataplane}"')
    tcp_port = g.get("tcp_port", _int(0, 65535), 4500)
    metrics_listen = g.get("metrics_listen", _listen_addr, None)
    tcp_max_connections = g.get("tcp_max_connections", _int(1, 1 << 20), 4096)
    tcp_max_per_source = g.get("tcp_max_per_source", _int(1, 1 << 20), 64)
    tcp_idle_timeout = g.get("tcp_idle_timeout", _duration, 30.0)
    if _ok(tcp_idle_timeout) and tcp_idle_timeout <= 0:
        ctx.error(("gateway", "tcp_idle_timeout"), "must be more than 0s")
    tcp_max_unauth_frame = g.get("tcp_max_unauth_frame", _size, 16384)
    if _ok(tcp_max_unauth_frame) and not 1024 <= tcp_max_unauth_frame <= 65535:
        ctx.error(("gateway", "tcp_max_unauth_frame"), f"must be 1024 to 65535 bytes, got {tcp_max_unauth_frame}")
    tcp_max_buffered = g.get("tcp_max_buffered", _size, 32 << 20)
    if _ok(tcp_max_buffered) and tcp_max_buffered < 65536:
        ctx.error(("gateway", "tcp_max_buffered"), f"must be at least 64K, got {tcp_max_buffered}")
    half_open_per_address = g.get("half_open_per_address", _int(0), 5)
    new_sa_rate_per_address = g.get("new_sa_rate_per_address", _float(0.0, 1e6), 10.0)
    new_sa_burst_per_address = g.get("new_sa_burst_per_address", _int(1, 1 << 20), 20)
    cookie_secret_lifetime = g.get("cookie_secret_lifetime", _duration, 120.0)
    if _ok(cookie_secret_lifetime) and cookie_secret_lifetime < 1:
        ctx.error(("gateway", "cookie_secret_lifetime"), "must be at least 1s")
    cookie_grace = g.get("cookie_grace", _duration, 30.0)
    if _ok(cookie_grace, cookie_secret_lifetime) and not 0 <= cookie_grace <= cookie_secret_lifetime:
        ctx.error(("gateway", "cookie_grace"),
                  f"must be 0s to cookie_secret_lifetime ({cookie_secret_lifetime:g}s), got {cookie_grace:g}s")
    fragment_budget_per_sa = g.get("fragment_budget_per_sa", _size, 64 << 10)
    if _ok(fragment_budget_per_sa) and not 4096 <= fragment_budget_per_sa <= 128 << 10:
        ctx.error(("gateway", "fragment_budget_per_sa"), f"must be 4K to 128K, got {fragment_budget_per_sa}")
    fragment_budget_total = g.get("fragment_budget_total", _size, 8 << 20)
    if _ok(fragment_budget_total, fragment_budget_per_sa) and fragment_budget_total < fragment_budget_per_sa:
        ctx.error(("gateway", "fragment_budget_total"),
                  f"must be at least fragment_budget_per_sa ({fragment_budget_per_sa}), got {fragment_budget_total}")
    retransmit_timeout = g.get("retransmit_timeout", _duration, 4.0)
    retransmit_base = g.get("retransmit_base", _float(1.0, 4.0), 1.8)
    retransmit_tries = g.get("retransmit_tries", _int(0, 20), 5)
    if _ok(retransmit_timeout) and retransmit_timeout <= 0:
        ctx.error(("gateway", "retransmit_timeout"), "must be more than 0s")
    crypto_workers = g.get("crypto_workers", _crypto_workers, "auto")
    dns_servers = g.get("dns_servers", _list(_ip, example='["192.0.2.53"]'), ())
    dns_port = g.get("dns_port", _int(1, 65535), 53)
    dns_timeout = g.get("dns_timeout", _duration, 2.0)
    dns_min_ttl = g.get("dns_min_ttl", _duration, 5.0)
    dns_max_ttl = g.get("dns_max_ttl", _duration, 3600.0)
    if _ok(dns_min_ttl, dns_max_ttl) and dns_min_ttl > dns_max_ttl:
        ctx.error(("gateway", "dns_min_ttl"), f"dns_min_ttl ({dns_min_ttl:g}s) is above dns_max_ttl ({dns_max_ttl:g}s)")
    return dict(control_socket=control_socket, listen=listen, ike_port=ike_port, natt_port=natt_port,
                log_level=log_level, log_format=log_format, half_open_limit=half_open_limit,
                cookie_threshold=cookie_threshold, dataplane=dataplane, path_mtu=path_mtu,
                xfrm_fragmentation=xfrm_fragmentation, xfrm_nfqueue=xfrm_nfqueue,
                xfrm_nfqueue_fail=xfrm_nfqueue_fail, keepalive_interval=keepalive_interval, offload=offload,
                tun_tso=tun_tso, holdoff_us=holdoff_us, outbound_worker=outbound_worker, tcp_port=tcp_port,
                metrics_listen=metrics_listen,
                tcp_max_connections=tcp_max_connections,
                tcp_max_per_source=tcp_max_per_source, tcp_idle_timeout=tcp_idle_timeout,
                tcp_max_unauth_frame=tcp_max_unauth_frame, tcp_max_buffered=tcp_max_buffered,
                half_open_per_address=half_open_per_address, new_sa_rate_per_address=new_sa_rate_per_address,
                new_sa_burst_per_address=new_sa_burst_per_address, cookie_secret_lifetime=cookie_secret_lifetime,
                cookie_grace=cookie_grace, fragment_budget_per_sa=fragment_budget_per_sa,
                fragment_budget_total=fragment_budget_total,
                retransmit_timeout=retransmit_timeout, retransmit_base=retransmit_base,
                retransmit_tries=retransmit_tries, crypto_workers=crypto_workers, dns_servers=dns_servers,
                dns_port=dns_port,
                dns_timeout=dns_timeout, dns_min_ttl=dns_min_ttl, dns_max_ttl=dns_max_ttl)
