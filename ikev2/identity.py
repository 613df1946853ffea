"""IKE identities (RFC 7296 3.5): parsing from configuration strings the way strongSwan does,
display, and matching with wildcards."""
from __future__ import annotations

import fnmatch
import functools
import ipaddress
from dataclasses import dataclass

from .asn1 import encode_dn, parse_dn
from .constants import IdType
from .errors import ParseError


@dataclass(frozen=True)
class Identity:
    id_type: int
    data: bytes

    ANY_TEXT = "%any"

    @classmethod
    def parse(cls, text: str) -> Identity:
        """strongSwan rules: an IP literal is an IP identity, "@name" is an FQDN, "user@host" an
        RFC 822 address, "C=.., O=.., CN=.." a distinguished name, anything else an FQDN.
        Explicit prefixes: "fqdn:", "email:", "keyid:" (hex), "ipv4:", "ipv6:", "dn:"."""
        t = text.strip()
        if not t:
            raise ValueError("empty identity")
        prefix, _, rest = t.partition(":")
        p = prefix.lower()
        if rest and p in ("fqdn", "email", "rfc822", "keyid", "ipv4", "ipv6", "dn", "asn1dn"):
            if p == "fqdn":
                return cls(IdType.ID_FQDN, rest.encode())
            if p in ("email", "rfc822"):
                return cls(IdType.ID_RFC822_ADDR, rest.encode())
            if p == "keyid":
                return cls(IdType.ID_KEY_ID, bytes.fromhex(rest.removeprefix("0x").removeprefix("#")))
            if p in ("dn", "asn1dn"):
                return cls(IdType.ID_DER_ASN1_DN, encode_dn(rest))
            addr = ipaddress.ip_address(rest)
            if (addr.version == 4) != (p == "ipv4"):
                raise ValueError(f"{rest} is not an {p} address")
            return cls(IdType.ID_IPV4_ADDR if addr.version == 4 else IdType.ID_IPV6_ADDR, addr.packed)
        try:
            addr = ipaddress.ip_address(t)
            return cls(IdType.ID_IPV4_ADDR if addr.version == 4 else IdType.ID_IPV6_ADDR, addr.packed)
        except ValueError:
            pass
        if t.startswith("@"):
            if t.startswith("@#"):
                return cls(IdType.ID_KEY_ID, bytes.fromhex(t[2:]))
            return cls(IdType.ID_FQDN, t[1:].encode())
        if "=" in t and ("," in t or t.upper().startswith(("C=", "O=", "CN=", "OU="))):
            return cls(IdType.ID_DER_ASN1_DN, encode_dn(t))
        if "@" in t:
            return cls(IdType.ID_RFC822_ADDR, t.encode())
        return cls(IdType.ID_FQDN, t.encode())

    def __str__(self) -> str:
        t = self.id_type
        if t in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR):
            return str(ipaddress.ip_address(self.data))
        if t in (IdType.ID_FQDN, IdType.ID_RFC822_ADDR):
            return self.data.decode("utf-8", "backslashreplace")
        if t == IdType.ID_DER_ASN1_DN:
            try:
                return ", ".join(f"{k}={v}" for k, v in parse_dn(self.data))
            except ParseError:
                return "dn:" + self.data.hex()
        if t == IdType.ID_KEY_ID:
            return "keyid:" + self.data.hex()
        if t == IdType.ID_NULL:
            return "%null"
        return f"{t}:{self.data.hex()}"

    def body(self) -> bytes:
        """ID payload body (type, 3 reserved bytes, data): RestOfIDPayload for AUTH."""
        return bytes([self.id_type, 0, 0, 0]) + self.data


@dataclass(frozen=True)
class IdentityPattern:
    """What a connection accepts from a peer: an exact identity, "%any", or a wildcard such as
    "*@example.org" / "*.example.org" (fnmatch on the text form, same ID type family)."""
    text: str

    def matches(self, ident: Identity) -> bool:
        if self.text in ("%any", "*", ""):
            return True
        if any(c in self.text for c in "*?"):
            return fnmatch.fnmatchcase(str(ident).lower(), self.text.lower())
        try:
            want = _parsed(self.text)
        except ValueError:
            return False
        if want.id_type == IdType.ID_DER_ASN1_DN and ident.id_type == IdType.ID_DER_ASN1_DN:
            return str(want) == str(ident)
        if want.id_type in (IdType.ID_FQDN, IdType.ID_RFC822_ADDR) and want.id_type == ident.id_type:
            return want.data.lower() == ident.data.lower()
        return want == ident

    @property
    def is_any(self) -> bool:
        return self.text in ("%any", "*", "")


@functools.lru_cache(maxsize=1024)
def _parsed(text: str) -> Identity:
    """Identity.parse for the patterns of the configuration (checked on every IKE_AUTH)."""
    return Identity.parse(text)
