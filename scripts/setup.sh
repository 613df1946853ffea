#!/usr/bin/env bash
# Installs everything the gateway, its tests and its demo need on Debian 12 (run as root):
# Debian packages (strongSwan as interop peer, iproute2/nftables/tcpdump for the netns tests,
# headers for netfilterqueue, Knot DNS + dig for the ddns tests) and a virtualenv in .venv
# with the project in editable mode. The strongSwan and Knot services those packages ship are
# disabled (and never started by the install): scripts/peer-services.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
APT_PKGS=(
  iproute2 nftables iptables tcpdump iputils-ping iperf3 procps ethtool
  strongswan-charon strongswan-swanctl strongswan-pki libstrongswan-standard-plugins
  libcharon-extra-plugins libcharon-extauth-plugins
  libnetfilter-queue-dev build-essential python3-dev libssl-dev
  knot dnsutils
  xz-utils libcurl4 libssl3 libsystemd0   # strongSwan 6 peer from ../shared/peers (tests/interop/strongswan6.py)
  freeradius freeradius-utils postgresql
  qemu-system-x86 busybox-static kmod linux-libc-dev
)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  apt-get update -q
  ./scripts/peer-services.sh deny-start         # the install must not start charon or knotd
  trap './scripts/peer-services.sh allow-start' EXIT
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  ./scripts/peer-services.sh allow-start
  trap - EXIT
fi
# strongSwan's and Knot's own services stay disabled: the tests start charon/knotd themselves
./scripts/peer-services.sh disable
# FreeRADIUS and PostgreSQL are test peers, started by the tests with their own configuration:
# their Debian services must not run (they would hold the ports and use stale config).
for svc in freeradius postgresql; do
  if command -v systemctl >/dev/null && systemctl is-enabled "$svc" >/dev/null 2>&1; then
    systemctl disable --now "$svc" >/dev/null 2>&1 || true
  fi
  [ -x "/etc/init.d/$svc" ] && "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
done
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -U pip
.venv/bin/pip install -q --disable-pip-version-check -e ".[test,fuzz,nfqueue,fleet]"
# Bytecode now, as an installed package has it: with PYTHONDONTWRITEBYTECODE set (as in some CI
# and sandbox environments) every daemon start would otherwise compile our ~130 modules again,
# ~0.15 s of CPU on a restarting gateway's way to its first tunnel (docs/architecture.md).
.venv/bin/python -m compileall -q ikev2 esp vpn_gw >/dev/null
echo "setup: ok ($(.venv/bin/python --version))"
