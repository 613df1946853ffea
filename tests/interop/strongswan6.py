"""strongSwan 6.0.6 (ML-KEM, RFC 9370/9242) as interop peer: install check and Charon settings.

The build lives in ``../shared/peers`` relative to the repository (see
../shared/peers/strongswan6.md) and must be unpacked at ``/opt/strongswan6`` (its paths are
compiled in).  ``require_strongswan6()`` unpacks it there from the tarball when it is not
yet installed; tests skip, with the reason, only when ``../shared/peers`` itself is absent.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
PEERS_DIR = REPO.parent / "shared" / "peers"
TARBALL = PEERS_DIR / "strongswan-6-debian12-amd64.tar.xz"
PREFIX = Path("/opt/strongswan6")
CHARON6 = str(PREFIX / "libexec/ipsec/charon")
SWANCTL6 = str(PREFIX / "sbin/swanctl")

# strongswan6.md 4: sha3 BEFORE openssl (the ml plugin takes SHAKE from the first provider),
# kernel-libipsec before kernel-netlink.
PLUGINS6 = ("random nonce sha3 openssl ml pem pkcs1 pkcs8 x509 pubkey kdf kernel-libipsec "
            "kernel-netlink socket-default vici counters save-keys")


def require_strongswan6() -> None:
    """Skip when ../shared/peers is absent; otherwise make sure /opt/strongswan6 is there."""
    if not PEERS_DIR.is_dir():
        pytest.skip(f"strongSwan 6 peer not available: {PEERS_DIR} is absent")
    if not Path(CHARON6).exists():
        if not TARBALL.exists():
            pytest.fail(f"{PEERS_DIR} exists but has no {TARBALL.name}", pytrace=False)
        subprocess.run(["tar", "-C", "/opt", "-xJf", str(TARBALL)], check=True, timeout=120)
    out = subprocess.run([CHARON6, "--version"], capture_output=True, text=True, timeout=10)
    if "strongSwan 6" not in out.stdout + out.stderr:
        pytest.fail(f"{CHARON6} is not strongSwan 6: {out.stdout}{out.stderr}", pytrace=False)


def charon6_kwargs(**extra) -> dict:
    """Keyword arguments of ``strongswan.Charon`` for a charon-6 instance."""
    kw = {"charon_bin": CHARON6, "swanctl_bin": SWANCTL6, "plugins": PLUGINS6}
    kw.update(extra)
    return kw

# IKE at level 3 logs IntAuth and the AUTH octets (not keys); needed to diagnose RFC 9242.
LOG_LEVELS = {"default": 1, "ike": 3, "chd": 2, "mgr": 2, "cfg": 1, "knl": 1, "enc": 1, "net": 1}
