"""Property tests: the key locator finds every key where a TOML writer put it; durations."""
from __future__ import annotations

import json
import tomllib

from hypothesis import given, settings
from hypothesis import strategies as st

from vpn_gw.config import KeyLocator
from vpn_gw.durations import format_duration, parse_duration, parse_size

keys = st.one_of(st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True),
                 st.text(st.characters(codec="ascii", categories=("L", "N", "Zs", "P")),
                         min_size=1, max_size=6))
scalars = st.one_of(st.integers(-10**6, 10**6), st.booleans(),
                    st.text(max_size=12).filter(lambda s: "\x7f" not in s and
                                                all(ord(c) >= 32 for c in s)))


def tkey(k: str) -> str:
    return k if all(c.isalnum() or c in "_-" for c in k) and k.isascii() else json.dumps(k, ensure_ascii=False)


def tval(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    return json.dumps(v, ensure_ascii=False)


@st.composite
def documents(draw):
    """A TOML text with [[connection]]/[[connection.child]]-like nesting and the expected lines."""
    lines: list[str] = []
    expect: dict[tuple, int] = {}

    def table(prefix, nkeys):
        used = set()
        for _ in range(nkeys):
            k = draw(keys.filter(lambda x: x not in used and x not in ("conn", "child")))
            used.add(k)
            if draw(st.booleans()):
                vals = draw(st.lists(scalars, max_size=3))
                if draw(st.booleans()) and vals:
                    lines.append(f"{tkey(k)} = [  # multi-line")
                    expect[prefix + (k,)] = len(lines)
                    for i, v in enumerate(vals):
                        lines.append(f"    {tval(v)},")
                        expect[prefix + (k, i)] = len(lines)
                    lines.append("]")
                else:
                    lines.append(f"{tkey(k)} = [{', '.join(map(tval, vals))}]")
                    expect[prefix + (k,)] = len(lines)
            else:
                lines.append(f"{tkey(k)} = {tval(draw(scalars))}   # comment = [x]")
                expect[prefix + (k,)] = len(lines)

    table((), draw(st.integers(0, 3)))
    for i in range(draw(st.integers(0, 3))):
        lines.append("")
        lines.append("[[conn]]")
        expect[("conn", i)] = len(lines)
        table(("conn", i), draw(st.integers(0, 3)))
        for j in range(draw(st.integers(0, 2))):
            lines.append("  [[conn.child]]")
            expect[("conn", i, "child", j)] = len(lines)
            table(("conn", i, "child", j), draw(st.integers(0, 3)))
    return "\n".join(lines) + "\n", expect


@settings(max_examples=60, deadline=None)
@given(documents())
def test_locator_finds_every_key(doc):
    text, expect = doc
    tomllib.loads(text)  # the generator writes valid TOML
    loc = KeyLocator(text)
    for path, line in expect.items():
        assert loc.line(path) == line, (path, text)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 10**6), st.sampled_from([("s", 1), ("m", 60), ("h", 3600), ("d", 86400), ("", 1)]))
def test_durations_roundtrip(n, unit):
    suffix, mult = unit
    assert parse_duration(f"{n}{suffix}") == n * mult
    assert parse_duration(n) == n
    assert format_duration(n)  # never empty


def test_sizes_and_format_duration():
    assert parse_size("1K") == 1024 and parse_size("2g") == 2 << 30 and parse_size(7) == 7
    assert parse_size("10MiB") == 10 << 20
    for bad in ("-1", "1X", "", True, 1.5):
        try:
            parse_size(bad)
        except ValueError:
            pass
        else:
            raise AssertionError(bad)
    assert format_duration(0) == "0s"
    assert format_duration(59) == "59s"
    assert format_duration(3661) == "1h 1m"
    assert format_duration(90061) == "1d 1h"
