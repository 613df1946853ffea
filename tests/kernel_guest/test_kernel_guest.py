"""Boot Debian's 6.1 kernel in QEMU (tests/kernel_guest/runner.py) and run the kernel-ESP tests
(tests/kernel_guest/guest_tests/) there: this machine's kernel has no ESP, so this is where the
XFRM backend moves real packets (policy-based and route-based, ESP and ESP-in-UDP, rekey, our
daemon to our daemon over IKE).

Never skipped: if the guest cannot start (QEMU, busybox-static, kmod or the kernel package
missing, no root), the test fails and says what is missing. Bounded to ~3 minutes.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from tests.kernel_guest.runner import GuestError, run_guest

pytestmark = pytest.mark.netns

GUEST_TIMEOUT = 330.0
EXPECTED = {
    "test_policy_based_aes_gcm", "test_policy_based_rekey_without_loss", "test_leftovers_removed_others_untouched",
    "test_route_based_espinudp_red_side_fragmentation", "test_expire_and_acquire_events",
    "test_ours_to_ours_ike_policy_and_route_based", "test_ours_rekey_under_load_and_mobike_migrate",
    "test_ours_address_adoption_migrate",
    # test_guest_hub.py
    "test_hub_three_branches_identical_selectors_own_interfaces",
    "test_strongswan_kernel_netlink_policy_and_route_based",
    # test_guest_nfqueue.py
    "test_policy_based_red_side_fragmentation_nfqueue", "test_policy_based_ipv6_packet_too_big_from_kernel",
}


@pytest.mark.timeout(GUEST_TIMEOUT + 20)
def test_kernel_esp_in_guest(tmp_path):
    cmd = (".venv/bin/python -m pytest -p no:cacheprovider -q -rfE --durations=5 "
           "--junitxml=/results/junit.xml tests/kernel_guest/guest_tests")
    try:
        res = run_guest(cmd, timeout=GUEST_TIMEOUT, results_dir=tmp_path / "guest")
    except GuestError as e:
        pytest.fail(f"the kernel guest cannot start: {e}", pytrace=False)
    junit = res.results_dir / "junit.xml"
    if not junit.exists():
        pytest.fail(f"the guest produced no test report\n{res.describe()}", pytrace=False)
    results = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        skipped = case.find("skipped")
        results[case.get("name")] = ("failed", (bad.get("message") or "")[:500]) if bad is not None else \
            ("skipped", skipped.get("message")) if skipped is not None else ("passed", "")
    problems = {n: r for n, r in results.items() if r[0] != "passed"}
    missing = EXPECTED - set(results)
    assert not problems and not missing and res.rc == 0, (
        f"guest tests: {problems or ''} {('missing: ' + str(sorted(missing))) if missing else ''}\n{res.describe()}")
    facts = json.loads((res.results_dir / "facts.json").read_text())
    # Spot checks on what the guest read back from the kernel.
    pb = facts["policy_based"]
    assert pb["aead"] == "rfc4106(gcm(aes))" and pb["counters_a"]["packets_out"] >= 3
    assert pb["counters_b"]["packets_in"] >= 3 and pb["states_a"] == 2
    assert " 0% packet loss" in facts["rekey"]["ping"]
    rb = facts["route_based"]
    assert rb["mtu"] == rb["want_mtu"] and rb["gw_b_reasm"] == 0 and rb["host_b_reasm"] >= 2
    nfq = facts["nfqueue"]  # policy-based red-side fragmentation: no ESP packet was fragmented
    assert nfq["outer_fragments"] == 0 and nfq["esp_packets"] >= 20 and nfq["gw_b_reasm"] == 0
    assert nfq["udp_intact"] and f"mtu {nfq['mtu']}" in nfq["route_learnt"]
    assert facts["nfqueue_ipv6"]["outer_fragments"] == 0
    o2o = facts["ours_to_ours"]["children"]
    assert o2o["pol"]["packets_in"] >= 3 and o2o["rb"]["packets_in"] >= 3 and o2o["rb"]["encap"]
    rk = facts["rekey_under_load"]
    assert rk["sent"] > 1000 and rk["lost"] <= rk["in_flight"] and rk["old_spi"] != rk["new_spi"]
    for tag in ("mobike", "adoption"):
        mv = facts[f"{tag}_migrate"]["moves"]
        assert mv["a"] and mv["b"] and all(m[0] == "migrate" for side in mv.values() for m in side)
    sk = facts["strongswan_kernel"]
    assert sk["ours"]["pol"]["spi_in"] == sk["theirs"]["pol"]["spi-out"] and sk["mbit"]["rb"] > 1.0
    vr = facts["volume_rekey"]  # rekey_packets through the kernel's soft EXPIRE
    assert vr["soft_events"] >= 1 and vr["children"] and vr["old_spi"] not in vr["children"]
    landed = facts["hub_three_branches"]["landed"]
    assert all(landed[str(n)][str(n)] >= 5 and sum(landed[str(n)].values()) == landed[str(n)][str(n)]
               for n in (1, 2, 3)), landed
    print(f"kernel guest: {len(results)} tests passed in {res.elapsed:.0f}s (kernel {facts.get('kernel')})")
