"""SA state: lifetimes (time passed in, bytes, packets), sequence number exhaustion, wipe."""
from __future__ import annotations

import pytest

from esp import (
    Direction,
    DropReason,
    EncrTransform,
    EspCipher,
    EspError,
    EspSA,
    Lifetime,
    decapsulate,
    encapsulate,
)

SPI = 0x12345678
PKT = bytes([0x45, 0, 0, 20]) + bytes(6) + b"\x00\x00" + bytes(8)  # checksum not checked


def cipher() -> EspCipher:
    return EspCipher(EncrTransform.AES_GCM_16, 128, None, bytes(range(20)))


def test_time_lifetimes_use_the_passed_clock() -> None:
    sa = EspSA(Direction.OUT, SPI, cipher(), created_at=1000.0,
               lifetime=Lifetime(soft_seconds=60, hard_seconds=90))
    assert sa.check_lifetime(1000.0) is None
    assert sa.check_lifetime(1059.9) is None
    assert sa.check_lifetime(1060.0) == "soft"
    assert sa.check_lifetime(1089.0) == "soft"
    encapsulate(sa, PKT, 4)  # still usable before hard
    assert sa.check_lifetime(1090.0) == "hard"
    with pytest.raises(EspError) as err:
        encapsulate(sa, PKT, 4)
    assert err.value.reason is DropReason.LIFETIME_EXPIRED
    assert sa.stats.drops[DropReason.LIFETIME_EXPIRED] == 1
    assert sa.check_lifetime(1000.0) == "hard"  # stays expired


@pytest.mark.parametrize("what", ["bytes", "packets"])
def test_volume_lifetimes(what: str) -> None:
    if what == "bytes":
        lifetime = Lifetime(soft_bytes=3 * len(PKT), hard_bytes=5 * len(PKT))
    else:
        lifetime = Lifetime(soft_packets=3, hard_packets=5)
    out = EspSA(Direction.OUT, SPI, cipher(), lifetime=lifetime)
    inb = EspSA(Direction.IN, SPI, cipher(), lifetime=lifetime)
    states = []
    for _ in range(5):
        states.append(out.check_lifetime(0))
        decapsulate(inb, encapsulate(out, PKT, 4))
    assert states == [None, None, None, "soft", "soft"]
    assert out.check_lifetime(0) == inb.check_lifetime(0) == "hard"
    for fn in (lambda: encapsulate(out, PKT, 4), lambda: decapsulate(inb, b"")):
        with pytest.raises(EspError) as err:
            fn()
        assert err.value.reason is DropReason.LIFETIME_EXPIRED


def test_hard_volume_limit_enforced_without_clock() -> None:
    sa = EspSA(Direction.OUT, SPI, cipher(), lifetime=Lifetime(hard_packets=2))
    encapsulate(sa, PKT, 4)
    encapsulate(sa, PKT, 4)
    with pytest.raises(EspError) as err:
        encapsulate(sa, PKT, 4)
    assert err.value.reason is DropReason.LIFETIME_EXPIRED


def test_seq_exhaustion_without_esn() -> None:
    sa = EspSA(Direction.OUT, SPI, cipher())
    assert sa.check_lifetime(0) is None
    sa.seq = (1 << 32) - (1 << 20) - 1
    assert sa.check_lifetime(0) is None
    encapsulate(sa, PKT, 4)  # uses 2^32 - 2^20
    assert sa.check_lifetime(0) == "soft"  # rekey well before the end
    sa.seq = (1 << 32) - 2
    packet = encapsulate(sa, PKT, 4)
    assert packet[4:8] == b"\xff\xff\xff\xff"  # the last number is used ...
    with pytest.raises(EspError) as err:  # ... and never cycles to 0
        encapsulate(sa, PKT, 4)
    assert err.value.reason is DropReason.SEQ_EXHAUSTED
    assert sa.stats.drops[DropReason.SEQ_EXHAUSTED] == 1
    assert sa.seq == (1 << 32) - 1
    assert sa.check_lifetime(0) == "hard"


def test_seq_with_esn_goes_past_2_32() -> None:
    sa = EspSA(Direction.OUT, SPI, cipher(), esn=True)
    sa.seq = (1 << 32) - 1
    assert sa.check_lifetime(0) is None
    encapsulate(sa, PKT, 4)
    assert sa.seq == 1 << 32
    sa.seq = (1 << 64) - 1
    assert sa.check_lifetime(0) == "hard"
    with pytest.raises(EspError) as err:
        encapsulate(sa, PKT, 4)
    assert err.value.reason is DropReason.SEQ_EXHAUSTED


def test_inbound_seq_space_end_is_reported() -> None:
    inb = EspSA(Direction.IN, SPI, cipher(), seq_soft_margin=10)
    assert inb.replay is not None
    inb.replay.update((1 << 32) - 5)
    assert inb.check_lifetime(0) == "soft"
    inb.replay.update((1 << 32) - 1)
    assert inb.check_lifetime(0) == "hard"


def test_wipe_drops_keys_and_refuses_traffic() -> None:
    out = EspSA(Direction.OUT, SPI, cipher())
    inb = EspSA(Direction.IN, SPI, cipher())
    packet = encapsulate(out, PKT, 4)
    out.wipe()
    inb.wipe()
    assert out.cipher.wiped and out.cipher._aead is None and out.cipher._salt == b""
    for fn in (lambda: encapsulate(out, PKT, 4), lambda: decapsulate(inb, packet)):
        with pytest.raises(EspError) as err:
            fn()
        assert err.value.reason is DropReason.SA_DEAD
    assert out.check_lifetime(0) == "hard"
    assert "wiped" in repr(out.cipher)


def test_bad_sa_parameters() -> None:
    with pytest.raises(ValueError):
        EspSA(Direction.OUT, 0, cipher())
    with pytest.raises(ValueError):
        EspSA(Direction.OUT, 1 << 32, cipher())
    with pytest.raises(ValueError):
        Lifetime(soft_seconds=10, hard_seconds=5)
    with pytest.raises(ValueError):
        Lifetime(hard_bytes=-1)
    with pytest.raises(ValueError):
        EspSA(Direction.IN, SPI, cipher(), replay_window=8)
