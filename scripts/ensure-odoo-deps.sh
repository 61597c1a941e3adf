#!/bin/sh
# Install what `make test-odoo` needs from Debian, if it is missing: the python3-* packages that each Odoo
# tree's own debian/control lists (Odoo runs on /usr/bin/python3 with Debian's packages, never a venv),
# PostgreSQL 15, Chromium and python3-websocket for Odoo's browser tests, and the bridge's own Debian packages
# (the tests start the real bridge daemon with /usr/bin/python3). A name bookworm does not ship
# (python3-lxml-html-clean: bookworm's lxml still has lxml.html.clean) is skipped.
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
exec "$here/ensure-system-deps.sh" packages $(echo "$packages" | tr ' ' '\n' | grep -vx 'python3-lxml-html-clean' | sort -u)
