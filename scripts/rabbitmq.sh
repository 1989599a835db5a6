#!/usr/bin/env bash
# RabbitMQ from Debian's rabbitmq-server, with the management and prometheus plugins.
# Runs its own node, epmd and Erlang cookie on non-standard ports, so a system RabbitMQ
# (or its epmd on 4369) is never touched.
# usage: scripts/rabbitmq.sh install|start|stop|status
SERVICE_NAME=rabbitmq
source "$(dirname "$0")/lib.sh"

DIR="$(service_dir rabbitmq)"
RMQ_BIN=/usr/lib/rabbitmq/bin
NODE="spillway-test@localhost"
PIDFILE="$DIR/rabbitmq.pid"
LOGFILE="$DIR/rabbitmq.log"

export HOME="$DIR/home"
export RABBITMQ_NODENAME="$NODE"
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
export RABBITMQ_NODE_PORT="$RABBITMQ_AMQP_PORT"
export RABBITMQ_DIST_PORT
export RABBITMQ_CTL_DIST_PORT_MIN="$RABBITMQ_CTL_DIST_PORT"
export RABBITMQ_CTL_DIST_PORT_MAX="$((RABBITMQ_CTL_DIST_PORT + 9))"
export RABBITMQ_MNESIA_BASE="$DIR/mnesia"
export RABBITMQ_LOG_BASE="$DIR/log"
export RABBITMQ_LOGS="$DIR/log/node.log"
export RABBITMQ_PID_FILE="$PIDFILE"
export RABBITMQ_CONFIG_FILE="$DIR/rabbitmq.conf"
export RABBITMQ_ENABLED_PLUGINS_FILE="$DIR/enabled_plugins"
export RABBITMQ_CONF_ENV_FILE="$DIR/rabbitmq-env.conf"
export RABBITMQ_ADVANCED_CONFIG_FILE="$DIR/advanced.config"
export ERL_EPMD_PORT="$RABBITMQ_EPMD_PORT"
export ERL_EPMD_ADDRESS=127.0.0.1
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"

install() {
  [[ -x $RMQ_BIN/rabbitmq-server ]] || die "rabbitmq-server is not installed; run scripts/install-deps.sh"
}

write_config() {
  mkdir -p "$DIR/home" "$DIR/mnesia" "$DIR/log"
  : >"$RABBITMQ_CONF_ENV_FILE"
  echo '[].' >"$RABBITMQ_ADVANCED_CONFIG_FILE"
  echo '[rabbitmq_management,rabbitmq_prometheus].' >"$RABBITMQ_ENABLED_PLUGINS_FILE"
  cat >"$RABBITMQ_CONFIG_FILE" <<EOF
listeners.tcp.1 = 127.0.0.1:$RABBITMQ_AMQP_PORT
management.tcp.ip = 127.0.0.1
management.tcp.port = $RABBITMQ_MGMT_PORT
prometheus.tcp.ip = 127.0.0.1
prometheus.tcp.port = $RABBITMQ_PROM_PORT
# Sample queue stats every second so the HTTP API settles fast in tests.
collect_statistics_interval = 1000
management.rates_mode = basic
disk_free_limit.absolute = 50MB
EOF
}

ctl() { "$RMQ_BIN/rabbitmqctl" -n "$NODE" "$@"; }

start() {
  install
  if pid_alive "$PIDFILE" && ctl status >/dev/null 2>&1; then
    log "already running (pid $(cat "$PIDFILE")) on 127.0.0.1:$RABBITMQ_AMQP_PORT"
    return 0
  fi
  for port in "$RABBITMQ_AMQP_PORT" "$RABBITMQ_DIST_PORT" "$RABBITMQ_MGMT_PORT" "$RABBITMQ_PROM_PORT"; do
    require_port_free "$port" "RabbitMQ"
  done
  write_config
  log "starting RabbitMQ on 127.0.0.1:$RABBITMQ_AMQP_PORT, management on $RABBITMQ_MGMT_PORT (log: $LOGFILE)"
  : >"$LOGFILE"
  rm -f "$PIDFILE"
  nohup "$RMQ_BIN/rabbitmq-server" >>"$LOGFILE" 2>&1 </dev/null &
  local timeout="${SPILLWAY_START_TIMEOUT:-90}"
  # Booting next to Kafka's JVM on 2 cores, the node can take more than 20 s to write it.
  wait_until "$timeout" "RabbitMQ pid file" "$LOGFILE" test -s "$PIDFILE" || die "RabbitMQ wrote no pid file"
  ctl wait "$PIDFILE" --timeout "$timeout" >>"$LOGFILE" 2>&1 || {
    tail -n 40 "$LOGFILE" "$RABBITMQ_LOGS" >&2 2>/dev/null || true
    die "RabbitMQ did not start in ${timeout}s"
  }
  ctl await_startup --timeout "$timeout" >>"$LOGFILE" 2>&1 || die "RabbitMQ did not finish booting; see $LOGFILE"
  wait_until "$timeout" "RabbitMQ management API" "$LOGFILE" \
    http_ok "http://guest:guest@127.0.0.1:$RABBITMQ_MGMT_PORT/api/overview" ||
    die "management API did not answer"
  log "ready: RabbitMQ $(ctl version 2>/dev/null)"
}

stop() {
  if pid_alive "$PIDFILE"; then
    log "stopping RabbitMQ node $NODE"
    ctl stop "$PIDFILE" >>"$LOGFILE" 2>&1 || stop_pid "$PIDFILE" rabbitmq
  fi
  rm -f "$PIDFILE"
  # epmd outlives the node; ours runs on its own port, so killing it leaves a system epmd alone.
  if port_open "$RABBITMQ_EPMD_PORT"; then
    epmd -port "$RABBITMQ_EPMD_PORT" -kill >/dev/null 2>&1 || true
  fi
  wait_port_closed "$RABBITMQ_AMQP_PORT" rabbitmq
  wait_port_closed "$RABBITMQ_MGMT_PORT" "rabbitmq management"
  wait_port_closed "$RABBITMQ_EPMD_PORT" epmd
}

# Stops and starts the RabbitMQ application inside the running node: every connection dropped
# and every listener closed, durable queues recovered, as in a broker restart, but without
# booting the Erlang VM again (seconds, where a full stop and start takes minutes on a loaded
# machine). `start_app` can fail on a loaded machine (a CI run saw it once, under the soak);
# it is tried three times, and if the application still does not come back the whole node is
# stopped and started, so a restart never leaves the broker down for the tests that follow.
restart_app() {
  pid_alive "$PIDFILE" || die "RabbitMQ is not running"
  log "restarting the RabbitMQ application on node $NODE"
  ctl stop_app >>"$LOGFILE" 2>&1 || die "rabbitmqctl stop_app failed; see $LOGFILE"
  wait_port_closed "$RABBITMQ_AMQP_PORT" rabbitmq
  local attempt
  for attempt in 1 2 3; do
    if ctl start_app >>"$LOGFILE" 2>&1; then
      if wait_until "${SPILLWAY_START_TIMEOUT:-90}" "RabbitMQ management API" "$LOGFILE"         http_ok "http://guest:guest@127.0.0.1:$RABBITMQ_MGMT_PORT/api/overview"; then
        log "restarted"
        return 0
      fi
      log "management API did not answer after start_app (attempt $attempt)"
    else
      log "rabbitmqctl start_app failed (attempt $attempt); the node's log says:"
      tail -n 20 "$LOGFILE" "$RABBITMQ_LOGS" >&2 2>/dev/null || true
    fi
    sleep 2
  done
  log "the application did not come back; stopping and starting the whole node"
  stop
  start
}

status() {
  if pid_alive "$PIDFILE"; then echo "rabbitmq: running, amqp 127.0.0.1:$RABBITMQ_AMQP_PORT, management http://127.0.0.1:$RABBITMQ_MGMT_PORT"; else echo "rabbitmq: stopped"; fi
}

case "${1:-}" in
install | start | stop | status) "$1" ;;
restart-app) restart_app ;;
*) die "usage: $0 install|start|stop|status|restart-app" ;;
esac
