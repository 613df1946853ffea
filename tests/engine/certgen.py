"""Certificates for engine tests, generated with cryptography (no files needed)."""
from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

NOW = datetime.datetime(2026, 11, 1, tzinfo=datetime.UTC)


def new_key(kind: str):
    if kind == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ecdsa384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "rsa":
        return rsa.generate_private_key(65537, 2048)
    if kind == "rsa3072":
        return rsa.generate_private_key(65537, 3072)
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(kind)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vpn-gw tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def issue(subject_cn: str, key, issuer_cert=None, issuer_key=None, ca=False, sans=(), path_len=None,
          days=365, extra_ou: str = ""):
    subject = _name(subject_cn)
    if extra_ou:
        subject = x509.Name(list(subject) + [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, extra_ou)])
    issuer = issuer_cert.subject if issuer_cert is not None else subject
    signer = issuer_key if issuer_key is not None else key
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(NOW - datetime.timedelta(days=1))
         .not_valid_after(NOW + datetime.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=path_len if ca else None), critical=True))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), critical=False)
    algo = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return b.sign(signer, algo)


def chain(kind: str, leaf_cn: str, ca_kind: str | None = None, intermediates: int = 0, pad_ou: str = ""):
    """Returns (ca_cert, [leaf, *intermediates], leaf_key)."""
    ca_key = new_key(ca_kind or kind)
    ca = issue("Test Root CA", ca_key, ca=True)
    issuer, issuer_key = ca, ca_key
    inters = []
    for i in range(intermediates):
        k = new_key(ca_kind or kind)
        c = issue(f"Intermediate {i}", k, issuer, issuer_key, ca=True, extra_ou=pad_ou)
        inters.append(c)
        issuer, issuer_key = c, k
    leaf_key = new_key(kind)
    leaf = issue(leaf_cn, leaf_key, issuer, issuer_key, sans=[leaf_cn], extra_ou=pad_ou)
    return ca, [leaf] + list(reversed(inters)), leaf_key
