"""atheris harness for the IKEv2 decoder: any input must either decode or raise ParseError.

Run: .venv/bin/python tests/fuzz/fuzz_decoder.py [libFuzzer flags] [CORPUS_DIR ...]
(bench/fuzz_decoder.py runs it for longer and reports executions and findings.)
"""
from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from ikev2.constants import PayloadType
    from ikev2.errors import ParseError
    from ikev2.message import decode_message, decode_payloads, encode_message


def test_one_input(data: bytes) -> None:
    try:
        msg = decode_message(data)
    except ParseError:
        msg = None
    if msg is not None:
        # Anything that decodes must re-encode to bytes that decode to the same message.
        again = decode_message(encode_message(msg))
        if again != msg:
            raise AssertionError("decode(encode(decode(x))) != decode(x)")
    # The inner-chain decoder (what SK content goes through) on the same bytes.
    if data:
        first = data[0] % 20 + PayloadType.SA if data[0] < 240 else data[0]
        try:
            decode_payloads(data[1:], first, 0, inner=True)
        except ParseError:
            pass


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
