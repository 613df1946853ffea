"""examples/ and docs/deploy.md: every example folder explains itself, every config checks,
the hub's three branches pair with it, and the deployment guide matches what is shipped."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from vpn_gw.config import DEFAULT_CONTROL_SOCKET, load_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p for p in (ROOT / "examples").iterdir() if p.is_dir())


@pytest.mark.parametrize("folder", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_each_example_folder_has_a_readme_naming_its_files(folder):
    readme = (folder / "README.md").read_text()
    assert "What it shows" in readme or readme.startswith("# Grafana")
    for f in folder.iterdir():
        if f.name != "README.md":
            assert f.name in readme, f"{folder.name}/README.md does not mention {f.name}"


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*/*.toml")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_example_configs_check(path):
    load_config(path)


def test_hub_has_the_three_branches_it_promises():
    hub = load_config(ROOT / "examples/hub-route-based/hub.toml")
    by_id = {c.remote_id.text: c for c in hub.connections}
    assert len(by_id) == 3
    for n in (1, 2, 3):
        br = load_config(ROOT / f"examples/hub-route-based/branch{n}.toml").connections[0]
        h = by_id[br.local_id.data.decode()]
        assert h.name == f"branch{n}"
        assert h.local_id.data.decode() == br.remote_id.text
        assert h.psk.reveal() == br.psk.reveal(), f"branch{n}: PSK differs from the hub's"
        assert [str(r) for r in h.routes] == [f"10.{n}.0.0/24"]
        assert [str(a) for a in br.local_addrs] == [f"198.51.100.{n}"]


def test_deploy_guide_matches_what_is_shipped():
    guide = (ROOT / "docs/deploy.md").read_text()
    unit = (ROOT / "packaging/systemd/vpn-gw.service").read_text()
    assert "docs/deploy.md" in (ROOT / "README.md").read_text()
    assert "install-service:" in (ROOT / "Makefile").read_text()
    assert DEFAULT_CONTROL_SOCKET in guide and "/etc/vpn-gw/gw.toml" in guide
    for d in ("RuntimeDirectory=vpn-gw", "StateDirectory=vpn-gw", "ConfigurationDirectory=vpn-gw"):
        assert d in unit
    for cap in re.search(r"^CapabilityBoundingSet=(.*)$", unit, re.MULTILINE).group(1).split():
        assert cap in guide
    for words in ("UDP 500 and 4500", "ip_forward", "MSS", "journalctl", "Upgrade", "Checklist"):
        assert words in guide, words
