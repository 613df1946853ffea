"""RADIUS packets for the gateway: built and decoded with pyrad, checked strictly here.

pyrad gives the dictionary, the attribute codec, the Request/Response Authenticators and the
Message-Authenticator (RFC 3579 3.2). This module adds what the gateway needs on top:

* ``split_eap`` / ``join_eap``: EAP-Message attributes (RFC 3579 3.1, 253 octets each);
* ``decrypt_mppe_key``: MS-MPPE-Send/Recv-Key (RFC 2548 2.4.2/2.4.3), strict about lengths;
* ``decode_reply``: one typed error (``RadiusError``) for every malformed or unauthentic reply,
  whatever pyrad raised.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import struct
from dataclasses import dataclass, field
from pathlib import Path

from pyrad import packet as pp
from pyrad.dictionary import Dictionary

ACCESS_REQUEST = pp.AccessRequest          # 1
ACCESS_ACCEPT = pp.AccessAccept            # 2
ACCESS_REJECT = pp.AccessReject            # 3
ACCOUNTING_REQUEST = pp.AccountingRequest  # 4
ACCOUNTING_RESPONSE = pp.AccountingResponse  # 5
ACCESS_CHALLENGE = pp.AccessChallenge      # 11
DISCONNECT_REQUEST = pp.DisconnectRequest  # 40
DISCONNECT_ACK = pp.DisconnectACK          # 41
DISCONNECT_NAK = pp.DisconnectNAK          # 42
COA_REQUEST = pp.CoARequest                # 43
COA_ACK = pp.CoAACK                        # 44
COA_NAK = pp.CoANAK                        # 45

EAP_CHUNK = 253            # RFC 3579 3.1: an attribute carries at most 253 octets
MAX_PACKET = 4096          # RFC 2865 3: 4096 octets at most


class RadiusError(Exception):
    """A RADIUS exchange failed: malformed or unauthentic packet, no answer, bad config."""


class RadiusTimeout(RadiusError):
    """No server answered (after all retries and failover)."""


@functools.lru_cache(maxsize=1)
def dictionary() -> Dictionary:
    """The attributes the gateway uses (vpn_gw/radius/dictionary)."""
    return Dictionary(str(Path(__file__).with_name("dictionary")))


def split_eap(message: bytes) -> list[bytes]:
    """RFC 3579 3.1: one EAP packet over as many EAP-Message attributes as needed."""
    if not message:
        raise RadiusError("empty EAP message")
    return [message[i:i + EAP_CHUNK] for i in range(0, len(message), EAP_CHUNK)]


def join_eap(chunks: list[bytes]) -> bytes | None:
    """The EAP packet carried by EAP-Message attributes (concatenated in order), checked
    against the EAP Length field; None if there is none."""
    if not chunks:
        return None
    msg = b"".join(chunks)
    if len(msg) < 4:
        raise RadiusError(f"EAP-Message of {len(msg)} octets is shorter than an EAP header")
    length = struct.unpack("!H", msg[2:4])[0]
    if length != len(msg):
        raise RadiusError(f"EAP-Message attributes carry {len(msg)} octets, EAP Length says {length}")
    return msg


def decrypt_mppe_key(value: bytes, secret: bytes, request_authenticator: bytes) -> bytes:
    """RFC 2548 2.4.2/2.4.3: Salt(2, high bit set) | encrypted(Key-Length | Key | padding).

    b(1) = MD5(secret | Request-Authenticator | Salt), c(1) = p(1) xor b(1),
    b(i) = MD5(secret | c(i-1)), c(i) = p(i) xor b(i).
    """
    if len(value) < 18 or (len(value) - 2) % 16:
        raise RadiusError(f"MS-MPPE key attribute of {len(value)} octets (need 2 + n*16)")
    salt, enc = value[:2], value[2:]
    if not salt[0] & 0x80:
        raise RadiusError("MS-MPPE key salt without its high bit set")
    plain = bytearray()
    last = request_authenticator + salt
    for i in range(0, len(enc), 16):
        b = hashlib.md5(secret + last).digest()
        block = enc[i:i + 16]
        plain += bytes(x ^ y for x, y in zip(block, b, strict=True))
        last = block
    n = plain[0]
    if n == 0 or n > len(plain) - 1:
        raise RadiusError(f"MS-MPPE key length {n} does not fit the {len(plain) - 1} decrypted octets")
    return bytes(plain[1:1 + n])


def msk_from_mppe(recv_key: bytes, send_key: bytes) -> bytes:
    """The EAP MSK from the MS-MPPE keys (RFC 3748 / RFC 5216 key naming, as strongSwan's
    eap-radius does): MSK = Recv-Key | Send-Key, zero-padded to the 64 octets RFC 3748 gives an
    MSK (EAP-MSCHAPv2 sends 16 + 16 octets; its peer's MSK ends in 32 zero octets)."""
    msk = recv_key + send_key
    return msk + bytes(64 - len(msk)) if len(msk) < 64 else msk


@dataclass
class Reply:
    """A decoded and authenticated reply to one of our requests."""
    code: int
    packet: pp.Packet = field(repr=False)
    raw: bytes = field(repr=False)
    request_authenticator: bytes = field(repr=False, default=b"")  # decrypts MS-MPPE keys

    def values(self, name: str) -> list:
        try:
            return list(self.packet.get(name) or [])
        except Exception as e:  # noqa: BLE001 - pyrad decodes lazily: a bad value surfaces here
            raise RadiusError(f"malformed {name} in RADIUS reply: {e}") from None

    def first(self, name: str):
        v = self.values(name)
        return v[0] if v else None


def encode_request(pkt: pp.Packet) -> bytes:
    raw = pkt.RequestPacket()
    if len(raw) > MAX_PACKET:
        raise RadiusError(f"RADIUS request of {len(raw)} octets exceeds {MAX_PACKET}")
    return raw


def decode_reply(request: pp.Packet, raw: bytes) -> Reply:
    """Decode ``raw`` as a reply to ``request`` and authenticate it (Response Authenticator;
    Message-Authenticator, required in replies to Access-Request, RFC 3579 3.2)."""
    if len(raw) < 20:
        raise RadiusError(f"RADIUS reply of {len(raw)} octets is shorter than the header")
    try:
        reply = type(request)(secret=request.secret, dict=request.dict, packet=raw)
    except Exception as e:  # noqa: BLE001 - pyrad raises PacketError, but also struct/Key/ValueErrors
        raise RadiusError(f"malformed RADIUS reply: {e}") from None
    if reply.id != request.id:
        raise RadiusError(f"RADIUS reply id {reply.id} for request {request.id}")
    try:
        ok = request.VerifyReply(reply, raw, enforce_ma=request.code == ACCESS_REQUEST)
    except Exception as e:  # noqa: BLE001 - whatever pyrad raises on bad input
        raise RadiusError(f"malformed RADIUS reply: {e}") from None
    if not ok:
        raise RadiusError("RADIUS reply fails authentication (wrong secret, or forged)")
    expected = {ACCESS_REQUEST: (ACCESS_ACCEPT, ACCESS_REJECT, ACCESS_CHALLENGE),
                ACCOUNTING_REQUEST: (ACCOUNTING_RESPONSE,)}.get(request.code, ())
    if reply.code not in expected:
        raise RadiusError(f"RADIUS reply code {reply.code} to a request of code {request.code}")
    return Reply(reply.code, reply, raw[:struct.unpack('!H', raw[2:4])[0]], request.authenticator)


def verify_request_authenticator(raw: bytes, secret: bytes) -> bool:
    """RFC 2866 3 / RFC 5176 3.3: MD5(Code|Id|Length|16 zero octets|attributes|secret)."""
    digest = hashlib.md5(raw[:4] + bytes(16) + raw[20:] + secret).digest()
    return hmac.compare_digest(digest, raw[4:20])


def ip_value(v) -> str | None:
    if v is None:
        return None
    try:
        return str(ipaddress.ip_address(v))
    except ValueError:
        raise RadiusError(f"malformed address {v!r} in RADIUS reply") from None
