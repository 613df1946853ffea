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
from vpn_gw.ddns.addrwatch import AddressWatcher, IfAddr, read_addresses, select_addresses
from vpn_gw.ddns.dyndns2 import Dyndns2Publisher, parse_answer
from vpn_gw.ddns.publisher import Backoff, DnsUpdatePublisher, PublishResult
from vpn_gw.ddns.resolver import PeerResolver, ResolveResult, is_ip_literal

__all__ = [
    "PeerResolver", "ResolveResult", "is_ip_literal",
    "AddressWatcher", "IfAddr", "read_addresses", "select_addresses",
    "DnsUpdatePublisher", "PublishResult", "Backoff",
    "Dyndns2Publisher", "parse_answer",
]
