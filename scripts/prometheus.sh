#!/usr/bin/env bash
# Prometheus from Debian's prometheus package, scraping itself every second.
# Extra scrape jobs go in target/services/prometheus/targets/*.json (file_sd), so tests and
# `make run` can add spillway's /metrics without a restart.
# usage: scripts/prometheus.sh install|start|stop|status
SERVICE_NAME=prometheus
source "$(dirname "$0")/lib.sh"

DIR="$(service_dir prometheus)"
PIDFILE="$DIR/prometheus.pid"
LOGFILE="$DIR/prometheus.log"

install() {
  command -v prometheus >/dev/null || die "prometheus is not installed; run scripts/install-deps.sh"
}

write_config() {
  mkdir -p "$DIR/data" "$DIR/targets"
  cat >"$DIR/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ["127.0.0.1:$PROMETHEUS_PORT"]
  - job_name: file
    file_sd_configs:
      - files: ["$DIR/targets/*.json"]
        refresh_interval: 1s
EOF
}

start() {
  install
  if pid_alive "$PIDFILE"; then
    log "already running (pid $(cat "$PIDFILE")) on 127.0.0.1:$PROMETHEUS_PORT"
    return 0
  fi
  require_port_free "$PROMETHEUS_PORT" "Prometheus"
  write_config
  log "starting Prometheus on 127.0.0.1:$PROMETHEUS_PORT (log: $LOGFILE)"
  : >"$LOGFILE"
  nohup prometheus --config.file="$DIR/prometheus.yml" --storage.tsdb.path="$DIR/data" \
    --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" --web.enable-lifecycle \
    --storage.tsdb.retention.time=1d >>"$LOGFILE" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  wait_until "${SPILLWAY_START_TIMEOUT:-60}" "Prometheus" "$LOGFILE" \
    http_ok "http://127.0.0.1:$PROMETHEUS_PORT/-/ready" ||
    die "Prometheus did not become ready; see $LOGFILE"
  log "ready: $(prometheus --version 2>&1 | head -n 1)"
}

stop() {
  stop_pid "$PIDFILE" prometheus
  wait_port_closed "$PROMETHEUS_PORT" prometheus
}

status() {
  if pid_alive "$PIDFILE"; then echo "prometheus: running, http://127.0.0.1:$PROMETHEUS_PORT"; else echo "prometheus: stopped"; fi
}

case "${1:-}" in
install | start | stop | status) "$1" ;;
*) die "usage: $0 install|start|stop|status" ;;
esac
