#!/bin/sh
# Kafka's own launcher, reduced to what the image contract needs: the class path of every jar,
# KAFKA_HEAP_OPTS (default 256M), KAFKA_JVM_PERFORMANCE_OPTS, KAFKA_OPTS, and LOG_DIR for logs.
set -eu
class="$1"
shift
: "${LOG_DIR:=/opt/kafka/logs}"
: "${KAFKA_HEAP_OPTS:=-Xmx256M}"
: "${KAFKA_JVM_PERFORMANCE_OPTS:=-server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true}"
: "${KAFKA_LOG4J_OPTS:=-Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties}"
export LOG_DIR
# shellcheck disable=SC2086
exec java $KAFKA_HEAP_OPTS $KAFKA_JVM_PERFORMANCE_OPTS $KAFKA_LOG4J_OPTS ${KAFKA_OPTS:-} \
  -Dkafka.logs.dir="$LOG_DIR" -cp "/opt/kafka/libs/*" "$class" "$@"
