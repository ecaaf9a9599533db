"""Reading a module's events back from the real Kafka, for the e2e modules (not a test module).

The operator of a module publishes to topics prefixed with ``FINTECH_TOPIC_PREFIX`` of its
``operator_env``; these helpers read a whole topic from the beginning (it is small), keep the
first copy of each event id (delivery is at least once), and check every event against its
JSON Schema in docs/events/ and the product's own decoder.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from fintech_operator import pan
from fintech_operator.events import schema, topics
from tests.conftest import wait_for
from tests.unit.test_events_schema import validator

READ_TIMEOUT_SECONDS = 20.0


async def _read_all(bootstrap: str, topic: str) -> list[Any]:
    """Every record of ``topic`` up to its end offsets now, in offset order per partition."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        request_timeout_ms=10_000,
    )
    await asyncio.wait_for(consumer.start(), READ_TIMEOUT_SECONDS)
    try:
        partitions: set[int] | None = None
        for _ in range(50):
            partitions = consumer.partitions_for_topic(topic)
            if partitions:
                break
            await consumer._client.force_metadata_update()
            await asyncio.sleep(0.1)
        assert partitions, f"topic {topic} has no partitions"
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        ends = await consumer.end_offsets(assigned)
        records: list[Any] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READ_TIMEOUT_SECONDS
        while loop.time() < deadline:
            positions = {tp: await consumer.position(tp) for tp in assigned}
            if all(positions[tp] >= ends[tp] for tp in assigned):
                break
            batches = await consumer.getmany(timeout_ms=200)
            records += [record for batch in batches.values() for record in batch]
        return sorted(records, key=lambda r: (r.partition, r.offset))
    finally:
        await consumer.stop()


def events_of(env: dict[str, str], topic: str, key: str) -> list[dict[str, Any]]:
    """The events keyed ``key`` on the module's ``topic``, first copies, in partition order."""
    wire_topic = topics.qualified(topic, env.get("FINTECH_TOPIC_PREFIX", ""))
    records = asyncio.run(_read_all(env["KAFKA_BOOTSTRAP_SERVERS"], wire_topic))
    seen: set[str] = set()
    found = []
    for record in records:
        if record.key != key.encode():
            continue
        event: dict[str, Any] = json.loads(record.value)
        if event["id"] not in seen:
            seen.add(event["id"])
            found.append({**event, "_raw": record.value.decode()})
    return found


def wait_events(
    env: dict[str, str], topic: str, key: str, types: list[str], timeout_seconds: float = 60.0
) -> list[dict[str, Any]]:
    """Wait until the events keyed ``key`` are at least ``types`` long; check each one."""

    def probe() -> list[dict[str, Any]] | None:
        found = events_of(env, topic, key)
        return found if len(found) >= len(types) else None

    found: list[dict[str, Any]] = wait_for(
        f"{types} keyed {key} on {topic}", probe, timeout_seconds=timeout_seconds, interval=0.5
    )
    assert [event["type"] for event in found] == types, [event["type"] for event in found]
    for event in found:
        checked(event)
    return found


def checked(event: dict[str, Any]) -> dict[str, Any]:
    """The event validates against its JSON Schema and decodes; it carries no card number:
    no Luhn-valid number, and no run of 13 or more digits outside the (random hex) token."""
    raw = event["_raw"]
    body = json.loads(raw)
    validator(body["type"]).validate(body)
    schema.decode(raw.encode())
    assert pan.find_pans(raw) == [], raw
    token = body["data"].get("token")
    assert re.search(r"[0-9]{13,}", raw.replace(token, "") if token else raw) is None, raw
    return body
