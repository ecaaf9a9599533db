"""The relay's pure parts: rows to records, partitioning, grouping, backoff, topic names."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner

from fintech_operator.events import kafka, relay, topics

EVENT_ID = "00000000-0000-4000-8000-000000000001"


def payload(journal_id: Any = None) -> dict[str, Any]:
    return {"specversion": "1.0", "id": EVENT_ID, "data": {"journalId": journal_id, "x": 1}}


def test_the_journal_placeholder_is_filled_from_the_row() -> None:
    """A null data.journalId becomes the row's journal id; the rest is unchanged."""
    message = relay.to_message(
        relay.OutboxRow(5, EVENT_ID, "postings", "ns/card", payload(), {}, 42), ""
    )
    body = json.loads(message.value)
    assert body["data"] == {"journalId": 42, "x": 1}
    assert (message.row_id, message.topic, message.key) == (5, "postings", b"ns/card")


def test_a_payload_without_placeholder_is_published_as_written() -> None:
    """Events with no journalId placeholder (or one already set) are never rewritten."""
    written = {"specversion": "1.0", "data": {"journalId": 9}}
    message = relay.to_message(relay.OutboxRow(1, EVENT_ID, "cards", None, written, {}, 42), "")
    assert json.loads(message.value) == written
    plain = relay.to_message(
        relay.OutboxRow(1, EVENT_ID, "cards", None, {"data": {"a": 1}}, {}, None), ""
    )
    assert json.loads(plain.value) == {"data": {"a": 1}}


def test_a_placeholder_without_a_journal_is_an_error() -> None:
    """A row that asks for a journal id but was written without a journal stops the relay."""
    with pytest.raises(relay.RelayError, match="journal id"):
        relay.to_message(relay.OutboxRow(3, EVENT_ID, "postings", "k", payload(), {}, None), "")


def test_records_carry_cloudevents_and_outbox_headers_and_the_prefix() -> None:
    """Headers: event-id, the CloudEvents content type, then the row's own (trace context)."""
    message = relay.to_message(
        relay.OutboxRow(1, EVENT_ID, "postings", "k", payload(), {"traceparent": "00-ab-cd-01"}, 1),
        "env1.",
    )
    assert message.topic == "env1.postings"
    assert message.headers == (
        ("event-id", EVENT_ID.encode()),
        ("content-type", b"application/cloudevents+json; charset=utf-8"),
        ("traceparent", b"00-ab-cd-01"),
    )


@pytest.mark.parametrize("key", [b"ns/alice", b"ns/bob", b"", "ns/\u00e9".encode(), b"x" * 300])
@pytest.mark.parametrize("count", [1, 3, 7, 12])
def test_partitioning_agrees_with_kafkas_default_partitioner(key: bytes, count: int) -> None:
    """The relay picks the partition Kafka's own clients would pick for the same key."""
    partitions = list(range(count))
    expected = DefaultPartitioner()(key, partitions, partitions)
    assert relay.partition_for(key, 0, partitions) == expected


def test_keyless_rows_spread_deterministically_and_no_partitions_is_an_error() -> None:
    """A row without key goes by row id; a topic without partitions is refused."""
    assert [relay.partition_for(None, i, [0, 1, 2]) for i in range(4)] == [0, 1, 2, 0]
    with pytest.raises(relay.RelayError):
        relay.partition_for(b"k", 0, [])


def test_grouping_keeps_each_partitions_order() -> None:
    """Rows are grouped per (topic, partition) in the order they were claimed."""
    rows = [
        relay.to_message(
            relay.OutboxRow(i, EVENT_ID, "postings", f"ns/card-{i % 3}", payload(), {}, i), ""
        )
        for i in range(1, 31)
    ]
    groups = relay.group_by_partition(rows, {"postings": [0, 1, 2, 3]})
    assert sum(len(group) for group in groups.values()) == 30
    for (topic, partition), group in groups.items():
        assert topic == "postings"
        ids = [message.row_id for message in group]
        assert ids == sorted(ids)
        assert {relay.partition_for(m.key, m.row_id, [0, 1, 2, 3]) for m in group} == {partition}


def test_backoff_doubles_and_is_capped() -> None:
    """Consecutive failures wait 0.25, 0.5, 1, 2 ... seconds, never more than the cap."""
    waits = [relay.backoff_seconds(n, 10.0) for n in range(0, 10)]
    assert waits[:6] == [0.0, 0.25, 0.5, 1.0, 2.0, 4.0]
    assert max(waits) == 10.0
    assert relay.backoff_seconds(10_000, 3.0) == 3.0


def test_topic_names_and_dead_letter_topics() -> None:
    """Five domain topics, one DLQ per consumer and topic, prefixed names on the wire."""
    assert topics.SOURCES == ("cards", "postings", "compliance", "recon", "authorizations")
    assert topics.dead_letter("postings", "rewards") == "postings.rewards.dlq"
    assert set(topics.DEAD_LETTER) == {
        "postings.rewards.dlq",
        "authorizations.rewards.dlq",
        "authorizations.notifier.dlq",
        "cards.notifier.dlq",
        "postings.notifier.dlq",
        "compliance.notifier.dlq",
        "recon.notifier.dlq",
    }
    assert topics.qualified("postings", "t1.") == "t1.postings"
    assert topics.bare("t1.postings", "t1.") == "postings"


@pytest.mark.parametrize(("name", "prefix"), [("postings", "bad prefix "), ("", ""), (".", "")])
def test_illegal_topic_names_are_refused(name: str, prefix: str) -> None:
    """Names Kafka would refuse fail here, with the name in the message."""
    with pytest.raises(ValueError, match="topic"):
        topics.qualified(name, prefix)


def test_bare_refuses_a_foreign_topic() -> None:
    """A topic outside our prefix is not ours to map back."""
    with pytest.raises(ValueError, match="prefix"):
        topics.bare("other.postings", "t1.")


def test_min_insync_replicas_tolerates_one_broker_loss() -> None:
    """With three or more replicas two must ack; with fewer, one (a single node works)."""
    assert [kafka.min_insync_replicas(n) for n in (1, 2, 3, 5)] == [1, 1, 2, 2]


def test_created_topic_errors_other_than_exists_are_raised() -> None:
    """Topic creation tolerates 'already exists' (a racing replica) and reports the rest."""
    kafka._check_created([("a", 0, None), ("b", 36, "exists")])
    with pytest.raises(kafka.TopicCreationError, match="c: error 38"):
        kafka._check_created([("c", 38, "replication factor larger than brokers")])
