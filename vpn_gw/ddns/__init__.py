"""Dynamic DNS: resolving peers named by FQDN, and publishing the gateway's own address.

* :class:`PeerResolver` (``resolver``): A/AAAA look-ups of ``remote_addrs`` FQDNs with
  dnspython, cached for their (clamped) TTL; :meth:`PeerResolver.due` lists the names to look
  up again. It reports only; SAs move on authenticated packets, never on DNS alone.
* :class:`AddressWatcher` (``addrwatch``): netlink watch of the WAN interface's addresses.
* :class:`DnsUpdatePublisher` (``publisher``): RFC 2136 UPDATE signed with TSIG.
* :class:`Dyndns2Publisher` (``dyndns2``): the dyndns2 HTTP(S) protocol, with the back-off and
  hard-stop rules providers require.

See docs/ddns.md.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Imported on first use (PEP 562): dnspython, http.client and ssl cost ~80 ms at start-up, which
# a restarted gateway without [[ddns]] tables or FQDN peers should not pay (issue 14 item 10).
_WHERE = {
    "PeerResolver": "resolver", "ResolveResult": "resolver", "is_ip_literal": "resolver",
    "AddressWatcher": "addrwatch", "IfAddr": "addrwatch", "read_addresses": "addrwatch",
    "select_addresses": "addrwatch",
    "DnsUpdatePublisher": "publisher", "PublishResult": "publisher", "Backoff": "publisher",
    "Dyndns2Publisher": "dyndns2", "parse_answer": "dyndns2",
}

__all__ = [
    "PeerResolver", "ResolveResult", "is_ip_literal",
    "AddressWatcher", "IfAddr", "read_addresses", "select_addresses",
    "DnsUpdatePublisher", "PublishResult", "Backoff",
    "Dyndns2Publisher", "parse_answer",
]

if TYPE_CHECKING:  # pragma: no cover
    from vpn_gw.ddns.addrwatch import AddressWatcher, IfAddr, read_addresses, select_addresses
    from vpn_gw.ddns.dyndns2 import Dyndns2Publisher, parse_answer
    from vpn_gw.ddns.publisher import Backoff, DnsUpdatePublisher, PublishResult
    from vpn_gw.ddns.resolver import PeerResolver, ResolveResult, is_ip_literal


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'vpn_gw.ddns' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"vpn_gw.ddns.{module}"), name)
    globals()[name] = value
    return value
