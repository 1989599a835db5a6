# Shared shell functions for the local service harness (sourced, not run).
#
# Every service lives under target/services/<name>/ (data, log, pid) and listens on
# 127.0.0.1 on a non-standard port, so a server a machine already runs on a standard
# port is never touched. Ports can be overridden through the environment.

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SERVICES_DIR="${SPILLWAY_SERVICES_DIR:-$REPO_ROOT/target/services}"
CACHE_DIR="${SPILLWAY_CACHE_DIR:-$HOME/.cache/spillway}"

# Ports: one place. tests/common reads target/services/endpoints.env, written by write_endpoints.
KAFKA_VERSION="${SPILLWAY_KAFKA_VERSION:-4.1.1}"
KAFKA_PORT="${SPILLWAY_KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${SPILLWAY_KAFKA_CONTROLLER_PORT:-19093}"
RABBITMQ_AMQP_PORT="${SPILLWAY_RABBITMQ_AMQP_PORT:-35772}"
RABBITMQ_DIST_PORT="${SPILLWAY_RABBITMQ_DIST_PORT:-35773}"
RABBITMQ_MGMT_PORT="${SPILLWAY_RABBITMQ_MGMT_PORT:-35774}"
RABBITMQ_PROM_PORT="${SPILLWAY_RABBITMQ_PROM_PORT:-35775}"
RABBITMQ_EPMD_PORT="${SPILLWAY_RABBITMQ_EPMD_PORT:-34369}"
# rabbitmqctl binds its own distribution ports; its default range (35672+) is moved out of the way.
RABBITMQ_CTL_DIST_PORT="${SPILLWAY_RABBITMQ_CTL_DIST_PORT:-35780}"
NATS_PORT="${SPILLWAY_NATS_PORT:-34222}"
NATS_MONITOR_PORT="${SPILLWAY_NATS_MONITOR_PORT:-38222}"
PROMETHEUS_PORT="${SPILLWAY_PROMETHEUS_PORT:-39090}"
K8S_ETCD_PORT="${SPILLWAY_K8S_ETCD_PORT:-32379}"
K8S_ETCD_PEER_PORT="${SPILLWAY_K8S_ETCD_PEER_PORT:-32380}"
K8S_APISERVER_PORT="${SPILLWAY_K8S_APISERVER_PORT:-36443}"
K8S_CONTROLLER_MANAGER_PORT="${SPILLWAY_K8S_CONTROLLER_MANAGER_PORT:-30257}"
TOXIPROXY_PORT="${SPILLWAY_TOXIPROXY_PORT:-38474}"

# Go (for the control plane build) lives in /usr/local/go on these machines, not always on PATH.
if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then PATH="$PATH:/usr/local/go/bin"; fi

log() { printf '[%s] %s\n' "${SERVICE_NAME:-harness}" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

service_dir() { echo "$SERVICES_DIR/$1"; }

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Fails with a clear message when a port we are about to bind is taken by someone else.
require_port_free() {
  local port=$1 what=$2
  if port_open "$port"; then
    die "port $port ($what) is already in use by another process; set the matching SPILLWAY_*_PORT to move it"
  fi
}

# pid_alive PIDFILE: the pid in the file names a live process.
pid_alive() {
  [[ -f $1 ]] || return 1
  local pid
  pid=$(cat "$1")
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null
}

# wait_until TIMEOUT_SECONDS DESCRIPTION LOGFILE COMMAND...: polls COMMAND every 0.5 s.
wait_until() {
  local timeout=$1 what=$2 logfile=$3
  shift 3
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "error: $what not ready after ${timeout}s; last lines of $logfile:"
      tail -n 40 "$logfile" >&2 2>/dev/null || true
      return 1
    fi
    sleep 0.5
  done
}

# http_ok URL: the URL answers 2xx.
http_ok() { curl -fsS --max-time 2 -o /dev/null "$1"; }

# stop_pid PIDFILE NAME [GRACE]: SIGTERM, wait up to GRACE seconds (30), then SIGKILL;
# removes the pid file.
stop_pid() {
  local pidfile=$1 name=$2 grace=${3:-30}
  if pid_alive "$pidfile"; then
    local pid
    pid=$(cat "$pidfile")
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 $((grace * 2))); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name did not stop in ${grace}s; killing"
      kill -KILL "$pid" 2>/dev/null || true
      # SIGKILL is delivered, not done: until the process is gone its listeners stay open and
      # a start right after finds its own ports taken.
      for _ in $(seq 1 40); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.25
      done
    fi
  fi
  rm -f "$pidfile"
}

# wait_port_closed PORT NAME: after a stop, the port must be free again.
wait_port_closed() {
  local port=$1 name=$2
  for _ in $(seq 1 40); do
    port_open "$port" || return 0
    sleep 0.25
  done
  die "$name still listening on port $port after stop"
}

# reserve_ports: keeps the services' ports inside Linux's ephemeral range (32768-60999) from
# being handed to outgoing connections (kube-apiserver opens many to etcd), so a service that
# restarts mid-test can bind its port again. Needs root; without it, a note and nothing else.
reserve_ports() {
  local file=/proc/sys/net/ipv4/ip_local_reserved_ports ports current
  ports="$RABBITMQ_AMQP_PORT,$RABBITMQ_DIST_PORT,$RABBITMQ_MGMT_PORT,$RABBITMQ_PROM_PORT"
  ports+=",$RABBITMQ_EPMD_PORT,$RABBITMQ_CTL_DIST_PORT,$NATS_PORT,$NATS_MONITOR_PORT"
  ports+=",$PROMETHEUS_PORT,$K8S_ETCD_PORT,$K8S_ETCD_PEER_PORT,$K8S_APISERVER_PORT,$TOXIPROXY_PORT"
  current="$(cat "$file" 2>/dev/null)" || return 0
  if ! { [[ -w $file ]] && echo "${current:+$current,}$ports" >"$file"; } 2>/dev/null; then
    log "note: could not reserve ports $ports from the ephemeral range (not root?)"
  fi
}

# Writes the endpoints every test and tool reads, so ports live in one place.
write_endpoints() {
  mkdir -p "$SERVICES_DIR"
  cat >"$SERVICES_DIR/endpoints.env" <<EOF
SPILLWAY_KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT
SPILLWAY_KAFKA_LOG=$SERVICES_DIR/kafka/kafka.log
SPILLWAY_KAFKA_CLASSPATH=$CACHE_DIR/kafka-$KAFKA_VERSION/libs
SPILLWAY_RABBITMQ_AMQP=amqp://guest:guest@127.0.0.1:$RABBITMQ_AMQP_PORT/%2f
SPILLWAY_RABBITMQ_HTTP=http://guest:guest@127.0.0.1:$RABBITMQ_MGMT_PORT
SPILLWAY_NATS_URL=nats://127.0.0.1:$NATS_PORT
SPILLWAY_NATS_MONITOR=http://127.0.0.1:$NATS_MONITOR_PORT
SPILLWAY_PROMETHEUS_URL=http://127.0.0.1:$PROMETHEUS_PORT
SPILLWAY_K8S_DIR=$SERVICES_DIR/k8s
SPILLWAY_KUBECONFIG=$SERVICES_DIR/k8s/admin.kubeconfig
SPILLWAY_K8S_APISERVER=https://127.0.0.1:$K8S_APISERVER_PORT
SPILLWAY_TOXIPROXY_API=http://127.0.0.1:$TOXIPROXY_PORT
EOF
}
