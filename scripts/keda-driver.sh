#!/usr/bin/env bash
# The KEDA driver of the side-by-side benchmark (bench/keda/, benches/compare_keda.rs): KEDA's
# own scalers from its released Go module. Built once per source hash (go.mod, go.sum, main.go)
# into ~/.cache/spillway/keda-driver-<hash>/; the first build compiles KEDA's every scaler and
# their cloud SDKs (about 10 minutes on 2 cores from empty Go caches).
# usage: scripts/keda-driver.sh    builds if needed and prints the binary's path
SERVICE_NAME=keda-driver
source "$(dirname "$0")/lib.sh"

SRC="$REPO_ROOT/bench/keda"
HASH="$(cat "$SRC/go.mod" "$SRC/go.sum" "$SRC/main.go" | sha256sum | cut -c1-16)"
BIN="$CACHE_DIR/keda-driver-$HASH/keda-driver"

if [[ ! -x $BIN ]]; then
  command -v go >/dev/null || die "go is not installed (needed once to build the KEDA driver)"
  mkdir -p "$(dirname "$BIN")"
  log "building the KEDA driver (KEDA $(grep -m1 'kedacore/keda/v2 ' "$SRC/go.mod" | awk '{print $2}')) from the Go module proxy (first time only)"
  start=$SECONDS
  # GOFLAGS=-mod=mod: go.sum is committed, but the module cache of a fresh machine is empty.
  (cd "$SRC" && GOFLAGS=-mod=mod nice -n 10 go build -o "$BIN.tmp" .) || die "KEDA driver build failed"
  mv "$BIN.tmp" "$BIN"
  log "built $BIN in $((SECONDS - start))s"
fi
echo "$BIN"
