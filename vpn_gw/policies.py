"""Turn validated configuration (vpn_gw.config) into the engine's view (ikev2.policy)."""
from __future__ import annotations

import ipaddress
import os
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
        rekey_bytes=c.rekey_bytes or 0,
        life_bytes=c.life_bytes or 0,
        rekey_packets=c.rekey_packets or 0,
        life_packets=c.life_packets or 0,
    )


def _auth_config(conn, method: str, local: bool) -> AuthConfig:
    """How one side authenticates: ours (local) or the peer's."""
    if method == "psk":
        return AuthConfig("psk", psk=_secret(conn.psk))
    if method == "pubkey":
        if local:
            return AuthConfig("pubkey", certs=list(conn.certs), private_key=_secret(conn.private_key))
        return AuthConfig("pubkey", cacerts=list(conn.cacerts))
    eap = method.removeprefix("eap-")
    tls = None
    if eap == "tls":
        from ikev2.eap import TlsConfig
        tls = TlsConfig(certificate=conn.certs[0] if conn.certs else None,
                        private_key=_secret(conn.private_key), ca=list(conn.cacerts) or None,
                        chain=list(conn.certs[1:]) or None)
    if local:
        from ikev2.eap import EapClient
        identity = getattr(conn, "eap_identity", None) or str(conn.local_id)
        password = _secret(getattr(conn, "eap_password", None))
        if isinstance(password, bytes):
            password = password.decode("utf-8", "replace")
        return AuthConfig(method, eap_client=lambda: EapClient(identity, password=password, tls_context=tls,
                                                               allowed={eap}, random_bytes=os.urandom))
    from ikev2.eap import EapServer, UserDB
    users = UserDB.load(str(conn.users_file)) if getattr(conn, "users_file", None) else None
    return AuthConfig(method, eap_server=lambda: EapServer(eap, users, os.urandom, tls_context=tls),
                      cacerts=list(conn.cacerts))


def ike_policy(conn, gateway=None, address_assigner=None, eap_backend=None) -> IkePolicy:
    """One IkePolicy per [[connection]]. FQDN remote addresses are left to the daemon's resolver;
    for matching they count as "any" until resolved."""
    remote_method = getattr(conn, "remote_auth", conn.auth)
    if conn.auth == "eap-tls" and remote_method == "eap-tls":
        # EAP-only gateway (RFC 5998): no AUTH before EAP for clients that accept it; a
        # certificate AUTH for those that do not.
        local_auth = AuthConfig("eap-only", certs=list(conn.certs), private_key=_secret(conn.private_key))
    else:
        local_auth = _auth_config(conn, conn.auth, local=True)
    if remote_method == "eap-radius":  # EAP relayed to RADIUS: eap_backend() -> ikev2.eap_async.AsyncEapServer
        remote_auth = AuthConfig("eap-radius", eap_server=eap_backend)
    else:
        remote_auth = _auth_config(conn, getattr(conn, "remote_auth", conn.auth), local=False)
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
        ppk_id=conn.ppk_id.encode() if conn.ppk_id else None,
        ppk=conn.ppk.reveal() if conn.ppk is not None else None,
        ppk_required=conn.ppk_required,
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
