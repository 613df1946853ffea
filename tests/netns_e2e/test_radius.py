"""The RADIUS client (vpn_gw.radius) against a real FreeRADIUS in its own namespace: EAP-MSCHAPv2
relayed with the right and the wrong password (our own EAP peer on the client side), Access-Accept
attributes, accounting records in FreeRADIUS's detail file, failover when the first server does not
answer, a wrong secret, and the Disconnect-Request listener driven by FreeRADIUS's radclient."""
from __future__ import annotations

import asyncio
import os
import subprocess

import pytest

from ikev2.eap import EapClient
from tests.freeradius import FreeRadius, run_in_netns
from tests.netns import NetnsGroup, require_root
from vpn_gw.radius import AcctSession, RadiusClient, RadiusServer, RadiusTimeout
from vpn_gw.radius.client import CAUSE_USER_REQUEST
from vpn_gw.radius.dae import DisconnectRequest, start_dae_listener

pytestmark = pytest.mark.netns

SECRET = "s3cret-radius"
USERS = """\
alice  Cleartext-Password := "alice-password"
       Framed-IP-Address = 10.99.0.77,
       Framed-IPv6-Prefix = "fd00:99::77/128",
       Class = "cls-alice"
bob    Cleartext-Password := "bob-password"
"""


@pytest.fixture
def radius(tmp_path):
    require_root()
    with NetnsGroup("rad") as grp:
        ns = grp.add("srv")
        with FreeRadius(ns, tmp_path / "fr", users=USERS, secret=SECRET) as fr:
            yield ns, fr


def _client(servers, **kw) -> RadiusClient:
    return RadiusClient(servers, nas_identifier="gw-test", **kw)


async def _authenticate(client: RadiusClient, user: str, password: str):
    """Our EAP peer (ikev2.eap.EapClient) talks EAP-MSCHAPv2 to FreeRADIUS through the relay."""
    peer = EapClient(user, password=password, allowed={"mschapv2"}, random_bytes=os.urandom)
    relay = client.eap_relay(called_station_id="192.0.2.1[4500]",
                             calling_station_id="198.51.100.7[4500]")
    msg = relay.start()
    last = None
    for _ in range(10):
        pstep = peer.process(msg)
        if pstep.done:
            return relay, pstep, last
        last = await relay.process(pstep.send)
        msg = last.send
        if last.done:
            pstep = peer.process(msg)
            return relay, pstep, last
    raise AssertionError("EAP conversation did not end in 10 rounds")


def test_eap_mschapv2_right_password(radius):
    ns, fr = radius

    async def main():
        client = _client([RadiusServer("127.0.0.1", SECRET.encode())])
        try:
            return await _authenticate(client, "alice", "alice-password")
        finally:
            client.close()

    relay, peer_step, gw_step = run_in_netns(ns.name, lambda: asyncio.run(main()))
    assert gw_step.done and gw_step.success, gw_step.reason
    assert peer_step.done and peer_step.success, peer_step.reason
    # the MSK the gateway got from MS-MPPE-Recv/Send-Key is the one the peer derived
    assert gw_step.msk is not None and len(gw_step.msk) == 64
    assert gw_step.msk == peer_step.msk
    a = relay.accept
    assert a.ip4 == "10.99.0.77" and a.ip6 == "fd00:99::77"
    assert a.classes == [b"cls-alice"]
    log = fr.log.read_text()
    assert "Login OK: [alice" in log


def test_eap_mschapv2_wrong_password(radius):
    ns, fr = radius

    async def main():
        client = _client([RadiusServer("127.0.0.1", SECRET.encode())])
        try:
            return await _authenticate(client, "bob", "not-bobs-password")
        finally:
            client.close()

    relay, peer_step, gw_step = run_in_netns(ns.name, lambda: asyncio.run(main()))
    assert gw_step.done and not gw_step.success
    assert gw_step.send[0] == 4  # EAP-Failure to the client
    assert "RADIUS rejected 'bob'" in gw_step.reason
    assert gw_step.msk is None and relay.accept is None
    assert not peer_step.success
    assert "Login incorrect" in fr.log.read_text()


def test_accounting_records_in_detail_file(radius):
    ns, fr = radius

    async def main():
        client = _client([RadiusServer("127.0.0.1", SECRET.encode())])
        s = AcctSession("5f3a-0001", "alice", started=1_800_000_000.0, addresses=["10.99.0.77"],
                        classes=[b"cls-alice"], called_station_id="192.0.2.1[4500]",
                        calling_station_id="198.51.100.7[4500]")
        try:
            await client.account(s, "Start", now=1_800_000_000.0)
            await client.account(s, "Interim-Update", octets_in=5_000_000_000, octets_out=1234,
                                 packets_in=10, packets_out=3, now=1_800_000_060.0)
            await client.account(s, "Stop", octets_in=5_000_001_000, octets_out=2345,
                                 packets_in=12, packets_out=4, cause=CAUSE_USER_REQUEST,
                                 now=1_800_000_090.0)
        finally:
            client.close()

    run_in_netns(ns.name, lambda: asyncio.run(main()))
    recs = fr.detail_records()
    assert [r["Acct-Status-Type"] for r in recs] == ["Start", "Interim-Update", "Stop"]
    for r in recs:
        assert r["Acct-Session-Id"] == "5f3a-0001"
        assert r["User-Name"] == "alice"
        assert r["NAS-Identifier"] == "gw-test"
        assert r["Framed-IP-Address"] == "10.99.0.77"
        assert r["Called-Station-Id"] == "192.0.2.1[4500]"
        assert r["Calling-Station-Id"] == "198.51.100.7[4500]"
        assert r["Class"] in ("0x636c732d616c696365", "cls-alice")
    interim, stop = recs[1], recs[2]
    assert interim["Acct-Input-Gigawords"] == "1"
    assert int(interim["Acct-Input-Octets"]) == 5_000_000_000 - 2**32
    assert interim["Acct-Session-Time"] == "60"
    assert stop["Acct-Session-Time"] == "90"
    assert stop["Acct-Terminate-Cause"] == "User-Request"
    assert stop["Acct-Output-Octets"] == "2345"


def test_failover_to_second_server(radius):
    ns, _fr = radius

    async def main():
        # 127.0.0.2 is local too, but nothing listens there
        client = _client([RadiusServer("127.0.0.2", SECRET.encode()),
                          RadiusServer("127.0.0.1", SECRET.encode())], timeout=0.3, retries=1)
        try:
            res = await _authenticate(client, "alice", "alice-password")
            return res, client.transport.current, client.transport.timeouts
        finally:
            client.close()

    (_relay, peer_step, gw_step), current, timeouts = run_in_netns(ns.name, lambda: asyncio.run(main()))
    assert gw_step.success and peer_step.success
    assert current == 1        # the second server answered and is now preferred
    assert timeouts == 2       # two tries to the first one, none after failing over


def test_wrong_secret_is_a_timeout(radius):
    ns, _fr = radius

    async def main():
        client = _client([RadiusServer("127.0.0.1", b"not-the-secret")], timeout=0.3, retries=1)
        try:
            await _authenticate(client, "alice", "alice-password")
        finally:
            client.close()

    with pytest.raises(RadiusTimeout, match="no answer from RADIUS server 127.0.0.1"):
        run_in_netns(ns.name, lambda: asyncio.run(main()))


def test_disconnect_request_from_radclient(radius, tmp_path):
    ns, _fr = radius
    ended: list[DisconnectRequest] = []

    def disconnect(req: DisconnectRequest) -> int:
        ended.append(req)
        return 1 if req.matches("alice", None, ["10.99.0.77"]) else 0

    async def main():
        dae = await start_dae_listener("127.0.0.1", 3799, {"127.0.0.1": SECRET.encode()}, disconnect)
        loop = asyncio.get_running_loop()
        try:
            outs = []
            for attrs in ('User-Name = "alice"', 'User-Name = "carol"'):
                p = await asyncio.create_subprocess_exec(
                    "radclient", "-x", "-r", "1", "-t", "3", "127.0.0.1:3799", "disconnect", SECRET,
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                out, _ = await asyncio.wait_for(p.communicate(attrs.encode() + b"\n"), 10)
                outs.append(out.decode())
            return outs, dae.dropped
        finally:
            dae.transport.close()
            del loop

    (ack, nak), dropped = run_in_netns(ns.name, lambda: asyncio.run(main()))
    assert "Disconnect-ACK" in ack, ack
    assert "Disconnect-NAK" in nak and "Session-Context-Not-Found" in nak, nak
    assert [r.user_name for r in ended] == ["alice", "carol"]
    assert dropped == 0
