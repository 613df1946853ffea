"""`vpn-gw probe` through an nftables firewall, against our daemon in a namespace (docs/probe.md).

    client 198.51.100.2 (+ flood sources) -- router (nftables) -- 192.0.2.1 gw (ours)
                                                  |
                                            203.0.113.1 peer (ours, for the flood test)

The router forwards between all three and filters only what arrives from the client.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

import pytest

from tests.gateway import PYTHON, ROOT, connection, wait_for
from tests.netns import IP, Netns, run
from vpn_gw import probe as pr

pytestmark = pytest.mark.netns

GW, CLIENT, PEER = "192.0.2.1", "198.51.100.2", "203.0.113.1"
TIMEOUT = 2.0
STARTUP = 3.0  # python start-up and imports of the CLI, on a loaded CI machine

NFT_BASE = """
table inet probefw
delete table inet probefw
table inet probefw {
    counter c2g { }
    counter g2c { }
    counter dropped { }
    chain forward_filter {
        type filter hook forward priority 0; policy accept;
        %s
        iifname "tocl" oifname "togw" udp dport { 500, 4500 } counter name c2g
        iifname "togw" oifname "tocl" udp sport { 500, 4500 } counter name g2c
    }
}
"""
DROP_4500 = 'iifname "tocl" udp dport 4500 counter name dropped drop'
DROP_UDP = 'iifname "tocl" meta l4proto udp counter name dropped drop'


@dataclass
class Net:
    router: Netns
    gw: Netns
    client: Netns
    peer: Netns

    def firewall(self, rule: str = "") -> None:
        self.router.run(["nft", "-f", "-"], input=NFT_BASE % rule)

    def counter(self, name: str) -> dict:
        out = self.router.run(["nft", "-j", "list", "counter", "inet", "probefw", name]).stdout
        for obj in json.loads(out)["nftables"]:
            if "counter" in obj:
                return obj["counter"]
        raise AssertionError(f"no counter {name} in {out}")

    def probe(self, *args: str, timeout: float = TIMEOUT) -> tuple[int, str, float]:
        t0 = time.monotonic()
        p = self.client.run([PYTHON, "-m", "vpn_gw", "probe", GW, "--timeout", str(timeout), *args],
                            check=False, timeout=timeout + 20)
        took = time.monotonic() - t0
        assert p.returncode in (0, 3, 4), p.stderr
        return p.returncode, p.stdout, took


def gw_conn(me: str, peer: str, me_tag: str, peer_tag: str, mine: str, theirs: str) -> dict:
    return connection(f"to-{peer_tag}", me, peer, f"{me_tag}.example.org", f"{peer_tag}.example.org",
                      local_ts=mine, remote_ts=theirs)


@pytest.fixture
def net(e2e):
    grp = e2e.grp
    router = grp.add("r", forwarding=True)
    gw, client, peer = grp.add("gw"), grp.add("cl"), grp.add("pe")
    grp.veth(gw, "wan", router, "togw", a_addrs=[f"{GW}/24"], b_addrs=["192.0.2.254/24"])
    grp.veth(client, "eth0", router, "tocl", a_addrs=[f"{CLIENT}/24"], b_addrs=["198.51.100.254/24"])
    grp.veth(peer, "wan", router, "tope", a_addrs=[f"{PEER}/24"], b_addrs=["203.0.113.254/24"])
    gw.ip("route", "add", "default", "via", "192.0.2.254")
    client.ip("route", "add", "default", "via", "198.51.100.254")
    peer.ip("route", "add", "default", "via", "203.0.113.254")
    n = Net(router, gw, client, peer)
    n.firewall()
    # our gateway with one (dummy, for now idle) connection to the peer
    e2e.gateway(gw, "gw", [gw_conn(GW, PEER, "gw", "pe", "10.1.0.0/24", "10.2.0.0/24")], [GW])
    return n


RTT = re.compile(r"udp/(\d+): reachable, rtt (\d+\.\d+) ms: UDP ok")


def test_udp_allowed(net):
    code, out, took = net.probe()
    assert code == 0, out
    assert sorted(int(p) for p, _ in RTT.findall(out)) == [500, 4500], out
    assert all(float(rtt) < 1000 for _, rtt in RTT.findall(out))
    assert out.strip().endswith("verdict: UDP ok")
    assert took < STARTUP + 1.0  # answered at once, not after the timeout
    code, out, _ = net.probe("--json")
    doc = json.loads(out)
    assert code == 0 and doc["verdict"] == "ok" and doc["address"] == GW
    assert [(p["port"], p["reachable"]) for p in doc["ports"]] == [(500, True), (4500, True)]
    assert all(p["rtt_ms"] is not None and p["rtt_ms"] >= 0 for p in doc["ports"])


def test_udp_4500_dropped(net):
    net.firewall(DROP_4500)
    code, out, took = net.probe()
    assert code == 4, out
    assert RTT.search(out) and RTT.search(out).group(1) == "500"
    assert f"{GW} udp/4500: no reply within {TIMEOUT:g} s: UDP blocked, or no vpn-gw at this address" in out
    assert "verdict: partial: UDP ok on 500, blocked on 4500: use TCP" in out
    assert TIMEOUT <= took < TIMEOUT + STARTUP
    assert net.counter("dropped")["packets"] >= 2  # the firewall ate the requests (and retransmissions)


def test_all_udp_dropped(net):
    net.firewall(DROP_UDP)
    code, out, took = net.probe()
    assert code == 3, out
    assert "reachable" not in out.replace("unreachable", "")
    assert out.count("UDP blocked, or no vpn-gw at this address") == 2  # the two ports
    assert out.strip().endswith("verdict: no reply on any port: UDP is blocked on the way (then use TCP) "
                                "or no vpn-gw runs at this address (only vpn-gw answers probes)")
    assert TIMEOUT <= took < TIMEOUT + STARTUP
    assert net.counter("dropped")["packets"] >= 4
    # the gateway is up all along: only the path blocks UDP
    assert net.gw.ping(GW)


FLOOD = r"""
import json, os, random, select, socket, sys, time
from ikev2.constants import NON_ESP_MARKER
from vpn_gw.probe import build_request, parse_reply

cfg = json.loads(sys.argv[1])
rnd = random.Random(7)
socks, keys = {}, {}
for src, _ in cfg["plan"]:
    for port in (500, 4500):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind((src, 0))
        s.connect((cfg["gw"], port))
        s.setblocking(False)
        socks[(src, port)] = s
        keys[s.fileno()] = (src, port)
poller = select.poll()
for s in socks.values():
    poller.register(s.fileno(), select.POLLIN)
queue = [(src, 500 + 4000 * (i % 2)) for src, n in cfg["plan"] for i in range(n)]
rnd.shuffle(queue)
sizes, sent_by, got_by, problems = {}, {}, {}, []
out = {"sent": 0, "bytes_sent": 0, "replies": 0, "bytes_received": 0, "send_errors": 0, "t_last_reply": None}

def drain(ms):
    for fd, _ in poller.poll(ms):
        src, port = keys[fd]
        while True:
            try:
                data = socks[(src, port)].recv(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue
            wire = len(data)
            if port == 4500:
                if data[:4] != NON_ESP_MARKER:
                    problems.append("reply without the non-ESP marker")
                    continue
                data = data[4:]
            try:
                rep = parse_reply(data)
            except ValueError as e:
                problems.append(f"bad reply: {e}")
                continue
            req = sizes.pop(rep.token, None)
            if req is None:
                problems.append("reply with an unknown or repeated token")
                continue
            if wire > req:
                problems.append(f"reply of {wire} bytes to a request of {req}")
            out["replies"] += 1
            out["bytes_received"] += wire
            got_by[src] = got_by.get(src, 0) + 1
            out["t_last_reply"] = time.monotonic()

t0 = out["t0"] = time.monotonic()
for i, (src, port) in enumerate(queue):
    token = os.urandom(16)
    msg = build_request(token, i, rnd.randrange(0, 200))
    wire = NON_ESP_MARKER + msg if port == 4500 else msg
    try:
        socks[(src, port)].send(wire)
    except OSError:
        out["send_errors"] += 1
        continue
    sizes[token] = len(wire)
    out["sent"] += 1
    out["bytes_sent"] += len(wire)
    sent_by[src] = sent_by.get(src, 0) + 1
    wait = t0 + (i + 1) / cfg["rate"] - time.monotonic()
    drain(int(wait * 1000) if wait > 0.001 else 0)
out["t_sent"] = time.monotonic()
end = out["t_sent"] + cfg["linger"]
while time.monotonic() < end:
    drain(max(1, int((end - time.monotonic()) * 1000)))
out.update(sent_by=sent_by, got_by=got_by, problems=problems)
print(json.dumps(out))
"""


def test_flood_is_rate_limited_and_ike_still_works(net, e2e):
    # The second gateway, and 1 heavy + 64 light flood sources on the client side.
    peer_gw = e2e.gateway(net.peer, "pe", [gw_conn(PEER, GW, "pe", "gw", "10.2.0.0/24", "10.1.0.0/24")],
                          [PEER])
    heavy = "198.51.100.9"
    light = [f"198.51.100.{i}" for i in range(10, 74)]
    run([IP, "-n", net.client.name, "-batch", "-"],
        input="".join(f"address add {a}/24 dev eth0\n" for a in [heavy, *light]))
    plan = [[heavy, 400]] + [[a, 25] for a in light]
    total = sum(n for _, n in plan)
    assert total == 2000
    cfg = {"gw": GW, "plan": plan, "rate": 1000.0, "linger": 1.0}

    log = e2e.tmp / "flood.json"
    with open(log, "w") as fh:
        flood = net.client.popen([PYTHON, "-c", FLOOD, json.dumps(cfg)], stdout=fh,
                                 stderr=open(e2e.tmp / "flood.err", "w"), cwd=str(ROOT))
    time.sleep(0.5)
    t_up = time.monotonic()
    peer_gw.up("to-gw")  # IKE_SA_INIT + IKE_AUTH to the gateway under the flood (bounded by the CLI)
    t_up_done = time.monotonic()
    wait_for(lambda: flood.poll() is not None, 30, "the flood to finish")
    assert flood.returncode == 0, (e2e.tmp / "flood.err").read_text()
    res = json.loads(log.read_text())

    # IKE worked during the flood: the SA is up on both sides.
    assert t_up < res["t_sent"], "the IKE SA was not started during the flood"
    assert peer_gw.ike_sas("to-gw") and e2e.gateways[0].ike_sas("to-pe")
    print(f"IKE up in {t_up_done - t_up:.2f}s; flood {res['t0']:.2f}..{res['t_sent']:.2f}, up "
          f"{t_up:.2f}..{t_up_done:.2f}")

    # Answers only up to the rate limits, each never larger than its request.
    assert res["problems"] == [] and res["send_errors"] == 0
    assert res["sent"] == total and res["replies"] > 0
    window = (res["t_last_reply"] or res["t_sent"]) - res["t0"]
    per_source = pr.DEFAULT_BURST + pr.DEFAULT_RATE_PER_SOURCE * window + 1
    assert res["got_by"].get(heavy, 0) <= per_source, res["got_by"]
    assert all(n <= per_source for n in res["got_by"].values())
    assert res["replies"] <= pr.DEFAULT_GLOBAL_BURST + pr.DEFAULT_GLOBAL_RATE * window + 1
    assert res["bytes_received"] <= res["bytes_sent"]

    stats = e2e.gateways[0].control("stats")["probe"]
    print(f"flood: sent {res['sent']}, replies {res['replies']} (heavy source {res['got_by'].get(heavy, 0)}) "
          f"in {window:.2f}s; gateway {stats}")
    assert stats["answered"] >= res["replies"]
    assert stats["rate_limited_source"] > 0 and stats["rate_limited_global"] > 0
    assert stats["malformed"] == 0 and stats["bytes_out"] <= stats["bytes_in"]
    # the same seen on the wire by the router: fewer bytes back than in
    c2g, g2c = net.counter("c2g"), net.counter("g2c")
    assert g2c["packets"] <= c2g["packets"] and g2c["bytes"] <= c2g["bytes"]
    assert g2c["packets"] >= res["replies"]

    # After the flood the gateway still answers a well-behaved client at once, and IKE still
    # works: the peer brings the SA down and up again.
    code, out, _ = net.probe()
    assert code == 0, out
    peer_gw.down("to-gw")
    wait_for(lambda: not peer_gw.ike_sas("to-gw", state=None), 10, "the IKE SA to be deleted")
    peer_gw.up("to-gw")
    assert peer_gw.ike_sas("to-gw")
