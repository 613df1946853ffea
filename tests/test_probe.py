"""The firewall-traversal echo probe (vpn_gw/probe.py, docs/probe.md): codec, strictness, the
responder's rate limits and size guarantee, separation from IKE, and the client against a
responder on loopback."""
from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ikev2 import payloads as P
from ikev2.constants import NON_ESP_MARKER, ExchangeType
from ikev2.manager import IkeManager
from ikev2.message import decode_message, encode_message
from tests.strategies import messages
from vpn_gw import cli
from vpn_gw import probe as pr

TOKEN = bytes(range(16))
DATA = Path(__file__).parent / "data" / "strongswan"


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def responder(**kw) -> tuple[pr.ProbeResponder, Clock]:
    clock = Clock()
    return pr.ProbeResponder(clock=clock, **kw), clock


# ---------------------------------------------------------------------------------- codec


@given(token=st.binary(min_size=16, max_size=16), ts=st.integers(0, 2**64 - 1),
       padding=st.integers(0, pr.MAX_PADDING))
@settings(max_examples=200, deadline=None)
def test_round_trip(token, ts, padding):
    req = pr.build_request(token, ts, padding)
    assert len(req) == pr.MIN_LEN + padding
    assert pr.is_probe(req)
    assert pr.parse(req) == pr.parse_request(req) == pr.Probe(pr.KIND_REQUEST, token, ts, padding)
    rep = pr.build_reply(token, ts)
    assert len(rep) == pr.MIN_LEN and pr.is_probe(rep)
    assert pr.parse_reply(rep) == pr.Probe(pr.KIND_REPLY, token, ts, 0)


def test_wire_layout_matches_the_documented_diagram():
    req = pr.build_request(TOKEN, 0x0102030405060708, 2)
    assert req[:8] == b"VGWPROBE" and req[8:16] == bytes(8)
    assert req[16:20] == bytes([245, 0x20, 245, 0x20])
    assert req[20:24] == bytes(4) and int.from_bytes(req[24:28], "big") == 62
    assert req[28:32] == bytes([0, 0, 0, 34])
    assert req[32:36] == bytes([1, 1, 0, 0])
    assert req[36:52] == TOKEN and req[52:60] == bytes(range(1, 9)) and req[60:] == bytes(2)
    assert pr.build_reply(TOKEN, 7)[33] == 2
    doc = (Path(__file__).parents[1] / "docs" / "probe.md").read_text()
    assert "VGWPROBE" in doc and "245" in doc


def test_builder_rejects_bad_arguments():
    with pytest.raises(ValueError):
        pr.build_request(b"short", 0)
    with pytest.raises(ValueError):
        pr.build_request(TOKEN, -1)
    with pytest.raises(ValueError):
        pr.build_request(TOKEN, 0, pr.MAX_PADDING + 1)


def test_truncated_and_trailing_bytes_are_rejected():
    for msg in (pr.build_request(TOKEN, 5, 10), pr.build_reply(TOKEN, 5)):
        for n in range(len(msg)):
            with pytest.raises(pr.ProbeError):
                pr.parse(msg[:n])
        with pytest.raises(pr.ProbeError):
            pr.parse(msg + b"\x00")
    # consistent lengths but a reply with padding, or a request beyond MAX_LEN
    rep = bytearray(pr.build_request(TOKEN, 5, 4))
    rep[33] = pr.KIND_REPLY
    with pytest.raises(pr.ProbeError, match="padding"):
        pr.parse(bytes(rep))
    big = bytearray(pr.build_request(TOKEN, 5, pr.MAX_PADDING) + bytes(1))
    big[24:28] = len(big).to_bytes(4, "big")
    big[30:32] = (len(big) - 28).to_bytes(2, "big")
    with pytest.raises(pr.ProbeError, match="too long"):
        pr.parse(bytes(big))


def test_every_fixed_field_is_checked():
    """Changing any byte outside token, timestamp (free) makes the datagram malformed."""
    base = pr.build_request(TOKEN, 5, 3)
    free = set(range(36, 60))
    for pos in range(len(base)):
        if pos in free:
            continue
        for delta in (1, 0x80):
            bad = bytearray(base)
            bad[pos] ^= delta
            with pytest.raises(pr.ProbeError):
                pr.parse_request(bytes(bad))
    for pos in free:
        bad = bytearray(base)
        bad[pos] ^= 0xFF
        pr.parse_request(bytes(bad))  # any token and timestamp are fine


def test_wrong_exchange_type_is_not_a_probe():
    msg = bytearray(pr.build_request(TOKEN, 5))
    for exch in [int(e) for e in ExchangeType] + [0, 240, 244, 246, 255]:
        msg[18] = exch
        assert not pr.is_probe(bytes(msg))
        with pytest.raises(pr.ProbeError, match="exchange type"):
            pr.parse(bytes(msg))
    assert not pr.is_probe(b"") and not pr.is_probe(bytes(27))


def test_request_and_reply_kinds_are_distinct():
    with pytest.raises(pr.ProbeError):
        pr.parse_request(pr.build_reply(TOKEN, 1))
    with pytest.raises(pr.ProbeError):
        pr.parse_reply(pr.build_request(TOKEN, 1))


# ---------------------------------------------------------------------------------- vs IKE


def _recorded_ike() -> list[bytes]:
    out = []
    for f in sorted(DATA.glob("*.json")):
        out += [bytes.fromhex(m["hex"]) for m in json.loads(f.read_text())["messages"]]
    return out


def test_no_recorded_ike_message_is_a_probe():
    msgs = _recorded_ike()
    assert len(msgs) > 50
    for m in msgs:
        assert not pr.is_probe(m)
        with pytest.raises(pr.ProbeError):
            pr.parse(m)


@given(messages())
@settings(max_examples=200, deadline=None)
def test_no_generated_ike_message_is_a_probe(msg):
    if msg.exchange == pr.PROBE_TYPE:
        msg.exchange = ExchangeType.IKE_SA_INIT
    try:
        data = encode_message(msg)
    except ValueError:
        return
    assert not pr.is_probe(data)
    assert not pr.is_probe(data[:28])


def test_probe_type_is_private_use_and_not_an_ike_exchange():
    assert 240 <= pr.PROBE_TYPE <= 255 and pr.PROBE_TYPE >= 128
    assert pr.PROBE_TYPE not in {int(e) for e in ExchangeType}
    assert pr.PROBE_TYPE not in P.PAYLOAD_CLASSES


def test_ike_codec_reads_a_probe_but_the_engine_never_handles_it():
    """decode_message may read a probe (an unknown exchange with one unknown, non-critical
    payload), but the IKE manager never treats it as IKE_SA_INIT: no SA, no answer."""
    for data in (pr.build_request(TOKEN, 5, 20), pr.build_reply(TOKEN, 5)):
        msg = decode_message(data)
        assert msg.exchange == pr.PROBE_TYPE and msg.exchange != ExchangeType.IKE_SA_INIT
        assert msg.is_response and not msg.is_initiator
        assert [type(p) for p in msg.payloads] == [P.UnknownPayload]
        mgr = IkeManager([], lambda n: bytes(n))
        mgr.receive(data, ("192.0.2.1", 500), ("198.51.100.7", 500), 0.0)
        assert mgr.sas == [] and mgr.pop_datagrams() == [] and mgr.pop_events() == []


# ---------------------------------------------------------------------------------- responder


def test_responder_answers_with_the_token_and_timestamp():
    r, _ = responder()
    rep = r.handle(pr.build_request(TOKEN, 424242, 100), "198.51.100.7")
    assert pr.parse_reply(rep) == pr.Probe(pr.KIND_REPLY, TOKEN, 424242, 0)
    c = r.counters()
    assert c["received"] == c["answered"] == 1 and c["bytes_in"] == 160 and c["bytes_out"] == 60


def test_reply_never_larger_than_request_for_every_size():
    r, clock = responder(burst=10**6, global_burst=10**6)
    for padding in range(pr.MAX_PADDING + 1):
        req = pr.build_request(TOKEN, padding, padding)
        rep = r.handle(req, "198.51.100.7")
        assert rep is not None and len(rep) <= len(req)
    # and a reply sent to a responder is not answered (no ping-pong between two gateways)
    assert r.handle(pr.build_reply(TOKEN, 1), "198.51.100.7") is None


def test_malformed_probes_are_dropped_silently_and_counted():
    r, _ = responder()
    good = pr.build_request(TOKEN, 1)
    bad = [good[:-1], good + b"\0", good[:18] + b"\x22" + good[19:], pr.build_reply(TOKEN, 1),
           good[:60] + b"\x01"]
    for b in bad:
        assert r.handle(b, "198.51.100.7") is None
    c = r.counters()
    assert c["malformed"] == len(bad) and c["answered"] == 0
    # malformed datagrams cost no tokens
    assert r.handle(good, "198.51.100.7") is not None


def test_per_source_rate_limit():
    r, clock = responder(rate_per_source=2.0, burst=5, global_rate=1000.0)
    req = pr.build_request(TOKEN, 1)
    answered = sum(r.handle(req, "198.51.100.7") is not None for _ in range(50))
    assert answered == 5  # the burst
    assert r.handle(req, "198.51.100.8") is not None  # another source is not affected
    clock.t += 1.0
    assert sum(r.handle(req, "198.51.100.7") is not None for _ in range(50)) == 2
    clock.t += 100.0  # refill caps at the burst
    assert sum(r.handle(req, "198.51.100.7") is not None for _ in range(50)) == 5
    assert r.counters()["rate_limited_source"] == 45 + 48 + 45
    assert r.counters()["rate_limited_global"] == 0


def test_now_argument_overrides_the_clock_and_backwards_time_adds_nothing():
    r, _ = responder(rate_per_source=1.0, burst=1, global_rate=1000.0)
    req = pr.build_request(TOKEN, 1)
    assert r.handle(req, "192.0.2.9", now=10.0) is not None
    assert r.handle(req, "192.0.2.9", now=10.5) is None
    assert r.handle(req, "192.0.2.9", now=5.0) is None  # clock went backwards
    assert r.handle(req, "192.0.2.9", now=11.0) is not None


def test_global_rate_limit():
    r, clock = responder(rate_per_source=1.0, burst=3, global_rate=10.0, global_burst=20)
    req = pr.build_request(TOKEN, 1)
    sources = [f"198.51.100.{i}" for i in range(1, 101)]
    answered = sum(r.handle(req, s) is not None for s in sources for _ in range(3))
    assert answered == 20
    c = r.counters()
    assert c["rate_limited_global"] == 280 and c["rate_limited_source"] == 0
    clock.t += 1.0  # 10 more tokens globally
    assert sum(r.handle(req, s) is not None for s in sources) == 10


def test_global_limit_does_not_charge_the_source():
    r, clock = responder(rate_per_source=0.0, burst=2, global_rate=0.0, global_burst=1)
    req = pr.build_request(TOKEN, 1)
    assert r.handle(req, "192.0.2.1") is not None
    assert r.handle(req, "192.0.2.2") is None          # global bucket empty
    r._global.tokens = 5
    assert r.handle(req, "192.0.2.2") is not None      # 192.0.2.2 still has its burst of 2
    assert r.handle(req, "192.0.2.2") is not None


def test_ipv6_sources_share_their_slash_64():
    r, _ = responder(rate_per_source=0.0, burst=2, global_rate=1000.0)
    req = pr.build_request(TOKEN, 1)
    got = [r.handle(req, f"2001:db8:1:2::{i:x}") is not None for i in range(1, 10)]
    assert got.count(True) == 2
    assert r.handle(req, "2001:db8:1:3::1") is not None


def test_source_table_is_bounded():
    r, _ = responder(rate_per_source=0.0, burst=1, global_rate=10**6, max_sources=100)
    req = pr.build_request(TOKEN, 1)
    for i in range(1000):
        r.handle(req, f"10.0.{i // 256}.{i % 256}")
    assert r.counters()["sources"] == 100


# ---------------------------------------------------------------------------------- client


class LoopbackResponder:
    """A probe responder on 127.0.0.1 in a thread (like the daemon: marker on natt ports)."""

    def __init__(self, natt: bool = False, answer: bool = True):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.natt, self.answer = natt, answer
        self.responder = pr.ProbeResponder()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except (TimeoutError, OSError):
                continue
            if self.natt:
                if data[:4] != NON_ESP_MARKER:
                    continue
                data = data[4:]
            if not self.answer or not pr.is_probe(data):
                continue
            rep = self.responder.handle(data, addr[0], time.monotonic())
            if rep is not None:
                self.sock.sendto(NON_ESP_MARKER + rep if self.natt else rep, addr)

    def close(self):
        self.stop.set()
        self.thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def servers():
    made: list[LoopbackResponder] = []

    def make(**kw):
        s = LoopbackResponder(**kw)
        made.append(s)
        return s
    yield make
    for s in made:
        s.close()


def test_client_ok_partial_and_blocked(servers):
    ike, natt, silent = servers(), servers(natt=True), servers(answer=False)
    t0 = time.monotonic()
    res = asyncio.run(pr.probe("127.0.0.1", [ike.port, natt.port, silent.port], 1.0,
                               natt_ports=[natt.port]))
    took = time.monotonic() - t0
    assert [r.reachable for r in res] == [True, True, False]
    assert all(0 <= r.rtt < 0.5 for r in res[:2]) and res[2].rtt is None
    assert res[0].sent >= 1 and res[2].sent >= 3  # retransmitted while waiting
    assert 0.9 <= took < 2.0
    assert pr.verdict(res) == (pr.EXIT_PARTIAL, f"partial: UDP ok on {ike.port}, {natt.port}, blocked on "
                                                f"{silent.port}: use TCP")
    assert pr.verdict(res[:2])[0] == pr.EXIT_OK
    assert pr.verdict(res[2:]) == (pr.EXIT_BLOCKED, "no reply on any port: UDP is blocked on the way (then use "
                                                    "TCP) or no vpn-gw runs at this address (only vpn-gw "
                                                    "answers probes)")


def test_client_needs_the_marker_on_natt_ports(servers):
    natt = servers(natt=True)
    res = asyncio.run(pr.probe("127.0.0.1", [natt.port], 0.4, natt_ports=[]))
    assert not res[0].reachable


def test_client_notes_icmp_port_unreachable():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens: loopback answers with ICMP port unreachable
    res = asyncio.run(pr.probe("127.0.0.1", [port], 0.4))
    assert not res[0].reachable and res[0].icmp_error == "ICMP port unreachable"
    assert res[0].verdict == "nothing listens on this port"


def test_cli_probe_where_nothing_listens(capsys):
    """Every port refused: no gateway there, and no advice to use TCP (it would not help)."""
    ports = []
    for _ in range(2):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        ports.append(s.getsockname()[1])
        s.close()
    code = cli.main(["probe", "127.0.0.1", "--port", ",".join(map(str, ports)), "--timeout", "0.5"])
    out = capsys.readouterr().out
    assert code == pr.EXIT_NO_GATEWAY == 5, out
    assert "TCP" not in out
    assert out.strip().endswith(f"verdict: no vpn-gw at this address: nothing listens on UDP {ports[0]}, "
                                f"{ports[1]} (ICMP port unreachable); check the address and that the "
                                "gateway runs")
    assert cli.main(["probe", "127.0.0.1", "--port", str(ports[0]), "--timeout", "0.5", "--json"]) == 5
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"] == "no-gateway" and doc["exit_status"] == 5


def test_probe_help_says_vpn_gw_only_and_exit_statuses(capsys):
    with pytest.raises(SystemExit):
        cli.main(["probe", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Only works against a vpn-gw" in text
    for code in ("0 every port answered", "3 no reply on any port", "4 some ports answered",
                 "5 every port refused"):
        assert code in text


def test_cli_probe_text_json_and_exit_statuses(servers, capsys):
    ok, silent = servers(), servers(answer=False)
    assert cli.main(["probe", "127.0.0.1", "--port", str(ok.port), "--timeout", "0.5"]) == 0
    out = capsys.readouterr().out
    assert f"127.0.0.1 udp/{ok.port}: reachable, rtt " in out and "ms: UDP ok" in out
    assert out.strip().endswith("verdict: UDP ok")

    assert cli.main(["probe", "127.0.0.1", "--port", f"{ok.port},{silent.port}", "--timeout", "0.5"]) == 4
    out = capsys.readouterr().out
    assert f"udp/{silent.port}: no reply within 0.5 s: UDP blocked, or no vpn-gw at this address" in out

    assert cli.main(["probe", "127.0.0.1", "--port", str(silent.port), "--timeout", "0.3", "--json"]) == 3
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"] == "blocked" and doc["exit_status"] == 3
    assert doc["ports"] == [{"port": silent.port, "reachable": False, "rtt_ms": None,
                             "sent": doc["ports"][0]["sent"],
                             "verdict": "UDP blocked, or no vpn-gw at this address",
                             "icmp_error": None}]


@pytest.mark.parametrize("argv", [["--port", "0"], ["--port", "500,x"], ["--port", "70000"],
                                  ["--timeout", "0"], ["--timeout", "abc"]])
def test_cli_probe_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["probe", "127.0.0.1", *argv])
    assert e.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_cli_probe_unresolvable_host(capsys):
    assert cli.main(["probe", "no-such-host.invalid", "--timeout", "0.2"]) == 1
    assert "cannot probe no-such-host.invalid" in capsys.readouterr().err
