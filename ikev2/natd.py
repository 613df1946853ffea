"""NAT detection (RFC 7296 2.23): NAT_DETECTION_SOURCE_IP / _DESTINATION_IP hashes."""
from __future__ import annotations

import functools
import hashlib
import ipaddress
import struct


@functools.lru_cache(maxsize=4096)
def _packed(ip: str) -> bytes:
    """The address in network order (parsed once per address: four hashes per IKE_SA_INIT)."""
    return ipaddress.ip_address(ip).packed


def natd_hash(spi_i: bytes, spi_r: bytes, ip: str, port: int) -> bytes:
    """SHA-1(SPIi | SPIr | IP | Port)."""
    return hashlib.sha1(spi_i + spi_r + _packed(ip) + struct.pack("!H", port)).digest()
