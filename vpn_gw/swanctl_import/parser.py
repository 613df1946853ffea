"""A strict reader of strongSwan's settings syntax as used by swanctl.conf.

Grammar (strongSwan's settings parser, the parts swanctl.conf uses)::

    body    := { item }
    item    := NAME [ ':' NAME { ',' NAME } ] '{' body '}'     a section (':' = templates)
             | NAME '=' VALUE                                   a key; VALUE runs to end of line
             | 'include' PATTERN                                other files, glob, relative to
                                                                the including file's directory
    comment := '#' to end of line (outside quotes)

An unquoted ``}`` ends the value (``a { b = c }`` on one line) and an unquoted ``{`` in a
value is an error. A VALUE may be (partly) double-quoted: quotes keep ``#``, ``{``, ``}`` and newlines, and
``\\"``, ``\\\\``, ``\\n``, ``\\t`` are escapes. Like strongSwan, a repeated key replaces the
earlier value and a repeated section is merged into the first. Anything else (a stray ``}``,
a missing ``}``, a name followed by neither ``{`` nor ``=``, an unterminated quote, an include
cycle or more than 10 levels of includes, an unreadable file) raises
:class:`SwanctlSyntaxError` with the file and line.
"""
from __future__ import annotations

import dataclasses
import glob
import os
from pathlib import Path

__all__ = ["Section", "SwanctlSyntaxError", "parse_file", "parse_text"]

MAX_INCLUDE_DEPTH = 10
_NAME_STOP = set(" \t\r\n{}=:,#\"")


class SwanctlSyntaxError(ValueError):
    """swanctl.conf cannot be read: ``str()`` is ``FILE:LINE: what is wrong``."""

    def __init__(self, file: str, line: int, message: str):
        super().__init__(f"{file}:{line}: {message}")
        self.file, self.line, self.message = file, line, message


@dataclasses.dataclass
class Section:
    name: str
    line: int = 0
    file: str = ""
    templates: list[str] = dataclasses.field(default_factory=list)
    values: dict[str, str] = dataclasses.field(default_factory=dict)
    value_lines: dict[str, int] = dataclasses.field(default_factory=dict)
    sections: dict[str, Section] = dataclasses.field(default_factory=dict)

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.values.get(key, default)

    def section(self, name: str) -> Section | None:
        return self.sections.get(name)

    def merge(self, other: Section) -> None:
        self.values.update(other.values)
        self.value_lines.update(other.value_lines)
        for name, sub in other.sections.items():
            if name in self.sections:
                self.sections[name].merge(sub)
            else:
                self.sections[name] = sub
        for t in other.templates:
            if t not in self.templates:
                self.templates.append(t)


class _Reader:
    def __init__(self, text: str, file: str, depth: int, seen: tuple[str, ...]):
        self.text, self.file, self.depth, self.seen = text, file, depth, seen
        self.pos, self.line = 0, 1

    def error(self, msg: str, line: int | None = None) -> SwanctlSyntaxError:
        return SwanctlSyntaxError(self.file, self.line if line is None else line, msg)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def advance(self) -> str:
        c = self.text[self.pos]
        self.pos += 1
        if c == "\n":
            self.line += 1
        return c

    def skip_space(self, newlines: bool = True) -> None:
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if c == "#":
                while self.pos < len(self.text) and self.text[self.pos] != "\n":
                    self.pos += 1
            elif c in " \t\r" or (newlines and c == "\n"):
                self.advance()
            else:
                return

    def name(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in _NAME_STOP:
            self.pos += 1
        if self.pos == start:
            c = self.peek()
            raise self.error(f"expected a name, found {c!r}" if c else "expected a name, found the end of the file")
        return self.text[start:self.pos]

    def value(self) -> str:
        """The rest of the line: unquoted parts stripped, quoted parts verbatim, comments cut."""
        out: list[str] = []
        pending_space = ""
        self.skip_space(newlines=False)
        while self.pos < len(self.text):
            c = self.peek()
            if c in "\n#}":  # an unquoted '}' closes the section: a { b = c }
                break
            if c == '"':
                start_line = self.line
                self.advance()
                out.append(pending_space)
                pending_space = ""
                while True:
                    if self.pos >= len(self.text):
                        raise self.error("unterminated quoted string", start_line)
                    c = self.advance()
                    if c == '"':
                        break
                    if c == "\\":
                        if self.pos >= len(self.text):
                            raise self.error("unterminated quoted string", start_line)
                        e = self.advance()
                        out.append({"n": "\n", "t": "\t", "r": "\r"}.get(e, e))
                    else:
                        out.append(c)
                continue
            if c in " \t\r":
                pending_space += self.advance()
                continue
            if c == "{":
                raise self.error("unexpected '{' in the value (quote the value if it belongs to it)")
            out.append(pending_space)
            pending_space = ""
            out.append(self.advance())
        return "".join(out)

    def body(self, section: Section, closing: bool) -> None:
        while True:
            self.skip_space()
            c = self.peek()
            if not c:
                if closing:
                    raise self.error(f"section '{section.name}' is not closed: missing '}}' before "
                                     "the end of the file", section.line)
                return
            if c == "}":
                if not closing:
                    raise self.error("'}' without an open section")
                self.advance()
                return
            line = self.line
            name = self.name()
            self.skip_space(newlines=False)
            c = self.peek()
            if name == "include" and c not in ("=", "{", ":"):
                self.include(section, self.value(), line)
                continue
            if c == "=":
                self.advance()
                section.values[name] = self.value()
                section.value_lines[name] = line
                continue
            templates: list[str] = []
            if c == ":":
                self.advance()
                while True:
                    self.skip_space(newlines=False)
                    templates.append(self.name())
                    self.skip_space(newlines=False)
                    if self.peek() != ",":
                        break
                    self.advance()
                self.skip_space()
                c = self.peek()
            else:
                self.skip_space()
                c = self.peek()
            if c != "{":
                raise self.error(f"'{name}' must be followed by '=' (a key) or '{{' (a section), "
                                 f"found {c!r}" if c else f"'{name}' is followed by the end of the file",
                                 line)
            self.advance()
            sub = Section(name, line, self.file, templates)
            self.body(sub, closing=True)
            if name in section.sections:
                section.sections[name].merge(sub)
            else:
                section.sections[name] = sub

    def include(self, section: Section, pattern: str, line: int) -> None:
        if not pattern:
            raise self.error("include without a file name", line)
        base = os.path.dirname(self.file) if self.file and not self.file.startswith("<") else "."
        pat = pattern if os.path.isabs(pattern) else os.path.join(base, pattern)
        if glob.has_magic(pat):
            files = sorted(glob.glob(pat))  # strongSwan: a pattern matching nothing is fine
        else:
            files = [pat]
        for f in files:
            _parse_into(section, Path(f), self.depth + 1, self.seen, (self.file, line))


def _parse_into(root: Section, path: Path, depth: int, seen: tuple[str, ...],
                included_from: tuple[str, int] | None = None) -> None:
    where = included_from or (str(path), 0)
    if depth > MAX_INCLUDE_DEPTH:
        raise SwanctlSyntaxError(where[0], where[1], f"includes nested more than {MAX_INCLUDE_DEPTH} deep")
    real = os.path.realpath(path)
    if real in seen:
        raise SwanctlSyntaxError(where[0], where[1], f"include cycle: {path} includes itself")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        what = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise SwanctlSyntaxError(where[0], where[1], f"cannot read {path}: {what}") from None
    r = _Reader(text, str(path), depth, seen + (real,))
    r.body(root, closing=False)


def parse_file(path: str | os.PathLike) -> Section:
    """Parse a swanctl.conf (following its includes) into a root :class:`Section`."""
    root = Section("", 0, str(path))
    _parse_into(root, Path(path), 0, ())
    return root


def parse_text(text: str, file: str = "<text>") -> Section:
    """Parse swanctl.conf text; includes are relative to the current directory."""
    root = Section("", 0, file)
    _Reader(text, file, 0, ()).body(root, closing=False)
    return root
