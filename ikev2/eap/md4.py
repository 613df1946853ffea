"""MD4 message digest (RFC 1320), pure Python.

OpenSSL 3 moved MD4 to its "legacy" provider, which ``hashlib`` and ``cryptography`` do not
load by default, yet MS-CHAPv2 (RFC 2759 8.3 NtPasswordHash, 8.4 HashNtPasswordHash) needs
it.  MD4 is broken as a general-purpose hash; it is used here only where a protocol mandates
it.  Speed is irrelevant: MS-CHAPv2 hashes a password (at most 512 bytes) and a 16-byte hash.
"""
from __future__ import annotations

import struct

__all__ = ["md4", "MD4"]

_MASK = 0xFFFFFFFF


def _rotl(x: int, n: int) -> int:
    x &= _MASK
    return ((x << n) | (x >> (32 - n))) & _MASK


def _f(x: int, y: int, z: int) -> int:
    return (x & y) | (~x & z)


def _g(x: int, y: int, z: int) -> int:
    return (x & y) | (x & z) | (y & z)


def _h(x: int, y: int, z: int) -> int:
    return x ^ y ^ z


# RFC 1320 3.4: order of the message words and shift amounts of each round.
_R1 = list(zip(range(16), [3, 7, 11, 19] * 4, strict=True))
_R2 = list(zip([0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15], [3, 5, 9, 13] * 4, strict=True))
_R3 = list(zip([0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15], [3, 9, 11, 15] * 4, strict=True))


def _compress(state: list[int], block: bytes) -> None:
    x = struct.unpack("<16I", block)
    a, b, c, d = state
    for k, s in _R1:
        t = _rotl(a + _f(b, c, d) + x[k], s)
        a, b, c, d = d, t, b, c
    for k, s in _R2:
        t = _rotl(a + _g(b, c, d) + x[k] + 0x5A827999, s)
        a, b, c, d = d, t, b, c
    for k, s in _R3:
        t = _rotl(a + _h(b, c, d) + x[k] + 0x6ED9EBA1, s)
        a, b, c, d = d, t, b, c
    state[0] = (state[0] + a) & _MASK
    state[1] = (state[1] + b) & _MASK
    state[2] = (state[2] + c) & _MASK
    state[3] = (state[3] + d) & _MASK


class MD4:
    """Incremental MD4 with the ``hashlib``-like subset ``update``/``digest``/``hexdigest``."""

    digest_size = 16
    block_size = 64
    name = "md4"

    def __init__(self, data: bytes = b""):
        self._state = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476]
        self._buf = b""
        self._len = 0
        if data:
            self.update(data)

    def update(self, data: bytes) -> None:
        data = bytes(data)
        self._len += len(data)
        buf = self._buf + data
        full = len(buf) - len(buf) % 64
        for off in range(0, full, 64):
            _compress(self._state, buf[off:off + 64])
        self._buf = buf[full:]

    def copy(self) -> MD4:
        other = MD4()
        other._state = list(self._state)
        other._buf = self._buf
        other._len = self._len
        return other

    def digest(self) -> bytes:
        # RFC 1320 3.1/3.2: pad with 0x80, zeros to 56 mod 64, then the bit length (LE, 64 bits).
        state = list(self._state)
        tail = self._buf + b"\x80" + b"\x00" * ((55 - len(self._buf)) % 64)
        tail += struct.pack("<Q", (self._len * 8) & 0xFFFFFFFFFFFFFFFF)
        for off in range(0, len(tail), 64):
            _compress(state, tail[off:off + 64])
        return struct.pack("<4I", *state)

    def hexdigest(self) -> str:
        return self.digest().hex()


def md4(data: bytes) -> bytes:
    """The 16-byte MD4 digest of ``data``."""
    return MD4(data).digest()
