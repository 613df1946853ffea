"""Fixtures for the strongSwan interop tests (tests/interop).

Importing puts tests/ and tests/interop/ on sys.path, so test modules can simply
``import strongswan`` and ``import netns``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
for _p in (_HERE, _HERE.parent):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import strongswan  # noqa: E402


@pytest.fixture
def strongswan_required() -> None:
    """Fail (never skip) with a clear message when strongSwan or root is missing.

    (A failing fixture is reported as ERROR; tests that must show FAILED call
    ``strongswan.require_strongswan()`` in their body instead.)
    """
    try:
        strongswan.require_strongswan()
    except strongswan.StrongSwanMissing as exc:
        reason = str(exc)
    else:
        return
    pytest.fail(reason, pytrace=False)


@pytest.fixture
def sswan_workdir():
    """A short work directory (VICI socket paths must fit AF_UNIX), removed afterwards (kept
    when KEEP_SSW is set in the environment: both sides' logs and configs, for debugging)."""
    d = Path(tempfile.mkdtemp(prefix="ssw-"))
    try:
        yield d
    finally:
        if not os.environ.get("KEEP_SSW"):
            shutil.rmtree(d, ignore_errors=True)
