"""The configuration error type: ``Problem`` (one error or warning) and ``ConfigError``."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One error or warning: file, line (1-based, None if unknown), key path, message; names:
    the connection (and child) the key path is in, by name, e.g. "connection 'branch1'"."""
    file: str | None
    line: int | None
    key: str | None
    message: str
    names: str | None = None

    def __str__(self):
        where = ""
        if self.file:
            where = self.file + (f":{self.line}" if self.line else "") + ": "
        elif self.line:
            where = f"line {self.line}: "
        key = f"{self.key}: " if self.key else ""
        if self.key and self.names:
            key = f"{self.key} ({self.names}): "
        return f"{where}{key}{self.message}"


class ConfigError(Exception):
    """The configuration is unreadable or invalid. ``str()`` is one line; ``problems`` lists all."""

    def __init__(self, message: str | Problem, *, file: str | None = None, line: int | None = None,
                 key: str | None = None, problems: Sequence[Problem] = ()):
        first = message if isinstance(message, Problem) else Problem(file, line, key, message)
        self.problems: tuple[Problem, ...] = tuple(problems) or (first,)
        self.file, self.line, self.key, self.message = first.file, first.line, first.key, first.message
        text = str(first).replace("\n", " ")
        extra = len(self.problems) - 1
        if extra > 0:
            text += f" (and {extra} more problem{'s' if extra > 1 else ''})"
        super().__init__(text)
