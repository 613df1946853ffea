"""Dyndns2Publisher without a network: answer parsing, request format, back-off state machine.

``apply_answer`` feeds the provider's answer into the state machine exactly as ``publish``
does after a request; ``publish`` itself is called only where it must not send anything
(back-off, hard stop, unchanged address). Real HTTP/HTTPS exchanges with the test server are
in tests/netns_e2e/test_ddns_netns.py.
"""
from __future__ import annotations

import asyncio
import base64
import urllib.parse

import pytest

from vpn_gw.ddns import Dyndns2Publisher, parse_answer
from vpn_gw.ddns.dyndns2 import ANSWERS

NAMES = ["a.example.org", "b.example.org"]
IP = "203.0.113.5"


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def pub(clock=None, **kw) -> Dyndns2Publisher:
    args = dict(host="members.example.org", names=list(NAMES), user="alice", password="s3cret:x",
                clock=clock or Clock())
    args.update(kw)
    return Dyndns2Publisher(**args)


def publish(p: Dyndns2Publisher, address: str = IP, **kw):
    return asyncio.run(p.publish(address, **kw))


# ------------------------------------------------------------------ parsing / request


def test_parse_answer():
    assert parse_answer("good 203.0.113.5\nnochg 203.0.113.5\n", NAMES) == {
        "a.example.org": parse_answer("good 203.0.113.5", ["a.example.org"])["a.example.org"],
        "b.example.org": parse_answer("nochg 203.0.113.5", ["b.example.org"])["b.example.org"],
    }
    ans = parse_answer("good 203.0.113.5\r\nnohost\r\n", NAMES)
    assert ans["a.example.org"].code == "good" and ans["a.example.org"].address == IP
    assert ans["b.example.org"].code == "nohost" and ans["b.example.org"].address is None
    # one line for several names applies to all
    assert {a.code for a in parse_answer("badauth", NAMES).values()} == {"badauth"}
    # missing lines
    ans = parse_answer("good 203.0.113.5\nnochg 203.0.113.5", NAMES + ["c.example.org"])
    assert ans["c.example.org"].code == ""
    assert parse_answer("GOOD 2001:db8::1", ["a"])["a"].code == "good"
    assert parse_answer("", ["a"])["a"].code == ""


def test_request_query_string_and_headers():
    p = pub()
    target = p.build_query(IP)
    assert target == ("/nic/update?hostname=a.example.org,b.example.org&myip=203.0.113.5"
                      "&wildcard=NOCHG&mx=NOCHG&backmx=NOCHG")
    q = urllib.parse.parse_qs(urllib.parse.urlsplit(p.build_query("2001:db8::5")).query)
    assert q["myip"] == ["2001:db8::5"]
    h = p.build_headers()
    assert h["Authorization"] == "Basic " + base64.b64encode(b"alice:s3cret:x").decode()
    assert h["User-Agent"] == "vpn-gw/0.1"
    assert p.port == 443 and pub(scheme="http").port == 80 and pub(port=8245).port == 8245


@pytest.mark.parametrize("kw, text", [
    (dict(names=[]), "at least one"),
    (dict(names=["a,b.example.org"]), "bad host name"),
    (dict(names=[f"h{i}.example.org" for i in range(21)]), "at most 20"),
    (dict(scheme="ftp"), "scheme"),
    (dict(path="nic/update"), "path"),
    (dict(scheme="http", ca_file="/x.pem"), "ca_file"),
])
def test_validation(kw, text):
    with pytest.raises(ValueError, match=text):
        pub(**kw)


def test_password_not_in_repr():
    assert "s3cret" not in repr(pub())


# ------------------------------------------------------------------ state machine


@pytest.mark.parametrize("body", ["good 203.0.113.5\ngood 203.0.113.5",
                                  "nochg 203.0.113.5\nnochg 203.0.113.5",
                                  "good 203.0.113.5\nnochg 203.0.113.5"])
def test_success_confirms_address_and_unchanged_is_not_resent(body):
    p = pub()
    res = p.apply_answer(IP, NAMES, 200, body)
    assert res.ok and res.error is None and res.retry_at is None and not res.stopped
    assert set(res.status.values()) <= {"good", "nochg"}
    assert p.confirmed == IP and p.state == "ready"
    again = publish(p)                       # same address: nothing sent
    assert again.ok and not again.sent and p.requests_sent == 0


@pytest.mark.parametrize("code", ["badauth", "!donator", "badagent", "numhost"])
def test_hard_stop_for_the_whole_publisher(code):
    clock = Clock()
    p = pub(clock)
    res = p.apply_answer(IP, NAMES, 200, code)
    assert not res.ok and res.stopped and res.retry_at is None
    assert code in res.error and "fix the configuration" in res.error
    assert p.state == "stopped"
    clock.t += 10 * 86400                    # time does not lift a hard stop
    for address in (IP, "203.0.113.6"):
        r = publish(p, address, force=True)
        assert not r.sent and r.stopped and code in r.error
    assert p.requests_sent == 0
    p.reset()                                # the configuration changed
    assert p.state == "ready"


def test_http_401_without_body_is_badauth():
    p = pub()
    res = p.apply_answer(IP, NAMES, 401, "")
    assert res.stopped and "badauth" in res.error


@pytest.mark.parametrize("code", ["nohost", "notfqdn", "abuse", "!yours"])
def test_hard_stop_for_one_name(code):
    p = pub()
    res = p.apply_answer(IP, NAMES, 200, f"good {IP}\n{code}")
    assert not res.ok and not res.stopped
    assert res.status == {"a.example.org": "good", "b.example.org": code}
    assert f"b.example.org: {code}" in res.error
    assert p.active_names == ["a.example.org"] and p.stopped_names == {"b.example.org": code}
    assert p.state == "ready"
    assert p.build_query("203.0.113.6").startswith("/nic/update?hostname=a.example.org&")
    # last name stopped too: the publisher is stopped
    res = p.apply_answer("203.0.113.6", ["a.example.org"], 200, code)
    assert res.stopped and p.state == "stopped"
    r = publish(p, "203.0.113.7")
    assert not r.sent and r.stopped


@pytest.mark.parametrize("code", ["911", "dnserr"])
def test_server_trouble_backs_off_exponentially(code):
    clock = Clock(1000.0)
    p = pub(clock, backoff_initial=1800, backoff_max=7200)
    res = p.apply_answer(IP, NAMES, 200, code)
    assert not res.ok and not res.stopped and res.retry_at == 1000 + 1800
    assert code in res.error and "backing off" in res.error
    assert p.state == "backoff"
    # before retry_at nothing is sent, not even a new address or a forced refresh
    clock.t = 1000 + 1799
    r = publish(p, "203.0.113.9", force=True)
    assert not r.sent and r.retry_at == 2800 and p.requests_sent == 0
    clock.t = 2800
    assert p.state == "ready"
    assert p.apply_answer(IP, NAMES, 200, code).retry_at == 2800 + 3600      # doubled
    clock.t = 6400
    assert p.apply_answer(IP, NAMES, 200, code).retry_at == 6400 + 7200      # capped
    clock.t = 13600
    assert p.apply_answer(IP, NAMES, 200, code).retry_at == 13600 + 7200
    # success resets the back-off
    assert p.apply_answer(IP, NAMES, 200, f"good {IP}\ngood {IP}").ok
    assert p.apply_answer(IP, NAMES, 200, code).retry_at == 13600 + 1800


def test_http_5xx_is_server_trouble_and_unknown_answer_is_short_retry():
    clock = Clock(0.0)
    p = pub(clock, backoff_initial=1800, retry_initial=60, retry_max=600)
    res = p.apply_answer(IP, NAMES, 503, "Service Unavailable")
    assert res.retry_at == 1800 and "HTTP 503" in res.error
    p.reset()
    res = p.apply_answer(IP, NAMES, 200, "<html>captive portal</html>")
    assert not res.ok and res.retry_at == 60 and "unexpected answer" in res.error
    clock.t = 60
    assert p.apply_answer(IP, NAMES, 200, "what").retry_at == 60 + 120
    p.reset()
    res = p.apply_answer(IP, NAMES, 404, "Not Found")
    assert res.retry_at == clock.t + 60 and "HTTP 404" in res.error
    # the provider saw this request: a new address does not bypass the hold
    r = publish(p, "203.0.113.77")
    assert not r.sent


def test_good_127_0_0_1_means_ignored_request():
    p = pub()
    res = p.apply_answer(IP, NAMES, 200, "good 127.0.0.1\ngood 127.0.0.1")
    assert res.stopped and "badagent" in res.error


def test_every_documented_code_is_handled():
    assert set(ANSWERS) == {"good", "nochg", "badauth", "!donator", "badagent", "numhost",
                            "notfqdn", "nohost", "!yours", "abuse", "dnserr", "911"}
    for code, (kind, _why) in ANSWERS.items():
        p = pub()
        body = "\n".join(f"{code} {IP}" if kind == "ok" else code for _ in NAMES)
        res = p.apply_answer(IP, NAMES, 200, body)
        assert res.ok == (kind == "ok"), code
        assert res.stopped == (kind in ("stop", "stop-name")), code
        assert (res.retry_at is not None) == (kind == "backoff"), code
