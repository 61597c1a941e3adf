#!/usr/bin/env bash
# make test-odoo: the Odoo addons of odoo_addons/ under Odoo's own test runner, on Odoo 19.0 and 18.0.
#
# Odoo's source trees are not in this repository (no package registry ships Odoo). They are found at
#   ODOO_19_SRC (default /opt/odoo-src/19.0) and ODOO_18_SRC (default /opt/odoo-src/18.0);
# docs/odoo.md says how to get them. A version whose tree is absent is reported with one "SKIPPED:" line.
# Each run starts its own PostgreSQL 15 cluster (initdb in a temporary folder, Unix socket only, stopped at the
# end), installs the addons in a new database and runs their tests (unit tests, end to end with the real bridge
# daemon, and browser tours in headless Chromium). Odoo runs on /usr/bin/python3 with Debian's packages.
#
#   ODOO_VERSIONS="19.0 18.0"   which versions to run
#   ODOO_TEST_TAGS=...          Odoo --test-tags (default: every test of the addons)
#   ODOO_LOG_DIR=DIR            where each version's full log goes (default: a temporary folder, printed)
#   ODOO_E2E=0                  skip odoo_addons/e2e/odoo_e2e.py, which then serves odoo-bin itself on the same
#                               cluster (two databases, no dbfilter, Odoo killed mid-payment; a few minutes each)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
export ODOO_19_SRC=${ODOO_19_SRC:-/opt/odoo-src/19.0}
export ODOO_18_SRC=${ODOO_18_SRC:-/opt/odoo-src/18.0}
versions=${ODOO_VERSIONS:-"19.0 18.0"}

src_of() { case "$1" in 19.0) echo "$ODOO_19_SRC" ;; 18.0) echo "$ODOO_18_SRC" ;; *) echo "" ;; esac; }

present=""
for v in $versions; do
  src=$(src_of "$v")
  if [ -n "$src" ] && [ -f "$src/odoo-bin" ] && [ -f "$src/odoo/addons/base/data/base_data.sql" ]; then
    present="$present $v"
  else
    echo "SKIPPED: no Odoo $v source at ${src:-?} (set ODOO_${v%%.*}_SRC; docs/odoo.md says how to get it)"
  fi
done
[ -z "$present" ] && exit 0

addons=$(cd "$repo/odoo_addons" && for d in */; do [ -f "$d/__manifest__.py" ] && printf '%s,' "${d%/}"; done)
addons=${addons%,}
if [ -z "$addons" ]; then echo "no addon in odoo_addons/" >&2; exit 1; fi
tags=${ODOO_TEST_TAGS:-$(echo "$addons" | sed 's/\([^,]*\)/\/\1/g')}

srcs=""; for v in $present; do srcs="$srcs $(src_of "$v")"; done
"$repo/scripts/ensure-odoo-deps.sh" $srcs

work=$(mktemp -d /tmp/terminal-bridge-odoo.XXXXXX)
log_dir=${ODOO_LOG_DIR:-$work/logs}
mkdir -p "$log_dir"
pgbin=/usr/lib/postgresql/15/bin
pgdata=$work/pg/data
pgsock=$work/pg/socket
mkdir -p "$pgdata" "$pgsock"
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
  # initdb and postgres refuse to run as root: the cluster belongs to Debian's postgres account.
  chown -R postgres: "$work/pg"
  chmod 755 "$work"
  as_pg=(runuser -u postgres --)
fi
cleanup() {
  "${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgdata" -m immediate stop >/dev/null 2>&1 || true
  if [ -z "${ODOO_LOG_DIR:-}" ] && [ "${ODOO_KEEP:-0}" != 1 ]; then rm -rf "$work"; fi
}
trap cleanup EXIT
"${as_pg[@]}" "$pgbin/initdb" -D "$pgdata" -U odoo --auth=trust -E UTF8 --locale=C.UTF-8 >"$log_dir/initdb.log" 2>&1 ||
  { cat "$log_dir/initdb.log"; exit 1; }
"${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgdata" -l "$work/pg/postgres.log" -w \
  -o "-k $pgsock -c listen_addresses='' -c fsync=off -c synchronous_commit=off -c full_page_writes=off" start >/dev/null

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

status=0
summary=()
# The end-to-end script that serves odoo-bin (what Odoo's runner cannot do); its last line is its summary.
run_e2e() {
  local v=$1 src=$2 e2e_rc=0 e2e_log="$log_dir/odoo-e2e-$1.log"
  [ "${ODOO_E2E:-1}" = 0 ] && return 0
  TERMINAL_BRIDGE_SRC="$repo" PYTHONPATH= /usr/bin/python3 "$repo/odoo_addons/e2e/odoo_e2e.py" \
    --odoo-src "$src" --version "$v" --db-host "$pgsock" --db-user odoo --work "$work/e2e-$v" 2>&1 |
    tee "$e2e_log" || e2e_rc=$?
  local line
  line=$(grep -E "^odoo-e2e-$v: [0-9]+ passed, [0-9]+ failed$" "$e2e_log" | tail -n1 || true)
  [ -n "$line" ] || line="odoo-e2e-$v: 0 passed, 1 failed"
  if [ "$e2e_rc" -ne 0 ]; then status=1; fi
  summary+=("$line")
}
# One run of Odoo's test runner: a new database, the addons installed, the tests of $3 run.  Sets rc and stats.
odoo_run() {
  local v=$1 db=$2 run_tags=$3 run_log=$4 src
  src=$(src_of "$v")
  rc=0
  # The tests find the bridge's own source (to start the real daemon) through TERMINAL_BRIDGE_SRC.
  TERMINAL_BRIDGE_SRC="$repo" PYTHONPATH= /usr/bin/python3 "$src/odoo-bin" \
    --addons-path="$src/addons,$src/odoo/addons,$repo/odoo_addons" \
    --data-dir="$work/data-$v" -d "$db" --db_host="$pgsock" --db_user=odoo \
    --http-interface=127.0.0.1 --http-port="$(free_port)" --gevent-port="$(free_port)" --workers=0 \
    --max-cron-threads=0 -i "$addons" --test-enable --test-tags="$run_tags" --stop-after-init \
    --log-level=test --screenshots="$log_dir/screenshots-$v" >"$run_log" 2>&1 || rc=$?
  stats=$(grep -Eo '[0-9]+ failed, [0-9]+ error\(s\) of [0-9]+ tests' "$run_log" | tail -n1 || true)
}
count() {  # count FIELD STATS: failed, errors or total of "N failed, M error(s) of K tests"
  case "$1" in
    failed) sed -E 's/^([0-9]+) failed.*/\1/' <<<"$2" ;;
    errors) sed -E 's/.* ([0-9]+) error.*/\1/' <<<"$2" ;;
    total) sed -E 's/.* of ([0-9]+) tests/\1/' <<<"$2" ;;
  esac
}
for v in $present; do
  src=$(src_of "$v")
  db="tb_test_${v%%.*}_$$"
  log="$log_dir/odoo-$v.log"
  echo "== Odoo $v: installing $addons in $db and running $tags (log: $log)"
  odoo_run "$v" "$db" "$tags" "$log"
  grep -E ' (ERROR|CRITICAL) |FAIL: |ERROR: ' "$log" | head -n 60 || true
  if [ -z "$stats" ]; then
    echo "Odoo $v: no test statistics in the log (rc $rc); its last lines:"; tail -n 40 "$log"
    status=1; summary+=("odoo-$v: 0 passed, 1 failed"); run_e2e "$v" "$src"; continue
  fi
  failed=$(count failed "$stats"); errors=$(count errors "$stats"); total=$(count total "$stats")
  bad=$((failed + errors)); passed=$((total - bad))
  if [ "$total" -eq 0 ]; then echo "Odoo $v ran no test"; bad=1; fi
  if [ "$rc" -ne 0 ] || [ "$bad" -ne 0 ]; then
    # What failed, with its traceback (the log itself goes away with the temporary folder unless ODOO_LOG_DIR).
    awk '/ (ERROR|FAIL): Test/ {n = 80} n-- > 0' "$log" | head -n 400
    # The failed tests, as test tags: "... odoo.addons.ADDON.tests.FILE: ERROR: Class.method" -> */ADDON:Class.method
    # ('*': whatever the test's own tags, so that a test outside 'standard', such as the bench, runs again too).
    again=$(grep -Eo 'odoo\.addons\.[a-z_]+\.tests\.[a-z_0-9]+: (ERROR|FAIL): Test[A-Za-z0-9_]+\.test_[A-Za-z0-9_]+' \
      "$log" | sed -E 's/^odoo\.addons\.([a-z_]+)\.tests\.[a-z_0-9]+: (ERROR|FAIL): /*\/\1:/' | sort -u | paste -sd, -)
    if [ "$bad" -gt 0 ] && [ "$bad" -le 3 ] && [ -n "$again" ] && [ "$(tr ',' '\n' <<<"$again" | wc -l)" -eq "$bad" ]; then
      # A browser tour on a loaded machine fails now and then; a test that fails again is a failure. Every flake
      # is printed (FLAKY:) so that it gets looked into rather than hidden.
      echo "Odoo $v: running the failed test(s) once more, alone: $again"
      odoo_run "$v" "${db}_again" "$again" "$log_dir/odoo-$v-again.log"
      if [ -n "$stats" ] && [ "$rc" -eq 0 ] && [ "$(count total "$stats")" -eq "$bad" ] \
          && [ "$(count failed "$stats")" -eq 0 ] && [ "$(count errors "$stats")" -eq 0 ]; then
        echo "FLAKY: Odoo $v: $again failed once, then passed alone (its first traceback is above)"
        passed=$total; bad=0; rc=0
      else
        awk '/ (ERROR|FAIL): Test/ {n = 80} n-- > 0' "$log_dir/odoo-$v-again.log" | head -n 200
      fi
    fi
  fi
  if [ "$rc" -ne 0 ] || [ "$bad" -ne 0 ]; then status=1; fi
  echo "Odoo $v: $stats (odoo-bin exit $rc)"
  summary+=("odoo-$v: $passed passed, $bad failed")
  run_e2e "$v" "$src"
done
printf '%s\n' "${summary[@]}"
exit $status
