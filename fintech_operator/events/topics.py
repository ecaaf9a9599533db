"""Topic names (pure): the only place a topic is named.

Five topics carry events, one per domain: ``cards``, ``postings``, ``compliance``,
``recon`` and ``authorizations``. Each consumer has its own dead-letter topic per topic it reads,
``<topic>.<consumer>.dlq`` (``postings.rewards.dlq``, ``cards.notifier.dlq``, ...), so a
poison message is parked where its consumer's operators look, with the reason in a
header, and one consumer's poison never hides another's.

Every name is prefixed with ``FINTECH_TOPIC_PREFIX`` (default empty) on the wire: the
outbox and the code use the bare names, :func:`qualified` adds the prefix. The product creates
its topics, never the broker: :func:`fintech_operator.events.kafka.ensure_topics`.
"""

from __future__ import annotations

import re
from typing import Final

CARDS: Final = "cards"
POSTINGS: Final = "postings"
COMPLIANCE: Final = "compliance"
RECON: Final = "recon"
# Real-time authorizations (issue 13): written by the database's authorization functions.
AUTHORIZATIONS: Final = "authorizations"
SOURCES: Final = (CARDS, POSTINGS, COMPLIANCE, RECON, AUTHORIZATIONS)

REWARDS: Final = "rewards"
NOTIFIER: Final = "notifier"
# Kafka's legal topic characters and length.
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


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
