"""Encode and decode are exact inverses; the decoder raises nothing but ParseError."""
from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ikev2.errors import ParseError
from ikev2.message import decode_message, encode_message
from tests.strategies import messages

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(messages())
def test_decode_inverts_encode(msg):
    raw = encode_message(msg)
    decoded = decode_message(raw)
    assert decoded == msg
    assert encode_message(decoded) == raw


@SETTINGS
@given(messages(), st.data())
def test_mutated_messages_raise_only_parse_error(msg, data):
    raw = bytearray(encode_message(msg))
    rnd = random.Random(data.draw(st.integers(0, 2**32)))
    for _ in range(data.draw(st.integers(1, 4))):
        op = rnd.randrange(3)
        if op == 0 and raw:
            raw[rnd.randrange(len(raw))] = rnd.randrange(256)
        elif op == 1 and raw:
            del raw[rnd.randrange(len(raw)):]
        else:
            raw += bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 8)))
    try:
        out = decode_message(bytes(raw))
    except ParseError:
        return
    # Whatever decodes must re-encode to a message that decodes to the same thing.
    assert decode_message(encode_message(out)) == out


@SETTINGS
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_parse_error(raw):
    try:
        decode_message(raw)
    except ParseError:
        pass
