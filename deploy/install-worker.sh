#!/usr/bin/env bash
# Install the edgesplit worker as a systemd service on this device (run as root; idempotent).
#
#   sudo deploy/install-worker.sh --token token --ca pki/ca.pem \
#        --cert pki/pi1.pem --key pki/pi1.key [--venv /opt/edgesplit/venv] [--listen H:P] [--start]
#
# Creates the unprivileged system user "edgesplit", /etc/edgesplit (root:edgesplit, 0750) with
# the token, CA, certificate and key (0640), installs edgesplit-worker.service and enables it.
# Each file is copied only when it differs; running it again changes nothing. --dry-run prints
# what it would do. edgesplit itself must already be installed in the venv (docs/SETUP.md).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
UNIT_SRC="$HERE/systemd/edgesplit-worker.service"
UNIT_DST="/etc/systemd/system/edgesplit-worker.service"
CONF=/etc/edgesplit
USER_NAME=edgesplit
DEFAULT_VENV=/opt/edgesplit/venv
VENV=$DEFAULT_VENV
TOKEN="" CA="" CERT="" KEY="" LISTEN="" START=0 DRY=0

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
say() { echo "install-worker: ${DRY_TAG:-}$*"; }
run() { if [ "$DRY" = 1 ]; then say "would run: $*"; else "$@"; fi; }

while [ $# -gt 0 ]; do
  case "$1" in
    --token) TOKEN=$2; shift 2 ;;
    --ca) CA=$2; shift 2 ;;
    --cert) CERT=$2; shift 2 ;;
    --key) KEY=$2; shift 2 ;;
    --venv) VENV=$2; shift 2 ;;
    --listen) LISTEN=$2; shift 2 ;;
    --start) START=1; shift ;;
    --dry-run) DRY=1; DRY_TAG="(dry run) "; shift ;;
    -h|--help) usage 0 ;;
    *) echo "install-worker: unknown option $1" >&2; usage 2 >&2 ;;
  esac
done

[ -f "$UNIT_SRC" ] || { echo "install-worker: missing $UNIT_SRC" >&2; exit 2; }
if [ "$DRY" = 0 ] && [ "$(id -u)" != 0 ]; then
  echo "install-worker: run as root (sudo), or with --dry-run to see what it would do" >&2
  exit 2
fi
for f in "$TOKEN" "$CA" "$CERT" "$KEY"; do
  if [ -n "$f" ] && [ ! -r "$f" ]; then echo "install-worker: cannot read $f" >&2; exit 2; fi
done
if [ ! -x "$VENV/bin/edgesplit" ]; then
  say "warning: $VENV/bin/edgesplit not found; install edgesplit there first (docs/SETUP.md)"
fi

# 1. The service user: a system account with no login shell and no home.
if id -u "$USER_NAME" >/dev/null 2>&1; then
  say "user $USER_NAME exists"
else
  run useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
    --user-group "$USER_NAME"
  say "created system user $USER_NAME"
fi

# 2. The config folder, readable by the service's group only.
if [ -d "$CONF" ]; then say "$CONF exists"; else run mkdir -p "$CONF"; say "created $CONF"; fi
run chown "root:$USER_NAME" "$CONF"
run chmod 0750 "$CONF"

# install_file SRC DEST: copy (0640 root:edgesplit) only when the content differs.
install_file() {
  local src=$1 dst=$2
  if [ -z "$src" ]; then
    if [ -f "$dst" ]; then say "$dst kept"; else say "warning: $dst missing; pass it or copy it"; fi
    return
  fi
  if [ -f "$dst" ] && cmp -s "$src" "$dst"; then
    say "$dst unchanged"
  else
    run install -m 0640 -o root -g "$USER_NAME" "$src" "$dst"
    say "installed $dst"
  fi
}
install_file "$TOKEN" "$CONF/token"
install_file "$CA" "$CONF/ca.pem"
install_file "$CERT" "$CONF/worker.pem"
install_file "$KEY" "$CONF/worker.key"

if [ -n "$LISTEN" ]; then
  line="EDGESPLIT_LISTEN=$LISTEN"
  if [ -f "$CONF/worker.env" ] && grep -qxF "$line" "$CONF/worker.env"; then
    say "$CONF/worker.env unchanged"
  else
    if [ "$DRY" = 1 ]; then say "would set $line in $CONF/worker.env"; else
      touch "$CONF/worker.env"
      grep -v '^EDGESPLIT_LISTEN=' "$CONF/worker.env" > "$CONF/worker.env.tmp" || true
      echo "$line" >> "$CONF/worker.env.tmp"
      install -m 0640 -o root -g "$USER_NAME" "$CONF/worker.env.tmp" "$CONF/worker.env"
      rm -f "$CONF/worker.env.tmp"
    fi
    say "set $line in $CONF/worker.env"
  fi
fi

# 3. The unit, with the venv path filled in.
unit=$(sed "s#$DEFAULT_VENV/bin/edgesplit#$VENV/bin/edgesplit#" "$UNIT_SRC")
if [ -f "$UNIT_DST" ] && [ "$(cat "$UNIT_DST")" = "$unit" ]; then
  say "$UNIT_DST unchanged"
else
  if [ "$DRY" = 1 ]; then say "would write $UNIT_DST"; else printf '%s\n' "$unit" > "$UNIT_DST"; fi
  say "installed $UNIT_DST"
  run systemctl daemon-reload
fi
run systemctl enable edgesplit-worker.service
say "enabled edgesplit-worker (starts at boot)"
if [ "$START" = 1 ]; then
  run systemctl restart edgesplit-worker.service
  say "started edgesplit-worker; logs: journalctl -u edgesplit-worker -f"
else
  say "start it now with: sudo systemctl start edgesplit-worker"
fi
