"""Remote-access address pools: allocation with sticky leases (`local`, leases kept in a local
file) and source NAT of pool addresses with nftables (`masquerade`)."""
from __future__ import annotations

from vpn_gw.pools.local import (
    DEFAULT_LEASE_DIR,
    LEASE_FILE_FORMAT,
    AddressPool,
    Lease,
    LeaseFileError,
    LeaseStore,
    PoolSet,
    default_lease_file,
    parse_pool_addrs,
)

__all__ = [
    "DEFAULT_LEASE_DIR", "LEASE_FILE_FORMAT", "AddressPool", "Lease", "LeaseFileError",
    "LeaseStore", "PoolSet", "default_lease_file", "parse_pool_addrs",
]
