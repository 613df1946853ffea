"""Locating keys in the TOML source (tomllib gives no positions): ``KeyLocator``."""
from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Sequence


def format_key_path(path: Iterable[str | int]) -> str:
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            s = p if re.fullmatch(r"[A-Za-z0-9_-]+", p) else '"' + p.replace('"', '\\"') + '"'
            out += ("." if out else "") + s
    return out


class KeyLocator:
    """Maps key paths like ("connection", 1, "child", 0, "local_ts", 2) to 1-based source lines.

    A small scanner over (already tomllib-validated) TOML text: it records the line of every
    table header, array-of-tables entry, key, inline-table key and array element.
    ``line(path)`` returns the line of the longest recorded prefix of path, so a missing key
    points at its table's header.
    """

    _BARE = re.compile(r"[A-Za-z0-9_-]+")

    def __init__(self, text: str):
        self.text = text
        self.lines: dict[tuple, int] = {}
        self._aot: dict[tuple, int] = {}
        self._nl = [m.start() for m in re.finditer("\n", text)]
        try:
            self._scan()
        except Exception:  # never let locating break error reporting
            pass

    def line(self, path: Iterable[str | int]) -> int | None:
        p = tuple(path)
        while p:
            if p in self.lines:
                return self.lines[p]
            p = p[:-1]
        return None

    # -- scanner ---------------------------------------------------------------------------
    def _line_of(self, i: int) -> int:
        import bisect
        return bisect.bisect_left(self._nl, i) + 1

    def _record(self, path: tuple, i: int):
        self.lines.setdefault(path, self._line_of(i))

    def _skip_ws(self, i: int, newlines: bool) -> int:
        t = self.text
        while i < len(t):
            c = t[i]
            if c in " \t\r" or (newlines and c == "\n"):
                i += 1
            elif c == "#" :
                while i < len(t) and t[i] != "\n":
                    i += 1
            else:
                break
        return i

    def _key(self, i: int) -> tuple[list[str], int]:
        """Parse a dotted key starting at i; returns parts and the index after it."""
        t = self.text
        parts = []
        while True:
            i = self._skip_ws(i, False)
            if t[i] in "\"'":
                s, i = self._string(i)
                parts.append(s)
            else:
                m = self._BARE.match(t, i)
                if not m:
                    raise ValueError("bad key")
                parts.append(m.group())
                i = m.end()
            i = self._skip_ws(i, False)
            if i < len(t) and t[i] == ".":
                i += 1
                continue
            return parts, i

    def _string(self, i: int) -> tuple[str, int]:
        t = self.text
        q = t[i]
        if t.startswith(q * 3, i):
            end = t.index(q * 3, i + 3)
            while t.startswith(q, end + 3):  # up to two extra quotes may close the string
                end += 1
            return t[i + 3:end], end + 3
        j = i + 1
        buf = []
        while t[j] != q:
            if q == '"' and t[j] == "\\":
                buf.append(t[j:j + 2])
                j += 2
                continue
            buf.append(t[j])
            j += 1
        raw = "".join(buf)
        if q == '"' and "\\" in raw:
            try:
                raw = tomllib.loads(f"x = \"{raw}\"")["x"]
            except tomllib.TOMLDecodeError:
                pass
        return raw, j + 1

    def _value(self, i: int, path: tuple) -> int:
        t = self.text
        c = t[i]
        if c == "[":
            i += 1
            idx = 0
            while True:
                i = self._skip_ws(i, True)
                if t[i] == "]":
                    return i + 1
                self._record(path + (idx,), i)
                i = self._value(i, path + (idx,))
                i = self._skip_ws(i, True)
                if t[i] == ",":
                    i += 1
                    idx += 1
        if c == "{":
            i += 1
            while True:
                i = self._skip_ws(i, False)
                if t[i] == "}":
                    return i + 1
                start = i
                parts, i = self._key(i)
                self._record(path + tuple(parts), start)
                i = self._skip_ws(i, False) + 1  # '='
                i = self._skip_ws(i, False)
                i = self._value(i, path + tuple(parts))
                i = self._skip_ws(i, False)
                if t[i] == ",":
                    i += 1
        if c in "\"'":
            return self._string(i)[1]
        while i < len(t) and t[i] not in ",]}\n#":
            i += 1
        return i

    def _resolve(self, parts: Sequence[str]) -> tuple:
        out: tuple = ()
        for part in parts:
            out += (part,)
            if out in self._aot:
                out += (self._aot[out] - 1,)
        return out

    def _scan(self) -> None:
        t = self.text
        table: tuple = ()
        i = 0
        while True:
            i = self._skip_ws(i, True)
            if i >= len(t):
                return
            start = i
            if t[i] == "[":
                aot = t.startswith("[[", i)
                parts, i = self._key(i + (2 if aot else 1))
                i += 2 if aot else 1
                if aot:
                    parent = self._resolve(parts[:-1])
                    arr = parent + (parts[-1],)
                    n = self._aot.get(arr, 0)
                    self._aot[arr] = n + 1
                    self._record(arr, start)
                    table = arr + (n,)
                else:
                    table = self._resolve(parts)
                self._record(table, start)
            else:
                parts, i = self._key(i)
                full = table + tuple(parts)
                for k in range(len(table) + 1, len(full) + 1):
                    self._record(full[:k], start)
                i = self._skip_ws(i, False) + 1  # '='
                i = self._skip_ws(i, False)
                i = self._value(i, full)
