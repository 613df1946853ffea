"""Remote access: virtual IPs leased from the connection's pools for the clients' configuration
requests (sticky per identity, persisted), and released when the client's IKE SA goes."""
from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from ikev2.cp import Assignment
from vpn_gw.pools import PoolSet

if TYPE_CHECKING:
    from vpn_gw.config import GatewayConfig

log = structlog.get_logger("vpn_gw")


class VirtualIps:
    def __init__(self, pools: PoolSet, config: Callable[[], GatewayConfig],
                 framed: Callable[[str], Any] | None = None):
        self.pools = pools
        self._framed = framed  # identity -> RADIUS Access-Accept attributes (docs/fleet.md)
        self._config = config  # a getter: follows `vpn-gw reload`
        self._owner: dict[int, str] = {}  # ike_id -> identity holding pool leases

    def assign(self, conn: Any, identity: str, req: Any) -> Assignment | None:
        """Lease virtual IPs for a remote-access client from the connection's pools and build
        the configuration reply (None: nothing could be leased)."""
        now = time.time()
        addrs, dns, subnets = [], [], []
        framed = self._framed(identity) if self._framed is not None else None
        for version in sorted(req.address_families):
            fixed = framed and (framed.ip4 if version == 4 else framed.ip6)
            if fixed:  # Framed-IP-Address / Framed-IPv6-Prefix from RADIUS: not a pool lease
                addrs.append(ipaddress.ip_address(fixed))
                continue
            got = self.pools.acquire(conn.pools, identity, version, now=now, requested=req.requested(version))
            if got is None:
                log.warning("address pool exhausted", connection=conn.name, identity=identity, family=version)
                continue
            pool_name, addr = got
            addrs.append(addr)
            pc = self._config().pool(pool_name)
            dns += [d for d in pc.dns if d not in dns]
            subnets += [n for n in pc.subnets if n not in subnets]
        if framed and framed.dns:
            dns = [ipaddress.ip_address(d) for d in framed.dns]
        if not addrs:
            return None
        self.save()
        return Assignment(addresses=tuple(addrs), dns=tuple(dns), subnets=tuple(subnets))

    def assigned(self, ike_id: int, identity: str) -> None:
        self._owner[ike_id] = identity

    def released(self, ike_id: int, conn: Any) -> None:
        """The IKE SA ike_id is gone: its client's addresses go back to the pools (the lease
        stays reserved for the same identity)."""
        owner = self._owner.pop(ike_id, None)
        if owner is None or conn is None or not conn.pools:
            return
        released = self.pools.release(owner, names=[n for n in conn.pools if n in self.pools],
                                      now=time.time())
        log.info("virtual IP released (lease kept for the same identity)", identity=owner,
                 addresses=[str(a) for _, a in released])
        self.save()

    def save(self) -> None:
        try:
            self.pools.save()
        except OSError as e:
            log.error("cannot save pool leases", error=str(e))
