"""Configuration payload contents for remote access (RFC 7296 2.19, 3.15).

Pure functions over ``ikev2.payloads.CPPayload``; no I/O, no state.

Gateway side::

    req = parse_request(cp)       # CFG_REQUEST -> CfgRequest (what the client asks for)
    ...                           # acquire an address for each of req.address_families
    cp = build_reply(Assignment(addresses=(vip,), dns=(dns1,), subnets=(net,)))

Client side::

    cp = build_request(["0.0.0.0"])   # vips = ["0.0.0.0"]
    vc = parse_reply(cp)              # CFG_REPLY -> VirtualConfig(addresses, dns, subnets)

Attributes handled: INTERNAL_IP4_ADDRESS, INTERNAL_IP4_NETMASK, INTERNAL_IP4_DNS,
INTERNAL_IP4_SUBNET, INTERNAL_IP6_ADDRESS (address + prefix length), INTERNAL_IP6_DNS,
INTERNAL_IP6_SUBNET. Every other attribute type is kept in ``other`` and otherwise ignored
(RFC 7296 3.15.1: unrecognised or unsupported attributes MUST be ignored).

Parsing is strict: a malformed value raises ``ParseError`` (payload ``CP``; the reason names the
attribute and its position, e.g. ``INTERNAL_IP4_SUBNET #3: netmask 255.0.255.0 is not
contiguous``). A value is malformed when its length is wrong, a netmask is not contiguous, a
prefix length exceeds 128, a subnet has host bits set, an assigned address or DNS server is not
a unicast address (unspecified, multicast, loopback, the IPv4 limited broadcast), a CFG_REPLY
carries a netmask without an IPv4 address or more than one netmask, or the CP type is not the
one expected. Zero-length attributes in a CFG_REPLY carry nothing and are skipped.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from .constants import CfgAttr, CfgType
from .errors import ParseError
from .payloads import CfgAttribute, CPPayload

__all__ = [
    "CfgRequest", "Assignment", "VirtualConfig",
    "parse_request", "build_reply", "build_request", "parse_reply",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_AddrT = TypeVar("_AddrT", ipaddress.IPv4Address, ipaddress.IPv6Address, IPAddress)

_UNSPEC: dict[int, IPAddress] = {4: ipaddress.IPv4Address(0), 6: ipaddress.IPv6Address(0)}
_ADDR_ATTR = {4: CfgAttr.INTERNAL_IP4_ADDRESS, 6: CfgAttr.INTERNAL_IP6_ADDRESS}
_DNS_ATTR = {4: CfgAttr.INTERNAL_IP4_DNS, 6: CfgAttr.INTERNAL_IP6_DNS}
_SUBNET_ATTR = {4: CfgAttr.INTERNAL_IP4_SUBNET, 6: CfgAttr.INTERNAL_IP6_SUBNET}
_HANDLED = frozenset({*_ADDR_ATTR.values(), *_DNS_ATTR.values(), *_SUBNET_ATTR.values(),
                      CfgAttr.INTERNAL_IP4_NETMASK})
# exact value lengths of the handled attributes (0 = empty, allowed in requests)
_LENGTHS: dict[int, int] = {CfgAttr.INTERNAL_IP4_ADDRESS: 4, CfgAttr.INTERNAL_IP4_NETMASK: 4,
            CfgAttr.INTERNAL_IP4_DNS: 4, CfgAttr.INTERNAL_IP4_SUBNET: 8,
            CfgAttr.INTERNAL_IP6_ADDRESS: 17, CfgAttr.INTERNAL_IP6_DNS: 16,
            CfgAttr.INTERNAL_IP6_SUBNET: 17}


# --------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class CfgRequest:
    """What a client asked for in its CFG_REQUEST.

    ``addresses`` has one entry per INTERNAL_IP4/6_ADDRESS attribute, in order: the unspecified
    address (``0.0.0.0`` / ``::``) when the client asked for any address of that family (empty
    or all-zero value), otherwise the specific address it would like (typically the one it had
    before; RFC 7296 3.15.1). ``dns`` and ``subnets`` are the families (4, 6) whose DNS servers /
    protected subnets were asked for. ``other`` lists the types of all other attributes.
    """
    addresses: tuple[IPAddress, ...] = ()
    dns: frozenset[int] = frozenset()
    subnets: frozenset[int] = frozenset()
    netmask: bool = False                 # INTERNAL_IP4_NETMASK was included
    other: tuple[int, ...] = ()

    @property
    def address_families(self) -> frozenset[int]:
        """Families the client wants a virtual address of: a subset of {4, 6}."""
        return frozenset(a.version for a in self.addresses)

    def wants_address(self, version: int) -> bool:
        return any(a.version == version for a in self.addresses)

    def requested(self, version: int) -> IPAddress | None:
        """The first specific (non-zero) address asked for in this family, if any."""
        for a in self.addresses:
            if a.version == version and a != _UNSPEC[version]:
                return a
        return None


@dataclass(frozen=True)
class Assignment:
    """What the gateway hands out: the CFG_REPLY content (``build_reply``).

    ``addresses``: the virtual IPs (host addresses, at most one per family in practice).
    ``ip4_prefix``: if set, INTERNAL_IP4_NETMASK with this prefix length follows the IPv4
    address (RFC 7296 allows one netmask per reply); None (default, as strongSwan): no netmask,
    the client treats its address as a /32. ``ip6_prefix``: the prefix length sent in every
    INTERNAL_IP6_ADDRESS (default 128, as strongSwan). Strings are accepted and normalised
    (``Assignment(addresses=["10.99.0.1"], dns=["10.20.0.53"], subnets=["10.20.0.0/24"])``).
    """
    addresses: tuple[IPAddress, ...] = ()
    dns: tuple[IPAddress, ...] = ()
    subnets: tuple[IPNetwork, ...] = ()
    ip4_prefix: int | None = None
    ip6_prefix: int = 128

    def __post_init__(self) -> None:
        object.__setattr__(self, "addresses", tuple(ipaddress.ip_address(a) for a in self.addresses))
        object.__setattr__(self, "dns", tuple(ipaddress.ip_address(a) for a in self.dns))
        object.__setattr__(self, "subnets", tuple(ipaddress.ip_network(n) for n in self.subnets))
        if self.ip4_prefix is not None and not 0 <= self.ip4_prefix <= 32:
            raise ValueError(f"ip4_prefix {self.ip4_prefix} is not between 0 and 32")
        if not 0 <= self.ip6_prefix <= 128:
            raise ValueError(f"ip6_prefix {self.ip6_prefix} is not between 0 and 128")


@dataclass(frozen=True)
class VirtualConfig:
    """What a client got in a CFG_REPLY.

    ``addresses``: the assigned virtual IPs in the order received. ``dns``: DNS servers of both
    families in the order received; ``subnets``: the gateway's protected subnets
    (INTERNAL_IP4/6_SUBNET, for split tunnelling). ``interfaces``: the addresses with the
    prefix the gateway sent (IPv4: INTERNAL_IP4_NETMASK, else /32; IPv6: the prefix length
    byte). ``other``: attributes not handled here.
    """
    addresses: tuple[IPAddress, ...] = ()
    dns: tuple[IPAddress, ...] = ()
    subnets: tuple[IPNetwork, ...] = ()
    interfaces: tuple[IPInterface, ...] = ()
    other: tuple[CfgAttribute, ...] = field(default=(), compare=False)

    def address(self, version: int) -> IPAddress | None:
        """The first assigned address of a family (4 or 6), or None."""
        for a in self.addresses:
            if a.version == version:
                return a
        return None


# --------------------------------------------------------------------------------------------
# Value codecs


def _attr_name(t: int) -> str:
    try:
        return CfgAttr(t).name
    except ValueError:
        return f"attribute {t}"


class _Where:
    """Error factory for one attribute: 'INTERNAL_IP4_SUBNET #3: ...' (1-based position)."""

    def __init__(self, attr: CfgAttribute, index: int):
        self.prefix = f"{_attr_name(attr.type)} #{index + 1}"

    def __call__(self, reason: str) -> ParseError:
        return ParseError(f"{self.prefix}: {reason}", None, "CP")


def _check_length(attr: CfgAttribute, where: _Where, empty_ok: bool) -> bool:
    """True if the value is present (non-empty); raises on a wrong length."""
    n = len(attr.value)
    want = _LENGTHS[attr.type]
    if n == 0 and empty_ok:
        return False
    if n != want:
        allowed = f"0 or {want}" if empty_ok else f"{want}"
        raise where(f"length {n}, must be {allowed}")
    return True


def _prefix_from_mask(mask: bytes, where: _Where) -> int:
    m = int.from_bytes(mask, "big")
    bits = len(mask) * 8
    inv = (~m) & ((1 << bits) - 1)
    if inv & (inv + 1):
        raise where(f"netmask {ipaddress.IPv4Address(mask)} is not contiguous")
    return bits - inv.bit_length()


def _mask_bytes(prefix: int) -> bytes:
    return ipaddress.IPv4Network(f"0.0.0.0/{prefix}").netmask.packed


def _prefix_byte(b: int, where: _Where) -> int:
    if b > 128:
        raise where(f"prefix length {b} exceeds 128")
    return b


def _unicast(a: _AddrT, what: str, where: Callable[[str], Exception]) -> _AddrT:
    """Raises where(reason) (a ``_Where`` or an exception class) unless a is unicast."""
    bad = None
    if a.is_unspecified:
        bad = "the unspecified address"
    elif a.is_multicast:
        bad = "a multicast address"
    elif a.is_loopback:
        bad = "a loopback address"
    elif a.version == 4 and a == ipaddress.IPv4Address("255.255.255.255"):
        bad = "the limited broadcast address"
    if bad:
        raise where(f"{what} {a} is {bad}")
    return a


def _subnet(attr: CfgAttribute, where: _Where) -> IPNetwork:
    v = attr.value
    addr: IPAddress
    if attr.type == CfgAttr.INTERNAL_IP4_SUBNET:
        addr = ipaddress.IPv4Address(v[:4])
        prefix = _prefix_from_mask(v[4:8], where)
    else:
        addr = ipaddress.IPv6Address(v[:16])
        prefix = _prefix_byte(v[16], where)
    try:
        return ipaddress.ip_network(f"{addr}/{prefix}", strict=True)
    except ValueError:
        net = ipaddress.ip_network(f"{addr}/{prefix}", strict=False)
        raise where(f"subnet {addr}/{prefix} has host bits set (network {net})") from None


def _check_type(cp: CPPayload, want: int) -> None:
    if not isinstance(cp, CPPayload):
        raise TypeError(f"expected a CPPayload, got {type(cp).__name__}")
    if cp.cfg_type != want:
        try:
            got = CfgType(cp.cfg_type).name
        except ValueError:
            got = f"CFG type {cp.cfg_type}"
        raise ParseError(f"expected {CfgType(want).name}, got {got}", None, "CP")


# --------------------------------------------------------------------------------------------
# Gateway side


def parse_request(cp: CPPayload) -> CfgRequest:
    """Read a CFG_REQUEST: which addresses, DNS servers and subnets the client asks for.

    Values in a request are hints: an INTERNAL_IP4/6_ADDRESS may be empty, all-zero (any
    address) or a specific address; DNS and SUBNET values are normally empty and, if present,
    are only length-checked. Raises ``ParseError`` on a malformed value or a CP type other than
    CFG_REQUEST.
    """
    _check_type(cp, CfgType.CFG_REQUEST)
    addresses: list[IPAddress] = []
    dns: set[int] = set()
    subnets: set[int] = set()
    netmask = False
    other: list[int] = []
    for i, attr in enumerate(cp.attributes):
        t = attr.type
        if t not in _HANDLED:
            other.append(t)
            continue
        where = _Where(attr, i)
        present = _check_length(attr, where, empty_ok=True)
        if t == CfgAttr.INTERNAL_IP4_ADDRESS:
            addresses.append(ipaddress.IPv4Address(attr.value) if present else _UNSPEC[4])
        elif t == CfgAttr.INTERNAL_IP6_ADDRESS:
            if present:
                _prefix_byte(attr.value[16], where)
                addresses.append(ipaddress.IPv6Address(attr.value[:16]))
            else:
                addresses.append(_UNSPEC[6])
        elif t == CfgAttr.INTERNAL_IP4_NETMASK:
            if present:
                _prefix_from_mask(attr.value, where)
            netmask = True
        elif t in (CfgAttr.INTERNAL_IP4_DNS, CfgAttr.INTERNAL_IP6_DNS):
            dns.add(4 if t == CfgAttr.INTERNAL_IP4_DNS else 6)
        else:
            if present:
                if t == CfgAttr.INTERNAL_IP4_SUBNET:
                    _prefix_from_mask(attr.value[4:8], where)
                else:
                    _prefix_byte(attr.value[16], where)
            subnets.add(4 if t == CfgAttr.INTERNAL_IP4_SUBNET else 6)
    return CfgRequest(addresses=tuple(addresses), dns=frozenset(dns), subnets=frozenset(subnets),
                      netmask=netmask, other=tuple(other))


def build_reply(assignment: Assignment) -> CPPayload:
    """The CFG_REPLY for an assignment. Attribute order: IPv4 addresses, the IPv4 netmask (if
    ``ip4_prefix`` is set and there is an IPv4 address), IPv6 addresses, DNS servers, subnets
    (each in the assignment's order). Raises ``ValueError`` for an address or DNS server that is
    not unicast (unspecified, multicast, loopback, IPv4 limited broadcast).
    """
    attrs: list[CfgAttribute] = []
    for a in assignment.addresses:
        _unicast(a, "address", ValueError)
        if a.version == 4:
            attrs.append(CfgAttribute(CfgAttr.INTERNAL_IP4_ADDRESS, a.packed))
    if assignment.ip4_prefix is not None and any(a.version == 4 for a in assignment.addresses):
        attrs.append(CfgAttribute(CfgAttr.INTERNAL_IP4_NETMASK, _mask_bytes(assignment.ip4_prefix)))
    for a in assignment.addresses:
        if a.version == 6:
            attrs.append(CfgAttribute(CfgAttr.INTERNAL_IP6_ADDRESS,
                                      a.packed + bytes([assignment.ip6_prefix])))
    for d in assignment.dns:
        _unicast(d, "DNS server", ValueError)
        attrs.append(CfgAttribute(_DNS_ATTR[d.version], d.packed))
    for n in assignment.subnets:
        if n.version == 4:
            value = n.network_address.packed + n.netmask.packed
        else:
            value = n.network_address.packed + bytes([n.prefixlen])
        attrs.append(CfgAttribute(_SUBNET_ATTR[n.version], value))
    return CPPayload(cfg_type=CfgType.CFG_REPLY, attributes=attrs)


# --------------------------------------------------------------------------------------------
# Client side


def build_request(vips: Iterable[IPAddress | str], *, dns: bool = True,
                      subnets: bool = False) -> CPPayload:
    """A CFG_REQUEST asking for one virtual address per entry of ``vips`` (``0.0.0.0`` / ``::``:
    any address of that family, sent as an empty value like strongSwan does; anything else:
    that specific address). With ``dns``, one empty INTERNAL_IP4/6_DNS per requested family;
    with ``subnets``, one empty INTERNAL_IP4/6_SUBNET per requested family.
    """
    attrs: list[CfgAttribute] = []
    families: list[int] = []
    for v in vips:
        a = ipaddress.ip_address(v)
        if a.version not in families:
            families.append(a.version)
        if a.is_unspecified:
            value = b""
        elif a.version == 4:
            value = a.packed
        else:
            value = a.packed + bytes([128])
        attrs.append(CfgAttribute(_ADDR_ATTR[a.version], value))
    if dns:
        attrs.extend(CfgAttribute(_DNS_ATTR[f]) for f in families)
    if subnets:
        attrs.extend(CfgAttribute(_SUBNET_ATTR[f]) for f in families)
    return CPPayload(cfg_type=CfgType.CFG_REQUEST, attributes=attrs)


def parse_reply(cp: CPPayload) -> VirtualConfig:
    """Read a CFG_REPLY into a ``VirtualConfig``. Raises ``ParseError`` on a malformed value
    (see the module docstring) or a CP type other than CFG_REPLY. Duplicate values are kept
    once."""
    _check_type(cp, CfgType.CFG_REPLY)
    v4: list[ipaddress.IPv4Address] = []
    v6: list[ipaddress.IPv6Interface] = []
    order: list[tuple[int, int]] = []          # (version, index in v4/v6) in received order
    dns: list[IPAddress] = []
    subnets: list[IPNetwork] = []
    other: list[CfgAttribute] = []
    mask: int | None = None
    mask_where: _Where | None = None
    for i, attr in enumerate(cp.attributes):
        t = attr.type
        if t not in _HANDLED:
            other.append(attr)
            continue
        where = _Where(attr, i)
        if not _check_length(attr, where, empty_ok=True):
            continue
        val = attr.value
        if t == CfgAttr.INTERNAL_IP4_ADDRESS:
            a4 = _unicast(ipaddress.IPv4Address(val), "address", where)
            if a4 not in v4:
                v4.append(a4)
                order.append((4, len(v4) - 1))
        elif t == CfgAttr.INTERNAL_IP6_ADDRESS:
            a6 = _unicast(ipaddress.IPv6Address(val[:16]), "address", where)
            iface = ipaddress.IPv6Interface((a6, _prefix_byte(val[16], where)))
            if all(x.ip != a6 for x in v6):
                v6.append(iface)
                order.append((6, len(v6) - 1))
        elif t == CfgAttr.INTERNAL_IP4_NETMASK:
            if mask is not None:
                raise where("more than one INTERNAL_IP4_NETMASK")
            mask = _prefix_from_mask(val, where)
            mask_where = where
        elif t in (CfgAttr.INTERNAL_IP4_DNS, CfgAttr.INTERNAL_IP6_DNS):
            d = ipaddress.ip_address(val)
            _unicast(d, "DNS server", where)
            if d not in dns:
                dns.append(d)
        else:
            n = _subnet(attr, where)
            if n not in subnets:
                subnets.append(n)
    if mask is not None and not v4 and mask_where is not None:
        raise mask_where("netmask without an INTERNAL_IP4_ADDRESS")
    interfaces: list[IPInterface] = []
    for version, k in order:
        if version == 4:
            interfaces.append(ipaddress.IPv4Interface((v4[k], 32 if mask is None else mask)))
        else:
            interfaces.append(v6[k])
    return VirtualConfig(addresses=tuple(i.ip for i in interfaces), dns=tuple(dns),
                         subnets=tuple(subnets), interfaces=tuple(interfaces), other=tuple(other))
