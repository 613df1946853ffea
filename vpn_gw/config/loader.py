"""Reading a configuration: ``load_config(path)``, ``parse_config(text)``."""
from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vpn_gw.config.connection import _check_interfaces, _connection
from vpn_gw.config.convert import BAD, _Ctx, _ok, _Table, _tables
from vpn_gw.config.credentials import _check_inline_secret_perms
from vpn_gw.config.ddns import _ddns_tables
from vpn_gw.config.errors import ConfigError
from vpn_gw.config.gateway import GatewayConfig, _gateway_settings
from vpn_gw.config.keys import _CHILD_HINT, _CONN_HINT, _GW_HINT, _POOL_HINT, TOP_KEYS
from vpn_gw.config.locator import KeyLocator
from vpn_gw.config.pools import _check_pools, _interface_addrs, _pools
from vpn_gw.config.toml_errors import explain_toml_error


def load_config(path: str | os.PathLike, *, interface_addrs: Iterable[Any] = ()) -> GatewayConfig:
    """Read and validate a configuration file. Raises ConfigError.

    ``interface_addrs``: the addresses on the gateway's interfaces (see ``parse_config``)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read configuration: {e.strerror or e}", file=str(path)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ConfigError("file is not valid UTF-8", file=str(path), line=line) from None
    return parse_config(text, str(path), p.resolve().parent, _source=p,
                        interface_addrs=interface_addrs)


def parse_config(text: str, filename: str | None = "<string>", base_dir: str | os.PathLike | None = None,
                 *, _source: Path | None = None,
                 interface_addrs: Iterable[Any] = ()) -> GatewayConfig:
    """Validate configuration text. Relative paths in it resolve against base_dir (default cwd).

    ``interface_addrs``: the addresses on the gateway's interfaces, each an interface like
    ``"192.0.2.1/24"`` (str or ``ipaddress`` interface/network) or a pair ``("eth0",
    "192.0.2.1/24")``; no [[pool]] may overlap their subnets. The daemon passes the real ones;
    ``check-config`` and tests may pass none."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise explain_toml_error(text, e, filename) from None
    ctx = _Ctx(filename, KeyLocator(text), Path(base_dir) if base_dir else Path.cwd())
    ctx.interface_addrs = _interface_addrs(interface_addrs)
    ctx.data = data
    cfg = _build(ctx, data, _source)
    if ctx.errors or cfg is None:
        errors = sorted(ctx.errors, key=lambda p: p.line if p.line is not None else 1 << 30)
        raise ConfigError(errors[0], problems=errors)
    return cfg


def _build(ctx: _Ctx, data: dict, source: Path | None) -> GatewayConfig | None:
    top = _Table(ctx, data, (), TOP_KEYS, {**_GW_HINT, **_CONN_HINT, **_CHILD_HINT, **_POOL_HINT})
    settings = _gateway_settings(ctx, data)
    listen, dataplane = settings["listen"], settings["dataplane"]
    pools_raw, pools = _pools(ctx, top)
    ddns = _ddns_tables(ctx, top, {pc.name: pc for _, pc in pools} if pools_raw is not None else None)
    conns_raw = top.get("connection", lambda v: _tables(v, "connection"), [])
    connections = []
    seen: dict[str, int] = {}
    if conns_raw is not BAD:
        for i, cd in enumerate(conns_raw):
            name = cd.get("name")
            if isinstance(name, str):
                if name in seen:
                    first = ctx.loc.line(("connection", seen[name], "name"))
                    ctx.error(("connection", i, "name"), f"duplicate connection name {name!r}"
                              + (f" (first defined at line {first})" if first else ""))
                else:
                    seen[name] = i
            conn = _connection(ctx, cd, ("connection", i), listen)
            if conn is not None:
                connections.append(conn)
        if not conns_raw:
            ctx.warn((), "no connections defined")
    _check_interfaces(ctx, connections)
    if _ok(dataplane) and dataplane not in ("userspace", "none"):
        # TCP encapsulation carries ESP in the TCP stream: only our userspace data plane can.
        names = [cd.get("name") for cd in conns_raw] if conns_raw is not BAD else []
        for c in connections:
            if c.transport != "udp":
                ctx.error(("connection", names.index(c.name), "transport"),
                          f'transport = "{c.transport}" needs dataplane = "userspace" (ESP travels '
                          f'in the TCP connection)')
    _check_pools(ctx, pools_raw, pools, conns_raw, connections)
    from vpn_gw.radius.settings import check_eap_radius_connections, parse_radius_section
    radius = parse_radius_section(ctx, top)
    check_eap_radius_connections(ctx, conns_raw, top)
    from vpn_gw.pools.pg_settings import check_connection_backends
    check_connection_backends(ctx, conns_raw, connections, pools)
    if ctx.errors:
        return None
    _check_inline_secret_perms(ctx, source)
    warnings = sorted(ctx.warnings, key=lambda p: p.line if p.line is not None else 1 << 30)
    return GatewayConfig(**settings, connections=tuple(connections),
                         pools=tuple(pc for _, pc in pools), ddns=tuple(ddns), source=source, radius=radius,
                         warnings=tuple(warnings))
