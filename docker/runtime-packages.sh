#!/usr/bin/env bash
# Prints the Debian packages that hold the shared libraries the given binaries load, one per
# line: the runtime image installs exactly these instead of a hand-kept list.
set -euo pipefail
ldd "$@" | awk '/=> \// {print $3}' | sort -u | while read -r lib; do
  real=$(realpath "$lib")
  # dpkg knows a file by the path its package installed; with merged /usr that may be either.
  dpkg -S "$real" 2>/dev/null || dpkg -S "*/$(basename "$real")" 2>/dev/null || {
    echo "runtime-packages: no package holds $lib" >&2
    exit 1
  }
done | cut -d: -f1 | sort -u
