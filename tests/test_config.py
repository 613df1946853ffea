"""Configuration loading and validation: parsed types, defaults, error messages with lines."""
from __future__ import annotations

import base64
import dataclasses
import datetime
import ipaddress
import os
import textwrap
from pathlib import Path

import pytest

from ikev2.constants import IdType, ProtocolId
from ikev2.payloads import Proposal
from vpn_gw.config import ConfigError, KeyLocator, Secret, diff_configs, format_key_path, load_config, parse_config

BASE = """\
[gateway]
listen = ["0.0.0.0", "::"]

[[connection]]
name = "branch1"
local_addrs = ["192.0.2.1"]
remote_addrs = ["198.51.100.1"]
local_id = "hq.example.org"
remote_id = "branch1.example.org"
psk = "0x00112233445566778899aabbccddeeff"
ike_proposals = ["aes256gcm16-prfsha256-x25519", "aes128-sha256-ecp256"]
start_action = "start"
dpd_delay = "30s"

  [[connection.child]]
  name = "net"
  local_ts = ["10.1.0.0/24"]
  remote_ts = ["10.2.0.0/24"]
  esp_proposals = ["aes256gcm16"]
"""


def parse(text, tmp_path=None, name="gw.toml"):
    return parse_config(textwrap.dedent(text), name, tmp_path)


def error(text, tmp_path=None) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        parse(text, tmp_path)
    e = ei.value
    assert "\n" not in str(e)
    return e


def messages(e: ConfigError) -> list[str]:
    return [str(p) for p in e.problems]


# -- a valid file ------------------------------------------------------------------------------

def test_valid_config_parsed_types():
    cfg = parse(BASE)
    assert cfg.listen == (ipaddress.ip_address("0.0.0.0"), ipaddress.ip_address("::"))
    (c,) = cfg.connections
    assert c.name == "branch1" and cfg.connection("branch1") is c
    assert c.local_addrs == (ipaddress.IPv4Address("192.0.2.1"),)
    assert c.remote_addrs == (ipaddress.IPv4Address("198.51.100.1"),)
    assert c.local_id.id_type == IdType.ID_FQDN and c.local_id.data == b"hq.example.org"
    assert c.remote_id.text == "branch1.example.org"
    assert c.auth == "psk"
    assert isinstance(c.psk, Secret) and c.psk.reveal() == bytes.fromhex("00112233445566778899aabbccddeeff")
    assert all(isinstance(p, Proposal) and p.protocol == ProtocolId.IKE for p in c.ike_proposals)
    assert c.ike_proposals_text == ("aes256gcm16-prfsha256-x25519", "aes128-sha256-ecp256")
    assert c.dpd_delay == 30.0 and isinstance(c.dpd_delay, float)
    assert c.start_action == "start"
    (ch,) = c.children
    assert c.child("net") is ch
    assert ch.local_ts == (ipaddress.ip_network("10.1.0.0/24"),)
    assert ch.esp_proposals[0].protocol == ProtocolId.ESP
    assert ch.start_action == "start"  # inherited from the connection
    assert cfg.warnings == ()


def test_defaults():
    cfg = parse("""
        [[connection]]
        name = "c"
        remote_addrs = ["%any"]
        psk = "a long enough pre-shared key"
        [[connection.child]]
        name = "n"
        local_ts = ["10.0.0.0/8"]
        remote_ts = ["0.0.0.0/0", "::/0"]
    """)
    assert str(cfg.control_socket) == "/run/vpn-gw/control.sock"
    assert (cfg.ike_port, cfg.natt_port, cfg.log_level, cfg.log_format, cfg.half_open_limit,
            cfg.cookie_threshold) == (500, 4500, "info", "console", 1000, 100)
    assert (cfg.offload, cfg.tun_tso, cfg.holdoff_us) == (True, "auto", 0)
    c = cfg.connections[0]
    assert c.local_addrs == () and c.remote_addrs == () and c.remote_any
    assert c.local_id is None and c.remote_id.is_any
    assert (c.auth, c.start_action, c.dpd_delay, c.dpd_action) == ("psk", "none", 0.0, "clear")
    assert (c.rekey_time, c.reauth_time, c.over_time, c.rand_time) == (14400.0, 0.0, 1440.0, 1440.0)
    assert (c.encap, c.mobike, c.fragmentation, c.fragment_size, c.keyingtries) == \
        (False, True, True, 1280, 1)
    assert c.if_id is None and c.interface is None
    assert len(c.ike_proposals) == 2
    ch = c.children[0]
    assert (ch.mode, ch.start_action, ch.dpd_action, ch.replay_window) == ("tunnel", "none", "clear", 1024)
    assert (ch.rekey_time, ch.life_time, ch.rand_time) == (3600.0, 3960.0, 360.0)
    assert (ch.rekey_bytes, ch.life_bytes, ch.rekey_packets, ch.life_packets) == (0, 0, 0, 0)
    assert len(ch.esp_proposals) == 2
    assert c.matches_remote_addr("203.0.113.9")


@pytest.mark.parametrize("value, want", [("true", True), ("false", False), ('"auto"', "auto")])
def test_tun_tso_values(value, want):
    assert parse(f"[gateway]\ntun_tso = {value}\n").tun_tso == want


def test_tun_tso_refuses_other_values():
    e = error('[gateway]\ntun_tso = "yes"\n')
    assert messages(e) == ['gw.toml:2: gateway.tun_tso: expected true, false or "auto", got a string (\'yes\')']


def test_holdoff_us():
    assert parse("[gateway]\nholdoff_us = 500\n").holdoff_us == 500
    assert messages(error("[gateway]\nholdoff_us = 20000\n")) == \
        ["gw.toml:2: gateway.holdoff_us: must be between 0 and 10000, got 20000"]
    msg = messages(error('[gateway]\nholdoff_us = "1ms"\n'))[0]
    assert msg.startswith("gw.toml:2: gateway.holdoff_us: expected an integer"), msg


def test_outbound_worker():
    assert parse("[gateway]\n").outbound_worker is False
    assert parse("[gateway]\noutbound_worker = true\n").outbound_worker is True
    assert messages(error('[gateway]\ndataplane = "xfrm"\noutbound_worker = true\n')) == \
        ['gw.toml:3: gateway.outbound_worker: outbound_worker is for the userspace data plane, '
         'not dataplane = "xfrm"']
    msg = messages(error('[gateway]\noutbound_worker = 2\n'))[0]
    assert msg == "gw.toml:2: gateway.outbound_worker: expected a boolean, got an integer (2)", msg


def test_config_is_immutable():
    cfg = parse(BASE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.connections[0].name = "x"  # type: ignore[misc]
    assert isinstance(cfg.connections, tuple) and isinstance(cfg.connections[0].children, tuple)


@pytest.mark.parametrize("value,seconds", [('"30s"', 30), ('"5m"', 300), ('"4h"', 14400),
                                           ('"1d"', 86400), ("90", 90), ('"1.5h"', 5400),
                                           ('"45"', 45), ("2.5", 2.5)])
def test_durations(value, seconds):
    cfg = parse(BASE.replace('dpd_delay = "30s"', f"dpd_delay = {value}"))
    assert cfg.connections[0].dpd_delay == seconds


def test_duration_errors():
    e = error(BASE.replace('dpd_delay = "30s"', 'dpd_delay = "30x"'))
    assert str(e).startswith("gw.toml:13: connection[0].dpd_delay (connection 'branch1'): invalid duration '30x'")
    e = error(BASE.replace('dpd_delay = "30s"', "dpd_delay = -5"))
    assert "must be a finite number >= 0" in str(e)
    e = error(BASE.replace('dpd_delay = "30s"', "dpd_delay = true"))
    assert "expected a duration" in str(e)


def test_volume_limits_and_lifetimes():
    cfg = parse(BASE + '  rekey_bytes = "500M"\n  rekey_packets = 1000000\n  life_time = "2h"\n'
                       '  rand_time = "5m"\n  replay_window = 64\n')
    ch = cfg.connections[0].children[0]
    assert ch.rekey_bytes == 500 * 2**20 and ch.life_bytes == int(500 * 2**20 * 1.1)
    assert ch.rekey_packets == 1000000 and ch.life_packets == 1100000
    assert (ch.life_time, ch.rand_time, ch.replay_window) == (7200.0, 300.0, 64)


def test_lifetime_consistency_errors():
    e = error(BASE + '  rekey_time = "1h"\n  life_time = "30m"\n')
    assert ("connection[0].child[0].life_time (connection 'branch1', child 'net'): "
            "life_time (1800s) must be greater than rekey_time (3600s)") in str(e)
    assert str(e).startswith("gw.toml:21:")
    e = error(BASE + '  rand_time = "2h"\n')
    assert "rand_time (7200s) must be less than rekey_time (3600s)" in str(e)
    e = error(BASE + "  rekey_bytes = 1000\n  life_bytes = 1000\n")
    assert "life_bytes (1000) must be greater than rekey_bytes (1000)" in str(e)
    e = error(BASE.replace('dpd_delay = "30s"', 'rekey_time = "1h"\nrand_time = "2h"'))
    assert ("connection[0].rand_time (connection 'branch1'): "
            "rand_time (7200s) must be less than rekey_time (3600s)") in str(e)


# -- error messages: file, line, key -----------------------------------------------------------

def test_unknown_key_did_you_mean_with_line():
    e = error(BASE.replace('dpd_delay = "30s"', 'dpd_dealy = "30s"'))
    assert str(e) == ("gw.toml:13: connection[0].dpd_dealy (connection 'branch1'): unknown key 'dpd_dealy' in "
                      "connection[0] (did you mean 'dpd_delay'?)")
    assert (e.file, e.line, e.key) == ("gw.toml", 13, "connection[0].dpd_dealy")
    e = error("[gateway]\nlisten = []\nlog_levl = 'debug'\n")
    assert messages(e) == [
        "gw.toml:2: gateway.listen: must not be empty",
        "gw.toml:3: gateway.log_levl: unknown key 'log_levl' in gateway (did you mean 'log_level'?)",
    ]
    e = error("[gatway]\n")
    assert str(e) == "gw.toml:1: gatway: unknown key 'gatway' in the top level (did you mean 'gateway'?)"


def test_connection_key_inside_child_gets_a_hint():
    e = error(BASE + "  mobike = false\n")
    assert str(e).startswith("gw.toml:20: connection[0].child[0].mobike (connection 'branch1', child 'net'): unknown "
                             "key 'mobike'")
    assert "move it above the first [[connection.child]]" in str(e)


def test_list_element_lines_in_multiline_arrays():
    text = BASE.replace('local_ts = ["10.1.0.0/24"]',
                        'local_ts = [\n    "10.1.0.0/24",\n    "2001:db8:1::/48",  # v6 too\n'
                        '    "10.3.0.7/24",\n  ]')
    e = error(text)
    assert str(e) == ("gw.toml:20: connection[0].child[0].local_ts[2] (connection 'branch1', child 'net'): "
                      "'10.3.0.7/24' has host bits set (did you mean '10.3.0.0/24'?)")


def test_error_in_second_connection_and_child():
    text = BASE + textwrap.dedent("""
        [[connection]]
        name = "branch2"
        remote_addrs = ["203.0.113.7"]
        psk = "another long secret"

          [[connection.child]]
          name = "a"
          local_ts = ["10.1.0.0/24"]
          remote_ts = ["10.4.0.0/24"]

          [[connection.child]]
          name = "b"
          local_ts = ["10.1.0.0/24"]
          remote_ts = ["10.5.0.0/33"]
        """)
    e = error(text)
    assert str(e) == ("gw.toml:34: connection[1].child[1].remote_ts[0] (connection 'branch2', child 'b'): "
                      "'10.5.0.0/33' is not a valid CIDR subnet "
                      "(traffic selectors are CIDR subnets like 10.1.0.0/24 or 2001:db8::/64)")


def test_problems_name_the_connection_and_child():
    text = BASE + textwrap.dedent("""\

        [[connection]]
        name = "branch2"
        remote_addrs = ["198.51.100.2"]
        psk = "0x00112233445566778899aabbccddeeff"
        dpd_delay = "soon"
          [[connection.child]]
          name = "lan"
          local_ts = ["10.1.0.0/24"]
          remote_ts = ["10.9.0.1/24"]
        """)
    e = error(text)
    assert [(p.key, p.names) for p in e.problems] == [
        ("connection[1].dpd_delay", "connection 'branch2'"),
        ("connection[1].child[0].remote_ts[0]", "connection 'branch2', child 'lan'")]
    assert str(e.problems[0]).startswith("gw.toml:25: connection[1].dpd_delay (connection 'branch2'): ")
    # a missing or invalid name is not shown as one
    e = error(BASE.replace('name = "branch1"', 'name = "branch 1"').replace('dpd_delay = "30s"',
                                                                             'dpd_delay = "x"'))
    assert [p.names for p in e.problems] == [None, None]


def test_missing_required_key_points_at_table_header():
    e = error(BASE.replace('  name = "net"\n', ""))
    assert str(e) == "gw.toml:15: connection[0].child[0] (connection 'branch1'): missing required key 'name'"
    e = error(BASE.replace('psk = "0x00112233445566778899aabbccddeeff"\n', ""))
    assert str(e) == ("gw.toml:4: connection[0] (connection 'branch1'): missing required key 'psk' (auth = \"psk\" "
                      "needs a pre-shared key)")


def test_toml_syntax_error_has_line():
    e = error(BASE.replace('dpd_delay = "30s"', "dpd_delay = 30s"))
    assert str(e).startswith("gw.toml:13: invalid TOML: ")
    assert e.line == 13


@pytest.mark.parametrize("text,expected", [
    ('[gateway]\nlog_level = "info\n',
     "gw.toml:2: invalid TOML: a string is not closed: the closing quote is missing (a string must end on its line) "
     "(column 18)"),
    ("[gateway]\nlog_level = debug\n",
     'gw.toml:2: invalid TOML: the value is not quoted: strings need quotes (key = "value"), only '
     "numbers, true/false and [arrays] are written without (column 13)"),
    ("[gateway]\nlisten = [\"0.0.0.0\" \"::\"]\n",
     "gw.toml:2: invalid TOML: an array is not closed: a ']' is missing (or a ',' between two of its "
     "items) (column 21)"),
    ("[gateway]\nike_port = 500 4500\n",
     "gw.toml:2: invalid TOML: something follows the value on the same line: one `key = value` per "
     "line (and '#' before a comment; arrays need commas between items) (column 16)"),
    ("[[connection]\n", "gw.toml:1: invalid TOML: a table header is not closed: write [gateway], "
                        "[[connection]] or [[connection.child]] (column 13)"),
    ("[gateway]\nlog_level\n", "gw.toml:2: invalid TOML: expected `key = value`: the '=' after the key "
                               "is missing (column 10)"),
    ('[gateway]\ncontrol_socket = "C:\\data"\n',
     "gw.toml:2: invalid TOML: a backslash in a \"...\" string must start an escape (\\\\, \\n, \\t, \\\"); "
     "for a literal backslash write \\\\ or use single quotes: '...' (column 23)"),
    ("[gateway]\nlog_level = \"info\"\nlog_level = \"debug\"\n",
     "gw.toml:3: invalid TOML: 'log_level' is set twice in this [gateway] table (first at line 2) (column 20)"),
    ("[gateway]\n[gateway]\n", "gw.toml:2: invalid TOML: the table [gateway] is defined twice (use "
                               "[[...]] for a table that repeats) (column 9)"),
    ("[gateway]\nlisten = [\"0.0.0.0\",\n", "gw.toml: invalid TOML: the file ends where a value is "
                                            "expected: an array or inline table is not closed (at the "
                                            "end of the file)"),
])
def test_toml_syntax_errors_in_words(text, expected):
    assert str(error(text)) == expected


def test_swanctl_conf_passed_by_mistake_is_recognised():
    path = Path(__file__).resolve().parent.parent / "examples/site-to-site/strongswan-branch1/swanctl.conf"
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    assert str(ei.value) == (f"{path}: this looks like a strongSwan swanctl.conf, not a vpn-gw "
                             f"configuration (TOML); convert it with `vpn-gw import-swanctl FILE` "
                             f"(docs/config.md describes the format)")


def test_ipsec_conf_passed_by_mistake_is_recognised():
    e = error("config setup\n    charondebug=\"ike 1\"\n\nconn branch1\n    left=192.0.2.1\n    auto=start\n")
    assert str(e).startswith("gw.toml: this looks like a strongSwan ipsec.conf, not a vpn-gw "
                             "configuration (TOML)")


def test_connection_key_after_child_set_twice_says_why():
    # the child sets rekey_time; a second rekey_time below it, meant for the connection
    e = error(BASE + '  rekey_time = "1h"\n\nrekey_time = "4h"\n')
    assert str(e) == (
        "gw.toml:22: invalid TOML: 'rekey_time' is set twice in this [[connection.child]] table (first "
        "at line 20): keys written after [[connection.child]] belong to that child (TOML scoping), so a "
        "second 'rekey_time' meant for the connection lands in the child too; move the connection's "
        "'rekey_time' above the first [[connection.child]] (line 15) (column 18)")
    # a key only a connection has, set twice below a child: the same TOML error, no child hint
    e = error(BASE.replace("[gateway]\n", '[gateway]\nlog_level = "info"\nlog_level = "info"\n'))
    assert "keys written after" not in str(e) and "(first at line 2)" in str(e)


def test_dpd_action_landing_in_the_child_warns():
    cfg = parse(BASE + '\ndpd_action = "restart"\n')
    assert cfg.connections[0].dpd_action == "clear"             # TOML scoping: the child's
    assert cfg.connections[0].children[0].dpd_action == "restart"
    assert [str(w) for w in cfg.warnings] == [
        "gw.toml:21: connection[0].child[0].dpd_action (connection 'branch1', child 'net'): "
        "dpd_action = \"restart\" is set for child 'net' only: "
        "keys written after [[connection.child]] belong to that child (TOML scoping), and the "
        "connection keeps dpd_action = \"clear\", which decides what happens when the peer is lost; if "
        "it is meant for the connection, move it above the first [[connection.child]] (set dpd_action "
        "on the connection too to keep a per-child value without this warning)"]
    # written on the connection: no warning; on both (a deliberate per-child value): no warning
    assert parse(BASE.replace('dpd_delay = "30s"\n', 'dpd_delay = "30s"\ndpd_action = "restart"\n')
                 ).warnings == ()
    assert parse(BASE.replace('dpd_delay = "30s"\n', 'dpd_delay = "30s"\ndpd_action = "clear"\n')
                 + '  dpd_action = "restart"\n').warnings == ()
    # the same value as the connection's changes nothing: no warning
    assert parse(BASE + '  dpd_action = "clear"\n').warnings == ()


def test_start_action_landing_in_the_child_warns():
    cfg = parse(BASE.replace('start_action = "start"\n', "") + '  start_action = "trap"\n')
    assert [w.key for w in cfg.warnings] == ["connection[0].child[0].start_action"]
    assert "the connection keeps start_action = \"none\", which decides whether the gateway starts " \
           "(or traps) the connection" in str(cfg.warnings[0])


def test_all_problems_collected_first_is_message():
    e = error(BASE.replace('start_action = "start"', 'start_action = "strat"')
              .replace('["10.2.0.0/24"]', '["10.2.0.0/16", "fe80::1/64"]')
              .replace("[gateway]", "[gateway]\nike_port = 70000"))
    assert messages(e) == [
        "gw.toml:2: gateway.ike_port: must be between 1 and 65535, got 70000",
        "gw.toml:13: connection[0].start_action (connection 'branch1'): invalid value 'strat': must be one of none, "
        "start, trap (did you mean 'start'?)",
        "gw.toml:19: connection[0].child[0].remote_ts[1] (connection 'branch1', child 'net'): 'fe80::1/64' has host "
        "bits set (did you mean 'fe80::/64'?)",
    ]
    assert str(e).endswith("(and 2 more problems)")


@pytest.mark.parametrize("replace,expected", [
    (("[gateway]", "[gateway]\nike_port = \"500\""),
     "gw.toml:2: gateway.ike_port: expected an integer, got a string ('500') (write it without quotes)"),
    (("[gateway]", "[gateway]\ncookie_threshold = -1"),
     "gw.toml:2: gateway.cookie_threshold: must be >= 0, got -1"),
    (("[gateway]", "[gateway]\nhalf_open_limit = 0"),
     "gw.toml:2: gateway.half_open_limit: must be >= 1, got 0"),
    (("[gateway]", "[gateway]\ncookie_grace = \"200s\""),
     "gw.toml:2: gateway.cookie_grace: must be 0s to cookie_secret_lifetime (120s), got 200s"),
    (("[gateway]", "[gateway]\nfragment_budget_per_sa = \"1K\""),
     "gw.toml:2: gateway.fragment_budget_per_sa: must be 4K to 128K, got 1024"),
    (("[gateway]", "[gateway]\nfragment_budget_total = \"32K\""),
     "gw.toml:2: gateway.fragment_budget_total: must be at least fragment_budget_per_sa (65536), got 32768"),
    (("[gateway]", "[gateway]\nhalf_open_per_address = -1"),
     "gw.toml:2: gateway.half_open_per_address: must be >= 0, got -1"),
    (("[gateway]", "[gateway]\nnatt_port = 500"),
     "gw.toml:2: gateway.natt_port: must differ from ike_port (500)"),
    (('dpd_delay = "30s"', 'mobike = "yes"'),
     "gw.toml:13: connection[0].mobike (connection 'branch1'): expected a boolean, got a string ('yes') (write true or "
     "false, without quotes)"),
    (('local_ts = ["10.1.0.0/24"]', 'local_ts = "10.1.0.0/24"'),
     "gw.toml:17: connection[0].child[0].local_ts (connection 'branch1', child 'net'): expected an array, got a string "
     "('10.1.0.0/24'); write e.g. [\"10.1.0.0/24\"]"),
    (('local_ts = ["10.1.0.0/24"]', 'local_ts = []'),
     "gw.toml:17: connection[0].child[0].local_ts (connection 'branch1', child 'net'): must not be empty"),
    (('local_ts = ["10.1.0.0/24"]', 'local_ts = ["10.1.0.0/24", "10.1.0.0/24"]'),
     "gw.toml:17: connection[0].child[0].local_ts[1] (connection 'branch1', child 'net'): "
     "duplicate entry '10.1.0.0/24'"),
    (('local_ts = ["10.1.0.0/24"]', 'local_ts = ["dynamic"]'),
     "gw.toml:17: connection[0].child[0].local_ts[0] (connection 'branch1', child 'net'): 'dynamic' is not a valid "
     "CIDR subnet ('dynamic' is not supported: list the subnets explicitly)"),
    (('name = "branch1"', 'name = 5'),
     "gw.toml:5: connection[0].name: expected a string, got an integer (5)"),
    (('name = "branch1"', 'name = "branch 1"'),
     "gw.toml:5: connection[0].name: invalid name 'branch 1': use 1-64 letters, digits, '.', '_' or '-', starting with "
     "a letter or digit"),
    (('local_addrs = ["192.0.2.1"]', 'local_addrs = ["192.0.2.300"]'),
     "gw.toml:6: connection[0].local_addrs[0] (connection 'branch1'): '192.0.2.300' is not an IP address"),
    (('remote_addrs = ["198.51.100.1"]', 'remote_addrs = ["198.51.100.1", "%any"]'),
     "gw.toml:7: connection[0].remote_addrs (connection 'branch1'): %any cannot be combined with other addresses"),
    (('remote_addrs = ["198.51.100.1"]', 'remote_addrs = ["not a host!"]'),
     "gw.toml:7: connection[0].remote_addrs[0] (connection 'branch1'): 'not a host!' is neither an IP address, a CIDR "
     "network, an FQDN nor %any"),
    (('remote_addrs = ["198.51.100.1"]', 'remote_addrs = ["2001:db8::1"]'),
     "gw.toml:7: connection[0].remote_addrs (connection 'branch1'): local_addrs and remote_addrs have no address "
     "family in common"),
    (('remote_addrs = ["198.51.100.1"]', 'remote_addrs = ["198.51.100.0/24"]'),
     "gw.toml:12: connection[0].start_action (connection 'branch1'): start_action = start/trap needs a remote address "
     "or FQDN to initiate to in remote_addrs (%any and subnets can only respond)"),
    (('listen = ["0.0.0.0", "::"]', 'listen = ["192.0.2.9", "::"]'),
     "gw.toml:6: connection[0].local_addrs[0] (connection 'branch1'): 192.0.2.1 is not covered by gateway.listen "
     "(192.0.2.9, ::)"),
    (('local_id = "hq.example.org"', 'local_id = "%any"'),
     "gw.toml:8: connection[0].local_id (connection 'branch1'): local_id must be one exact identity, not '%any'"),
    (('local_id = "hq.example.org"', 'local_id = "C=CH, XX=foo"'),
     "gw.toml:8: connection[0].local_id (connection 'branch1'): invalid identity 'C=CH, XX=foo': unknown DN attribute "
     "'XX'"),
    (('dpd_delay = "30s"', 'auth = "pks"'),
     "gw.toml:13: connection[0].auth (connection 'branch1'): invalid value 'pks': must be one of psk, pubkey, "
     "eap-mschapv2, eap-md5, eap-tls (did you mean 'psk'?)"),
    (('dpd_delay = "30s"', 'dpd_action = "hold"'),
     "gw.toml:13: connection[0].dpd_action (connection 'branch1'): invalid value 'hold': must be one of clear, "
     "restart, trap"),
    (('esp_proposals = ["aes256gcm16"]', 'mode = "tunel"'),
     "gw.toml:19: connection[0].child[0].mode (connection 'branch1', child 'net'): invalid value 'tunel': must be one "
     "of tunnel, transport (did you mean 'tunnel'?)"),
    (('dpd_delay = "30s"', 'fragment_size = 100'),
     "gw.toml:13: connection[0].fragment_size (connection 'branch1'): must be between 512 and 65535, got 100"),
    (('dpd_delay = "30s"', 'interface = "this-name-is-too-long"'),
     "gw.toml:13: connection[0].interface (connection 'branch1'): invalid interface name 'this-name-is-too-long': 1-15 "
     "characters of letters, digits, '_', '-', '.'"),
    (("[[connection]]", "[connection]"),
     "gw.toml:4: connection: expected an array of tables: write [[connection]] instead of [connection]"),
])
def test_specific_errors(replace, expected):
    old, new = replace
    assert old in BASE
    e = error(BASE.replace(old, new, 1))
    assert str(e).split(" (and ")[0] == expected or expected in messages(e)


def test_child_table_instead_of_array():
    text = BASE.replace("[[connection.child]]", "[connection.child]")
    e = error(text)
    assert "gw.toml:15: connection[0].child (connection 'branch1'): expected an array of tables: write " \
           "[[connection.child]] instead of [connection.child]" in messages(e)


def test_proposal_errors_name_the_token_and_line():
    e = error(BASE.replace('"aes128-sha256-ecp256"', '"aes999-foo"'))
    assert str(e).startswith("gw.toml:11: connection[0].ike_proposals[1] (connection 'branch1'): ")
    assert "aes999" in str(e)
    e = error(BASE.replace('esp_proposals = ["aes256gcm16"]', 'esp_proposals = ["aes256gcm16", "3des-md5"]'))
    assert str(e).startswith("gw.toml:19: connection[0].child[0].esp_proposals[1] "
                             "(connection 'branch1', child 'net'): ")
    assert "3des" in str(e)
    e = error(BASE.replace('esp_proposals = ["aes256gcm16"]', "esp_proposals = []"))
    assert str(e) == ("gw.toml:19: connection[0].child[0].esp_proposals (connection 'branch1', child 'net'): "
                      "must not be empty")
    # an AEAD IKE proposal needs a PRF
    e = error(BASE.replace('"aes128-sha256-ecp256"', '"aes256gcm16-x25519"'))
    assert "PRF" in str(e)


def test_other_real_proposals_accepted():
    cfg = parse(BASE.replace('"aes128-sha256-ecp256"', '"aes256-sha384-modp3072"')
                .replace('esp_proposals = ["aes256gcm16"]', 'esp_proposals = ["aes128-sha256-modp2048", '
                                                            '"aes256gcm16-esn"]'))
    assert len(cfg.connections[0].children[0].esp_proposals) == 2


# -- names -------------------------------------------------------------------------------------

def test_duplicate_connection_and_child_names():
    dup = BASE + BASE.split("\n", 3)[3].replace('local_addrs = ["192.0.2.1"]\n', "")
    e = error(dup)
    assert "gw.toml:21: connection[1].name: duplicate connection name 'branch1' (first defined at line 5)" \
        in messages(e)
    e = error(BASE + '\n  [[connection.child]]\n  name = "net"\n  local_ts = ["10.9.0.0/24"]\n'
                     '  remote_ts = ["10.8.0.0/24"]\n')
    assert str(e) == ("gw.toml:22: connection[0].child[1].name (connection 'branch1'): duplicate child name 'net' in "
                      "this connection (first defined at line 16)")


def test_same_child_name_in_two_connections_is_fine():
    second = BASE.split("\n", 3)[3].replace('"branch1"', '"branch2"', 1) \
        .replace("198.51.100.1", "198.51.100.2")
    cfg = parse(BASE + second)
    assert [c.name for c in cfg.connections] == ["branch1", "branch2"]
    assert [c.children[0].name for c in cfg.connections] == ["net", "net"]


# -- addresses, traffic selectors, identities --------------------------------------------------

def test_remote_addr_forms_and_matching():
    cfg = parse(BASE.replace('remote_addrs = ["198.51.100.1"]',
                             'remote_addrs = ["198.51.100.1", "vpn.example.net", "203.0.113.0/24"]'))
    c = cfg.connections[0]
    assert c.remote_addrs == (ipaddress.ip_address("198.51.100.1"), "vpn.example.net",
                              ipaddress.ip_network("203.0.113.0/24"))
    assert c.initiate_targets == (ipaddress.ip_address("198.51.100.1"), "vpn.example.net")
    cfg = parse(BASE.replace('remote_addrs = ["198.51.100.1"]',
                             'remote_addrs = ["198.51.100.1", "203.0.113.0/24"]'))
    c = cfg.connections[0]
    assert c.matches_remote_addr("203.0.113.77") and c.matches_remote_addr("198.51.100.1")
    assert not c.matches_remote_addr("198.51.100.2")
    assert not c.matches_remote_addr("2001:db8::1")


def test_traffic_selectors_ipv6_and_mixed_families():
    cfg = parse(BASE.replace('local_ts = ["10.1.0.0/24"]', 'local_ts = ["10.1.0.0/24", "2001:db8:1::/48"]')
                .replace('remote_ts = ["10.2.0.0/24"]', 'remote_ts = ["2001:db8:2::/48", "10.2.0.5"]'))
    ch = cfg.connections[0].children[0]
    assert ch.local_ts == (ipaddress.ip_network("10.1.0.0/24"), ipaddress.ip_network("2001:db8:1::/48"))
    assert ch.remote_ts[1] == ipaddress.ip_network("10.2.0.5/32")
    e = error(BASE.replace('remote_ts = ["10.2.0.0/24"]', 'remote_ts = ["2001:db8:2::/48"]'))
    assert str(e) == ("gw.toml:18: connection[0].child[0].remote_ts (connection 'branch1', child 'net'): local_ts and "
                      "remote_ts have no address family in common (IPv4 with IPv6 can never match)")


@pytest.mark.parametrize("text,id_type,data", [
    ("192.0.2.1", IdType.ID_IPV4_ADDR, bytes([192, 0, 2, 1])),
    ("2001:db8::1", IdType.ID_IPV6_ADDR, ipaddress.ip_address("2001:db8::1").packed),
    ("hq.example.org", IdType.ID_FQDN, b"hq.example.org"),
    ("@hq.example.org", IdType.ID_FQDN, b"hq.example.org"),
    ("admin@example.org", IdType.ID_RFC822_ADDR, b"admin@example.org"),
    ("fqdn:admin@example.org", IdType.ID_FQDN, b"admin@example.org"),
    ("email:hq.example.org", IdType.ID_RFC822_ADDR, b"hq.example.org"),
    ("keyid:0a0b", IdType.ID_KEY_ID, b"\x0a\x0b"),
    ("ipv4:192.0.2.1", IdType.ID_IPV4_ADDR, bytes([192, 0, 2, 1])),
    ("C=CH, O=Example, CN=hq", IdType.ID_DER_ASN1_DN, None),
])
def test_identity_inference(text, id_type, data):
    cfg = parse(BASE.replace('local_id = "hq.example.org"', f'local_id = "{text}"'))
    ident = cfg.connections[0].local_id
    assert ident.id_type == id_type
    if data is not None:
        assert ident.data == data
    else:
        assert ident.data.startswith(b"\x30")  # DER SEQUENCE


def test_remote_id_patterns():
    cfg = parse(BASE.replace('remote_id = "branch1.example.org"', 'remote_id = "*@example.org"'))
    assert cfg.connections[0].remote_id.text == "*@example.org"
    cfg = parse(BASE.replace('remote_id = "branch1.example.org"', 'remote_id = "%any"'))
    assert cfg.connections[0].remote_id.is_any


# -- PSK ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("value,expected", [
    ('"correct horse battery staple"', b"correct horse battery staple"),
    ('"0x0011223344556677889900112233445566778899"', bytes.fromhex("0011223344556677889900112233445566778899")),
    ('"0sAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="', bytes(range(32))),
])
def test_psk_formats(value, expected):
    cfg = parse(BASE.replace('"0x00112233445566778899aabbccddeeff"', value))
    assert cfg.connections[0].psk.reveal() == expected


def test_psk_file_relative_to_config(tmp_path):
    (tmp_path / "b1.psk").write_bytes(b"a-very-long-and-random-psk-value\n")
    os.chmod(tmp_path / "b1.psk", 0o600)
    cfg = parse(BASE.replace('"0x00112233445566778899aabbccddeeff"', '"file:b1.psk"'), tmp_path)
    assert cfg.connections[0].psk.reveal() == b"a-very-long-and-random-psk-value"
    assert cfg.warnings == ()
    os.chmod(tmp_path / "b1.psk", 0o644)
    cfg = parse(BASE.replace('"0x00112233445566778899aabbccddeeff"', '"file:b1.psk"'), tmp_path)
    assert [str(w) for w in cfg.warnings] == [
        f"gw.toml:10: connection[0].psk (connection 'branch1'): PSK file '{tmp_path}/b1.psk' is readable by "
        "group/others (mode 0644); chmod 600 it"]


def test_inline_secret_in_a_file_others_can_read_warns(tmp_path):
    p = tmp_path / "gw.toml"
    p.write_text(BASE)
    os.chmod(p, 0o640)
    assert [str(w) for w in load_config(p).warnings] == [
        f"{p}:10: connection[0].psk (connection 'branch1'): the psk is written inline in this file, "
        "which is readable by group/others (mode 0640); chmod 600 it, or keep the secret in a file of its own "
        f'("file:PATH", mode 600)']
    os.chmod(p, 0o600)
    assert load_config(p).warnings == ()
    # the key in a file of its own: the config file's mode does not matter
    (tmp_path / "b1.psk").write_text("0x00112233445566778899aabbccddeeff\n")
    os.chmod(tmp_path / "b1.psk", 0o600)
    p.write_text(BASE.replace('"0x00112233445566778899aabbccddeeff"', '"file:b1.psk"'))
    os.chmod(p, 0o644)
    assert load_config(p).warnings == ()


def test_inline_secrets_counted_in_one_warning(tmp_path):
    p = tmp_path / "gw.toml"
    p.write_text(BASE.replace('psk = "0x00112233445566778899aabbccddeeff"',
                              'auth = "eap-mschapv2"\nremote_auth = "psk"\n'
                              'psk = "0x00112233445566778899aabbccddeeff"\n'
                              'eap_password = "a long enough password"'))
    os.chmod(p, 0o604)
    ws = [str(w) for w in load_config(p).warnings]
    assert len(ws) == 1
    assert "connection[0].psk (connection 'branch1'): the psk (and 1 more secret) is written inline" in ws[0]
    assert "(mode 0604)" in ws[0]


def test_psk_file_missing(tmp_path):
    e = error(BASE.replace('"0x00112233445566778899aabbccddeeff"', '"file:nope.psk"'), tmp_path)
    assert str(e) == ("gw.toml:10: connection[0].psk (connection 'branch1'): cannot read PSK file "
                      f"'{tmp_path}/nope.psk': No such file or directory")


def test_psk_length_rules():
    e = error(BASE.replace('"0x00112233445566778899aabbccddeeff"', '"1234567"'))
    assert str(e).startswith("gw.toml:10: connection[0].psk (connection 'branch1'): pre-shared key is 7 bytes; at "
                             "least 8 are required")
    assert "1234567" not in str(e)
    cfg = parse(BASE.replace('"0x00112233445566778899aabbccddeeff"', '"12345678"'))
    assert [str(w) for w in cfg.warnings] == [
        "gw.toml:10: connection[0].psk (connection 'branch1'): pre-shared key is only 8 bytes; use at least 16 random "
        "bytes (`head -c 32 /dev/urandom | base64`, written as \"0s<base64>\")"]


B64_KEY = "e8N6jihKeEYedtBGBuxQgMGFuLbaaQbtvQddXNmO8J8="   # 32 bytes, as `head -c 32 /dev/urandom | base64`


def test_psk_that_looks_like_base64_without_0s_warns():
    cfg = parse(BASE.replace('"0x00112233445566778899aabbccddeeff"', f'"{B64_KEY}"'))
    assert cfg.connections[0].psk.reveal() == B64_KEY.encode()   # the characters, as strongSwan does
    assert [str(w) for w in cfg.warnings] == [
        "gw.toml:10: connection[0].psk (connection 'branch1'): the key looks like base64 without the '0s' prefix, so "
        "its 44 characters are the key, not the 32 bytes they encode; if it is base64, write \"0s\" before it "
        "(on both sides: strongSwan also takes a bare string as its characters)"]
    assert B64_KEY not in str(cfg.warnings)
    cfg = parse(BASE.replace('"0x00112233445566778899aabbccddeeff"', f'"0s{B64_KEY}"'))
    assert cfg.connections[0].psk.reveal() == base64.b64decode(B64_KEY) and cfg.warnings == ()


@pytest.mark.parametrize("text", ["correct horse battery staple", "supersecretpassword1",
                                  "a-very-long-and-random-psk-value", "0123456789abcdef0123"])
def test_psk_passphrases_do_not_look_like_base64(text):
    assert parse(BASE.replace('"0x00112233445566778899aabbccddeeff"', f'"{text}"')).warnings == ()


def test_psk_file_with_bare_base64_warns(tmp_path):
    (tmp_path / "b1.psk").write_text(B64_KEY + "\n")
    os.chmod(tmp_path / "b1.psk", 0o600)
    cfg = parse(BASE.replace('"0x00112233445566778899aabbccddeeff"', '"file:b1.psk"'), tmp_path)
    assert [str(w) for w in cfg.warnings] == [
        f"gw.toml:10: connection[0].psk (connection 'branch1'): PSK file '{tmp_path}/b1.psk' holds what looks like "
        "base64 without the '0s' prefix, so its 44 characters are the key, not the 32 bytes they encode; if it "
        f"is base64, write \"0s\" before it (on both sides: strongSwan also takes a bare string as its "
        f"characters)"]
    (tmp_path / "b1.psk").write_text("0s" + B64_KEY + "\n")
    cfg = parse(BASE.replace('"0x00112233445566778899aabbccddeeff"', '"file:b1.psk"'), tmp_path)
    assert cfg.warnings == () and cfg.connections[0].psk.reveal() == base64.b64decode(B64_KEY)


def test_psk_errors_never_echo_the_value():
    e = error(BASE.replace('"0x00112233445566778899aabbccddeeff"', "12345678901234567890"))
    assert str(e) == "gw.toml:10: connection[0].psk (connection 'branch1'): expected a string, got an integer"
    e = error(BASE.replace('"0x00112233445566778899aabbccddeeff"', '"0xnothexatallsecret"'))
    assert "nothexatallsecret" not in str(e) and "not valid hex" in str(e)
    e = error(BASE.replace('"0x00112233445566778899aabbccddeeff"', '"0s!!!secretbase64!!!"'))
    assert "secretbase64" not in str(e) and "not valid base64" in str(e)


def test_secret_never_shows_its_value():
    s = Secret(b"hunter22hunter22")
    assert repr(s) == "Secret('***')" and str(s) == "***" and f"{s}" == "***" and f"{s:>10}" == "***"
    assert s == Secret(b"hunter22hunter22") and s != Secret(b"other")
    assert hash(s) == hash(Secret(b"hunter22hunter22"))
    cfg = parse(BASE)
    assert "00112233" not in repr(cfg) and "Secret('***')" in repr(cfg)
    import pickle
    with pytest.raises(TypeError):
        pickle.dumps(s)


# -- certificates ------------------------------------------------------------------------------

def _make_pki(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "CH"),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("CA")).issuer_name(name("CA"))
          .public_key(ca_key.public_key()).serial_number(1).not_valid_before(now)
          .not_valid_after(now + datetime.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name("hq.example.org")).issuer_name(name("CA"))
            .public_key(key.public_key()).serial_number(2).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=365)).sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(pem))
    (tmp_path / "hq.pem").write_bytes(cert.public_bytes(pem))
    (tmp_path / "hq.key").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    os.chmod(tmp_path / "hq.key", 0o600)
    (tmp_path / "other.key").write_bytes(ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                              serialization.NoEncryption()))
    os.chmod(tmp_path / "other.key", 0o600)
    (tmp_path / "enc.key").write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")))
    (tmp_path / "garbage.pem").write_text("hello\n")
    return ca, cert


PUBKEY = BASE.replace('psk = "0x00112233445566778899aabbccddeeff"',
                      'auth = "pubkey"\ncerts = ["hq.pem"]\nprivate_key = "hq.key"\n'
                      'cacerts = ["ca.pem"]')


def test_pubkey_loads_certs_and_key(tmp_path):
    ca, cert = _make_pki(tmp_path)
    cfg = parse(PUBKEY, tmp_path)
    c = cfg.connections[0]
    assert c.auth == "pubkey" and c.psk is None
    assert c.certs == (cert,) and c.cacerts == (ca,)
    assert c.cert_files == (tmp_path / "hq.pem",) and c.private_key_file == tmp_path / "hq.key"
    assert isinstance(c.private_key, Secret) and repr(c.private_key) == "Secret('***')"
    assert cfg.warnings == ()


@pytest.mark.parametrize("old,new,expected", [
    ('certs = ["hq.pem"]', 'certs = ["missing.pem"]',
     "gw.toml:11: connection[0].certs[0] (connection 'branch1'): cannot read certificate file '{d}/missing.pem': No "
     "such file or directory"),
    ('certs = ["hq.pem"]', 'certs = ["garbage.pem"]',
     "gw.toml:11: connection[0].certs[0] (connection 'branch1'): '{d}/garbage.pem' is not a PEM certificate file "
     "(expected -----BEGIN CERTIFICATE-----)"),
    ('private_key = "hq.key"', 'private_key = "other.key"',
     "gw.toml:12: connection[0].private_key (connection 'branch1'): private_key does not match the public key of the "
     "first certificate in certs"),
    ('private_key = "hq.key"', 'private_key = "enc.key"',
     "gw.toml:12: connection[0].private_key (connection 'branch1'): private key '{d}/enc.key' is encrypted; vpn-gw "
     "needs an unencrypted key (protect it with file mode 0600 instead)"),
    ('private_key = "hq.key"', 'private_key = "hq.pem"',
     "gw.toml:12: connection[0].private_key (connection 'branch1'): '{d}/hq.pem' is not a PEM private key"),
    ('cacerts = ["ca.pem"]\n', '',
     "gw.toml:4: connection[0] (connection 'branch1'): missing required key 'cacerts' (auth = \"pubkey\" needs the CAs "
     "that sign the peer's certificate)"),
    ('certs = ["hq.pem"]\n', '',
     "gw.toml:4: connection[0] (connection 'branch1'): missing required key 'certs' (auth = \"pubkey\" needs our "
     "certificate)"),
    ('auth = "pubkey"', 'auth = "pubkey"\npsk = "0123456789abcdef"',
     "gw.toml:11: connection[0].psk (connection 'branch1'): 'psk' is not used with auth = \"pubkey\""),
    ('auth = "pubkey"', 'auth = "psk"\npsk = "0123456789abcdefghijk"',
     "gw.toml:12: connection[0].certs (connection 'branch1'): 'certs' is not used with auth = \"psk\""),
])
def test_pubkey_errors(tmp_path, old, new, expected):
    _make_pki(tmp_path)
    assert old in PUBKEY
    e = error(PUBKEY.replace(old, new), tmp_path)
    assert expected.format(d=tmp_path) in messages(e)


def test_eap_gateway_and_client_roles(tmp_path):
    _make_pki(tmp_path)
    (tmp_path / "users.toml").write_text('[[user]]\nname = "alice@example.org"\nnt_hash = '
                                         '"8846f7eaee8fb117ad06bdd830b7586c"\n')
    gw = PUBKEY.replace('auth = "pubkey"', 'auth = "pubkey"\nremote_auth = "eap-mschapv2"\nusers_file = "users.toml"')
    gw = gw.replace('cacerts = ["ca.pem"]\n', '')
    cfg = parse(gw, tmp_path)
    c = cfg.connections[0]
    assert (c.auth, c.remote_auth, c.users_file) == ("pubkey", "eap-mschapv2", tmp_path / "users.toml")
    # A client authenticating with EAP verifies the gateway's certificate.
    client = PUBKEY.replace('auth = "pubkey"', 'auth = "eap-mschapv2"\neap_password = "correct horse"')
    client = client.replace('certs = ["hq.pem"]\n', '').replace('private_key = "hq.key"\n', '')
    c = parse(client, tmp_path).connections[0]
    assert (c.auth, c.remote_auth) == ("eap-mschapv2", "pubkey")
    assert repr(c.eap_password) == "Secret('***')"
    e = error(client.replace('eap_password = "correct horse"\n', ''), tmp_path)
    assert "missing required key 'eap_password'" in str(e)
    e = error(gw.replace('users_file = "users.toml"\n', ''), tmp_path)
    assert "missing required key 'users_file'" in str(e)


# -- interfaces --------------------------------------------------------------------------------

def test_interface_if_id_consistency():
    second = BASE.split("\n", 3)[3].replace('"branch1"', '"branch2"', 1).replace("198.51.100.1", "198.51.100.2")
    a = BASE.replace('dpd_delay = "30s"', 'interface = "vti0"\nif_id = 7')
    cfg = parse(a + second.replace('dpd_delay = "30s"', 'interface = "vti0"\nif_id = 7'))
    assert [c.if_id for c in cfg.connections] == [7, 7]
    e = error(a + second.replace('dpd_delay = "30s"', 'interface = "vti0"\nif_id = 8'))
    assert "interface 'vti0' already has if_id 7 (connection 'branch1')" in str(e)
    e = error(a + second.replace('dpd_delay = "30s"', 'interface = "vti1"\nif_id = 7'))
    assert "if_id 7 is already used by connection 'branch1' with a different interface" in str(e)


def test_routes_of_a_route_based_connection():
    cfg = parse(BASE.replace('dpd_delay = "30s"', 'interface = "vti0"\nroutes = ["10.2.0.0/24", "2001:db8:2::/48"]'))
    assert [str(n) for n in cfg.connections[0].routes] == ["10.2.0.0/24", "2001:db8:2::/48"]
    assert parse(BASE).connections[0].routes == ()
    e = error(BASE.replace('dpd_delay = "30s"', 'routes = ["10.2.0.0/24"]'))
    assert "routes need an interface" in str(e) and ":" in str(e).split("routes")[0]
    e = error(BASE.replace('dpd_delay = "30s"', 'interface = "vti0"\nroutes = ["10.2.0.1/24"]'))
    assert "host bits set (did you mean '10.2.0.0/24'?)" in str(e)


# -- files -------------------------------------------------------------------------------------

def test_load_config_file_errors(tmp_path):
    with pytest.raises(ConfigError) as ei:
        load_config(tmp_path / "nope.toml")
    assert str(ei.value) == f"{tmp_path}/nope.toml: cannot read configuration: No such file or directory"
    p = tmp_path / "bad.toml"
    p.write_bytes(b'[gateway]\nlog_level = "\xff"\n')
    with pytest.raises(ConfigError, match=r"bad.toml:2: file is not valid UTF-8"):
        load_config(p)
    p.write_text(BASE)
    cfg = load_config(p)
    assert cfg.source == p and cfg.connection_names == ("branch1",)


def test_gateway_warnings_and_misplaced_keys():
    cfg = parse("[gateway]\nhalf_open_limit = 50\ncookie_threshold = 50\n")
    assert [str(w) for w in cfg.warnings] == [
        "gw.toml:3: gateway.cookie_threshold: cookie_threshold (50) is not below half_open_limit "
        "(50): COOKIEs will never be requested", "gw.toml: no connections defined"]
    e = error("[gateway]\ndpd_delay = 5\n")
    assert str(e) == ("gw.toml:2: gateway.dpd_delay: unknown key 'dpd_delay' in gateway "
                      "('dpd_delay' belongs in a [[connection]] table)")
    e = error("name = 'x'\n")
    assert str(e) == ("gw.toml:1: name: unknown key 'name' in the top level ('name' belongs in a "
                      "[[connection]] table)")


def test_relative_control_socket_resolved_against_config_dir(tmp_path):
    p = tmp_path / "gw.toml"
    p.write_text('[gateway]\ncontrol_socket = "run/c.sock"\n')
    cfg = load_config(p)
    assert cfg.control_socket == tmp_path / "run" / "c.sock"
    assert [str(w) for w in cfg.warnings] == [f"{p}: no connections defined"]


# -- the key locator ---------------------------------------------------------------------------

def test_key_locator_handles_tricky_toml():
    text = textwrap.dedent('''\
        title = """
        [[connection]]
        name = "fake"
        """
        "quoted key" = 'x = [1'
        a.b.c = 1   # dotted
        [gateway]
        listen = [ "0.0.0.0",   # comment ]
          "::" ]
        t = { x = 1, y = [2, 3] }

        [[connection]]
        name = "one"
        [[connection.child]]
        name = "c0"
        [[connection.child]]
        name = "c1"
        [[connection]]
        name = "two"
          [[connection.child]]
          name = 'c0'
          local_ts = [
            "10.0.0.0/8",
            "10.1.0.0/16"
          ]
        ''')
    loc = KeyLocator(text)
    assert loc.line(("title",)) == 1
    assert loc.line(("quoted key",)) == 5
    assert loc.line(("a", "b", "c")) == 6
    assert loc.line(("gateway",)) == 7
    assert loc.line(("gateway", "listen", 1)) == 9
    assert loc.line(("gateway", "t", "y", 1)) == 10
    assert loc.line(("connection", 0, "name")) == 13
    assert loc.line(("connection", 0, "child", 1, "name")) == 17
    assert loc.line(("connection", 1)) == 18
    assert loc.line(("connection", 1, "child", 0)) == 20
    assert loc.line(("connection", 1, "child", 0, "local_ts", 1)) == 24
    assert loc.line(("connection", 1, "child", 0, "missing")) == 20
    assert loc.line(("nothing",)) is None
    assert format_key_path(("connection", 1, "child", 0, "local_ts", 2)) == \
        "connection[1].child[0].local_ts[2]"
    assert format_key_path(("a b", "c")) == '"a b".c'


# -- diff --------------------------------------------------------------------------------------

def _conn(name, peer, extra=""):
    return textwrap.dedent(f"""
        [[connection]]
        name = "{name}"
        remote_addrs = ["{peer}"]
        psk = "a long enough secret {name}"
        {extra}
          [[connection.child]]
          name = "net"
          local_ts = ["10.1.0.0/24"]
          remote_ts = ["10.2.0.0/24"]
        """)


def test_diff_configs():
    old = parse(_conn("a", "198.51.100.1") + _conn("b", "198.51.100.2") + _conn("c", "198.51.100.3"))
    new = parse('[gateway]\nlog_level = "debug"\n' + _conn("a", "198.51.100.1") +
                _conn("c", "198.51.100.3", 'dpd_delay = "10s"').replace("10.2.0.0/24", "10.9.0.0/24") +
                _conn("d", "198.51.100.4"))
    d = diff_configs(old, new)
    assert d.added == ("d",) and d.removed == ("b",) and d.changed == ("c",) and d.unchanged == ("a",)
    assert d.changed_keys == {"c": ("dpd_delay", "child net: remote_ts")}
    assert d.gateway_changed == ("log_level",)
    assert bool(d)
    assert d.to_dict()["added"] == ["d"]
    same = diff_configs(old, parse(_conn("a", "198.51.100.1") + _conn("b", "198.51.100.2") +
                                   _conn("c", "198.51.100.3")))
    assert not same and same.unchanged == ("a", "b", "c")


def test_diff_detects_secret_change_without_showing_it():
    old = parse(_conn("a", "198.51.100.1"))
    new = parse(_conn("a", "198.51.100.1").replace("a long enough secret a", "another secret value"))
    d = diff_configs(old, new)
    assert d.changed == ("a",) and d.changed_keys["a"] == ("psk",)
    assert "another" not in repr(d)


def test_diff_child_added_and_removed():
    old = parse(_conn("a", "198.51.100.1"))
    new = parse(_conn("a", "198.51.100.1").replace('name = "net"', 'name = "net2"'))
    d = diff_configs(old, new)
    assert d.changed_keys["a"] == ("child net2: added", "child net: removed")


def test_tcp_encapsulation_keys():
    cfg = parse(BASE)
    assert cfg.tcp_port == 4500
    assert (cfg.connections[0].transport, cfg.connections[0].tcp_port) == ("udp", 4500)
    cfg = parse(BASE.replace('dpd_delay = "30s"', 'dpd_delay = "30s"\ntransport = "auto"\ntcp_port = 443')
                .replace('[gateway]', '[gateway]\ntcp_port = 0'))
    assert cfg.tcp_port == 0
    assert (cfg.connections[0].transport, cfg.connections[0].tcp_port) == ("auto", 443)
    assert cfg.warnings == ()
    e = error(BASE.replace('dpd_delay = "30s"', 'dpd_delay = "30s"\ntransport = "tls"'))
    assert str(e) == ("gw.toml:14: connection[0].transport (connection 'branch1'): "
                      "invalid value 'tls': must be one of udp, tcp, auto")
    e = error(BASE.replace('dpd_delay = "30s"', 'dpd_delay = "30s"\ntransport = "tcp"\ntcp_port = 500'))
    assert "connection[0].tcp_port (connection 'branch1'): 500 cannot be used" in str(e)
    e = error(BASE.replace('[gateway]', '[gateway]\ntcp_port = 70000'))
    assert "gateway.tcp_port" in str(e)
    cfg = parse(BASE.replace('dpd_delay = "30s"', 'dpd_delay = "30s"\ntcp_port = 443'))
    assert [str(w) for w in cfg.warnings] == [
        'gw.toml:14: connection[0].tcp_port (connection \'branch1\'): tcp_port has no effect with transport = "udp"']


def test_tcp_transport_needs_the_userspace_data_plane():
    text = BASE.replace('dpd_delay = "30s"', 'dpd_delay = "30s"\ntransport = "tcp"')
    assert parse(text).connections[0].transport == "tcp"
    e = error(text.replace("[gateway]", '[gateway]\ndataplane = "xfrm"'))
    assert "connection[0].transport" in str(e) and 'needs dataplane = "userspace"' in str(e)


def test_xfrm_red_side_fragmentation_keys():
    cfg = parse(BASE)
    assert (cfg.xfrm_fragmentation, cfg.xfrm_nfqueue, cfg.xfrm_nfqueue_fail) == ("nfqueue", 0x5647, "open")
    cfg = parse(BASE.replace("[gateway]", '[gateway]\ndataplane = "xfrm"\nxfrm_fragmentation = "off"\n'
                                          'xfrm_nfqueue = 7\nxfrm_nfqueue_fail = "closed"'))
    assert (cfg.xfrm_fragmentation, cfg.xfrm_nfqueue, cfg.xfrm_nfqueue_fail) == ("off", 7, "closed")
    assert "gateway.xfrm_nfqueue" in str(error(BASE.replace("[gateway]", "[gateway]\nxfrm_nfqueue = 65536")))
    bad_fail = BASE.replace("[gateway]", '[gateway]\nxfrm_nfqueue_fail = "maybe"')
    assert "gateway.xfrm_nfqueue_fail" in str(error(bad_fail))


def test_daemon_wires_the_fragmenter():
    from vpn_gw.daemon import Gateway
    from vpn_gw.dataplane.xfrm.fragmenter import RedFragmenter
    gw = Gateway(parse(BASE.replace("[gateway]", '[gateway]\ndataplane = "xfrm"\nxfrm_nfqueue_fail = "closed"')))
    frag = gw.dataplane.fragmenter
    assert isinstance(frag, RedFragmenter) and frag.queue_num == 0x5647 and not frag.fail_open
    gw = Gateway(parse(BASE.replace("[gateway]", '[gateway]\ndataplane = "xfrm"\nxfrm_fragmentation = "off"')))
    assert gw.dataplane.fragmenter is None


# --- RFC 8784 PPK --------------------------------------------------------------------------------

PSK_LINE = 'psk = "0x00112233445566778899aabbccddeeff"'
PPK_HEX = "0x" + "ab" * 32


def test_ppk_keys_parsed_and_reach_the_policy(tmp_path):
    from vpn_gw.policies import ike_policy
    (tmp_path / "q.ppk").write_text(PPK_HEX + "\n")
    os.chmod(tmp_path / "q.ppk", 0o600)
    cfg = parse(BASE.replace(PSK_LINE, PSK_LINE + '\nppk_id = "pq-1"\nppk = "file:q.ppk"\nppk_required = true'),
                tmp_path)
    c = cfg.connections[0]
    assert (c.ppk_id, c.ppk.reveal(), c.ppk_required) == ("pq-1", b"\xab" * 32, True)
    assert "ab" * 32 not in repr(c)
    pol = ike_policy(c)
    assert (pol.ppk_id, pol.ppk, pol.ppk_required) == (b"pq-1", b"\xab" * 32, True)
    assert cfg.connections[0].ppk is not None and parse(BASE).connections[0].ppk is None


@pytest.mark.parametrize("extra,expected", [
    ('ppk_id = "pq-1"', "'ppk_id' needs 'ppk' too"),
    (f'ppk = "{PPK_HEX}"', "'ppk' needs 'ppk_id' too"),
    ('ppk_required = true', "ppk_required = true needs 'ppk' and 'ppk_id'"),
    ('ppk_id = "pq-1"\nppk = "0x0011223344556677"', "PPK is 8 bytes; RFC 8784 wants at least 32"),
])
def test_ppk_errors(extra, expected):
    e = error(BASE.replace(PSK_LINE, PSK_LINE + "\n" + extra))
    assert expected in str(e), str(e)
    assert "0011223344556677" not in str(e)


# ---------------------------------------------------------------------------- [radius]

def _radius_cfg(tmp_path, radius: str, remote_auth: str = "eap-radius"):
    from vpn_gw.config import parse_config
    text = f'''
[[pool]]
name = "rw"
addrs = "10.99.0.0/24"

[[connection]]
name = "rw"
local_id = "vpn.example.org"
auth = "psk"
psk = "a-long-enough-pre-shared-key"
remote_auth = "{remote_auth}"
pools = ["rw"]
[[connection.child]]
name = "rw"
local_ts = ["0.0.0.0/0"]
remote_ts = ["0.0.0.0/0"]
{radius}
'''
    return parse_config(text, "gw.toml", base_dir=tmp_path)


def test_radius_section_parsed(tmp_path):
    secret = tmp_path / "radius.secret"
    secret.write_text("a-radius-secret-of-some-length\n")
    secret.chmod(0o600)
    cfg = _radius_cfg(tmp_path, '[radius]\nservers = ["192.0.2.10", "192.0.2.11"]\n'
                                'secret = "file:radius.secret"\ntimeout = "2s"\nnas_identifier = "gw1"\n')
    r = cfg.radius
    assert [str(s) for s in r.servers] == ["192.0.2.10", "192.0.2.11"]
    assert r.secret.reveal() == b"a-radius-secret-of-some-length" and "secret" not in repr(r.secret)
    assert (r.timeout, r.retries, r.nas_identifier, r.dae_port) == (2.0, 2, "gw1", 3799)
    assert cfg.connections[0].remote_auth == "eap-radius"
    assert [str(w) for w in cfg.warnings] == []


def test_radius_interim_below_60s_accepted_with_a_warning(tmp_path):
    """RFC 2869 5.16 says SHOULD NOT below 60 s: accepted (>= 1 s), with a configuration warning."""
    secret = tmp_path / "radius.secret"
    secret.write_text("a-radius-secret-of-some-length\n")
    secret.chmod(0o600)
    base = '[radius]\nservers = ["192.0.2.10"]\nsecret = "file:radius.secret"\n'
    cfg = _radius_cfg(tmp_path, base + 'interim_interval = "2s"\n')
    assert cfg.radius.interim_interval == 2.0
    assert [w for w in map(str, cfg.warnings) if "radius.interim_interval" in w and "RFC 2869" in w]
    for quiet in ('"60s"', "0"):
        cfg = _radius_cfg(tmp_path, base + f"interim_interval = {quiet}\n")
        assert [str(w) for w in cfg.warnings] == [], quiet


def test_eap_radius_without_radius_section_is_an_error(tmp_path):
    from vpn_gw.config import ConfigError
    with pytest.raises(ConfigError, match=r'remote_auth = "eap-radius" needs a \[radius\] section'):
        _radius_cfg(tmp_path, "")


def test_radius_section_errors(tmp_path):
    from vpn_gw.config import ConfigError
    with pytest.raises(ConfigError) as e:
        _radius_cfg(tmp_path, '[radius]\nservers = ["not-an-ip"]\nsecret = "file:missing"\n'
                              'interim_interval = "0.5s"\nretries = 11\nbogus = 1\n')
    text = "\n".join(str(p) for p in e.value.problems)
    assert "needs a [radius] section" not in text
    for needle in ("radius.servers", "cannot read RADIUS secret file", "at least 1s, got 0.5s",
                   "radius.retries", "unknown key 'bogus'"):
        assert needle in text, (needle, text)


def _pg_pool_cfg(tmp_path, pool_extra: str, second_pool: str = ""):
    from vpn_gw.config import parse_config
    text = f'''
[[pool]]
name = "rw"
addrs = "10.99.0.0/24"
{pool_extra}
{second_pool}
[[connection]]
name = "rw"
local_id = "vpn.example.org"
auth = "psk"
psk = "a-long-enough-pre-shared-key"
remote_auth = "psk"
pools = ["rw"{', "rw2"' if second_pool else ''}]
[[connection.child]]
name = "rw"
local_ts = ["0.0.0.0/0"]
remote_ts = ["0.0.0.0/0"]
'''
    return parse_config(text, "gw.toml", base_dir=tmp_path)


def test_postgresql_pool_parsed_and_secret_hidden(tmp_path):
    conn = tmp_path / "db.conn"
    conn.write_text("host=db.example.org dbname=vpngw user=gw1 password=hunter2-long\n")
    conn.chmod(0o600)
    cfg = _pg_pool_cfg(tmp_path, 'backend = "postgresql"\ndatabase = "file:db.conn"\nfleet_member = "gw1"\n')
    p = cfg.pools[0]
    assert p.backend == "postgresql" and p.postgres.fleet_member == "gw1"
    assert "hunter2" in p.postgres.database.reveal()
    assert "hunter2" not in repr(p) and "hunter2" not in repr(cfg)
    assert (p.postgres.heartbeat_interval, p.postgres.heartbeat_timeout) == (10.0, 30.0)


def test_postgresql_pool_errors(tmp_path):
    from vpn_gw.config import ConfigError
    with pytest.raises(ConfigError) as e:
        _pg_pool_cfg(tmp_path, 'backend = "postgresql"\nheartbeat_interval = "10s"\nheartbeat_timeout = "15s"\n'
                               'lease_file = "x.json"\n')
    text = "\n".join(str(p) for p in e.value.problems)
    for needle in ("missing required key 'database'", "at least twice heartbeat_interval",
                   "'lease_file' is not used with backend"):
        assert needle in text, (needle, text)
    with pytest.raises(ConfigError, match="only used with backend"):
        _pg_pool_cfg(tmp_path, 'database = "host=x"\n')
    with pytest.raises(ConfigError, match="malformed connection string"):
        _pg_pool_cfg(tmp_path, 'backend = "postgresql"\ndatabase = "host=x dbname"\n')
    with pytest.raises(ConfigError, match="same backend"):
        _pg_pool_cfg(tmp_path, 'backend = "postgresql"\ndatabase = "host=x"\n',
                     '[[pool]]\nname = "rw2"\naddrs = "10.98.0.0/24"\n')


def _member_ddns(extra: str) -> str:
    return ('[[ddns]]\ninterface = "wan0"\nnames = ["vpn.example.org"]\nmethod = "rfc2136"\n'
            'server = "192.0.2.53"\nzone = "example.org"\ntsig_name = "k"\n'
            'tsig_secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"\n' + extra)


def test_ddns_member_mode_and_fleet_pool(tmp_path):
    cfg = _pg_pool_cfg(tmp_path, 'backend = "postgresql"\ndatabase = "host=/run/pg dbname=vpngw"\n'
                                 + _member_ddns('mode = "member"\nfleet_pool = "rw"\n'))
    assert (cfg.ddns[0].mode, cfg.ddns[0].fleet_pool) == ("member", "rw")
    cfg = _pg_pool_cfg(tmp_path, _member_ddns(""))
    assert (cfg.ddns[0].mode, cfg.ddns[0].fleet_pool) == ("replace", None)


@pytest.mark.parametrize("pool_extra, ddns_extra, needle", [
    ("", 'mode = "fleet"\n', "mode"),
    ("", 'mode = "member"\nfleet_pool = "rw"\n', "backend = 'file'"),
    ("", 'mode = "member"\nfleet_pool = "nope"\n', "no [[pool]] named 'nope' (pools: 'rw')"),
    ('backend = "postgresql"\ndatabase = "host=/run/pg"\n', 'fleet_pool = "rw"\n', "needs mode = \"member\""),
])
def test_ddns_member_mode_errors(tmp_path, pool_extra, ddns_extra, needle):
    from vpn_gw.config import ConfigError
    with pytest.raises(ConfigError) as e:
        _pg_pool_cfg(tmp_path, pool_extra + _member_ddns(ddns_extra))
    assert needle in "\n".join(str(p) for p in e.value.problems)


def test_ddns_mode_is_for_rfc2136_only(tmp_path):
    from vpn_gw.config import ConfigError
    text = ('[[ddns]]\ninterface = "wan0"\nnames = ["h.example.net"]\nmethod = "dyndns2"\n'
            'server = "members.example.net"\nuser = "u"\npassword = "pw-pw-pw-pw-pw-pw"\nmode = "member"\n')
    with pytest.raises(ConfigError, match="'mode' is for method"):
        _pg_pool_cfg(tmp_path, text)
