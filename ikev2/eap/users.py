"""The EAP users file (TOML) and its lookup.

::

    [[user]]
    name = "alice@example.org"
    nt_hash = "8846f7eaee8fb117ad06bdd830b7586c"   # NtPasswordHash, 32 hex digits
    # methods = ["mschapv2"]                       # default for a user with a secret

    [[user]]
    name = "bob"
    password = "cleartext"                         # works, but is reported as a warning
    methods = ["mschapv2", "md5"]                  # EAP-MD5 needs the cleartext password

    [[user]]
    name = "carol@example.org"
    methods = ["tls"]                              # certificate only: no secret needed

Rules: ``name`` is required and unique (case-insensitively: lookups ignore case, as identities
such as e-mail addresses and FQDNs compare case-insensitively); at most one of ``nt_hash`` and
``password``; ``methods`` (default: ``["mschapv2"]`` when a secret is given) lists what the user
may authenticate with, from "mschapv2", "md5" (needs ``password``), "tls".  Unknown keys are
errors, so typos do not pass silently.  ``nt_hash(password)`` makes the hash for new entries.
"""
from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .mschapv2 import nt_password_hash
from .packet import EapError, parse_methods

__all__ = ["User", "UserDB", "UserFileError", "nt_hash"]

_KEYS = {"name", "nt_hash", "password", "methods"}


class UserFileError(EapError):
    """The users file cannot be read or is invalid; the message says where and why."""


def nt_hash(password: str) -> str:
    """NtPasswordHash of ``password`` as 32 lower-case hex digits, for a users-file entry."""
    if not isinstance(password, str):
        raise EapError("password must be a string")
    return nt_password_hash(password).hex()


@dataclass(frozen=True)
class User:
    name: str
    methods: frozenset[str]
    nt_hash: bytes | None = None
    password: str | None = None

    @property
    def password_hash(self) -> bytes | None:
        """The NT hash, stored or computed from the cleartext password."""
        if self.nt_hash is not None:
            return self.nt_hash
        if self.password is not None:
            return nt_password_hash(self.password)
        return None

    def allows(self, method: str) -> bool:
        return method in self.methods


class UserDB:
    """EAP users by identity.  ``warnings`` lists non-fatal findings of the loader (cleartext
    passwords, a file readable by others) for the caller to log."""

    def __init__(self, users: Iterable[User] = (), warnings: Iterable[str] = ()):
        self._users: dict[str, User] = {}
        self.warnings: list[str] = list(warnings)
        for u in users:
            key = u.name.casefold()
            if key in self._users:
                raise UserFileError(f"user {u.name!r} is defined twice")
            self._users[key] = u

    def lookup(self, identity: str | None) -> User | None:
        """The user with this EAP identity (case-insensitive), or None."""
        if not identity:
            return None
        return self._users.get(identity.casefold())

    def __len__(self) -> int:
        return len(self._users)

    def __iter__(self) -> Iterator[User]:
        return iter(self._users.values())

    def __contains__(self, identity: object) -> bool:
        return isinstance(identity, str) and self.lookup(identity) is not None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> UserDB:
        """Read a users file; :class:`UserFileError` names the file and the entry at fault."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
            mode = p.stat().st_mode
        except OSError as e:
            raise UserFileError(f"{p}: cannot read the EAP users file: {e.strerror or e}") from None
        except UnicodeDecodeError:
            raise UserFileError(f"{p}: the EAP users file is not UTF-8") from None
        db = cls.from_toml(text, source=str(p))
        if mode & (stat.S_IRWXG | stat.S_IRWXO) and any(u.nt_hash or u.password for u in db):
            db.warnings.append(f"{p}: holds password hashes but is accessible by group/others "
                               f"(mode {stat.S_IMODE(mode):o}); chmod 600 it")
        return db

    @classmethod
    def from_toml(cls, text: str, source: str = "<users>") -> UserDB:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise UserFileError(f"{source}: not valid TOML: {e}") from None
        extra = set(doc) - {"user"}
        if extra:
            raise UserFileError(f"{source}: unknown top-level key(s) {', '.join(sorted(extra))} "
                                f"(entries are [[user]] tables)")
        entries = doc.get("user", [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise UserFileError(f"{source}: 'user' must be an array of tables ([[user]])")
        users: list[User] = []
        warnings: list[str] = []
        seen: dict[str, int] = {}
        for i, entry in enumerate(entries, 1):
            users.append(_entry(entry, f"{source}: user #{i}", warnings))
            key = users[-1].name.casefold()
            if key in seen:
                raise UserFileError(f"{source}: user #{i} ({users[-1].name!r}) repeats user #{seen[key]}")
            seen[key] = i
        return cls(users, warnings)


def _entry(e: dict[str, Any], where: str, warnings: list[str]) -> User:
    name = e.get("name")
    if not isinstance(name, str) or not name:
        raise UserFileError(f"{where}: 'name' (a non-empty string) is required")
    where = f"{where} ({name!r})"
    unknown = set(e) - _KEYS
    if unknown:
        raise UserFileError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} "
                            f"(allowed: {', '.join(sorted(_KEYS))})")
    h = e.get("nt_hash")
    pw = e.get("password")
    if h is not None and pw is not None:
        raise UserFileError(f"{where}: give either nt_hash or password, not both")
    hash_bytes = None
    if h is not None:
        if not isinstance(h, str):
            raise UserFileError(f"{where}: nt_hash must be a string of 32 hex digits")
        try:
            hash_bytes = bytes.fromhex(h)
        except ValueError:
            hash_bytes = None
        if hash_bytes is None or len(hash_bytes) != 16:
            raise UserFileError(f"{where}: nt_hash must be 32 hex digits (16 octets), got {h!r}")
    if pw is not None:
        if not isinstance(pw, str) or not pw:
            raise UserFileError(f"{where}: password must be a non-empty string")
        try:
            nt_password_hash(pw)
        except EapError as err:
            raise UserFileError(f"{where}: {err.reason}") from None
        warnings.append(f"{where}: cleartext password in the users file; prefer nt_hash "
                        f"(needed only for EAP-MD5)")
    if "methods" in e:
        try:
            methods = frozenset(parse_methods(e["methods"]))
        except EapError as err:
            raise UserFileError(f"{where}: methods: {err.reason}") from None
    elif hash_bytes is not None or pw is not None:
        methods = frozenset({"mschapv2"})
    else:
        raise UserFileError(f"{where}: no nt_hash/password and no methods: add methods = [\"tls\"] "
                            f"for a certificate-only user")
    if "mschapv2" in methods and hash_bytes is None and pw is None:
        raise UserFileError(f"{where}: method mschapv2 needs nt_hash or password")
    if "md5" in methods and pw is None:
        raise UserFileError(f"{where}: method md5 needs the cleartext password (EAP-MD5 cannot use nt_hash)")
    return User(name=name, methods=methods, nt_hash=hash_bytes, password=pw)
