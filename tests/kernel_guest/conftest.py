"""tests/kernel_guest/guest_tests/ run *inside* the QEMU guest (the runner sets
VPN_GW_IN_GUEST=1); on the host only tests/kernel_guest/test_*.py is collected, and it boots the
guest to run them."""
import os

collect_ignore_glob = [] if os.environ.get("VPN_GW_IN_GUEST") == "1" else ["guest_tests/*"]
