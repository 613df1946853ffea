"""NAT detection (RFC 7296 2.23): NAT_DETECTION_SOURCE_IP / _DESTINATION_IP hashes."""
from __future__ import annotations

import hashlib
import ipaddress
import struct


def natd_hash(spi_i: bytes, spi_r: bytes, ip: str, port: int) -> bytes:
    """SHA-1(SPIi | SPIr | IP | Port)."""
    return hashlib.sha1(spi_i + spi_r + ipaddress.ip_address(ip).packed + struct.pack("!H", port)).digest()
