"""Validation, parsing and building of the data carried by Notify payloads whose format is fixed
(RFC 7296 3.10.1, RFC 4555, RFC 4739, RFC 5685, RFC 5998, RFC 6023, RFC 6311, RFC 7383, RFC 7427).

Notify types not listed here are kept as opaque data: unknown status notifies are not dropped.
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from .constants import NotifyType as N
from .constants import ProtocolId
from .errors import ParseError

# type -> (min data length, max data length)
_DATA_LEN: dict[int, tuple[int, int]] = {
    N.NAT_DETECTION_SOURCE_IP: (20, 20),
    N.NAT_DETECTION_DESTINATION_IP: (20, 20),
    N.COOKIE: (1, 64),
    N.COOKIE2: (8, 64),
    N.INVALID_KE_PAYLOAD: (2, 2),
    N.INVALID_MESSAGE_ID: (4, 4),
    N.UNSUPPORTED_CRITICAL_PAYLOAD: (1, 1),
    N.ADDITIONAL_IP4_ADDRESS: (4, 4),
    N.ADDITIONAL_IP6_ADDRESS: (16, 16),
    N.SET_WINDOW_SIZE: (4, 4),
    N.AUTH_LIFETIME: (4, 4),
    N.IKEV2_MESSAGE_ID_SYNC: (12, 12),
    N.IPSEC_REPLAY_COUNTER_SYNC: (4, 4),
    N.SIGNATURE_HASH_ALGORITHMS: (2, 512),
    N.REDIRECT: (3, 255 + 2 + 256),
    N.REDIRECTED_FROM: (3, 255 + 2),
    # Flags: no data at all.
    N.INITIAL_CONTACT: (0, 0),
    N.MOBIKE_SUPPORTED: (0, 0),
    N.NO_ADDITIONAL_ADDRESSES: (0, 0),
    N.UPDATE_SA_ADDRESSES: (0, 0),
    N.NO_NATS_ALLOWED: (0, 40),  # carries the addresses/ports the sender used (RFC 4555 3.9)
    N.USE_TRANSPORT_MODE: (0, 0),
    N.ESP_TFC_PADDING_NOT_SUPPORTED: (0, 0),
    N.NON_FIRST_FRAGMENTS_ALSO: (0, 0),
    N.MULTIPLE_AUTH_SUPPORTED: (0, 0),
    N.ANOTHER_AUTH_FOLLOWS: (0, 0),
    N.REDIRECT_SUPPORTED: (0, 0),
    N.EAP_ONLY_AUTHENTICATION: (0, 0),
    N.CHILDLESS_IKEV2_SUPPORTED: (0, 0),
    N.IKEV2_MESSAGE_ID_SYNC_SUPPORTED: (0, 0),
    N.IPSEC_REPLAY_COUNTER_SYNC_SUPPORTED: (0, 0),
    N.IKEV2_FRAGMENTATION_SUPPORTED: (0, 0),
    N.REKEY_SA: (0, 0),
}

# Notifies that must name a Child SA by a 4-byte SPI (RFC 7296 3.10.1).
_CHILD_SPI = {N.REKEY_SA}

GW_IPV4, GW_IPV6, GW_FQDN = 1, 2, 3


# plain ints and sets: checked for every notify received (enum attribute lookups cost more)
_ESP_AH = frozenset({int(ProtocolId.ESP), int(ProtocolId.AH)})
_HASH_ALGS = int(N.SIGNATURE_HASH_ALGORITHMS)
_REDIRECTS = frozenset({int(N.REDIRECT), int(N.REDIRECTED_FROM)})


def _name(ntype: int) -> str:
    return N(ntype).name if ntype in N._value2member_map_ else str(ntype)


def check_notify_data(ntype: int, protocol: int, spi: bytes, data: bytes) -> None:
    """Raise ParseError if the data of a notify with a fixed format is malformed."""
    limits = _DATA_LEN.get(ntype)
    if limits is not None:
        lo, hi = limits
        if not lo <= len(data) <= hi:
            want = str(lo) if lo == hi else f"{lo}..{hi}"
            name = _name(ntype)
            raise ParseError(f"N({name}) data must be {want} bytes, got {len(data)}", None, f"N({name})")
    if ntype in _CHILD_SPI and (protocol not in _ESP_AH or len(spi) != 4):
        name = _name(ntype)
        raise ParseError(f"N({name}) must name an ESP/AH SPI of 4 bytes", None, f"N({name})")
    if ntype == _HASH_ALGS and len(data) % 2:
        raise ParseError("N(SIGNATURE_HASH_ALGORITHMS) data length is odd", None, "N(SIGNATURE_HASH_ALGORITHMS)")
    if ntype in _REDIRECTS:
        parse_redirect(data, with_nonce=ntype == N.REDIRECT)


def u16_list(data: bytes) -> list[int]:
    """SIGNATURE_HASH_ALGORITHMS: a list of 2-byte hash algorithm numbers."""
    return [v for (v,) in struct.iter_unpack("!H", data)]


def group_of(data: bytes) -> int:
    """INVALID_KE_PAYLOAD: the group the responder wants."""
    group: int = struct.unpack("!H", data)[0]
    return group


def address_of(data: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """ADDITIONAL_IP4_ADDRESS / ADDITIONAL_IP6_ADDRESS."""
    return ipaddress.ip_address(data)


@dataclass
class Redirect:
    gw_type: int
    gateway: str
    nonce: bytes = b""


def parse_redirect(data: bytes, with_nonce: bool = True) -> Redirect:
    """RFC 5685 8.1: GW Ident Type (1), GW Ident Len (1), New Responder GW Identity, [Nonce]."""
    if len(data) < 2:
        raise ParseError("REDIRECT data shorter than its 2-byte header", None, "N(REDIRECT)")
    gw_type, gw_len = data[0], data[1]
    if 2 + gw_len > len(data):
        raise ParseError("REDIRECT gateway identity exceeds the notify", None, "N(REDIRECT)")
    ident = data[2:2 + gw_len]
    rest = data[2 + gw_len:]
    if gw_type == GW_IPV4 and gw_len != 4 or gw_type == GW_IPV6 and gw_len != 16:
        raise ParseError(f"REDIRECT gateway identity type {gw_type} with length {gw_len}", None, "N(REDIRECT)")
    if gw_type not in (GW_IPV4, GW_IPV6, GW_FQDN):
        raise ParseError(f"unknown REDIRECT gateway identity type {gw_type}", None, "N(REDIRECT)")
    if not with_nonce and rest:
        raise ParseError("REDIRECTED_FROM carries trailing data", None, "N(REDIRECTED_FROM)")
    if with_nonce and rest and not 16 <= len(rest) <= 256:
        raise ParseError(f"REDIRECT nonce length {len(rest)} outside 16..256", None, "N(REDIRECT)")
    gw = str(ipaddress.ip_address(ident)) if gw_type != GW_FQDN else ident.decode("ascii", "backslashreplace")
    return Redirect(gw_type, gw, rest)


def build_redirect(gateway: str, nonce: bytes = b"") -> bytes:
    try:
        addr = ipaddress.ip_address(gateway)
        gw_type, ident = (GW_IPV4 if addr.version == 4 else GW_IPV6), addr.packed
    except ValueError:
        gw_type, ident = GW_FQDN, gateway.encode("ascii")
    return bytes([gw_type, len(ident)]) + ident + nonce
