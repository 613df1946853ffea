"""Just enough DER to read and write X.501 distinguished names for ID_DER_ASN1_DN identities."""
from __future__ import annotations

from .errors import ParseError

# Attribute type OIDs (dotted) and the short names strongSwan prints.
_OID_NAMES = {
    "2.5.4.3": "CN", "2.5.4.4": "SN", "2.5.4.5": "serialNumber", "2.5.4.6": "C", "2.5.4.7": "L",
    "2.5.4.8": "ST", "2.5.4.9": "street", "2.5.4.10": "O", "2.5.4.11": "OU", "2.5.4.12": "T",
    "2.5.4.42": "G", "2.5.4.43": "I", "2.5.4.46": "dnQualifier", "2.5.4.65": "pseudonym",
    "1.2.840.113549.1.9.1": "E", "0.9.2342.19200300.100.1.25": "DC", "0.9.2342.19200300.100.1.1": "UID",
}
_NAME_OIDS = {v.lower(): k for k, v in _OID_NAMES.items()}
_NAME_OIDS.update({"emailaddress": "1.2.840.113549.1.9.1", "email": "1.2.840.113549.1.9.1"})


def read_tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """Return (tag, start of value, end of value) of the DER element at pos."""
    if pos + 2 > len(data):
        raise ParseError("truncated DER element", pos, "ID")
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or pos + n > len(data):
            raise ParseError("bad DER length", pos, "ID")
        length = int.from_bytes(data[pos:pos + n], "big")
        pos += n
    if pos + length > len(data):
        raise ParseError("DER element exceeds its container", pos, "ID")
    return tag, pos, pos + length


def _oid_to_str(b: bytes) -> str:
    if not b:
        raise ParseError("empty OID", None, "ID")
    parts = [b[0] // 40, b[0] % 40] if b[0] < 80 else [2, b[0] - 80]
    value = 0
    for byte in b[1:]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(value)
            value = 0
    return ".".join(map(str, parts))


def _encode_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def _tlv(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + _encode_len(len(value)) + value


def _oid_to_der(oid: str) -> bytes:
    nums = [int(x) for x in oid.split(".")]
    out = bytearray([nums[0] * 40 + nums[1]])
    for n in nums[2:]:
        chunk = [n & 0x7F]
        n >>= 7
        while n:
            chunk.append(0x80 | (n & 0x7F))
            n >>= 7
        out += bytes(reversed(chunk))
    return _tlv(0x06, bytes(out))


def parse_dn(der: bytes) -> list[tuple[str, str]]:
    """Parse a DER Name (SEQUENCE OF SET OF AttributeTypeAndValue) into (short name, value) pairs."""
    tag, start, end = read_tlv(der, 0)
    if tag != 0x30 or end != len(der):
        raise ParseError("DN is not a single DER SEQUENCE", 0, "ID")
    out = []
    pos = start
    while pos < end:
        stag, sstart, send = read_tlv(der, pos)
        if stag != 0x31:
            raise ParseError("DN RDN is not a SET", pos, "ID")
        apos = sstart
        while apos < send:
            atag, astart, aend = read_tlv(der, apos)
            if atag != 0x30:
                raise ParseError("DN attribute is not a SEQUENCE", apos, "ID")
            otag, ostart, oend = read_tlv(der, astart)
            if otag != 0x06:
                raise ParseError("DN attribute type is not an OID", astart, "ID")
            oid = _oid_to_str(der[ostart:oend])
            _vtag, vstart, vend = read_tlv(der, oend)
            value = der[vstart:vend].decode("utf-8", "backslashreplace")
            out.append((_OID_NAMES.get(oid, oid), value))
            apos = aend
        pos = send
    return out


def encode_dn(text: str) -> bytes:
    """Encode "C=CH, O=strongSwan, CN=moon" (strongSwan's order) as a DER Name."""
    rdns = bytearray()
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        if "=" not in part:
            raise ValueError(f"DN component {part!r} is not of the form key=value")
        key, value = (x.strip() for x in part.split("=", 1))
        oid = _NAME_OIDS.get(key.lower(), key if key[:1].isdigit() else None)
        if oid is None:
            raise ValueError(f"unknown DN attribute {key!r}")
        # PrintableString for C, UTF8String otherwise (what strongSwan's pki writes).
        vtag = 0x13 if oid == "2.5.4.6" else 0x0C
        atv = _tlv(0x30, _oid_to_der(oid) + _tlv(vtag, value.encode()))
        rdns += _tlv(0x31, atv)
    return _tlv(0x30, bytes(rdns))
