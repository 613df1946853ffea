"""Turn validated configuration (vpn_gw.config) into the engine's view (ikev2.policy)."""
from __future__ import annotations

import ipaddress
import socket

from ikev2.identity import Identity
from ikev2.payloads import TrafficSelector
from ikev2.policy import AuthConfig, ChildPolicy, IkePolicy


def _secret(v):
    return None if v is None else (v.reveal() if hasattr(v, "reveal") else v)


def child_policy(c) -> ChildPolicy:
    return ChildPolicy(
        name=c.name,
        local_ts=[TrafficSelector.from_network(n) for n in c.local_ts],
        remote_ts=[TrafficSelector.from_network(n) for n in c.remote_ts],
        esp_proposals=list(c.esp_proposals),
        mode=c.mode,
        rekey_time=c.rekey_time or 0.0,
        life_time=c.life_time or None,
        replay_window=c.replay_window,
        start_action=c.start_action,
        dpd_action=c.dpd_action,
    )


def ike_policy(conn, gateway=None, address_assigner=None) -> IkePolicy:
    """One IkePolicy per [[connection]]. FQDN remote addresses are left to the daemon's resolver;
    for matching they count as "any" until resolved."""
    if conn.auth == "psk":
        local_auth = AuthConfig("psk", psk=_secret(conn.psk))
        remote_auth = AuthConfig("psk", psk=_secret(conn.psk))
    elif conn.auth == "pubkey":
        local_auth = AuthConfig("pubkey", certs=list(conn.certs), private_key=_secret(conn.private_key))
        remote_auth = AuthConfig("pubkey", cacerts=list(conn.cacerts))
    else:
        local_auth = AuthConfig(conn.auth)
        remote_auth = AuthConfig(conn.auth)
    local_id = conn.local_id
    if local_id is None:
        if conn.certs:
            from ikev2.certs import default_identity
            local_id = default_identity(conn.certs[0])
        elif conn.local_addrs:
            local_id = Identity.parse(str(conn.local_addrs[0]))
        else:
            local_id = Identity.parse(socket.gethostname())  # documented fallback: the host name
    remote_addrs = []
    for a in conn.remote_addrs:
        if isinstance(a, str):
            remote_addrs.append("%any")  # an FQDN: resolved by the daemon when initiating
        else:
            remote_addrs.append(str(a))
    return IkePolicy(
        name=conn.name,
        local_id=local_id,
        remote_id=conn.remote_id,
        local_auth=local_auth,
        remote_auth=remote_auth,
        ike_proposals=list(conn.ike_proposals),
        children=[child_policy(c) for c in conn.children],
        local_addrs=[str(a) for a in conn.local_addrs],
        remote_addrs=remote_addrs,
        fragmentation=conn.fragmentation,
        fragment_size=conn.fragment_size,
        forced_encap=conn.encap,
        mobike=conn.mobike,
        address_adoption=conn.address_adoption,
        vips=[str(v) for v in getattr(conn, "vips", ())],
        address_assigner=address_assigner if getattr(conn, "pools", ()) else None,
        rekey_time=conn.rekey_time or 0.0,
        dpd_delay=conn.dpd_delay or 0.0,
        **({} if gateway is None else {
            "retransmit_timeout": gateway.retransmit_timeout,
            "retransmit_base": gateway.retransmit_base,
            "retransmit_tries": gateway.retransmit_tries,
        }),
    )


def initiate_target(conn) -> str | None:
    """First remote address usable for initiating (IP literal or FQDN), or None."""
    for a in conn.remote_addrs:
        if isinstance(a, str):
            return a
        if isinstance(a, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            return str(a)
    return None
