#!/usr/bin/env bash
# Starts, stops or lists every local service the tests and `make run` need.
# usage: scripts/services.sh up|down|status [service...]   (default: all, k8s and toxiproxy included)
SERVICE_NAME=services
source "$(dirname "$0")/lib.sh"

# The brokers `make run` needs, and the Kubernetes control plane and fault proxy the
# end-to-end tests need.
BROKERS=(kafka rabbitmq nats prometheus)
ALL=("${BROKERS[@]}" k8s toxiproxy)
cmd="${1:-}"
shift || true
services=("$@")
((${#services[@]})) || services=("${ALL[@]}")

case "$cmd" in
up)
  write_endpoints
  reserve_ports
  # Kafka's JVM and RabbitMQ's BEAM take the longest; start them side by side.
  pids=()
  for s in "${services[@]}"; do
    "$REPO_ROOT/scripts/$s.sh" start &
    pids+=($!)
  done
  failed=0
  for p in "${pids[@]}"; do wait "$p" || failed=1; done
  ((failed == 0)) || die "some services failed to start (logs under $SERVICES_DIR)"
  log "all up; endpoints in $SERVICES_DIR/endpoints.env"
  ;;
down)
  failed=0
  for s in "${services[@]}"; do "$REPO_ROOT/scripts/$s.sh" stop || failed=1; done
  ((failed == 0)) || die "some services did not stop cleanly"
  ;;
status)
  for s in "${services[@]}"; do "$REPO_ROOT/scripts/$s.sh" status; done
  ;;
*) die "usage: $0 up|down|status [service...]" ;;
esac
