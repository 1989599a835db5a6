#!/usr/bin/env bash
# Apache Kafka 4.x, one KRaft node (broker + controller), from Maven Central jars on Java 17.
# usage: scripts/kafka.sh install|start|stop|status
SERVICE_NAME=kafka
source "$(dirname "$0")/lib.sh"

DIR="$(service_dir kafka)"
LIBS="$CACHE_DIR/kafka-$KAFKA_VERSION/libs"
PIDFILE="$DIR/kafka.pid"
LOGFILE="$DIR/kafka.log"
JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"

install() {
  [[ -f $LIBS/.complete ]] && return 0
  command -v mvn >/dev/null || die "mvn not found; run scripts/install-deps.sh"
  log "resolving Kafka $KAFKA_VERSION jars from Maven Central into $LIBS"
  rm -rf "$LIBS"
  mkdir -p "$CACHE_DIR"
  mvn -q -B -Dstyle.color=never -f "$REPO_ROOT/scripts/kafka/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$LIBS" >"$CACHE_DIR/kafka-$KAFKA_VERSION.mvn.log" 2>&1 ||
    die "mvn could not resolve Kafka $KAFKA_VERSION"
  touch "$LIBS/.complete"
}

kafka_java() {
  "$JAVA" -Xms128m -Xmx512m -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$DIR/log4j2.properties" -cp "$LIBS/*" "$@"
}

write_config() {
  mkdir -p "$DIR/data"
  cat >"$DIR/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$DIR/data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
group.consumer.min.session.timeout.ms=1000
group.classic.min.session.timeout.ms=1000
auto.create.topics.enable=false
delete.topic.enable=true
# A deleted topic's files are closed after 1 s, not 60: the process may hold 20,000 files, and
# a bench that deletes 10,000 partitions and creates 10,000 more would otherwise fail the log
# dir (Kafka then stops serving every partition).
file.delete.delay.ms=1000
EOF
  cat >"$DIR/log4j2.properties" <<EOF
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
EOF
}

started() { port_open "$KAFKA_PORT" && grep -q 'Kafka Server started' "$LOGFILE"; }

start() {
  install
  if pid_alive "$PIDFILE"; then
    log "already running (pid $(cat "$PIDFILE")) on 127.0.0.1:$KAFKA_PORT"
    return 0
  fi
  command -v "$JAVA" >/dev/null || die "java not found; run scripts/install-deps.sh"
  require_port_free "$KAFKA_PORT" "Kafka broker"
  require_port_free "$KAFKA_CONTROLLER_PORT" "Kafka controller"
  write_config
  if [[ ! -f $DIR/data/meta.properties ]]; then
    local cluster_id
    cluster_id=$(kafka_java kafka.tools.StorageTool random-uuid 2>>"$DIR/format.log" | tail -n 1)
    [[ -n $cluster_id ]] || die "StorageTool random-uuid printed nothing; see $DIR/format.log"
    kafka_java kafka.tools.StorageTool format -t "$cluster_id" -c "$DIR/server.properties" \
      >>"$DIR/format.log" 2>&1 || die "formatting the KRaft log dir failed; see $DIR/format.log"
  fi
  log "starting Kafka $KAFKA_VERSION on 127.0.0.1:$KAFKA_PORT (log: $LOGFILE)"
  : >"$LOGFILE"
  nohup "$JAVA" -Xms128m -Xmx512m -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$DIR/log4j2.properties" -cp "$LIBS/*" \
    kafka.Kafka "$DIR/server.properties" >>"$LOGFILE" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  wait_until "${SPILLWAY_START_TIMEOUT:-90}" "Kafka" "$LOGFILE" started ||
    die "Kafka did not start; full log in $LOGFILE"
  log "ready: $(grep -o 'Kafka version: [^ ]*' "$LOGFILE" | head -n 1)"
}

stop() {
  stop_pid "$PIDFILE" kafka
  wait_port_closed "$KAFKA_PORT" kafka
  wait_port_closed "$KAFKA_CONTROLLER_PORT" "kafka controller"
}

status() {
  if pid_alive "$PIDFILE"; then echo "kafka: running, bootstrap 127.0.0.1:$KAFKA_PORT"; else echo "kafka: stopped"; fi
}

case "${1:-}" in
install | start | stop | status) "$1" ;;
*) die "usage: $0 install|start|stop|status" ;;
esac
