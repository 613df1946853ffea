"""Responder admission (ikev2.admission, issue 14): the stateless COOKIE fast path, versioned
COOKIEs with a rotating secret, global and per-address half-open limits, the per-address rate of
new IKE SAs, and the IKE fragment reassembly budget."""
from __future__ import annotations

from ikev2 import payloads as P
from ikev2.admission import AddressRate, CookieJar, address_key
from ikev2.constants import ExchangeType, NotifyType
from ikev2.ike_sa import State
from ikev2.manager import IkeManager
from ikev2.message import decode_message
from ikev2.policy import AuthConfig
from tests.engine.certgen import NOW, chain
from tests.engine.harness import DetRandom, child, pair, psk_policy, site_to_site

GW = "192.0.2.1"
FLOODER, LEGIT, OTHER = "198.51.100.66", "198.51.100.7", "203.0.113.9"


def gateway(**kw) -> IkeManager:
    pol = psk_policy("rw", "gw.example.org", "%any", GW, "%any", [child("net", "10.1.0.0/24", "0.0.0.0/0")])
    pol.remote_addrs = []
    return IkeManager([pol], DetRandom("gw"), **kw)


def client(addr: str, seed: str) -> IkeManager:
    pol = psk_policy("gw", f"{seed}.example.org", "gw.example.org", addr, GW,
                     [child("net", "0.0.0.0/0", "10.1.0.0/24")])
    return IkeManager([pol], DetRandom(seed))


class Net:
    """The gateway and clients at their own addresses; ``block(addr, exchange)`` drops what a
    client sends in that exchange (a flooder that never does IKE_AUTH)."""

    def __init__(self, gw: IkeManager, clients: dict[str, IkeManager]):
        self.gw, self.clients, self.now = gw, clients, 0.0
        self.blocked: set[tuple[str, int]] = set()

    def deliver(self) -> None:
        for _ in range(200):
            moved = False
            for addr, c in self.clients.items():
                for data, src, dst in c.pop_datagrams():
                    moved = True
                    if (addr, data[18]) not in self.blocked:
                        self.gw.receive(data, dst, src, self.now)
            for data, src, dst in self.gw.pop_datagrams():
                moved = True
                if dst[0] in self.clients:
                    self.clients[dst[0]].receive(data, src, dst, self.now)
            if not moved:
                return
        raise AssertionError("no quiescence")

    def run(self, until: float, step: float = 0.25) -> None:
        self.deliver()
        while self.now < until:
            self.now = min(until, self.now + step)
            for m in (self.gw, *self.clients.values()):
                m.tick(self.now)
            self.deliver()


def first_init(c: IkeManager, now: float = 0.0) -> bytes:
    c.initiate("gw", now)
    (data, _src, _dst), = c.pop_datagrams()
    return data


def answers(gw: IkeManager) -> list:
    return [decode_message(d) for d, _s, _t in gw.pop_datagrams()]


def is_cookie_request(msg) -> bool:
    return msg.exchange == ExchangeType.IKE_SA_INIT and msg.notify(NotifyType.COOKIE) is not None \
        and len(msg.payloads) == 1


def cookie_init(gw: IkeManager, c: IkeManager, src: str, now: float = 0.0) -> bytes:
    """The client's IKE_SA_INIT with the COOKIE the gateway asked for."""
    data = first_init(c, now)
    gw.receive(data, (GW, 500), (src, 500), now)
    (reply, rs, rd), = gw.pop_datagrams()
    assert is_cookie_request(decode_message(reply))
    c.receive(reply, rs, rd, now)
    (again, _s, _d), = c.pop_datagrams()
    assert decode_message(again).payloads[0].notify_type == NotifyType.COOKIE
    return again


# ---------------------------------------------------------------- the fast path and the COOKIE


def test_spoofed_init_answered_with_cookie_without_state_or_decoding_the_body():
    gw = gateway(cookie_threshold=0)
    data = first_init(client(LEGIT, "c"), 0.0)
    gw.receive(data, (GW, 500), ("203.0.113.50", 500), 0.0)
    reply, = answers(gw)
    assert is_cookie_request(reply) and reply.spi_i == data[:8]
    assert gw.sas == [] and gw.half_open_count() == 0
    # Everything after the first payload header is garbage: still the same stateless answer
    # (nothing past the header and the first payload was looked at), no "malformed" drop.
    garbage = data[:32] + bytes(len(data) - 32)
    gw.receive(garbage, (GW, 500), ("203.0.113.50", 500), 0.0)
    assert is_cookie_request(answers(gw)[0])
    assert not gw.dropped and gw.sas == []
    assert gw.counters()["cookies_sent"] == 2


def test_cookie_from_previous_secret_accepted_within_grace_and_refused_after():
    gw = gateway(cookie_threshold=0, cookie_secret_lifetime=100.0, cookie_grace=10.0)
    gw.tick(0.0)  # the first rotation is due at 100
    c = client(LEGIT, "c")
    with_cookie = cookie_init(gw, c, LEGIT, 0.0)
    gen = gw.cookies.generation
    gw.tick(100.0)
    assert gw.cookies.generation == gen + 1 and gw.counters()["cookie_rotations"] == 1
    # Within the grace period (previous generation): admitted.
    gw.receive(with_cookie, (GW, 500), (LEGIT, 500), 105.0)
    assert gw.half_open_count(LEGIT) == 1
    resp, = answers(gw)
    assert resp.get(P.SAPayload) is not None  # a real IKE_SA_INIT response
    # After it: a fresh COOKIE of the new generation instead.
    gw2 = gateway(cookie_threshold=0, cookie_secret_lifetime=100.0, cookie_grace=10.0)
    gw2.tick(0.0)
    with_cookie = cookie_init(gw2, client(LEGIT, "d"), LEGIT, 0.0)
    gw2.tick(100.0)
    gw2.receive(with_cookie, (GW, 500), (LEGIT, 500), 110.5)
    reply, = answers(gw2)
    assert is_cookie_request(reply) and gw2.sas == []
    assert reply.notify(NotifyType.COOKIE).data[1:5] == (gen + 1).to_bytes(4, "big")
    assert gw2.counters()["cookies_stale"] == 1


def test_cookie_two_generations_old_is_stale_even_within_grace():
    jar = CookieJar(DetRandom("j"), lifetime=10.0, grace=10.0)
    jar.advance(0.0)
    old = jar.make(LEGIT, b"\1" * 8)
    jar.advance(10.0)
    jar.advance(20.0)
    assert jar.check(old, LEGIT, b"\1" * 8, 20.5) == "stale"


def test_forged_or_misbound_cookie_refused():
    gw = gateway(cookie_threshold=0)
    with_cookie = bytearray(cookie_init(gw, client(LEGIT, "c"), LEGIT, 0.0))
    with_cookie[36 + 10] ^= 0x01  # a bit of the MAC (notify header 8 bytes after the IKE header)
    gw.receive(bytes(with_cookie), (GW, 500), (LEGIT, 500), 0.0)
    assert is_cookie_request(answers(gw)[0]) and gw.sas == []
    assert gw.counters()["cookies_forged"] == 1
    # A good COOKIE from another address (made for LEGIT) is no good either.
    gw3 = gateway(cookie_threshold=0)
    good = cookie_init(gw3, client(LEGIT, "e"), LEGIT, 0.0)
    gw3.receive(good, (GW, 500), (OTHER, 500), 0.0)
    assert is_cookie_request(answers(gw3)[0]) and gw3.sas == []
    gw3.receive(good, (GW, 500), (LEGIT, 500), 0.0)
    assert gw3.half_open_count(LEGIT) == 1


# ---------------------------------------------------------------- limits


def test_one_address_answering_cookies_cannot_exhaust_admission():
    gw = gateway(cookie_threshold=3, half_open_limit=20, half_open_per_address=5, new_sa_rate_per_address=0)
    flooder, legit = client(FLOODER, "f"), client(LEGIT, "l")
    net = Net(gw, {FLOODER: flooder, LEGIT: legit})
    net.blocked.add((FLOODER, ExchangeType.IKE_AUTH))  # it answers COOKIEs, never authenticates
    for _ in range(60):
        flooder.initiate("gw", net.now)
        net.run(net.now + 0.05, step=0.05)
    assert gw.half_open_count(FLOODER) == 5  # never more than its limit...
    assert gw.counters()["inits_admitted_with_cookie"] >= 2  # ...even answering COOKIEs
    assert gw.dropped["per-address half-open limit reached"] >= 40
    sa = legit.initiate("gw", net.now)
    net.run(net.now + 3.0)
    assert sa.state == State.ESTABLISHED
    assert gw.half_open_count(FLOODER) <= 5


def test_valid_cookie_admitted_ahead_of_the_global_limit():
    gw = gateway(cookie_threshold=2, half_open_limit=4, half_open_per_address=0)
    for i, src in enumerate(("203.0.113.1", "203.0.113.2")):  # fill up to the COOKIE threshold
        gw.receive(first_init(client(src, f"s{i}")), (GW, 500), (src, 500), 0.0)
    assert gw.half_open_count() == 2
    gw.pop_datagrams()
    # No COOKIE: challenged, no state. With the COOKIE: admitted past the threshold.
    for i, src in enumerate(("203.0.113.3", "203.0.113.4")):
        gw.receive(cookie_init(gw, client(src, f"t{i}"), src), (GW, 500), (src, 500), 0.0)
        assert answers(gw)[0].get(P.SAPayload) is not None
    assert gw.half_open_count() == 4
    assert gw.counters()["inits_admitted_with_cookie"] == 2
    # At the global limit even a valid COOKIE is dropped.
    gw.pop_datagrams()
    gw.receive(cookie_init(gw, client("203.0.113.5", "u"), "203.0.113.5"), (GW, 500), ("203.0.113.5", 500), 0.0)
    assert gw.half_open_count() == 4 and gw.dropped["half-open limit reached"] == 1


def test_spoofed_half_opens_cannot_lock_the_real_owner_of_an_address_out():
    gw = gateway(cookie_threshold=100, half_open_per_address=3, new_sa_rate_per_address=0)
    for i in range(3):  # spoofed with LEGIT's address: the answers go nowhere
        gw.receive(first_init(client(LEGIT, f"spoof{i}")), (GW, 500), (LEGIT, 500), 0.0)
    gw.pop_datagrams()
    assert gw.half_open_count(LEGIT) == 3
    legit = client(LEGIT, "l")
    net = Net(gw, {LEGIT: legit})
    sa = legit.initiate("gw", 0.0)
    net.run(3.0)
    assert sa.state == State.ESTABLISHED
    assert gw.counters()["unproven_half_open_replaced"] == 1
    assert gw.half_open_count(LEGIT) == 2  # one spoofed SA gave way; never above the limit


def test_per_address_rate_of_new_ike_sas():
    gw = gateway(cookie_threshold=100, half_open_limit=100, half_open_per_address=0,
                 new_sa_rate_per_address=1.0, new_sa_burst_per_address=2)
    for i in range(5):
        gw.receive(first_init(client(FLOODER, f"r{i}")), (GW, 500), (FLOODER, 500), 0.0)
    assert gw.half_open_count(FLOODER) == 2
    assert gw.dropped["per-address rate of new IKE SAs exceeded"] == 3
    gw.receive(first_init(client(OTHER, "o")), (GW, 500), (OTHER, 500), 0.0)
    assert gw.half_open_count(OTHER) == 1  # other addresses have their own bucket
    gw.receive(first_init(client(FLOODER, "r9")), (GW, 500), (FLOODER, 500), 1.0)
    assert gw.half_open_count(FLOODER) == 3  # one token back after a second


def test_rate_buckets_have_bounded_memory():
    rate = AddressRate(1.0, 1.0, max_addresses=3)
    for i in range(10):
        assert rate.take(f"203.0.113.{i}", 0.0)
    assert len(rate) == 3
    assert not rate.take("203.0.113.9", 0.0)  # the newest ones are kept
    assert rate.take("203.0.113.0", 0.0)  # a forgotten one is a full bucket again


# ---------------------------------------------------------------- fragment budget


def cert_pair_for_budget():
    """Two sites authenticating with long certificate chains: IKE_AUTH travels in fragments."""
    hq, br = site_to_site(fragment_size=576)
    ca_hq, chain_hq, key_hq = chain("ecdsa", "hq.example.org", None, 3, "x" * 400)
    ca_br, chain_br, key_br = chain("ecdsa", "branch1.example.org", None, 3, "x" * 400)
    hq.local_auth = AuthConfig("pubkey", certs=chain_hq, private_key=key_hq)
    hq.remote_auth = AuthConfig("pubkey", cacerts=[ca_br])
    br.local_auth = AuthConfig("pubkey", certs=chain_br, private_key=key_br)
    br.remote_auth = AuthConfig("pubkey", cacerts=[ca_hq])
    link = pair(br, hq)
    link.a.wall_offset = link.b.wall_offset = NOW.timestamp()
    return link


def _ike_auth_fragments(link):
    out = []
    for _t, _src, _d, data in link.trace:
        m = decode_message(data)
        if m.exchange == ExchangeType.IKE_AUTH and not m.is_response and isinstance(m.payloads[-1], P.SKFPayload):
            out.append(m.payloads[-1])
    return out


def test_fragment_budget_per_sa_before_ike_auth():
    link = cert_pair_for_budget()
    link.b.fragment_budget.per_sa = 1024
    sa = link.a.initiate("hq", 0.0)
    link.run(3.0)
    assert len(_ike_auth_fragments(link)) >= 3
    assert sa.state != State.ESTABLISHED
    c = link.b.counters()
    assert c["fragment_sets_refused_per_sa"] >= 1 and c["fragment_bytes_held"] <= 1024
    assert c["fragment_bytes_peak"] <= 1024
    # The same message within a normal budget gets through.
    link = cert_pair_for_budget()
    sa = link.a.initiate("hq", 0.0)
    link.run(3.0)
    assert sa.state == State.ESTABLISHED
    c = link.b.counters()
    assert c["fragment_sets_refused_per_sa"] == 0 and c["fragment_bytes_peak"] > 1024
    assert c["fragment_bytes_held"] == 0


def test_fragment_budget_global_and_memory_released_when_the_sa_goes():
    link = cert_pair_for_budget()
    link.b.fragment_budget.total = 1024
    sa = link.a.initiate("hq", 0.0)
    link.run(3.0)
    assert sa.state != State.ESTABLISHED
    assert link.b.counters()["fragment_sets_refused_total"] >= 1
    # An unfinished set (the last fragment never arrives) is held until the SA goes away.
    link = cert_pair_for_budget()

    def drop_last(data, src, dst):
        m = decode_message(data)
        enc = m.payloads[-1] if m.payloads else None
        return isinstance(enc, P.SKFPayload) and not m.is_response and enc.fragment_number == enc.total_fragments

    link.drop_filter = drop_last
    sa = link.a.initiate("hq", 0.0)
    link.run(2.0)
    held = link.b.counters()["fragment_bytes_held"]
    assert held > 0 and link.b.half_open_count() == 1
    link.run(300.0, step=5.0)  # the initiator gives up, the half-open SA expires
    assert link.b.half_open_count() == 0 and link.b.sas == []
    assert link.b.counters()["fragment_bytes_held"] == 0


def test_ipv6_addresses_count_by_their_64():
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2::ffff") == "2001:db8:1:2::/64"
    assert address_key("::ffff:192.0.2.9") == address_key("192.0.2.9") == "192.0.2.9"
    pol = psk_policy("rw", "gw.example.org", "%any", "2001:db8::1", "%any",
                     [child("net", "10.1.0.0/24", "0.0.0.0/0")])
    pol.remote_addrs = []
    gw = IkeManager([pol], DetRandom("gw6"), cookie_threshold=100, half_open_per_address=3, new_sa_rate_per_address=0)
    init = first_init(client(LEGIT, "v6"))
    for i in range(10):  # one host hopping through the addresses of its /64
        spi_i = init[:6] + bytes([0, i])
        gw.receive(spi_i + init[8:], ("2001:db8::1", 500), (f"2001:db8:1:2::{i + 1:x}", 500), 0.0)
    assert gw.half_open_count("2001:db8:1:2::99") == 3 and len(gw.sas) == 3
    assert gw.counters()["cookies_sent"] == 7  # past the limit: COOKIE first (then the limit)
    gw.receive(init, ("2001:db8::1", 500), ("2001:db8:1:3::1", 500), 0.0)
    assert gw.half_open_count("2001:db8:1:3::1") == 1  # the next /64 is another address


# ---------------------------------------------------------------- the batch fast path (raw bytes)

PACKED = bytes([203, 0, 113, 50])


def test_stateless_init_reply_is_the_full_paths_answer_and_its_cookie_gets_in():
    gw = gateway(cookie_threshold=0)
    c = client(LEGIT, "c")
    data = first_init(c, 0.0)
    fast = gw.stateless_init_reply(data, LEGIT, 500, bytes([198, 51, 100, 7]), 0.0)
    gw.receive(data, (GW, 500), (LEGIT, 500), 0.0)
    (full, _s, _d), = gw.pop_datagrams()
    assert fast == full  # byte for byte: same message, same COOKIE
    assert gw.sas == [] and gw.counters()["cookies_sent"] == 2
    # The client answers the fast path's COOKIE: admitted with it (the same secret checks it).
    c.receive(fast, (GW, 500), (LEGIT, 500), 0.0)
    (again, _s, _d), = c.pop_datagrams()
    assert gw.stateless_init_reply(again, LEGIT, 500, bytes([198, 51, 100, 7]), 0.0) is None  # has a COOKIE
    gw.receive(again, (GW, 500), (LEGIT, 500), 0.0)
    assert gw.counters()["inits_admitted_with_cookie"] == 1 and len(gw.sas) == 1


def test_stateless_init_reply_leaves_everything_else_to_the_full_path():
    data = first_init(client(LEGIT, "c"), 0.0)
    below = gateway(cookie_threshold=5, half_open_per_address=0)
    assert below.stateless_init_reply(data, "203.0.113.50", 500, PACKED, 0.0) is None  # no COOKIE needed yet
    gw = gateway(cookie_threshold=0)
    for bad in (data[:27], data[:18] + bytes([35]) + data[19:],  # short; IKE_AUTH
                data[:19] + bytes([0x28]) + data[20:],            # a response
                data[:8] + b"\x01" * 8 + data[16:],               # SPIr set
                data[:20] + b"\x00\x00\x00\x01" + data[24:],      # message ID 1
                data + b"\x00"):                                  # length field wrong
        assert gw.stateless_init_reply(bad, "203.0.113.50", 500, PACKED, 0.0) is None
    assert gw.counters()["cookies_sent"] == 0
    # A retransmission of a half-open SA's INIT: that SA answers it again (not a new COOKIE).
    open_gw = gateway(cookie_threshold=1, half_open_per_address=0)
    open_gw.receive(data, (GW, 500), ("203.0.113.50", 500), 0.0)
    assert open_gw.half_open_count() == 1
    assert open_gw.stateless_init_reply(data, "203.0.113.50", 500, PACKED, 0.0) is None
    assert open_gw.stateless_init_reply(data, "203.0.113.50", 501, PACKED, 0.0) is not None  # another port


def test_stateless_init_reply_follows_the_per_address_limit():
    gw = gateway(cookie_threshold=100, half_open_per_address=2)
    for seed in ("a", "b"):
        gw.receive(first_init(client(LEGIT, seed), 0.0), (GW, 500), ("203.0.113.50", 500), 0.0)
    assert gw.half_open_count() == 2
    data = first_init(client(LEGIT, "c"), 0.0)
    assert gw.stateless_init_reply(data, "203.0.113.50", 500, PACKED, 0.0) is not None
    assert gw.stateless_init_reply(data, "203.0.113.51", 500, bytes([203, 0, 113, 51]), 0.0) is None


def test_stateless_init_reply_logs_one_line_per_interval():
    lines: list[tuple] = []
    gw = gateway(cookie_threshold=0)
    gw.log = lambda level, event, **kw: lines.append((event, kw))
    for i in range(5):
        gw.stateless_init_reply(first_init(client(LEGIT, f"c{i}"), 0.0), "203.0.113.50", 500, PACKED, 1.0 + i)
    gw.stateless_init_reply(first_init(client(LEGIT, "late"), 0.0), "203.0.113.50", 500, PACKED, 12.0)
    cookie_lines = [kw for event, kw in lines if event == "asking for a cookie"]
    assert [kw["cookies_since_last_line"] for kw in cookie_lines] == [1, 5]
