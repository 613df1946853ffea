"""What the engine needs to know about a connection: the sans-IO view of the configuration.

The daemon builds these from its TOML configuration (vpn_gw.config); tests build them directly.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .identity import Identity, IdentityPattern
from .payloads import Proposal, TrafficSelector

if TYPE_CHECKING:
    from .cp import Assignment, CfgRequest
    from .eap.async_server import AsyncEapServer
    from .eap.client import EapClient
    from .eap.server import EapServer


@dataclass
class AuthConfig:
    """How one side authenticates: "psk" or "pubkey" (certificate); later EAP methods."""
    method: str = "psk"
    psk: bytes | None = field(default=None, repr=False)
    certs: list[Any] = field(default_factory=list)  # our chain: end entity first (cryptography x509)
    private_key: Any = field(default=None, repr=False)  # a cryptography private key
    cacerts: list[Any] = field(default_factory=list)  # trust anchors for the peer's certificate
    # a new EapServer per conversation (gateway side), or an asynchronous one (ikev2.eap_async)
    eap_server: Callable[[], EapServer | AsyncEapServer] | None = None
    eap_client: Callable[[], EapClient] | None = None  # a new EapClient per conversation (client side)


@dataclass
class ChildPolicy:
    name: str
    local_ts: list[TrafficSelector]
    remote_ts: list[TrafficSelector]
    esp_proposals: list[Proposal]
    mode: str = "tunnel"
    rekey_time: float = 3600.0
    life_time: float | None = None  # hard limit; default rekey_time * 1.1
    replay_window: int = 1024
    start_action: str = "start"
    dpd_action: str = "clear"
    # Volume limits (0 = none), enforced by the data plane: soft -> rekey, hard -> delete.
    rekey_bytes: int = 0
    life_bytes: int = 0
    rekey_packets: int = 0
    life_packets: int = 0


@dataclass
class IkePolicy:
    name: str
    local_id: Identity
    remote_id: IdentityPattern
    local_auth: AuthConfig
    remote_auth: AuthConfig
    ike_proposals: list[Proposal]
    children: list[ChildPolicy] = field(default_factory=list)
    local_addrs: list[str] = field(default_factory=list)  # empty = any
    remote_addrs: list[str] = field(default_factory=list)  # empty or "%any" = any
    send_idr: bool = True  # include IDr in IKE_AUTH requests when remote_id is exact
    fragmentation: bool = True
    fragment_size: int = 1280  # max IP datagram size of a fragment (as strongSwan's fragment_size)
    forced_encap: bool = False  # fake NAT-D so the peer believes there is a NAT (RFC 3948 always)
    mobike: bool = True
    address_adoption: str | bool = "auto"  # auto: for peers behind NAT and %any (remote access)
    vips: list[str] = field(default_factory=list)  # client: request virtual IPs ("0.0.0.0", "::")
    # gateway: callable(identity, request) -> assignment | None
    address_assigner: Callable[[str, CfgRequest], Assignment | None] | None = None
    retransmit_timeout: float = 4.0
    retransmit_base: float = 1.8
    retransmit_tries: int = 5
    rekey_time: float = 14400.0
    dpd_delay: float = 30.0
    initial_contact: bool = True
    # RFC 8784 post-quantum preshared key (ikev2.exchange_ppk)
    ppk_id: bytes | None = None
    ppk: bytes | None = field(default=None, repr=False)
    ppk_required: bool = False

    def matches_addresses(self, local_ip: str, remote_ip: str) -> bool:
        return _addr_ok(self.local_addrs, local_ip) and _addr_ok(self.remote_addrs, remote_ip)

    def child(self, name: str) -> ChildPolicy | None:
        return next((c for c in self.children if c.name == name), None)


def _addr_ok(allowed: list[str], ip: str) -> bool:
    if not allowed or "%any" in allowed:
        return True
    addr = ipaddress.ip_address(ip)
    for a in allowed:
        try:
            if addr in ipaddress.ip_network(a, strict=False):
                return True
        except ValueError:
            continue  # an FQDN: resolved by the daemon, which passes addresses for matching
    return False
