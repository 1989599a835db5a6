#!/usr/bin/env bash
# NATS with JetStream from Debian's nats-server.
# usage: scripts/nats.sh install|start|stop|status
SERVICE_NAME=nats
source "$(dirname "$0")/lib.sh"

DIR="$(service_dir nats)"
PIDFILE="$DIR/nats.pid"
LOGFILE="$DIR/nats.log"

install() {
  command -v nats-server >/dev/null || die "nats-server is not installed; run scripts/install-deps.sh"
}

start() {
  install
  if pid_alive "$PIDFILE"; then
    log "already running (pid $(cat "$PIDFILE")) on 127.0.0.1:$NATS_PORT"
    return 0
  fi
  require_port_free "$NATS_PORT" "NATS client"
  require_port_free "$NATS_MONITOR_PORT" "NATS monitoring"
  mkdir -p "$DIR/jetstream"
  log "starting nats-server on 127.0.0.1:$NATS_PORT, monitoring on $NATS_MONITOR_PORT (log: $LOGFILE)"
  : >"$LOGFILE"
  nohup nats-server -a 127.0.0.1 -p "$NATS_PORT" --http_port "$NATS_MONITOR_PORT" \
    -js -sd "$DIR/jetstream" -n spillway-test >>"$LOGFILE" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  wait_until "${SPILLWAY_START_TIMEOUT:-60}" "NATS JetStream" "$LOGFILE" \
    http_ok "http://127.0.0.1:$NATS_MONITOR_PORT/healthz?js-enabled-only=true" ||
    die "nats-server did not become healthy; see $LOGFILE"
  log "ready: nats-server $(nats-server --version)"
}

stop() {
  stop_pid "$PIDFILE" nats-server
  wait_port_closed "$NATS_PORT" nats
  wait_port_closed "$NATS_MONITOR_PORT" "nats monitoring"
}

status() {
  if pid_alive "$PIDFILE"; then echo "nats: running, nats://127.0.0.1:$NATS_PORT, monitoring http://127.0.0.1:$NATS_MONITOR_PORT"; else echo "nats: stopped"; fi
}

case "${1:-}" in
install | start | stop | status) "$1" ;;
*) die "usage: $0 install|start|stop|status" ;;
esac
