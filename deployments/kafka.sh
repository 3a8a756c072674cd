#!/usr/bin/env bash
# deployments/kafka.sh: a real single-node Apache Kafka (KRaft, combined broker+controller) on
# this machine, run from its Maven Central jars (no Docker, no tarball).
#
#   deployments/kafka.sh start    install once, format storage once, start, wait until it answers
#   deployments/kafka.sh stop     stop it (SIGTERM, then SIGKILL after 30 s)
#   deployments/kafka.sh status   exit 0 if it answers on the port
#   deployments/kafka.sh restart
#   deployments/kafka.sh wipe     stop it and delete its data (topics, offsets); the jars stay
#
# Idempotent: jars stay in Maven's own cache (~/.m2); a second start finds the broker running.
# Settings (environment), with defaults:
#   KAFKA_VERSION   4.1.1
#   KAFKA_HOST      127.0.0.1
#   KAFKA_PORT      9092
#   KAFKA_CONTROLLER_PORT 9093
#   KAFKA_HEAP      512m
#   KAFKA_HOME      ${TALLY_CACHE_DIR:-~/.cache/tally}/kafka   (pom, classpath, data, log, pid)
#   KAFKA_START_TIMEOUT_S 120
#   KAFKA_NETWORK_THREADS 3     num.network.threads (Kafka's default)
#   KAFKA_IO_THREADS      8     num.io.threads (Kafka's default)
#   KAFKA_JVM_GC_OPTS     -XX:+UseG1GC   garbage collector flags of the broker's JVM
set -euo pipefail

KAFKA_VERSION=${KAFKA_VERSION:-4.1.1}
KAFKA_HOST=${KAFKA_HOST:-127.0.0.1}
KAFKA_PORT=${KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-9093}
KAFKA_HEAP=${KAFKA_HEAP:-512m}
CACHE=${TALLY_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tally}
KAFKA_HOME=${KAFKA_HOME:-$CACHE/kafka}
KAFKA_START_TIMEOUT_S=${KAFKA_START_TIMEOUT_S:-120}
KAFKA_NETWORK_THREADS=${KAFKA_NETWORK_THREADS:-3}
KAFKA_IO_THREADS=${KAFKA_IO_THREADS:-8}
KAFKA_JVM_GC_OPTS=${KAFKA_JVM_GC_OPTS:--XX:+UseG1GC}
DATA="$KAFKA_HOME/data-$KAFKA_PORT"
PIDFILE="$KAFKA_HOME/kafka-$KAFKA_PORT.pid"
LOG="$KAFKA_HOME/kafka-$KAFKA_PORT.log"
CP_FILE="$KAFKA_HOME/classpath-$KAFKA_VERSION.txt"

log() { echo "kafka: $*" >&2; }

answers() { (exec 3<>"/dev/tcp/$KAFKA_HOST/$KAFKA_PORT") 2>/dev/null; }

running_pid() {
  [ -f "$PIDFILE" ] || return 1
  local pid; pid=$(cat "$PIDFILE")
  kill -0 "$pid" 2>/dev/null && echo "$pid"
}

install() {
  mkdir -p "$KAFKA_HOME"
  [ -s "$CP_FILE" ] && return 0
  command -v java >/dev/null || { log "java is required (apt-get install openjdk-17-jre-headless)"; exit 1; }
  command -v mvn >/dev/null || { log "mvn is required (apt-get install maven)"; exit 1; }
  log "resolving org.apache.kafka:kafka_2.13:$KAFKA_VERSION from Maven Central ..."
  cat > "$KAFKA_HOME/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>tally</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>2.24.3</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>2.24.3</version></dependency>
  </dependencies>
</project>
POM
  mvn -q -B -f "$KAFKA_HOME/pom.xml" dependency:build-classpath \
    -Dmdep.includeScope=runtime -Dmdep.outputFile="$CP_FILE.tmp" >"$KAFKA_HOME/mvn.log" 2>&1 \
    || { log "maven failed; see $KAFKA_HOME/mvn.log"; tail -20 "$KAFKA_HOME/mvn.log" >&2; exit 1; }
  mv "$CP_FILE.tmp" "$CP_FILE"
}

configure() {
  cat > "$KAFKA_HOME/server-$KAFKA_PORT.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$DATA
num.partitions=4
default.replication.factor=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
min.insync.replicas=1
auto.create.topics.enable=true
group.initial.rebalance.delay.ms=0
log.retention.hours=168
log.cleaner.enable=true
num.network.threads=$KAFKA_NETWORK_THREADS
num.io.threads=$KAFKA_IO_THREADS
PROPS
  cat > "$KAFKA_HOME/log4j2.properties" <<'L4J'
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = STDOUT
logger.raft.name = kafka.server.KafkaRaftServer
logger.raft.level = INFO
logger.broker.name = kafka.server.BrokerServer
logger.broker.level = INFO
L4J
}

java_run() {
  # shellcheck disable=SC2086 # KAFKA_JVM_GC_OPTS is a list of flags
  java -Xmx"$KAFKA_HEAP" -Xms"$KAFKA_HEAP" $KAFKA_JVM_GC_OPTS -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$KAFKA_HOME/log4j2.properties" \
    -cp "$(cat "$CP_FILE")" "$@"
}

start() {
  if answers; then log "already running on $KAFKA_HOST:$KAFKA_PORT"; return 0; fi
  install
  configure
  if [ ! -f "$DATA/meta.properties" ]; then
    log "formatting KRaft storage in $DATA"
    java_run kafka.tools.StorageTool format -t "$(java_run kafka.tools.StorageTool random-uuid)" \
      -c "$KAFKA_HOME/server-$KAFKA_PORT.properties" >>"$LOG" 2>&1 \
      || { log "format failed; see $LOG"; tail -20 "$LOG" >&2; exit 1; }
  fi
  log "starting Apache Kafka $KAFKA_VERSION on $KAFKA_HOST:$KAFKA_PORT (log: $LOG)"
  nohup bash -c "$(declare -f java_run); CP_FILE='$CP_FILE' KAFKA_HOME='$KAFKA_HOME' KAFKA_HEAP='$KAFKA_HEAP' KAFKA_JVM_GC_OPTS='$KAFKA_JVM_GC_OPTS' java_run kafka.Kafka '$KAFKA_HOME/server-$KAFKA_PORT.properties'" \
    >>"$LOG" 2>&1 </dev/null &
  echo $! > "$PIDFILE"
  local waited=0
  until answers; do
    if ! running_pid >/dev/null; then log "broker exited; see $LOG"; tail -30 "$LOG" >&2; exit 1; fi
    [ "$waited" -ge "$KAFKA_START_TIMEOUT_S" ] && { log "no answer after ${waited}s; see $LOG"; exit 1; }
    sleep 1; waited=$((waited + 1))
  done
  log "ready after ${waited}s"
}

stop() {
  local pid
  if pid=$(running_pid); then
    log "stopping pid $pid"
    pkill -TERM -P "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do
      pgrep -f "kafka.Kafka $KAFKA_HOME/server-$KAFKA_PORT.properties" >/dev/null || break
      sleep 1
    done
    pkill -KILL -f "kafka.Kafka $KAFKA_HOME/server-$KAFKA_PORT.properties" 2>/dev/null || true
    rm -f "$PIDFILE"
  else
    pkill -TERM -f "kafka.Kafka $KAFKA_HOME/server-$KAFKA_PORT.properties" 2>/dev/null || true
    log "not running"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  wipe) stop; rm -rf "$DATA"; log "data removed: $DATA" ;;
  status) if answers; then log "running on $KAFKA_HOST:$KAFKA_PORT"; else log "not running"; exit 1; fi ;;
  install) install ;;
  *) echo "usage: $0 start|stop|restart|status|wipe|install" >&2; exit 2 ;;
esac
