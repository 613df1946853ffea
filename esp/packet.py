"""ESP packet format (RFC 4303 section 2) and processing (sections 3.3 and 3.4).

::

    SPI (4) | Sequence Number (4) | IV | ciphertext of
        [ Payload | Padding 1,2,3,... | Pad Length (1) | Next Header (1) ] | ICV

Two layers:

* ``esp_seal`` / ``esp_open`` / ``parse_trailer``: stateless, explicit IV; used by the SA-level
  functions and by the test vectors.
* ``encapsulate`` / ``decapsulate``: the SA-level operations the data plane calls. They allocate
  sequence numbers and IVs, run the anti-replay check before and the window update after the
  ICV check (RFC 4303 3.4.3), check the padding and the next header, and count delivered
  traffic and drops by reason on the SA.
"""
from __future__ import annotations

import struct

from .cipher import EspCipher
from .compiled import VERDICTS, CompiledReplayWindow
from .errors import DropReason, EspError
from .ip import PROTO_IPIP, PROTO_IPV6, PROTO_NONE, parse_ipv4, parse_ipv6
from .replay import MASK32
from .sa import Direction, EspSA

ESP_HEADER_LEN = 8
TRAILER_LEN = 2  # Pad Length + Next Header
MAX_PAD = 255
_PAD_BYTES = bytes(range(1, MAX_PAD + 1))  # RFC 4303 2.4 default padding: 1, 2, 3, ...
_SPI_SEQ = struct.Struct("!II")
_AEAD_MIN_LEN = ESP_HEADER_LEN + 8 + 16 + TRAILER_LEN  # header, explicit IV, ICV, trailer


def peek_spi(esp_bytes: bytes) -> int:
    """The SPI of an ESP packet, for the SA lookup (``MALFORMED`` if no ESP header fits)."""
    if len(esp_bytes) < ESP_HEADER_LEN:
        raise EspError(DropReason.MALFORMED, "shorter than the ESP header")
    return int.from_bytes(esp_bytes[:4], "big")


def pad_length(payload_len: int, align: int) -> int:
    """Minimal padding so that payload + padding + 2-byte trailer is a multiple of ``align``."""
    return -(payload_len + TRAILER_LEN) % align


def esp_seal(
    cipher: EspCipher,
    spi: int,
    seq: int,
    iv: bytes,
    payload: bytes,
    next_header: int,
    *,
    esn: bool = False,
) -> bytes:
    """Build a whole ESP packet for full sequence number ``seq`` with the given explicit IV."""
    if not 0 <= next_header <= 255:
        raise ValueError("next header must be 0..255")
    pad = pad_length(len(payload), cipher.align)
    plaintext = b"".join((payload, _PAD_BYTES[:pad], bytes((pad, next_header))))
    header = struct.pack("!II", spi, seq & MASK32)
    seq_hi = (seq >> 32).to_bytes(4, "big") if esn else b""
    return header + cipher.seal(header, iv, plaintext, seq_hi)


def esp_open(cipher: EspCipher, packet: bytes, seq: int, *, esn: bool = False) -> bytes:
    """Verify and decrypt ``packet`` assuming full sequence number ``seq``; returns the
    plaintext (payload | padding | pad length | next header). No anti-replay here."""
    if len(packet) < ESP_HEADER_LEN + cipher.iv_len + cipher.icv_len + TRAILER_LEN:
        raise EspError(DropReason.MALFORMED, f"ESP packet of {len(packet)} bytes too short")
    seq_hi = (seq >> 32).to_bytes(4, "big") if esn else b""
    return cipher.open(packet[:ESP_HEADER_LEN], packet[ESP_HEADER_LEN:], seq_hi)


def parse_trailer(plaintext: bytes) -> tuple[int, bytes]:
    """Split decrypted plaintext into (next header, payload), checking the padding.

    The padding must be exactly 1, 2, ..., Pad Length (RFC 4303 2.4: the receiver SHOULD
    check it; we do), otherwise ``BAD_PADDING``.
    """
    if len(plaintext) < TRAILER_LEN:
        raise EspError(DropReason.MALFORMED, "no room for the ESP trailer")
    pad, next_header = plaintext[-2], plaintext[-1]
    end = len(plaintext) - TRAILER_LEN - pad
    if end < 0:
        raise EspError(DropReason.BAD_PADDING, f"pad length {pad} exceeds payload")
    if plaintext[end : end + pad] != _PAD_BYTES[:pad]:
        raise EspError(DropReason.BAD_PADDING, "padding bytes not 1, 2, 3, ...")
    return next_header, plaintext[:end]


def _inner_packet(next_header: int, payload: bytes) -> bytes:
    """Validate a tunnel-mode inner packet and strip TFC padding (RFC 4303 2.7) after it."""
    if next_header == PROTO_IPIP:
        if not payload or payload[0] >> 4 != 4:
            raise EspError(DropReason.MALFORMED, "next header 4 but inner packet not IPv4")
        length = parse_ipv4(payload, verify_checksum=False).total_length
    elif next_header == PROTO_IPV6:
        if not payload or payload[0] >> 4 != 6:
            raise EspError(DropReason.MALFORMED, "next header 41 but inner packet not IPv6")
        length = parse_ipv6(payload).total_length
    else:
        return payload
    return payload if length == len(payload) else payload[:length]


def encapsulate(sa_out: EspSA, inner_ip_packet: bytes, next_header: int) -> bytes:
    """Protect one packet with an outbound SA; returns the ESP packet (no outer IP/UDP header).

    Raises ``EspError`` (``SA_DEAD``, ``LIFETIME_EXPIRED``, ``SEQ_EXHAUSTED``), counted on the SA.
    """
    if sa_out.direction is not Direction.OUT:
        raise ValueError("encapsulate needs an outbound SA")
    try:
        lt = sa_out.lifetime
        if sa_out.dead or sa_out.expired or lt.hard_bytes is not None or lt.hard_packets is not None:
            sa_out.ensure_usable()  # otherwise it has nothing to check (the per-packet path)
        seq = sa_out.seq
        if seq >= sa_out.seq_limit:
            sa_out.next_seq()  # raises SEQ_EXHAUSTED
        seq += 1  # next_seq(), inlined
        sa_out.seq = seq
        cipher = sa_out.cipher
        if cipher.is_aead and 0 <= next_header <= 255:  # (compiled when built: seal_packet)
            packet = cipher.seal_packet(sa_out.spi, seq, inner_ip_packet, next_header, sa_out.esn)
        else:
            packet = esp_seal(
                cipher, sa_out.spi, seq, cipher.iv_for(seq), inner_ip_packet,
                next_header, esn=sa_out.esn,
            )
    except EspError as exc:
        sa_out.stats.record_drop(exc.reason)
        raise
    stats = sa_out.stats
    stats.packets += 1
    stats.bytes += len(inner_ip_packet)
    return packet


def encapsulate_many(sa_out: EspSA, packets: list[bytes]) -> list[bytes]:
    """``encapsulate`` for each IP packet of ``packets`` (non-empty; next header 4 for IPv4,
    else 41) in order: the ESP packets of those it protected (a refused one is counted on the SA
    and left out, as ``encapsulate`` counts and raises).

    With the compiled path (esp/compiled.py) and nothing for a per-packet check to find (not
    dead or expired, no hard volume limit, enough sequence numbers left) the whole list is sealed
    in one call, sequence numbers and counters advanced together; otherwise packet by packet.
    """
    if sa_out.direction is not Direction.OUT:
        raise ValueError("encapsulate_many needs an outbound SA")
    fast = sa_out.cipher.fast
    lt = sa_out.lifetime
    n = len(packets)
    if (fast is not None and not sa_out.dead and not sa_out.expired and lt.hard_bytes is None
            and lt.hard_packets is None and sa_out.seq + n <= sa_out.seq_limit):
        datagrams, nbytes = fast.seal_many(sa_out.spi, sa_out.seq + 1, packets, sa_out.esn)
        sa_out.seq += n
        stats = sa_out.stats
        stats.packets += n
        stats.bytes += nbytes
        return datagrams
    out = []
    for pkt in packets:
        try:
            out.append(encapsulate(sa_out, pkt, PROTO_IPIP if pkt[0] >> 4 == 4 else PROTO_IPV6))
        except EspError:
            pass  # counted on the SA
    return out


def decapsulate(sa_in: EspSA, esp_bytes: bytes) -> tuple[int, bytes]:
    """Verify and decrypt one ESP packet with an inbound SA; returns (next header, inner packet).

    Order (RFC 4303 3.4): lengths and SPI; sequence number inference (ESN) and anti-replay
    check; ICV verification and decryption; window update (only now); padding check; next
    header check. A TFC dummy packet (next header 59) raises ``EspError(DUMMY)`` after the
    window update. Every refusal is counted on the SA by reason and raised as ``EspError``.
    """
    if sa_in.direction is not Direction.IN or sa_in.replay is None:
        raise ValueError("decapsulate needs an inbound SA")
    try:
        lt = sa_in.lifetime
        if sa_in.dead or sa_in.expired or lt.hard_bytes is not None or lt.hard_packets is not None:
            sa_in.ensure_usable()  # otherwise it has nothing to check (the per-packet path)
        replay = sa_in.replay
        fast = sa_in.cipher.fast
        if fast is not None and replay.__class__ is CompiledReplayWindow:
            # compiled (esp/compiled.py): the steps below, in the same order, in one call
            res = fast.decapsulate(esp_bytes, sa_in.spi, replay, sa_in.nh_mask)
            if res.__class__ is int:
                raise EspError(VERDICTS[res], "compiled path")
            next_header, inner = res  # type: ignore[misc]
            stats = sa_in.stats
            stats.packets += 1
            stats.bytes += len(inner)
            return next_header, inner
        if len(esp_bytes) < ESP_HEADER_LEN:
            raise EspError(DropReason.MALFORMED, "shorter than the ESP header")
        spi, seq_low = _SPI_SEQ.unpack_from(esp_bytes)
        if spi != sa_in.spi:
            raise EspError(DropReason.SPI_MISMATCH, f"{spi:#010x} != {sa_in.spi:#010x}")
        seq = replay.infer_seq(seq_low) if replay.esn else seq_low
        if not replay.check(seq):
            raise EspError(DropReason.REPLAY, f"seq {seq}")
        cipher = sa_in.cipher
        if cipher.is_aead:
            if len(esp_bytes) < _AEAD_MIN_LEN:
                raise EspError(DropReason.MALFORMED, f"ESP packet of {len(esp_bytes)} bytes too short")
            plaintext = cipher.open_packet(esp_bytes, seq, sa_in.esn)
        else:
            plaintext = esp_open(cipher, esp_bytes, seq, esn=sa_in.esn)
        replay.update(seq)  # authentic: the window moves even if the trailer is then refused
        # the trailer (parse_trailer, inlined: this is the per-packet path)
        n = len(plaintext)
        if n < TRAILER_LEN:
            raise EspError(DropReason.MALFORMED, "no room for the ESP trailer")
        pad, next_header = plaintext[-2], plaintext[-1]
        end = n - TRAILER_LEN - pad
        if end < 0:
            raise EspError(DropReason.BAD_PADDING, f"pad length {pad} exceeds payload")
        if pad and plaintext[end : end + pad] != _PAD_BYTES[:pad]:
            raise EspError(DropReason.BAD_PADDING, "padding bytes not 1, 2, 3, ...")
        if next_header == PROTO_NONE:
            raise EspError(DropReason.DUMMY, f"seq {seq}")
        if next_header not in sa_in.allowed_next_headers:
            raise EspError(DropReason.BAD_NEXT_HEADER, f"next header {next_header}")
        inner = _inner_of(next_header, plaintext, end)
    except EspError as exc:
        sa_in.stats.record_drop(exc.reason)
        raise
    stats = sa_in.stats
    stats.packets += 1
    stats.bytes += len(inner)
    return next_header, inner


def decapsulate_many(sa_in: EspSA, packets: list[bytes],
                     in4: tuple[int, int, int, int] | None = None) -> tuple[list[bytes], list[bytes], int, int]:
    """``decapsulate`` for each ESP packet of ``packets`` (bytes, in order) with one inbound SA:
    ``(checked, unchecked, policy_drops, opened)``.

    ``in4`` (remote lo, remote hi, local lo, local hi), when the SA's selectors are one IPv4
    range on each side of any protocol and port: an inner IPv4 packet whose source and
    destination lie in them is in ``checked``, one that does not is counted in
    ``policy_drops`` (RFC 4301 5.2: the caller counts it on the Child SA); every other inner
    packet is in ``unchecked`` for the caller's own selector check. ``opened``: how many
    packets decapsulated. Counters and refusals are counted on the SA as ``decapsulate`` counts
    them (refused packets are left out).

    With the compiled path (esp/compiled.py) and nothing for a per-packet check to find (not
    dead or expired, no hard volume limit) the whole list is one call; otherwise packet by
    packet (then everything is ``unchecked``).
    """
    if sa_in.direction is not Direction.IN or sa_in.replay is None:
        raise ValueError("decapsulate_many needs an inbound SA")
    replay = sa_in.replay
    fast = sa_in.cipher.fast
    lt = sa_in.lifetime
    if (fast is not None and replay.__class__ is CompiledReplayWindow and not sa_in.dead and not sa_in.expired
            and lt.hard_bytes is None and lt.hard_packets is None):
        checked, unchecked, opened, nbytes, policy, verdicts = fast.decapsulate_many(
            packets, sa_in.spi, replay, sa_in.nh_mask, in4)
        stats = sa_in.stats
        stats.packets += opened
        stats.bytes += nbytes
        for v in verdicts:
            stats.record_drop(VERDICTS[v])
        return checked, unchecked, policy, opened
    unchecked = []
    for pkt in packets:
        try:
            unchecked.append(decapsulate(sa_in, pkt)[1])
        except EspError:
            pass  # counted on the SA
    return [], unchecked, 0, len(unchecked)


def _inner_of(next_header: int, plaintext: bytes, end: int) -> bytes:
    """``_inner_packet(next_header, plaintext[:end])`` with a single copy: the same checks
    (those of parse_ipv4 without checksum / parse_ipv6), TFC padding stripped."""
    if next_header == PROTO_IPIP:
        if end == 0 or plaintext[0] >> 4 != 4:
            raise EspError(DropReason.MALFORMED, "next header 4 but inner packet not IPv4")
        if end < 20:
            raise EspError(DropReason.MALFORMED, "IPv4 packet shorter than 20 bytes")
        hlen = (plaintext[0] & 0x0F) * 4
        if hlen < 20:
            raise EspError(DropReason.MALFORMED, "IPv4 IHL below 5")
        length = (plaintext[2] << 8) | plaintext[3]
        if length < hlen or length > end:
            raise EspError(DropReason.MALFORMED, "IPv4 total length inconsistent")
        return plaintext[:length]
    if next_header == PROTO_IPV6:
        if end == 0 or plaintext[0] >> 4 != 6:
            raise EspError(DropReason.MALFORMED, "next header 41 but inner packet not IPv6")
        if end < 40:
            raise EspError(DropReason.MALFORMED, "IPv6 packet shorter than 40 bytes")
        plen = (plaintext[4] << 8) | plaintext[5]
        if plen == 0 and end > 40:
            raise EspError(DropReason.MALFORMED, "IPv6 jumbogram not supported")
        if 40 + plen > end:
            raise EspError(DropReason.MALFORMED, "IPv6 payload length exceeds packet")
        return plaintext[: 40 + plen]
    return plaintext[:end]
