"""Dead-letter topics: where a consumer parks a message it cannot apply, and why.

The original key, value and headers are kept byte for byte, so the message can be
replayed once the cause is fixed; headers added here say which consumer gave up, why,
when, and where the message came from (``<topic>/<partition>/<offset>``).
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from aiokafka import AIOKafkaProducer

from fintech_operator.events import envelope, topics

REASON_MAX_CHARS: Final = 1000
HEADER_PREFIX: Final = "dlq-"


@dataclass(frozen=True)
class Poison:
    """A record a consumer refuses, with the reason (one line)."""

    record: Any  # aiokafka.ConsumerRecord (untyped library)
    reason: str


def headers(
    record: Any, reason: str, consumer: str, now: datetime.datetime
) -> list[tuple[str, bytes]]:
    """The record's own headers (minus older ``dlq-*`` ones) plus why and where from."""
    kept = [
        (str(key), bytes(value or b""))
        for key, value in (record.headers or ())
        if not str(key).startswith(HEADER_PREFIX)
    ]
    return [
        ("dlq-reason", " ".join(reason.split())[:REASON_MAX_CHARS].encode()),
        ("dlq-consumer", consumer.encode()),
        ("dlq-source", f"{record.topic}/{record.partition}/{record.offset}".encode()),
        ("dlq-time", envelope.time_text(now).encode()),
        *kept,
    ]


async def send(
    producer: AIOKafkaProducer,
    poisons: Sequence[Poison],
    *,
    consumer: str,
    prefix: str,
    timeout_seconds: float,
) -> None:
    """Publish every poison to its dead-letter topic and wait for all the acks."""
    if not poisons:
        return
    now = datetime.datetime.now(datetime.UTC)
    futures = []
    for poison in poisons:
        record = poison.record
        target = topics.qualified(
            topics.dead_letter(topics.bare(record.topic, prefix), consumer), prefix
        )
        futures.append(
            await producer.send(
                target,
                value=record.value,
                key=record.key,
                headers=headers(record, poison.reason, consumer, now),
            )
        )
    await asyncio.wait_for(asyncio.gather(*futures), timeout_seconds)
