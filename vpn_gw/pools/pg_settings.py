"""The PostgreSQL keys of ``[[pool]]`` (docs/config.md, docs/fleet.md), validated in their own
module and called with one line from the configuration loader (which is being restructured).

```toml
[[pool]]
name = "rw"
addrs = "10.99.0.0/24"                     # must equal the pool in the database (vpn-gw pool add)
backend = "postgresql"
database = "file:/etc/vpn-gw/pooldb.conn"  # libpq connection string (it may hold a password)
fleet_member = "gw1"                       # this gateway's name in the fleet (default: host name)
heartbeat_interval = "10s"
heartbeat_timeout = "30s"                  # a gateway silent this long is dead: its leases reusable
```
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vpn_gw.config.secret import Secret

PG_POOL_KEYS = ("backend", "database", "fleet_member", "heartbeat_interval", "heartbeat_timeout")
BACKENDS = ("file", "postgresql")


@dataclass(frozen=True)
class PgPoolSettings:
    database: Secret          # the libpq connection string (str)
    fleet_member: str
    heartbeat_interval: float = 10.0
    heartbeat_timeout: float = 30.0

    @property
    def key(self) -> tuple:
        """Pools with the same key share one database connection."""
        return (self.database.reveal(), self.fleet_member, self.heartbeat_timeout)


def parse_pool_backend(ctx, t, path: tuple):
    """-> (backend, PgPoolSettings | None); errors go to ctx."""
    from vpn_gw.config.helpers import section_helpers
    C = section_helpers()
    backend = t.get("backend", C._choice(BACKENDS), "file")
    if backend != "postgresql":
        for k in PG_POOL_KEYS[1:]:
            if t.has(k):
                ctx.error(path + (k,), f"'{k}' is only used with backend = \"postgresql\"")
        return backend, None
    if t.has("lease_file"):
        ctx.error(path + ("lease_file",), "'lease_file' is not used with backend = \"postgresql\"")
    database = t.get("database", _conninfo(ctx, path + ("database",), C),
                     why=' (backend = "postgresql" needs a libpq connection string)')
    member = t.get("fleet_member", C._nonempty_str, None) or socket.gethostname()
    interval = t.get("heartbeat_interval", C._duration, 10.0)
    timeout = t.get("heartbeat_timeout", C._duration, 30.0)
    if C._ok(interval, timeout) and (interval <= 0 or timeout < 2 * interval):
        ctx.error(path + ("heartbeat_timeout",), f"must be at least twice heartbeat_interval "
                                                 f"({interval:g}s), and the interval more than 0")
    if not C._ok(database, interval, timeout):
        return backend, None
    return backend, PgPoolSettings(database, member, interval, timeout)


def _conninfo(ctx, path, C):
    def conv(v):
        if not isinstance(v, str):
            raise C._Bad(f"expected a string, got {C._describe(v, show=False)}")
        if v.startswith("file:"):
            p, data = C._read_file(ctx, v[5:].strip(), "database connection file")
            C._check_private_perms(ctx, path, p, "database connection")
            try:
                v = data.decode().strip()
            except UnicodeDecodeError:
                raise C._Bad("the database connection file is not UTF-8 text") from None
        if not v.strip():
            raise C._Bad("empty connection string")
        try:
            from psycopg.conninfo import conninfo_to_dict
            conninfo_to_dict(v)
        except ImportError:
            pass  # checked when the daemon connects
        except Exception as e:  # noqa: BLE001 - psycopg.ProgrammingError: malformed string
            raise C._Bad(f"malformed connection string: {str(e).splitlines()[0]}") from None
        return C.Secret(v)
    return conv


def check_connection_backends(ctx, conns_raw, connections, pools) -> None:
    """One connection hands out from pools of one backend (a file pool and a PostgreSQL pool in
    one connection would need two kinds of lease for one client)."""
    by_name = {pc.name: pc for _, pc in pools}
    names = [cd.get("name") if isinstance(cd, dict) else None for cd in conns_raw] \
        if isinstance(conns_raw, list) else []
    for c in connections:
        kinds = {by_name[p].backend for p in getattr(c, "pools", ()) if p in by_name}
        if len(kinds) > 1 and c.name in names:
            ctx.error(("connection", names.index(c.name), "pools"),
                      "pools of one connection must all have the same backend (file or postgresql)")
