"""Events: the wire contract, the topics, and the outbox relay to Kafka."""
