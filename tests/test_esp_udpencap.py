"""RFC 3948 demultiplexing on UDP port 4500."""
from __future__ import annotations

import pytest

from esp import DropReason, EspError, Kind, classify, ike_with_marker, keepalive

IKE = bytes(range(28)) + b"payloads"


def test_keepalive() -> None:
    assert keepalive() == b"\xff"
    assert classify(keepalive()) == (Kind.KEEPALIVE, b"")


def test_ike_marker_round_trip() -> None:
    wire = ike_with_marker(IKE)
    assert wire[:4] == b"\0\0\0\0"
    assert classify(wire) == (Kind.IKE, IKE)


def test_esp() -> None:
    esp = b"\x00\x00\x10\x01" + b"\x00\x00\x00\x01" + bytes(40)
    assert classify(esp) == (Kind.ESP, esp)
    assert classify(esp[:8])[0] is Kind.ESP


@pytest.mark.parametrize("datagram", [
    b"", b"\x00", b"\xfe", b"\xff\xff", b"\x00\x00\x00",  # too short for anything
    b"\x00\x00\x00\x00" + bytes(27),  # marker + truncated IKE header
    b"\x00\x00\x00\x01\x00\x00\x00",  # ESP shorter than SPI + sequence number
])
def test_malformed(datagram: bytes) -> None:
    with pytest.raises(EspError) as err:
        classify(datagram)
    assert err.value.reason is DropReason.MALFORMED
