"""Consumer lag arithmetic of the collector, and its start/stop when /metrics is off or on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata

from fintech_operator import config
from fintech_operator.events import collector

BASE = {"DATABASE_URL": "postgresql://x@127.0.0.1/db", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092"}


@dataclass
class _Admin:
    """What AIOKafkaAdminClient answers: groups and their committed offsets."""

    offsets: dict[str, dict[TopicPartition, OffsetAndMetadata]]
    asked: list[str] = field(default_factory=list)

    async def list_consumer_groups(self) -> list[tuple[str, str]]:
        return [(group, "consumer") for group in self.offsets]

    async def list_consumer_group_offsets(
        self, group: str
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        self.asked.append(group)
        return self.offsets[group]


@dataclass
class _Reader:
    """What AIOKafkaConsumer.end_offsets answers."""

    ends: dict[TopicPartition, int]

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.ends[tp] for tp in partitions}


def _offsets(*pairs: tuple[str, int, int]) -> dict[TopicPartition, OffsetAndMetadata]:
    return {TopicPartition(t, p): OffsetAndMetadata(o, "") for t, p, o in pairs}


async def test_lag_is_end_minus_committed_per_partition() -> None:
    """Lag per group and partition is end offset minus committed offset, never negative."""
    admin: Any = _Admin(
        {
            "rewards": _offsets(("postings", 0, 10), ("postings", 1, 7)),
            "notifier": _offsets(("postings", 0, 12), ("cards", 0, -1)),
        }
    )
    reader: Any = _Reader({TopicPartition("postings", 0): 12, TopicPartition("postings", 1): 7})
    lag = await collector.read_lag(admin, reader, groups_max=10)
    assert lag == {
        ("rewards", "postings", 0): 2,
        ("rewards", "postings", 1): 0,
        ("notifier", "postings", 0): 0,
    }


async def test_groups_beyond_the_cap_are_not_queried() -> None:
    """Only the first ``groups_max`` groups in name order are exported, and scanning stops at
    the first batch that fills the cap, bounding series and calls."""
    names = [f"g{i:03}" for i in range(3 * collector._SCAN_BATCH)]
    admin: Any = _Admin({name: _offsets(("postings", 0, 1)) for name in reversed(names)})
    reader: Any = _Reader({TopicPartition("postings", 0): 3})
    lag = await collector.read_lag(admin, reader, groups_max=2)
    assert admin.asked == names[: collector._SCAN_BATCH]
    assert set(lag) == {("g000", "postings", 0), ("g001", "postings", 0)}


async def test_foreign_groups_take_no_place_under_the_cap() -> None:
    """Groups without offsets on this installation's topics are neither exported nor counted:
    on a shared cluster, many groups of other tenants earlier in name order must not hide ours."""
    offsets = {f"a-foreign-{i:03}": _offsets(("other.postings", 0, 1)) for i in range(40)}
    offsets["z-ours"] = _offsets(("p.postings", 0, 4), ("other.postings", 1, 0))
    offsets["y-ours"] = _offsets(("p.cards", 0, 2))
    admin: Any = _Admin(offsets)
    reader: Any = _Reader({TopicPartition("p.postings", 0): 5, TopicPartition("p.cards", 0): 2})
    ours = collector._ours(config.load({**BASE, "FINTECH_TOPIC_PREFIX": "p."}))
    lag = await collector.read_lag(admin, reader, groups_max=1, topics_wanted=ours)
    assert lag == {("y-ours", "p.cards", 0): 0}
    lag = await collector.read_lag(admin, reader, groups_max=5, topics_wanted=ours)
    assert lag == {("y-ours", "p.cards", 0): 0, ("z-ours", "p.postings", 0): 1}


async def test_collector_does_not_start_when_metrics_are_off() -> None:
    """With FINTECH_METRICS_PORT=0 nothing is collected and stopping None is harmless."""
    settings = config.load(BASE)
    pool: Any = None
    running = collector.start(settings, pool)
    assert running is None
    await collector.stop(running)
