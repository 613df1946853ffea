"""vpn_gw.log: redaction of secrets, output formats, the rate-limited logger."""
from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from vpn_gw.config import Secret
from vpn_gw.log import RateLimitedLogger, is_secret_key, redact_secrets, setup_logging


@pytest.fixture(autouse=True)
def _reset_logging():
    yield
    structlog.reset_defaults()
    root = logging.getLogger()
    for h in list(root.handlers):
        if h.get_name() == "vpn-gw":
            root.removeHandler(h)


def test_redact_processor_keys_and_secret_values():
    ev = {"event": "ike_sa established", "psk": b"hunter22hunter22", "PASSWORD": "x",
          "sk_ei": b"\x01" * 16, "sk_pr": "aa", "private_key": "k", "key": "k", "enc_key": "k",
          "secret": 1, "peer": "198.51.100.1", "key_length": 256, "public_key": "pub",
          "conf": {"psk": "p", "inner": [{"password": "pw"}, Secret(b"s3cr3t!!")], "ok": 1},
          "val": Secret(b"hidden-value")}
    out = redact_secrets(None, "info", dict(ev))
    for k in ("psk", "PASSWORD", "sk_ei", "sk_pr", "private_key", "key", "enc_key", "secret", "val"):
        assert out[k] == "***", k
    assert out["peer"] == "198.51.100.1"
    assert out["key_length"] == 256
    assert out["public_key"] == "pub"
    assert out["conf"] == {"psk": "***", "inner": [{"password": "***"}, "***"], "ok": 1}
    assert out["event"] == "ike_sa established"


def test_is_secret_key():
    assert all(map(is_secret_key, ["psk", "sk_d", "SK_AI", "keymat", "shared_secret", "auth_key"]))
    assert not any(map(is_secret_key, ["spi", "key_length", "public_key", "name", 5, "nonce"]))


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_secrets_never_reach_the_output(fmt):
    buf = io.StringIO()
    setup_logging("debug", fmt, stream=buf)
    log = structlog.get_logger("test")
    log.info("configured", psk="hunter22hunter22", secret=Secret(b"topsecretvalue"),
             cfg={"password": "pa55word!!"}, sk_ei=b"\xde\xad\xbe\xef", peer="198.51.100.1")
    logging.getLogger("foreign").warning("stdlib %s", "line")
    out = buf.getvalue()
    for s in ("hunter22hunter22", "topsecretvalue", "pa55word!!", "deadbeef", "\\xde"):
        assert s not in out
    assert "198.51.100.1" in out and "stdlib line" in out


def test_json_format_one_object_per_line_with_level_and_logger():
    buf = io.StringIO()
    setup_logging("info", "json", stream=buf)
    log = structlog.get_logger("vpn_gw.test")
    log.debug("invisible")
    log.info("child_sa installed", spi_in="c0ffee01", bytes=12)
    log.warning("dpd timeout", peer="198.51.100.1")
    lines = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert [x["event"] for x in lines] == ["child_sa installed", "dpd timeout"]
    assert lines[0]["level"] == "info" and lines[0]["spi_in"] == "c0ffee01"
    assert lines[0]["logger"] == "vpn_gw.test" and "timestamp" in lines[0]
    assert lines[1]["level"] == "warning"


def test_console_format_level_filter():
    buf = io.StringIO()
    setup_logging("warning", "console", stream=buf)
    log = structlog.get_logger("t")
    log.info("not shown")
    log.error("shown", conn="branch1")
    out = buf.getvalue()
    assert "not shown" not in out
    assert "shown" in out and "conn=branch1" in out and "error" in out


def test_setup_logging_rejects_unknown_level_and_format():
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        setup_logging("loud", "console")
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        setup_logging("info", "xml")


class FakeLogger:
    def __init__(self):
        self.events = []

    def __getattr__(self, level):
        return lambda event, **kw: self.events.append((level, event, kw))


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_rate_limited_logger_limits_per_key_and_summarises():
    fake, clock = FakeLogger(), Clock()
    rl = RateLimitedLogger(fake, limit=3, interval=10.0, clock=clock)
    emitted = [rl.log("bad_spi", "dropped packet", spi=i) for i in range(10)]
    assert emitted == [True] * 3 + [False] * 7
    assert rl.log("other", "dropped packet") is True   # separate budget per key
    assert rl.suppressed("bad_spi") == 7
    assert len(fake.events) == 4
    clock.t += 5
    assert rl.log("bad_spi", "dropped packet") is False  # same window
    clock.t += 5.0
    assert rl.log("bad_spi", "dropped packet", spi=99) is True  # new window: summary first
    level, event, kw = fake.events[-2]
    assert level == "warning" and event == "suppressed 8 similar messages"
    assert kw["suppressed"] == 8 and kw["rate_limit_key"] == "bad_spi" and kw["interval"] == 10.0
    assert fake.events[-1] == ("warning", "dropped packet", {"spi": 99})
    assert rl.suppressed("bad_spi") == 0


def test_rate_limited_flush_and_tuple_keys():
    fake, clock = FakeLogger(), Clock()
    rl = RateLimitedLogger(fake, limit=1, interval=60, clock=clock, level="info")
    for _ in range(5):
        rl.log(("bad_icv", "198.51.100.1"), "integrity check failed")
    rl.log("quiet", "once")
    assert rl.flush() == 0          # windows not over yet
    clock.t += 61
    assert rl.flush() == 1          # one summary (the quiet key had nothing suppressed)
    assert fake.events[-1][1] == "suppressed 4 similar messages"
    assert fake.events[-1][2]["rate_limit_key"] == "bad_icv/198.51.100.1"
    assert fake.events[-1][0] == "info"
    assert rl.flush() == 0


def test_rate_limited_bounded_keys():
    fake, clock = FakeLogger(), Clock()
    rl = RateLimitedLogger(fake, limit=1, interval=60, clock=clock, max_keys=2)
    rl.log("a", "e")
    rl.log("a", "e")  # suppressed
    rl.log("b", "e")
    rl.log("c", "e")  # evicts "a", emitting its summary
    assert ("warning", "suppressed 1 similar messages") in [(level, e) for level, e, _ in fake.events]
    assert len(rl._windows) == 2


def test_rate_limited_through_structlog():
    buf = io.StringIO()
    setup_logging("info", "json", stream=buf)
    clock = Clock()
    rl = RateLimitedLogger(structlog.get_logger("drops"), limit=2, interval=1, clock=clock)
    for _ in range(5):
        rl.log("k", "drop", psk="leak?")
    clock.t += 1
    rl.flush()
    lines = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert [x["event"] for x in lines] == ["drop", "drop", "suppressed 3 similar messages"]
    assert lines[0]["psk"] == "***"


def test_library_debug_noise_stays_out_even_when_imported_later():
    """pyroute2 resets its logger to level 0 on import; a daemon at debug level must still not
    print its per-message netlink chatter (fresh interpreter: pyroute2 not yet imported)."""
    import subprocess
    import sys
    code = ("import logging, sys\n"
            "from vpn_gw.log import setup_logging\n"
            "setup_logging('debug', 'json', stream=sys.stdout)\n"
            "import pyroute2.netlink.core\n"
            "logging.getLogger('pyroute2.netlink.core').debug('netlink noise')\n"
            "logging.getLogger('pyroute2.netlink.core').warning('netlink trouble')\n"
            "logging.getLogger('vpn_gw.x').debug('our debug line')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert "our debug line" in out and "netlink trouble" in out
    assert "netlink noise" not in out


def test_rate_limited_global_budget_bounds_lines_for_20000_sources():
    """Issue 14 item 8: 20,000 spoofed sources, 3 events each per minute for 3 minutes: the output
    stays within global_limit + 1 lines per window, the per-key map stays bounded, and the
    summaries account for every event."""
    fake, clock = FakeLogger(), Clock()
    rl = RateLimitedLogger(fake, limit=5, interval=60.0, clock=clock, global_limit=100, max_keys=1000)
    logged = 0
    for _minute in range(3):
        lines_before = len(fake.events)
        for i in range(20_000):
            for _ in range(3):
                rl.log(("dropped datagram", f"2001:db8::{i:x}"), "dropped datagram", peer=f"2001:db8::{i:x}")
                logged += 1
            assert rl.keys <= 1000
        clock.t += 60.0
        rl.flush()
        assert len(fake.events) - lines_before <= 102  # 100 + the previous window's summary + this one's
    rl.flush(force=True)
    assert len(fake.events) <= 3 * 101 + 101 + 1
    plain = [e for e in fake.events if e[1] == "dropped datagram"]
    summaries = [e for e in fake.events if e[1].startswith("suppressed ")]
    assert plain and summaries
    assert len(plain) + sum(kw["suppressed"] for _, _, kw in summaries) == logged
    (star, *_) = [kw for _, _, kw in summaries if kw["rate_limit_key"] == "*"]
    assert star["events"] == {"dropped datagram": star["suppressed"]}


def test_rate_limited_global_summary_comes_with_flush_all_after_the_flood():
    from vpn_gw.log import flush_all
    fake, clock = FakeLogger(), Clock()
    rl = RateLimitedLogger(fake, limit=1, interval=10.0, clock=clock, global_limit=2)
    for i in range(5):
        rl.log(i, "probe dropped")
    assert [e[1] for e in fake.events] == ["probe dropped"] * 2
    clock.t += 10.0
    assert flush_all() >= 1  # nothing more was logged: the periodic flush emits the summary
    assert fake.events[-1][1] == "suppressed 3 similar messages" and fake.events[-1][2]["rate_limit_key"] == "*"
