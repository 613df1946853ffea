"""EapClient against EapServer: EAP-MSCHAPv2, EAP-MD5 and EAP-TLS conversations, Nak,
identifiers, malformed input, bounds."""
from __future__ import annotations

import datetime
import random
import struct

import pytest

from ikev2.constants import EapCode, EapType
from ikev2.eap import EapClient, EapError, EapServer, EapStep, TlsConfig, UserDB, nt_hash, tls_available
from ikev2.eap import mschapv2 as M
from ikev2.eap.tls import FLAG_L, FLAG_M, FLAG_S


class Rand:
    """Deterministic random_bytes."""

    def __init__(self, seed: int = 0):
        self.r = random.Random(seed)

    def __call__(self, n: int) -> bytes:
        return self.r.randbytes(n)


USERS = UserDB.from_toml(f"""
[[user]]
name = "alice@example.org"
nt_hash = "{nt_hash('alice-pw')}"

[[user]]
name = "bob"
password = "bob-pw"
methods = ["md5", "mschapv2"]

[[user]]
name = "carol@example.org"
methods = ["tls"]

[[user]]
name = "dave"
password = "dave-pw"
methods = ["md5"]
""")


def converse(srv: EapServer, cli: EapClient, first: bytes | None = None, limit: int = 200):
    """Run to the end; returns (server's last step, client's last step, list of messages)."""
    msg = srv.start() if first is None else first
    log = [msg]
    for _ in range(limit):
        c = cli.process(msg)
        if c.send is None:
            return None, c, log
        log.append(c.send)
        s = srv.process(c.send)
        log.append(s.send)
        if s.done:
            return s, cli.process(s.send), log
        msg = s.send
    raise AssertionError("conversation did not end")


def client(identity="alice@example.org", password="alice-pw", allowed=frozenset({"mschapv2"}), seed=1, **kw):
    return EapClient(identity, password=password, allowed=set(allowed), random_bytes=Rand(seed), **kw)


# --------------------------------------------------------------------------- MS-CHAPv2

def test_mschapv2_success():
    s, c, log = converse(EapServer("mschapv2", USERS, Rand()), client())
    assert s.success and c.success and s.done and c.done
    assert s.identity == c.identity == "alice@example.org" and s.method == c.method == "mschapv2"
    assert s.msk == c.msk and len(s.msk) == 64 and s.msk[32:] == bytes(32)
    assert log[-1][0] == EapCode.SUCCESS and len(log) == 7  # Id, Challenge, Success-Req (+ responses), Success
    assert c.send is None


def test_mschapv2_deterministic():
    a = converse(EapServer("mschapv2", USERS, Rand(5)), client(seed=6))[2]
    b = converse(EapServer("mschapv2", USERS, Rand(5)), client(seed=6))[2]
    assert a == b


def test_mschapv2_wrong_password():
    s, c, log = converse(EapServer("mschapv2", USERS, Rand()), client(password="nope"))
    assert s.done and not s.success and s.msk is None
    assert s.reason == "wrong password for 'alice@example.org' (MS-CHAPv2)"
    assert not c.success and "E=691" in c.reason and c.msk is None
    fail_req = log[-3]
    assert fail_req[5] == M.OP_FAILURE and b"R=0" in fail_req and b"V=3" in fail_req
    assert log[-2] == bytes([2, fail_req[1], 0, 6, 26, 4])  # Failure-Response
    assert log[-1][0] == EapCode.FAILURE


def test_mschapv2_unknown_user_looks_like_wrong_password():
    s, c, log = converse(EapServer("mschapv2", USERS, Rand()), client(identity="mallory"))
    assert not s.success and s.reason == "unknown user 'mallory'"
    assert log[-3][5] == M.OP_FAILURE  # same Failure-Request as for a wrong password


def test_mschapv2_cleartext_password_user_and_domain_prefix():
    s, c, _ = converse(EapServer("mschapv2", USERS, Rand()), client(identity="bob", password="bob-pw"))
    assert s.success and c.success and s.msk == c.msk
    db = UserDB.from_toml(f'[[user]]\nname = "CORP\\\\erin"\nnt_hash = "{nt_hash("pw")}"\n')
    s, c, _ = converse(EapServer("mschapv2", db, Rand()), client(identity="CORP\\erin", password="pw"))
    assert s.success and c.success


def test_mschapv2_name_must_match_identity():
    srv = EapServer("mschapv2", USERS, Rand())
    cli = client()
    c = cli.process(srv.start())
    s = srv.process(c.send)
    c = cli.process(s.send)
    r = M.parse_response(c.send[5:])
    forged = M.build_response(r.ms_id, r.peer_challenge, r.nt_response, b"bob")
    s = srv.process(bytes([2, c.send[1]]) + struct.pack("!H", 5 + len(forged)) + b"\x1a" + forged)
    assert s.send[5] == M.OP_FAILURE
    assert "does not match the EAP identity" in srv.process(bytes([2, s.send[1], 0, 6, 26, 4])).reason


def test_client_rejects_bad_authenticator_response():
    srv = EapServer("mschapv2", USERS, Rand())
    cli = client()
    c = cli.process(srv.start())
    c = cli.process(srv.process(c.send).send)
    s = srv.process(c.send)
    good = M.parse_success_request(s.send[5:])
    bad = M.build_success_request(good.ms_id, "S=" + "A" * 40, "hi")
    step = cli.process(bytes([1, s.send[1]]) + struct.pack("!H", 5 + len(bad)) + b"\x1a" + bad)
    assert step.done and not step.success and step.send is None
    assert "authenticator response is wrong" in step.reason


def test_client_rejects_premature_success():
    srv = EapServer("mschapv2", USERS, Rand())
    cli = client()
    c = cli.process(srv.start())
    c = cli.process(srv.process(c.send).send)  # Response sent, no Success-Request yet
    step = cli.process(bytes([3, c.send[1], 0, 4]))
    assert step.done and not step.success and step.msk is None and "premature EAP-Success" in step.reason
    cli2 = client()
    step = cli2.process(bytes([3, 0, 0, 4]))  # Success before anything at all
    assert step.done and not step.success


def test_server_failure_response_after_success_request():
    srv = EapServer("mschapv2", USERS, Rand())
    cli = client()
    c = cli.process(srv.start())
    c = cli.process(srv.process(c.send).send)
    s = srv.process(c.send)
    s = srv.process(bytes([2, s.send[1], 0, 6, 26, 4]))  # peer answers the Success-Request with Failure
    assert s.done and not s.success and "rejected our MS-CHAPv2 authenticator response" in s.reason


# --------------------------------------------------------------------------- MD5

def test_md5_success_and_failure():
    s, c, log = converse(EapServer("md5", USERS, Rand()),
                         client(identity="dave", password="dave-pw", allowed={"md5"}))
    assert s.success and c.success and s.msk is None and c.msk is None and s.method == "md5"
    assert len(log) == 5
    s, c, _ = converse(EapServer("md5", USERS, Rand()), client(identity="dave", password="x", allowed={"md5"}))
    assert not s.success and not c.success and s.reason == "wrong password for 'dave' (EAP-MD5)"
    s, c, _ = converse(EapServer("md5", USERS, Rand()), client(identity="zed", password="x", allowed={"md5"}))
    assert s.reason == "unknown user 'zed'"


# --------------------------------------------------------------------------- Nak, method choice

def test_nak_switches_to_an_allowed_method():
    srv = EapServer("md5, mschapv2", USERS, Rand())
    cli = client(identity="bob", password="bob-pw", allowed={"mschapv2"})
    s, c, log = converse(srv, cli)
    assert s.success and c.success and s.method == "mschapv2"
    assert log[2][4] == EapType.MD5_CHALLENGE  # md5 proposed first (bob may use it)
    assert log[3][4] == EapType.NAK and log[3][5:] == bytes([26])


def test_nak_without_common_method_fails():
    cli = client(identity="dave", password="dave-pw", allowed={"mschapv2"})
    s, c, log = converse(EapServer("md5", USERS, Rand()), cli)
    assert not s.success and "peer refused EAP-md5" in s.reason and "mschapv2" in s.reason
    assert not c.success


def test_nak_only_for_methods_the_user_may_use():
    # dave may only use md5: his Nak asking for mschapv2 does not get it
    cli = client(identity="dave", password="dave-pw", allowed={"mschapv2"})
    s, _c, _ = converse(EapServer("md5,mschapv2", USERS, Rand()), cli)
    assert not s.success and "refused" in s.reason


def test_server_proposes_the_users_method_first():
    s, c, log = converse(EapServer("md5,mschapv2", USERS, Rand()), client())  # alice: mschapv2 only
    assert s.success and log[2][4] == 26 and all(m[4] != EapType.NAK for m in log[1::2] if len(m) > 4)


def test_user_without_any_allowed_method():
    s, c, _ = converse(EapServer("md5", USERS, Rand()), client(allowed={"md5"}))
    assert not s.success and "may use none of the EAP methods md5" in s.reason


def test_nak_in_the_middle_of_a_method_fails():
    srv = EapServer("mschapv2", USERS, Rand())
    cli = client()
    c = cli.process(srv.start())
    s = srv.process(c.send)
    c = cli.process(s.send)
    s = srv.process(c.send)  # Success-Request
    step = srv.process(bytes([2, s.send[1], 0, 6, 3, 4]))
    assert step.done and not step.success and "Nak in the middle" in step.reason


def test_identity_known_skips_identity_request():
    srv = EapServer("mschapv2", USERS, Rand(), identity_request=False)
    first = srv.start(identity="alice@example.org")
    assert first[4] == 26 and first[5] == M.OP_CHALLENGE
    s, c, _ = converse(srv, client(), first=first)
    assert s.success and c.success
    srv = EapServer("mschapv2", USERS, Rand(), identity_request=False)
    assert srv.start()[4] == EapType.IDENTITY  # no identity given: ask for it


# --------------------------------------------------------------------------- identifiers, retransmission

def test_server_discards_wrong_identifier():
    srv = EapServer("mschapv2", USERS, Rand())
    req = srv.start()
    bad = bytes([2, (req[1] + 1) & 0xFF, 0, 6, 1, 0x61])
    step = srv.process(bad)
    assert step.send is None and not step.done and "discarded" in step.reason and "RFC 3748 4.1" in step.reason
    step = srv.process(bytes([2, req[1], 0, 6, 1, 0x61]))
    assert step.identity == "a" and step.send[4] == 26 and step.send[1] == (req[1] + 1) & 0xFF


def test_identifiers_increment_and_wrap():
    srv = EapServer("mschapv2", USERS, lambda n: b"\xff" if n == 1 else bytes(n))
    req = srv.start()
    assert req[1] == 0xFF
    step = srv.process(bytes([2, 0xFF, 0, 22]) + b"\x01alice@example.org")
    assert step.send[1] == 0


def test_client_resends_response_to_duplicate_request():
    srv = EapServer("mschapv2", USERS, Rand())
    cli = client()
    req = srv.start()
    c1 = cli.process(req)
    c2 = cli.process(req)
    assert c1.send == c2.send and "duplicate" in c2.reason
    challenge = srv.process(c1.send).send
    r1 = cli.process(challenge).send
    assert cli.process(challenge).send == r1  # same peer challenge: not reprocessed


def test_client_discards_success_with_wrong_identifier():
    srv = EapServer("mschapv2", USERS, Rand())
    cli = client()
    c = cli.process(srv.start())
    c = cli.process(srv.process(c.send).send)
    c = cli.process(srv.process(c.send).send)
    s = srv.process(c.send)
    step = cli.process(bytes([3, (s.send[1] + 7) & 0xFF, 0, 4]))
    assert not step.done and "discarded" in step.reason
    assert cli.process(s.send).success


def test_max_rounds():
    srv = EapServer("mschapv2", USERS, Rand(), max_rounds=5)
    req = srv.start()
    for _ in range(5):
        assert not srv.process(bytes([2, (req[1] + 9) & 0xFF, 0, 6, 1, 0x61])).done
    step = srv.process(bytes([2, req[1], 0, 6, 1, 0x61]))
    assert step.done and not step.success and "too many EAP rounds" in step.reason
    assert step.send == bytes([4, req[1], 0, 4])


# --------------------------------------------------------------------------- malformed input

@pytest.mark.parametrize("bad", [
    b"", b"\x02\x00", b"\x02\x00\x00\x03", b"\x02\x00\x00\x09\x01",  # short, Length too big
    b"\x02\x00\x00\x04",  # Response without Type
    b"\x09\x00\x00\x04",  # unknown Code
    b"\x01\x00\x00\x05\x01",  # Request to the authenticator
    b"\x03\x00\x00\x04",  # Success to the authenticator
    b"\x03\x00\x00\x05\x00",  # Success with a body
])
def test_server_rejects_malformed(bad):
    srv = EapServer("mschapv2", USERS, lambda n: bytes(n))
    srv.start()
    with pytest.raises(EapError):
        srv.process(bad)
    # the conversation goes on
    assert srv.process(b"\x02\x00\x00\x16\x01alice@example.org").send[4] == 26


def test_server_rejects_wrong_type_and_bad_method_data():
    srv = EapServer("mschapv2", USERS, lambda n: bytes(n))
    srv.start()
    ch = srv.process(b"\x02\x00\x00\x06\x01a").send
    with pytest.raises(EapError, match="expected an EAP-mschapv2 Response"):
        srv.process(bytes([2, ch[1], 0, 6, 4, 0]))
    with pytest.raises(EapError):
        srv.process(bytes([2, ch[1], 0, 7, 26, 2, 0]))  # truncated MS-CHAPv2 Response
    with pytest.raises(EapError):
        srv.process(bytes([2, ch[1], 0, 5, 26]))  # no OpCode
    s2 = EapServer("mschapv2", USERS, lambda n: bytes(n))
    s2.start()
    with pytest.raises(EapError, match="Identity Response"):
        s2.process(b"\x02\x00\x00\x06\x03\x1a")  # Nak to the Identity request
    with pytest.raises(EapError, match="not UTF-8"):
        s2.process(b"\x02\x00\x00\x06\x01\xff")


def test_client_rejects_malformed_and_unexpected():
    cli = client()
    for bad in (b"", b"\x01\x00\x00\x09", b"\x02\x00\x00\x05\x01", b"\x01\x00\x00\x05\x03"):
        with pytest.raises(EapError):
            cli.process(bad)
    cli.process(b"\x01\x05\x00\x05\x01")
    with pytest.raises(EapError):
        cli.process(bytes([1, 6, 0, 6, 26, 1]))  # truncated challenge
    ch = M.build_challenge(7, bytes(16), b"x")
    cli.process(bytes([1, 7, 0, 5 + len(ch), 26]) + ch)
    with pytest.raises(EapError, match="switched"):
        cli.process(bytes([1, 8, 0, 22, 4, 16]) + bytes(16))  # server switches to MD5 mid-method


def test_client_naks_unknown_method_and_answers_notification():
    cli = client(allowed={"mschapv2", "md5"})
    step = cli.process(bytes([1, 3, 0, 6, 6, 0]))  # GTC
    assert step.send == bytes([2, 3, 0, 7, 3, 26, 4]) and "Nak" in step.reason
    step = cli.process(b"\x01\x04\x00\x0a\x02hello")
    assert step.send == b"\x02\x04\x00\x05\x02" and step.reason == "notification: hello"
    assert cli.notifications == ["hello"]


def test_done_conversations_refuse_more_input():
    s, c, _ = converse(EapServer("mschapv2", USERS, Rand()), client())
    srv = EapServer("mschapv2", USERS, Rand())
    with pytest.raises(EapError, match="before start"):
        srv.process(b"\x02\x00\x00\x06\x01a")
    srv.start()
    with pytest.raises(EapError, match="twice"):
        srv.start()


def test_never_raises_anything_but_eap_error():
    """Mutated messages at every point of the conversations give EapError or a normal step."""
    rnd = random.Random(7)
    for method, ident, pw, allowed in (("mschapv2", "alice@example.org", "alice-pw", {"mschapv2"}),
                                       ("md5", "dave", "dave-pw", {"md5"})):
        _s, _c, log = converse(EapServer(method, USERS, Rand(3)), client(ident, pw, allowed, seed=4))
        for i in range(len(log)):
            for _ in range(30):
                srv = EapServer(method, USERS, Rand(3))
                cli = client(ident, pw, allowed, seed=4)
                assert srv.start() == log[0]
                for k in range(i):  # even: server -> client, odd: client -> server
                    out = (cli if k % 2 == 0 else srv).process(log[k])
                    assert out.send == log[k + 1]
                m = bytearray(log[i])
                op = rnd.randrange(3)
                if op == 0 and m:
                    m[rnd.randrange(len(m))] ^= 1 << rnd.randrange(8)
                elif op == 1:
                    m = m[:rnd.randrange(len(m) + 1)]
                else:
                    m += rnd.randbytes(rnd.randrange(1, 8))
                try:
                    step = (cli if i % 2 == 0 else srv).process(bytes(m))
                except EapError:
                    continue
                assert isinstance(step, EapStep)


# --------------------------------------------------------------------------- configuration errors

def test_configuration_errors():
    with pytest.raises(EapError, match="unknown EAP method"):
        EapServer("peap", USERS, Rand())
    with pytest.raises(EapError, match="users database"):
        EapServer("mschapv2", None, Rand())
    with pytest.raises(EapError, match="tls_context"):
        EapServer("tls", None, Rand())
    with pytest.raises(EapError, match="no usable EAP method"):
        EapClient("a", allowed={"mschapv2"}, random_bytes=Rand())
    with pytest.raises(EapError, match="no usable EAP method"):
        EapClient("a", password="x", allowed={"tls"}, random_bytes=Rand())
    with pytest.raises(EapError):
        EapClient("", password="x", allowed={"mschapv2"}, random_bytes=Rand())


# --------------------------------------------------------------------------- EAP-TLS

# pyOpenSSL is a declared dependency: its absence is a failure, not a reason to skip.
pytestmark_tls = pytest.mark.usefixtures("tls_required")


@pytest.fixture
def tls_required():
    assert tls_available(), "EAP-TLS needs pyOpenSSL (a dependency in pyproject.toml): reinstall the project"


@pytest.fixture(scope="module")
def pki():
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(cn, key, issuer, issuer_key, ca=False, san=None):
        b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(issuer).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    keys = {k: ec.generate_private_key(ec.SECP256R1()) for k in ("ca", "ca2", "gw", "carol", "other")}
    ca = cert("Test CA", keys["ca"], name("Test CA"), keys["ca"], ca=True)
    ca2 = cert("Other CA", keys["ca2"], name("Other CA"), keys["ca2"], ca=True)
    return {
        "ca": ca, "ca2": ca2, "keys": keys,
        "gw": cert("gw.example.org", keys["gw"], ca.subject, keys["ca"], san=[x509.DNSName("gw.example.org")]),
        "carol": cert("Carol", keys["carol"], ca.subject, keys["ca"], san=[x509.RFC822Name("carol@example.org")]),
        "other": cert("other", keys["other"], ca2.subject, keys["ca2"], san=[x509.RFC822Name("carol@example.org")]),
    }


def tls_pair(pki, version="1.3", fragment_size=1000, client_cert="carol", server_ca="ca", client_ca="ca",
             server_name="gw.example.org", users=USERS, identity="carol@example.org"):
    k = pki["keys"]
    scfg = TlsConfig(certificate=pki["gw"], private_key=k["gw"], ca=pki[server_ca], max_version=version,
                     fragment_size=fragment_size)
    ccfg = TlsConfig(certificate=pki[client_cert], private_key=k[client_cert], ca=pki[client_ca],
                     max_version=version, server_name=server_name, fragment_size=fragment_size)
    srv = EapServer("tls", users, Rand(), tls_context=scfg)
    cli = EapClient(identity, tls_context=ccfg, allowed={"tls"}, random_bytes=Rand())
    return srv, cli


@pytestmark_tls
@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_tls_success(pki, version):
    srv, cli = tls_pair(pki, version)
    s, c, log = converse(srv, cli)
    assert s.success and c.success and s.method == c.method == "tls"
    assert s.msk == c.msk and len(s.msk) == 64
    assert log[2][4:] == bytes([13, FLAG_S])  # Start
    assert srv.peer_certificate is not None and srv.peer_certificate == pki["carol"]
    assert f"TLSv{version}" in s.reason


@pytestmark_tls
def test_tls_msk_is_the_rfc_exporter(pki):
    """The MSK is the RFC 5216 (1.2) / RFC 9190 (1.3) exporter output, not e.g. the other label."""
    from ikev2.eap import tls as T
    for version in ("1.2", "1.3"):
        srv, cli = tls_pair(pki, version)
        s, c, _ = converse(srv, cli)
        conn = srv._method.engine.conn
        if version == "1.3":
            assert s.msk == conn.export_keying_material(T.EAP_TLS13_LABEL, 128, b"\x0d")[:64]
        else:
            assert s.msk == conn.export_keying_material(b"client EAP encryption", 64)
        assert s.msk != conn.export_keying_material(b"client EAP encryption" + b"x", 64)


@pytestmark_tls
@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_tls_fragmentation(pki, version):
    srv, cli = tls_pair(pki, version, fragment_size=200)
    s, c, log = converse(srv, cli)
    assert s.success and c.success and s.msk == c.msk
    flags = [m[5] for m in log if m and len(m) > 5 and m[4] == 13]
    assert any(f & FLAG_M for f in flags) and any(f == FLAG_L | FLAG_M for f in flags)
    for m in log:
        if m and len(m) > 5 and m[4] == 13 and m[5] & FLAG_L:
            assert len(m) <= 5 + 1 + 4 + 200
    acks = [m for m in log if m and len(m) == 6 and m[4] == 13 and m[5] == 0]
    assert len(acks) >= 3


@pytestmark_tls
def test_tls_untrusted_server(pki):
    srv, cli = tls_pair(pki, client_ca="ca2")
    s, c, _ = converse(srv, cli)
    assert not s.success and not c.success and s.msk is None and c.msk is None
    assert "TLS" in c.reason and "rejected" in c.reason


@pytestmark_tls
def test_tls_untrusted_client(pki):
    srv, cli = tls_pair(pki, client_cert="other", version="1.2")
    s, c, _ = converse(srv, cli)
    assert not s.success and not c.success and "TLS" in s.reason


@pytestmark_tls
@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_tls_client_certificate_must_name_the_identity(pki, version):
    srv, cli = tls_pair(pki, version, identity="alice@example.org", users=None)
    s, c, _ = converse(srv, cli)
    assert not s.success and not c.success
    assert "does not name 'alice@example.org'" in s.reason


@pytestmark_tls
def test_tls_server_name_checked_by_client(pki):
    srv, cli = tls_pair(pki, server_name="vpn.example.com")
    s, c, _ = converse(srv, cli)
    assert not c.success and "does not name 'vpn.example.com'" in c.reason


@pytestmark_tls
def test_tls_user_not_in_database(pki):
    db = UserDB.from_toml(f'[[user]]\nname = "carol@example.org"\nnt_hash = "{nt_hash("x")}"\n')
    srv, cli = tls_pair(pki, users=db)  # carol exists but may not use tls
    s, c, _ = converse(srv, cli)
    assert not s.success and "may use none of the EAP methods tls" in s.reason


@pytestmark_tls
def test_tls_and_password_methods_with_nak(pki):
    k = pki["keys"]
    scfg = TlsConfig(certificate=pki["gw"], private_key=k["gw"], ca=pki["ca"])
    srv = EapServer("tls,mschapv2", USERS, Rand(), tls_context=scfg)
    s, c, log = converse(srv, client(identity="bob", password="bob-pw", allowed={"mschapv2"}))
    # bob may not use tls: mschapv2 is proposed directly
    assert s.success and s.method == "mschapv2" and log[2][4] == 26
    db = UserDB.from_toml(f'[[user]]\nname = "erin"\nnt_hash = "{nt_hash("pw")}"\nmethods = ["tls", "mschapv2"]\n')
    srv = EapServer("tls,mschapv2", db, Rand(), tls_context=scfg)
    s, c, log = converse(srv, client(identity="erin", password="pw", allowed={"mschapv2"}))
    assert s.success and log[2][4] == 13 and log[3][4] == EapType.NAK


@pytestmark_tls
def test_tls_premature_success_rejected(pki):
    srv, cli = tls_pair(pki, "1.3")
    c = cli.process(srv.start())
    c = cli.process(srv.process(c.send).send)  # ClientHello sent
    step = cli.process(bytes([3, c.send[1], 0, 4]))
    assert step.done and not step.success and "premature" in step.reason


@pytestmark_tls
def test_tls_malformed(pki):
    srv, cli = tls_pair(pki)
    req = srv.start()
    ident = cli.process(req).send
    start = srv.process(ident).send
    hello = cli.process(start).send
    for bad in (bytes([2, hello[1], 0, 5, 13]),                     # no flags
                bytes([2, hello[1], 0, 6, 13, 0x21]),               # Start from the peer / reserved bits
                bytes([2, hello[1], 0, 8, 13, FLAG_L, 0, 0]),       # L without the full length
                bytes([2, hello[1], 0, 11, 13, FLAG_L, 0, 0, 0, 9, 1]),  # announced 9, got 1, no M
                bytes([2, hello[1], 0, 10, 13, FLAG_L, 0xFF, 0, 0, 0])):  # huge length
        with pytest.raises(EapError):
            srv.process(bad)
    assert not srv.process(hello).done  # the real ClientHello still works
    with pytest.raises(EapError):
        cli.process(bytes([1, 9, 0, 6, 13, FLAG_S]))  # second Start
    with pytest.raises(EapError, match="before the Start"):
        tls_pair(pki)[1].process(bytes([1, 1, 0, 7, 13, 0, 1]))


@pytestmark_tls
def test_tls_config_errors(pki):
    k = pki["keys"]
    with pytest.raises(EapError, match="trust anchors"):
        TlsConfig(certificate=pki["gw"], private_key=k["gw"])
    with pytest.raises(EapError, match="both a certificate"):
        TlsConfig(certificate=pki["gw"], ca=pki["ca"])
    with pytest.raises(EapError, match="version"):
        TlsConfig(ca=pki["ca"], max_version="1.1")
    with pytest.raises(EapError, match="fragment_size"):
        TlsConfig(ca=pki["ca"], fragment_size=10)
    with pytest.raises(EapError, match="cannot read"):
        TlsConfig(certificate=b"-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----\n",
                  private_key=k["gw"], ca=pki["ca"])
    from cryptography.hazmat.primitives import serialization
    pem = (pki["gw"].public_bytes(serialization.Encoding.PEM),
           k["gw"].private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()),
           pki["ca"].public_bytes(serialization.Encoding.PEM))
    cfg = TlsConfig(certificate=pem[0], private_key=pem[1], ca=pem[2])
    assert cfg.context(True) is cfg.context(True)
    with pytest.raises(EapError, match="needs a certificate"):
        TlsConfig(ca=pki["ca"]).context(True)


@pytestmark_tls
@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_tls_mutations_raise_only_eap_error(pki, version):
    rnd = random.Random(11)
    n = len(converse(*tls_pair(pki, version, fragment_size=300))[2])
    for i in range(n):
        for _ in range(6):
            srv, cli = tls_pair(pki, version, fragment_size=300)
            msg, ended = srv.start(), False
            for k in range(i):
                out = (cli if k % 2 == 0 else srv).process(msg)
                if out.done or out.send is None:
                    ended = True
                    break
                msg = out.send
            if ended:
                continue
            m = bytearray(msg)
            if rnd.randrange(2) and m:
                m[rnd.randrange(len(m))] ^= 1 << rnd.randrange(8)
            else:
                m = m[:rnd.randrange(len(m) + 1)]
            try:
                step = (cli if i % 2 == 0 else srv).process(bytes(m))
            except EapError:
                continue
            assert isinstance(step, EapStep)
            assert not (step.done and step.success and step.msk is None)


@pytestmark_tls
def test_tls_config_from_files(pki, tmp_path):
    from cryptography.hazmat.primitives import serialization
    k = pki["keys"]
    (tmp_path / "gw.pem").write_bytes(pki["gw"].public_bytes(serialization.Encoding.PEM))
    (tmp_path / "gw.key").write_bytes(k["gw"].private_bytes(serialization.Encoding.PEM,
                                                            serialization.PrivateFormat.TraditionalOpenSSL,
                                                            serialization.NoEncryption()))
    (tmp_path / "ca.pem").write_bytes(pki["ca"].public_bytes(serialization.Encoding.PEM))
    scfg = TlsConfig.from_files([tmp_path / "gw.pem"], tmp_path / "gw.key", [tmp_path / "ca.pem"], max_version="1.2")
    ccfg = TlsConfig(certificate=pki["carol"], private_key=k["carol"], ca=pki["ca"])
    srv = EapServer("tls", None, Rand(), tls_context=scfg)
    s, c, _ = converse(srv, EapClient("carol@example.org", tls_context=ccfg, allowed={"tls"}, random_bytes=Rand()))
    assert s.success and c.success and s.msk == c.msk
    with pytest.raises(EapError, match="cannot read"):
        TlsConfig.from_files([tmp_path / "missing.pem"], None, [tmp_path / "ca.pem"])
