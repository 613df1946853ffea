"""Known-answer tests of the EAP crypto: MD4 (RFC 1320 A.5), DES (FIPS 81, libdes set),
MS-CHAPv2 (RFC 2759 9.2), MPPE keys (RFC 3079 3.5.3), EAP-MD5 (RFC 1994), and the
EAP-MSCHAPv2 packet formats."""
from __future__ import annotations

import hashlib
import random

import pytest

from ikev2.eap import mschapv2 as M
from ikev2.eap.des import des_decrypt_block, des_encrypt_56, des_encrypt_block, expand_des_key
from ikev2.eap.md4 import MD4, md4
from ikev2.eap.md5 import md5_challenge_response
from ikev2.eap.packet import EapError

# --------------------------------------------------------------------------- MD4, RFC 1320 A.5

RFC1320_A5 = [
    (b"", "31d6cfe0d16ae931b73c59d7e0c089c0"),
    (b"a", "bde52cb31de33e46245e05fbdbd6fb24"),
    (b"abc", "a448017aaf21d8525fc10ae87aa6729d"),
    (b"message digest", "d9130a8164549fe818874806e1c7014b"),
    (b"abcdefghijklmnopqrstuvwxyz", "d79e1c308aa5bbcdeea8ed63df412da9"),
    (b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", "043f8582f241db351ce627e153e7f0e4"),
    (b"12345678901234567890123456789012345678901234567890123456789012345678901234567890",
     "e33b4ddc9c38f2199c3e7b164fcc0536"),
]


@pytest.mark.parametrize("msg,digest", RFC1320_A5)
def test_md4_rfc1320_suite(msg, digest):
    assert md4(msg).hex() == digest
    h = MD4()
    for i in range(0, len(msg), 7):  # incremental updates across block boundaries
        h.update(msg[i:i + 7])
    assert h.hexdigest() == digest


def test_md4_padding_boundaries():
    # lengths around the 55/56/64-octet padding edges must all differ and be stable
    digests = {md4(b"x" * n) for n in range(50, 130)}
    assert len(digests) == 80
    h = MD4(b"x" * 60)
    h2 = h.copy()
    h2.update(b"y")
    assert h.digest() == md4(b"x" * 60) and h2.digest() == md4(b"x" * 60 + b"y")


# --------------------------------------------------------------------------- DES

# FIPS 81 Appendix B, Table B1 (ECB): key 0123456789ABCDEF, "Now is the time for all ".
FIPS81_ECB = [
    ("4e6f772069732074", "3fa40e8a984d4815"),
    ("68652074696d6520", "6a271787ab8883f9"),
    ("666f7220616c6c20", "893d51ec4b563b53"),
]
# Entries of the classic single-DES known-answer set (libdes / OpenSSL destest ecb_data).
LIBDES = [
    ("7ca110454a1a6e57", "01a1d6d039776742", "690f5b0d9a26939b"),
    ("0131d9619dc1376e", "5cd54ca83def57da", "7a389d10354bd271"),
]


@pytest.mark.parametrize("pt,ct", FIPS81_ECB)
def test_des_fips81(pt, ct):
    key = bytes.fromhex("0123456789abcdef")
    assert des_encrypt_block(key, bytes.fromhex(pt)).hex() == ct
    assert des_decrypt_block(key, bytes.fromhex(ct)).hex() == pt


@pytest.mark.parametrize("key,pt,ct", LIBDES)
def test_des_known_answers(key, pt, ct):
    assert des_encrypt_block(bytes.fromhex(key), bytes.fromhex(pt)).hex() == ct


def test_des_matches_openssl_3des_with_equal_keys():
    """3DES-EDE with K1=K2=K3 is single DES: cross-check random blocks against OpenSSL."""
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    rnd = random.Random(1)
    for _ in range(50):
        key, block = rnd.randbytes(8), rnd.randbytes(8)
        enc = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()
        assert des_encrypt_block(key, block) == enc.update(block) + enc.finalize()


def test_des_key_expansion_parity():
    assert expand_des_key(bytes(7)).hex() == "0101010101010101"
    assert expand_des_key(b"\xff" * 7).hex() == "fefefefefefefefe"
    rnd = random.Random(2)
    for _ in range(50):
        k7 = rnd.randbytes(7)
        k8 = expand_des_key(k7)
        assert all(bin(b).count("1") % 2 == 1 for b in k8)  # odd parity
        bits = "".join(f"{b:08b}"[:7] for b in k8)
        assert int(bits, 2) == int.from_bytes(k7, "big")  # the 56 key bits, in order
    assert des_encrypt_56(bytes(7), bytes(8)) == des_encrypt_block(bytes.fromhex("0101010101010101"), bytes(8))
    with pytest.raises(ValueError):
        expand_des_key(bytes(8))
    with pytest.raises(ValueError):
        des_encrypt_block(bytes(7), bytes(8))


# --------------------------------------------------------------------------- RFC 2759 9.2

USER = "User"
PASSWORD = "clientPass"
AUTH_CHALLENGE = bytes.fromhex("5B5D7C7D7B3F2F3E3C2C602132262628")
PEER_CHALLENGE = bytes.fromhex("21402324255E262A28295F2B3A337C7E")
CHALLENGE = bytes.fromhex("D02E4386BCE91226")
PASSWORD_HASH = bytes.fromhex("44EBBA8D5312B8D611474411F56989AE")
NT_RESPONSE = bytes.fromhex("82309ECD8D708B5EA08FAA3981CD83544233114A3D85D6DF")
PASSWORD_HASH_HASH = bytes.fromhex("41C00C584BD2D91C4017A2A12FA59F3F")
AUTHENTICATOR_RESPONSE = "S=407A5589115FD0D6209F510FE9C04566932CDA56"


def test_rfc2759_section_9_2():
    # the password as 0-to-256-unicode-char Password: 63 00 6C 00 69 00 ...
    assert PASSWORD.encode("utf-16-le").hex() == "63006c00690065006e0074005000610073007300"
    assert M.nt_password_hash(PASSWORD) == PASSWORD_HASH
    assert M.challenge_hash(PEER_CHALLENGE, AUTH_CHALLENGE, USER) == CHALLENGE
    assert M.challenge_response(CHALLENGE, PASSWORD_HASH) == NT_RESPONSE
    assert M.generate_nt_response(AUTH_CHALLENGE, PEER_CHALLENGE, USER, PASSWORD_HASH) == NT_RESPONSE
    assert M.hash_nt_password_hash(PASSWORD_HASH) == PASSWORD_HASH_HASH
    assert M.generate_authenticator_response(PASSWORD_HASH, NT_RESPONSE, PEER_CHALLENGE, AUTH_CHALLENGE,
                                             USER) == AUTHENTICATOR_RESPONSE
    assert M.check_authenticator_response(AUTHENTICATOR_RESPONSE, AUTHENTICATOR_RESPONSE.lower().replace("s=", "S="))
    assert not M.check_authenticator_response(AUTHENTICATOR_RESPONSE, "S=" + "0" * 40)


def test_challenge_hash_uses_name_without_domain():
    assert M.strip_domain("EXAMPLE\\User") == b"User"
    assert M.strip_domain("User") == b"User"
    assert M.strip_domain("A\\B\\User") == b"B\\User"  # only the first prefix, like strongSwan
    nt = M.generate_nt_response(AUTH_CHALLENGE, PEER_CHALLENGE, M.strip_domain("EXAMPLE\\User"), PASSWORD_HASH)
    assert nt == NT_RESPONSE


def test_mschapv2_length_checks():
    with pytest.raises(EapError):
        M.challenge_hash(PEER_CHALLENGE[:15], AUTH_CHALLENGE, USER)
    with pytest.raises(EapError):
        M.challenge_response(CHALLENGE, PASSWORD_HASH[:15])
    with pytest.raises(EapError):
        M.nt_password_hash("x" * 257)
    assert len(M.nt_password_hash("x" * 256)) == 16


# --------------------------------------------------------------------------- RFC 3079 3.5.3

MASTER_KEY = bytes.fromhex("FDECE3717A8C838CB388E527AE3CDD31")
SEND_START_KEY_128 = bytes.fromhex("8B7CDC149B993A1BA118CB153F56DCCB")
SEND_SESSION_KEY_128 = bytes.fromhex("405CB2247A7956E6E211007AE27B22D4")


def test_rfc3079_section_3_5_3():
    assert M.get_master_key(PASSWORD_HASH_HASH, NT_RESPONSE) == MASTER_KEY
    # the RFC's SendStartKey128 is the server's send key (IsSend, IsServer)
    send = M.get_asymmetric_start_key(MASTER_KEY, 16, is_send=True, is_server=True)
    assert send == SEND_START_KEY_128
    assert M.get_asymmetric_start_key(MASTER_KEY, 16, is_send=False, is_server=False) == send  # client receive
    assert M.get_new_key_from_sha(send, send, 16) == SEND_SESSION_KEY_128
    assert M.get_asymmetric_start_key(MASTER_KEY, 8, True, True) == SEND_START_KEY_128[:8]
    with pytest.raises(EapError):
        M.get_asymmetric_start_key(MASTER_KEY, 5, True, True)


def test_msk_is_receive_send_zeros_from_the_authenticator_side():
    msk = M.mschapv2_msk(PASSWORD_HASH, NT_RESPONSE)
    receive = M.get_asymmetric_start_key(MASTER_KEY, 16, is_send=False, is_server=True)  # Magic2
    assert len(msk) == 64
    assert msk[:16] == receive
    assert msk[16:32] == SEND_START_KEY_128
    assert msk[32:] == bytes(32)
    assert receive == M.get_asymmetric_start_key(MASTER_KEY, 16, is_send=True, is_server=False)  # client send


# --------------------------------------------------------------------------- EAP-MD5 (RFC 1994 4.1)

def test_md5_challenge_response():
    challenge = bytes(range(16))
    assert md5_challenge_response(7, b"secret", challenge) == hashlib.md5(b"\x07secret" + challenge).digest()


# --------------------------------------------------------------------------- EAP-MSCHAPv2 packets

def test_mschapv2_packets_round_trip():
    c = M.build_challenge(0x41, AUTH_CHALLENGE, b"vpn-gw")
    assert c[:5] == bytes([1, 0x41, 0, len(c), 16])
    pc = M.parse_challenge(c)
    assert (pc.ms_id, pc.challenge, pc.name) == (0x41, AUTH_CHALLENGE, b"vpn-gw")

    r = M.build_response(0x41, PEER_CHALLENGE, NT_RESPONSE, b"User")
    assert len(r) == 4 + 1 + 49 + 4 and r[4] == 49
    pr = M.parse_response(r)
    assert (pr.peer_challenge, pr.nt_response, pr.flags, pr.name, pr.reserved) == (
        PEER_CHALLENGE, NT_RESPONSE, 0, b"User", bytes(8))

    s = M.build_success_request(0x41, AUTHENTICATOR_RESPONSE, "Welcome here")
    ps = M.parse_success_request(s)
    assert (ps.auth_string, ps.message) == (AUTHENTICATOR_RESPONSE, "Welcome here")
    # strongSwan's form, NUL-terminated
    ps = M.parse_success_request(M._with_header(3, 1, (AUTHENTICATOR_RESPONSE + " M=Welcome2strongSwan\0").encode()))
    assert ps.message == "Welcome2strongSwan"

    f = M.build_failure_request(0x42, AUTH_CHALLENGE)
    assert f[4:].startswith(b"E=691 R=0 C=" + AUTH_CHALLENGE.hex().upper().encode() + b" V=3 M=")
    pf = M.parse_failure_request(f)
    assert (pf.error, pf.retry, pf.challenge, pf.version, pf.error_name) == (
        691, 0, AUTH_CHALLENGE, 3, "ERROR_AUTHENTICATION_FAILURE")


@pytest.mark.parametrize("bad", [
    b"", b"\x01\x00\x00", b"\x01\x00\x00\x16" + b"\x10" + bytes(16),   # MS-Length wrong
    b"\x02\x00\x00\x05\x10",                                         # wrong opcode for a challenge
    b"\x01\x00\x00\x06\x08\x00",                                     # Value-Size 8
])
def test_mschapv2_bad_challenges(bad):
    with pytest.raises(EapError):
        M.parse_challenge(bad)


def test_mschapv2_bad_success_and_failure():
    with pytest.raises(EapError):
        M.parse_success_request(M._with_header(3, 1, b"S=1234 M=x"))
    with pytest.raises(EapError):
        M.parse_success_request(M._with_header(3, 1, b"\xff\xfe"))
    with pytest.raises(EapError):
        M.parse_failure_request(M._with_header(4, 1, b"R=0 M=no error code"))
    with pytest.raises(EapError):
        M.parse_failure_request(M._with_header(4, 1, b"E=abc"))
    with pytest.raises(EapError):
        M.parse_failure_request(M._with_header(4, 1, b"E=691 C=zz"))
    with pytest.raises(EapError):
        M.parse_response(M._with_header(2, 1, bytes([48]) + bytes(48)))
