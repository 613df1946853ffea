"""Shared validation machinery and value converters for every section.

A converter takes the TOML value and returns the parsed one or raises ``_Bad``; ``_Table.get``
records the complaint against the key's path (and line) and returns ``BAD``. The underscore
names are internal to the ``vpn_gw.config`` package (shared by its section modules), not API.
"""
from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from vpn_gw.config.errors import Problem
from vpn_gw.config.locator import KeyLocator, format_key_path
from vpn_gw.durations import parse_duration, parse_size

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
RemoteAddr = ipaddress.IPv4Address | ipaddress.IPv6Address | ipaddress.IPv4Network | ipaddress.IPv6Network | str


class _Bad(Exception):
    """A converter's complaint; sub is a key-path suffix (e.g. a list index)."""

    def __init__(self, msg: str, sub: tuple = ()):
        super().__init__(msg)
        self.sub = sub


class _BadValue:
    def __repr__(self):
        return "<invalid>"


BAD: Any = _BadValue()
_REQUIRED: Any = object()
_REQUIRED_DEFAULT: Any = object()   # "use the built-in default proposals"


def _ok(*values) -> bool:
    return all(v is not BAD for v in values)


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    m = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if not m:
        m = difflib.get_close_matches(word.lower(), [c.lower() for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{m[0]}'?)" if m else ""


_TYPE_NAMES = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array",
               dict: "table"}


def _describe(v: Any, show: bool = True) -> str:
    name = _TYPE_NAMES.get(type(v), type(v).__name__)
    if isinstance(v, dict):
        return "a table"
    if isinstance(v, list):
        return "an array"
    article = "an" if name[0] in "aeiou" else "a"
    if not show:
        return f"{article} {name}"
    r = repr(v)
    if len(r) > 40:
        r = r[:37] + "..."
    return f"{article} {name} ({r})"


class _Ctx:
    def __init__(self, file: str | None, locator: KeyLocator, base_dir: Path):
        self.file = file
        self.loc = locator
        self.base_dir = base_dir
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []
        # the gateway's interface addresses: (name or None, ip_interface); see parse_config
        self.interface_addrs: list[tuple[str | None, Any]] = []
        # key paths of secrets written inline (not "file:"): the file's mode is checked
        self.inline_secrets: list[tuple] = []
        # the parsed TOML, to name connections, children and pools in problems
        self.data: dict = {}

    def problem(self, path: tuple, msg: str) -> Problem:
        return Problem(self.file, self.loc.line(path), format_key_path(path) or None, msg,
                       self.names(path))

    def names(self, path: tuple) -> str | None:
        """ "connection 'branch1', child 'net'" for a path in connection[0].child[0] (valid names
        only; not for the name key itself, whose message shows it)."""
        out = []
        tables: Any = self.data
        for i in range(0, len(path) - 1, 2):
            section, index = path[i], path[i + 1]
            if not isinstance(tables, dict) or not isinstance(index, int):
                break
            rows = tables.get(section)
            if section not in ("connection", "child") or not isinstance(rows, list) \
                    or not 0 <= index < len(rows) or not isinstance(rows[index], dict):
                break
            name = rows[index].get("name")
            if path[i + 2:] == ("name",) or not isinstance(name, str) or not _NAME_RE.fullmatch(name):
                break
            out.append(f"{section} '{name}'")
            tables = rows[index]
        return ", ".join(out) or None

    def error(self, path: tuple, msg: str):
        self.errors.append(self.problem(path, msg))

    def warn(self, path: tuple, msg: str):
        self.warnings.append(self.problem(path, msg))

    def path(self, s: str) -> Path:
        p = Path(s).expanduser()
        return p if p.is_absolute() else self.base_dir / p


class _Table:
    """Reads one TOML table: unknown-key check, typed getters that record errors."""

    def __init__(self, ctx: _Ctx, data: dict, path: tuple, known: Sequence[str],
                 elsewhere: Mapping[str, str] | None = None):
        self.ctx, self.data, self.path = ctx, data, path
        for k in data:
            if k in known:
                continue
            if elsewhere and k in elsewhere:
                hint = f" ({elsewhere[k]})"
            else:
                hint = _did_you_mean(k, known)
            where = format_key_path(path) or "the top level"
            ctx.error(path + (k,), f"unknown key '{k}' in {where}{hint}")

    def has(self, key: str) -> bool:
        return key in self.data

    def get(self, key: str, conv: Callable[[Any], Any], default: Any = _REQUIRED,
            why: str = "") -> Any:
        if key not in self.data:
            if default is _REQUIRED:
                self.ctx.error(self.path, f"missing required key '{key}'{why}")
                return BAD
            return default
        try:
            return conv(self.data[key])
        except _Bad as e:
            self.ctx.error(self.path + (key,) + e.sub, str(e))
            return BAD


def _str(v):
    if not isinstance(v, str):
        raise _Bad(f"expected a string, got {_describe(v)}")
    return v


def _nonempty_str(v):
    v = _str(v)
    if not v.strip():
        raise _Bad("must not be empty")
    return v


def _bool(v):
    if not isinstance(v, bool):
        hint = " (write true or false, without quotes)" if isinstance(v, str) and \
            v.lower() in ("true", "false", "yes", "no") else ""
        raise _Bad(f"expected a boolean, got {_describe(v)}{hint}")
    return v


def _int(lo: int | None = None, hi: int | None = None):
    def conv(v):
        if isinstance(v, bool) or not isinstance(v, int):
            hint = " (write it without quotes)" if isinstance(v, str) and v.strip().isdigit() else ""
            raise _Bad(f"expected an integer, got {_describe(v)}{hint}")
        if lo is not None and v < lo or hi is not None and v > hi:
            if hi is None:
                raise _Bad(f"must be >= {lo}, got {v}")
            raise _Bad(f"must be between {lo} and {hi}, got {v}")
        return v
    return conv


def _float(lo: float, hi: float):
    def conv(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _Bad(f"expected a number, got {_describe(v)}")
        if not lo <= v <= hi:
            raise _Bad(f"must be between {lo} and {hi}, got {v}")
        return float(v)
    return conv


def _auto_bool(v):
    if isinstance(v, bool) or v == "auto":
        return v
    raise _Bad(f"expected true, false or \"auto\", got {_describe(v)}")


def _choice(choices: Sequence[str]):
    def conv(v):
        v = _str(v)
        if v not in choices:
            raise _Bad(f"invalid value {v!r}: must be one of {', '.join(choices)}"
                       f"{_did_you_mean(v, choices)}")
        return v
    return conv


def _duration(v):
    try:
        return parse_duration(v)
    except ValueError as e:
        raise _Bad(str(e)) from None


def _size(v):
    try:
        return parse_size(v)
    except ValueError as e:
        raise _Bad(str(e)) from None


def _list(conv: Callable[[Any], Any], *, nonempty: bool = True, unique: bool = True,
          example: str = '["..."]'):
    def lconv(v):
        if not isinstance(v, list):
            raise _Bad(f"expected an array, got {_describe(v)}; write e.g. {example}")
        if nonempty and not v:
            raise _Bad("must not be empty")
        out = []
        for i, item in enumerate(v):
            try:
                x = conv(item)
            except _Bad as e:
                raise _Bad(str(e), (i,) + e.sub) from None
            if unique and x in out:
                raise _Bad(f"duplicate entry {item!r}", (i,))
            out.append(x)
        return tuple(out)
    return lconv


_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _name(v):
    v = _str(v)
    if not _NAME_RE.fullmatch(v):
        raise _Bad(f"invalid name {v!r}: use 1-64 letters, digits, '.', '_' or '-', "
                   f"starting with a letter or digit")
    return v


def _listen_addr(v):
    """"ADDRESS:PORT" ("[v6]:PORT" for IPv6) -> (address, port); "" -> None (off)."""
    v = _str(v).strip()
    if not v:
        return None
    host, sep, port = v.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    if ":" in host and not bracketed:  # "::1:9273" is ambiguous
        host = ""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        addr = None
    if not sep or addr is None or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise _Bad(f"{v!r} is not ADDRESS:PORT (e.g. \"127.0.0.1:9273\", \"[::1]:9273\")")
    return (str(addr), int(port))


def _ip(v):
    v = _str(v)
    try:
        return ipaddress.ip_address(v.strip())
    except ValueError:
        raise _Bad(f"{v!r} is not an IP address") from None


_HOST_RE = re.compile(r"(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)"
                      r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?")


def _ts(v):
    v = _str(v).strip()
    try:
        return ipaddress.ip_network(v, strict=True)
    except ValueError:
        pass
    try:
        net = ipaddress.ip_network(v, strict=False)
    except ValueError:
        hint = " (traffic selectors are CIDR subnets like 10.1.0.0/24 or 2001:db8::/64)"
        if v in ("dynamic", "%dynamic"):
            hint = " ('dynamic' is not supported: list the subnets explicitly)"
        raise _Bad(f"{v!r} is not a valid CIDR subnet{hint}") from None
    raise _Bad(f"{v!r} has host bits set (did you mean '{net}'?)")


_IFNAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}")


def _ifname(v):
    v = _str(v)
    if not _IFNAME_RE.fullmatch(v) or v in (".", ".."):
        raise _Bad(f"invalid interface name {v!r}: 1-15 characters of letters, digits, "
                   f"'_', '-', '.'")
    return v


def _tables(v, what: str):
    """An array of tables; a plain table (single [x] instead of [[x]]) is a type error."""
    if isinstance(v, dict):
        raise _Bad(f"expected an array of tables: write [[{what}]] instead of [{what}]")
    if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
        raise _Bad(f"expected an array of tables ([[{what}]]), got {_describe(v)}")
    return v


def _at_line(ctx: _Ctx, path: tuple) -> str:
    line = ctx.loc.line(path)
    return f" (line {line})" if line else ""
