"""events/consuming.py: the scaffolding the rewards consumer and the notifier share.

Pure: the Kafka clients are built but never started, and the polls, commits and sends go to
small stand-ins. The real broker's side is proven by tests/integration/test_rewards_consumer.py,
test_notifier.py and test_kafka_security.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, KafkaConnectionError

from fintech_operator import config
from fintech_operator.events import consuming, deadletter, topics
from fintech_operator.notify import service
from fintech_operator.rewards import consumer as rewards
from tests.unit.test_rewards_plan import Record

BASE = {"DATABASE_URL": "postgresql://x@127.0.0.1/db", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9093"}


class Polls:
    """A consumer whose polls answer from a script, setting ``stop`` when it runs out."""

    def __init__(self, script: list[dict[str, list[Record]]], stop: asyncio.Event) -> None:
        self._script: Iterator[dict[str, list[Record]]] = iter(script)
        self._stop = stop
        self.calls: list[tuple[int, int]] = []

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[str, list[Record]]:
        self.calls.append((timeout_ms, max_records))
        answer = next(self._script, None)
        if answer is None:
            self._stop.set()
            return {}
        return answer


class Commits:
    """A consumer whose commit raises ``error`` (or succeeds when it is None)."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error
        self.commits = 0

    async def commit(self) -> None:
        self.commits += 1
        if self.error is not None:
            raise self.error


class Sends:
    """A producer that records what it is asked to send and acknowledges it at once."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    async def send(self, topic: str, **kwargs: Any) -> asyncio.Future[None]:
        self.sent.append((topic, kwargs))
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        ack.set_result(None)
        return ack


async def test_new_consumer_states_every_delivery_option() -> None:
    """Manual commits, earliest reset, read_committed, the stated group timeouts, prefixed
    topics and the security options of events/kafka.py: nothing left to aiokafka's defaults."""
    settings = config.load({**BASE, "FINTECH_TOPIC_PREFIX": "t1."})
    made = consuming.new_consumer(settings, "g", ["postings", "cards"], max_poll_records=7)
    try:
        assert made.subscription() == {"t1.postings", "t1.cards"}
        assert made._group_id == "g"
        assert made._enable_auto_commit is False
        assert made._auto_offset_reset == "earliest"
        assert made._isolation_level == "read_committed"
        assert made._max_poll_records == 7
        assert made._session_timeout_ms == consuming.SESSION_TIMEOUT_MS
        assert made._heartbeat_interval_ms == consuming.HEARTBEAT_INTERVAL_MS
        assert made._max_poll_interval_ms == consuming.POLL_INTERVAL_MS_MAX
        assert made._fetch_max_wait_ms == consuming.FETCH_MAX_WAIT_MS
        assert made._client._bootstrap_servers == "127.0.0.1:9093"
        assert made._client._request_timeout_ms == settings.kafka.request_timeout_ms
    finally:
        await made.stop()


async def test_each_consumer_reads_its_own_topics_in_its_own_batch_size() -> None:
    """Rewards reads postings and authorizations (captures earn) in FINTECH_CONSUMER_BATCH_SIZE;
    the notifier every source topic in ROUTE_BATCH_MAX, both through the shared factory."""
    settings = config.load({**BASE, "FINTECH_CONSUMER_BATCH_SIZE": "42"})
    reader = rewards.new_consumer(settings, "r")
    router = service.new_consumer(settings, "n")
    try:
        assert reader.subscription() == {topics.POSTINGS, topics.AUTHORIZATIONS}
        assert reader._max_poll_records == 42
        assert router.subscription() == set(topics.SOURCES)
        assert router._max_poll_records == service.ROUTE_BATCH_MAX
    finally:
        await reader.stop()
        await router.stop()


@pytest.mark.parametrize(
    ("bare", "max_poll_records", "says"),
    [
        ([], 10, "at least one topic"),
        (["postings"], 0, "max_poll_records must be at least 1, got 0"),
        (["postings"], -5, "got -5"),
    ],
)
def test_new_consumer_refuses_bad_limits(bare: list[str], max_poll_records: int, says: str) -> None:
    """No topic or a batch size below 1 fails when the consumer is built, saying which."""
    settings = config.load(BASE)
    with pytest.raises(ValueError, match=says):
        consuming.new_consumer(settings, "g", bare, max_poll_records=max_poll_records)


def test_new_consumer_refuses_a_topic_kafka_would_refuse() -> None:
    """A topic name is checked by topics.qualified before any client exists."""
    with pytest.raises(ValueError, match="invalid Kafka topic name 'no spaces/here'"):
        consuming.new_consumer(config.load(BASE), "g", ["no spaces/here"], max_poll_records=1)


async def test_batches_flatten_partitions_skip_empty_polls_and_end_on_stop() -> None:
    """Each non-empty poll is one batch of all its partitions' records, in order; empty
    polls yield nothing; the loop ends once ``stop`` is set; every poll is bounded."""
    stop = asyncio.Event()
    a, b, c = Record(b"a"), Record(b"b", partition=1), Record(b"c")
    polls = Polls([{"p0": [a], "p1": [b]}, {}, {"p0": [c]}], stop)
    got = [batch async for batch in consuming.batches(polls, stop, records_max=3)]  # type: ignore[arg-type]
    assert got == [[a, b], [c]]
    assert polls.calls == [(consuming.POLL_TIMEOUT_MS, 3)] * 4
    assert stop.is_set()


async def test_batches_do_not_poll_once_stopped() -> None:
    """A stop set before the first poll means no poll at all (no record is taken)."""
    stop = asyncio.Event()
    stop.set()
    polls = Polls([{"p0": [Record(b"a")]}], stop)
    assert [batch async for batch in consuming.batches(polls, stop, records_max=1)] == []  # type: ignore[arg-type]
    assert polls.calls == []


@pytest.mark.parametrize(
    ("error", "logged"),
    [
        # The partition's new owner gets the records again.
        (CommitFailedError("rebalanced"), "offset commit refused after a rebalance: "),
        # A broker error: the line says what the redelivery means for this consumer.
        (KafkaConnectionError("gone"), "offset commit failed; the batch will be redelivered"),
    ],
)
async def test_a_failed_commit_is_logged_not_raised(
    error: BaseException, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A commit Kafka refuses only means a redelivery: one log line, no exception."""
    commits = Commits(error)
    with caplog.at_level(logging.WARNING, logger=consuming.__name__):
        await consuming.commit(commits, on_failure="the batch will be redelivered")  # type: ignore[arg-type]
    assert commits.commits == 1
    assert logged in caplog.text


class Assigned:
    """A consumer assigned ``partitions`` that records the offsets it is asked to commit."""

    def __init__(self, partitions: set[TopicPartition]) -> None:
        self.partitions = partitions
        self.committed: list[dict[TopicPartition, int]] = []

    def assignment(self) -> set[TopicPartition]:
        return self.partitions

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.committed.append(dict(offsets))


def test_a_batchs_offsets_are_each_partitions_last_plus_one() -> None:
    records = [
        Record(b"a", partition=0, offset=7),
        Record(b"b", partition=1, offset=3),
        Record(b"c", partition=0, offset=8),
        Record(b"d", topic="authorizations", partition=0, offset=41),
    ]
    assert consuming.offsets_of(records) == {
        TopicPartition("postings", 0): 9,
        TopicPartition("postings", 1): 4,
        TopicPartition("authorizations", 0): 42,
    }


async def test_only_a_batchs_own_offsets_of_assigned_partitions_are_committed() -> None:
    """The next poll's records are already fetched while a batch is applied: committing "all
    consumed" would cover records not applied yet. A revoked partition's records are its new
    owner's to read again."""
    p0, p1 = TopicPartition("postings", 0), TopicPartition("postings", 1)
    kafka = Assigned({p0})
    await consuming.commit(kafka, offsets={p0: 9, p1: 4}, on_failure="x")  # type: ignore[arg-type]
    assert kafka.committed == [{p0: 9}]
    await consuming.commit(kafka, offsets={p1: 5}, on_failure="x")  # type: ignore[arg-type]
    assert kafka.committed == [{p0: 9}]  # nothing assigned: no commit at all


async def test_a_commit_error_that_is_not_kafka_propagates() -> None:
    """Only Kafka's errors mean 'redelivered'; a bug is not swallowed."""
    with pytest.raises(RuntimeError, match="bug"):
        await consuming.commit(Commits(RuntimeError("bug")), on_failure="x")  # type: ignore[arg-type]


async def test_dead_letter_sends_each_poison_and_logs_one_line_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each poison goes to its topic's dead-letter topic for this consumer, bytes kept, and
    is logged with its position and reason."""
    sends = Sends()
    poison = deadletter.Poison(Record(b"x", topic="t1.postings", partition=2, offset=9), "bad")
    with caplog.at_level(logging.WARNING, logger=consuming.__name__):
        await consuming.dead_letter(sends, [poison], consumer=topics.REWARDS, prefix="t1.")  # type: ignore[arg-type]
    [(target, sent)] = sends.sent
    assert target == "t1." + topics.dead_letter(topics.POSTINGS, topics.REWARDS)
    assert sent["value"] == b"x"
    assert dict(sent["headers"])["dlq-reason"] == b"bad"
    assert "dead-lettered t1.postings/2/9: bad" in caplog.text


async def test_dead_letter_of_nothing_sends_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """A clean batch produces no message and no log line."""
    sends = Sends()
    with caplog.at_level(logging.WARNING, logger=consuming.__name__):
        await consuming.dead_letter(sends, [], consumer=topics.NOTIFIER, prefix="")  # type: ignore[arg-type]
    assert sends.sent == []
    assert caplog.text == ""
