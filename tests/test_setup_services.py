"""scripts/peer-services.sh (called by scripts/setup.sh): the strongSwan and Knot services the
test peers' packages ship are never started by the install and end up disabled. Run against a
scratch root file system (ROOT=...) with the real systemctl and the packages' unit files (copied), so
the host itself is not touched."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "peer-services.sh"
UNITS = ("strongswan-starter.service", "knot.service")


def _sh(*args, root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "ROOT": str(root)})


def test_policy_rc_d_denies_only_the_peers_and_is_removed(tmp_path):
    assert _sh("deny-start", root=tmp_path).returncode == 0
    policy = tmp_path / "usr/sbin/policy-rc.d"
    for svc, code in (("strongswan-starter", 101), ("ipsec", 101), ("knot", 101), ("ssh", 0), ("cron", 0)):
        assert subprocess.run([str(policy), svc, "start"], timeout=10).returncode == code, svc
    assert _sh("allow-start", root=tmp_path).returncode == 0
    assert not policy.exists()


def test_an_existing_policy_rc_d_is_left_alone(tmp_path):
    policy = tmp_path / "usr/sbin/policy-rc.d"
    policy.parent.mkdir(parents=True)
    policy.write_text("#!/bin/sh\nexit 101\n")
    _sh("deny-start", root=tmp_path)
    _sh("allow-start", root=tmp_path)
    assert policy.read_text() == "#!/bin/sh\nexit 101\n"


def test_disable_removes_the_enablement(tmp_path):
    if shutil.which("systemctl") is None:
        pytest.fail("systemctl missing (Debian's systemd package)")
    units = tmp_path / "lib/systemd/system"
    units.mkdir(parents=True)
    wants = tmp_path / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    for u in UNITS:
        real = Path("/lib/systemd/system") / u     # the packages' own unit when installed
        (units / u).write_text(real.read_text() if real.exists() else
                               f"[Unit]\nDescription={u}\n[Service]\nExecStart=/bin/true\n"
                               "[Install]\nWantedBy=multi-user.target\n")
        os.symlink(f"/lib/systemd/system/{u}", wants / u)
    p = _sh("disable", root=tmp_path)
    assert p.returncode == 0, p.stderr
    assert not wants.exists() or os.listdir(wants) == [], os.listdir(wants)
    for u in UNITS:
        assert f"disabled {u}" in p.stdout
    assert _sh("disable", root=tmp_path).returncode == 0   # idempotent
