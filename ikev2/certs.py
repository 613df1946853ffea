"""X.509 certificates for IKEv2 public-key authentication (RFC 7296 3.6/3.7, RFC 4945, RFC 5280).

Loading (the only functions here that touch files), CERT/CERTREQ payload data, a hand-written
path builder/validator for the IKE certificate profile, and matching of IKE identities against
certificates the way strongSwan does it. Design notes and the exact rules: docs/certificates.md.

Everything is deterministic: the validation time is an argument, never read from a clock. Bad
certificates (malformed, unverifiable, untrusted) raise only :class:`CertificateError`, whose text
is a one-line reason meant for the log of a network engineer.
"""
from __future__ import annotations

import datetime
import hashlib
import ipaddress
from dataclasses import dataclass, field
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509.oid import ExtensionOID, NameOID, SignatureAlgorithmOID

from .constants import IdType
from .errors import IKEv2Error
from .identity import Identity

#: The private key types IKE authentication signs with.
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey
IP_ADDRESS_TYPES = (ipaddress.IPv4Address, ipaddress.IPv6Address)
_ExtT = TypeVar("_ExtT", bound=x509.ExtensionType)

__all__ = [
    "CertificateError", "load_certificates", "load_private_key", "certreq_data",
    "ca_matches_certreq", "cert_payload_data", "parse_cert_payload", "verify_chain",
    "identity_matches_cert", "default_identity", "describe",
]

# Issuer RSA keys below this size are refused (RFC 8247 / NIST SP 800-131A: 2048 minimum).
MIN_RSA_ISSUER_BITS = 2048
# Upper bound on (child, issuer) edges examined by one verify_chain call: a peer that sends many
# certificates with the same names must not make path building explode combinatorially.
_MAX_EDGE_CHECKS = 256
_WEAK_HASHES = (hashes.MD5, hashes.SHA1)
# Extensions this module either enforces or deliberately ignores (policy extensions: the gateway
# never authorizes by certificate policy, see docs). Any other critical extension is fatal.
_KNOWN_CRITICAL = {
    ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE, ExtensionOID.EXTENDED_KEY_USAGE,
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME, ExtensionOID.NAME_CONSTRAINTS,
    ExtensionOID.CERTIFICATE_POLICIES, ExtensionOID.POLICY_CONSTRAINTS,
    ExtensionOID.INHIBIT_ANY_POLICY, ExtensionOID.POLICY_MAPPINGS,
    ExtensionOID.SUBJECT_KEY_IDENTIFIER, ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
}
# Short attribute names as strongSwan prints them (same as ikev2.asn1 / Identity.__str__).
_SHORT = {
    "2.5.4.3": "CN", "2.5.4.4": "SN", "2.5.4.5": "serialNumber", "2.5.4.6": "C", "2.5.4.7": "L",
    "2.5.4.8": "ST", "2.5.4.9": "street", "2.5.4.10": "O", "2.5.4.11": "OU", "2.5.4.12": "T",
    "2.5.4.42": "G", "2.5.4.43": "I", "2.5.4.46": "dnQualifier", "2.5.4.65": "pseudonym",
    "1.2.840.113549.1.9.1": "E", "0.9.2342.19200300.100.1.25": "DC",
    "0.9.2342.19200300.100.1.1": "UID",
}


class CertificateError(IKEv2Error):
    """A certificate or key is malformed, unusable, or fails validation; str() says why."""


# --------------------------------------------------------------------------- minimal DER reader


def _tlv(data: bytes, pos: int, end: int | None = None) -> tuple[int, int, int]:
    """(tag, value start, value end) of the DER element at pos; CertificateError if truncated."""
    end = len(data) if end is None else end
    if pos + 2 > end:
        raise CertificateError("malformed certificate: truncated DER")
    tag, length = data[pos], data[pos + 1]
    if tag & 0x1F == 0x1F:
        raise CertificateError("malformed certificate: multi-byte DER tag")
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or pos + n > end:
            raise CertificateError("malformed certificate: bad DER length")
        length = int.from_bytes(data[pos:pos + n], "big")
        pos += n
    if pos + length > end:
        raise CertificateError("malformed certificate: DER element exceeds its container")
    return tag, pos, pos + length


def _oid_str(b: bytes) -> str:
    if not b or b[-1] & 0x80:
        raise CertificateError("malformed certificate: bad OID in a name")
    arcs: list[int] = []
    value = 0
    for byte in b:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)   # the first subidentifier encodes two arcs
    return ".".join(map(str, [first, arcs[0] - 40 * first, *arcs[1:]]))


@dataclass(frozen=True)
class _Raw:
    """Pieces of a certificate's DER that cryptography does not hand out verbatim."""
    spki: bytes            # SubjectPublicKeyInfo TLV exactly as in the certificate
    public_key_bits: bytes  # contents of the subjectPublicKey BIT STRING (no unused-bits octet)
    issuer: bytes          # issuer Name TLV
    subject: bytes         # subject Name TLV


def _raw_parts(der: bytes) -> _Raw:
    tag, s, e = _tlv(der, 0)
    if tag != 0x30 or e != len(der):
        raise CertificateError("malformed certificate: not a single DER SEQUENCE")
    ttag, ts, te = _tlv(der, s, e)          # tbsCertificate
    if ttag != 0x30:
        raise CertificateError("malformed certificate: TBSCertificate is not a SEQUENCE")
    atag, as_, ae = _tlv(der, te, e)        # outer signatureAlgorithm
    sigtag, sigs, sige = _tlv(der, ae, e)   # signatureValue
    if sigtag != 0x03 or sige != e or sige == sigs or der[sigs] != 0:
        raise CertificateError("malformed certificate: bad signature BIT STRING")
    pos = ts
    tag, vs, ve = _tlv(der, pos, te)
    if tag == 0xA0:                          # [0] version
        pos = ve
        tag, vs, ve = _tlv(der, pos, te)
    fields = []
    for _ in range(6):                       # serial, signature, issuer, validity, subject, spki
        tag, vs, ve = _tlv(der, pos, te)
        fields.append((pos, tag, vs, ve))
        pos = ve
    (_, _, _, _), (sp, _, _, se), (ip, _, _, ie), _v, (subp, _, _, sube), (kp, ktag, ks, ke) = fields
    if der[sp:se] != der[te:ae] or atag != 0x30:
        raise CertificateError("malformed certificate: signature algorithm inside and outside "
                               "the signed part differ")
    if ktag != 0x30:
        raise CertificateError("malformed certificate: SubjectPublicKeyInfo is not a SEQUENCE")
    _algtag, _as, algend = _tlv(der, ks, ke)
    btag, bs, be = _tlv(der, algend, ke)
    if btag != 0x03 or be == bs or der[bs] != 0:
        raise CertificateError("malformed certificate: subjectPublicKey is not a BIT STRING")
    return _Raw(der[kp:ke], der[bs + 1:be], der[ip:ie], der[subp:sube])


# --------------------------------------------------------------------------- names


def _decode_string(tag: int, b: bytes) -> str:
    try:
        if tag == 0x0C:                                  # UTF8String
            return b.decode("utf-8")
        if tag in (0x12, 0x13, 0x16, 0x1A, 0x14, 0x19):  # Numeric/Printable/IA5/Visible/T61/Graphic
            return b.decode("latin-1")
        if tag == 0x1E:                                  # BMPString
            return b.decode("utf-16-be")
        if tag == 0x1C:                                  # UniversalString
            return b.decode("utf-32-be")
    except UnicodeDecodeError:
        pass
    return "#" + bytes([tag]).hex() + b.hex()


def _normalize(value: str) -> str:
    """RFC 5280 7.1 / RFC 4518 in short: case-insensitive, insignificant whitespace ignored."""
    return " ".join(value.split()).casefold()


DnKey = tuple[tuple[tuple[str, str], ...], ...]


def _dn_key(der: bytes) -> DnKey:
    """Comparable form of a DER Name: per RDN the sorted (OID, normalized value) pairs."""
    tag, s, e = _tlv(der, 0)
    if tag != 0x30 or e != len(der):
        raise CertificateError("malformed distinguished name")
    rdns = []
    pos = s
    while pos < e:
        stag, ss, se = _tlv(der, pos, e)
        if stag != 0x31:
            raise CertificateError("malformed distinguished name: RDN is not a SET")
        atvs = []
        apos = ss
        while apos < se:
            atag, as_, ae = _tlv(der, apos, se)
            otag, os_, oe = _tlv(der, as_, ae)
            if atag != 0x30 or otag != 0x06:
                raise CertificateError("malformed distinguished name: bad attribute")
            vtag, vs, ve = _tlv(der, oe, ae)
            atvs.append((_oid_str(der[os_:oe]), _normalize(_decode_string(vtag, der[vs:ve]))))
            apos = ae
        if not atvs:
            raise CertificateError("malformed distinguished name: empty RDN")
        rdns.append(tuple(sorted(atvs)))
        pos = se
    return tuple(rdns)


def _describe_name(name: x509.Name) -> str:
    parts = []
    for rdn in name.rdns:
        atvs = []
        for attr in rdn:
            key = _SHORT.get(attr.oid.dotted_string, attr.oid.dotted_string)
            value = attr.value if isinstance(attr.value, str) else "#" + bytes(attr.value).hex()
            atvs.append(f"{key}={value}")
        parts.append("+".join(atvs))
    return ", ".join(parts)


def _sans(cert: x509.Certificate) -> list[x509.GeneralName]:
    try:
        return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return []


def describe(cert: x509.Certificate) -> str:
    """Short text for logs: the subject in strongSwan's order ("C=CH, O=strongSwan, CN=moon");
    for an empty subject the first subjectAltName, else the serial number."""
    try:
        text = _describe_name(cert.subject)
        if text:
            return text
        for san in _sans(cert):
            if isinstance(san, (x509.DNSName, x509.RFC822Name, x509.IPAddress)):
                return str(san.value)
        return f"serial {cert.serial_number:#x}"
    except Exception:  # describing must never fail, whatever the certificate looks like
        return "<unparsable certificate>"


def _fmt_time(t: datetime.datetime) -> str:
    return t.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# --------------------------------------------------------------------------- loading / payloads


def _checked(cert: x509.Certificate, what: str) -> x509.Certificate:
    """Force cryptography's lazy parsing so that later use cannot fail with another exception."""
    try:
        _raw_parts(cert.public_bytes(serialization.Encoding.DER))
        cert.subject, cert.issuer, cert.extensions   # noqa: B018 - parse now
        cert.not_valid_before_utc, cert.not_valid_after_utc, cert.serial_number  # noqa: B018
        cert.signature_algorithm_oid  # noqa: B018
        try:
            cert.signature_hash_algorithm  # noqa: B018
            cert.signature_algorithm_parameters  # noqa: B018
        except UnsupportedAlgorithm as e:
            raise CertificateError(f"{what}: unsupported signature algorithm "
                                   f"{cert.signature_algorithm_oid.dotted_string} ({e})") from None
        try:
            cert.public_key()
        except UnsupportedAlgorithm:
            raise CertificateError(f"{what}: unsupported public key algorithm "
                                   f"{cert.public_key_algorithm_oid.dotted_string}") from None
        _dn_key(cert.subject.public_bytes())
        _dn_key(cert.issuer.public_bytes())
    except CertificateError:
        raise
    except Exception as e:
        raise CertificateError(f"{what}: malformed certificate ({type(e).__name__}: {e})") from None
    return cert


def load_certificates(path: str) -> list[x509.Certificate]:
    """All certificates of a PEM file (other PEM blocks such as keys are ignored), or the single
    certificate of a DER file, in file order."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CertificateError(f"cannot read certificate file {path}: {e.strerror or e}") from None
    if not data.strip():
        raise CertificateError(f"certificate file {path} is empty")
    if b"-----BEGIN" in data:
        try:
            certs = x509.load_pem_x509_certificates(data)
        except Exception:
            raise CertificateError(f"{path} contains no valid PEM certificate "
                                   f"(expected -----BEGIN CERTIFICATE-----)") from None
    else:
        try:
            certs = [x509.load_der_x509_certificate(data)]
        except Exception:
            raise CertificateError(f"{path} is neither a PEM nor a DER certificate") from None
    return [_checked(c, f"{path}: certificate #{i + 1}") for i, c in enumerate(certs)]


def load_private_key(path: str, password: bytes | None = None) -> PrivateKey:
    """RSA, ECDSA, Ed25519 or Ed448 private key from a PEM (PKCS#1, SEC1, PKCS#8) or DER file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CertificateError(f"cannot read private key file {path}: {e.strerror or e}") from None
    loader = (serialization.load_pem_private_key if b"-----BEGIN" in data
              else serialization.load_der_private_key)
    try:
        key = loader(data, password=password)
    except TypeError:
        if password is None:
            raise CertificateError(f"private key {path} is encrypted and no password was "
                                   f"given") from None
        raise CertificateError(f"private key {path} is not encrypted but a password was "
                               f"given") from None
    except UnsupportedAlgorithm:
        raise CertificateError(f"private key {path} uses an unsupported algorithm") from None
    except Exception:
        hint = " (or the password is wrong)" if password is not None else ""
        raise CertificateError(f"{path} is not a valid PEM or DER private key{hint}") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey,
                            ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        raise CertificateError(f"private key {path} is of unsupported type "
                               f"{type(key).__name__} (need RSA, ECDSA, Ed25519 or Ed448)")
    return key


def _spki(cert: x509.Certificate) -> bytes:
    return _raw_parts(cert.public_bytes(serialization.Encoding.DER)).spki


def certreq_data(cacerts: list[x509.Certificate]) -> bytes:
    """CERTREQ payload data for X.509 (RFC 7296 3.7): SHA-1 of each CA's SubjectPublicKeyInfo."""
    out = bytearray()
    seen = set()
    for ca in cacerts:
        h = hashlib.sha1(_spki(ca)).digest()
        if h not in seen:   # the same key twice (re-issued root) is requested once
            seen.add(h)
            out += h
    return bytes(out)


def ca_matches_certreq(cacert: x509.Certificate, certreq_hashes: list[bytes]) -> bool:
    """Whether a CERTREQ (already split into 20-byte hashes) asks for this CA."""
    try:
        h = hashlib.sha1(_spki(cacert)).digest()
    except CertificateError:
        return False
    return any(h == bytes(x) for x in certreq_hashes)


def cert_payload_data(cert: x509.Certificate) -> bytes:
    """Certificate Data of a CERT payload with encoding X509_SIGNATURE (4): the DER."""
    return cert.public_bytes(serialization.Encoding.DER)


def parse_cert_payload(data: bytes) -> x509.Certificate:
    """A CERT payload's X.509 DER data -> certificate, fully parsed; CertificateError otherwise."""
    try:
        cert = x509.load_der_x509_certificate(bytes(data))
    except Exception as e:
        raise CertificateError(f"malformed certificate in CERT payload ({len(data)} bytes): "
                               f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
                               ) from None
    return _checked(cert, "certificate in CERT payload")


# --------------------------------------------------------------------------- path validation


@dataclass(eq=False)
class _Node:
    cert: x509.Certificate
    der: bytes
    subject: DnKey
    issuer: DnKey
    anchor: bool
    desc: str
    self_issued: bool = field(init=False)

    def __post_init__(self) -> None:
        self.self_issued = self.subject == self.issuer


def _node(cert: x509.Certificate, anchor: bool) -> _Node:
    der = cert.public_bytes(serialization.Encoding.DER)
    raw = _raw_parts(der)
    return _Node(cert, der, _dn_key(raw.subject), _dn_key(raw.issuer), anchor, describe(cert))


def _ext(cert: x509.Certificate, cls: type[_ExtT]) -> _ExtT | None:
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None


def _check_validity(n: _Node, now: datetime.datetime) -> None:
    nb, na = n.cert.not_valid_before_utc, n.cert.not_valid_after_utc
    if now < nb:
        raise CertificateError(f"certificate for {n.desc} is not valid before {_fmt_time(nb)}")
    if now > na:
        raise CertificateError(f"certificate for {n.desc} expired on {_fmt_time(na)}")


def _check_critical(n: _Node) -> None:
    for ext in n.cert.extensions:
        if ext.critical and ext.oid not in _KNOWN_CRITICAL:
            raise CertificateError(f"certificate for {n.desc} has an unsupported critical "
                                   f"extension {ext.oid.dotted_string}")


def _verify_signature(child: _Node, issuer: _Node) -> None:
    """Signature of child made with issuer's public key, RSA (PKCS#1 v1.5, PSS), ECDSA, EdDSA."""
    cert = child.cert
    key = issuer.cert.public_key()
    bad = f"signature of {child.desc} by {issuer.desc} is invalid"
    h = cert.signature_hash_algorithm
    params = cert.signature_algorithm_parameters
    if isinstance(h, _WEAK_HASHES):
        raise CertificateError(f"signature of {child.desc} by {issuer.desc} uses {h.name.upper()}, "
                               f"which is not accepted")
    oid = cert.signature_algorithm_oid
    try:
        if isinstance(key, rsa.RSAPublicKey):
            if key.key_size < MIN_RSA_ISSUER_BITS:
                raise CertificateError(f"RSA key of {issuer.desc} is too small ({key.key_size} "
                                       f"bits, need {MIN_RSA_ISSUER_BITS})")
            if not isinstance(params, (padding.PKCS1v15, padding.PSS)) or h is None:
                raise CertificateError(bad + " (signature algorithm does not fit an RSA key)")
            key.verify(cert.signature, cert.tbs_certificate_bytes, params, h)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            if not isinstance(params, ec.ECDSA):
                raise CertificateError(bad + " (signature algorithm does not fit an ECDSA key)")
            key.verify(cert.signature, cert.tbs_certificate_bytes, params)
        elif isinstance(key, ed25519.Ed25519PublicKey):
            if oid != SignatureAlgorithmOID.ED25519:
                raise CertificateError(bad + " (signature algorithm does not fit an Ed25519 key)")
            key.verify(cert.signature, cert.tbs_certificate_bytes)
        elif isinstance(key, ed448.Ed448PublicKey):
            if oid != SignatureAlgorithmOID.ED448:
                raise CertificateError(bad + " (signature algorithm does not fit an Ed448 key)")
            key.verify(cert.signature, cert.tbs_certificate_bytes)
        else:
            raise CertificateError(f"{issuer.desc} has a {type(key).__name__}, which cannot sign "
                                   f"certificates here")
    except InvalidSignature:
        raise CertificateError(bad) from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise CertificateError(f"{bad} ({e})") from None


def _check_issuer(issuer: _Node, path: list[_Node]) -> None:
    """issuer may sign certificates, and its pathLenConstraint admits the path below it."""
    bc = _ext(issuer.cert, x509.BasicConstraints)
    if bc is None or not bc.ca:
        raise CertificateError(f"not a CA: {issuer.desc} (issuer of {path[-1].desc})")
    ku = _ext(issuer.cert, x509.KeyUsage)
    if ku is not None and not ku.key_cert_sign:
        raise CertificateError(f"{issuer.desc} may not sign certificates (keyUsage lacks "
                               f"keyCertSign)")
    if bc.path_length is not None:
        below = sum(1 for n in path[1:] if not n.self_issued)
        if below > bc.path_length:
            raise CertificateError(f"path length exceeded: {issuer.desc} allows {bc.path_length} "
                                   f"intermediate CA(s) below it, the path has {below}")


# name constraints ---------------------------------------------------------------------------


def _dns_in(name: str, base: str) -> bool:
    name, base = name.lower().rstrip("."), base.lower().rstrip(".")
    if not base:
        return True
    if base.startswith("."):
        return name.endswith(base)
    return name == base or name.endswith("." + base)


def _email_in(addr: str, base: str) -> bool:
    host = addr.rpartition("@")[2].lower()
    base_l = base.lower()
    if "@" in base:
        local, _, bhost = base.rpartition("@")
        a_local, _, _ = addr.rpartition("@")
        return a_local == local and host == bhost.lower()
    if base_l.startswith("."):
        return host.endswith(base_l)
    return host == base_l


def _subtree_match(gn: x509.GeneralName, sub: x509.GeneralName) -> bool | None:
    """Whether name gn lies in subtree sub; None if the two are of different name types."""
    if type(gn) is not type(sub):
        return None
    if isinstance(gn, x509.DNSName):
        return _dns_in(gn.value, sub.value)
    if isinstance(gn, x509.RFC822Name):
        return _email_in(gn.value, sub.value)
    if isinstance(gn, x509.IPAddress):
        net = sub.value
        if not isinstance(net, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            return False
        addr = gn.value
        return addr.version == net.version and addr in net
    if isinstance(gn, x509.DirectoryName):
        base = _dn_key(sub.value.public_bytes())
        return _dn_key(gn.value.public_bytes())[:len(base)] == base
    raise CertificateError(f"unsupported name constraint of type {type(sub).__name__}")


def _names_for_constraints(n: _Node) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    if n.cert.subject.rdns:
        names.append(x509.DirectoryName(n.cert.subject))
    for attr in n.cert.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS):
        if isinstance(attr.value, str):
            names.append(x509.RFC822Name(attr.value))
    names.extend(_sans(n.cert))
    return names


def _gn_text(gn: x509.GeneralName) -> str:
    if isinstance(gn, x509.DirectoryName):
        return _describe_name(gn.value)
    return str(gn.value)


def _check_name_constraints(issuer: _Node, path: list[_Node]) -> None:
    nc = _ext(issuer.cert, x509.NameConstraints)
    if nc is None:
        return
    permitted = list(nc.permitted_subtrees or [])
    excluded = list(nc.excluded_subtrees or [])
    for i, n in enumerate(path):
        if i > 0 and n.self_issued:   # RFC 5280 6.1.3 (b): not applied to self-issued CAs
            continue
        for gn in _names_for_constraints(n):
            for sub in excluded:
                if _subtree_match(gn, sub):
                    raise CertificateError(f"name constraints of {issuer.desc} exclude "
                                           f"{_gn_text(gn)} in {n.desc}")
            same_type = [sub for sub in permitted if type(sub) is type(gn)]
            if same_type and not any(_subtree_match(gn, sub) for sub in same_type):
                raise CertificateError(f"name constraints of {issuer.desc} do not permit "
                                       f"{_gn_text(gn)} in {n.desc}")


# search -------------------------------------------------------------------------------------


class _Search:
    def __init__(self, nodes: list[_Node], now: datetime.datetime, max_depth: int):
        self.nodes = nodes
        self.now = now
        self.max_depth = max_depth
        self.edges = 0
        self.sig_ok: dict[tuple[int, int], CertificateError | None] = {}
        self.best: tuple[tuple[int, int], CertificateError] | None = None

    def fail(self, progress: tuple[int, int], err: CertificateError) -> None:
        if self.best is None or progress > self.best[0]:
            self.best = (progress, err)

    def candidates(self, child: _Node, path: list[_Node]) -> list[_Node]:
        cands = [n for n in self.nodes if n.subject == child.issuer and n not in path]
        aki = _ext(child.cert, x509.AuthorityKeyIdentifier)
        aki_id = aki.key_identifier if aki is not None else None

        def rank(n: _Node) -> tuple[int, int]:
            ski_match = 1
            if aki_id is not None:
                ski = _ext(n.cert, x509.SubjectKeyIdentifier)
                if ski is not None:
                    ski_match = 0 if ski.digest == aki_id else 2
            return (0 if n.anchor else 1, ski_match)
        return sorted(cands, key=rank)   # stable: configuration / wire order within a rank

    def edge(self, child: _Node, issuer: _Node) -> None:
        k = (id(child), id(issuer))
        if k not in self.sig_ok:
            try:
                _verify_signature(child, issuer)
                self.sig_ok[k] = None
            except CertificateError as e:
                self.sig_ok[k] = e
        failure = self.sig_ok[k]
        if failure is not None:
            raise failure

    def run(self, path: list[_Node]) -> list[_Node] | None:
        child = path[-1]
        depth = len(path) - 1
        if depth >= self.max_depth:
            self.fail((depth, 0), CertificateError(
                f"path length exceeded: more than {self.max_depth} CA certificate(s) above "
                f"{path[0].desc}"))
            return None
        cands = self.candidates(child, path)
        if not cands:
            if child.self_issued:
                msg = f"self-signed certificate {child.desc} is not a trusted CA"
            else:
                msg = (f"no trusted CA for issuer {_describe_name(child.cert.issuer)} "
                       f"(of {child.desc})")
            self.fail((depth, 0), CertificateError(msg))
            return None
        for cand in cands:
            self.edges += 1
            if self.edges > _MAX_EDGE_CHECKS:
                raise CertificateError(f"too many candidate certificates while building the path "
                                       f"for {path[0].desc}")
            try:
                self.edge(child, cand)
            except CertificateError as e:
                self.fail((depth, 0), e)
                continue
            try:
                _check_issuer(cand, path)
                _check_validity(cand, self.now)
                if not cand.anchor:
                    _check_critical(cand)
                _check_name_constraints(cand, path)
            except CertificateError as e:
                self.fail((depth, 1), e)
                continue
            if cand.anchor:
                return path + [cand]
            found = self.run(path + [cand])
            if found is not None:
                return found
        return None


def verify_chain(end_entity: x509.Certificate, intermediates: list[x509.Certificate],
                 trust_anchors: list[x509.Certificate], now: datetime.datetime,
                 max_depth: int = 8) -> list[x509.Certificate]:
    """Build and validate a path end_entity -> intermediates... -> one of trust_anchors at time
    ``now`` (a naive datetime is taken as UTC). ``max_depth`` bounds the number of CA
    certificates above the end entity. Returns the path, end entity first, trust anchor last (a
    trusted end entity alone is a path of one). Raises CertificateError with the reason."""
    if not isinstance(now, datetime.datetime):
        raise TypeError("now must be a datetime.datetime")
    if now.tzinfo is None:
        now = now.replace(tzinfo=datetime.UTC)
    try:
        ee = _node(_checked(end_entity, "end-entity certificate"), False)
        anchors_der: dict[bytes, _Node] = {}
        for c in trust_anchors:
            n = _node(_checked(c, f"trusted CA certificate {describe(c)}"), True)
            anchors_der.setdefault(n.der, n)
        nodes = list(anchors_der.values())
        seen = set(anchors_der)
        seen.add(ee.der)
        for c in intermediates:
            n = _node(_checked(c, f"intermediate certificate {describe(c)}"), False)
            if n.der not in seen:
                seen.add(n.der)
                nodes.append(n)
        _check_validity(ee, now)
        if ee.der in anchors_der:   # pinned / self-signed peer certificate configured as trusted
            return [end_entity]
        _check_critical(ee)
        search = _Search(nodes, now, max_depth)
        found = search.run([ee])
        if found is None:
            assert search.best is not None
            raise search.best[1]
        return [n.cert for n in found]
    except CertificateError:
        raise
    except Exception as e:   # defensive: malformed input must not surface as anything else
        raise CertificateError(f"cannot validate certificate {describe(end_entity)} "
                               f"({type(e).__name__}: {e})") from None


# --------------------------------------------------------------------------- identities


def _key_ids(cert: x509.Certificate) -> tuple[bytes, bytes]:
    raw = _raw_parts(cert.public_bytes(serialization.Encoding.DER))
    return hashlib.sha1(raw.public_key_bits).digest(), hashlib.sha1(raw.spki).digest()


def identity_matches_cert(ident: Identity, cert: x509.Certificate) -> bool:
    """Whether the certificate vouches for the IKE identity (strongSwan's rules, exact match):
    DN -> subject (or a directoryName SAN), FQDN -> dNSName SAN, RFC 822 -> rfc822Name SAN,
    IPv4/IPv6 -> iPAddress SAN, KEY_ID -> SHA-1 of the subjectPublicKey bits (or of the whole
    SubjectPublicKeyInfo). Malformed data never matches."""
    try:
        t, data = ident.id_type, bytes(ident.data)
        if t == IdType.ID_DER_ASN1_DN:
            want = _dn_key(data)
            if want == _dn_key(cert.subject.public_bytes()) and cert.subject.rdns:
                return True
            return any(isinstance(g, x509.DirectoryName) and _dn_key(g.value.public_bytes()) == want
                       for g in _sans(cert))
        if t in (IdType.ID_FQDN, IdType.ID_RFC822_ADDR):
            cls = x509.DNSName if t == IdType.ID_FQDN else x509.RFC822Name
            want_s = data.decode("utf-8").lower()
            return bool(want_s) and any(isinstance(g, cls) and g.value.lower() == want_s
                                        for g in _sans(cert))
        if t in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR):
            if len(data) != (4 if t == IdType.ID_IPV4_ADDR else 16):
                return False
            return any(isinstance(g, x509.IPAddress) and isinstance(g.value, IP_ADDRESS_TYPES)
                       and g.value.packed == data for g in _sans(cert))
        if t == IdType.ID_KEY_ID:
            return bool(data) and data in _key_ids(cert)
        return False
    except Exception:   # malformed identity data or certificate: no match
        return False


def default_identity(cert: x509.Certificate) -> Identity:
    """The identity a certificate stands for when none is configured: its subject DN; for a
    certificate with an empty subject its first dNSName/rfc822Name/iPAddress SAN."""
    if not cert.subject.rdns:
        for g in _sans(cert):
            if isinstance(g, x509.DNSName):
                return Identity(IdType.ID_FQDN, g.value.encode())
            if isinstance(g, x509.RFC822Name):
                return Identity(IdType.ID_RFC822_ADDR, g.value.encode())
            if isinstance(g, x509.IPAddress) and isinstance(g.value, IP_ADDRESS_TYPES):
                return Identity(IdType.ID_IPV4_ADDR if g.value.version == 4
                                else IdType.ID_IPV6_ADDR, g.value.packed)
    return Identity(IdType.ID_DER_ASN1_DN, cert.subject.public_bytes())
