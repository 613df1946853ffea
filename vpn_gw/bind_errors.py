"""One sentence for a socket that cannot be bound: which address and port, why, what to do.

``vpn-gw run`` used to print the bare ``[Errno 99] Cannot assign requested address``; the
daemon now reports :func:`explain` 's text for its IKE sockets (:class:`BindError`, an OSError
that ``vpn-gw run`` prints), its TCP listener and its metrics port.
"""
from __future__ import annotations

import errno

__all__ = ["BindError", "explain"]


class BindError(OSError):
    """A listening socket could not be bound; ``str()`` is :func:`explain`'s sentence."""

    def __init__(self, e: OSError, address: str, port: int, what: str, setting: str):
        super().__init__(e.errno, explain(e, address, port, what, setting))

    def __str__(self) -> str:
        return self.strerror or ""


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def explain(e: OSError, address: str, port: int, what: str, setting: str) -> str:
    """``what``: e.g. "UDP (IKE)"; ``setting``: the config keys that chose address/port."""
    where = f"cannot listen on {what} {_endpoint(address, port)}"
    if e.errno == errno.EADDRNOTAVAIL:
        return (f"{where}: {address} is not an address of this host. Add it to an interface "
                f"(ip address add {address}/PREFIX dev IFACE) or fix {setting}")
    if e.errno == errno.EADDRINUSE:
        proto = "u" if what.startswith("UDP") else "t"
        return (f"{where}: the port is already in use by another program (another vpn-gw, or "
                f"strongSwan's charon: systemctl disable --now strongswan-starter). See who has it "
                f"with: ss -l{proto}np 'sport = :{port}'; or change {setting}")
    if e.errno in (errno.EACCES, errno.EPERM):
        return (f"{where}: permission denied; ports below 1024 need root or the capability "
                f"CAP_NET_BIND_SERVICE (the systemd unit grants it), or change {setting}")
    if e.errno == errno.EAFNOSUPPORT:
        return f"{where}: this host has no {'IPv6' if ':' in address else 'IPv4'}; fix {setting}"
    return f"{where}: {e.strerror or e}"
