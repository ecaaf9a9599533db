"""Topic names and their creation: the product creates its topics, never the broker."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

POSTINGS: Final = "postings"
CARDS: Final = "cards"
POSTINGS_DLQ: Final = "postings.dlq"
ALL: Final = (POSTINGS, CARDS, POSTINGS_DLQ)
ADMIN_TIMEOUT_SECONDS: Final = 30.0


async def ensure(bootstrap_servers: str, partitions: int, request_timeout_ms: int) -> None:
    """Create every topic that is missing; an existing topic is left as it is."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers, request_timeout_ms=request_timeout_ms
    )
    await asyncio.wait_for(admin.start(), ADMIN_TIMEOUT_SECONDS)
    try:
        existing = set(await asyncio.wait_for(admin.list_topics(), ADMIN_TIMEOUT_SECONDS))
        missing = [
            NewTopic(name, num_partitions=partitions, replication_factor=1)
            for name in ALL
            if name not in existing
        ]
        if missing:
            # Another process may create one between our list and create: same result.
            with contextlib.suppress(TopicAlreadyExistsError):
                await asyncio.wait_for(admin.create_topics(missing), ADMIN_TIMEOUT_SECONDS)
    finally:
        await admin.close()
