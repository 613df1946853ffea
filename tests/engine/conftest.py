"""Every in-memory engine test also checks, after each ``Link.run``/``settle``, that the managers'
indexes, timer heap and counts agree with a scan of their IKE SAs (tests/engine/test_sa_index.py)."""
from __future__ import annotations

import pytest

from tests.engine import harness
from tests.engine.test_sa_index import assert_consistent

_SCAN_LIMIT = 2_000  # the scale tests hold 10k SAs: scanning them after every step is not the point


@pytest.fixture(autouse=True)
def _indexes_agree_with_a_scan(monkeypatch):
    run, settle = harness.Link.run, harness.Link.settle

    def check(link) -> None:
        for mgr in (link.a, link.b):
            if len(mgr.index) < _SCAN_LIMIT:
                assert_consistent(mgr)

    def checked_run(self, *args, **kwargs):
        run(self, *args, **kwargs)
        check(self)

    def checked_settle(self):
        settle(self)
        check(self)

    monkeypatch.setattr(harness.Link, "run", checked_run)
    monkeypatch.setattr(harness.Link, "settle", checked_settle)
