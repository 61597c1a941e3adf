#!/bin/sh
# Install the Debian packages the development setup needs, if they are missing, and nothing else: a demo or a
# test run must not change the machine beyond what it needs. Used by `make run` / `make test` on a fresh
# Debian bookworm machine; asks for sudo when not root.
#   scripts/ensure-system-deps.sh dev        python3-venv (the virtual environment of `make run`/`make test`)
#   scripts/ensure-system-deps.sh bookworm   Debian's own python3-* packages, for `make test-bookworm`
#   scripts/ensure-system-deps.sh lint-bookworm   Debian's mypy and those packages, for `make lint-bookworm`
#   scripts/ensure-system-deps.sh packages NAME...   these packages (scripts/ensure-odoo-deps.sh); a name this
#                                            Debian does not have is skipped with a note
#
# Why the dev environment does not build systemd-python (issue #14 item 8, #17 item 9): building it from
# source needs gcc, python3-dev, pkg-config and libsystemd-dev, and libsystemd-dev must be the exact version of
# the installed libsystemd0, so installing it upgraded the machine's systemd (252.38 -> 252.39 and six more
# packages) just to run a demo. The bridge does not need it: bridge/service/sdnotify.py sends sd_notify
# datagrams itself when python3-systemd is absent, and bridge/service/journald.py writes plain lines outside
# systemd. The packaged bridge uses Debian's python3-systemd, and `make test-bookworm` tests that path.
#
# Nothing is upgraded: apt-get is first asked what it would do (-s), and when that would upgrade or remove an
# installed package the script stops and names the packages instead of installing them.
set -eu
mode=${1:-dev}
optional=0
case "$mode" in
  packages) shift; packages="$*"; optional=1 ;;
  dev) packages="python3-venv" ;;
  bookworm) packages="python3-twisted python3-autobahn python3-serial python3-stripe python3-cryptography
                      python3-openssl python3-service-identity python3-systemd python3-pytest python3-hypothesis
                      python3-prometheus-client prometheus python3-websocket" ;;
  lint-bookworm) packages="python3-mypy python3-twisted python3-autobahn python3-serial python3-stripe
                      python3-cryptography python3-openssl python3-service-identity python3-systemd
                      python3-prometheus-client" ;;
  *) echo "usage: $0 dev|bookworm|lint-bookworm|packages NAME..." >&2; exit 2 ;;
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
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
if [ "$optional" -eq 1 ]; then
  known=""
  for p in $missing; do
    if apt-cache show "$p" >/dev/null 2>&1; then known="$known $p"; else echo "note: Debian has no $p; skipped" >&2; fi
  done
  missing=$known
  [ -z "$missing" ] && exit 0
fi
# What apt would do: "Inst NAME [OLD-VERSION] (NEW ...)" upgrades an installed package, "Remv" removes one.
changes=$(apt-get install -s --no-install-recommends --no-upgrade $missing | grep -E '^(Inst [^ ]+ \[|Remv )' || true)
if [ -n "$changes" ]; then
  echo "Installing$missing would also upgrade or remove packages already on this machine:" >&2
  echo "$changes" | sed 's/^/  /' >&2
  echo "Not doing that for a development setup. Install them yourself if you agree (apt-get install$missing)." >&2
  exit 1
fi
echo "Installing Debian packages:$missing"
$SUDO apt-get install -y -qq --no-install-recommends --no-upgrade $missing
