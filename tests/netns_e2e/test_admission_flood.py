"""Responder admission on the real daemon (issue 14): one address that floods IKE_SA_INIT and
answers every COOKIE challenge (a flooder namespace running our engine as initiator, never
sending IKE_AUTH) cannot stop a second client from connecting.

The gateway's limits are small so that, without the per-address limit, the flooder would hold
every half-open slot within a second (issue 14 item 1): ``half_open_limit = 10``,
``cookie_threshold = 2``, ``half_open_per_address = 5``; the per-address rate is off here so that
the half-open limit alone is what stops it (the rate has engine tests).
"""
from __future__ import annotations

import time

import pytest

from tests.gateway import ROOT, connection, wait_for
from tests.netns_e2e import tools

pytestmark = pytest.mark.netns

GW_A, FLOODER = "198.51.100.1", "198.51.100.66"  # the flooder's link
GW_B, CLIENT = "203.0.113.1", "203.0.113.7"      # the legitimate client's link
FLOOD_SECONDS = 8.0
FLOOD_RATE = 50.0                                # new IKE SAs per second, as in the issue

# Our engine as a greedy initiator: FLOOD_RATE new IKE SAs a second to GW for SECS seconds,
# answering COOKIE challenges (the engine does), withholding every IKE_AUTH request.
FLOOD = r"""
import os, select, socket, sys, time
sys.path.insert(0, sys.argv[1])
from ikev2.manager import IkeManager
from tests.engine.harness import child, psk_policy
me, gw, secs, rate = sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
pol = psk_policy("gw", "flooder.example.org", "gw.example.org", me, gw,
                 [child("net", "10.9.0.0/24", "10.1.0.0/24")], psk=b"flooder-does-not-know-it")
m = IkeManager([pol], os.urandom)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((me, 500))
s.setblocking(False)
start = time.monotonic()
end, nxt = start + secs, start
inits = withheld = cookies = received = 0
while time.monotonic() < end:
    now = time.monotonic()
    if now >= nxt:
        m.initiate("gw", now - start)
        inits += 1
        nxt += 1.0 / rate
    r, _, _ = select.select([s], [], [], 0.005)
    for _ in range(64):
        try:
            data, src = s.recvfrom(65535)
        except BlockingIOError:
            break
        received += 1
        cookies += len(data) < 80 and b"\x40\x06" in data[28:40]  # COOKIE notify type 16390
        m.receive(data, (me, 500), src, time.monotonic() - start)
    m.tick(time.monotonic() - start)
    for data, _src, dst in m.pop_datagrams():
        if data[18] == 35:  # IKE_AUTH: never sent
            withheld += 1
            continue
        s.sendto(data, dst)
    m.pop_events()
print(inits, cookies, withheld, received)
"""


def test_address_answering_cookies_cannot_stop_a_second_client(e2e):
    grp = e2e.grp
    gw_ns, flood_ns, client_ns = grp.add("gw"), grp.add("flood"), grp.add("cl")
    grp.veth(gw_ns, "wan0", flood_ns, "wan0", a_addrs=[f"{GW_A}/24"], b_addrs=[f"{FLOODER}/24"])
    grp.veth(gw_ns, "wan1", client_ns, "wan0", a_addrs=[f"{GW_B}/24"], b_addrs=[f"{CLIENT}/24"])
    settings = {"dataplane": "none", "half_open_limit": 10, "cookie_threshold": 2,
                "half_open_per_address": 5, "new_sa_rate_per_address": 0}
    gw = e2e.gateway(gw_ns, "gw", [
        connection("client", GW_B, CLIENT, "gw.example.org", "client.example.org",
                   local_ts="10.1.0.0/24", remote_ts="10.2.0.0/24"),
        connection("flood", GW_A, FLOODER, "gw.example.org", "flooder.example.org",
                   local_ts="10.1.0.0/24", remote_ts="10.9.0.0/24"),
    ], [GW_A, GW_B], settings)
    client = e2e.gateway(client_ns, "client", [
        connection("gw", CLIENT, GW_B, "client.example.org", "gw.example.org",
                   local_ts="10.2.0.0/24", remote_ts="10.1.0.0/24")], [CLIENT], {"dataplane": "none"})

    flood = flood_ns.popen([tools.PYTHON, "-c", FLOOD, str(ROOT), FLOODER, GW_A, str(FLOOD_SECONDS),
                            str(FLOOD_RATE)], stdout=__import__("subprocess").PIPE, text=True)
    try:
        # Let the flooder reach its limit (10 half-open slots would be full within a second).
        wait_for(lambda: gw.control("stats")["ike"]["dropped"].get("per-address half-open limit reached"),
                 FLOOD_SECONDS, "the per-address limit to stop the flooder")
        during = gw.control("stats")["ike"]
        t0 = time.monotonic()
        client.up("gw")
        (sa,) = wait_for(lambda: client.ike_sas("gw"), 10, "the second client's IKE SA")
        took = time.monotonic() - t0
        assert flood.poll() is None, "the flood ended before the client connected: not under attack"
        out, _ = flood.communicate(timeout=FLOOD_SECONDS + 30)
    finally:
        if flood.poll() is None:
            flood.kill()
            flood.wait(5)
    inits, cookies, withheld, _received = map(int, out.split())
    stats = gw.control("stats")["ike"]
    # The flooder really attacked and really answered COOKIEs.
    assert inits >= FLOOD_SECONDS * FLOOD_RATE * 0.5 and cookies > 0 and withheld > 0, out
    assert stats["inits_admitted_with_cookie"] >= 1 and stats["cookies_sent"] >= 1, stats
    # It never held more than its 5 slots; the rest was dropped at the per-address limit.
    assert during["half_open"] <= 5, during
    assert stats["dropped"]["per-address half-open limit reached"] >= inits // 2, (stats, out)
    assert sa["state"] == "ESTABLISHED", sa
    assert took < 10
    assert not [line for line in gw.log_lines() if "Traceback" in str(line)]
