#!/bin/sh
# As upstream: `kafka-server-start.sh server.properties`, 1G heap unless KAFKA_HEAP_OPTS says.
: "${KAFKA_HEAP_OPTS:=-Xmx1G -Xms1G}"
export KAFKA_HEAP_OPTS
exec /opt/kafka/bin/kafka-run-class.sh kafka.Kafka "$@"
