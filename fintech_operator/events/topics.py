"""Topic names and their creation: the product creates its topics, never the broker.

Five topics carry events, one per domain: ``cards``, ``postings``, ``compliance``,
``recon`` and ``authorizations``. Each consumer has its own dead-letter topic per topic it reads,
``<topic>.<consumer>.dlq`` (``postings.rewards.dlq``, ``cards.notifier.dlq``, ...), so a
poison message is parked where its consumer's operators look, with the reason in a
header, and one consumer's poison never hides another's.

Every name is prefixed with ``FINTECH_TOPIC_PREFIX`` (default empty) on the wire: the
outbox and the code use the bare names, :func:`qualified` adds the prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import TYPE_CHECKING, Final

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from fintech_operator.events import kafka

if TYPE_CHECKING:
    from fintech_operator import config

CARDS: Final = "cards"
POSTINGS: Final = "postings"
COMPLIANCE: Final = "compliance"
RECON: Final = "recon"
# Real-time authorizations (issue 13): written by the database's authorization functions.
AUTHORIZATIONS: Final = "authorizations"
SOURCES: Final = (CARDS, POSTINGS, COMPLIANCE, RECON, AUTHORIZATIONS)

REWARDS: Final = "rewards"
NOTIFIER: Final = "notifier"
ADMIN_TIMEOUT_SECONDS: Final = 30.0
# Kafka's legal topic characters and length.
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


class TopicCreationError(RuntimeError):
    """The broker refused to create a topic (for example more replicas than brokers)."""


def dead_letter(topic: str, consumer: str) -> str:
    """The dead-letter topic of ``consumer`` for messages read from ``topic``."""
    return f"{topic}.{consumer}.dlq"


DEAD_LETTER: Final = (
    dead_letter(POSTINGS, REWARDS),
    dead_letter(AUTHORIZATIONS, REWARDS),
    *(dead_letter(topic, NOTIFIER) for topic in SOURCES),
)
ALL: Final = (*SOURCES, *DEAD_LETTER)


def qualified(name: str, prefix: str) -> str:
    """The name on the wire: ``prefix + name``, refused when Kafka would refuse it."""
    full = f"{prefix}{name}"
    if not _NAME_RE.fullmatch(full) or full in (".", ".."):
        raise ValueError(f"invalid Kafka topic name {full!r}")
    return full


def bare(full: str, prefix: str) -> str:
    """The outbox name of a wire topic (the inverse of :func:`qualified`)."""
    if not full.startswith(prefix):
        raise ValueError(f"topic {full!r} does not start with prefix {prefix!r}")
    return full[len(prefix) :]


def min_insync_replicas(replication_factor: int) -> int:
    """Acks from two replicas when there are three or more, so one broker may fail safely."""
    return 2 if replication_factor >= 3 else 1


async def ensure_for(settings: config.Settings) -> list[str]:
    """Create every topic that is missing (an existing one is left as it is); return those made.

    Partitions, replication and prefix come from the settings. This is the first Kafka call
    of every process, so a broker that refuses our login stops it here, saying why.
    """
    prefix = settings.topic_prefix
    replication_factor = settings.topic_replication_factor
    admin = AIOKafkaAdminClient(
        **kafka.client_options(settings), request_timeout_ms=settings.kafka_request_timeout_ms
    )
    try:
        await kafka.start(admin, settings, ADMIN_TIMEOUT_SECONDS)
        existing = set(await asyncio.wait_for(admin.list_topics(), ADMIN_TIMEOUT_SECONDS))
        configs = {"min.insync.replicas": str(min_insync_replicas(replication_factor))}
        missing = [
            NewTopic(
                qualified(name, prefix),
                num_partitions=settings.topic_partitions,
                replication_factor=replication_factor,
                topic_configs=configs,
            )
            for name in ALL
            if qualified(name, prefix) not in existing
        ]
        if missing:
            # Another process may create one between our list and create: same result.
            with contextlib.suppress(TopicAlreadyExistsError):
                response = await asyncio.wait_for(
                    admin.create_topics(missing), ADMIN_TIMEOUT_SECONDS
                )
                _check_created(response.topic_errors)
    finally:
        await admin.close()
    return [topic.name for topic in missing]


def _check_created(topic_errors: list[tuple[object, ...]]) -> None:
    """Raise for a topic the broker refused, except one that already exists."""
    refused = [
        f"{item[0]}: error {item[1]}" + (f" ({item[2]})" if len(item) > 2 and item[2] else "")
        for item in topic_errors
        if item[1] not in (0, TopicAlreadyExistsError.errno)
    ]
    if refused:
        raise TopicCreationError("Kafka refused to create topics: " + "; ".join(refused))
