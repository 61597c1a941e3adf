#!/bin/bash
# Build the .deb, install it with apt on this machine (Debian bookworm, root)
# and check the installed result: the command, the default config, the system
# user, where files went, the unit, and the daemon's start under a fake
# NOTIFY_SOCKET until READY=1, then its stop. Then remove and purge, checking
# what each keeps. Does not need systemd as PID 1.
#
#   .ci/deb-check.sh                        full run
#   DEB_BUILD_OPTIONS=nocheck .ci/deb-check.sh   without the test suite at build
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
export DEBIAN_FRONTEND=noninteractive
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export LC_ALL=C.UTF-8
user=_terminal-bridge
failures=0

step() { printf '\n==> %s\n' "$*"; }
ok() { printf '    ok: %s\n' "$*"; }
fail() { printf '    FAIL: %s\n' "$*"; failures=$((failures + 1)); }
check() { # check DESCRIPTION COMMAND...
    local what=$1; shift
    if "$@"; then ok "$what"; else fail "$what"; fi
}

step "build"
"$repo/packaging/build-deb.sh"
deb=$(ls "$repo"/out/terminal-bridge_*_all.deb)
version=$(dpkg-deb -f "$deb" Version)

step "install $deb with apt"
if [ -d /run/systemd/system ]; then
    echo "    systemd is running: the postinst will also start the service"
else
    echo "    systemd is not running: the postinst must succeed without it"
fi
apt-get install -y -q --no-install-recommends --reinstall "$deb"
check "dpkg reports the package installed" \
    test "$(dpkg-query -W -f='${db:Status-Status} ${Version}' terminal-bridge)" = "installed $version"

step "the command"
out=$(terminal-bridge --version)
echo "    $out"
check "--version says $version" test "$out" = "terminal-bridge $version"
check "check-config accepts the installed default config" terminal-bridge check-config
if terminal-bridge --help | grep -qw doctor; then
    check "doctor runs against the default config" terminal-bridge doctor
fi

step "the system user"
entry=$(getent passwd "$user" || true)
echo "    $entry"
check "$user exists" test -n "$entry"
check "$user's home is /var/lib/terminal-bridge" test "$(echo "$entry" | cut -d: -f6)" = /var/lib/terminal-bridge
check "$user has no login shell" test "$(echo "$entry" | cut -d: -f7)" = /usr/sbin/nologin
check "$user is a system user (uid < 1000)" test "$(id -u "$user")" -lt 1000
check "$user is in group dialout" bash -c "id -nG '$user' | tr ' ' '\n' | grep -qx dialout"

step "files"
check "the bridge package is private, in /usr/share/terminal-bridge" \
    test -f /usr/share/terminal-bridge/bridge/__init__.py
check "its bytecode was compiled at install" \
    test -f /usr/share/terminal-bridge/bridge/__pycache__/__init__.cpython-311.pyc
check "no bridge package in any dist-packages" \
    bash -c '! ls -d /usr/lib/python3*/dist-packages/bridge /usr/local/lib/python3*/dist-packages/bridge 2>/dev/null | grep -q .'
check "Debian's python3 cannot import bridge by itself" \
    bash -c 'cd / && ! /usr/bin/python3 -I -c "import bridge" 2>/dev/null'
check "/usr/bin/terminal-bridge is the launcher" \
    grep -q '^sys.path.insert(0, "/usr/share/terminal-bridge")' /usr/bin/terminal-bridge
check "the unit is installed" test -f /lib/systemd/system/terminal-bridge.service
check "the unit is enabled" test -L /etc/systemd/system/multi-user.target.wants/terminal-bridge.service
check "the man page is installed" test -f /usr/share/man/man8/terminal-bridge.8.gz
check "README and docs/ are where --help and the man page send the reader" \
    test -f /usr/share/doc/terminal-bridge/README.md -a -f /usr/share/doc/terminal-bridge/docs/configuration.md
check "bridge.conf is a conffile" \
    bash -c "dpkg-query -W -f='\${Conffiles}' terminal-bridge | grep -q ' /etc/terminal-bridge/bridge.conf '"
check "/var/lib/terminal-bridge is owned by $user, mode 750" \
    test "$(stat -c '%U %a' /var/lib/terminal-bridge)" = "$user 750"

step "systemd-analyze verify"
if command -v systemd-analyze >/dev/null; then
    check "the installed unit verifies" systemd-analyze verify /lib/systemd/system/terminal-bridge.service
    systemd-analyze security --offline=true /lib/systemd/system/terminal-bridge.service | tail -n 1 || true
else
    echo "    skipped: systemd-analyze is not installed"
fi

step "the daemon under a fake NOTIFY_SOCKET, as $user"
run=$(mktemp -d /tmp/terminal-bridge-run.XXXXXX)
trap 'rm -rf "$run"' EXIT
port=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$run/bridge.conf" <<EOF
[bridge]
listen = 127.0.0.1:$port
state_dir = $run/state
EOF
mkdir "$run/state"
chown -R "$user:$user" "$run"
check "check-config accepts the test config" terminal-bridge --config "$run/bridge.conf" check-config
if /usr/bin/python3 - "$run" "$user" <<'EOF'
"""Play systemd: start the daemon with NOTIFY_SOCKET and WATCHDOG_USEC set, wait
for READY=1, see a WATCHDOG=1, send SIGTERM, and expect STOPPING=1 and exit 0.
Where no journald runs, also play journald: bind its native socket, set
JOURNAL_STREAM to the daemon's stdout, and expect structured log entries."""
import os
import pwd
import select
import signal
import socket
import subprocess
import sys
import time

run, user = sys.argv[1], sys.argv[2]
account = pwd.getpwnam(user)
address = os.path.join(run, "notify")
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind(address)
os.chown(address, account.pw_uid, account.pw_gid)

environ = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "NOTIFY_SOCKET": address,
    "WATCHDOG_USEC": "2000000",  # ping expected every second
}
command = [
    "setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--init-groups",
    "/usr/bin/terminal-bridge", "--config", os.path.join(run, "bridge.conf"), "run",
]
output = open(os.path.join(run, "daemon.log"), "w+")

JOURNAL = "/run/systemd/journal/socket"
journal = None
made_directory = False
if not os.path.exists(JOURNAL):
    made_directory = not os.path.isdir(os.path.dirname(JOURNAL))
    os.makedirs(os.path.dirname(JOURNAL), mode=0o755, exist_ok=True)
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(JOURNAL)
    os.chmod(JOURNAL, 0o666)
    status = os.fstat(output.fileno())
    environ["JOURNAL_STREAM"] = f"{status.st_dev}:{status.st_ino}"

daemon = subprocess.Popen(command, env=environ, stdout=output, stderr=subprocess.STDOUT)
received = []


def journal_entries():
    """Decode the datagrams of journald's native protocol sent so far."""
    entries = []
    journal.setblocking(False)
    while True:
        try:
            data = journal.recv(65536)
        except BlockingIOError:
            return entries
        fields, i = {}, 0
        while i < len(data):
            end = data.index(b"\n", i)
            name, eq, value = data[i:end].partition(b"=")
            if eq:
                i = end + 1
            else:  # NAME\n, 64-bit little-endian size, value, \n
                size = int.from_bytes(data[end + 1:end + 9], "little")
                value = data[end + 9:end + 9 + size]
                i = end + 9 + size + 1
            fields[name.decode()] = value.decode()
        entries.append(fields)


def wait_for(prefix, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([sock], [], [], 0.2)[0]:
            message = sock.recv(4096).decode()
            received.append(message)
            if any(line.startswith(prefix) for line in message.splitlines()):
                return True
        elif daemon.poll() is not None:
            return False
    return False


def finish(problem):
    if daemon.poll() is None:
        daemon.kill()
        daemon.wait()
    if journal is not None:
        journal.close()
        os.unlink(JOURNAL)
        if made_directory:
            os.rmdir(os.path.dirname(JOURNAL))
    output.seek(0)
    print("    datagrams:", received)
    print("    daemon output:\n" + "".join("      " + line for line in output))
    if problem:
        print("    FAIL:", problem)
        sys.exit(1)


started = time.monotonic()
if not wait_for("READY=1", 20):
    finish(f"no READY=1 within 20 s (exit status {daemon.poll()})")
print(f"    ok: READY=1 after {time.monotonic() - started:.1f} s")
if not wait_for("WATCHDOG=1", 3):
    finish("no WATCHDOG=1 within 3 s with WATCHDOG_USEC=2000000")
print("    ok: WATCHDOG=1")
daemon.send_signal(signal.SIGTERM)
try:
    status = daemon.wait(timeout=15)
except subprocess.TimeoutExpired:
    finish("still running 15 s after SIGTERM")
wait_for("STOPPING=1", 1)
if not any("STOPPING=1" in message for message in received):
    finish("no STOPPING=1")
if status != 0:
    finish(f"exit status {status} after SIGTERM")
print("    ok: STOPPING=1, exit status 0 after SIGTERM")
if journal is not None:
    entries = journal_entries()
    for entry in entries[:3]:
        print("    journal entry:", entry)
    ours = [e for e in entries if e.get("SYSLOG_IDENTIFIER") == "terminal-bridge"]
    if not ours or not all(e.get("PRIORITY", "").isdigit() and e.get("MESSAGE") for e in ours):
        finish(f"no structured journal entries from the daemon ({len(entries)} received)")
    print(f"    ok: {len(ours)} journal entries with MESSAGE, PRIORITY, SYSLOG_IDENTIFIER=terminal-bridge")
else:
    print("    (a journald runs here: the journald observer was not checked)")
finish(None)
EOF
then ok "the daemon started, said READY=1, pinged the watchdog and stopped on SIGTERM"
else fail "the daemon under a fake NOTIFY_SOCKET"
fi
check "the first start created a TLS key and certificate owned by $user" \
    test "$(stat -c %U "$run/state/tls/bridge.key" 2>/dev/null)" = "$user" -a -f "$run/state/tls/bridge.crt"

step "a client added by root is readable by the service"
# The installer's flow: `sudo terminal-bridge client add NAME`, then the
# service, running as $user, must read the clients file it wrote.
terminal-bridge --config "$run/bridge.conf" client add deb-check >/dev/null
echo "    clients file: $(stat -c '%U:%G %a' "$run/clients.conf")"
check "check-config as $user accepts the clients file written by root" \
    setpriv --reuid="$user" --regid="$user" --init-groups \
    terminal-bridge --config "$run/bridge.conf" check-config
if terminal-bridge --help | grep -qw doctor; then
    # After a first start: a certificate, a journal and a client to check, all the service's.
    doctor_out=$(terminal-bridge --config "$run/bridge.conf" doctor) && doctor_rc=0 || doctor_rc=$?
    echo "$doctor_out" | sed 's/^/    /'
    said() { grep -q -- "$1" <<<"$doctor_out"; }
    fingerprint=$(/usr/bin/python3 -c 'import sys
from cryptography import x509
from cryptography.hazmat.primitives import hashes
cert = x509.load_pem_x509_certificate(open(sys.argv[1], "rb").read())
print(":".join("%02X" % b for b in cert.fingerprint(hashes.SHA256())))' "$run/state/tls/bridge.crt")
    check "doctor finds nothing failed after the first start" test "$doctor_rc" -eq 0
    check "doctor shows the certificate's fingerprint" said "^OK .*certificate: the key matches.*$fingerprint"
    check "doctor finds the journal intact" said "^OK .*journal: .* is intact"
    check "doctor finds the clients file readable by the service" said "^OK .*clients: .*the service can read it"
fi

step "an installer's first payment: README's \"Install on a Raspberry Pi\", as written"
# The commands are read from README.md and run one by one, in a folder holding the .deb, as an installer
# would type them: lines with sudo as root (with SUDO_UID of the installer, as sudo sets it), the others as
# the installer (nobody). What this machine lacks is stood in for: sudo (we are root), sudoedit (the edit an
# installer makes: the till-1 example pointed at a simulated terminal, and a free port), and, without systemd
# as PID 1, systemctl and the start that apt's postinst asks of systemd (the daemon as _terminal-bridge).
readme=$(mktemp -d /tmp/terminal-bridge-readme.XXXXXX)
apt-get purge -y -q terminal-bridge >/dev/null  # a machine that never had it
cp "$deb" "$readme/"
chown -R 65534:65534 "$readme"
chmod 755 "$readme"
free_port() { /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'; }
sim_port=$(free_port)
bridge_port=$(free_port)
# The daemon's pid, in a file: a README step runs in a subshell, where a variable would not outlive it (a
# `sudo systemctl restart` there once left its daemon running after the check).
daemon_pid_file=$(mktemp /tmp/terminal-bridge-daemon-pid.XXXXXX)
# The shop's card terminal: the source tree's simulator (the package is not installed yet).
setpriv --reuid=65534 --regid=65534 --clear-groups env PYTHONPATH="$repo" \
    /usr/bin/python3 -m bridge simulate caisse-ap --listen "tcp:$sim_port:interface=127.0.0.1" --delay 1 \
    >"$readme/simulator.log" 2>&1 &
sim_pid=$!
wait_listening() { # wait_listening PORT: until something accepts connections there (at most 20 s)
    /usr/bin/python3 - "$1" <<'EOF'
import socket, sys, time
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0:
            sys.exit(0)
    time.sleep(0.2)
sys.exit(1)
EOF
}
start_service() { # what systemd does for `systemctl (re)start terminal-bridge`, where it is not PID 1
    stop_service
    setpriv --reuid="$user" --regid="$user" --init-groups /usr/bin/terminal-bridge run >>"$readme/daemon.log" 2>&1 &
    echo $! >"$daemon_pid_file"
    local port
    port=$(sed -n 's/^listen = .*:\([0-9]*\)$/\1/p' /etc/terminal-bridge/bridge.conf | head -1)
    if [ -z "$port" ]; then
        # The default port may be another program's on a shared build machine: only its first start's
        # certificate matters here (the README's edit chooses the port).
        for _ in $(seq 100); do [ -f /var/lib/terminal-bridge/tls/bridge.crt ] && return 0; sleep 0.2; done
        cat "$readme/daemon.log"; return 1
    fi
    wait_listening "$port" || { cat "$readme/daemon.log"; return 1; }
}
stop_service() {
    local pid
    pid=$(cat "$daemon_pid_file" 2>/dev/null || true)
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true  # a child of this shell: reaped here
        # not a child of this shell when a subshell started it: wait until it is gone
        for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    fi
    : >"$daemon_pid_file"
}
sudo() { SUDO_UID=65534 SUDO_GID=65534 "$@"; }
sudoedit() {
    /usr/bin/python3 - "$1" "$sim_port" "$bridge_port" <<'EOF'
import re, sys
path, sim_port, bridge_port = sys.argv[1:]
text = open(path).read()
text = re.sub(r"(?m)^#listen = .*$", f"listen = 0.0.0.0:{bridge_port}", text, count=1)
start = text.index("#[terminal:till-1]")
head, example = text[:start], text[start:]
for line in ("#[terminal:till-1]", "#type = caisse-ap-tcp"):
    example = example.replace(line, line[1:], 1)
example = re.sub(r"(?m)^#address = .*$", f"address = 127.0.0.1:{sim_port}", example, count=1)
open(path, "w").write(head + example)
EOF
}
wait_listening "$sim_port" || fail "the simulated terminal did not start: $(cat "$readme/simulator.log")"
if [ ! -d /run/systemd/system ]; then
    systemctl() { case "$1" in restart|start) start_service ;; stop) stop_service ;; *) command systemctl "$@" ;; esac; }
fi
readme_ok=1
pay_out=
while IFS= read -r line; do
    command_line=$(sed 's/[[:space:]]\+#.*$//' <<<"$line")
    [ -n "$command_line" ] || continue
    echo "    \$ $command_line"
    if [[ $command_line == sudo* ]]; then
        (cd "$readme" && eval "$command_line") </dev/null >"$readme/out" 2>&1 && rc=0 || rc=$?
    else
        (cd "$readme" && eval "setpriv --reuid=65534 --regid=65534 --clear-groups env HOME=$readme $command_line") \
            </dev/null >"$readme/out" 2>&1 && rc=0 || rc=$?
    fi
    sed 's/^/      /' "$readme/out" | tail -n 25
    if [ "$rc" -ne 0 ]; then fail "'$command_line' exited with status $rc"; readme_ok=0; break; fi
    if [[ $command_line == *"apt install"* ]] && [ ! -d /run/systemd/system ]; then
        start_service || { fail "the service did not start after apt install"; readme_ok=0; break; }
    fi
    if [[ $command_line == *" pay "* ]]; then pay_out=$(cat "$readme/out"); fi
done < <(awk '/^## Install on a Raspberry Pi/ {f = 1} f && /^```sh/ {b = 1; next} b && /^```/ {exit} b' "$repo/README.md")
if [ "$readme_ok" = 1 ]; then
    check "README's steps end in an approved payment" grep -q '^APPROVED: 1.00 EUR' <<<"$pay_out"
    check "the credentials file is the installer's, mode 600" \
        test "$(stat -c '%u %a' "$readme/pos-1.json")" = "65534 600"
fi
stop_service
kill "$sim_pid" 2>/dev/null || true
wait "$sim_pid" 2>/dev/null || true
unset -f sudo sudoedit systemctl
check "no daemon of the README's steps is left running" bash -c "! pgrep -u '$user' -f '/usr/bin/terminal-bridge run'"
rm -rf "$readme" "$daemon_pid_file"

step "remove keeps config and state; purge removes them"
echo "# a local change" >> /etc/terminal-bridge/bridge.conf
touch /var/lib/terminal-bridge/.deb-check
apt-get remove -y -q terminal-bridge
check "remove keeps the changed config" grep -q '^# a local change' /etc/terminal-bridge/bridge.conf
check "remove keeps the state" test -e /var/lib/terminal-bridge/.deb-check
apt-get install -y -q --no-install-recommends "$deb"
check "reinstalling keeps the changed config (a conffile)" grep -q '^# a local change' /etc/terminal-bridge/bridge.conf
apt-get purge -y -q terminal-bridge
check "purge removes the state" test ! -e /var/lib/terminal-bridge
check "purge removes the config" test ! -e /etc/terminal-bridge
check "purge keeps the system user" getent passwd "$user" >/dev/null
apt-get install -y -q --no-install-recommends "$deb"
check "a fresh install after purge has the pristine config" \
    bash -c "! grep -q '^# a local change' /etc/terminal-bridge/bridge.conf"

if [ "$failures" -ne 0 ]; then
    step "$failures check(s) failed"
    exit 1
fi
step "all checks passed"
