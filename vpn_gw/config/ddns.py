"""``[[ddns]]``: publish a WAN interface's address in DNS (RFC 2136 or dyndns2)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vpn_gw.config.convert import (
    _HOST_RE,
    BAD,
    _Bad,
    _choice,
    _Ctx,
    _describe,
    _duration,
    _ifname,
    _int,
    _list,
    _nonempty_str,
    _ok,
    _str,
    _Table,
    _tables,
)
from vpn_gw.config.credentials import _psk
from vpn_gw.config.keys import _CONN_HINT, _GW_HINT, DDNS_KEYS
from vpn_gw.config.secret import Secret

TSIG_ALGORITHMS = ("hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224", "hmac-sha1", "hmac-md5")


@dataclass(frozen=True)
class DdnsConfig:
    """One ``[[ddns]]``: publish the address of a WAN interface under some names."""
    interface: str
    names: tuple[str, ...]
    method: str                             # rfc2136 | dyndns2
    families: tuple[int, ...]
    update_period: float                    # seconds, 0 = only on change
    server: str
    port: int
    zone: str | None = None                 # rfc2136
    tsig_name: str | None = None
    tsig_secret: Secret | None = None
    tsig_algorithm: str = "hmac-sha256"
    ttl: int = 60
    scheme: str = "https"                   # dyndns2
    path: str = "/nic/update"
    user: str | None = None
    password: Secret | None = None
    ca_file: Path | None = None
    user_agent: str = "vpn-gw/0.1"
    mode: str = "replace"                   # rfc2136: replace | member (docs/fleet.md)
    fleet_pool: str | None = None           # member: the postgresql [[pool]] whose heartbeats reap dead members


def _family(v):
    if v not in (4, 6) or isinstance(v, bool):
        raise _Bad(f"expected 4 or 6, got {_describe(v)}")
    return v


def _fqdn(v):
    v = _str(v).rstrip(".")
    if not _HOST_RE.fullmatch(v) or "." not in v:
        raise _Bad(f"{v!r} is not a fully qualified domain name")
    return v


def _ddns_tables(ctx: _Ctx, top: _Table, pools: dict | None = None) -> list[DdnsConfig]:
    """``pools``: the parsed ``[[pool]]`` tables by name (None: the pools are broken, ``fleet_pool``
    is not checked)."""
    raw = top.get("ddns", lambda v: _tables(v, "ddns"), [])
    if raw is BAD:
        return []
    out = []
    for k, d in enumerate(raw):
        path = ("ddns", k)
        nerr = len(ctx.errors)
        t = _Table(ctx, d, path, DDNS_KEYS, {**_GW_HINT, **_CONN_HINT})
        interface = t.get("interface", _ifname)
        names = t.get("names", _list(_fqdn, example='["gw.example.org"]'))
        method = t.get("method", _choice(("rfc2136", "dyndns2")))
        families = t.get("families", _list(_family, example="[4, 6]"), (4, 6) if method == "rfc2136" else (4,))
        update_period = t.get("update_period", _duration, 3600.0 if method == "rfc2136" else 86400.0)
        server = t.get("server", _nonempty_str)
        scheme = t.get("scheme", _choice(("https", "http")), "https")
        default_port = 53 if method == "rfc2136" else (443 if scheme == "https" else 80)
        port = t.get("port", _int(1, 65535), default_port)
        kw = {}
        if method == "rfc2136":
            kw["zone"] = t.get("zone", _fqdn)
            kw["tsig_name"] = t.get("tsig_name", _nonempty_str)
            kw["tsig_secret"] = t.get("tsig_secret", _psk(ctx, path + ("tsig_secret",)))
            kw["tsig_algorithm"] = t.get("tsig_algorithm", _choice(TSIG_ALGORITHMS), "hmac-sha256")
            kw["ttl"] = t.get("ttl", _int(0, 86400), 60)
            kw["mode"] = t.get("mode", _choice(("replace", "member")), "replace")
            kw["fleet_pool"] = t.get("fleet_pool", _nonempty_str, None)
            fleet_pool = kw["fleet_pool"]
            if fleet_pool not in (None, BAD) and kw["mode"] != "member":
                ctx.error(path + ("fleet_pool",), "'fleet_pool' needs mode = \"member\"")
            elif fleet_pool not in (None, BAD) and pools is not None:
                pc = pools.get(fleet_pool)
                if pc is None:
                    known = ", ".join(repr(n) for n in pools) or "none"
                    ctx.error(path + ("fleet_pool",), f"no [[pool]] named {fleet_pool!r} (pools: {known})")
                elif pc.backend != "postgresql":
                    ctx.error(path + ("fleet_pool",), f"pool {fleet_pool!r} has backend = {pc.backend!r}; "
                              f"the fleet's heartbeats are in the database of a backend = \"postgresql\" pool")
            if _ok(names, kw["zone"]) and names:
                for j, n in enumerate(names):
                    if not (n == kw["zone"] or n.endswith("." + kw["zone"])):
                        ctx.error(path + ("names", j), f"{n!r} is not inside zone {kw['zone']!r}")
            for k2 in ("user", "password", "ca_file", "path", "scheme"):
                if t.has(k2):
                    ctx.error(path + (k2,), f"'{k2}' is for method = \"dyndns2\", not \"rfc2136\"")
        elif method == "dyndns2":
            kw["user"] = t.get("user", _nonempty_str)
            kw["password"] = t.get("password", _psk(ctx, path + ("password",)))
            kw["path"] = t.get("path", _nonempty_str, "/nic/update")
            kw["user_agent"] = t.get("user_agent", _nonempty_str, "vpn-gw/0.1")
            ca = t.get("ca_file", _nonempty_str, None)
            kw["ca_file"] = ctx.path(ca) if ca not in (None, BAD) else None
            kw["scheme"] = scheme
            for k2 in ("zone", "tsig_name", "tsig_secret", "tsig_algorithm", "ttl", "mode", "fleet_pool"):
                if t.has(k2):
                    ctx.error(path + (k2,), f"'{k2}' is for method = \"rfc2136\", not \"dyndns2\"")
        if len(ctx.errors) > nerr:
            continue
        out.append(DdnsConfig(interface=interface, names=names, method=method, families=families,
                              update_period=update_period, server=server, port=port, **kw))
    return out

