"""The operator's periodic collector: outbox backlog and age, and consumer lag.

Both are read from the outside rather than reported by the loops that do the work: a relay
or consumer that is stuck or dead cannot report its own backlog, but its rows pile up in the
outbox and its committed offsets stop while the partitions' end offsets move on. One task in
the operator reads both every ``FINTECH_METRICS_COLLECT_INTERVAL_SECONDS`` and replaces the
snapshot that ``/metrics`` serves. It runs only when ``/metrics`` is served.

Lag is measured for the consumer groups the broker knows (at most
``FINTECH_METRICS_CONSUMER_GROUPS_MAX`` of them, in name order, which bounds the series even
on a shared cluster): ``end offset - committed offset`` for each partition a group has
committed. Topic names are not filtered, so a prefix (``FINTECH_TOPIC_PREFIX``) or a new topic
needs no change here. The outbox count stops at
:data:`OUTBOX_COUNT_CAP` rows so that a huge backlog cannot make the scrape itself slow;
the age of the oldest row is exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from psycopg_pool import AsyncConnectionPool

from fintech_operator import config
from fintech_operator.events import kafka
from fintech_operator.observability import metrics

log = logging.getLogger(__name__)
OUTBOX_COUNT_CAP: Final = 100_000
STOP_TIMEOUT_SECONDS: Final = 10.0

_OUTBOX = f"""
SELECT (SELECT count(*) FROM (SELECT 1 FROM outbox WHERE published_at IS NULL
                              LIMIT {OUTBOX_COUNT_CAP}) AS capped),
       COALESCE(EXTRACT(EPOCH FROM now() - (SELECT created_at FROM outbox
                                            WHERE published_at IS NULL
                                            ORDER BY id LIMIT 1))::float8, 0)
"""


async def read_outbox(pool: AsyncConnectionPool[Any], timeout_seconds: float) -> tuple[int, float]:
    """Unpublished outbox rows (capped) and the age in seconds of the oldest one."""
    async with pool.connection(timeout=timeout_seconds) as conn:
        row = await (await conn.execute(_OUTBOX)).fetchone()
    if row is None:
        return 0, 0.0
    return int(row[0]), max(0.0, float(row[1]))


async def read_lag(
    admin: AIOKafkaAdminClient,
    offsets_reader: AIOKafkaConsumer,
    groups_max: int,
    groups_wanted: Callable[[str], bool] = lambda _group: True,
) -> dict[tuple[str, str, int], int]:
    """``{(group, topic, partition): lag}`` for up to ``groups_max`` groups, in name order."""
    listed = sorted(str(entry[0]) for entry in await admin.list_consumer_groups())
    groups = [group for group in listed if groups_wanted(group)][:groups_max]
    committed: dict[tuple[str, str, int], int] = {}
    for group in groups:
        for tp, meta in (await admin.list_consumer_group_offsets(group)).items():
            if meta.offset >= 0:
                committed[(group, tp.topic, tp.partition)] = int(meta.offset)
    if not committed:
        return {}
    wanted = sorted({TopicPartition(topic, part) for _, topic, part in committed})
    ends = await offsets_reader.end_offsets(wanted)
    return {
        key: max(0, int(ends[TopicPartition(key[1], key[2])]) - offset)
        for key, offset in committed.items()
        if TopicPartition(key[1], key[2]) in ends
    }


@dataclass
class Collector:
    """The running collector task and how to stop it."""

    task: asyncio.Task[None]
    stop: asyncio.Event


class _Kafka:
    """The admin and offset-reading clients, created on first use and after a failure."""

    def __init__(self, settings: config.Settings) -> None:
        self._settings = settings
        self.admin: AIOKafkaAdminClient | None = None
        self.reader: AIOKafkaConsumer | None = None

    async def open(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self.admin is None or self.reader is None:
            timeout_ms = self._settings.kafka_request_timeout_ms
            self.admin = AIOKafkaAdminClient(
                **kafka.client_options(self._settings), request_timeout_ms=timeout_ms
            )
            # No group: this client only asks for end offsets and never joins or commits.
            self.reader = AIOKafkaConsumer(
                **kafka.client_options(self._settings),
                group_id=None,
                enable_auto_commit=False,
                request_timeout_ms=timeout_ms,
            )
            await self.admin.start()
            await self.reader.start()
        return self.admin, self.reader

    async def close(self) -> None:
        admin, reader, self.admin, self.reader = self.admin, self.reader, None, None
        with contextlib.suppress(Exception):
            if admin is not None:
                await admin.close()
        with contextlib.suppress(Exception):
            if reader is not None:
                await reader.stop()


async def _collect_once(
    pool: AsyncConnectionPool[Any], kafka: _Kafka, settings: config.Settings, limit_seconds: float
) -> None:
    try:
        backlog, age = await asyncio.wait_for(read_outbox(pool, limit_seconds), limit_seconds)
        metrics.SNAPSHOT.set_outbox(backlog, age)
    except Exception:  # A failed read is counted and retried next round.
        metrics.collect_error("outbox")
        log.warning("could not read the outbox backlog", exc_info=True)
    if settings.metrics_consumer_groups_max == 0:
        return
    try:
        admin, reader = await asyncio.wait_for(kafka.open(), limit_seconds)
        lag = await asyncio.wait_for(
            read_lag(admin, reader, settings.metrics_consumer_groups_max), limit_seconds
        )
        metrics.SNAPSHOT.set_consumer_lag(lag)
    except Exception:  # As above; the clients are rebuilt next round.
        metrics.collect_error("consumer_lag")
        log.warning("could not read consumer lag", exc_info=True)
        await kafka.close()


async def run(
    pool: AsyncConnectionPool[Any], settings: config.Settings, stop: asyncio.Event
) -> None:
    """Collect until ``stop`` is set; every failure is counted and retried next round."""
    interval = settings.metrics_collect_interval_seconds
    # A round may take at most one interval, so rounds never pile up behind a slow dependency.
    timeout = interval
    kafka = _Kafka(settings)
    try:
        while not stop.is_set():
            await _collect_once(pool, kafka, settings, timeout)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
    finally:
        await kafka.close()


def start(settings: config.Settings, pool: AsyncConnectionPool[Any]) -> Collector | None:
    """Start collecting when ``/metrics`` is served (``FINTECH_METRICS_PORT`` > 0)."""
    if settings.metrics_port == 0:
        return None
    stop = asyncio.Event()
    task = asyncio.create_task(run(pool, settings, stop), name="metrics-collector")
    return Collector(task, stop)


async def stop(collector: Collector | None) -> None:
    """Stop a collector started by :func:`start` (None is fine)."""
    if collector is None:
        return
    collector.stop.set()
    try:
        await asyncio.wait_for(collector.task, STOP_TIMEOUT_SECONDS)
    except TimeoutError:
        collector.task.cancel()


__all__ = ["Collector", "read_lag", "read_outbox", "run", "start", "stop"]
