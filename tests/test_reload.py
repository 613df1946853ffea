"""`vpn-gw reload` on a real Gateway (dataplane "none", no sockets): live [gateway] settings are
applied to the running parts, restart-only ones refuse the whole reload, every outcome is logged."""
from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest
import structlog
from structlog.testing import capture_logs

from vpn_gw.config import GATEWAY_KEYS, ConfigError, GatewayConfig, load_config
from vpn_gw.daemon import Gateway
from vpn_gw.daemon.reload import LIVE_KEYS, RESTART_KEYS
from vpn_gw.log import setup_logging

CONF = """
[gateway]
listen = ["127.0.0.1"]
dataplane = "none"
control_socket = "{tmp}/gw.sock"
half_open_limit = 1000
cookie_threshold = 100
log_level = "info"
{extra}

[[connection]]
name = "{name}"
local_addrs = ["127.0.0.1"]
remote_addrs = ["192.0.2.1"]
local_id = "a.example.org"
remote_id = "b.example.org"
psk = "0x00112233445566778899aabbccddeeff"
ike_proposals = ["aes256gcm16-prfsha256-x25519"]
  [[connection.child]]
  name = "net"
  local_ts = ["10.1.0.0/24"]
  remote_ts = ["10.2.0.0/24"]
"""


def _write(tmp_path, extra: str = "", name: str = "b"):
    text = CONF.format(tmp=tmp_path, extra=extra, name=name)
    path = tmp_path / "gw.toml"
    path.write_text(text)
    return path


def test_every_gateway_key_is_classified_once():
    # the [gateway] keys plus the [[ddns]], [[pool]] and [radius] tables: what diff_configs reports
    fields = {f.name for f in dataclasses.fields(GatewayConfig) if f.compare} - {"connections"}
    assert fields == set(GATEWAY_KEYS) | {"ddns", "pools", "radius"}
    assert LIVE_KEYS | RESTART_KEYS == fields, fields ^ (LIVE_KEYS | RESTART_KEYS)
    assert not LIVE_KEYS & RESTART_KEYS


def test_reload_applies_live_settings_and_logs(tmp_path):
    path = _write(tmp_path)
    gw = Gateway(load_config(path))
    path.write_text(path.read_text().replace("half_open_limit = 1000", "half_open_limit = 40")
                    .replace("cookie_threshold = 100", "cookie_threshold = 0")
                    .replace('name = "b"', 'name = "c"'))

    async def go():
        with capture_logs() as logs:
            return gw.reload(origin="SIGHUP"), logs
    result, logs = asyncio.run(go())
    assert (gw.manager.half_open_limit, gw.manager.cookie_threshold) == (40, 0)
    assert result["gateway_changed"] == ["half_open_limit", "cookie_threshold"]
    assert result["added"] == ["c"] and result["removed"] == ["b"]
    assert [p.name for p in gw.manager.policies] == ["c"]
    (ok,) = [e for e in logs if e["event"] == "configuration reloaded"]
    assert ok["origin"] == "SIGHUP" and ok["gateway_changed"] == ["half_open_limit", "cookie_threshold"]


def test_reload_applies_admission_and_fragment_budget_settings(tmp_path):
    path = _write(tmp_path)
    gw = Gateway(load_config(path))
    m = gw.manager
    assert (m.half_open_per_address, m.new_sa_rate.rate, m.new_sa_rate.burst, m.cookies.lifetime,
            m.cookies.grace, m.fragment_budget.per_sa, m.fragment_budget.total) == \
        (5, 10.0, 20, 120.0, 30.0, 65536, 8 << 20)
    path.write_text(path.read_text().replace('log_level = "info"', '\n'.join([
        'log_level = "info"', "half_open_per_address = 2", "new_sa_rate_per_address = 0.5",
        "new_sa_burst_per_address = 3", 'cookie_secret_lifetime = "60s"', 'cookie_grace = "5s"',
        'fragment_budget_per_sa = "16K"', 'fragment_budget_total = "1M"'])))

    async def go():
        return gw.reload(origin="control")
    result = asyncio.run(go())
    assert (m.half_open_per_address, m.new_sa_rate.rate, m.new_sa_rate.burst, m.cookies.lifetime,
            m.cookies.grace, m.fragment_budget.per_sa, m.fragment_budget.total) == \
        (2, 0.5, 3, 60.0, 5.0, 16384, 1 << 20)
    assert len(result["gateway_changed"]) == 7
    assert gw.stats()["ike"]["fragment_budget_total"] == 1 << 20


def test_restart_only_change_refuses_the_whole_reload(tmp_path):
    path = _write(tmp_path)
    gw = Gateway(load_config(path))
    before = gw.config
    path.write_text(path.read_text().replace('listen = ["127.0.0.1"]', 'listen = ["127.0.0.1", "::1"]')
                    .replace("cookie_threshold = 100", "cookie_threshold = 0"))
    with capture_logs() as logs, pytest.raises(ValueError, match=r"reload refused: \[gateway\] listen can "
                                                                 r"only change with a restart"):
        gw.reload()
    assert gw.config is before and gw.manager.cookie_threshold == 100  # nothing applied
    (refused,) = [e for e in logs if e["event"] == "reload refused"]
    assert refused["log_level"] == "warning" and "listen" in refused["reason"]


def test_invalid_file_is_logged_with_the_config_error(tmp_path):
    path = _write(tmp_path)
    gw = Gateway(load_config(path))
    path.write_text(path.read_text().replace("half_open_limit = 1000", "half_open_limit = 0"))
    with capture_logs() as logs, pytest.raises(ConfigError):
        gw.reload()
    (failed,) = [e for e in logs if e["event"] == "reload failed: configuration not applied"]
    assert failed["log_level"] == "error" and "gw.toml:" in failed["error"] and "half_open_limit" in failed["error"]
    assert gw.manager.half_open_limit == 1000


def test_reload_changes_log_level_unless_the_command_line_set_it(tmp_path):
    path = _write(tmp_path)
    gw = Gateway(load_config(path))
    setup_logging("info", "console")
    try:
        path.write_text(path.read_text().replace('log_level = "info"', 'log_level = "debug"'))
        gw.reload()
        assert logging.getLogger().level == logging.DEBUG
        path.write_text(path.read_text().replace('log_level = "debug"', 'log_level = "warning"'))
        gw.log_override = {"log_level": "error"}
        gw.reload()
        assert logging.getLogger().level == logging.ERROR
    finally:
        setup_logging("info", "console")
        structlog.reset_defaults()


def test_reload_changes_the_keepalive_interval_of_the_userspace_plane(tmp_path):
    from vpn_gw.dataplane.userspace.plane import UserspaceDataPlane

    async def go():
        plane = UserspaceDataPlane(lambda *a: None, lambda n: None, keepalive_interval=20.0)
        await plane.start()
        try:
            first = plane._keepalive_task
            plane.set_keepalive_interval(0)
            assert plane._keepalive_task is None
            await asyncio.sleep(0)
            assert first.cancelled()
            plane.set_keepalive_interval(5.0)
            assert plane.keepalive_interval == 5.0 and plane._keepalive_task is not None
        finally:
            await plane.close()
    asyncio.run(go())
