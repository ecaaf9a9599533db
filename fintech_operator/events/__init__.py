"""Events: the wire contract, the topics, the outbox relay to Kafka, and the collector of
outbox backlog and consumer lag."""
