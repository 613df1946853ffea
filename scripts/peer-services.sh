#!/bin/sh
# The Debian packages of the test peers (strongSwan, Knot DNS) come with services that would
# take UDP 500/4500 and port 53 on a real host. The tests start charon and knotd themselves, in
# their own namespaces; these services must never run. Used by scripts/setup.sh:
#
#   peer-services.sh deny-start   before apt-get install: a policy-rc.d (invoke-rc.d's hook)
#                                 forbidding the install to start them (only if none exists)
#   peer-services.sh allow-start  after: remove that policy-rc.d again (only ours)
#   peer-services.sh disable      disable the units (systemd running: also stop them; without
#                                 systemd: remove the enablement symlinks offline) and the SysV
#                                 links; never stops processes outside systemd (the tests' charons)
#
# ROOT=DIR works on another root file system (the tests use a scratch directory).
set -eu
ROOT=${ROOT:-/}
UNITS="strongswan-starter.service strongswan.service knot.service"
SYSV="ipsec knot"
POLICY="${ROOT%/}/usr/sbin/policy-rc.d"
MARK="# vpn-gw setup: deny starting the test peers' services"

case "${1:-}" in
deny-start)
  if [ ! -e "$POLICY" ]; then
    mkdir -p "$(dirname "$POLICY")"
    cat > "$POLICY" <<EOS
#!/bin/sh
$MARK (scripts/peer-services.sh)
case "\$1" in
  strongswan*|ipsec|knot*) exit 101 ;;   # 101: action forbidden by policy
esac
exit 0
EOS
    chmod 0755 "$POLICY"
  fi ;;
allow-start)
  if [ -f "$POLICY" ] && grep -qF "$MARK" "$POLICY"; then rm -f "$POLICY"; fi ;;
disable)
  if command -v systemctl >/dev/null 2>&1; then
    for u in $UNITS; do
      if [ "$ROOT" = / ] && [ -d /run/systemd/system ]; then
        if systemctl cat "$u" >/dev/null 2>&1; then
          systemctl disable --now "$u" >/dev/null 2>&1 && echo "setup: disabled and stopped $u"
        fi
      elif [ -e "${ROOT%/}/lib/systemd/system/$u" ] || [ -e "${ROOT%/}/usr/lib/systemd/system/$u" ]; then
        systemctl --root="$ROOT" disable "$u" >/dev/null 2>&1 && echo "setup: disabled $u"
      fi
    done
  fi
  if [ "$ROOT" = / ] && command -v update-rc.d >/dev/null 2>&1; then
    for s in $SYSV; do
      [ -x "/etc/init.d/$s" ] && update-rc.d "$s" disable >/dev/null 2>&1 || true
    done
  fi ;;
*)
  echo "usage: $0 deny-start|allow-start|disable" >&2; exit 2 ;;
esac
