#!/usr/bin/env bash
# Run a single-node Apache Kafka broker (KRaft, broker+controller in one JVM) for development and
# tests, from the jars on Maven Central (deploy/kafka/pom.xml pins the version; ~/.m2 caches them).
#
#   deploy/kafka-local.sh start DIR   start (or find) the broker kept in DIR; the LAST stdout line is
#                                     its bootstrap address, 127.0.0.1:PORT (progress goes to stderr)
#   deploy/kafka-local.sh stop DIR    stop it (SIGTERM, then SIGKILL after a deadline); DIR stays
#
# DIR holds server.properties, log4j2.properties, data/ (the log dirs), kafka.log and kafka.pid.
# Starting a stopped DIR again reuses its configuration, ports and data.
# Needs java (17+), mvn and python3 on PATH. Environment: KAFKA_HEAP_OPTS (default -Xmx512m -Xms256m),
# KAFKA_JVM_OPTS (default: C1 only and the serial GC, which halve start-up on a busy 2-core machine),
# KAFKA_START_TIMEOUT_S (default 120), KAFKA_STOP_TIMEOUT_S (default 30).
# KAFKA_SSL_DIR (first start only): a folder with server.pem (the broker's unencrypted PKCS#8 key and
# certificate chain) and ca.pem; the broker then also listens with SSL and with SASL_SSL (mechanism
# PLAIN, user "winnow", password KAFKA_SASL_PASSWORD), on the ports server.properties names.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
POM="$HERE/kafka/pom.xml"
read -r -a JVM_OPTS <<<"${KAFKA_HEAP_OPTS:--Xmx512m -Xms256m} ${KAFKA_JVM_OPTS:--XX:TieredStopAtLevel=1 -XX:+UseSerialGC}"

log() { echo "kafka-local: $*" >&2; }
die() { log "$*"; exit 1; }

usage() { die "usage: $0 start|stop DIR"; }

pid_alive() { # DIR -> 0 when DIR/kafka.pid names a live Kafka process
  local pid
  [[ -f "$1/kafka.pid" ]] || return 1
  pid="$(cat "$1/kafka.pid")"
  [[ -n "$pid" ]] && ps -ww -p "$pid" -o args= 2>/dev/null | grep -q 'kafka\.Kafka'
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

broker_port() { sed -n 's#^listeners=PLAINTEXT://127.0.0.1:\([0-9]*\),.*#\1#p' "$1/server.properties"; }

classpath() { # DIR -> writes DIR/classpath.txt from the pinned pom (offline first: ~/.m2 cache)
  local out="$1/classpath.txt" args=(-B -q -f "$POM" dependency:build-classpath
    "-Dmdep.outputFile=$1/classpath.txt" -Dmdep.includeScope=runtime)
  if ! mvn -o "${args[@]}" >"$1/maven.log" 2>&1; then
    log "fetching Kafka jars from Maven Central (first run)"
    mvn "${args[@]}" >"$1/maven.log" 2>&1 || { tail -n 30 "$1/maven.log" >&2; die "maven failed"; }
  fi
  [[ -s "$out" ]] || die "maven wrote no class path to $out"
}

write_config() { # DIR -> server.properties and log4j2.properties (first start only)
  local dir="$1" port ctrl
  port="$(free_port)"
  ctrl="$(free_port)"
  while [[ "$ctrl" == "$port" ]]; do ctrl="$(free_port)"; done
  local listeners="PLAINTEXT://127.0.0.1:$port" map="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT" tls=""
  if [[ -n "${KAFKA_SSL_DIR:-}" ]]; then
    local ssl sasl
    ssl="$(free_port)"
    sasl="$(free_port)"
    [[ -f "$KAFKA_SSL_DIR/server.pem" && -f "$KAFKA_SSL_DIR/ca.pem" ]] || die "KAFKA_SSL_DIR needs server.pem and ca.pem"
    [[ -n "${KAFKA_SASL_PASSWORD:-}" ]] || die "KAFKA_SSL_DIR needs KAFKA_SASL_PASSWORD"
    listeners="$listeners,SSL://127.0.0.1:$ssl,SASL_SSL://127.0.0.1:$sasl"
    map="$map,SSL:SSL,SASL_SSL:SASL_SSL"
    tls="ssl.keystore.type=PEM
ssl.keystore.location=$KAFKA_SSL_DIR/server.pem
ssl.truststore.type=PEM
ssl.truststore.location=$KAFKA_SSL_DIR/ca.pem
sasl.enabled.mechanisms=PLAIN
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username=\"winnow\" password=\"$KAFKA_SASL_PASSWORD\" user_winnow=\"$KAFKA_SASL_PASSWORD\";"
  fi
  cat >"$dir/server.properties" <<EOF
listeners=$listeners,CONTROLLER://127.0.0.1:$ctrl
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$ctrl
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
advertised.listeners=$listeners
listener.security.protocol.map=$map
$tls
log.dirs=$dir/data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000
EOF
  cat >"$dir/log4j2.properties" <<'EOF'
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = out
logger.clients.name = org.apache.kafka.clients
logger.clients.level = warn
EOF
}

start() {
  local dir="$1" cp port pid deadline
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  if pid_alive "$dir"; then
    port="$(broker_port "$dir")"
    port_open "$port" || die "broker in $dir (pid $(cat "$dir/kafka.pid")) does not answer on $port"
    log "already running in $dir"
    echo "127.0.0.1:$port"
    return
  fi
  command -v java >/dev/null || die "java not found (Kafka 4 needs Java 17+)"
  command -v mvn >/dev/null || die "mvn not found"
  classpath "$dir"
  cp="$(cat "$dir/classpath.txt")"
  [[ -f "$dir/server.properties" ]] || write_config "$dir"
  port="$(broker_port "$dir")"
  port_open "$port" && die "port $port (from $dir/server.properties) is taken by another process"
  if [[ ! -f "$dir/data/meta.properties" ]]; then
    local cluster_id="-"
    while [[ "$cluster_id" == -* ]]; do # like Kafka's Uuid.randomUuid: a leading '-' reads as a flag
      cluster_id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"
    done
    log "formatting $dir/data (cluster $cluster_id)"
    java "${JVM_OPTS[@]}" -cp "$cp" "-Dlog4j2.configurationFile=$dir/log4j2.properties" kafka.tools.StorageTool \
      format -t "$cluster_id" -c "$dir/server.properties" >"$dir/format.log" 2>&1 \
      || { cat "$dir/format.log" >&2; die "storage format failed"; }
  fi
  log "starting broker on 127.0.0.1:$port (log: $dir/kafka.log)"
  nohup java "${JVM_OPTS[@]}" -Djava.awt.headless=true "-Dlog4j2.configurationFile=$dir/log4j2.properties" -cp "$cp" \
    kafka.Kafka "$dir/server.properties" >"$dir/kafka.log" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$dir/kafka.pid"
  deadline=$((SECONDS + ${KAFKA_START_TIMEOUT_S:-120}))
  until port_open "$port" && grep -q "Kafka Server started" "$dir/kafka.log"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 40 "$dir/kafka.log" >&2
      die "broker exited during start-up"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 40 "$dir/kafka.log" >&2
      stop "$dir"
      die "broker did not start within ${KAFKA_START_TIMEOUT_S:-120} s"
    fi
    sleep 0.2
  done
  log "started (pid $pid)"
  echo "127.0.0.1:$port"
}

stop() {
  local dir="$1" pid deadline
  if ! pid_alive "$dir"; then
    log "no broker running in $dir"
    rm -f "$dir/kafka.pid"
    return
  fi
  pid="$(cat "$dir/kafka.pid")"
  kill -TERM "$pid"
  deadline=$((SECONDS + ${KAFKA_STOP_TIMEOUT_S:-30}))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      log "pid $pid ignored SIGTERM for ${KAFKA_STOP_TIMEOUT_S:-30} s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  rm -f "$dir/kafka.pid"
  log "stopped (pid $pid)"
}

[[ $# -eq 2 ]] || usage
case "$1" in
  start) start "$2" ;;
  stop) stop "$2" ;;
  *) usage ;;
esac
