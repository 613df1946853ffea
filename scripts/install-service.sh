#!/bin/sh
# Install vpn-gw as a systemd service (docs/deploy.md): the code in a virtualenv at $PREFIX
# (default /opt/vpn-gw), a system user vpn-gw, /etc/vpn-gw (root:vpn-gw 0750), the unit in
# /etc/systemd/system. Does not enable or start it: `systemctl enable --now vpn-gw` when
# /etc/vpn-gw/gw.toml is ready (`vpn-gw check-config /etc/vpn-gw/gw.toml`). Re-run to upgrade.
set -eu
cd "$(dirname "$0")/.."
PREFIX=${PREFIX:-/opt/vpn-gw}
UNIT_DIR=${UNIT_DIR:-/etc/systemd/system}
[ "$(id -u)" = 0 ] || { echo "install-service: run as root" >&2; exit 1; }
PY=${PYTHON:-python3}
[ -x "$PREFIX/bin/python" ] || "$PY" -m venv "$PREFIX"
"$PREFIX/bin/pip" install -q --disable-pip-version-check -U pip
"$PREFIX/bin/pip" install -q --disable-pip-version-check --upgrade .
getent group vpn-gw >/dev/null || groupadd --system vpn-gw
getent passwd vpn-gw >/dev/null || useradd --system --gid vpn-gw --home-dir /var/lib/vpn-gw \
  --no-create-home --shell /usr/sbin/nologin vpn-gw
install -d -m 0750 -o root -g vpn-gw /etc/vpn-gw
install -d -m 0700 -o vpn-gw -g vpn-gw /var/lib/vpn-gw
sed "s#/opt/vpn-gw/bin/vpn-gw#$PREFIX/bin/vpn-gw#g" packaging/systemd/vpn-gw.service > "$UNIT_DIR/vpn-gw.service"
chmod 0644 "$UNIT_DIR/vpn-gw.service"
ln -sf "$PREFIX/bin/vpn-gw" /usr/local/bin/vpn-gw
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemd-analyze verify "$UNIT_DIR/vpn-gw.service"
fi
echo "install-service: $PREFIX, $UNIT_DIR/vpn-gw.service; next: put gw.toml in /etc/vpn-gw" \
     "(root:vpn-gw 0640; secrets owned by vpn-gw, 0600), then systemctl enable --now vpn-gw"
