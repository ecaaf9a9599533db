"""Rewards: the points rule (pure) and the Kafka consumer that applies it."""
