"""``Secret``: a value (PSK, password, private key) that never shows in repr, str or logs."""
from __future__ import annotations

import hashlib
import hmac
from typing import Any


class Secret:
    """Holds a secret value; ``repr``/``str``/``format`` never show it. ``reveal()`` returns it.

    Equality compares the values (constant time for bytes), so a changed PSK shows up in
    ``diff_configs``; private key objects compare by their DER encoding.
    """

    __slots__ = ("_value",)
    _value: Any

    def __init__(self, value: Any):
        object.__setattr__(self, "_value", value)

    def __setattr__(self, name, value):  # pragma: no cover - immutability guard
        raise AttributeError("Secret is immutable")

    def reveal(self) -> Any:
        return self._value

    def _cmp_bytes(self) -> bytes:
        v = self._value
        if isinstance(v, (bytes, bytearray)):
            return bytes(v)
        if isinstance(v, str):
            return v.encode()
        if hasattr(v, "private_bytes"):
            from cryptography.hazmat.primitives import serialization
            return v.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())
        return repr(v).encode()

    def __eq__(self, other):
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._cmp_bytes(), other._cmp_bytes())

    def __hash__(self):
        return hash(hashlib.sha256(self._cmp_bytes()).digest())

    def __len__(self):
        return len(self._value)

    def __repr__(self):
        return "Secret('***')"

    def __str__(self):
        return "***"

    def __format__(self, spec):
        return "***"

    def __reduce__(self):  # keep secrets out of pickles too
        raise TypeError("Secret cannot be pickled")
