"""MS-CHAPv2 (RFC 2759), its MPPE keys (RFC 3079) and the EAP-MSCHAPv2 framing
(draft-kamath-pppext-eap-mschapv2-02).

Crypto (RFC 2759 section 8, RFC 3079 section 3)::

    NtPasswordHash      = MD4(UTF-16LE(password))                          (8.3)
    PasswordHashHash    = MD4(NtPasswordHash)                              (8.4)
    ChallengeHash       = SHA1(PeerChallenge | AuthenticatorChallenge | UserName)[0:8]   (8.2)
    ChallengeResponse   = DES(k1, ch) | DES(k2, ch) | DES(k3, ch), k1|k2|k3 = NtPasswordHash | 5 zeros (8.5)
    NT-Response         = ChallengeResponse(ChallengeHash, NtPasswordHash)  (8.1)
    AuthenticatorResponse = "S=" + HEX(SHA1(SHA1(PasswordHashHash | NT-Response | Magic1)
                                            | ChallengeHash | Magic2))     (8.7)
    MasterKey           = SHA1(PasswordHashHash | NT-Response | Magic1)[0:16]      (RFC 3079 3.4)
    start keys          = SHA1(MasterKey | SHSpad1 | Magic2/3 | SHSpad2)[0:16]     (RFC 3079 3.4)

UserName is the name without any "DOMAIN\\" prefix (RFC 2759 8.2; like strongSwan, everything
up to the first backslash is dropped).

The EAP MSK (what IKEv2 keys its AUTH payload with, RFC 7296 2.16) is, as strongSwan's
eap-mschapv2 plugin and [MS-CHAP] 3.1.5.1 define it::

    MSK = MasterReceiveKey | MasterSendKey | 32 zero octets

with the keys named from the authenticator's side: MasterReceiveKey uses Magic2 ("On the
client side, this is the send key; on the server side, it is the receive key."), MasterSendKey
Magic3.  Both peers compute the same 64 octets.

EAP-MSCHAPv2 packets (Type 26) carry after the EAP Type octet::

    Challenge  (1): OpCode | MS-CHAPv2-ID | MS-Length(2) | Value-Size=16 | Challenge(16) | Name
    Response   (2): OpCode | MS-CHAPv2-ID | MS-Length(2) | Value-Size=49 | Peer-Challenge(16)
                    | Reserved(8)=0 | NT-Response(24) | Flags(1)=0 | Name
    Success    (3): request: OpCode | MS-CHAPv2-ID | MS-Length(2) | "S=<40 hex> M=<message>"
                    response: OpCode only
    Failure    (4): request: OpCode | MS-CHAPv2-ID | MS-Length(2) |
                    "E=eeeeeeeeee R=r C=<32 hex> V=vvvvvvvvvv M=<message>"; response: OpCode only

MS-Length is the EAP Length minus 5, i.e. the length of everything from OpCode on.
"""
from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass

from .des import des_encrypt_56
from .md4 import md4
from .packet import EapError, MethodResult, PeerResult

__all__ = [
    "OP_CHALLENGE", "OP_RESPONSE", "OP_SUCCESS", "OP_FAILURE",
    "nt_password_hash", "hash_nt_password_hash", "challenge_hash", "challenge_response",
    "generate_nt_response", "generate_authenticator_response", "check_authenticator_response",
    "get_master_key", "get_asymmetric_start_key", "get_new_key_from_sha", "mschapv2_msk",
    "strip_domain",
    "Challenge", "Response", "SuccessRequest", "FailureRequest",
    "parse_challenge", "parse_response", "parse_success_request", "parse_failure_request",
    "build_challenge", "build_response", "build_success_request", "build_failure_request",
    "SUCCESS_RESPONSE", "FAILURE_RESPONSE", "ERROR_NAMES",
    "MschapV2ServerMethod", "MschapV2PeerMethod",
]

OP_CHALLENGE = 1
OP_RESPONSE = 2
OP_SUCCESS = 3
OP_FAILURE = 4
OP_CHANGE_PASSWORD = 7

# Type-data (after the EAP Type octet) of the one-octet Success/Failure responses.
SUCCESS_RESPONSE = bytes([OP_SUCCESS])
FAILURE_RESPONSE = bytes([OP_FAILURE])

# RFC 2759 section 6 error codes.
ERROR_NAMES = {
    646: "ERROR_RESTRICTED_LOGON_HOURS",
    647: "ERROR_ACCT_DISABLED",
    648: "ERROR_PASSWD_EXPIRED",
    649: "ERROR_NO_DIALIN_PERMISSION",
    691: "ERROR_AUTHENTICATION_FAILURE",
    709: "ERROR_CHANGING_PASSWORD",
}

# RFC 2759 8.7
_MAGIC1 = b"Magic server to client signing constant"
_MAGIC2 = b"Pad to make it do more than one iteration"
# RFC 3079 3.4
_MPPE_MAGIC1 = b"This is the MPPE Master Key"
_MPPE_MAGIC2 = b"On the client side, this is the send key; on the server side, it is the receive key."
_MPPE_MAGIC3 = b"On the client side, this is the receive key; on the server side, it is the send key."
_SHS_PAD1 = b"\x00" * 40
_SHS_PAD2 = b"\xf2" * 40

MAX_PASSWORD_CHARS = 256  # RFC 2759: 0-to-256-unicode-char Password


# --------------------------------------------------------------------------- RFC 2759 section 8

def nt_password_hash(password: str) -> bytes:
    """RFC 2759 8.3 NtPasswordHash: MD4 of the password in UTF-16LE (16 octets)."""
    encoded = password.encode("utf-16-le")
    if len(encoded) > 2 * MAX_PASSWORD_CHARS:
        raise EapError(f"password longer than {MAX_PASSWORD_CHARS} UTF-16 code units (RFC 2759)")
    return md4(encoded)


def hash_nt_password_hash(password_hash: bytes) -> bytes:
    """RFC 2759 8.4 HashNtPasswordHash: MD4 of the 16-octet NT hash."""
    return md4(password_hash)


def strip_domain(name: str | bytes) -> bytes:
    """The user name without a "DOMAIN\\" prefix, as bytes (UTF-8), for ChallengeHash."""
    raw = name.encode("utf-8") if isinstance(name, str) else bytes(name)
    i = raw.find(b"\\")
    return raw[i + 1:] if i >= 0 else raw


def challenge_hash(peer_challenge: bytes, authenticator_challenge: bytes, username: bytes | str) -> bytes:
    """RFC 2759 8.2 ChallengeHash: first 8 octets of SHA1(PeerChallenge|AuthChallenge|UserName).

    ``username`` is used as given (bytes) or UTF-8-encoded (str); strip a domain first with
    :func:`strip_domain` where the protocol says so.
    """
    _check_len("peer challenge", peer_challenge, 16)
    _check_len("authenticator challenge", authenticator_challenge, 16)
    user = username.encode("utf-8") if isinstance(username, str) else bytes(username)
    return hashlib.sha1(peer_challenge + authenticator_challenge + user).digest()[:8]


def challenge_response(challenge: bytes, password_hash: bytes) -> bytes:
    """RFC 2759 8.5 ChallengeResponse: three DES encryptions of the 8-octet challenge."""
    _check_len("challenge", challenge, 8)
    _check_len("password hash", password_hash, 16)
    z = password_hash + b"\x00" * 5
    return b"".join(des_encrypt_56(z[i:i + 7], challenge) for i in (0, 7, 14))


def generate_nt_response(authenticator_challenge: bytes, peer_challenge: bytes, username: bytes | str,
                         password_hash: bytes) -> bytes:
    """RFC 2759 8.1 GenerateNTResponse, from the NT password hash (24 octets).

    ``username`` goes into ChallengeHash as is (see :func:`challenge_hash`).
    """
    ch = challenge_hash(peer_challenge, authenticator_challenge, username)
    return challenge_response(ch, password_hash)


def generate_authenticator_response(password_hash: bytes, nt_response: bytes, peer_challenge: bytes,
                                    authenticator_challenge: bytes, username: bytes | str) -> str:
    """RFC 2759 8.7 GenerateAuthenticatorResponse: ``"S="`` and 40 upper-case hex digits."""
    _check_len("NT-Response", nt_response, 24)
    hh = hash_nt_password_hash(password_hash)
    digest = hashlib.sha1(hh + nt_response + _MAGIC1).digest()
    ch = challenge_hash(peer_challenge, authenticator_challenge, username)
    return "S=" + hashlib.sha1(digest + ch + _MAGIC2).hexdigest().upper()


def check_authenticator_response(expected: str, received: str) -> bool:
    """RFC 2759 8.8 CheckAuthenticatorResponse, constant time, hex case-insensitive."""
    return hmac.compare_digest(expected.upper().encode("ascii", "replace"),
                               received.upper().encode("ascii", "replace"))


# --------------------------------------------------------------------------- RFC 3079 section 3

def get_master_key(password_hash_hash: bytes, nt_response: bytes) -> bytes:
    """RFC 3079 3.4 GetMasterKey (16 octets)."""
    _check_len("password hash hash", password_hash_hash, 16)
    _check_len("NT-Response", nt_response, 24)
    return hashlib.sha1(password_hash_hash + nt_response + _MPPE_MAGIC1).digest()[:16]


def get_asymmetric_start_key(master_key: bytes, key_length: int, is_send: bool, is_server: bool) -> bytes:
    """RFC 3079 3.4 GetAsymmetricStartKey (``key_length`` of 8 or 16 octets)."""
    if key_length not in (8, 16):
        raise EapError(f"MPPE session key length must be 8 or 16, not {key_length}")
    if is_send:
        magic = _MPPE_MAGIC3 if is_server else _MPPE_MAGIC2
    else:
        magic = _MPPE_MAGIC2 if is_server else _MPPE_MAGIC3
    return hashlib.sha1(master_key + _SHS_PAD1 + magic + _SHS_PAD2).digest()[:key_length]


def get_new_key_from_sha(start_key: bytes, session_key: bytes, key_length: int) -> bytes:
    """RFC 3079 GetNewKeyFromSHA; sections 3.1-3.3 make the initial session key with the start
    key as both inputs."""
    return hashlib.sha1(start_key[:key_length] + _SHS_PAD1 + session_key[:key_length] + _SHS_PAD2).digest()[:key_length]


def mschapv2_msk(password_hash: bytes, nt_response: bytes) -> bytes:
    """The 64-octet EAP-MSCHAPv2 MSK: MasterReceiveKey | MasterSendKey | 32 zeros
    (authenticator's naming, as strongSwan and [MS-CHAP] 3.1.5.1 compute it)."""
    master = get_master_key(hash_nt_password_hash(password_hash), nt_response)
    receive = get_asymmetric_start_key(master, 16, is_send=False, is_server=True)
    send = get_asymmetric_start_key(master, 16, is_send=True, is_server=True)
    return receive + send + b"\x00" * 32


def _check_len(what: str, value: bytes, n: int) -> None:
    if len(value) != n:
        raise EapError(f"MS-CHAPv2 {what} must be {n} octets, not {len(value)}")


# --------------------------------------------------------------------------- EAP-MSCHAPv2 packets

@dataclass(frozen=True)
class Challenge:
    ms_id: int
    challenge: bytes
    name: bytes


@dataclass(frozen=True)
class Response:
    ms_id: int
    peer_challenge: bytes
    nt_response: bytes
    flags: int
    name: bytes
    reserved: bytes


@dataclass(frozen=True)
class SuccessRequest:
    ms_id: int
    auth_string: str  # "S=..." as received
    message: str


@dataclass(frozen=True)
class FailureRequest:
    ms_id: int
    error: int | None
    retry: int | None
    challenge: bytes | None
    version: int | None
    message: str

    @property
    def error_name(self) -> str:
        return ERROR_NAMES.get(self.error or 0, f"error {self.error}")


def _header(type_data: bytes, opcode: int, what: str) -> tuple[int, bytes]:
    """Check OpCode, MS-CHAPv2-ID and MS-Length; returns (ms_id, rest after the 4-octet header)."""
    if len(type_data) < 4:
        raise EapError(f"EAP-MSCHAPv2 {what} of {len(type_data)} octets is shorter than its header")
    if type_data[0] != opcode:
        raise EapError(f"EAP-MSCHAPv2 {what}: OpCode {type_data[0]}, expected {opcode}")
    ms_id, ms_len = type_data[1], struct.unpack("!H", type_data[2:4])[0]
    if ms_len != len(type_data):
        raise EapError(f"EAP-MSCHAPv2 {what}: MS-Length {ms_len} does not match {len(type_data)}")
    return ms_id, type_data[4:]


def _with_header(opcode: int, ms_id: int, body: bytes) -> bytes:
    return struct.pack("!BBH", opcode, ms_id & 0xFF, 4 + len(body)) + body


def build_challenge(ms_id: int, challenge: bytes, name: bytes) -> bytes:
    _check_len("challenge", challenge, 16)
    return _with_header(OP_CHALLENGE, ms_id, bytes([16]) + challenge + name)


def parse_challenge(type_data: bytes) -> Challenge:
    ms_id, rest = _header(type_data, OP_CHALLENGE, "Challenge")
    if not rest or rest[0] != 16 or len(rest) < 17:
        raise EapError("EAP-MSCHAPv2 Challenge: Value-Size must be 16 with a 16-octet challenge")
    return Challenge(ms_id, rest[1:17], rest[17:])


def build_response(ms_id: int, peer_challenge: bytes, nt_response: bytes, name: bytes) -> bytes:
    _check_len("peer challenge", peer_challenge, 16)
    _check_len("NT-Response", nt_response, 24)
    value = peer_challenge + b"\x00" * 8 + nt_response + b"\x00"
    return _with_header(OP_RESPONSE, ms_id, bytes([49]) + value + name)


def parse_response(type_data: bytes) -> Response:
    ms_id, rest = _header(type_data, OP_RESPONSE, "Response")
    if not rest or rest[0] != 49 or len(rest) < 50:
        raise EapError("EAP-MSCHAPv2 Response: Value-Size must be 49 with a 49-octet value")
    v = rest[1:50]
    return Response(ms_id, v[0:16], v[24:48], v[48], rest[50:], v[16:24])


def _text(raw: bytes, what: str) -> str:
    raw = raw.rstrip(b"\x00")  # strongSwan terminates its Success message with a NUL
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise EapError(f"EAP-MSCHAPv2 {what} message is not UTF-8") from None


def _fields(text: str) -> dict[str, str]:
    """Split "S=... M=free text" / "E=.. R=.. C=.. V=.. M=free text" into a dict; M= runs to the end."""
    out: dict[str, str] = {}
    m = text.find("M=")
    if m >= 0 and (m == 0 or text[m - 1] == " "):
        out["M"] = text[m + 2:]
        text = text[:m]
    for token in text.split():
        if len(token) >= 2 and token[1] == "=":
            out.setdefault(token[0], token[2:])
    return out


def build_success_request(ms_id: int, auth_string: str, message: str) -> bytes:
    return _with_header(OP_SUCCESS, ms_id, f"{auth_string} M={message}".encode())


def parse_success_request(type_data: bytes) -> SuccessRequest:
    ms_id, rest = _header(type_data, OP_SUCCESS, "Success-Request")
    f = _fields(_text(rest, "Success-Request"))
    s = f.get("S")
    if s is None or len(s) != 40 or any(c not in "0123456789abcdefABCDEF" for c in s):
        raise EapError("EAP-MSCHAPv2 Success-Request without a valid S=<40 hex digits> authenticator response")
    return SuccessRequest(ms_id, "S=" + s, f.get("M", ""))


def build_failure_request(ms_id: int, challenge: bytes, *, error: int = 691, retry: int = 0, version: int = 3,
                          message: str = "Authentication failed") -> bytes:
    _check_len("challenge", challenge, 16)
    text = f"E={error} R={retry} C={challenge.hex().upper()} V={version} M={message}"
    return _with_header(OP_FAILURE, ms_id, text.encode("utf-8"))


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise EapError(f"EAP-MSCHAPv2 Failure-Request: {value!r} is not a number") from None


def parse_failure_request(type_data: bytes) -> FailureRequest:
    ms_id, rest = _header(type_data, OP_FAILURE, "Failure-Request")
    f = _fields(_text(rest, "Failure-Request"))
    if "E" not in f:
        raise EapError("EAP-MSCHAPv2 Failure-Request without an E= error code")
    challenge = None
    if "C" in f:
        try:
            challenge = bytes.fromhex(f["C"])
        except ValueError:
            raise EapError("EAP-MSCHAPv2 Failure-Request: C= is not hex") from None
        if len(challenge) != 16:
            raise EapError("EAP-MSCHAPv2 Failure-Request: C= must be 16 octets")
    return FailureRequest(ms_id, _int(f.get("E")), _int(f.get("R")), challenge, _int(f.get("V")), f.get("M", ""))


# --------------------------------------------------------------------------- method state machines

SERVER_NAME = b"vpn-gw"
SUCCESS_MESSAGE = "Welcome"
FAILURE_MESSAGE = "Authentication failed"


class MschapV2ServerMethod:
    """Authenticator side: Challenge -> (Response) -> Success-Request or Failure-Request ->
    (Success-Response / Failure-Response) -> done.  No retries (Failure-Request has R=0).

    ``password_hash`` None means the identity is unknown: the exchange runs to its end and
    fails exactly like a wrong password (no user enumeration)."""

    name = "mschapv2"
    eap_type = 26

    def __init__(self, random_bytes: Callable[[int], bytes], identity: str, password_hash: bytes | None,
                 server_name: bytes = SERVER_NAME):
        self.random_bytes = random_bytes
        self.identity = identity
        self.password_hash = password_hash
        self.server_name = server_name
        self.ms_id = 0
        self.challenge = b""
        self.state = "init"
        self.reason = ""
        self.msk: bytes | None = None

    def _random(self, n: int) -> bytes:
        b = self.random_bytes(n)
        if len(b) != n:
            raise EapError("random_bytes returned the wrong number of octets")
        return b

    def start(self, identifier: int) -> bytes:
        self.ms_id = identifier & 0xFF
        self.challenge = self._random(16)
        self.state = "challenge"
        return build_challenge(self.ms_id, self.challenge, self.server_name)

    def process(self, identifier: int, type_data: bytes) -> MethodResult:
        if not type_data:
            raise EapError("EAP-MSCHAPv2 message without an OpCode")
        op = type_data[0]
        if self.state == "challenge":
            if op != OP_RESPONSE:
                raise EapError(f"EAP-MSCHAPv2: expected a Response (OpCode 2), got OpCode {op}")
            return self._response(parse_response(type_data))
        if self.state == "success_sent":
            if type_data == SUCCESS_RESPONSE:
                return MethodResult(done=True, success=True, msk=self.msk, reason=self.reason)
            if type_data == FAILURE_RESPONSE:
                return MethodResult(done=True, reason="peer rejected our MS-CHAPv2 authenticator response")
            raise EapError(f"EAP-MSCHAPv2: expected a Success-Response, got OpCode {op} ({len(type_data)} octets)")
        if self.state == "failure_sent":
            if op == OP_FAILURE and len(type_data) == 1:
                return MethodResult(done=True, reason=self.reason)
            raise EapError(f"EAP-MSCHAPv2: expected a Failure-Response, got OpCode {op} ({len(type_data)} octets)")
        raise EapError(f"EAP-MSCHAPv2 message in state {self.state}")

    def _fail(self, reason: str) -> MethodResult:
        self.reason = reason
        self.state = "failure_sent"
        return MethodResult(request=build_failure_request(self.ms_id, self._random(16), message=FAILURE_MESSAGE))

    def _response(self, r: Response) -> MethodResult:
        if r.ms_id != self.ms_id:
            raise EapError(f"EAP-MSCHAPv2 Response for MS-CHAPv2-ID {r.ms_id}, expected {self.ms_id}")
        try:
            name = r.name.decode("utf-8")
        except UnicodeDecodeError:
            raise EapError("EAP-MSCHAPv2 Response Name is not UTF-8") from None
        if name != self.identity and strip_domain(name) != strip_domain(self.identity):
            return self._fail(f"MS-CHAPv2 name {name!r} does not match the EAP identity {self.identity!r}")
        if self.password_hash is None:
            return self._fail(f"unknown user {self.identity!r}")
        user = strip_domain(r.name)
        expected = generate_nt_response(self.challenge, r.peer_challenge, user, self.password_hash)
        if not hmac.compare_digest(expected, r.nt_response):
            return self._fail(f"wrong password for {self.identity!r} (MS-CHAPv2)")
        auth = generate_authenticator_response(self.password_hash, r.nt_response, r.peer_challenge,
                                               self.challenge, user)
        self.msk = mschapv2_msk(self.password_hash, r.nt_response)
        self.reason = "EAP-MSCHAPv2 succeeded"
        self.state = "success_sent"
        return MethodResult(request=build_success_request(self.ms_id, auth, SUCCESS_MESSAGE))


class MschapV2PeerMethod:
    """Peer side: answers the Challenge, checks the authenticator response of the
    Success-Request (mutual authentication), answers a Failure-Request with a
    Failure-Response (no retry, no password change)."""

    name = "mschapv2"
    eap_type = 26

    def __init__(self, random_bytes: Callable[[int], bytes], identity: str, password: str):
        self.random_bytes = random_bytes
        self.identity = identity
        self.password_hash = nt_password_hash(password)
        self.expected_auth: str | None = None
        self.msk: bytes | None = None
        self.may_succeed = False
        self.nt_response: bytes | None = None
        self.peer_challenge: bytes | None = None

    def process(self, identifier: int, type_data: bytes) -> PeerResult:
        if not type_data:
            raise EapError("EAP-MSCHAPv2 request without an OpCode")
        op = type_data[0]
        if op == OP_CHALLENGE:
            c = parse_challenge(type_data)
            self.peer_challenge = self.random_bytes(16)
            if len(self.peer_challenge) != 16:
                raise EapError("random_bytes returned the wrong number of octets")
            user = strip_domain(self.identity)
            self.nt_response = generate_nt_response(c.challenge, self.peer_challenge, user, self.password_hash)
            self.expected_auth = generate_authenticator_response(self.password_hash, self.nt_response,
                                                                 self.peer_challenge, c.challenge, user)
            self.msk = mschapv2_msk(self.password_hash, self.nt_response)
            self.may_succeed = False
            return PeerResult(response=build_response(c.ms_id, self.peer_challenge, self.nt_response,
                                                      self.identity.encode("utf-8")))
        if op == OP_SUCCESS:
            s = parse_success_request(type_data)
            if self.expected_auth is None:
                raise EapError("EAP-MSCHAPv2 Success-Request before any Challenge")
            if not check_authenticator_response(self.expected_auth, s.auth_string):
                return PeerResult(failed=True, reason="the server's MS-CHAPv2 authenticator response is wrong "
                                                      "(it does not know the password)")
            self.may_succeed = True
            return PeerResult(response=SUCCESS_RESPONSE)
        if op == OP_FAILURE:
            f = parse_failure_request(type_data)
            self.may_succeed = False
            reason = f"server rejected MS-CHAPv2 authentication: E={f.error} ({f.error_name})"
            if f.message:
                reason += f" M={f.message!r}"
            return PeerResult(response=FAILURE_RESPONSE, failed=True, reason=reason)
        raise EapError(f"EAP-MSCHAPv2 request with unsupported OpCode {op}")
