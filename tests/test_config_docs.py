"""Every example validates; docs/config.md documents exactly the keys the loader knows."""
from __future__ import annotations

import ipaddress
import re
import shutil
from pathlib import Path

import pytest

from vpn_gw.config import CHILD_KEYS, CONNECTION_KEYS, DDNS_KEYS, GATEWAY_KEYS, POOL_KEYS, load_config
from vpn_gw.radius.settings import RADIUS_KEYS

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").rglob("*.toml"))


def test_there_are_examples():
    names = {p.relative_to(ROOT / "examples").as_posix() for p in EXAMPLES}
    assert {"site-to-site/hq.toml", "site-to-site/branch1.toml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_example_validates_without_warnings(path, tmp_path):
    # git keeps only 644/755: in a copy of the example's folder (tests never change the
    # checkout), give secret files the 0600 a reader is told to give them (the loader rightly
    # warns about secrets readable by group or others).
    folder = tmp_path / path.parent.name
    shutil.copytree(path.parent, folder)
    modes = {p: p.stat().st_mode for p in path.parent.rglob("*")}
    for secret in folder.iterdir():
        if secret.suffix in (".psk", ".key", ".secret", ".toml") or "users" in secret.name:
            secret.chmod(0o600)  # .toml: the examples hold PSKs inline
    cfg = load_config(folder / path.name)
    assert cfg.connections
    assert [str(w) for w in cfg.warnings] == []
    assert {p: p.stat().st_mode for p in path.parent.rglob("*")} == modes


def test_site_to_site_pair_mirrors():
    hq = load_config(ROOT / "examples/site-to-site/hq.toml").connections[0]
    br = load_config(ROOT / "examples/site-to-site/branch1.toml").connections[0]
    assert hq.psk == br.psk
    assert hq.local_addrs == br.remote_addrs and hq.remote_addrs == br.local_addrs
    assert (str(hq.local_id), hq.remote_id.text) == (br.remote_id.text, str(br.local_id))
    assert hq.children[0].local_ts == br.children[0].remote_ts
    assert hq.children[0].remote_ts == br.children[0].local_ts
    assert hq.ike_proposals == br.ike_proposals


def test_strongswan_equivalent_matches_branch1():
    text = (ROOT / "examples/site-to-site/strongswan-branch1/swanctl.conf").read_text()
    br = load_config(ROOT / "examples/site-to-site/branch1.toml").connections[0]
    psk = "0s" + __import__("base64").b64encode(br.psk.reveal()).decode()
    for needle in (f"local_addrs = {br.local_addrs[0]}", f"remote_addrs = {br.remote_addrs[0]}",
                   f"id = {br.local_id}", f"id = {br.remote_id.text}",
                   f"proposals = {br.ike_proposals_text[0]}",
                   f"local_ts = {br.children[0].local_ts[0]}",
                   f"remote_ts = {br.children[0].remote_ts[0]}",
                   f"esp_proposals = {br.children[0].esp_proposals_text[0]}",
                   f"secret = {psk}"):
        assert needle in text, needle


def _documented(section: str) -> set[str]:
    doc = (ROOT / "docs/config.md").read_text()
    m = re.search(r"^## `" + re.escape(section) + r"`\n(.*?)(?=^## )", doc, re.M | re.S)
    assert m, section
    return set(re.findall(r"^\| `([a-z_]+)` \|", m.group(1), re.M))


@pytest.mark.parametrize("section,keys", [
    ("[gateway]", GATEWAY_KEYS),
    ("[[connection]]", tuple(k for k in CONNECTION_KEYS if k != "child")),
    ("[[connection.child]]", CHILD_KEYS),
    ("[[ddns]]", DDNS_KEYS),
    ("[radius]", RADIUS_KEYS),
    ("[[pool]]", POOL_KEYS),
])
def test_docs_document_every_key(section, keys):
    assert _documented(section) == set(keys)


def test_route_based_hub_example_pairs_with_its_branch():
    hub = load_config(ROOT / "examples/hub-route-based/hub.toml")
    br = load_config(ROOT / "examples/hub-route-based/branch1.toml").connections[0]
    by_id = {c.remote_id.text: c for c in hub.connections}
    h = by_id[br.local_id.data.decode()]
    assert h.local_id.data.decode() == br.remote_id.text and h.psk.reveal() == br.psk.reveal()
    assert len({c.interface for c in hub.connections}) == 3 and all(c.routes for c in hub.connections)
    assert [str(n) for n in h.routes] == [str(ts) for ts in
                                          [ipaddress.ip_network("10.1.0.0/24")]]
    assert all(str(ts) == "0.0.0.0/0" for c in hub.connections for ch in c.children
               for ts in (*ch.local_ts, *ch.remote_ts))


def test_docs_describe_eap_as_working():
    # docs/config.md once said EAP "will not authenticate until EAP is implemented"
    from vpn_gw.config.connection import EAP_METHODS
    doc = (ROOT / "docs/config.md").read_text()
    assert "until EAP is implemented" not in doc and "planned for remote access" not in doc
    bullet = re.search(r"^\* \*\*`eap-\*`\*\*(.*?)(?=^\* |^$)", doc, re.M | re.S)
    assert bullet, "the eap-* decision"
    assert all(f"`{m}`" in bullet.group(1) for m in EAP_METHODS)
    assert (ROOT / "docs/eap.md").exists() and (ROOT / "docs/remote-access.md").exists()


def test_documented_pfs_example_loads_and_offers_pfs_and_no_pfs():
    # docs/config.md: Libreswan's pfs=yes needs a group in esp_proposals; its example must load
    doc = (ROOT / "docs/config.md").read_text()
    section = doc[doc.index("### PFS on Child SA rekeys"):]
    child = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    base = load_config(ROOT / "examples/site-to-site/branch1.toml")
    text = (ROOT / "examples/site-to-site/branch1.toml").read_text()
    text = text[:text.index("[[connection.child]]")].rstrip(" ") + child.lstrip()
    from vpn_gw.config import parse_config
    conn = parse_config(text, "branch1.toml", ROOT / "examples/site-to-site").connections[0]
    assert conn.name == base.connections[0].name
    from ikev2.constants import TransformType
    groups = [[t.id for t in p.transforms if t.type == TransformType.DH] for p in conn.children[0].esp_proposals]
    assert len(groups) == 2 and len(groups[0]) == 3 and groups[1] == []
    # the groups offered for PFS are the ones the IKE proposals use
    ike_groups = {t.id for p in conn.ike_proposals for t in p.transforms if t.type == TransformType.DH}
    assert set(groups[0]) & ike_groups
