#!/bin/sh
# Install the Debian packages the development setup needs, if they are missing.
# Used by `make run` / `make test` on a fresh Debian bookworm machine; asks for sudo when not root.
#   scripts/ensure-system-deps.sh dev        python3-venv, and what systemd-python builds with
#   scripts/ensure-system-deps.sh bookworm   Debian's own python3-* packages, for `make test-bookworm`
set -eu
mode=${1:-dev}
case "$mode" in
  dev) packages="python3-venv python3-dev gcc pkg-config libsystemd-dev" ;;
  bookworm) packages="python3-twisted python3-autobahn python3-serial python3-stripe python3-cryptography
                      python3-openssl python3-service-identity python3-systemd python3-pytest python3-hypothesis
                      python3-prometheus-client prometheus python3-websocket" ;;
  *) echo "usage: $0 dev|bookworm" >&2; exit 2 ;;
esac
missing=""
for p in $packages; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
    echo "These Debian packages are needed:$missing. Install them as root (apt-get install$missing)." >&2
    exit 1
  fi
else SUDO=""; fi
echo "Installing Debian packages:$missing"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends $missing
