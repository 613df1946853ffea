"""The ``[radius]`` section of the configuration file (docs/config.md, docs/fleet.md).

```toml
[radius]
servers = ["192.0.2.10", "192.0.2.11"]       # tried in this order; failover to the next
secret = "file:/etc/vpn-gw/radius.secret"     # shared secret, or the secret itself
auth_port = 1812
acct_port = 1813
nas_identifier = "gw1"                        # default: the host name
timeout = "3s"                                # per try
retries = 2                                   # retransmissions per server
accounting = true
interim_interval = "10m"                      # 0 = none; >= 1s, warned below 60s (Acct-Interim-Interval overrides)
dae_port = 3799                               # Disconnect/CoA listener (RFC 5176); 0 = off
dae_listen = "0.0.0.0"
```

Kept in its own module (and called with one line from the configuration loader) so that the
loader's restructuring and this section do not step on each other.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vpn_gw.config.secret import Secret

RADIUS_KEYS = ("servers", "secret", "auth_port", "acct_port", "nas_identifier", "timeout", "retries",
               "accounting", "interim_interval", "dae_port", "dae_listen")
SECRET_WARN_BYTES = 16
MIN_INTERIM = 1.0     # Interim-Update interval: at least 1 s ...
RFC_INTERIM = 60.0    # ... and a warning below 60 s (RFC 2869 5.16 SHOULD NOT)


@dataclass(frozen=True)
class RadiusConfig:
    servers: tuple[Any, ...]  # ipaddress objects, in failover order
    secret: Secret            # the shared secret (bytes)
    auth_port: int = 1812
    acct_port: int = 1813
    nas_identifier: str = ""
    timeout: float = 3.0
    retries: int = 2
    accounting: bool = True
    interim_interval: float = 600.0
    dae_port: int = 3799
    dae_listen: Any = None    # ipaddress object


def parse_radius_section(ctx, top) -> RadiusConfig | None:
    """Validates ``[radius]`` with the loader's helpers (``ctx``: its error collector, ``top``:
    the top-level table). None if the section is absent or has errors (reported in ctx)."""
    from vpn_gw.config.helpers import section_helpers
    C = section_helpers()

    if not top.has("radius"):
        return None
    data = top.data["radius"]
    if not isinstance(data, dict):
        ctx.error(("radius",), f"expected a table ([radius]), got {C._describe(data)}")
        return None
    nerr = len(ctx.errors)
    path = ("radius",)
    t = C._Table(ctx, data, path, RADIUS_KEYS)
    servers = t.get("servers", C._list(C._ip, example='["192.0.2.10", "192.0.2.11"]'))
    secret = t.get("secret", _secret(ctx, path + ("secret",), C))
    auth_port = t.get("auth_port", C._int(1, 65535), 1812)
    acct_port = t.get("acct_port", C._int(1, 65535), 1813)
    nas_identifier = t.get("nas_identifier", C._nonempty_str, None) or socket.gethostname()
    timeout = t.get("timeout", C._duration, 3.0)
    if C._ok(timeout) and not 0.1 <= timeout <= 60:
        ctx.error(path + ("timeout",), f"must be between 0.1s and 60s, got {timeout:g}s")
    retries = t.get("retries", C._int(0, 10), 2)
    accounting = t.get("accounting", C._bool, True)
    interim = t.get("interim_interval", C._duration, 600.0)
    if C._ok(interim) and 0 < interim < MIN_INTERIM:
        ctx.error(path + ("interim_interval",), f"must be 0 (off) or at least {MIN_INTERIM:g}s, "
                                                f"got {interim:g}s")
    elif C._ok(interim) and 0 < interim < RFC_INTERIM:
        # RFC 2869 5.16: the interval SHOULD NOT be smaller than 60 s (a SHOULD NOT: allowed,
        # e.g. for tests or short-lived sessions, but every session costs a request per interval)
        ctx.warn(path + ("interim_interval",), f"{interim:g}s is below the {RFC_INTERIM:g}s that "
                                               f"RFC 2869 5.16 recommends as the minimum")
    dae_port = t.get("dae_port", C._int(0, 65535), 3799)
    dae_listen = t.get("dae_listen", C._ip, None)
    if len(ctx.errors) > nerr:
        return None
    if dae_listen is None:
        import ipaddress
        dae_listen = ipaddress.ip_address("::" if any(s.version == 6 for s in servers) else "0.0.0.0")
    return RadiusConfig(servers=tuple(servers), secret=secret, auth_port=auth_port, acct_port=acct_port,
                        nas_identifier=nas_identifier, timeout=timeout, retries=retries,
                        accounting=accounting, interim_interval=interim, dae_port=dae_port,
                        dae_listen=dae_listen)


def _secret(ctx, path: tuple, C):
    def conv(v):
        if not isinstance(v, str):
            raise C._Bad(f"expected a string, got {C._describe(v, show=False)}")
        if v.startswith("file:"):
            p, data = C._read_file(ctx, v[5:].strip(), "RADIUS secret file")
            C._check_private_perms(ctx, path, Path(p), "RADIUS secret")
            value = data.rstrip(b"\r\n")
        else:
            value = v.encode()
        if not value:
            raise C._Bad("the RADIUS secret is empty")
        if len(value) < SECRET_WARN_BYTES:
            ctx.warn(path, f"RADIUS secret is only {len(value)} bytes; use at least "
                           f"{SECRET_WARN_BYTES} random characters")
        return C.Secret(bytes(value))
    return conv


def check_eap_radius_connections(ctx, conns_raw, top) -> None:
    """A connection with remote_auth = "eap-radius" needs the [radius] section."""
    if top.has("radius") or not isinstance(conns_raw, list):
        return
    for i, cd in enumerate(conns_raw):
        if isinstance(cd, dict) and cd.get("remote_auth") == "eap-radius":
            ctx.error(("connection", i, "remote_auth"),
                      'remote_auth = "eap-radius" needs a [radius] section (servers, secret)')
