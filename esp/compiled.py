"""The optional compiled per-packet path of AEAD ESP SAs (``_aead.c``).

For small packets the Python around the AEAD call costs more than the call: sealing a
188-byte packet took 1.6 us in ``encapsulate`` against 0.7 us inside ``AESGCM.encrypt``, opening
one 2.8 us in ``decapsulate`` against 0.7 us. The C module does, for AES-GCM-16 and
ChaCha20-Poly1305 SAs:

* ``Aead.seal``: the whole ESP packet (header, explicit IV, padding, trailer, ICV), the bytes of
  ``EspCipher.seal_packet``;
* ``Aead.decapsulate``: the per-packet part of ``esp.packet.decapsulate`` in its order (SPI,
  ESN inference, anti-replay check, ICV, window update, padding, next header, inner header);
* ``ReplayWindow``: the anti-replay window of esp/replay.py in C, which ``decapsulate`` updates.

Usability (dead, expired, hard limits), sequence-number allocation and the SA's counters stay
in Python (esp/packet.py), so lifetimes and counters are exact either way. The pure-Python code
stays the reference and the fallback; tests/test_esp_compiled.py checks that both give the same
bytes, verdicts and windows.

Key material: the C object holds the key only inside OpenSSL's cipher contexts and the 4-byte
salt; ``EspCipher.wipe`` frees them (OpenSSL cleanses the contexts) and overwrites the salt.

Not used when it is missing (no compiler or no OpenSSL headers at install time), when its
``ABI`` differs from the one this file expects (a stale build), or when the environment variable
``VPN_GW_PURE_PYTHON`` is set to a non-empty value (the project's one switch for comparisons,
read once at import; vpn_gw/accel honours it too).
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import TYPE_CHECKING, cast

from .errors import DropReason
from .replay import ReplayWindow

if TYPE_CHECKING:
    from ._aead import Aead as AeadType

ABI = 4  # must equal ESP_AEAD_ABI in _aead.c


def load_optional(name: str, abi: int) -> tuple[ModuleType | None, str]:
    """Import the optional compiled module ``name`` (the project's rule, also for
    vpn_gw/accel): (module, "") when it is built, its ``ABI`` constant is ``abi`` and
    ``VPN_GW_PURE_PYTHON`` is not set; otherwise (None, why not)."""
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        return None, f"not built ({exc})"
    if getattr(module, "ABI", None) != abi:
        return None, f"stale build (ABI {getattr(module, 'ABI', None)}, want {abi})"
    if os.environ.get("VPN_GW_PURE_PYTHON"):
        return None, "VPN_GW_PURE_PYTHON is set"
    return module, ""


_module: ModuleType | None
_module, WHY_NOT = load_optional("esp._aead", ABI)
COMPILED = _module is not None

# esp._aead.Aead, or None without the module
Aead: type[AeadType] | None = _module.Aead if _module is not None else None
# esp._aead.ReplayWindow: the same interface as esp.replay.ReplayWindow (typed as that)
CompiledReplayWindow: type[ReplayWindow] | None = \
    cast("type[ReplayWindow]", _module.ReplayWindow) if _module is not None else None

# Aead.decapsulate's verdicts (the D_* codes of _aead.c)
VERDICTS: dict[int, DropReason] = {
    1: DropReason.MALFORMED,
    2: DropReason.SPI_MISMATCH,
    3: DropReason.REPLAY,
    4: DropReason.AUTH_FAILED,
    5: DropReason.BAD_PADDING,
    6: DropReason.DUMMY,
    7: DropReason.BAD_NEXT_HEADER,
    8: DropReason.SA_DEAD,
}


def next_header_mask(allowed: frozenset[int]) -> bytes:
    """The 32-byte bitmap (bit ``n`` of byte ``n // 8``) of allowed next headers that
    ``Aead.decapsulate`` takes."""
    mask = bytearray(32)
    for nh in allowed:
        if 0 <= nh <= 255:
            mask[nh >> 3] |= 1 << (nh & 7)
    return bytes(mask)


__all__ = ["ABI", "COMPILED", "WHY_NOT", "Aead", "AeadType", "CompiledReplayWindow", "VERDICTS",
           "describe", "load_optional", "next_header_mask", "short_path"]


_CHACHA_LEVELS = {0: "SSE2", 1: "SSSE3", 2: "AVX-512VL"}


def short_path() -> str:
    """Which code seals and opens short packets (docs/esp.md "Short packets without libcrypto's
    per-call cost"): esp/aesgcm.c with VAES or AES-NI, esp/chapoly.c with which vector
    instructions, or libcrypto where this CPU runs neither."""
    if _module is None:
        return "pure Python"
    aes, vaes, chacha, level, runs = _module.simd()
    aes_by = ("VAES" if vaes else "AES-NI") if aes else "libcrypto"
    chacha_by = _CHACHA_LEVELS.get(level, str(level)) if chacha else "libcrypto"
    if runs:
        chacha_by += ", runs four at a time with IFMA"
    return f"AES-GCM {aes_by}, ChaCha20-Poly1305 {chacha_by}"


def describe() -> str:
    """What the AEAD packet path runs on, for logs and stats: ``compiled (_aead; short packets:
    ...)`` or ``pure Python: <why>``."""
    return f"compiled (_aead; short packets: {short_path()})" if COMPILED else f"pure Python: {WHY_NOT}"
