"""ikev2.certs: loaders, CERT/CERTREQ data, path validation and identity matching.

Certificates are generated here with cryptography (RSA-3072 root, ECDSA/EdDSA/RSA-PSS
variants); one test cross-checks with certificates made by strongSwan's ``pki``.
"""
from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import shutil
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa, x25519
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ikev2.certs import (
    CertificateError,
    ca_matches_certreq,
    cert_payload_data,
    certreq_data,
    default_identity,
    describe,
    identity_matches_cert,
    load_certificates,
    load_private_key,
    parse_cert_payload,
    verify_chain,
)
from ikev2.constants import IdType
from ikev2.errors import IKEv2Error
from ikev2.identity import Identity

UTC = datetime.UTC
NOT_BEFORE = datetime.datetime(2030, 1, 1, tzinfo=UTC)
NOT_AFTER = datetime.datetime(2031, 1, 1, tzinfo=UTC)
SHA256 = hashes.SHA256()  # the default signature hash of make_cert (a stateless algorithm object)
NOW = datetime.datetime(2030, 6, 1, tzinfo=UTC)


def dn(*parts: tuple, printable: bool = False) -> x509.Name:
    """dn(("C", "CH"), ("O", "strongSwan"), ("CN", "moon")) in that (DER) order."""
    oids = {"C": NameOID.COUNTRY_NAME, "O": NameOID.ORGANIZATION_NAME, "CN": NameOID.COMMON_NAME,
            "OU": NameOID.ORGANIZATIONAL_UNIT_NAME, "E": NameOID.EMAIL_ADDRESS}
    attrs = []
    for k, v in parts:
        if printable or k == "C":
            attrs.append(x509.NameAttribute(oids[k], v, _type=_ASN1Type.PrintableString))
        else:
            attrs.append(x509.NameAttribute(oids[k], v))
    return x509.Name(attrs)


def make_cert(subject: x509.Name, key, issuer: x509.Name | None = None, issuer_key=None, *,
              ca: bool | None = False, pathlen: int | None = None, sans=(), key_usage=None,
              not_before=NOT_BEFORE, not_after=NOT_AFTER, hash_alg=SHA256,
              pss: bool = False, extra=(), ski: bool = True, aki_key=None) -> x509.Certificate:
    """A certificate for key's public half; self-signed when issuer is None."""
    issuer = subject if issuer is None else issuer
    issuer_key = key if issuer_key is None else issuer_key
    pub = key.public_key()
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(pub)
         .serial_number(x509.random_serial_number()).not_valid_before(not_before)
         .not_valid_after(not_after))
    if ca is not None:
        b = b.add_extension(x509.BasicConstraints(ca=ca, path_length=pathlen if ca else None),
                            critical=True)
    if ca and key_usage is None:
        key_usage = dict(key_cert_sign=True, crl_sign=True)
    if key_usage is not None:
        ku = dict(digital_signature=False, content_commitment=False, key_encipherment=False,
                  data_encipherment=False, key_agreement=False, key_cert_sign=False,
                  crl_sign=False, encipher_only=False, decipher_only=False)
        ku.update(key_usage)
        b = b.add_extension(x509.KeyUsage(**ku), critical=True)
    if ski:
        b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
    aki_pub = (aki_key or issuer_key).public_key()
    b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(aki_pub),
                        critical=False)
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    for ext, crit in extra:
        b = b.add_extension(ext, critical=crit)
    if isinstance(issuer_key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return b.sign(issuer_key, None)
    if pss:
        return b.sign(issuer_key, hash_alg, rsa_padding=padding.PSS(
            mgf=padding.MGF1(hash_alg), salt_length=padding.PSS.DIGEST_LENGTH))
    return b.sign(issuer_key, hash_alg)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def keys():
    return {
        "root": rsa.generate_private_key(65537, 3072),
        "int": ec.generate_private_key(ec.SECP256R1()),
        "int2": ec.generate_private_key(ec.SECP256R1()),
        "ee": ec.generate_private_key(ec.SECP256R1()),
        "other": ec.generate_private_key(ec.SECP256R1()),
        "ed25519": ed25519.Ed25519PrivateKey.generate(),
        "ed448": ed448.Ed448PrivateKey.generate(),
        "ec384": ec.generate_private_key(ec.SECP384R1()),
    }


ROOT = dn(("C", "CH"), ("O", "strongSwan"), ("CN", "Root CA"))
INT = dn(("C", "CH"), ("O", "strongSwan"), ("CN", "Intermediate CA"))
EE = dn(("C", "CH"), ("O", "strongSwan"), ("CN", "moon.strongswan.org"))
EE_SANS = (x509.DNSName("moon.strongswan.org"), x509.RFC822Name("moon@strongswan.org"),
           x509.IPAddress(ipaddress.ip_address("192.0.2.1")),
           x509.IPAddress(ipaddress.ip_address("2001:db8::1")))


@pytest.fixture(scope="module")
def pki(keys):
    root = make_cert(ROOT, keys["root"], ca=True)
    inter = make_cert(INT, keys["int"], ROOT, keys["root"], ca=True, pathlen=0)
    ee = make_cert(EE, keys["ee"], INT, keys["int"], sans=EE_SANS,
                   key_usage=dict(digital_signature=True))
    ee_direct = make_cert(EE, keys["ee"], ROOT, keys["root"], sans=EE_SANS)
    return dict(root=root, int=inter, ee=ee, ee_direct=ee_direct)


def reason(excinfo) -> str:
    assert type(excinfo.value) is CertificateError
    text = str(excinfo.value)
    assert "\n" not in text
    return text


# --------------------------------------------------------------------------- good chains


def test_error_class():
    assert issubclass(CertificateError, IKEv2Error)


def test_one_level_rsa_root(pki):
    assert verify_chain(pki["ee_direct"], [], [pki["root"]], NOW) == [pki["ee_direct"], pki["root"]]


def test_two_levels(pki):
    path = verify_chain(pki["ee"], [pki["int"]], [pki["root"]], NOW)
    assert path == [pki["ee"], pki["int"], pki["root"]]


def test_two_levels_with_noise_and_duplicates(pki, keys):
    unrelated = make_cert(dn(("CN", "Unrelated CA")), keys["other"], ca=True)
    inters = [unrelated, pki["root"], pki["int"], pki["int"], pki["ee"]]
    path = verify_chain(pki["ee"], inters, [unrelated, pki["root"]], NOW)
    assert path == [pki["ee"], pki["int"], pki["root"]]


def test_naive_now_is_utc(pki):
    verify_chain(pki["ee"], [pki["int"]], [pki["root"]], NOW.replace(tzinfo=None))


def test_validity_boundaries_inclusive(pki):
    verify_chain(pki["ee"], [pki["int"]], [pki["root"]], NOT_BEFORE)
    verify_chain(pki["ee"], [pki["int"]], [pki["root"]], NOT_AFTER)


@pytest.mark.parametrize("kind", ["ecdsa-p256", "ecdsa-p384", "ed25519", "ed448", "rsa-pss"])
def test_algorithm_variants(keys, kind):
    if kind == "rsa-pss":
        ca_key, kw = keys["root"], dict(pss=True)
    else:
        ca_key, kw = {"ecdsa-p256": keys["int"], "ecdsa-p384": keys["ec384"],
                      "ed25519": keys["ed25519"], "ed448": keys["ed448"]}[kind], {}
    ca_name = dn(("O", "Test"), ("CN", f"{kind} CA"))
    ca = make_cert(ca_name, ca_key, ca=True, **kw)
    inter = make_cert(INT, keys["int2"], ca_name, ca_key, ca=True, **kw)
    ee = make_cert(EE, keys["ed25519"], INT, keys["int2"], sans=EE_SANS)
    assert verify_chain(ee, [inter], [ca], NOW) == [ee, inter, ca]
    # the same names under a different key must not verify
    forged = make_cert(INT, keys["int2"], ca_name, keys["other"], ca=True)
    with pytest.raises(CertificateError) as ei:
        verify_chain(ee, [forged], [ca], NOW)
    assert "signature of C=CH, O=strongSwan, CN=Intermediate CA by O=Test, CN=" in reason(ei)
    assert " is invalid" in reason(ei)


def test_trusted_self_signed_peer(keys):
    peer = make_cert(dn(("CN", "peer.example.org")), keys["ee"], ca=None,
                     sans=[x509.DNSName("peer.example.org")])
    assert verify_chain(peer, [], [peer], NOW) == [peer]
    with pytest.raises(CertificateError) as ei:
        verify_chain(peer, [], [], NOW)
    assert reason(ei) == "self-signed certificate CN=peer.example.org is not a trusted CA"
    # trusted but expired is still expired
    with pytest.raises(CertificateError) as ei:
        verify_chain(peer, [], [peer], NOT_AFTER + datetime.timedelta(days=1))
    assert "expired" in reason(ei)


def test_backtracks_over_same_name_issuers(pki, keys):
    """Two intermediates with the same name (re-keyed CA): the one that really signed wins,
    wherever it is in the list."""
    old_int = make_cert(INT, keys["int2"], ROOT, keys["root"], ca=True)
    for order in ([old_int, pki["int"]], [pki["int"], old_int]):
        assert verify_chain(pki["ee"], order, [pki["root"]], NOW)[1] is pki["int"]


# --------------------------------------------------------------------------- failures


def test_expired_end_entity(pki):
    with pytest.raises(CertificateError) as ei:
        verify_chain(pki["ee"], [pki["int"]], [pki["root"]], datetime.datetime(2031, 2, 1, tzinfo=UTC))
    assert reason(ei) == ("certificate for C=CH, O=strongSwan, CN=moon.strongswan.org expired on "
                          "2031-01-01 00:00:00 UTC")


def test_not_yet_valid(pki):
    with pytest.raises(CertificateError) as ei:
        verify_chain(pki["ee"], [pki["int"]], [pki["root"]], datetime.datetime(2029, 12, 31, tzinfo=UTC))
    assert reason(ei) == ("certificate for C=CH, O=strongSwan, CN=moon.strongswan.org is not "
                          "valid before 2030-01-01 00:00:00 UTC")


def test_expired_intermediate(pki, keys):
    inter = make_cert(INT, keys["int"], ROOT, keys["root"], ca=True,
                      not_after=datetime.datetime(2030, 3, 1, tzinfo=UTC))
    with pytest.raises(CertificateError) as ei:
        verify_chain(pki["ee"], [inter], [pki["root"]], NOW)
    assert reason(ei) == ("certificate for C=CH, O=strongSwan, CN=Intermediate CA expired on "
                          "2030-03-01 00:00:00 UTC")


def test_expired_root(pki, keys):
    root = make_cert(ROOT, keys["root"], ca=True, not_after=datetime.datetime(2030, 3, 1, tzinfo=UTC))
    with pytest.raises(CertificateError) as ei:
        verify_chain(pki["ee"], [pki["int"]], [root], NOW)
    assert reason(ei).startswith("certificate for C=CH, O=strongSwan, CN=Root CA expired on")


def test_wrong_issuer(pki, keys):
    other_name = dn(("CN", "Other CA"))
    other = make_cert(other_name, keys["other"], ca=True)
    ee = make_cert(EE, keys["ee"], other_name, keys["other"])
    with pytest.raises(CertificateError) as ei:
        verify_chain(ee, [pki["int"]], [pki["root"]], NOW)
    assert reason(ei) == ("no trusted CA for issuer CN=Other CA "
                          "(of C=CH, O=strongSwan, CN=moon.strongswan.org)")
    # the issuer sent along but not trusted
    with pytest.raises(CertificateError) as ei:
        verify_chain(ee, [other], [pki["root"]], NOW)
    assert reason(ei) == "self-signed certificate CN=Other CA is not a trusted CA"


def test_missing_intermediate(pki):
    with pytest.raises(CertificateError) as ei:
        verify_chain(pki["ee"], [], [pki["root"]], NOW)
    assert reason(ei).startswith("no trusted CA for issuer C=CH, O=strongSwan, CN=Intermediate CA")


def test_tampered_signature_same_names(pki, keys):
    forged = make_cert(EE, keys["ee"], INT, keys["other"], sans=EE_SANS)
    with pytest.raises(CertificateError) as ei:
        verify_chain(forged, [pki["int"]], [pki["root"]], NOW)
    assert reason(ei) == ("signature of C=CH, O=strongSwan, CN=moon.strongswan.org by "
                          "C=CH, O=strongSwan, CN=Intermediate CA is invalid")


def test_tampered_bytes(pki):
    der = bytearray(cert_payload_data(pki["ee_direct"]))
    der[-5] ^= 0x01   # inside the RSA signature value
    cert = parse_cert_payload(bytes(der))
    with pytest.raises(CertificateError) as ei:
        verify_chain(cert, [], [pki["root"]], NOW)
    assert reason(ei).startswith("signature of C=CH, O=strongSwan, CN=moon.strongswan.org by "
                                 "C=CH, O=strongSwan, CN=Root CA is invalid")


@pytest.mark.parametrize("ca", [False, None])
def test_intermediate_not_a_ca(pki, keys, ca):
    inter = make_cert(INT, keys["int"], ROOT, keys["root"], ca=ca)
    with pytest.raises(CertificateError) as ei:
        verify_chain(pki["ee"], [inter], [pki["root"]], NOW)
    assert reason(ei) == ("not a CA: C=CH, O=strongSwan, CN=Intermediate CA "
                          "(issuer of C=CH, O=strongSwan, CN=moon.strongswan.org)")


def test_issuer_without_keycertsign(pki, keys):
    inter = make_cert(INT, keys["int"], ROOT, keys["root"], ca=True,
                      key_usage=dict(digital_signature=True, crl_sign=True))
    with pytest.raises(CertificateError) as ei:
        verify_chain(pki["ee"], [inter], [pki["root"]], NOW)
    assert reason(ei) == ("C=CH, O=strongSwan, CN=Intermediate CA may not sign certificates "
                          "(keyUsage lacks keyCertSign)")


def test_pathlen_exceeded(pki, keys):
    root0 = make_cert(ROOT, keys["root"], ca=True, pathlen=0)
    verify_chain(pki["ee_direct"], [], [root0], NOW)   # pathlen 0: direct issuance is fine
    with pytest.raises(CertificateError) as ei:
        verify_chain(pki["ee"], [pki["int"]], [root0], NOW)
    assert reason(ei) == ("path length exceeded: C=CH, O=strongSwan, CN=Root CA allows 0 "
                          "intermediate CA(s) below it, the path has 1")
    # pki["int"] has pathlen 0: a sub-CA below it is one too many
    sub_name = dn(("CN", "Sub CA"))
    sub = make_cert(sub_name, keys["int2"], INT, keys["int"], ca=True)
    ee = make_cert(EE, keys["ee"], sub_name, keys["int2"])
    with pytest.raises(CertificateError) as ei:
        verify_chain(ee, [sub, pki["int"]], [pki["root"]], NOW)
    assert reason(ei).startswith("path length exceeded: C=CH, O=strongSwan, CN=Intermediate CA")


def test_max_depth(pki):
    verify_chain(pki["ee"], [pki["int"]], [pki["root"]], NOW, max_depth=2)
    with pytest.raises(CertificateError) as ei:
        verify_chain(pki["ee"], [pki["int"]], [pki["root"]], NOW, max_depth=1)
    assert reason(ei) == ("path length exceeded: more than 1 CA certificate(s) above "
                          "C=CH, O=strongSwan, CN=moon.strongswan.org")


def test_untrusted_root(pki, keys):
    other_root = make_cert(dn(("CN", "Somebody else")), keys["other"], ca=True)
    with pytest.raises(CertificateError) as ei:
        verify_chain(pki["ee"], [pki["int"], pki["root"]], [other_root], NOW)
    assert reason(ei) == "self-signed certificate C=CH, O=strongSwan, CN=Root CA is not a trusted CA"
    with pytest.raises(CertificateError) as ei:
        verify_chain(pki["ee"], [pki["int"]], [], NOW)
    assert reason(ei) == ("no trusted CA for issuer C=CH, O=strongSwan, CN=Root CA "
                          "(of C=CH, O=strongSwan, CN=Intermediate CA)")


def test_root_with_same_name_but_other_key(pki, keys):
    impostor = make_cert(ROOT, keys["other"], ca=True)
    with pytest.raises(CertificateError) as ei:
        verify_chain(pki["ee"], [pki["int"]], [impostor], NOW)
    assert reason(ei) == ("signature of C=CH, O=strongSwan, CN=Intermediate CA by "
                          "C=CH, O=strongSwan, CN=Root CA is invalid (signature algorithm does "
                          "not fit an ECDSA key)")


def sha1_resign(cert: x509.Certificate, rsa_key) -> x509.Certificate:
    """cryptography refuses to issue SHA-1 certificates: patch sha256WithRSAEncryption into
    sha1WithRSAEncryption (same length) and re-sign the TBS bytes by hand."""
    der = bytearray(cert.public_bytes(serialization.Encoding.DER))
    oid256 = bytes.fromhex("06092a864886f70d01010b")
    assert der.count(oid256) == 2
    der = bytes(der).replace(oid256, bytes.fromhex("06092a864886f70d010105"))
    cert = x509.load_der_x509_certificate(der)
    sig = rsa_key.sign(cert.tbs_certificate_bytes, padding.PKCS1v15(), hashes.SHA1())
    assert len(sig) == len(cert.signature)
    return x509.load_der_x509_certificate(der[:-len(sig)] + sig)


def test_sha1_signature_refused(pki, keys):
    ee = sha1_resign(pki["ee_direct"], keys["root"])
    assert isinstance(ee.signature_hash_algorithm, hashes.SHA1)
    with pytest.raises(CertificateError) as ei:
        verify_chain(ee, [], [pki["root"]], NOW)
    assert reason(ei).endswith("uses SHA1, which is not accepted")


def test_small_rsa_issuer_refused(keys):
    small = rsa.generate_private_key(65537, 1024)
    ca = make_cert(dn(("CN", "Small CA")), small, ca=True)
    ee = make_cert(EE, keys["ee"], dn(("CN", "Small CA")), small)
    with pytest.raises(CertificateError) as ei:
        verify_chain(ee, [], [ca], NOW)
    assert reason(ei) == "RSA key of CN=Small CA is too small (1024 bits, need 2048)"


def test_unknown_critical_extension(pki, keys):
    weird = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    ee = make_cert(EE, keys["ee"], ROOT, keys["root"], extra=[(weird, True)])
    with pytest.raises(CertificateError) as ei:
        verify_chain(ee, [], [pki["root"]], NOW)
    assert reason(ei) == ("certificate for C=CH, O=strongSwan, CN=moon.strongswan.org has an "
                          "unsupported critical extension 1.3.6.1.4.1.99999.1")
    ee_ok = make_cert(EE, keys["ee"], ROOT, keys["root"], extra=[(weird, False)])
    verify_chain(ee_ok, [], [pki["root"]], NOW)


def test_eku_not_required_and_ignored(pki, keys):
    eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                 x509.ObjectIdentifier("1.3.6.1.5.5.8.2.2")])
    ee = make_cert(EE, keys["ee"], ROOT, keys["root"], extra=[(eku, False)])
    verify_chain(ee, [], [pki["root"]], NOW)
    verify_chain(pki["ee_direct"], [], [pki["root"]], NOW)   # no EKU at all


def test_name_constraints(keys):
    ca_name = dn(("O", "Corp"), ("CN", "Constrained CA"))
    nc = x509.NameConstraints(
        permitted_subtrees=[x509.DNSName("example.org"),
                            x509.IPAddress(ipaddress.ip_network("192.0.2.0/24"))],
        excluded_subtrees=[x509.DNSName("bad.example.org")])
    ca = make_cert(ca_name, keys["int"], ca=True, extra=[(nc, True)])

    def ee(*sans):
        return make_cert(dn(("CN", "x")), keys["ee"], ca_name, keys["int"], sans=sans)

    verify_chain(ee(x509.DNSName("vpn.example.org"), x509.IPAddress(ipaddress.ip_address("192.0.2.7"))),
                 [], [ca], NOW)
    with pytest.raises(CertificateError) as ei:
        verify_chain(ee(x509.DNSName("vpn.example.com")), [], [ca], NOW)
    assert reason(ei) == "name constraints of O=Corp, CN=Constrained CA do not permit vpn.example.com in CN=x"
    with pytest.raises(CertificateError) as ei:
        verify_chain(ee(x509.DNSName("h.bad.example.org")), [], [ca], NOW)
    assert reason(ei) == "name constraints of O=Corp, CN=Constrained CA exclude h.bad.example.org in CN=x"
    with pytest.raises(CertificateError) as ei:
        verify_chain(ee(x509.IPAddress(ipaddress.ip_address("198.51.100.1"))), [], [ca], NOW)
    assert "do not permit 198.51.100.1" in reason(ei)
    # directoryName subtree: the subject must lie below O=Corp (parsed, case-insensitive compare)
    dn_ca = make_cert(ca_name, keys["int"], ca=True, extra=[(x509.NameConstraints(
        permitted_subtrees=[x509.DirectoryName(dn(("O", "corp")))], excluded_subtrees=None), True)])
    good = make_cert(dn(("O", "Corp"), ("CN", "gw")), keys["ee"], ca_name, keys["int"])
    bad = make_cert(dn(("O", "Other"), ("CN", "gw")), keys["ee"], ca_name, keys["int"])
    verify_chain(good, [], [dn_ca], NOW)
    with pytest.raises(CertificateError) as ei:
        verify_chain(bad, [], [dn_ca], NOW)
    assert reason(ei) == ("name constraints of O=Corp, CN=Constrained CA do not permit "
                          "O=Other, CN=gw in O=Other, CN=gw")


def test_garbage_der():
    for bad in (b"", b"\x00", b"\x30", b"\x30\x03\x02\x01\x01", os.urandom(300),
                b"-----BEGIN CERTIFICATE-----\n", bytes(1000)):
        with pytest.raises(CertificateError) as ei:
            parse_cert_payload(bad)
        assert reason(ei).startswith("malformed certificate in CERT payload")


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
def test_truncated_and_mutated_der_only_certificate_error(pki):
    """Every truncation and many single-byte corruptions of a real certificate either fail with
    CertificateError or yield a certificate that the other functions handle without crashing."""
    der = cert_payload_data(pki["ee"])
    for n in range(len(der)):
        with pytest.raises(CertificateError):
            parse_cert_payload(der[:n])
    with pytest.raises(CertificateError):
        parse_cert_payload(der + b"\x00")
    for i in range(len(der)):
        for flip in (0x01, 0x80):
            mutated = bytearray(der)
            mutated[i] ^= flip
            try:
                cert = parse_cert_payload(bytes(mutated))
            except CertificateError:
                continue
            with pytest.raises(CertificateError):
                verify_chain(cert, [pki["int"]], [pki["root"]], NOW)
            assert isinstance(identity_matches_cert(Identity.parse("moon.strongswan.org"), cert), bool)
            assert isinstance(describe(cert), str)


# --------------------------------------------------------------------------- CERT / CERTREQ


def test_cert_payload_roundtrip(pki):
    data = cert_payload_data(pki["ee"])
    assert data == pki["ee"].public_bytes(serialization.Encoding.DER)
    assert parse_cert_payload(data) == pki["ee"]


def test_certreq_data(pki, keys):
    ed_ca = make_cert(dn(("CN", "Ed CA")), keys["ed25519"], ca=True)
    cas = [pki["root"], pki["int"], ed_ca]
    data = certreq_data(cas)
    assert len(data) == 20 * len(cas)
    expect = b"".join(hashlib.sha1(c.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).digest()
        for c in cas)
    assert data == expect
    hashes_ = [data[i:i + 20] for i in range(0, len(data), 20)]
    assert all(ca_matches_certreq(c, hashes_) for c in cas)
    other = make_cert(dn(("CN", "Other")), keys["other"], ca=True)
    assert not ca_matches_certreq(other, hashes_)
    assert not ca_matches_certreq(pki["root"], [])
    assert certreq_data([]) == b""


# --------------------------------------------------------------------------- identities


def test_identity_dn(pki, keys):
    ee = pki["ee"]
    assert identity_matches_cert(Identity.parse("C=CH, O=strongSwan, CN=moon.strongswan.org"), ee)
    # Identity.parse writes UTF8String; a PrintableString subject still matches (parsed compare),
    # and so does different case / extra whitespace (RFC 5280 7.1)
    printable = make_cert(dn(("C", "CH"), ("O", "strongSwan"), ("CN", "moon"), printable=True),
                          keys["ee"], ROOT, keys["root"])
    assert identity_matches_cert(Identity.parse("C=CH, O=strongSwan, CN=moon"), printable)
    assert identity_matches_cert(Identity.parse("C=ch, O=strongswan,  CN=MOON"), printable)
    assert not identity_matches_cert(Identity.parse("C=CH, O=strongSwan, CN=sun"), printable)
    assert not identity_matches_cert(Identity.parse("CN=moon, O=strongSwan, C=CH"), printable)
    assert not identity_matches_cert(Identity.parse("C=CH, O=strongSwan"), printable)
    assert not identity_matches_cert(Identity(IdType.ID_DER_ASN1_DN, b"\x30\x05garbage"), ee)
    # a DN identity never matches the SANs' FQDN and vice versa
    assert not identity_matches_cert(Identity.parse("dn:CN=moon.strongswan.org"), ee)


def test_identity_fqdn(pki):
    ee = pki["ee"]
    assert identity_matches_cert(Identity.parse("moon.strongswan.org"), ee)
    assert identity_matches_cert(Identity.parse("@MOON.strongswan.ORG"), ee)
    assert not identity_matches_cert(Identity.parse("sun.strongswan.org"), ee)
    assert not identity_matches_cert(Identity.parse("strongswan.org"), ee)
    # the CN is not consulted, only subjectAltNames
    root_ee = make_cert(dn(("CN", "vpn.example.org")), ec.generate_private_key(ec.SECP256R1()))
    assert not identity_matches_cert(Identity.parse("vpn.example.org"), root_ee)
    assert not identity_matches_cert(Identity(IdType.ID_FQDN, b""), ee)


def test_identity_email(pki):
    ee = pki["ee"]
    assert identity_matches_cert(Identity.parse("moon@strongswan.org"), ee)
    assert identity_matches_cert(Identity.parse("email:Moon@StrongSwan.org"), ee)
    assert not identity_matches_cert(Identity.parse("sun@strongswan.org"), ee)
    # an FQDN identity does not match an rfc822Name and vice versa
    assert not identity_matches_cert(Identity(IdType.ID_FQDN, b"moon@strongswan.org"), ee)
    assert not identity_matches_cert(Identity(IdType.ID_RFC822_ADDR, b"moon.strongswan.org"), ee)


def test_identity_ip(pki):
    ee = pki["ee"]
    assert identity_matches_cert(Identity.parse("192.0.2.1"), ee)
    assert identity_matches_cert(Identity.parse("2001:db8::1"), ee)
    assert identity_matches_cert(Identity.parse("2001:0db8:0::0001"), ee)
    assert not identity_matches_cert(Identity.parse("192.0.2.2"), ee)
    assert not identity_matches_cert(Identity.parse("2001:db8::2"), ee)
    assert not identity_matches_cert(Identity(IdType.ID_IPV4_ADDR, b"\xc0\x00\x02"), ee)
    # IPv4-mapped IPv6 is not the IPv4 address
    assert not identity_matches_cert(Identity.parse("::ffff:192.0.2.1"), ee)


def test_identity_key_id(pki, keys):
    ee = pki["ee"]
    # RFC 5280 4.2.1.2 method (1): SHA-1 of the subjectPublicKey BIT STRING contents
    kid = x509.SubjectKeyIdentifier.from_public_key(keys["ee"].public_key()).digest
    assert identity_matches_cert(Identity(IdType.ID_KEY_ID, kid), ee)
    assert identity_matches_cert(Identity.parse("keyid:" + kid.hex()), ee)
    assert identity_matches_cert(Identity.parse("@#" + kid.hex()), pki["ee_direct"])  # same key
    spki = keys["ee"].public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    assert identity_matches_cert(Identity(IdType.ID_KEY_ID, hashlib.sha1(spki).digest()), ee)
    other = x509.SubjectKeyIdentifier.from_public_key(keys["other"].public_key()).digest
    assert not identity_matches_cert(Identity(IdType.ID_KEY_ID, other), ee)
    assert not identity_matches_cert(Identity(IdType.ID_KEY_ID, b""), ee)


def test_identity_other_types(pki):
    assert not identity_matches_cert(Identity(IdType.ID_NULL, b""), pki["ee"])
    assert not identity_matches_cert(Identity(IdType.ID_DER_ASN1_GN, b"\x30\x00"), pki["ee"])
    assert not identity_matches_cert(Identity(IdType.ID_FQDN, b"\xff\xfe"), pki["ee"])


def test_default_identity_and_describe(pki, keys):
    ident = default_identity(pki["ee"])
    assert ident.id_type == IdType.ID_DER_ASN1_DN
    assert ident.data == pki["ee"].subject.public_bytes()
    assert str(ident) == "C=CH, O=strongSwan, CN=moon.strongswan.org"
    assert identity_matches_cert(ident, pki["ee"])
    assert describe(pki["ee"]) == "C=CH, O=strongSwan, CN=moon.strongswan.org"
    assert describe(pki["root"]) == "C=CH, O=strongSwan, CN=Root CA"
    empty = make_cert(x509.Name([]), keys["ee"], ROOT, keys["root"],
                      sans=[x509.DNSName("nosubject.example.org")])
    assert describe(empty) == "nosubject.example.org"
    assert default_identity(empty) == Identity.parse("nosubject.example.org")


# --------------------------------------------------------------------------- loaders


def _pem(c: x509.Certificate) -> bytes:
    return c.public_bytes(serialization.Encoding.PEM)


def test_load_certificates(tmp_path, pki, keys):
    bundle = tmp_path / "bundle.pem"
    key_pem = keys["ee"].private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())
    bundle.write_bytes(b"junk before\n" + _pem(pki["ee"]) + key_pem + _pem(pki["int"]) + _pem(pki["root"]))
    assert load_certificates(str(bundle)) == [pki["ee"], pki["int"], pki["root"]]
    der = tmp_path / "one.der"
    der.write_bytes(cert_payload_data(pki["root"]))
    assert load_certificates(str(der)) == [pki["root"]]


@pytest.mark.parametrize("content, expect", [
    (None, "cannot read certificate file"),
    (b"", "is empty"),
    (b"hello world\n", "is neither a PEM nor a DER certificate"),
    (b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
     "contains no valid PEM certificate"),
    (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
     "contains no valid PEM certificate"),
])
def test_load_certificates_bad(tmp_path, content, expect):
    p = tmp_path / "c.pem"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(CertificateError) as ei:
        load_certificates(str(p))
    assert expect in reason(ei)
    assert str(p) in reason(ei)


@pytest.mark.parametrize("name", ["root", "ee", "ed25519", "ed448"])
@pytest.mark.parametrize("fmt", ["pem-pkcs8", "pem-traditional", "der"])
def test_load_private_key(tmp_path, keys, name, fmt):
    key = keys[name]
    if fmt == "pem-traditional" and name.startswith("ed"):
        fmt = "pem-pkcs8"    # EdDSA keys only have PKCS#8
    enc, pf = {"pem-pkcs8": (serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8),
               "pem-traditional": (serialization.Encoding.PEM,
                                   serialization.PrivateFormat.TraditionalOpenSSL),
               "der": (serialization.Encoding.DER, serialization.PrivateFormat.PKCS8)}[fmt]
    p = tmp_path / "k"
    p.write_bytes(key.private_bytes(enc, pf, serialization.NoEncryption()))
    loaded = load_private_key(str(p))
    assert loaded.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo) == \
        key.public_key().public_bytes(serialization.Encoding.DER,
                                      serialization.PublicFormat.SubjectPublicKeyInfo)


def test_load_private_key_encrypted_and_bad(tmp_path, keys):
    p = tmp_path / "enc.pem"
    p.write_bytes(keys["ee"].private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.BestAvailableEncryption(b"s3cret")))
    assert isinstance(load_private_key(str(p), b"s3cret"), ec.EllipticCurvePrivateKey)
    with pytest.raises(CertificateError) as ei:
        load_private_key(str(p))
    assert reason(ei) == f"private key {p} is encrypted and no password was given"
    with pytest.raises(CertificateError) as ei:
        load_private_key(str(p), b"wrong")
    assert "or the password is wrong" in reason(ei)
    bad = tmp_path / "bad.pem"
    bad.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(CertificateError) as ei:
        load_private_key(str(bad))
    assert reason(ei) == f"{bad} is not a valid PEM or DER private key"
    garbage = tmp_path / "garbage"
    garbage.write_bytes(os.urandom(64))
    with pytest.raises(CertificateError):
        load_private_key(str(garbage))
    with pytest.raises(CertificateError) as ei:
        load_private_key(str(tmp_path / "missing.pem"))
    assert reason(ei).startswith("cannot read private key file")
    xk = tmp_path / "x25519.pem"
    xk.write_bytes(x25519.X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(CertificateError) as ei:
        load_private_key(str(xk))
    assert "unsupported type" in reason(ei)


# --------------------------------------------------------------------------- strongSwan pki


def pki_keyid(run, cert_path: str, what: str) -> bytes:
    """Parse `pki --keyid` output: a "... (SHA-1 of <what>):" line, the hex on the next line."""
    lines = run("--keyid", "--in", cert_path, "--type", "x509").decode().splitlines()
    for i, line in enumerate(lines):
        if f"SHA-1 of {what})" in line:
            return bytes.fromhex(lines[i + 1].strip().replace(":", ""))
    raise AssertionError(f"no SHA-1 of {what} in pki --keyid output: {lines}")


def test_strongswan_pki_chain(tmp_path):
    pki_bin = shutil.which("pki") or ("/usr/bin/pki" if os.path.exists("/usr/bin/pki") else None)
    if pki_bin is None:
        pytest.fail("strongSwan's `pki` tool is not installed (apt-get install strongswan-pki); "
                    "this interoperability test needs it")
    conf = tmp_path / "strongswan.conf"
    conf.write_text("pki {\n  load = pem pkcs1 pkcs8 x509 pubkey openssl random nonce\n}\n")
    env = dict(os.environ, STRONGSWAN_CONF=str(conf))

    def run(*args: str) -> bytes:
        res = subprocess.run([pki_bin, *args], capture_output=True, env=env, timeout=30)
        assert res.returncode == 0 and res.stdout, \
            f"pki {' '.join(args)} failed: {res.stderr.decode(errors='replace')}"
        return res.stdout

    def write(name: str, data: bytes) -> str:
        (tmp_path / name).write_bytes(data)
        return str(tmp_path / name)

    ca_key = write("ca.key", run("--gen", "--type", "ecdsa", "--size", "256", "--outform", "pem"))
    ca = write("ca.pem", run("--self", "--ca", "--lifetime", "30", "--in", ca_key, "--type", "priv",
                             "--dn", "C=CH, O=strongSwan, CN=strongSwan Root CA", "--outform", "pem"))
    ee_key = write("ee.key", run("--gen", "--type", "ecdsa", "--size", "256", "--outform", "pem"))
    ee = write("ee.pem", run("--issue", "--lifetime", "30", "--cacert", ca, "--cakey", ca_key,
                             "--in", ee_key, "--type", "priv",
                             "--dn", "C=CH, O=strongSwan, CN=host.example.org",
                             "--san", "host.example.org", "--flag", "serverAuth",
                             "--flag", "ikeIntermediate", "--outform", "pem"))
    (ca_cert,) = load_certificates(ca)
    (ee_cert,) = load_certificates(ee)
    key = load_private_key(ee_key)
    assert key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo) == \
        ee_cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    # pki backdates nothing and issues from "now": validate an hour after issuance
    now = ee_cert.not_valid_before_utc + datetime.timedelta(hours=1)
    assert verify_chain(ee_cert, [], [ca_cert], now) == [ee_cert, ca_cert]
    assert identity_matches_cert(Identity.parse("host.example.org"), ee_cert)
    assert identity_matches_cert(Identity.parse("C=CH, O=strongSwan, CN=host.example.org"), ee_cert)
    assert not identity_matches_cert(Identity.parse("other.example.org"), ee_cert)
    # pki's own key identifiers: "SHA-1 of subjectPublicKey" is what ID_KEY_ID compares, "SHA-1
    # of subjectPublicKeyInfo" is the CERTREQ hash (RFC 7296 3.7)
    assert identity_matches_cert(Identity(IdType.ID_KEY_ID, pki_keyid(run, ee, "subjectPublicKey")),
                                 ee_cert)
    assert certreq_data([ca_cert]) == pki_keyid(run, ca, "subjectPublicKeyInfo")
    with pytest.raises(CertificateError):
        verify_chain(ee_cert, [], [ca_cert], ee_cert.not_valid_after_utc + datetime.timedelta(days=1))
