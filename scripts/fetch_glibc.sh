#!/usr/bin/env bash
# Fetch other glibc versions for tests/test_numerics.py's cross-libc check (a setup step, like
# `apt-get install qemu-user` for the emulated-CPU check; nothing in the pipeline downloads).
#
#   bash scripts/fetch_glibc.sh [SUITE ...]     # Debian suites, default: trixie sid
#   BARRIERNET_OTHER_GLIBC=$(cat .cache/glibc/dirs) bash scripts/test.sh -k glibc
#
# Each suite's libc6 package (ld.so, libc, libm) is unpacked under .cache/glibc/<version>/, with
# apt's own lists and cache in a scratch directory (the machine's apt state is not touched). Needs
# apt-get and dpkg-deb (Debian or Ubuntu) and a reachable Debian mirror (DEBIAN_MIRROR, default
# deb.debian.org). Writes the unpacked library directories, ':'-separated, to .cache/glibc/dirs.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- trixie sid
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
OUT="$PWD/.cache/glibc"
mkdir -p "$OUT"
dirs=()
for suite in "$@"; do
    scratch=$(mktemp -d)
    mkdir -p "$scratch/state/lists/partial" "$scratch/cache/archives/partial" "$scratch/parts"
    printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$MIRROR" "$suite" > "$scratch/parts/$suite.sources"
    apt=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$scratch/parts" -o "Dir::State=$scratch/state"
         -o "Dir::Cache=$scratch/cache" -q)
    apt-get "${apt[@]}" update > "$scratch/update.log" 2>&1 || { cat "$scratch/update.log" >&2; exit 1; }
    (cd "$scratch" && apt-get "${apt[@]}" download libc6 > /dev/null 2>&1)
    deb=$(ls "$scratch"/libc6_*.deb)
    version=$(dpkg-deb -f "$deb" Version)
    dpkg-deb -x "$deb" "$scratch/root"
    rm -rf "${OUT:?}/$version.tmp" && mv "$scratch/root/usr/lib/x86_64-linux-gnu" "$OUT/$version.tmp"
    rm -rf "${OUT:?}/$version" && mv "$OUT/$version.tmp" "$OUT/$version"
    rm -rf "$scratch"
    echo "fetch_glibc: $suite -> glibc $version in .cache/glibc/$version"
    dirs+=("$OUT/$version")
done
(IFS=:; echo "${dirs[*]}") > "$OUT/dirs.tmp" && mv "$OUT/dirs.tmp" "$OUT/dirs"
