"""atheris harness for the RFC 9329 TCP stream parser (vpn_gw.transport.tcp Deframer, classify).

The input is a byte stream plus the parameters an attacker cannot choose but the gateway can
(which side, the frame-size limit before authentication) and the read boundaries (which the
network chooses). Properties, for every input:

* feeding the stream in any split gives the same frames as feeding it whole, or the same
  FramingError (nothing depends on how TCP segments it);
* only FramingError escapes (FrameTooLarge for a Length above the limit);
* what stays buffered between reads is less than one frame of the limit (or the 6-octet prefix);
* every frame classifies as IKE, ESP, keepalive or runt, and ``frame(payload)`` rebuilds it.

Run: .venv/bin/python tests/fuzz/fuzz_tcp_stream.py [libFuzzer flags] [CORPUS_DIR ...]
(bench/fuzz_harnesses.py runs it for longer.)
"""
from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from vpn_gw.transport import tcp as T


def _feed_all(d: T.Deframer, chunks: list[bytes]) -> tuple[list[bytes], str | None, int]:
    frames: list[bytes] = []
    most = 0
    for c in chunks:
        try:
            frames += d.feed(c)
        except T.FramingError as e:
            return frames, type(e).__name__, most
        most = max(most, d.buffered)
    return frames, None, most


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    expect_prefix = fdp.ConsumeBool()
    max_frame = fdp.ConsumeIntInRange(T.MIN_FRAME, T.MAX_FRAME)
    cuts = sorted(fdp.ConsumeIntInRange(0, 4096) for _ in range(fdp.ConsumeIntInRange(0, 8)))
    stream = fdp.ConsumeBytes(fdp.remaining_bytes())
    if expect_prefix and stream[:1] == b"\x00":
        stream = T.PREFIX + stream  # reach the framing too, not only the prefix check
    whole, whole_err, _ = _feed_all(T.Deframer(expect_prefix, max_frame), [stream])
    chunks, last = [], 0
    for c in cuts:
        c = min(c, len(stream))
        chunks.append(stream[last:c])
        last = c
    chunks.append(stream[last:])
    split, split_err, most = _feed_all(T.Deframer(expect_prefix, max_frame), chunks)
    # On a framing error the frames completed in the same read are not returned (the connection
    # is closed anyway), so with an error the split run may have delivered more, never other ones.
    same = (split, split_err) == (whole, whole_err) if whole_err is None else \
        split_err == whole_err and split[:len(whole)] == whole
    if not same:
        raise AssertionError(f"split changes the result: {(len(whole), whole_err)} vs {(len(split), split_err)}")
    if most >= max(max_frame, len(T.PREFIX)):  # a partial frame, its Length already checked
        raise AssertionError(f"{most} octets buffered with max_frame {max_frame}")
    for f in whole:
        if not f or len(f) + 2 > max_frame:
            raise AssertionError("a frame outside the limits came out")
        kind, _payload = T.classify(f)
        if kind not in (T.IKE, T.ESP, T.KEEPALIVE, T.RUNT):
            raise AssertionError(kind)
        if T.Deframer(False).feed(T.frame(f)) != [f]:
            raise AssertionError("frame() does not rebuild the frame")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
