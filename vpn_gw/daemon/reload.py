"""Which ``[gateway]`` settings ``vpn-gw reload`` (and SIGHUP) applies live, and applying them.

Every ``[gateway]`` key is in exactly one of the two sets below (a test checks it against the
config schema, so a new key must be classified). A reload whose file changes a restart-only key
is refused as a whole: nothing is applied and the message names the keys (docs/control.md).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ikev2.manager import IkeManager
    from vpn_gw.config import GatewayConfig
    from vpn_gw.daemon.gateway import Gateway

# Applied by reload, for running SAs as well unless noted:
LIVE_KEYS = frozenset({
    "half_open_limit", "cookie_threshold",         # IkeManager admission (ikev2.admission)
    "half_open_per_address", "new_sa_rate_per_address", "new_sa_burst_per_address",
    "cookie_secret_lifetime", "cookie_grace",      # the next rotation uses them
    "fragment_budget_per_sa", "fragment_budget_total",  # checked at every fragment
    "log_level", "log_format",                     # unless `vpn-gw run --log-level/--log-format` set them
    "keepalive_interval",                          # NAT-T keepalive loop of the data plane
    "retransmit_timeout", "retransmit_base", "retransmit_tries",  # IKE SAs negotiated after the reload
    "tcp_max_connections", "tcp_max_per_source", "tcp_idle_timeout",   # TCP encapsulation limits:
    "tcp_max_unauth_frame", "tcp_max_buffered",                        # read from the config each time
})

# Need `vpn-gw` to be restarted: sockets, the data plane, the resolver and publishers, pools.
RESTART_KEYS = frozenset({
    "control_socket", "listen", "ike_port", "natt_port", "tcp_port",
    "dataplane", "path_mtu", "xfrm_fragmentation", "xfrm_nfqueue", "xfrm_nfqueue_fail", "offload", "tun_tso",
    "holdoff_us",
    "outbound_worker",
    "metrics_listen", "crypto_workers",            # the worker processes start with the daemon
    "dns_servers", "dns_port", "dns_timeout", "dns_min_ttl", "dns_max_ttl", "ddns", "pools", "radius",
})


class ReloadRefused(ValueError):
    """The new file changes settings that only a restart applies; nothing was changed."""


def check_live(gateway_changed: tuple[str, ...]) -> None:
    """Raise ReloadRefused if any changed ``[gateway]`` key needs a restart."""
    restart = [k for k in gateway_changed if k not in LIVE_KEYS]
    if restart:
        raise ReloadRefused(
            f"reload refused: [gateway] {', '.join(restart)} can only change with a restart of vpn-gw "
            f"(nothing was applied; restart the daemon, or put the old value back and reload)")


def configure_admission(m: IkeManager, cfg: GatewayConfig) -> None:
    """The admission and fragment-budget settings of ``cfg`` on manager ``m`` (start and reload)."""
    m.half_open_limit = cfg.half_open_limit
    m.cookie_threshold = cfg.cookie_threshold
    m.half_open_per_address = cfg.half_open_per_address
    m.new_sa_rate.rate = cfg.new_sa_rate_per_address
    m.new_sa_rate.burst = cfg.new_sa_burst_per_address
    m.cookies.lifetime = cfg.cookie_secret_lifetime
    m.cookies.grace = cfg.cookie_grace
    m.fragment_budget.per_sa = cfg.fragment_budget_per_sa
    m.fragment_budget.total = cfg.fragment_budget_total


def apply_gateway_settings(gw: Gateway, old: GatewayConfig, new: GatewayConfig,
                           changed: tuple[str, ...]) -> None:
    """Apply the live ``[gateway]`` keys in ``changed`` (all in LIVE_KEYS) to the running parts."""
    m = gw.manager
    configure_admission(m, new)
    if "keepalive_interval" in changed:
        setter = getattr(gw.dataplane, "set_keepalive_interval", None)
        if setter is not None:
            setter(new.keepalive_interval)
    if {"log_level", "log_format"} & set(changed):
        _apply_logging(gw, new)


def _apply_logging(gw: Gateway, new: GatewayConfig) -> None:
    from vpn_gw.log import setup_logging
    override: Any = gw.log_override
    level = override.get("log_level") or new.log_level
    fmt = override.get("log_format") or new.log_format
    setup_logging(level, fmt)
