"""``[[pool]]``: virtual IP pools for remote-access clients."""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vpn_gw.config.connection import ConnectionConfig
from vpn_gw.config.convert import (
    BAD,
    IPAddress,
    IPNetwork,
    _at_line,
    _Bad,
    _Ctx,
    _did_you_mean,
    _ifname,
    _ip,
    _list,
    _name,
    _nonempty_str,
    _str,
    _Table,
    _tables,
    _ts,
)
from vpn_gw.config.keys import _CHILD_HINT, _CONN_HINT, _GW_HINT, POOL_KEYS

if TYPE_CHECKING:
    from vpn_gw.pools.pg_settings import PgPoolSettings


@dataclass(frozen=True)
class PoolConfig:
    """One ``[[pool]]``: virtual IPs for remote-access clients (see vpn_gw.pools, ikev2.cp)."""
    name: str
    addrs: str                              # normalised: "10.99.0.0/24" or "10.99.0.10-10.99.0.200"
    first: IPAddress                        # the range as written (a CIDR's network address ...
    last: IPAddress                         # ... and broadcast address included)
    network: IPNetwork | None               # the CIDR, None for a range
    dns: tuple[IPAddress, ...]              # INTERNAL_IP4/6_DNS
    subnets: tuple[IPNetwork, ...]          # INTERNAL_IP4/6_SUBNET (split tunnelling)
    lease_file: Path
    masquerade: str | None = None           # interface: source-NAT the pool's traffic leaving there
    backend: str = "file"                   # "file" | "postgresql" (vpn_gw.pools.pg_settings)
    postgres: PgPoolSettings | None = None  # for backend = "postgresql"

    @property
    def version(self) -> int:
        return self.first.version


# Blocks a pool must stay out of: addresses a client cannot use as its own.
_NOT_FOR_POOLS = tuple((ipaddress.ip_network(n), why) for n, why in (
    ("0.0.0.0/8", "'this network'"), ("127.0.0.0/8", "loopback"), ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"), ("240.0.0.0/4", "reserved, includes 255.255.255.255"),
    ("::/127", "unspecified and loopback"), ("fe80::/10", "link-local"), ("ff00::/8", "multicast"),
))


def _span_overlaps(first, last, net) -> bool:
    return first.version == net.version and int(first) <= int(net[-1]) and int(net[0]) <= int(last)


def _pool_addrs(v):
    from vpn_gw.pools import parse_pool_addrs
    v = _str(v)
    try:
        first, last, net = parse_pool_addrs(v)
    except ValueError as e:
        raise _Bad(str(e)) from None
    for block, why in _NOT_FOR_POOLS:
        if _span_overlaps(first, last, block):
            raise _Bad(f"{v!r} overlaps {block} ({why}): a pool must hold unicast addresses a "
                       f"client can use")
    return first, last, net


def _unicast_ip(v):
    a = _ip(v)
    if a.is_unspecified or a.is_multicast or a.is_loopback:
        raise _Bad(f"{a} is not a unicast address")
    return a


def _interface_addrs(items: Iterable[Any]) -> list[tuple[str | None, Any]]:
    """Normalise parse_config's interface_addrs to (name or None, ip_interface)."""
    out = []
    for item in items:
        name = None
        if isinstance(item, tuple):
            name, item = item
        if isinstance(item, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            item = f"{item.network_address}/{item.prefixlen}"
        out.append((name, ipaddress.ip_interface(item)))
    return out


def _pool(ctx: _Ctx, d: dict, path: tuple) -> PoolConfig | None:
    from vpn_gw.pools import default_lease_file
    nerr = len(ctx.errors)
    t = _Table(ctx, d, path, POOL_KEYS, {**_GW_HINT, **_CONN_HINT, **_CHILD_HINT})
    name = t.get("name", _name)
    addrs = t.get("addrs", _pool_addrs, why=' (a CIDR like "10.99.0.0/24" or a range like '
                                            '"10.99.0.10-10.99.0.200")')
    dns = t.get("dns", _list(_unicast_ip, example='["10.1.0.53"]'), ())
    subnets = t.get("subnets", _list(_ts, example='["10.1.0.0/24"]'), ())
    lease_file = t.get("lease_file", _nonempty_str, None)
    masquerade = t.get("masquerade", _ifname, None)
    from vpn_gw.pools.pg_settings import parse_pool_backend
    backend, postgres = parse_pool_backend(ctx, t, path)
    if len(ctx.errors) > nerr:
        return None
    first, last, net = addrs
    return PoolConfig(masquerade=masquerade, backend=backend, postgres=postgres, name=name,
                      addrs=str(net) if net is not None else f"{first}-{last}", first=first, last=last,
                      network=net, dns=dns, subnets=subnets,
                      lease_file=ctx.path(lease_file) if lease_file is not None
                      else default_lease_file(name))


def _pools(ctx: _Ctx, top: _Table) -> tuple[list | None, list[tuple[int, PoolConfig]]]:
    """The [[pool]] tables: (raw tables or None if not an array of tables, [(index, PoolConfig)])."""
    raw = top.get("pool", lambda v: _tables(v, "pool"), [])
    if raw is BAD:
        return None, []
    out: list[tuple[int, PoolConfig]] = []
    seen: dict[str, int] = {}
    for k, pd in enumerate(raw):
        path = ("pool", k)
        name = pd.get("name")
        if isinstance(name, str):
            if name in seen:
                first = ctx.loc.line(("pool", seen[name], "name"))
                ctx.error(path + ("name",), f"duplicate pool name {name!r}"
                          + (f" (first defined at line {first})" if first else ""))
            else:
                seen[name] = k
        pc = _pool(ctx, pd, path)
        if pc is None:
            continue
        for k2, other in out:
            if pc.version == other.version and int(pc.first) <= int(other.last) and \
                    int(other.first) <= int(pc.last):
                ctx.error(path + ("addrs",), f"pool {pc.name!r} ({pc.addrs}) overlaps pool "
                          f"{other.name!r} ({other.addrs}){_at_line(ctx, ('pool', k2, 'addrs'))}")
            if pc.lease_file == other.lease_file:
                ctx.error(path + ("lease_file",), f"lease_file {str(pc.lease_file)!r} is also used "
                          f"by pool {other.name!r}{_at_line(ctx, ('pool', k2))}; each pool needs "
                          f"its own")
        out.append((k, pc))
    return raw, out


def _check_pools(ctx: _Ctx, pools_raw: list | None, pools: list[tuple[int, PoolConfig]],
                 conns_raw, connections: Sequence[ConnectionConfig]):
    """Connections' pool names exist; pools stay clear of protected and interface subnets."""
    conns_raw = conns_raw if conns_raw is not BAD else []
    names = [pd.get("name") for pd in (pools_raw or []) if isinstance(pd.get("name"), str)]
    used: set[str] = set()
    for i, cd in enumerate(conns_raw):
        refs = cd.get("pools")
        if not isinstance(refs, list):
            continue
        for j, n in enumerate(refs):
            if not isinstance(n, str):
                continue
            used.add(n)
            if pools_raw is not None and n not in names:
                hint = _did_you_mean(n, names) or (f" (defined pools: {', '.join(names)})" if names
                                                   else " (no [[pool]] is defined)")
                ctx.error(("connection", i, "pools", j), f"unknown pool {n!r}{hint}")
    index: dict[Any, int] = {}
    for i, cd in enumerate(conns_raw):
        index.setdefault(cd.get("name"), i)
    ifaces = ctx.interface_addrs
    for k, pc in pools:
        path = ("pool", k, "addrs")
        if pc.name not in used:
            ctx.warn(("pool", k, "name"), f"pool {pc.name!r} is not used by any connection "
                                          f"(list it in a connection's pools)")
        for c in connections:
            ci = index.get(c.name)
            for j, ch in enumerate(c.children):
                for m, ts in enumerate(ch.local_ts):
                    if ts.prefixlen == 0 or not _span_overlaps(pc.first, pc.last, ts):
                        continue  # 0.0.0.0/0 and ::/0 mean "everything" (full tunnel), no subnet
                    where = _at_line(ctx, ("connection", ci, "child", j, "local_ts", m)) \
                        if ci is not None else ""
                    ctx.error(path, f"pool {pc.name!r} ({pc.addrs}) overlaps local_ts {ts} of "
                                    f"connection {c.name!r} child {ch.name!r}{where}: the "
                                    f"gateway's protected subnets cannot be handed out to clients")
        reported = set()
        for ifname, iface in ifaces:
            net = iface.network
            if (ifname, net) in reported or not _span_overlaps(pc.first, pc.last, net):
                continue
            reported.add((ifname, net))
            who = f"interface {ifname}" if ifname else "a gateway interface"
            ctx.error(path, f"pool {pc.name!r} ({pc.addrs}) overlaps {net}, the subnet of {who} "
                            f"(address {iface})")
