#!/usr/bin/env bash
# `make test`: builds the tests, starts the services that are not already running, runs every
# test, and stops what it started, also when tests fail.
SERVICE_NAME=test
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

# Build first, so services do not idle through a long compile and a build error fails fast.
# The control plane, Toxiproxy and Helm (Go, cached after the first time) build alongside the
# Rust tests.
scripts/k8s.sh install &
k8s_build=$!
scripts/toxiproxy.sh install &
toxiproxy_build=$!
scripts/helm.sh install &
helm_build=$!
cargo test --no-run --all-targets --locked 2>&1 | grep -vE '^\s+(Compiling|Checking|Downloaded|Downloading)' >&2
wait "$k8s_build" || die "the Kubernetes control plane did not build; see the lines above"
wait "$toxiproxy_build" || die "Toxiproxy did not build; see the lines above"
wait "$helm_build" || die "Helm did not build; see the lines above"

started=()
for s in kafka rabbitmq nats prometheus k8s toxiproxy; do
  # Captured first: `grep -q` closing the pipe early would fail a multi-line status under pipefail.
  state=$("scripts/$s.sh" status || true)
  grep -q running <<<"$state" || started+=("$s")
done
stop_started() {
  local rc=$?
  if ((${#started[@]})); then scripts/services.sh down "${started[@]}" || rc=1; fi
  exit "$rc"
}
trap stop_started EXIT
trap 'exit 130' INT TERM
scripts/services.sh up

export RUST_BACKTRACE="${SPILLWAY_TEST_BACKTRACE:-0}"
# Each harness test prints the version of the real server it talked to.
cargo test --locked --no-fail-fast --lib --bins --tests -- --nocapture
