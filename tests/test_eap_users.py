"""The EAP users file (ikev2.eap.users)."""
from __future__ import annotations

import os

import pytest

from ikev2.eap import EapError, UserDB, UserFileError, nt_hash
from ikev2.eap.packet import parse_methods


def test_nt_hash_helper_rfc2759_vector():
    # RFC 2759 9.2: NtPasswordHash("clientPass")
    assert nt_hash("clientPass") == "44ebba8d5312b8d611474411f56989ae"
    assert nt_hash("") == "31d6cfe0d16ae931b73c59d7e0c089c0"  # MD4("")
    with pytest.raises(EapError):
        nt_hash(b"bytes")  # type: ignore[arg-type]


def test_load_and_lookup(tmp_path):
    p = tmp_path / "users.toml"
    p.write_text(f"""
# comment
[[user]]
name = "Alice@Example.org"
nt_hash = "{nt_hash('pw').upper()}"

[[user]]
name = "bob"
password = "bob-pw"
methods = ["md5", "mschapv2"]

[[user]]
name = "carol@example.org"
methods = ["tls"]
""")
    os.chmod(p, 0o600)
    db = UserDB.load(p)
    assert len(db) == 3 and "alice@example.org" in db
    alice = db.lookup("alice@EXAMPLE.org")
    assert alice.name == "Alice@Example.org" and alice.methods == {"mschapv2"}
    assert alice.password_hash.hex() == nt_hash("pw") and alice.password is None
    bob = db.lookup("bob")
    assert bob.password == "bob-pw" and bob.password_hash.hex() == nt_hash("bob-pw")
    assert bob.allows("md5") and bob.allows("mschapv2") and not bob.allows("tls")
    carol = db.lookup("carol@example.org")
    assert carol.password_hash is None and carol.methods == {"tls"}
    assert db.lookup("nobody") is None and db.lookup("") is None and db.lookup(None) is None
    assert len(db.warnings) == 1 and "cleartext password" in db.warnings[0] and "'bob'" in db.warnings[0]


def test_world_readable_file_warns(tmp_path):
    p = tmp_path / "users.toml"
    p.write_text(f'[[user]]\nname = "a"\nnt_hash = "{nt_hash("x")}"\n')
    os.chmod(p, 0o644)
    db = UserDB.load(p)
    assert any("chmod 600" in w for w in db.warnings)


def test_empty_file_is_an_empty_db():
    assert len(UserDB.from_toml("")) == 0


@pytest.mark.parametrize("text,message", [
    ("[[user]\nname=1", "not valid TOML"),
    ("[users]\nname='a'", "unknown top-level key(s) users"),
    ("user = 3", "array of tables"),
    ("[[user]]\nnt_hash = 'aa'", "'name' (a non-empty string) is required"),
    ("[[user]]\nname = ''\npassword='x'", "'name' (a non-empty string) is required"),
    ("[[user]]\nname = 'a'\nnt_hash = 'abcd'", "32 hex digits"),
    ("[[user]]\nname = 'a'\nnt_hash = '" + "zz" * 16 + "'", "32 hex digits"),
    ("[[user]]\nname = 'a'\nnt_hash = 5", "32 hex digits"),
    ("[[user]]\nname = 'a'\nnt_hash = '" + "00" * 16 + "'\npassword = 'x'", "not both"),
    ("[[user]]\nname = 'a'\npassword = ''", "non-empty string"),
    ("[[user]]\nname = 'a'", "no nt_hash/password and no methods"),
    ("[[user]]\nname = 'a'\npassword = 'x'\nmethods = ['peap']", "unknown EAP method 'peap'"),
    ("[[user]]\nname = 'a'\npassword = 'x'\nmethods = []", "no EAP method given"),
    ("[[user]]\nname = 'a'\npassword = 'x'\nmethods = 3", "string or a list"),
    ("[[user]]\nname = 'a'\nnt_hash = '" + "00" * 16 + "'\nmethods = ['md5']", "md5 needs the cleartext password"),
    ("[[user]]\nname = 'a'\nmethods = ['mschapv2']", "mschapv2 needs nt_hash or password"),
    ("[[user]]\nname = 'a'\npassword = 'x'\npasword = 'y'", "unknown key(s) pasword"),
    ("[[user]]\nname = 'a'\npassword = 'x'\n[[user]]\nname = 'A'\npassword = 'y'", "user #2 ('A') repeats user #1"),
    ("[[user]]\nname = 'a'\npassword = '" + "x" * 300 + "'", "longer than 256"),
])
def test_errors_say_where_and_why(text, message):
    with pytest.raises(UserFileError) as e:
        UserDB.from_toml(text, source="users.toml")
    assert message in str(e.value)
    assert str(e.value).startswith("users.toml")


def test_missing_file(tmp_path):
    with pytest.raises(UserFileError, match="cannot read the EAP users file"):
        UserDB.load(tmp_path / "nope.toml")
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b"# \xe9\n")
    with pytest.raises(UserFileError, match="not UTF-8"):
        UserDB.load(bad)


def test_error_mentions_entry_index():
    with pytest.raises(UserFileError, match=r"user #2 \('b'\): nt_hash"):
        UserDB.from_toml("[[user]]\nname='a'\npassword='x'\n[[user]]\nname='b'\nnt_hash='x'\n", source="f")


def test_parse_methods():
    assert parse_methods("tls, MSCHAPv2,tls") == ("tls", "mschapv2")
    assert parse_methods(["md5"]) == ("md5",)
    with pytest.raises(EapError):
        parse_methods(" , ")


def test_userdb_duplicate_users_in_constructor():
    db = UserDB.from_toml("[[user]]\nname = 'a'\npassword = 'x'")
    with pytest.raises(UserFileError, match="defined twice"):
        UserDB(list(db) + list(db))
