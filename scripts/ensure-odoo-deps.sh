#!/bin/sh
# Install what `make test-odoo` needs from Debian, if it is missing: the python3-* packages that each Odoo
# tree's own debian/control lists (Odoo runs on /usr/bin/python3 with Debian's packages, never a venv),
# PostgreSQL 15, Chromium and python3-websocket for Odoo's browser tests, and the bridge's own Debian packages
# (the tests start the real bridge daemon with /usr/bin/python3).
#   scripts/ensure-odoo-deps.sh ODOO_SRC [ODOO_SRC ...]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
"$here/ensure-system-deps.sh" bookworm
packages="postgresql-15 chromium python3-websocket python3-magic"
for src in "$@"; do
  [ -f "$src/debian/control" ] || continue
  # The Depends: field of Odoo's control file, python3-* names only.
  packages="$packages $(sed -n '/^Depends:/,/^[A-Z][A-Za-z-]*:/p' "$src/debian/control" | grep -o 'python3-[a-z0-9.-]*' | tr '\n' ' ')"
done
missing=""
for p in $(echo "$packages" | tr ' ' '\n' | sort -u); do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" && continue
  # A name bookworm does not ship (python3-lxml-html-clean: bookworm's lxml still has lxml.html.clean) is skipped.
  apt-cache show "$p" >/dev/null 2>&1 || { echo "note: Debian bookworm has no $p; skipped" >&2; continue; }
  missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
    echo "These Debian packages are needed:$missing. Install them as root (apt-get install$missing)." >&2
    exit 1
  fi
else SUDO=""; fi
echo "Installing Debian packages for the Odoo tests:$missing"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends $missing
