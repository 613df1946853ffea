"""TOML syntax errors in words, and a strongSwan file passed by mistake recognised.

tomllib's messages name the parser's state ("Illegal character '\\n'", "Cannot overwrite a
value"); ``explain_toml_error`` turns them into what the writer got wrong, with the line and
column, and says when the file is a swanctl.conf or ipsec.conf rather than vpn-gw TOML.
"""
from __future__ import annotations

import re
import tomllib

from vpn_gw.config.errors import ConfigError
from vpn_gw.config.keys import CONNECTION_KEYS

_POS = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)\s*$")

# strongSwan's swanctl.conf: "connections {", "secrets {", ... at the start of a line.
_SWANCTL = re.compile(r"^\s*(connections|secrets|pools|authorities)\s*\{", re.M)
# strongSwan's legacy ipsec.conf: "conn NAME" / "config setup" sections.
_IPSEC_CONF = re.compile(r"^(conn\s+\S+|config\s+setup)\s*$", re.M)
_KEY_LINE = re.compile(r"\s*([A-Za-z0-9_-]+)\s*=")
_HEADER = re.compile(r"\s*(\[\[?)\s*([^\]]+?)\s*\]\]?")


def explain_toml_error(text: str, error: tomllib.TOMLDecodeError, filename: str | None) -> ConfigError:
    raw = str(error)
    m = _POS.search(raw)
    msg = raw[:m.start()] if m else raw
    line = int(m.group(1)) if m and m.group(1) else None
    column = int(m.group(2)) if m and m.group(2) else None
    if _SWANCTL.search(text):
        return ConfigError("this looks like a strongSwan swanctl.conf, not a vpn-gw configuration (TOML); "
                           "convert it with `vpn-gw import-swanctl FILE` (docs/config.md describes the "
                           "format)", file=filename)
    if _IPSEC_CONF.search(text):
        return ConfigError("this looks like a strongSwan ipsec.conf, not a vpn-gw configuration (TOML); "
                           "docs/config.md describes the format (`vpn-gw import-swanctl` converts "
                           "swanctl.conf files)", file=filename)
    lines = text.split("\n")
    src = lines[line - 1] if line and line <= len(lines) else ""
    words = _in_words(msg, src, column, lines, line)
    where = f" (column {column})" if column else (" (at the end of the file)" if m else "")
    return ConfigError(f"invalid TOML: {words}{where}", file=filename, line=line)


def _in_words(msg: str, src: str, column: int | None, lines: list[str], line: int | None) -> str:
    if msg in ("Illegal character '\\n'", "Unterminated string"):
        return "a string is not closed: the closing quote is missing (a string must end on its line)"
    if msg.startswith("Illegal character"):
        return (f"{msg.removeprefix('Illegal character ')} is not allowed in a string (write control "
                f"characters as escapes, e.g. \\t)")
    if msg == "Invalid value" and line is None:
        return "the file ends where a value is expected: an array or inline table is not closed"
    if msg == "Invalid value":
        value = src.split("=", 1)[1].strip() if "=" in src else ""
        if value[:1].isalpha() or value[:1] == "%":
            return ("the value is not quoted: strings need quotes (key = \"value\"), only numbers, "
                    "true/false and [arrays] are written without")
        return "the value is not valid TOML (a \"string\", number, true/false or [array])"
    if msg == "Expected '=' after a key in a key/value pair":
        return "expected `key = value`: the '=' after the key is missing"
    if msg == "Invalid statement":
        return "this line is neither `key = value` nor a [table] header"
    if msg == "Invalid initial character for a key part":
        if "{" in src and column and not src[column - 1:].strip():
            return "an inline table ({...}) is not closed on its line: inline tables must fit on one line"
        return "a key starts with a character keys cannot start with (letters, digits, '_' and '-' are allowed)"
    if msg == "Expected newline or end of document after a statement":
        return ("something follows the value on the same line: one `key = value` per line "
                "(and '#' before a comment; arrays need commas between items)")
    if msg == "Unclosed array":
        return "an array is not closed: a ']' is missing (or a ',' between two of its items)"
    if msg == "Unclosed inline table":
        return "an inline table is not closed: a '}' is missing (an inline table must fit on one line)"
    if msg in ("Expected ']' at the end of a table declaration",
               "Expected ']]' at the end of an array declaration"):
        return "a table header is not closed: write [gateway], [[connection]] or [[connection.child]]"
    if msg == "Unescaped '\\' in a string":
        return ("a backslash in a \"...\" string must start an escape (\\\\, \\n, \\t, \\\"); for a literal "
                "backslash write \\\\ or use single quotes: '...'")
    if msg in ("Invalid hex value", "Escaped character is not a Unicode scalar value"):
        return "a \\u or \\U escape in a string is not a valid Unicode character"
    if msg == "Invalid date or datetime":
        return "the value looks like a date but is not a valid one (quote it if it is a string)"
    if msg.startswith("Found invalid character"):
        return f"unexpected character {msg.removeprefix('Found invalid character ')}"
    if msg == "Cannot overwrite a value" or msg.startswith("Cannot declare"):
        return _duplicate(src, lines, line) or "a key or table is defined twice"
    if msg.startswith(("Cannot mutate immutable namespace", "Cannot redefine namespace")):
        return "a table that is already defined (inline or as a value) is extended or redefined"
    if msg.startswith("Duplicate inline table key"):
        return f"an inline table has the key {msg.removeprefix('Duplicate inline table key ')} twice"
    return msg


def _duplicate(src: str, lines: list[str], line: int | None) -> str | None:
    """A key or table written twice; for a key that follows [[connection.child]] but was meant for
    the connection, say so."""
    if line is None:
        return None
    h = _HEADER.match(src)
    if h:
        return f"the table [{h.group(2)}] is defined twice (use [[...]] for a table that repeats)"
    k = _KEY_LINE.match(src)
    if not k:
        return None
    key = k.group(1)
    first, header, header_line = None, None, None
    for n in range(line - 2, -1, -1):      # back to the table this line belongs to
        s = lines[n]
        h = _HEADER.match(s)
        if h:
            header, header_line = h.group(1) + h.group(2) + h.group(1).replace("[", "]"), n + 1
            break
        m = _KEY_LINE.match(s)
        if m and m.group(1) == key:
            first = n + 1
    at = f" (first at line {first})" if first else ""
    table = f"in this {header} table" if header else "at the top level"
    out = f"'{key}' is set twice {table}{at}"
    if header == "[[connection.child]]" and key in CONNECTION_KEYS and header_line:
        first_child = header_line
        for n in range(header_line - 2, -1, -1):
            h = _HEADER.match(lines[n])
            if h and h.group(1) + h.group(2) == "[[connection":
                break
            if h and h.group(1) + h.group(2) == "[[connection.child":
                first_child = n + 1
        out += (f": keys written after [[connection.child]] belong to that child (TOML scoping), "
                f"so a second '{key}' meant for the connection lands in the child too; move the "
                f"connection's '{key}' above the first [[connection.child]] (line {first_child})")
    return out
