"""Encrypted payloads: SK (RFC 7296 3.14, RFC 5282 for AEAD) and SKF (RFC 7383 IKE fragmentation).

The codec itself holds no key state: callers pass an ``SKKeys`` (the keys of one direction) to
``seal`` and ``open_message``. Layout of the encrypted part: IV | ciphertext | ICV, where the
plaintext is inner payloads | padding | pad length. For AEAD ciphers the associated data is the
message from its first byte up to the IV; for encrypt-then-MAC the ICV covers the whole message
up to the ICV.
"""
from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from .constants import GENERIC_PAYLOAD_HEADER_LEN, IKE_HEADER_LEN, PayloadType
from .crypto.transforms import EncrAlgorithm, IntegAlgorithm
from .errors import AuthenticatedParseError, IntegrityError, ParseError
from .message import Message, decode_payloads, encode_header, encode_payloads
from .payloads import Payload, SKFPayload, SKPayload

RandomBytes = Callable[[int], bytes]
SKF_EXTRA = 4  # fragment number + total fragments


@dataclass(slots=True)
class SKKeys:
    """Keys protecting the messages of one direction (SK_ei/SK_ai or SK_er/SK_ar)."""
    encr: EncrAlgorithm
    integ: IntegAlgorithm | None  # None for AEAD
    sk_e: bytes = field(repr=False)
    sk_a: bytes = field(default=b"", repr=False)

    @property
    def icv_len(self) -> int:
        if self.encr.aead or self.integ is None:
            return self.encr.icv_len
        return self.integ.icv_len

    def overhead(self, plaintext_len: int) -> int:
        """Bytes the encryption adds to ``plaintext_len`` bytes of inner payloads."""
        return self.encr.iv_len + self._padded(plaintext_len) - plaintext_len + self.icv_len

    def _padded(self, n: int) -> int:
        bs = max(self.encr.block_size, 1)
        return n + 1 + (-(n + 1)) % bs

    def wipe(self) -> None:
        self.sk_e = b""
        self.sk_a = b""


def _protect(keys: SKKeys, head: bytes, plaintext: bytes, random_bytes: RandomBytes) -> bytes:
    """head = everything before the IV (header + payload header [+ fragment fields])."""
    encr = keys.encr
    bs = max(encr.block_size, 1)
    pad_len = (-(len(plaintext) + 1)) % bs
    padded = plaintext + bytes(pad_len) + bytes([pad_len])
    iv = random_bytes(encr.iv_len)
    if encr.aead:
        return iv + encr.encrypt(keys.sk_e, iv, padded, head)
    ct = encr.encrypt(keys.sk_e, iv, padded)
    if keys.integ is None:
        raise ValueError("encrypt-then-MAC cipher without an integrity transform")
    icv = keys.integ.compute(keys.sk_a, head + iv + ct)
    return iv + ct + icv


def _unprotect(keys: SKKeys, head: bytes, body: bytes, where: str, offset: int) -> bytes:
    encr = keys.encr
    icv_len = keys.icv_len
    min_ct = 1 if encr.aead else max(encr.block_size, 1)
    if len(body) < encr.iv_len + min_ct + icv_len:
        raise ParseError(f"encrypted payload of {len(body)} bytes is too short for IV, data and ICV",
                         offset, where)
    iv = body[:encr.iv_len]
    if encr.aead:
        padded = encr.decrypt(keys.sk_e, iv, body[encr.iv_len:], head)  # raises IntegrityError
    else:
        ct = body[encr.iv_len:len(body) - icv_len]
        icv = body[len(body) - icv_len:]
        if keys.integ is None:
            raise ValueError("encrypt-then-MAC cipher without an integrity transform")
        if not keys.integ.verify(keys.sk_a, head + body[:len(body) - icv_len], icv):
            raise IntegrityError(f"{where}: integrity check failed")
        if len(ct) % encr.block_size:
            raise ParseError(f"ciphertext length {len(ct)} is not a multiple of the block size",
                             offset, where)
        padded = encr.decrypt(keys.sk_e, iv, ct)
    pad_len = padded[-1]
    if pad_len + 1 > len(padded):
        raise ParseError(f"pad length {pad_len} exceeds the decrypted data", offset, where)
    return padded[:len(padded) - pad_len - 1]


def seal(spi_i: bytes, spi_r: bytes, exchange: int, flags: int, message_id: int,
         payloads: list[Payload], keys: SKKeys, random_bytes: RandomBytes,
         max_size: int | None = None) -> list[bytes]:
    """Encrypt inner payloads into one SK message, or into SKF fragments (RFC 7383) when
    ``max_size`` (bytes of IKE message) is given and one message would exceed it."""
    first, inner = encode_payloads(payloads)
    whole_len = IKE_HEADER_LEN + GENERIC_PAYLOAD_HEADER_LEN + len(inner) + keys.overhead(len(inner))
    if max_size is None or whole_len <= max_size:
        length = whole_len
        head = encode_header(spi_i, spi_r, PayloadType.SK, exchange, flags, message_id, length) + \
            struct.pack("!BBH", first, 0, length - IKE_HEADER_LEN)
        out = head + _protect(keys, head, inner, random_bytes)
        assert len(out) == length
        return [out]
    return _seal_fragments(spi_i, spi_r, exchange, flags, message_id, first, inner, keys,
                           random_bytes, max_size)


def _seal_fragments(spi_i: bytes, spi_r: bytes, exchange: int, flags: int, message_id: int, first: int,
                    inner: bytes, keys: SKKeys, random_bytes: RandomBytes, max_size: int) -> list[bytes]:
    fixed = IKE_HEADER_LEN + GENERIC_PAYLOAD_HEADER_LEN + SKF_EXTRA
    # Largest chunk whose protected form fits in max_size.
    room = max_size - fixed - keys.encr.iv_len - keys.icv_len
    bs = max(keys.encr.block_size, 1)
    chunk = (room // bs) * bs - 1  # leave the pad length byte inside the last block
    if chunk < 1:
        raise ValueError(f"fragment size {max_size} leaves no room for data")
    pieces = [inner[i:i + chunk] for i in range(0, len(inner), chunk)] or [b""]
    total = len(pieces)
    if total > 0xFFFF:
        raise ValueError("message needs more than 65535 fragments")
    out = []
    for num, piece in enumerate(pieces, 1):
        length = fixed + len(piece) + keys.overhead(len(piece))
        nxt = first if num == 1 else PayloadType.NONE
        head = encode_header(spi_i, spi_r, PayloadType.SKF, exchange, flags, message_id, length) + \
            struct.pack("!BBHHH", nxt, 0, length - IKE_HEADER_LEN, num, total)
        out.append(head + _protect(keys, head, piece, random_bytes))
    return out


def _head_and_body(raw: bytes, enc: SKPayload | SKFPayload) -> tuple[bytes, bytes]:
    if enc.offset is None:
        raise ValueError("encrypted payload was not decoded from raw bytes")
    start = enc.offset + GENERIC_PAYLOAD_HEADER_LEN + (SKF_EXTRA if isinstance(enc, SKFPayload) else 0)
    return raw[:start], raw[start:]


def decrypt_fragment(raw: bytes, msg: Message, keys: SKKeys) -> bytes:
    """Verify and decrypt the SK or SKF payload of ``msg`` (decoded from ``raw``); returns the
    inner bytes (payload chain, or a piece of it for a fragment)."""
    enc = msg.encrypted
    if enc is None:
        raise ParseError("message has no encrypted payload", IKE_HEADER_LEN, "SK")
    head, body = _head_and_body(raw, enc)
    return _unprotect(keys, head, body, enc.type_name, len(head))


def open_message(raw: bytes, msg: Message, keys: SKKeys) -> Message:
    """Decrypt an SK message: returns a Message whose payloads are the clear ones before SK
    followed by the decrypted inner payloads. Raises IntegrityError or ParseError."""
    enc = msg.encrypted
    if not isinstance(enc, SKPayload):
        raise ParseError("expected an SK payload", IKE_HEADER_LEN, "SK")
    inner = decrypt_fragment(raw, msg, keys)
    head_len = len(raw) - len(enc.data)
    try:
        payloads = decode_payloads(inner, enc.first_inner, head_len + keys.encr.iv_len, inner=True)
    except ParseError as e:
        raise AuthenticatedParseError.wrap(e) from None
    out = Message(msg.spi_i, msg.spi_r, msg.exchange, msg.message_id, msg.flags,
                  msg.payloads[:-1] + payloads, msg.minor_version)
    out.plain_inner = inner  # the inner payloads as received (RFC 9242 IntAuth_P)
    return out


class FragmentBudgetExceeded(ParseError):
    """An SKF fragment would take an unfinished fragment set over its budget: the set is dropped."""


class FragmentBudget:
    """Bytes held in unfinished SKF fragment sets (RFC 7383) by all IKE SAs of a manager.

    ``per_sa``: the most one IKE SA may hold before IKE_AUTH completes (its peer is not yet
    authenticated; afterwards the reassembler's own ``max_bytes`` applies); ``total``: the most
    all IKE SAs together may hold. Over either, the SA's unfinished set is dropped (its memory
    released) and the fragment refused; the peer retransmits. Counts decrypted fragment content.
    """

    __slots__ = ("per_sa", "total", "held", "peak", "refused_per_sa", "refused_total")

    def __init__(self, per_sa: int = 64 * 1024, total: int = 8 * 1024 * 1024):
        self.per_sa = per_sa
        self.total = total
        self.held = 0
        self.peak = 0
        self.refused_per_sa = 0
        self.refused_total = 0

    def counters(self) -> dict[str, int]:
        return {"fragment_bytes_held": self.held, "fragment_bytes_peak": self.peak,
                "fragment_budget_per_sa": self.per_sa, "fragment_budget_total": self.total,
                "fragment_sets_refused_per_sa": self.refused_per_sa,
                "fragment_sets_refused_total": self.refused_total}


class FragmentReassembler:
    """Collects the SKF fragments of one message (RFC 7383 2.6). Each fragment is verified and
    decrypted on arrival; when all are in, ``add`` returns the reassembled Message.

    Bounded: at most ``max_fragments`` fragments and ``max_bytes`` of decrypted content, and by
    the manager's ``FragmentBudget`` (per SA before IKE_AUTH completes, and for all SAs).
    """

    __slots__ = ("max_fragments", "max_bytes", "budget", "message_id", "total", "first_inner", "pieces",
                 "size")

    def __init__(self, max_fragments: int = 64, max_bytes: int = 128 * 1024,
                 budget: FragmentBudget | None = None):
        self.max_fragments = max_fragments
        self.max_bytes = max_bytes
        self.budget = budget
        self.message_id: int | None = None
        self.total = 0
        self.first_inner: int = PayloadType.NONE
        self.pieces: dict[int, bytes] = {}
        self.size = 0

    def reset(self) -> None:
        """Forget the unfinished set and give its bytes back to the budget."""
        if self.budget is not None:
            self.budget.held -= self.size
        self.message_id = None
        self.total = 0
        self.pieces.clear()
        self.size = 0
        self.first_inner = PayloadType.NONE

    def add(self, raw: bytes, msg: Message, keys: SKKeys, *, pre_auth: bool = False) -> Message | None:
        """One SKF fragment; ``pre_auth``: IKE_AUTH has not completed (the per-SA budget applies)."""
        enc = msg.encrypted
        if not isinstance(enc, SKFPayload):
            raise ParseError("expected an SKF payload", IKE_HEADER_LEN, "SKF")
        if enc.total_fragments > self.max_fragments:
            raise ParseError(f"{enc.total_fragments} fragments exceed the limit of {self.max_fragments}",
                             enc.offset, "SKF")
        if enc.fragment_number != 1 and enc.first_inner != PayloadType.NONE:
            raise ParseError("only the first fragment may name the first inner payload", enc.offset, "SKF")
        piece = decrypt_fragment(raw, msg, keys)  # authenticate before keeping anything
        if self.message_id != msg.message_id:
            self.reset()
            self.message_id = msg.message_id
            self.total = enc.total_fragments
        elif enc.total_fragments != self.total:
            if enc.total_fragments < self.total:
                return None  # RFC 7383 2.6: ignore fragments of an older, larger fragmentation
            self.reset()
            self.message_id = msg.message_id
            self.total = enc.total_fragments
        if enc.fragment_number in self.pieces:
            return None  # duplicate
        if self.size + len(piece) > self.max_bytes:
            self.reset()
            raise ParseError(f"reassembled message exceeds {self.max_bytes} bytes", enc.offset, "SKF")
        b = self.budget
        if b is not None:
            if pre_auth and self.size + len(piece) > b.per_sa:
                self.reset()
                b.refused_per_sa += 1
                raise FragmentBudgetExceeded(f"unfinished fragment set exceeds the per-SA budget of {b.per_sa} "
                                             "bytes before IKE_AUTH", enc.offset, "SKF")
            if b.held + len(piece) > b.total:
                self.reset()
                b.refused_total += 1
                raise FragmentBudgetExceeded(f"fragment sets of all IKE SAs exceed the budget of {b.total} bytes",
                                             enc.offset, "SKF")
            b.held += len(piece)
            b.peak = max(b.peak, b.held)
        self.pieces[enc.fragment_number] = piece
        self.size += len(piece)
        if enc.fragment_number == 1:
            self.first_inner = enc.first_inner
        if len(self.pieces) < self.total:
            return None
        inner = b"".join(self.pieces[i] for i in range(1, self.total + 1))
        first = self.first_inner
        self.reset()
        try:
            payloads = decode_payloads(inner, first, 0, inner=True)
        except ParseError as e:
            raise AuthenticatedParseError.wrap(e) from None
        out = Message(msg.spi_i, msg.spi_r, msg.exchange, msg.message_id, msg.flags,
                      msg.payloads[:-1] + payloads, msg.minor_version)
        out.plain_inner = inner  # the inner payloads as received (RFC 9242 IntAuth_P)
        return out
