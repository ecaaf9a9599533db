"""The operator's periodic collector: outbox backlog and age, and consumer lag.

Both are read from the outside rather than reported by the loops that do the work: a relay
or consumer that is stuck or dead cannot report its own backlog, but its rows pile up in the
outbox and its committed offsets stop while the partitions' end offsets move on. One task in
the operator reads both every ``FINTECH_METRICS_COLLECT_INTERVAL_SECONDS`` and replaces the
snapshot that ``/metrics`` serves. It runs only when ``/metrics`` is served.

Lag is measured for the consumer groups that have committed offsets on this installation's
topics (every name of :mod:`events.topics` with ``FINTECH_TOPIC_PREFIX``), at most
``FINTECH_METRICS_CONSUMER_GROUPS_MAX`` of them in name order, which bounds the series:
``end offset - committed offset`` for each such partition. Groups of other tenants of a shared
cluster are read (at most :data:`GROUPS_SCANNED_MAX`) but neither exported nor counted.
The outbox count stops at :data:`OUTBOX_COUNT_CAP` rows so that a huge backlog cannot make the
scrape itself slow; the age of the oldest row is exact.
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
from fintech_operator.events import kafka, topics
from fintech_operator.observability import metrics

log = logging.getLogger(__name__)
OUTBOX_COUNT_CAP: Final = 100_000
STOP_TIMEOUT_SECONDS: Final = 10.0
# Groups whose offsets one round reads at most, and how many of those requests are in flight
# at once: a cluster with thousands of foreign groups costs a bounded, parallel scan.
GROUPS_SCANNED_MAX: Final = 1000
_SCAN_BATCH: Final = 16

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
    topics_wanted: Callable[[str], bool] = lambda _topic: True,
    groups_wanted: Callable[[str], bool] = lambda _group: True,
) -> dict[tuple[str, str, int], int]:
    """``{(group, topic, partition): lag}`` for up to ``groups_max`` groups, in name order.

    Only partitions of ``topics_wanted`` count, and a group with none of them takes no place
    under the cap: on a shared cluster another tenant's groups never hide this one's.
    """
    listed = sorted(str(entry[0]) for entry in await admin.list_consumer_groups())
    candidates = [group for group in listed if groups_wanted(group)][:GROUPS_SCANNED_MAX]
    committed: dict[tuple[str, str, int], int] = {}
    found = 0
    for start in range(0, len(candidates), _SCAN_BATCH):
        batch = candidates[start : start + _SCAN_BATCH]
        answers = await asyncio.gather(*(admin.list_consumer_group_offsets(g) for g in batch))
        for group, offsets in zip(batch, answers, strict=True):
            mine = {
                (group, tp.topic, tp.partition): int(meta.offset)
                for tp, meta in offsets.items()
                if meta.offset >= 0 and topics_wanted(tp.topic)
            }
            if mine and found < groups_max:
                committed.update(mine)
                found += 1
        if found >= groups_max:
            break
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
            timeout_ms = self._settings.kafka.request_timeout_ms
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


def _ours(settings: config.Settings) -> Callable[[str], bool]:
    names = frozenset(topics.qualified(name, settings.topics.prefix) for name in topics.ALL)
    return names.__contains__


async def _collect_once(
    pool: AsyncConnectionPool[Any], kafka: _Kafka, settings: config.Settings, limit_seconds: float
) -> None:
    try:
        backlog, age = await asyncio.wait_for(read_outbox(pool, limit_seconds), limit_seconds)
        metrics.SNAPSHOT.set_outbox(backlog, age)
    except Exception:  # A failed read is counted and retried next round.
        metrics.collect_error("outbox")
        log.warning("could not read the outbox backlog", exc_info=True)
    if settings.metrics.consumer_groups_max == 0:
        return
    try:
        admin, reader = await asyncio.wait_for(kafka.open(), limit_seconds)
        lag = await asyncio.wait_for(
            read_lag(admin, reader, settings.metrics.consumer_groups_max, _ours(settings)),
            limit_seconds,
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
    interval = settings.metrics.collect_interval_seconds
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
    if settings.metrics.port == 0:
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
