"""[[pool]] tables and the pools/vips connection keys: parsing, validation, error lines."""
from __future__ import annotations

import ipaddress
import re
import textwrap
from pathlib import Path

import pytest

from vpn_gw.config import POOL_KEYS, ConfigError, PoolConfig, diff_configs, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent
PSK = 'psk = "0x00112233445566778899aabbccddeeff"'

GOOD = f"""\
[[pool]]
name = "rw"
addrs = "10.99.0.0/24"
dns = ["10.20.0.53", "fd00:20::53"]
subnets = ["10.20.0.0/24", "10.21.0.0/24"]

[[pool]]
name = "rw6"
addrs = "fd00:99::10-fd00:99::ff"
lease_file = "state/rw6.json"

[[connection]]
name = "roadwarriors"
{PSK}
pools = ["rw", "rw6"]

  [[connection.child]]
  name = "net"
  local_ts = ["10.20.0.0/24", "fd00:20::/64"]
  remote_ts = ["10.99.0.0/24", "fd00:99::/120"]

[[connection]]
name = "laptop"
{PSK}
remote_addrs = ["198.51.100.1"]
vips = ["0.0.0.0", "::"]

  [[connection.child]]
  name = "net"
  local_ts = ["0.0.0.0/0"]
  remote_ts = ["10.20.0.0/24"]
"""

ip = ipaddress.ip_address
net = ipaddress.ip_network


def parse(text, tmp_path=None, **kw):
    return parse_config(textwrap.dedent(text), "gw.toml", tmp_path, **kw)


def problems(text, **kw) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        parse(text, **kw)
    assert "\n" not in str(ei.value)
    return [str(p) for p in ei.value.problems]


def with_pools(pools: str, conn_extra: str = 'pools = ["rw"]', local_ts='["10.20.0.0/24"]') -> str:
    return textwrap.dedent(pools) + textwrap.dedent(f"""\

        [[connection]]
        name = "hq"
        {PSK}
        {conn_extra}

          [[connection.child]]
          name = "net"
          local_ts = {local_ts}
          remote_ts = ["10.99.0.0/16"]
        """)


# -- a valid file ------------------------------------------------------------------------------

def test_good_config_parsed(tmp_path):
    cfg = parse(GOOD, tmp_path)
    rw, rw6 = cfg.pools
    assert cfg.pool("rw") is rw and cfg.pool("rw6") is rw6
    with pytest.raises(KeyError):
        cfg.pool("nope")
    assert rw == PoolConfig(name="rw", addrs="10.99.0.0/24", first=ip("10.99.0.0"),
                            last=ip("10.99.0.255"), network=net("10.99.0.0/24"),
                            dns=(ip("10.20.0.53"), ip("fd00:20::53")),
                            subnets=(net("10.20.0.0/24"), net("10.21.0.0/24")),
                            lease_file=Path("/var/lib/vpn-gw/pool-rw.json"))
    assert rw.version == 4 and rw6.version == 6
    assert rw6.addrs == "fd00:99::10-fd00:99::ff" and rw6.network is None
    assert (rw6.first, rw6.last) == (ip("fd00:99::10"), ip("fd00:99::ff"))
    assert rw6.lease_file == tmp_path / "state/rw6.json"
    gw, laptop = cfg.connections
    assert gw.pools == ("rw", "rw6") and gw.vips == ()
    assert laptop.vips == (ip("0.0.0.0"), ip("::")) and laptop.pools == ()
    assert cfg.warnings == ()


def test_no_pools_is_fine_and_defaults_empty():
    cfg = parse(with_pools("", conn_extra=""))
    assert cfg.pools == () and cfg.connections[0].pools == () and cfg.connections[0].vips == ()


def test_range_and_single_address_pools():
    cfg = parse(with_pools("""\
        [[pool]]
        name = "rw"
        addrs = " 10.99.0.10 - 10.99.0.200 "

        [[pool]]
        name = "one"
        addrs = "10.98.0.1"
        """, conn_extra='pools = ["rw", "one"]'))
    assert [p.addrs for p in cfg.pools] == ["10.99.0.10-10.99.0.200", "10.98.0.1/32"]


def test_full_tunnel_local_ts_is_not_a_protected_subnet():
    cfg = parse(with_pools('[[pool]]\nname = "rw"\naddrs = "10.99.0.0/24"\n',
                           local_ts='["0.0.0.0/0", "::/0"]'))
    assert cfg.pools[0].name == "rw"


def test_pool_of_other_family_does_not_overlap():
    parse(with_pools('[[pool]]\nname = "rw"\naddrs = "fd00::/120"\n',
                     local_ts='["10.20.0.0/24"]'), interface_addrs=["10.0.0.1/8"])


def test_load_config_passes_interface_addrs(tmp_path):
    f = tmp_path / "gw.toml"
    f.write_text(with_pools('[[pool]]\nname = "rw"\naddrs = "10.99.0.0/24"\n'))
    assert load_config(f).pools[0].name == "rw"
    with pytest.raises(ConfigError, match=r"gw.toml:3: pool\[0\].addrs: .* interface eth1"):
        load_config(f, interface_addrs=[("eth1", "10.99.0.1/16")])


# -- overlaps ----------------------------------------------------------------------------------

def test_pool_overlaps_pool_names_both_with_lines():
    msgs = problems(with_pools("""\
        [[pool]]
        name = "rw"
        addrs = "10.1.0.0/24"

        [[pool]]
        name = "guests"
        addrs = "10.1.0.128/25"
        """, conn_extra='pools = ["rw", "guests"]'))
    assert msgs == ["gw.toml:7: pool[1].addrs: pool 'guests' (10.1.0.128/25) overlaps pool 'rw' "
                    "(10.1.0.0/24) (line 3)"]


def test_range_overlaps_cidr():
    msgs = problems(with_pools("""\
        [[pool]]
        name = "rw"
        addrs = "10.1.0.0/24"

        [[pool]]
        name = "more"
        addrs = "10.0.255.250-10.1.0.0"
        """, conn_extra='pools = ["rw", "more"]'))
    assert msgs == ["gw.toml:7: pool[1].addrs: pool 'more' (10.0.255.250-10.1.0.0) overlaps pool "
                    "'rw' (10.1.0.0/24) (line 3)"]


def test_adjacent_pools_do_not_overlap():
    parse(with_pools("""\
        [[pool]]
        name = "rw"
        addrs = "10.1.0.0/25"

        [[pool]]
        name = "guests"
        addrs = "10.1.0.128-10.1.0.200"
        """, conn_extra='pools = ["rw", "guests"]'))


def test_pool_overlaps_protected_subnet_of_any_connection():
    text = with_pools('[[pool]]\nname = "rw"\naddrs = "10.20.0.0/26"\n')
    text += textwrap.dedent(f"""\

        [[connection]]
        name = "branch"
        {PSK}

          [[connection.child]]
          name = "lan"
          local_ts = ["192.0.2.0/24", "10.0.0.0/8"]
          remote_ts = ["10.50.0.0/24"]
        """)
    assert problems(text) == [
        "gw.toml:3: pool[0].addrs: pool 'rw' (10.20.0.0/26) overlaps local_ts 10.20.0.0/24 of "
        "connection 'hq' child 'net' (line 12): the gateway's protected subnets cannot be handed "
        "out to clients",
        "gw.toml:3: pool[0].addrs: pool 'rw' (10.20.0.0/26) overlaps local_ts 10.0.0.0/8 of "
        "connection 'branch' child 'lan' (line 21): the gateway's protected subnets cannot be "
        "handed out to clients",
    ]


@pytest.mark.parametrize("ifaces,want", [
    ([("eth1", "10.99.0.1/16")], "overlaps 10.99.0.0/16, the subnet of interface eth1 (address 10.99.0.1/16)"),
    (["10.99.0.200/24"], "overlaps 10.99.0.0/24, the subnet of a gateway interface (address 10.99.0.200/24)"),
    ([ipaddress.ip_interface("10.99.0.5/32")], "overlaps 10.99.0.5/32"),
    ([("br0", ipaddress.ip_network("10.99.0.128/25"))], "overlaps 10.99.0.128/25, the subnet of interface br0"),
])
def test_pool_overlaps_interface_subnet(ifaces, want):
    msgs = problems(with_pools('[[pool]]\nname = "rw"\naddrs = "10.99.0.0/24"\n'),
                    interface_addrs=ifaces + [("eth0", "192.0.2.1/24"), ("lo", "127.0.0.1/8"),
                                              ("eth0", "fe80::1/64")])
    assert len(msgs) == 1
    assert msgs[0].startswith("gw.toml:3: pool[0].addrs: pool 'rw' (10.99.0.0/24) ")
    assert want in msgs[0]


def test_interface_subnet_reported_once_per_interface_and_subnet():
    msgs = problems(with_pools('[[pool]]\nname = "rw"\naddrs = "10.99.0.0/24"\n'),
                    interface_addrs=[("eth1", "10.99.0.1/24"), ("eth1", "10.99.0.2/24")])
    assert len(msgs) == 1


@pytest.mark.parametrize("addrs,block", [
    ("224.0.0.0/24", "224.0.0.0/4 (multicast)"),
    ("127.0.0.0/24", "127.0.0.0/8 (loopback)"),
    ("0.0.0.0/24", "0.0.0.0/8 ('this network')"),
    ("169.254.0.0/24", "169.254.0.0/16 (link-local)"),
    ("255.255.255.0-255.255.255.255", "240.0.0.0/4 (reserved, includes 255.255.255.255)"),
    ("fe80::/64", "fe80::/10 (link-local)"),
    ("ff02::/120", "ff00::/8 (multicast)"),
    ("::/120", "::/127 (unspecified and loopback)"),
])
def test_non_unicast_pools(addrs, block):
    msgs = problems(with_pools(f'[[pool]]\nname = "rw"\naddrs = "{addrs}"\n'))
    assert msgs == [f"gw.toml:3: pool[0].addrs: '{addrs}' overlaps {block}: a pool must hold "
                    f"unicast addresses a client can use"]


# -- pool table errors -------------------------------------------------------------------------

@pytest.mark.parametrize("addrs,msg", [
    ('"10.99.0.1/24"', "'10.99.0.1/24' has host bits set (did you mean '10.99.0.0/24', or a range "
                       "'10.99.0.1-10.99.0.255'?)"),
    ('"10.99.0.9-10.99.0.1"', "range '10.99.0.9-10.99.0.1' is reversed (did you mean "
                              "'10.99.0.1-10.99.0.9'?)"),
    ('"10.99.0.1-fd00::1"', "range '10.99.0.1-fd00::1' mixes IPv4 and IPv6"),
    ('"rw"', "'rw' is neither a CIDR subnet (10.99.0.0/24) nor a range (10.99.0.10-10.99.0.200)"),
    ('["10.99.0.0/24"]', "expected a string, got an array"),
])
def test_bad_addrs(addrs, msg):
    msgs = problems(with_pools(f'[[pool]]\nname = "rw"\naddrs = {addrs}\n'))
    assert msgs == [f"gw.toml:3: pool[0].addrs: {msg}"]


def test_missing_keys_and_unknown_key():
    msgs = problems(with_pools('[[pool]]\ndsn = ["10.20.0.53"]\n', conn_extra=""))
    assert msgs == [
        "gw.toml:1: pool[0]: missing required key 'name'",
        "gw.toml:1: pool[0]: missing required key 'addrs' (a CIDR like \"10.99.0.0/24\" or a "
        "range like \"10.99.0.10-10.99.0.200\")",
        "gw.toml:2: pool[0].dsn: unknown key 'dsn' in pool[0] (did you mean 'dns'?)",
    ]


def test_connection_key_in_pool_and_pool_key_in_connection():
    msgs = problems(with_pools('[[pool]]\nname = "rw"\naddrs = "10.99.0.0/24"\npsk = "x"\n',
                               conn_extra='pools = ["rw"]\ndns = ["10.20.0.53"]'))
    assert msgs == [
        "gw.toml:4: pool[0].psk: unknown key 'psk' in pool[0] ('psk' belongs in a [[connection]] "
        "table)",
        "gw.toml:10: connection[0].dns (connection 'hq'): unknown key 'dns' in connection[0] ('dns' belongs in a "
        "[[pool]] table (a connection refers to pools by name with pools = [...]))",
    ]


def test_pools_written_after_child_lands_in_child():
    text = with_pools('[[pool]]\nname = "rw"\naddrs = "10.99.0.0/24"\n', conn_extra="")
    msgs = problems(text + 'pools = ["rw"]\n')
    assert msgs == ["gw.toml:14: connection[0].child[0].pools (connection 'hq', child 'net'): unknown key 'pools' in "
                    "connection[0].child[0] ('pools' is a connection key; keys written after "
                    "[[connection.child]] belong to that child, so move it above the first "
                    "[[connection.child]])"]


def test_single_bracket_pool():
    msgs = problems(with_pools('[pool]\nname = "rw"\naddrs = "10.99.0.0/24"\n', conn_extra=""))
    assert msgs == ["gw.toml:1: pool: expected an array of tables: write [[pool]] instead of [pool]"]


def test_top_level_pool_key_hint():
    msgs = problems('addrs = "10.99.0.0/24"\n' + with_pools("", conn_extra=""))
    assert msgs[0].startswith("gw.toml:1: addrs: unknown key 'addrs' in the top level ('addrs' "
                              "belongs in a [[pool]] table")


def test_bad_dns_subnets_lease_file():
    msgs = problems(with_pools("""\
        [[pool]]
        name = "rw"
        addrs = "10.99.0.0/24"
        dns = ["10.20.0.53", "ff02::1"]
        subnets = ["10.20.0.1/24"]
        lease_file = ""
        """))
    assert msgs == [
        "gw.toml:4: pool[0].dns[1]: ff02::1 is not a unicast address",
        "gw.toml:5: pool[0].subnets[0]: '10.20.0.1/24' has host bits set (did you mean "
        "'10.20.0.0/24'?)",
        "gw.toml:6: pool[0].lease_file: must not be empty",
    ]


def test_duplicate_pool_name_and_lease_file(tmp_path):
    msgs = problems(with_pools("""\
        [[pool]]
        name = "rw"
        addrs = "10.99.0.0/24"
        lease_file = "leases.json"

        [[pool]]
        name = "rw"
        addrs = "10.98.0.0/24"

        [[pool]]
        name = "other"
        addrs = "10.97.0.0/24"
        lease_file = "./leases.json"
        """, conn_extra='pools = ["rw", "other"]'))
    assert msgs == [
        "gw.toml:7: pool[1].name: duplicate pool name 'rw' (first defined at line 2)",
        f"gw.toml:13: pool[2].lease_file: lease_file '{Path.cwd() / 'leases.json'}' is also used "
        f"by pool 'rw' (line 1); each pool needs its own",
    ]


# -- connection keys ---------------------------------------------------------------------------

@pytest.mark.parametrize("pools,msg", [
    ('["rw4"]', "unknown pool 'rw4' (did you mean 'rw'?)"),
    ('["zzz"]', "unknown pool 'zzz' (defined pools: rw, guests)"),
])
def test_unknown_pool_name(pools, msg):
    text = with_pools("""\
        [[pool]]
        name = "rw"
        addrs = "10.99.0.0/24"

        [[pool]]
        name = "guests"
        addrs = "10.98.0.0/24"
        """, conn_extra=f"pools = {pools}")
    assert problems(text) == [f"gw.toml:12: connection[0].pools[0] (connection 'hq'): {msg}"]


def test_unknown_pool_without_any_pool():
    assert problems(with_pools("")) == [
        "gw.toml:5: connection[0].pools[0] (connection 'hq'): unknown pool 'rw' (no [[pool]] is defined)"]


def test_invalid_pool_does_not_make_its_name_unknown():
    msgs = problems(with_pools('[[pool]]\nname = "rw"\naddrs = "nonsense"\n'))
    assert len(msgs) == 1 and "pool[0].addrs" in msgs[0]


def test_pools_list_checks():
    text = with_pools('[[pool]]\nname = "rw"\naddrs = "10.99.0.0/24"\n',
                      conn_extra='pools = ["rw", "rw"]')
    assert problems(text) == ["gw.toml:8: connection[0].pools[1] (connection 'hq'): duplicate entry 'rw'"]
    text = with_pools('[[pool]]\nname = "rw"\naddrs = "10.99.0.0/24"\n', conn_extra='pools = "rw"')
    assert problems(text) == ["gw.toml:8: connection[0].pools (connection 'hq'): expected an array, got a string "
                              "('rw'); write e.g. [\"rw\"]"]


@pytest.mark.parametrize("vips,msg", [
    ('["10.99.0.5"]', "'10.99.0.5': only \"0.0.0.0\" and \"::\" are supported (request any "
                      "IPv4/IPv6 address; the gateway picks it and gives the same one back on "
                      "reconnect); did you mean '0.0.0.0'?"),
    ('["fd00::5"]', "did you mean '::'?"),
    ('["%any"]', "write '0.0.0.0' instead of '%any'"),
    ('["%any6"]', "write '::' instead of '%any6'"),
    ('["dhcp"]', "'dhcp' is not an IP address; write \"0.0.0.0\" to request an IPv4 virtual IP "
                 "or \"::\" for IPv6"),
    ('["0.0.0.0", "0.0.0.0"]', "duplicate entry '0.0.0.0'"),
    ('[]', "must not be empty"),
])
def test_bad_vips(vips, msg):
    msgs = problems(with_pools("", conn_extra=f"vips = {vips}"))
    assert len(msgs) == 1
    assert re.match(r"gw\.toml:5: connection\[0\]\.vips(\[\d\])? \(connection 'hq'\): ", msgs[0])
    assert msg in msgs[0]


def test_pools_and_vips_together():
    msgs = problems(with_pools('[[pool]]\nname = "rw"\naddrs = "10.99.0.0/24"\n',
                               conn_extra='pools = ["rw"]\nvips = ["0.0.0.0"]'))
    assert msgs == ["gw.toml:9: connection[0].vips (connection 'hq'): a connection either hands out virtual IPs "
                    "(pools) or requests one (vips), not both"]


def test_unused_pool_warns():
    cfg = parse(with_pools('[[pool]]\nname = "rw"\naddrs = "10.99.0.0/24"\n'
                           '[[pool]]\nname = "spare"\naddrs = "10.98.0.0/24"\n'))
    assert [str(w) for w in cfg.warnings] == [
        "gw.toml:5: pool[1].name: pool 'spare' is not used by any connection (list it in a "
        "connection's pools)"]


# -- reload and docs ---------------------------------------------------------------------------

def test_diff_sees_pool_and_connection_changes(tmp_path):
    old = parse(GOOD, tmp_path)
    new = parse(GOOD.replace('addrs = "10.99.0.0/24"', 'addrs = "10.99.0.0/25"')
                .replace('pools = ["rw", "rw6"]', 'pools = ["rw"]'), tmp_path)
    d = diff_configs(old, new)
    assert d.gateway_changed == ("pools",)
    assert d.changed == ("roadwarriors",) and d.changed_keys["roadwarriors"] == ("pools",)
    assert diff_configs(old, parse(GOOD, tmp_path)).gateway_changed == ()


def test_docs_document_every_pool_key():
    doc = (ROOT / "docs/config.md").read_text()
    m = re.search(r"^## `\[\[pool\]\]`\n(.*?)(?=^## )", doc, re.M | re.S)
    assert m
    assert set(re.findall(r"^\| `([a-z_]+)` \|", m.group(1), re.M)) == set(POOL_KEYS)
    assert (ROOT / "docs/remote-access.md").is_file()
