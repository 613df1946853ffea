"""IKEv2 payload objects (RFC 7296 section 3, RFC 7383, RFC 4555) and the codec of their bodies.

Each payload class encodes its body (everything after the 4-byte generic payload header) with
``encode_body`` and decodes one with ``decode_body``; ``ikev2.message`` chains them. Decoding is
strict: every length is checked before use and any problem raises ``ParseError``.
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar

from .asn1 import parse_dn
from .constants import (
    CfgAttr,
    EapCode,
    IdType,
    PayloadType,
    ProtocolId,
    TransformAttr,
    TsType,
    enum_or_int,
)
from .errors import ParseError
from .notify_data import check_notify_data


def _name(value: int, enum_cls: type[IntEnum]) -> str:
    v = enum_or_int(enum_cls, value)
    return v.name if hasattr(v, "name") else str(value)


_U32 = struct.Struct("!I")


class Reader:
    """Bounds-checked reader over a bytes object; every read checks the length first."""

    __slots__ = ("data", "pos", "end", "base", "where")

    def __init__(self, data: bytes, base: int = 0, where: str | None = None):
        self.data = data
        self.pos = 0
        self.end = len(data)
        self.base = base  # offset of data[0] within the whole message, for error messages
        self.where = where

    def fail(self, reason: str, at: int | None = None) -> ParseError:
        return ParseError(reason, self.base + (self.pos if at is None else at), self.where)

    def remaining(self) -> int:
        return self.end - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise self.fail(f"truncated {what}: need {n} bytes, {self.end - self.pos} left")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    # u8/u16/u32 index the bytes directly (no slice, no struct): the decoders call them for
    # every field, so they are the bulk of the cost of parsing a message.
    def u8(self, what: str) -> int:
        p = self.pos
        if p >= self.end:
            raise self.fail(f"truncated {what}: need 1 bytes, {self.end - p} left")
        self.pos = p + 1
        return self.data[p]

    def u16(self, what: str) -> int:
        p = self.pos
        if p + 2 > self.end:
            raise self.fail(f"truncated {what}: need 2 bytes, {self.end - p} left")
        self.pos = p + 2
        d = self.data
        return d[p] << 8 | d[p + 1]

    def u32(self, what: str) -> int:
        p = self.pos
        if p + 4 > self.end:
            raise self.fail(f"truncated {what}: need 4 bytes, {self.end - p} left")
        self.pos = p + 4
        value: int = _U32.unpack_from(self.data, p)[0]
        return value

    def rest(self) -> bytes:
        b = self.data[self.pos:self.end]
        self.pos = self.end
        return b

    def done(self, what: str) -> None:
        if self.pos != self.end:
            raise self.fail(f"{self.end - self.pos} unexpected trailing bytes in {what}")


# --------------------------------------------------------------------------- base class

@dataclass
class Payload:
    """Base of all payloads. ``critical`` is the generic header's critical bit as received."""
    type: ClassVar[int]
    critical: bool = field(default=False, kw_only=True)

    def encode_body(self) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def decode_body(cls, r: Reader) -> Payload:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def type_name(self) -> str:
        return _name(self.type, PayloadType)


# --------------------------------------------------------------------------- SA (3.3)

@dataclass
class Transform:
    """One transform of a proposal: type (TransformType), id, optional KEY_LENGTH (bits).

    Attributes other than KEY_LENGTH are kept in ``attributes`` as (type, value) pairs: TV
    attributes (AF bit set) carry an int, TLV attributes bytes.
    """
    type: int
    id: int
    key_length: int | None = None
    attributes: list[tuple[int, int | bytes]] = field(default_factory=list)

    def encode(self, last: bool) -> bytes:
        attrs = bytearray()
        if self.key_length is not None:
            attrs += struct.pack("!HH", 0x8000 | TransformAttr.KEY_LENGTH, self.key_length)
        for atype, value in self.attributes:
            if isinstance(value, int):
                attrs += struct.pack("!HH", 0x8000 | atype, value)
            else:
                attrs += struct.pack("!HH", atype & 0x7FFF, len(value)) + value
        length = 8 + len(attrs)
        return struct.pack("!BBHBBH", 0 if last else 3, 0, length, self.type, 0, self.id) + bytes(attrs)

    @classmethod
    def decode(cls, r: Reader) -> tuple[Transform, bool]:
        start = r.pos
        more = r.u8("transform last-substructure")
        if more not in (0, 3):
            raise r.fail(f"transform last-substructure must be 0 or 3, got {more}", start)
        r.u8("transform reserved")
        length = r.u16("transform length")
        if length < 8:
            raise r.fail(f"transform length {length} < 8", start)
        if start + length > r.end:
            raise r.fail(f"transform length {length} exceeds its proposal", start)
        ttype = r.u8("transform type")
        r.u8("transform reserved")
        tid = r.u16("transform id")
        sub = Reader(r.data[:start + length], r.base, r.where)
        sub.pos = r.pos
        t = cls(ttype, tid)
        while sub.remaining():
            apos = sub.pos
            af_type = sub.u16("attribute type")
            atype = af_type & 0x7FFF
            if af_type & 0x8000:
                value: int | bytes = sub.u16("attribute value")
            else:
                alen = sub.u16("attribute length")
                value = sub.take(alen, "attribute value")
            if atype == TransformAttr.KEY_LENGTH:
                if not isinstance(value, int):
                    raise sub.fail("KEY_LENGTH attribute must use the TV format", apos)
                if t.key_length is not None:
                    raise sub.fail("duplicate KEY_LENGTH attribute", apos)
                t.key_length = value
            else:
                t.attributes.append((atype, value))
        r.pos = start + length
        return t, more == 0


@dataclass
class Proposal:
    """One proposal of an SA payload: number (1-based), protocol (ProtocolId), SPI, transforms."""
    num: int
    protocol: int
    spi: bytes = b""
    transforms: list[Transform] = field(default_factory=list)

    def encode(self, last: bool) -> bytes:
        if len(self.transforms) > 255:
            raise ValueError("more than 255 transforms in a proposal")
        if len(self.spi) > 255:
            raise ValueError("SPI longer than 255 bytes")
        body = b"".join(t.encode(i == len(self.transforms) - 1) for i, t in enumerate(self.transforms))
        length = 8 + len(self.spi) + len(body)
        return struct.pack("!BBHBBBB", 0 if last else 2, 0, length, self.num, self.protocol,
                           len(self.spi), len(self.transforms)) + self.spi + body

    @classmethod
    def decode(cls, r: Reader) -> tuple[Proposal, bool]:
        start = r.pos
        more = r.u8("proposal last-substructure")
        if more not in (0, 2):
            raise r.fail(f"proposal last-substructure must be 0 or 2, got {more}", start)
        r.u8("proposal reserved")
        length = r.u16("proposal length")
        if length < 8:
            raise r.fail(f"proposal length {length} < 8", start)
        if start + length > r.end:
            raise r.fail(f"proposal length {length} exceeds the SA payload", start)
        sub = Reader(r.data[:start + length], r.base, r.where)
        sub.pos = r.pos
        num = sub.u8("proposal number")
        protocol = sub.u8("protocol id")
        spi_size = sub.u8("SPI size")
        count = sub.u8("number of transforms")
        spi = sub.take(spi_size, "proposal SPI")
        if protocol == ProtocolId.IKE and spi_size not in (0, 8):
            raise sub.fail(f"IKE proposal SPI size must be 0 or 8, got {spi_size}", start)
        if protocol in (ProtocolId.ESP, ProtocolId.AH) and spi_size != 4:
            raise sub.fail(f"{_name(protocol, ProtocolId)} proposal SPI size must be 4, got {spi_size}", start)
        p = cls(num, protocol, spi)
        last = False
        while sub.remaining():
            if last:
                raise sub.fail("data after the last transform of a proposal")
            t, last = Transform.decode(sub)
            p.transforms.append(t)
        if not p.transforms or not last:
            raise sub.fail("proposal does not end with a last transform", start)
        if len(p.transforms) != count:
            raise sub.fail(f"proposal says {count} transforms, contains {len(p.transforms)}", start)
        r.pos = start + length
        return p, more == 0


@dataclass
class SAPayload(Payload):
    type: ClassVar[int] = PayloadType.SA
    proposals: list[Proposal] = field(default_factory=list)

    def encode_body(self) -> bytes:
        return b"".join(p.encode(i == len(self.proposals) - 1) for i, p in enumerate(self.proposals))

    @classmethod
    def decode_body(cls, r: Reader) -> SAPayload:
        sa = cls()
        last = False
        while r.remaining():
            if last:
                raise r.fail("data after the last proposal")
            p, last = Proposal.decode(r)
            sa.proposals.append(p)
        if not sa.proposals:
            raise r.fail("SA payload without proposals")
        if not last:
            raise r.fail("SA payload does not end with a last proposal")
        return sa


# --------------------------------------------------------------------------- KE (3.4)

@dataclass
class KEPayload(Payload):
    type: ClassVar[int] = PayloadType.KE
    group: int = 0
    data: bytes = b""

    def encode_body(self) -> bytes:
        return struct.pack("!HH", self.group, 0) + self.data

    @classmethod
    def decode_body(cls, r: Reader) -> KEPayload:
        group = r.u16("KE group")
        r.u16("KE reserved")
        data = r.rest()
        if not data:
            raise r.fail("KE payload without key exchange data")
        return cls(group=group, data=data)


# --------------------------------------------------------------------------- ID (3.5)

_ID_FIXED_LEN: dict[int, int] = {IdType.ID_IPV4_ADDR: 4, IdType.ID_IPV6_ADDR: 16, IdType.ID_NULL: 0}


@dataclass
class IDPayload(Payload):
    id_type: int = IdType.ID_FQDN
    data: bytes = b""

    def encode_body(self) -> bytes:
        return struct.pack("!B3x", self.id_type) + self.data

    @classmethod
    def decode_body(cls, r: Reader) -> IDPayload:
        id_type = r.u8("ID type")
        r.take(3, "ID reserved")
        data = r.rest()
        want = _ID_FIXED_LEN.get(id_type)
        if want is not None and len(data) != want:
            raise r.fail(f"{_name(id_type, IdType)} must carry {want} bytes, got {len(data)}")
        if want is None and not data:
            raise r.fail(f"empty {_name(id_type, IdType)} identification")
        return cls(id_type=id_type, data=data)

    def display(self) -> str:
        """Human form, as strongSwan prints identities."""
        t = self.id_type
        if t == IdType.ID_IPV4_ADDR or t == IdType.ID_IPV6_ADDR:
            return str(ipaddress.ip_address(self.data))
        if t in (IdType.ID_FQDN, IdType.ID_RFC822_ADDR):
            return self.data.decode("ascii", "backslashreplace")
        if t == IdType.ID_NULL:
            return "%null"
        if t == IdType.ID_DER_ASN1_DN:
            try:
                return ", ".join(f"{k}={v}" for k, v in parse_dn(self.data))
            except ParseError:
                return "dn:" + self.data.hex()
        if t == IdType.ID_KEY_ID:
            return "keyid:" + self.data.hex()
        return f"{_name(t, IdType)}:{self.data.hex()}"


@dataclass
class IDiPayload(IDPayload):
    type: ClassVar[int] = PayloadType.IDi


@dataclass
class IDrPayload(IDPayload):
    type: ClassVar[int] = PayloadType.IDr


# --------------------------------------------------------------------------- CERT, CERTREQ (3.6, 3.7)

@dataclass
class CertPayload(Payload):
    type: ClassVar[int] = PayloadType.CERT
    encoding: int = 4
    data: bytes = b""

    def encode_body(self) -> bytes:
        return bytes([self.encoding]) + self.data

    @classmethod
    def decode_body(cls, r: Reader) -> CertPayload:
        enc = r.u8("certificate encoding")
        return cls(encoding=enc, data=r.rest())


@dataclass
class CertReqPayload(Payload):
    type: ClassVar[int] = PayloadType.CERTREQ
    encoding: int = 4
    data: bytes = b""

    def encode_body(self) -> bytes:
        return bytes([self.encoding]) + self.data

    @classmethod
    def decode_body(cls, r: Reader) -> CertReqPayload:
        enc = r.u8("certificate encoding")
        return cls(encoding=enc, data=r.rest())

    def ca_hashes(self) -> list[bytes]:
        """The SHA-1 hashes of CA public keys (X509_SIGNATURE encoding), 20 bytes each."""
        if len(self.data) % 20:
            raise ParseError(f"CERTREQ authority list length {len(self.data)} is not a multiple of 20",
                             None, "CERTREQ")
        return [self.data[i:i + 20] for i in range(0, len(self.data), 20)]


# --------------------------------------------------------------------------- AUTH (3.8)

@dataclass
class AuthPayload(Payload):
    type: ClassVar[int] = PayloadType.AUTH
    method: int = 0
    data: bytes = b""

    def encode_body(self) -> bytes:
        return struct.pack("!B3x", self.method) + self.data

    @classmethod
    def decode_body(cls, r: Reader) -> AuthPayload:
        method = r.u8("auth method")
        r.take(3, "auth reserved")
        data = r.rest()
        if not data:
            raise r.fail("AUTH payload without authentication data")
        return cls(method=method, data=data)


# --------------------------------------------------------------------------- Nonce (3.9)

NONCE_MIN, NONCE_MAX = 16, 256


@dataclass
class NoncePayload(Payload):
    type: ClassVar[int] = PayloadType.NONCE
    data: bytes = b""

    def encode_body(self) -> bytes:
        return self.data

    @classmethod
    def decode_body(cls, r: Reader) -> NoncePayload:
        data = r.rest()
        if not NONCE_MIN <= len(data) <= NONCE_MAX:
            raise r.fail(f"nonce length {len(data)} outside {NONCE_MIN}..{NONCE_MAX}", 0)
        return cls(data=data)


# --------------------------------------------------------------------------- Notify (3.10)

@dataclass
class NotifyPayload(Payload):
    type: ClassVar[int] = PayloadType.NOTIFY
    notify_type: int = 0
    data: bytes = b""
    protocol: int = 0
    spi: bytes = b""

    def encode_body(self) -> bytes:
        return struct.pack("!BBH", self.protocol, len(self.spi), self.notify_type) + self.spi + self.data

    @classmethod
    def decode_body(cls, r: Reader) -> NotifyPayload:
        protocol = r.u8("notify protocol id")
        spi_size = r.u8("notify SPI size")
        ntype = r.u16("notify type")
        spi = r.take(spi_size, "notify SPI")
        data = r.rest()
        try:
            check_notify_data(ntype, protocol, spi, data)
        except ParseError as e:
            raise e.at(r.base, r.where) from None
        return cls(notify_type=ntype, data=data, protocol=protocol, spi=spi)

    @property
    def is_error(self) -> bool:
        return self.notify_type <= 16383


# --------------------------------------------------------------------------- Delete (3.11)

@dataclass
class DeletePayload(Payload):
    type: ClassVar[int] = PayloadType.DELETE
    protocol: int = ProtocolId.IKE
    spis: list[bytes] = field(default_factory=list)
    spi_size: int | None = None  # None: derived (0 for IKE, 4 for ESP/AH)

    def _spi_size(self) -> int:
        if self.spi_size is not None:
            return self.spi_size
        return 0 if self.protocol == ProtocolId.IKE else 4

    def encode_body(self) -> bytes:
        size = self._spi_size()
        if any(len(s) != size for s in self.spis):
            raise ValueError("Delete payload SPIs must all have the SPI size")
        return struct.pack("!BBH", self.protocol, size, len(self.spis)) + b"".join(self.spis)

    @classmethod
    def decode_body(cls, r: Reader) -> DeletePayload:
        protocol = r.u8("delete protocol id")
        size = r.u8("delete SPI size")
        count = r.u16("delete number of SPIs")
        if protocol == ProtocolId.IKE and (size != 0 or count != 0):
            raise r.fail("IKE Delete must have SPI size 0 and no SPIs")
        if protocol in (ProtocolId.ESP, ProtocolId.AH) and size != 4:
            raise r.fail(f"ESP/AH Delete must have SPI size 4, got {size}")
        if size * count != r.remaining():
            raise r.fail(f"Delete says {count} SPIs of {size} bytes, {r.remaining()} bytes follow")
        spis = [r.take(size, "SPI") for _ in range(count)]
        default = 0 if protocol == ProtocolId.IKE else 4
        return cls(protocol=protocol, spis=spis, spi_size=None if size == default else size)


# --------------------------------------------------------------------------- Vendor ID (3.12)

@dataclass
class VendorIdPayload(Payload):
    type: ClassVar[int] = PayloadType.VENDOR
    data: bytes = b""

    def encode_body(self) -> bytes:
        return self.data

    @classmethod
    def decode_body(cls, r: Reader) -> VendorIdPayload:
        return cls(data=r.rest())


# --------------------------------------------------------------------------- TS (3.13)

@dataclass
class TrafficSelector:
    """One traffic selector. IPv4/IPv6 ranges carry ipaddress objects; other types keep raw bytes."""
    ts_type: int
    ip_protocol: int = 0
    start_port: int = 0
    end_port: int = 65535
    start_addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    end_addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    raw: bytes = b""  # body of selector types this implementation does not interpret

    @classmethod
    def from_network(cls, net: str | ipaddress.IPv4Network | ipaddress.IPv6Network,
                     ip_protocol: int = 0, start_port: int = 0, end_port: int = 65535) -> TrafficSelector:
        n = ipaddress.ip_network(net, strict=False)
        ts_type = TsType.TS_IPV4_ADDR_RANGE if n.version == 4 else TsType.TS_IPV6_ADDR_RANGE
        return cls(ts_type, ip_protocol, start_port, end_port, n.network_address, n.broadcast_address)

    def encode(self) -> bytes:
        if self.ts_type in (TsType.TS_IPV4_ADDR_RANGE, TsType.TS_IPV6_ADDR_RANGE):
            body = self.start_addr.packed + self.end_addr.packed  # type: ignore[union-attr]
        else:
            body = self.raw
        return struct.pack("!BBHHH", self.ts_type, self.ip_protocol, 8 + len(body),
                           self.start_port, self.end_port) + body

    @classmethod
    def decode(cls, r: Reader) -> TrafficSelector:
        start = r.pos
        ts_type = r.u8("TS type")
        proto = r.u8("TS IP protocol")
        length = r.u16("selector length")
        if length < 8:
            raise r.fail(f"selector length {length} < 8", start)
        sport = r.u16("TS start port")
        eport = r.u16("TS end port")
        body = r.take(length - 8, "traffic selector addresses")
        if ts_type == TsType.TS_IPV4_ADDR_RANGE or ts_type == TsType.TS_IPV6_ADDR_RANGE:
            alen = 4 if ts_type == TsType.TS_IPV4_ADDR_RANGE else 16
            if len(body) != 2 * alen:
                raise r.fail(f"{_name(ts_type, TsType)} selector length must be {8 + 2 * alen}, got {length}",
                             start)
            return cls(ts_type, proto, sport, eport,
                       ipaddress.ip_address(body[:alen]), ipaddress.ip_address(body[alen:]))
        return cls(ts_type, proto, sport, eport, raw=body)

    def __str__(self) -> str:
        if self.start_addr is None:
            return f"TS({self.ts_type}:{self.raw.hex()})"
        # Decoded or built from one network: both addresses are of one family (mypy cannot see that).
        start, end = self.start_addr, self.end_addr
        nets = list(ipaddress.summarize_address_range(start, end)) if start <= end else []  # type: ignore[arg-type,operator]
        addr = str(nets[0]) if len(nets) == 1 else f"{self.start_addr}..{self.end_addr}"
        if self.ip_protocol == 0 and self.start_port == 0 and self.end_port == 65535:
            return addr
        ports = "" if (self.start_port, self.end_port) == (0, 65535) else (
            str(self.start_port) if self.start_port == self.end_port else f"{self.start_port}-{self.end_port}")
        return f"{addr}[{self.ip_protocol}/{ports}]" if ports else f"{addr}[{self.ip_protocol}]"


@dataclass
class TSPayload(Payload):
    selectors: list[TrafficSelector] = field(default_factory=list)

    def encode_body(self) -> bytes:
        if len(self.selectors) > 255:
            raise ValueError("more than 255 traffic selectors")
        return struct.pack("!B3x", len(self.selectors)) + b"".join(ts.encode() for ts in self.selectors)

    @classmethod
    def decode_body(cls, r: Reader) -> TSPayload:
        count = r.u8("number of TSs")
        r.take(3, "TS reserved")
        if count == 0:
            raise r.fail("TS payload with zero selectors")
        sels = [TrafficSelector.decode(r) for _ in range(count)]
        if r.remaining():
            raise r.fail(f"TS payload says {count} selectors but {r.remaining()} bytes remain")
        return cls(selectors=sels)


@dataclass
class TSiPayload(TSPayload):
    type: ClassVar[int] = PayloadType.TSi


@dataclass
class TSrPayload(TSPayload):
    type: ClassVar[int] = PayloadType.TSr


# --------------------------------------------------------------------------- SK, SKF (3.14, RFC 7383)

@dataclass
class SKPayload(Payload):
    """Encrypted payload as found on the wire: ``first_inner`` is the generic header's next-payload
    field (type of the first payload inside), ``data`` is IV | ciphertext | ICV."""
    type: ClassVar[int] = PayloadType.SK
    first_inner: int = PayloadType.NONE
    data: bytes = b""
    offset: int | None = field(default=None, compare=False, repr=False)  # of its header, when decoded

    def encode_body(self) -> bytes:
        return self.data

    @classmethod
    def decode_body(cls, r: Reader) -> SKPayload:
        return cls(data=r.rest())


@dataclass
class SKFPayload(Payload):
    """Encrypted Fragment payload (RFC 7383 2.5)."""
    type: ClassVar[int] = PayloadType.SKF
    first_inner: int = PayloadType.NONE
    fragment_number: int = 1
    total_fragments: int = 1
    data: bytes = b""
    offset: int | None = field(default=None, compare=False, repr=False)  # of its header, when decoded

    def encode_body(self) -> bytes:
        return struct.pack("!HH", self.fragment_number, self.total_fragments) + self.data

    @classmethod
    def decode_body(cls, r: Reader) -> SKFPayload:
        num = r.u16("fragment number")
        total = r.u16("total fragments")
        if num == 0 or total == 0 or num > total:
            raise r.fail(f"bad fragment number {num} of {total}")
        return cls(fragment_number=num, total_fragments=total, data=r.rest())


# --------------------------------------------------------------------------- CP (3.15)

# Fixed value lengths of configuration attributes (RFC 7296 3.15.1, RFC 5739); None = variable.
_CFG_LENGTHS: dict[int, tuple[int, ...]] = {
    CfgAttr.INTERNAL_IP4_ADDRESS: (0, 4),
    CfgAttr.INTERNAL_IP4_NETMASK: (0, 4),
    CfgAttr.INTERNAL_IP4_DNS: (0, 4),
    CfgAttr.INTERNAL_IP4_NBNS: (0, 4),
    CfgAttr.INTERNAL_IP4_DHCP: (0, 4),
    CfgAttr.INTERNAL_IP6_ADDRESS: (0, 17),
    CfgAttr.INTERNAL_IP6_DNS: (0, 16),
    CfgAttr.INTERNAL_IP6_DHCP: (0, 16),
    CfgAttr.INTERNAL_IP4_SUBNET: (0, 8),
    CfgAttr.INTERNAL_IP6_SUBNET: (0, 17),
    CfgAttr.INTERNAL_IP6_LINK: (0,),  # 0 or 9+ handled below
    CfgAttr.INTERNAL_IP6_PREFIX: (0, 17),
    CfgAttr.P_CSCF_IP4_ADDRESS: (0, 4),
    CfgAttr.P_CSCF_IP6_ADDRESS: (0, 16),
}


@dataclass
class CfgAttribute:
    type: int
    value: bytes = b""

    def encode(self) -> bytes:
        return struct.pack("!HH", self.type & 0x7FFF, len(self.value)) + self.value


@dataclass
class CPPayload(Payload):
    type: ClassVar[int] = PayloadType.CP
    cfg_type: int = 1
    attributes: list[CfgAttribute] = field(default_factory=list)

    def encode_body(self) -> bytes:
        return struct.pack("!B3x", self.cfg_type) + b"".join(a.encode() for a in self.attributes)

    @classmethod
    def decode_body(cls, r: Reader) -> CPPayload:
        cfg_type = r.u8("CFG type")
        r.take(3, "CFG reserved")
        attrs = []
        while r.remaining():
            apos = r.pos
            atype = r.u16("attribute type")
            if atype & 0x8000:
                raise r.fail("configuration attribute with reserved bit set", apos)
            alen = r.u16("attribute length")
            value = r.take(alen, f"{_name(atype, CfgAttr)} value")
            allowed = _CFG_LENGTHS.get(atype)
            if atype == CfgAttr.INTERNAL_IP6_LINK:
                if alen and alen < 9:
                    raise r.fail(f"INTERNAL_IP6_LINK length {alen} < 9", apos)
            elif allowed is not None and alen not in allowed:
                raise r.fail(f"{_name(atype, CfgAttr)} length {alen} not in {allowed}", apos)
            attrs.append(CfgAttribute(atype, value))
        return cls(cfg_type=cfg_type, attributes=attrs)


# --------------------------------------------------------------------------- EAP (3.16)

@dataclass
class EAPPayload(Payload):
    """EAP payload: the body is one EAP message (RFC 3748), whose own length must match."""
    type: ClassVar[int] = PayloadType.EAP
    message: bytes = b""

    def encode_body(self) -> bytes:
        return self.message

    @classmethod
    def decode_body(cls, r: Reader) -> EAPPayload:
        msg = r.rest()
        if len(msg) < 4:
            raise r.fail(f"EAP message of {len(msg)} bytes is shorter than its 4-byte header", 0)
        code, _ident, length = struct.unpack("!BBH", msg[:4])
        if length != len(msg):
            raise r.fail(f"EAP length field {length} does not match payload body {len(msg)}", 0)
        if code not in (EapCode.REQUEST, EapCode.RESPONSE, EapCode.SUCCESS, EapCode.FAILURE):
            raise r.fail(f"unknown EAP code {code}", 0)
        if code in (EapCode.REQUEST, EapCode.RESPONSE) and length < 5:
            raise r.fail("EAP request/response without a type", 0)
        if code in (EapCode.SUCCESS, EapCode.FAILURE) and length != 4:
            raise r.fail("EAP success/failure must be exactly 4 bytes", 0)
        return cls(message=msg)

    @property
    def code(self) -> int:
        return self.message[0]

    @property
    def identifier(self) -> int:
        return self.message[1]

    @property
    def eap_type(self) -> int | None:
        return self.message[4] if len(self.message) > 4 else None

    @property
    def type_data(self) -> bytes:
        return self.message[5:]

    @classmethod
    def build(cls, code: int, identifier: int, eap_type: int | None = None, data: bytes = b"") -> EAPPayload:
        body = b"" if eap_type is None else bytes([eap_type]) + data
        return cls(message=struct.pack("!BBH", code, identifier, 4 + len(body)) + body)


# --------------------------------------------------------------------------- unknown

@dataclass
class UnknownPayload(Payload):
    """A payload of a type this implementation does not know, sent without the critical bit."""
    type: int = 0  # type: ignore[misc]
    body: bytes = b""

    def encode_body(self) -> bytes:
        return self.body

    @property
    def type_name(self) -> str:
        return str(self.type)


PAYLOAD_CLASSES: dict[int, type[Payload]] = {
    cls.type: cls for cls in (
        SAPayload, KEPayload, IDiPayload, IDrPayload, CertPayload, CertReqPayload, AuthPayload,
        NoncePayload, NotifyPayload, DeletePayload, VendorIdPayload, TSiPayload, TSrPayload,
        SKPayload, CPPayload, EAPPayload, SKFPayload,
    )
}
