"""`vpn-gw import-swanctl`: the strict swanctl.conf reader, and conversions that check clean.

Converted: the swanctl.conf files in examples/ and realistic configurations written here
(site-to-site PSK with several children, certificates, a remote-access gateway with EAP and
pools, an EAP client). Each result is loaded by our config loader with no error and no warning.
The netns test against strongSwan is tests/interop/test_swanctl_import_strongswan.py.
"""
from __future__ import annotations

import datetime
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vpn_gw.config import load_config
from vpn_gw.swanctl_import import (
    SwanctlSyntaxError,
    convert_file,
    parse_file,
    parse_text,
)
from vpn_gw.swanctl_import.convert import ConversionError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(ROOT.glob("examples/*/*/swanctl.conf"))


def _check_clean(tmp_path: Path, toml: str, name: str = "gw.toml"):
    p = tmp_path / name
    p.write_text(toml)
    p.chmod(0o600)   # inline secrets: vpn-gw wants the file owner-only (import-swanctl -o does so)
    cfg = load_config(str(p))          # raises ConfigError on any problem
    assert not cfg.warnings, cfg.warnings
    return cfg


# --------------------------------------------------------------------------- parser


def test_parser_sections_values_quotes_comments():
    root = parse_text('connections {  # comment\n'
                      '  a : base {\n'
                      '    remote_addrs = 192.0.2.1, 198.51.100.1   # trailing comment\n'
                      '    empty =\n'
                      '    q = "has # and { } and \\"quotes\\""\n'
                      '  }\n'
                      '  base { version = 2 }\n'
                      '}\n'
                      'connections { b { x = 1 } }\n')
    conns = root.section("connections")
    assert list(conns.sections) == ["a", "base", "b"]        # repeated section merged
    a = conns.sections["a"]
    assert a.templates == ["base"]
    assert a.values == {"remote_addrs": "192.0.2.1, 198.51.100.1", "empty": "",
                        "q": 'has # and { } and "quotes"'}
    assert a.value_lines["q"] == 5
    assert conns.sections["base"].values == {"version": "2"}


@pytest.mark.parametrize("text,line,words", [
    ("connections {\n a {\n", 2, "not closed"),
    ("}\n", 1, "without an open section"),
    ("connections {\n a b\n}\n", 2, "must be followed by"),
    ('secrets {\n x { secret = "abc\n}\n}\n', 2, "unterminated quoted string"),
    ("a = b { c }\n", 1, "unexpected '{'"),
    ("connections {\n = 3\n}\n", 2, "expected a name"),
])
def test_parser_errors_name_line_and_problem(text, line, words):
    with pytest.raises(SwanctlSyntaxError) as e:
        parse_text(text, "x.conf")
    assert e.value.line == line and words in e.value.message
    assert str(e.value).startswith(f"x.conf:{line}: ")


def test_parser_follows_includes_and_refuses_cycles(tmp_path):
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "a.conf").write_text("connections { a { version = 2 } }\n")
    (tmp_path / "conf.d" / "b.conf").write_text("connections { b { version = 2 } }\n")
    (tmp_path / "swanctl.conf").write_text("include conf.d/*.conf\ninclude nothing-*.conf\n")
    root = parse_file(tmp_path / "swanctl.conf")
    assert list(root.section("connections").sections) == ["a", "b"]

    (tmp_path / "loop.conf").write_text("include loop.conf\n")
    with pytest.raises(SwanctlSyntaxError, match="include cycle"):
        parse_file(tmp_path / "loop.conf")
    (tmp_path / "missing.conf").write_text("connections {\n include gone.conf\n}\n")
    with pytest.raises(SwanctlSyntaxError) as e:
        parse_file(tmp_path / "missing.conf")
    assert e.value.line == 2 and "cannot read" in e.value.message


# --------------------------------------------------------------------------- conversions


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.parent.name for p in EXAMPLES])
def test_examples_convert_and_check_clean(tmp_path, path):
    conv = convert_file(path)
    cfg = _check_clean(tmp_path, conv.toml)
    assert len(cfg.connections) == 1
    assert conv.skipped == [], conv.skipped   # everything in the examples has an equivalent


S2S = """
connections {
    hq {
        version = 2
        local_addrs = 198.51.100.1
        remote_addrs = 192.0.2.1
        proposals = aes256gcm16-prfsha256-x25519, aes256-sha256-modp3072, 3des-sha1-modp1024
        dpd_delay = 30
        rekey_time = 4h
        updown = /usr/local/sbin/updown.sh
        local { auth = psk
                id = @branch.example.org }
        remote { auth = psk
                 id = @hq.example.org }
        children {
            lan { local_ts = 10.2.0.0/24
                  remote_ts = 10.1.0.0/24, 10.3.0.0/24
                  esp_proposals = aes256gcm16-x25519
                  start_action = trap
                  dpd_action = restart }
            voice { local_ts = 10.2.8.0/24
                    remote_ts = 10.1.8.0/24
                    esp_proposals = aes128gcm16
                    rekey_time = 20m
                    life_time = 30m
                    updown = /usr/lib/ipsec/_updown iptables }
            mgmt { local_ts = dynamic
                   remote_ts = 192.0.2.1/32
                   mode = transport }
        }
    }
    legacy { version = 1
             remote_addrs = 203.0.113.9
             children { x { } } }
}
secrets {
    ike-hq { id-1 = @hq.example.org
             secret = "a long example pre-shared key, 40 chars" }
    rsa-old { file = old.pem
              secret = passphrase }
}
"""


def test_site_to_site_psk_several_children(tmp_path):
    f = tmp_path / "swanctl.conf"
    f.write_text(S2S)
    conv = convert_file(f)
    cfg = _check_clean(tmp_path, conv.toml)
    (conn,) = cfg.connections
    assert conn.name == "hq" and conn.dpd_delay == 30 and conn.rekey_time == 4 * 3600
    assert conn.psk.reveal() == b"a long example pre-shared key, 40 chars"
    assert [c.name for c in conn.children] == ["lan", "voice", "mgmt"]
    lan, voice, mgmt = conn.children
    assert [str(n) for n in lan.remote_ts] == ["10.1.0.0/24", "10.3.0.0/24"]
    assert lan.start_action == "trap" and lan.dpd_action == "restart"
    # swanctl's per-child actions: the connection gets the one keeping the most up (the daemon
    # starts and restarts by it), children keep their own
    assert conn.start_action == "trap" and conn.dpd_action == "restart"
    assert voice.start_action == "none" and mgmt.start_action == "none"    # swanctl's default
    assert voice.dpd_action == "clear" and mgmt.dpd_action == "clear"
    assert voice.rekey_time == 20 * 60 and voice.life_time == 30 * 60
    assert [str(n) for n in mgmt.local_ts] == ["198.51.100.1/32"] and mgmt.mode == "transport"
    skipped = "\n".join(conv.skipped)
    # every unconverted item named, with where it was
    assert "connection 'legacy': whole connection: IKEv1" in skipped
    assert "connection 'hq': updown = /usr/local/sbin/updown.sh: no vpn-gw equivalent" in skipped
    assert "child 'voice': updown" in skipped
    assert "secret 'rsa-old': passphrase of a private key" in skipped
    # weak proposals are refused by the protocol core's parser: left out, with its reason
    assert conn.ike_proposals_text == ("aes256gcm16-prfsha256-x25519", "aes256-sha256-modp3072")
    assert "proposals 3des-sha1-modp1024: left out: algorithm '3des' (3DES) is refused as weak" in skipped


def _pki(d: Path) -> tuple[Path, Path]:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Example CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    for sub in ("x509", "x509ca", "private", "ecdsa"):
        (d / sub).mkdir(parents=True)
    (d / "x509ca" / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pem = serialization.Encoding.PEM
    for name in ("decoy", "gw"):   # the converter must pick the key matching the certificate
        key = ec.generate_private_key(ec.SECP256R1())
        subj = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name}.example.org")])
        cert = (x509.CertificateBuilder().subject_name(subj).issuer_name(ca_name)
                .public_key(key.public_key()).serial_number(2)
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(f"{name}.example.org")]),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        (d / "x509" / f"{name}.pem").write_bytes(cert.public_bytes(pem))
        kf = d / ("ecdsa" if name == "gw" else "private") / f"{name}.key"
        kf.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
        kf.chmod(0o600)
    return d / "x509" / "gw.pem", d / "ecdsa" / "gw.key"


def test_certificates(tmp_path):
    cert, key = _pki(tmp_path)
    (tmp_path / "swanctl.conf").write_text("""
connections {
    branch {
        local_addrs = 192.0.2.1
        remote_addrs = 198.51.100.1
        local { auth = pubkey
                certs = gw.pem
                id = gw.example.org }
        remote { auth = pubkey
                 id = "CN=branch.example.org" }
        children { net { local_ts = 10.1.0.0/24
                         remote_ts = 10.2.0.0/24 } }
    }
}
""")
    conv = convert_file(tmp_path / "swanctl.conf")
    cfg = _check_clean(tmp_path, conv.toml)
    (conn,) = cfg.connections
    t = tomllib.loads(conv.toml)["connection"][0]
    assert t["certs"] == [str(cert)] and t["private_key"] == str(key)
    assert t["cacerts"] == [str(tmp_path / "x509ca" / "ca.pem")]    # all of x509ca/, as strongSwan
    assert conn.auth == "pubkey" and conn.remote_auth == "pubkey"
    # no version key: swanctl's default (0, any version) is the only note
    assert conv.skipped == ["connection 'branch': version = 0 (any): vpn-gw speaks IKEv2 only; "
                            "converted as IKEv2"]


RA_GATEWAY = """
connections {
    rw {
        version = 2
        local_addrs = 192.0.2.1
        pools = rw4, rw6
        proposals = aes256gcm16-prfsha256-x25519
        send_certreq = no
        local { auth = psk
                id = vpn.example.org }
        remote { auth = eap-mschapv2
                 eap_id = %any }
        children { rw { local_ts = 10.1.0.0/24, 2001:db8:1::/64
                        esp_proposals = aes256gcm16 } }
    }
}
pools {
    rw4 { addrs = 10.99.0.0/24
          dns = 10.1.0.53, 10.1.0.54 }
    rw6 { addrs = fd00:99::/112 }
}
secrets {
    ike-gw { id = vpn.example.org
             secret = 0s+Bb2nCc7iPH2+mtLP3TVNrRRXrHrNdjT6GpaSMgo9sI= }
    eap-alice { id = alice@example.org
                secret = "alice-example-password" }
    ntlm-bob { id = bob@example.org
               secret = 0x8a0fd1cd42fe8d1d793045d4b58b0518 }
}
"""


def test_remote_access_gateway_eap_and_pools(tmp_path):
    from ikev2.eap.users import UserDB, nt_hash
    (tmp_path / "swanctl.conf").write_text(RA_GATEWAY)
    users = tmp_path / "users.conf"
    p = subprocess.run([sys.executable, "-m", "vpn_gw", "import-swanctl", str(tmp_path / "swanctl.conf"),
                        "--eap-users", str(users), "-o", str(tmp_path / "gw.toml")],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr
    assert "send_certreq = no: no vpn-gw equivalent" in p.stderr   # listed on stderr
    assert os.stat(tmp_path / "gw.toml").st_mode & 0o777 == 0o600  # it holds the PSK
    assert os.stat(users).st_mode & 0o777 == 0o600
    db = UserDB.load(str(users))
    assert db.warnings == []
    assert db.lookup("alice@example.org").nt_hash.hex() == nt_hash("alice-example-password")
    assert db.lookup("bob@example.org").nt_hash.hex() == "8a0fd1cd42fe8d1d793045d4b58b0518"
    cfg = load_config(str(tmp_path / "gw.toml"))
    assert not cfg.warnings
    (conn,) = cfg.connections
    assert conn.remote_auth == "eap-mschapv2" and conn.pools == ("rw4", "rw6")
    assert [str(n) for n in conn.children[0].remote_ts] == ["0.0.0.0/0", "::/0"]   # dynamic
    assert [str(a) for a in cfg.pools[0].dns] == ["10.1.0.53", "10.1.0.54"]
    assert "secret" not in p.stdout + p.stderr and "alice-example-password" not in p.stderr


def test_eap_users_not_asked_for_is_listed(tmp_path):
    (tmp_path / "swanctl.conf").write_text(RA_GATEWAY)
    conv = convert_file(tmp_path / "swanctl.conf")
    assert any("--eap-users" in s for s in conv.skipped)
    assert conv.eap_users is None


def test_cli_errors(tmp_path):
    (tmp_path / "bad.conf").write_text("connections {\n")
    (tmp_path / "empty.conf").write_text("secrets { }\n")
    for f, words in (("bad.conf", "bad.conf:1: section 'connections' is not closed"),
                     ("empty.conf", "no connections")):
        p = subprocess.run([sys.executable, "-m", "vpn_gw", "import-swanctl", str(tmp_path / f)],
                           capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert p.returncode == 1 and words in p.stderr and p.stdout == "", p.stderr
    with pytest.raises(ConversionError):
        convert_file(tmp_path / "empty.conf")
