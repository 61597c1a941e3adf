#!/bin/bash
# Build the terminal-bridge .deb on Debian bookworm and check it with lintian.
#
#   packaging/build-deb.sh                          build, test, lintian
#   DEB_BUILD_OPTIONS=nocheck packaging/build-deb.sh   skip the test suite
#
# Works on a copy of the tree (the files git would track: committed or not,
# minus .gitignore'd ones) with packaging/debian as debian/, so the working
# tree is never touched. Installs missing build dependencies with apt-get (needs
# root). The .deb, .changes and .buildinfo land in out/. Exits non-zero if the
# build fails or lintian reports an error or a warning.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out="$repo/out"
export DEBIAN_FRONTEND=noninteractive
# Debian's own toolchain and Python, whatever the caller's PATH holds (pyenv,
# a venv): pybuild must find /usr/bin/python3 and its python3-* packages.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export LC_ALL=C.UTF-8

profiles=()
case " ${DEB_BUILD_OPTIONS:-} " in
    *" nocheck "*) profiles=(-Pnocheck) ;;
esac

log() { printf '==> %s\n' "$*" >&2; }

apt_updated=
apt_install() {
    if [ -z "$apt_updated" ]; then
        apt-get update -q
        apt_updated=1
    fi
    apt-get install -y -q --no-install-recommends "$@"
}

missing=()
for tool in dpkg-buildpackage:dpkg-dev dh:debhelper lintian:lintian; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt_install "${missing[@]}"
fi

# The version is said twice, in bridge/__init__.py and debian/changelog.
changelog_version=$(dpkg-parsechangelog -l "$repo/packaging/debian/changelog" -S Version)
python_version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$repo/bridge/__init__.py")
if [ "$changelog_version" != "$python_version" ]; then
    log "version mismatch: packaging/debian/changelog has $changelog_version," \
        "bridge/__init__.py has $python_version; add a changelog entry (dch -v $python_version)"
    exit 1
fi

work=$(mktemp -d /tmp/terminal-bridge-deb.XXXXXX)
trap 'rm -rf "$work"' EXIT
src="$work/terminal-bridge-$changelog_version"
mkdir "$src"
log "copying the tree to $src"
if git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git -C "$repo" ls-files -z --cached --others --exclude-standard |
        (cd "$repo" && xargs -0 cp --parents -a -t "$src" --)
else
    tar -C "$repo" --exclude=./out --exclude=./.git --exclude='__pycache__' -cf - . | tar -C "$src" -xf -
fi
rm -rf "$src/debian" "$src/out"
cp -a "$repo/packaging/debian" "$src/debian"
# Leftovers of a build run in packaging/debian itself would confuse debhelper.
rm -rf "$src/debian/.debhelper" "$src/debian/terminal-bridge" "$src/debian/files" \
    "$src"/debian/*.substvars "$src"/debian/*.log "$src/debian/debhelper-build-stamp"

if ! (cd "$src" && dpkg-checkbuilddeps "${profiles[@]}" >/dev/null 2>&1); then
    log "installing build dependencies"
    if [ -z "$apt_updated" ]; then
        apt-get update -q
        apt_updated=1
    fi
    apt-get build-dep -y -q --no-install-recommends "${profiles[@]}" "$src"
fi

log "dpkg-buildpackage -us -uc -b ${profiles[*]}"
(cd "$src" && dpkg-buildpackage -us -uc -b "${profiles[@]}")

mkdir -p "$out"
rm -f "$out"/terminal-bridge_*
cp -a "$work"/terminal-bridge_*.deb "$work"/terminal-bridge_*.changes "$work"/terminal-bridge_*.buildinfo "$out"/
changes=$(ls "$out"/terminal-bridge_*.changes)

log "lintian $changes"
# Errors and warnings fail the build; info and pedantic tags are shown to read.
if ! lintian --info --display-info --pedantic --fail-on error,warning "$changes"; then
    log "lintian found errors or warnings (above)"
    exit 1
fi
log "built: $(ls "$out"/terminal-bridge_*.deb)"
