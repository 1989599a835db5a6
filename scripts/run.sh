#!/usr/bin/env bash
# `make run`: starts the local brokers, produces a changing backlog with consumers draining it
# (`spillway loadgen`), and runs `spillway watch` on them: a live table of each backlog and the
# replicas an HPA would choose, until Ctrl-C, which stops everything this script started.
SERVICE_NAME=run
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

cargo build --locked --bin spillway 2>&1 | grep -vE '^\s+(Compiling|Downloaded|Downloading)' >&2
SPILLWAY="$REPO_ROOT/target/debug/spillway"
RUN_DIR="$REPO_ROOT/target/run"
mkdir -p "$RUN_DIR"

started=()
for s in kafka rabbitmq nats prometheus; do
  # Captured first: `grep -q` closing the pipe early would fail a multi-line status under pipefail.
  state=$("scripts/$s.sh" status || true)
  grep -q running <<<"$state" || started+=("$s")
done
loadgens=()
watcher=""
cleanup() {
  trap - EXIT INT TERM
  for pid in $watcher "${loadgens[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait "${loadgens[@]}" 2>/dev/null || true
  if ((${#started[@]})); then scripts/services.sh down "${started[@]}" >&2 || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
scripts/services.sh up kafka rabbitmq nats prometheus

# Production outruns consumption in bursts and ramps, so backlogs rise and fall.
"$SPILLWAY" loadgen --shape burst --rate 200 --consume-rate 45 --period 40 \
  kafka --bootstrap-servers "127.0.0.1:$KAFKA_PORT" --topic demo-orders --partitions 12 --group demo-orders-consumer \
  >"$RUN_DIR/loadgen-kafka.log" 2>&1 &
loadgens+=($!)
"$SPILLWAY" loadgen --shape ramp --rate 80 --consume-rate 25 --period 60 \
  rabbitmq --url "amqp://guest:guest@127.0.0.1:$RABBITMQ_AMQP_PORT/%2f" --queue demo-jobs \
  >"$RUN_DIR/loadgen-rabbitmq.log" 2>&1 &
loadgens+=($!)
"$SPILLWAY" loadgen --shape constant --rate 12 --consume-rate 10 \
  nats --url "nats://127.0.0.1:$NATS_PORT" --stream demo-events --consumer worker \
  >"$RUN_DIR/loadgen-nats.log" 2>&1 &
loadgens+=($!)

cat >"$RUN_DIR/spillway.yaml" <<YAML
# Written by scripts/run.sh: what \`make run\` watches.
pollingInterval: 2
scaledObjects:
  - name: orders-consumer
    maxReplicaCount: 12
    triggers:
      - kafka:
          bootstrapServers: 127.0.0.1:$KAFKA_PORT
          consumerGroup: demo-orders-consumer
          topic: demo-orders
          lagThreshold: 100
  - name: jobs-worker
    maxReplicaCount: 10
    triggers:
      - rabbitmq:
          host: amqp://127.0.0.1:$RABBITMQ_AMQP_PORT/
          queueName: demo-jobs
          mode: QueueLength
          value: 20
  - name: events-worker
    minReplicaCount: 1
    maxReplicaCount: 5
    triggers:
      - natsJetStream:
          natsServerMonitoringEndpoint: 127.0.0.1:$NATS_MONITOR_PORT
          stream: demo-events
          consumer: worker
          lagThreshold: 20
      - cron:
          timezone: Europe/Berlin
          start: "0 8 * * 1-5"
          end: "0 18 * * 1-5"
          desiredReplicas: 2
YAML
log "loadgen logs in $RUN_DIR; config $RUN_DIR/spillway.yaml"
sleep 3 # let the loadgens create their topic, queue and stream
# In the background and waited for, so a signal to this script (not only Ctrl-C to the whole
# terminal group) stops everything at once.
"$SPILLWAY" watch --allow-destinations loopback --config "$RUN_DIR/spillway.yaml" 2>"$RUN_DIR/spillway.log" &
watcher=$!
wait "$watcher"
