#!/usr/bin/env bash
# deployments/chdb.sh: fetch libchdb.so (the real ClickHouse engine, embedded) into a cache
# outside the clone, verify its checksum, and print its path. Idempotent: a present, verified
# library is never downloaded again.
#
# Settings (environment):
#   TALLY_CACHE_DIR   cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/tally)
#   CHDB_NPM_PACKAGE  npm package that ships libchdb.so (default below)
set -euo pipefail

CHDB_NPM_PACKAGE=${CHDB_NPM_PACKAGE:-@chdb/lib-linux-x64-gnu@26.7.3-stable.1}
# sha256 of libchdb.so from the package above; a mismatch aborts (set CHDB_SHA256= to skip
# when deliberately changing the package).
CHDB_SHA256=${CHDB_SHA256-36ad4e999882821ef13cf2d0f52c93f48e6ee1b4498b35a201c23ce4b8d15bf5}
CACHE=${TALLY_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tally}
DIR="$CACHE/chdb/${CHDB_NPM_PACKAGE//[@\/]/_}"
LIB="$DIR/libchdb.so"

verify() {
  [ -z "$CHDB_SHA256" ] && return 0
  echo "$CHDB_SHA256  $1" | sha256sum -c --status
}

if [ -f "$LIB" ] && verify "$LIB"; then
  echo "$LIB"; exit 0
fi

mkdir -p "$DIR"
tmp=$(mktemp -d "$DIR/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "chdb: fetching $CHDB_NPM_PACKAGE from the npm registry (about 178 MB) ..." >&2
( cd "$tmp" && npm pack --silent "$CHDB_NPM_PACKAGE" >/dev/null )
tar -xzf "$tmp"/*.tgz -C "$tmp"
found=$(find "$tmp" -name libchdb.so | head -n1)
[ -n "$found" ] || { echo "chdb: libchdb.so not found in $CHDB_NPM_PACKAGE" >&2; exit 1; }
if ! verify "$found"; then
  echo "chdb: checksum mismatch for $found (want $CHDB_SHA256, got $(sha256sum "$found" | cut -d' ' -f1))" >&2
  exit 1
fi
mv -f "$found" "$LIB"
echo "$LIB"
