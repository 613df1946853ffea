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
    tun_tso: bool = False                   # userspace ESP: TSO super-packets from TUN, cut by us
    tcp_port: int = 4500                    # RFC 9329 TCP encapsulation listener, 0 = off
    metrics_listen: tuple[str, int] | None = None  # Prometheus /metrics (vpn_gw/metrics.py), None = off
    retransmit_timeout: float = 4.0         # first retransmission of an IKE request, seconds
    retransmit_base: float = 1.8            # back-off factor
    retransmit_tries: int = 5               # retransmissions before giving up
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
    tun_tso = g.get("tun_tso", _bool, False)
    tcp_port = g.get("tcp_port", _int(0, 65535), 4500)
    metrics_listen = g.get("metrics_listen", _listen_addr, None)
    retransmit_timeout = g.get("retransmit_timeout", _duration, 4.0)
    retransmit_base = g.get("retransmit_base", _float(1.0, 4.0), 1.8)
    retransmit_tries = g.get("retransmit_tries", _int(0, 20), 5)
    if _ok(retransmit_timeout) and retransmit_timeout <= 0:
        ctx.error(("gateway", "retransmit_timeout"), "must be more than 0s")
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
                tun_tso=tun_tso, tcp_port=tcp_port, metrics_listen=metrics_listen,
                retransmit_timeout=retransmit_timeout, retransmit_base=retransmit_base,
                retransmit_tries=retransmit_tries, dns_servers=dns_servers, dns_port=dns_port,
                dns_timeout=dns_timeout, dns_min_ttl=dns_min_ttl, dns_max_ttl=dns_max_ttl)
