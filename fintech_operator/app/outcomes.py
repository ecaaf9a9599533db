"""Outcomes every use case shares: a final refusal and a retry later.

A use case returns one of its own success types or one of these; an entry point renders
each (kopf: a status patch and an Event, or ``kopf.TemporaryError``; the gateway: an HTTP
answer). A ``Rejected`` is final: the same command would be refused again, so it is never
retried (DESIGN.md house rule 8). A ``Retry`` says the command may succeed later and how long
to wait first.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Generic, TypeVar

ReasonT = TypeVar("ReasonT", bound=enum.StrEnum)


@dataclasses.dataclass(frozen=True)
class Rejected(Generic[ReasonT]):
    """Refused for good: ``reason`` is the CamelCase word of the kind's vocabulary (an
    ``api`` StrEnum), ``message`` says what to fix in words."""

    reason: ReasonT
    message: str


@dataclasses.dataclass(frozen=True)
class Retry:
    """Not now: try the same command again after ``delay_seconds``; ``why`` is for the log."""

    delay_seconds: float
    why: str

    def __post_init__(self) -> None:
        if not self.delay_seconds > 0:
            raise ValueError("a retry waits a positive number of seconds")
