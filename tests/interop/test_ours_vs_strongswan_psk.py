"""Our gateway against strongSwan with pre-shared keys: both roles, three suites, data, delete,
every AEAD at packet sizes around our short-packet thresholds.

Our gateway (vpn-gw run, userspace ESP) in ``topo.site``, strongSwan (charon, kernel-libipsec)
in ``topo.gw``; pings between the protected hosts can only pass through the tunnel.
Checks that what strongSwan reports (list-sas over VICI) and our ``status --json`` describe the
same SAs: IKE SPIs, crossed Child SPIs, algorithms (strongSwan's names vs ours), selectors.
"""
from __future__ import annotations

import secrets
import time

import ours_helpers as H
import pytest

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]


def _psk() -> str:
    return "test-only-" + secrets.token_hex(12)


def _env(workdir, prefix: str, ike: str, esp: str, psk: str, **kw):
    return H.ours_vs_strongswan(
        workdir, prefix=prefix,
        sw_config=lambda t: H.sw_conf(t, ike=ike, esp=esp, psk=psk),
        ours_connections=lambda t: [H.ours_conn(t, ike=ike, esp=esp, psk=psk)], **kw)


@pytest.mark.parametrize("role", ["initiator", "responder"])
@pytest.mark.parametrize("ike,esp", H.SUITES, ids=[s[0] for s in H.SUITES])
def test_psk_suite_role_and_ping(sswan_workdir, ike, esp, role):
    """Establish (we initiate with `vpn-gw up`, or strongSwan with `swanctl --initiate`),
    compare both views, ping both ways through our userspace ESP <-> libipsec ESP."""
    t0 = time.monotonic()
    psk = _psk()
    with _env(sswan_workdir, "oswp", ike, esp, psk) as env:
        assert env.no_ping(), "protected hosts reach each other without a tunnel"
        if role == "initiator":
            env.ours.up(H.CONN)
        else:
            env.sw.initiate(child=H.CHILD, timeout=15)
        osa, oc, ssa, sc = env.wait_both_child(timeout=10)
        H.assert_same_sa(osa, oc, ssa, sc, env.topo, we_initiated=role == "initiator", ike=ike, esp=esp)
        assert H.counters(oc) == (0, 0)

        env.ping_both_ways(count=3)

        osa, oc, ssa, sc = env.wait_both_child(timeout=5)
        pin, pout = H.counters(oc)
        # wait_ping may have sent extra probes; at least the 2x3 counted pings went each way
        assert pin >= 6 and pout >= 6, f"our counters did not move: in {pin}, out {pout}"
        assert int(oc["bytes_in"]) > 0 and int(oc["bytes_out"]) > 0
        # strongSwan counted the same ESP packets the other way round (its counters may lag)
        assert int(sc["packets-in"]) >= 6 and int(sc["packets-out"]) >= 6
        assert not oc.get("drops"), f"our data plane dropped packets: {oc['drops']}"
    assert time.monotonic() - t0 < 40


# ICMP payload sizes around the short-packet thresholds of esp/_aead.c (ciphertext up to 640
# bytes through esp/chapoly.c, up to 1024 through esp/aesgcm.c, libcrypto beyond): an IP packet
# of size + 28 bytes, ESP plaintext 2-5 bytes more
PING_SIZES = (0, 56, 200, 450, 600, 610, 611, 700, 990, 994, 995, 1010, 1300)


@pytest.mark.parametrize("esp", ["aes128gcm16", "aes256gcm16", "chacha20poly1305"])
def test_every_packet_size_with_each_aead(sswan_workdir, esp):
    """Our ESP (short packets through our own AES-GCM and ChaCha20-Poly1305, long ones through
    libcrypto) against strongSwan's: a ping of each size around both thresholds, both ways, each
    answered; nothing dropped on either side."""
    ike = H.SUITES[0][0]
    with _env(sswan_workdir, "oswz", ike, esp, _psk()) as env:
        env.ours.up(H.CONN)
        osa, oc, ssa, sc = env.wait_both_child(timeout=10)
        H.assert_same_sa(osa, oc, ssa, sc, env.topo, we_initiated=True, ike=ike, esp=esp)
        env.ping_both_ways(count=1)
        t = env.topo
        for size in PING_SIZES:
            assert t.host_a.ping(t.host_b_ip, size=size, wait=2.0), f"{esp}: {size}-byte ping a -> b"
            assert t.host_b.ping(t.host_a_ip, size=size, wait=2.0), f"{esp}: {size}-byte ping b -> a"
        osa, oc, ssa, sc = env.wait_both_child(timeout=5)
        pin, pout = H.counters(oc)
        assert pin >= 2 * len(PING_SIZES) and pout >= 2 * len(PING_SIZES)
        assert not oc.get("drops"), f"our data plane dropped packets: {oc['drops']}"


@pytest.mark.parametrize("esp", ["aes256gcm16", "chacha20poly1305"])
def test_bursts_of_small_packets_both_ways(sswan_workdir, esp):
    """Bursts of 128 small UDP datagrams (iperf3 -u -l 160 -b 20M/128) each way: our gateway
    seals and opens them in runs (ChaCha20-Poly1305 four at a time: one keystream pass and one
    Poly1305 pass per four packets), strongSwan opens and seals them one by one. Each direction
    delivers more than 99 %, and our side refuses nothing."""
    from tests.netns_e2e import tools
    ike = H.SUITES[0][0]
    with _env(sswan_workdir, "oswb", ike, esp, _psk()) as env:
        env.ours.up(H.CONN)
        env.wait_both_child(timeout=10)
        env.ping_both_ways(count=1)
        t = env.topo
        for extra in ([], ["-R"]):  # host_a -> host_b: we seal; -R: strongSwan seals, we open
            res = tools.iperf3(t.host_a, t.host_b, t.host_b_ip, seconds=2,
                               extra=["-u", "-l", "160", "-b", "20M/128", *extra])
            summary = res["end"]["sum"]
            assert summary["packets"] > 20_000, (esp, extra, summary)
            assert summary["lost_packets"] <= summary["packets"] // 100, (esp, extra, summary)
        osa, oc, ssa, sc = env.wait_both_child(timeout=5)
        pin, pout = H.counters(oc)
        assert pin > 20_000 and pout > 20_000, (pin, pout)
        assert not oc.get("drops"), f"our data plane dropped packets: {oc['drops']}"


def test_delete_by_strongswan(sswan_workdir):
    """`swanctl --terminate --ike`: strongSwan sends DELETE, our status becomes empty,
    our routes/SAs are gone (no ping)."""
    ike, esp = H.SUITES[0]
    t0 = time.monotonic()
    with _env(sswan_workdir, "oswd", ike, esp, _psk()) as env:
        env.ours.up(H.CONN)
        env.wait_both_child(timeout=10)
        env.ping_both_ways(count=1)
        env.sw.terminate(ike=H.CONN, timeout=10)
        env.sw.wait_no_sas(timeout=5)
        env.wait_ours_empty(timeout=5)
        assert env.no_ping()
        deleted = [r for r in env.ours.log_lines() if r.get("event") == "IKE_SA deleted by peer"]
        assert deleted, "our log does not show the peer's DELETE"
    assert time.monotonic() - t0 < 40


def test_delete_by_ours(sswan_workdir):
    """`vpn-gw down`: we send DELETE, strongSwan's list-sas becomes empty."""
    ike, esp = H.SUITES[1]
    t0 = time.monotonic()
    with _env(sswan_workdir, "oswe", ike, esp, _psk()) as env:
        env.sw.initiate(child=H.CHILD, timeout=15)  # strongSwan initiated, we delete
        env.wait_both_child(timeout=10)
        env.ping_both_ways(count=1)
        env.ours.down(H.CONN)
        env.sw.wait_no_sas(timeout=5)
        env.wait_ours_empty(timeout=5)
        assert env.no_ping()
        text = env.sw.log_text()
        assert "received DELETE for IKE_SA" in text, "strongSwan did not log our DELETE"
    assert time.monotonic() - t0 < 40
