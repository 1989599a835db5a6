#!/usr/bin/env bash
# Toxiproxy, the fault proxy of the fault-matrix tests (tests/e2e_faults.rs): latency, bandwidth
# limits, connection resets and blackholes between spillway and a broker, driven over its HTTP
# API. Built from the Go module proxy (github.com/Shopify/toxiproxy/v2, cmd/server) once per
# version into ~/.cache/spillway/toxiproxy-<version>-<recipe>/ (83 s on 2 cores from empty Go
# caches).
# usage: scripts/toxiproxy.sh install|start|stop|status
SERVICE_NAME=toxiproxy
source "$(dirname "$0")/lib.sh"

TOXIPROXY_VERSION="${SPILLWAY_TOXIPROXY_VERSION:-v2.5.0}"
# Bump when install()'s build command changes, so cached binaries of the old recipe are not reused.
BUILD_RECIPE=2
BIN_DIR="$CACHE_DIR/toxiproxy-$TOXIPROXY_VERSION-$BUILD_RECIPE"
BIN="$BIN_DIR/toxiproxy-server"

DIR="$(service_dir toxiproxy)"
PIDFILE="$DIR/toxiproxy.pid"
LOGFILE="$DIR/toxiproxy.log"

install() {
  if [[ -x $BIN ]]; then
    return 0
  fi
  command -v go >/dev/null || die "go is not installed (needed once to build Toxiproxy)"
  mkdir -p "$BIN_DIR"
  log "building Toxiproxy $TOXIPROXY_VERSION from the Go module proxy (first time only)"
  local start=$SECONDS
  # A throwaway GOBIN, so `go install` names the binary `server` somewhere we then rename it from.
  local gobin="$BIN_DIR/gobin.tmp"
  rm -rf "$gobin"
  GOBIN="$gobin" GOFLAGS=-mod=mod go install -trimpath \
    -ldflags "-s -w -X github.com/Shopify/toxiproxy/v2.Version=$TOXIPROXY_VERSION" \
    "github.com/Shopify/toxiproxy/v2/cmd/server@$TOXIPROXY_VERSION" || die "Toxiproxy build failed"
  mv "$gobin/server" "$BIN"
  rm -rf "$gobin"
  log "built $BIN in $((SECONDS - start))s"
}

start() {
  install
  if pid_alive "$PIDFILE"; then
    log "already running (pid $(cat "$PIDFILE")) on 127.0.0.1:$TOXIPROXY_PORT"
    return 0
  fi
  require_port_free "$TOXIPROXY_PORT" "Toxiproxy API"
  mkdir -p "$DIR"
  log "starting Toxiproxy on 127.0.0.1:$TOXIPROXY_PORT (log: $LOGFILE)"
  : >"$LOGFILE"
  # LOG_LEVEL: its default logs every connection's every step (a megabyte per test run).
  LOG_LEVEL=info nohup "$BIN" -host 127.0.0.1 -port "$TOXIPROXY_PORT" >>"$LOGFILE" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  wait_until "${SPILLWAY_START_TIMEOUT:-30}" "Toxiproxy" "$LOGFILE" \
    http_ok "http://127.0.0.1:$TOXIPROXY_PORT/version" ||
    die "Toxiproxy did not become ready; see $LOGFILE"
  log "ready: Toxiproxy $(curl -fsS --max-time 2 "http://127.0.0.1:$TOXIPROXY_PORT/version")"
}

stop() {
  stop_pid "$PIDFILE" toxiproxy
  wait_port_closed "$TOXIPROXY_PORT" toxiproxy
}

status() {
  if pid_alive "$PIDFILE"; then echo "toxiproxy: running, http://127.0.0.1:$TOXIPROXY_PORT"; else echo "toxiproxy: stopped"; fi
}

case "${1:-}" in
install | start | stop | status) "$1" ;;
*) die "usage: $0 install|start|stop|status" ;;
esac
