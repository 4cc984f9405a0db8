#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft) on loopback, from Maven Central jars.
#   scripts/kafka.sh fetch | up | down | status | reset
#   scripts/kafka.sh cluster-up | cluster-down   a three-node KRaft cluster on free loopback ports
#     (devtools/kafka_nodes.py; cluster-up prints its bootstrap), state in $FACESTREAM_HOME/kafka-cluster
# Jars live under $FACESTREAM_HOME (default .facestream/) in kafka-lib/; the broker's state (log
# directory kafka-data/, kafka.pid, kafka.log) under $FACESTREAM_KAFKA_STATE (default the same), so a
# second broker on other ports can share the jars.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
home=${FACESTREAM_HOME:-$root/.facestream}
# Ports: the same settings the clients read (`facestream kafka up` passes them from the settings
# file too): the port of FACESTREAM_KAFKA_BOOTSTRAP (127.0.0.1:PORT) and FACESTREAM_KAFKA_CONTROLLER_PORT.
bootstrap=${FACESTREAM_KAFKA_BOOTSTRAP:-127.0.0.1:9092}
port=${FACESTREAM_KAFKA_PORT:-${bootstrap##*:}}
ctl_port=${FACESTREAM_KAFKA_CONTROLLER_PORT:-9093}
state=${FACESTREAM_KAFKA_STATE:-$home}
lib=$home/kafka-lib
data=$state/kafka-data
pidfile=$state/kafka.pid
logfile=$state/kafka.log
mkdir -p "$home" "$state"

fetch() {
  if [ -f "$lib/.complete" ]; then return 0; fi
  echo "kafka: resolving broker jars from Maven Central" >&2
  rm -rf "$lib"
  # Maven's output is shown only when it fails: a quiet run still prints bare colour codes.
  local out
  if ! out=$(mvn -q -B -Dstyle.color=never -f "$root/kafka/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$lib" -DincludeScope=runtime 2>&1); then
    printf '%s\n' "$out" >&2
    echo "kafka: resolving the broker jars failed (output above)" >&2
    exit 1
  fi
  echo "kafka: $(ls "$lib" | wc -l) jars in $lib" >&2
  touch "$lib/.complete"
}

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

answers() { (exec 3<>"/dev/tcp/127.0.0.1/${1:-$port}") 2>/dev/null; }
# Another checkout's broker (or any process) on our ports: used as it is, never stopped from here.
foreign() { ! running && answers; }
other_ports="to run a broker of this checkout's own, choose free ports, e.g. FACESTREAM_KAFKA_BOOTSTRAP=127.0.0.1:19092 FACESTREAM_KAFKA_CONTROLLER_PORT=19093"

write_config() {
  cat > "$state/server.properties" <<CONF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$ctl_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$ctl_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
message.max.bytes=16777216
CONF
}

# The JIT's first tier only (FACESTREAM_KAFKA_JVM_OPTS replaces it, set empty for the JVM's default):
# the optimising tier spent 10-16 s of CPU compiling in a fresh broker's first pipeline run and still
# 1-2 s in the sixth, while the broker's own CPU per probe was no lower with it (README, Throughput). This broker is for development, tests and benches on small machines.
jvm_opts=(-Xms256m -Xmx1g -XX:+UseG1GC ${FACESTREAM_KAFKA_JVM_OPTS--XX:TieredStopAtLevel=1} -Djava.awt.headless=true
  -Dlog4j2.configurationFile="$root/kafka/log4j2.yaml")
java_run() {
  java "${jvm_opts[@]}" -cp "$lib/*" "$@"
}

up() {
  fetch
  if running && answers; then echo "kafka: already running on 127.0.0.1:$port (pid $(cat "$pidfile"))"; return 0; fi
  if foreign; then
    echo "kafka: 127.0.0.1:$port answers, but not from a broker this checkout started: using it ($other_ports)"
    return 0
  fi
  if answers "$ctl_port"; then
    echo "kafka: controller port 127.0.0.1:$ctl_port is taken by another process; $other_ports" >&2; exit 1
  fi
  write_config
  if [ ! -f "$data/meta.properties" ]; then
    mkdir -p "$data"
    java_run kafka.tools.StorageTool format -t "$(java_run kafka.tools.StorageTool random-uuid)" \
      -c "$state/server.properties" >"$state/format.log" 2>&1 || { cat "$state/format.log" >&2; exit 1; }
  fi
  nohup java "${jvm_opts[@]}" -cp "$lib/*" kafka.Kafka "$state/server.properties" >"$logfile" 2>&1 &
  echo $! > "$pidfile"
  for _ in $(seq 1 120); do
    if answers; then echo "kafka: up on 127.0.0.1:$port (pid $(cat "$pidfile"))"; return 0; fi
    if ! running; then echo "kafka: broker exited; see $logfile" >&2; tail -n 30 "$logfile" >&2; exit 1; fi
    sleep 0.5
  done
  echo "kafka: broker did not answer within 60 s; see $logfile" >&2; exit 1
}

down() {
  if foreign; then echo "kafka: the broker on 127.0.0.1:$port was not started from this checkout: left running"; return 0; fi
  if ! running; then echo "kafka: not running"; rm -f "$pidfile"; return 0; fi
  pid=$(cat "$pidfile"); kill "$pid"
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; echo "kafka: stopped"; return 0; }; sleep 0.5; done
  kill -9 "$pid" 2>/dev/null || true; rm -f "$pidfile"; echo "kafka: killed after 30 s"
}

status() {
  if running && answers; then echo "kafka: running on 127.0.0.1:$port (pid $(cat "$pidfile"))"; return 0; fi
  if foreign; then echo "kafka: a broker not started from this checkout answers on 127.0.0.1:$port"; return 0; fi
  echo "kafka: not running"; return 3
}

case "${1:-}" in
  fetch) fetch ;;
  up) up ;;
  down) down ;;
  status) status ;;
  reset) down; rm -rf "$data" ;;
  cluster-up) fetch; cd "$root" && exec .venv/bin/python -m devtools.kafka_nodes up --dir "$home/kafka-cluster" ;;
  cluster-down) cd "$root" && exec .venv/bin/python -m devtools.kafka_nodes down --dir "$home/kafka-cluster" ;;
  *) echo "usage: $0 fetch|up|down|status|reset|cluster-up|cluster-down" >&2; exit 2 ;;
esac
