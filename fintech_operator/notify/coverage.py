"""Whether the notifier's list of Webhooks can route an event yet, and waiting until it can.

A Webhook subscribes from its ``creationTimestamp`` (set by the API server, whole seconds):
it gets each matching event whose ``time`` is at or after it. The notifier learns of
Webhooks by listing them, and a list is a consistent read: one that started at wall-clock
time ``L`` holds every Webhook stored before ``L``. A Webhook that wants an event at time
``E`` was created before ``E + 1 s`` (the timestamp drops the fraction), so a list started at
or after ``E + skew`` holds it, where the skew allowance covers that second, the API
server's write and the clock differences between the event's producer, the API server and
the notifier.

The router therefore routes a batch only with a list started at or after its newest event's
time plus the skew (:func:`needed_at`). Until it has one it holds the batch (it routes
nothing and commits no offset) and catches up: it sleeps until that time, lists the
Webhooks' versions (one cheap request per namespace), and when a Webhook was added, changed
or deleted, re-reads them in full. However late the periodic refresh would have come, no
event is matched against a list older than the event.

The hold is bounded: while the Webhooks cannot be listed (the API server is away), lists are
retried with a backoff, and after ``hold_max_seconds`` without one the router routes with
the list it has; :meth:`Gate.hold` returns False and the caller says so (log and metric).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Final, Protocol

from fintech_operator.notify import endpoints

log = logging.getLogger(__name__)
# Retries of a failed list: short, because while lists fail each poll is routed without a
# covering list once the hold limit has passed, and the next successful list ends that.
RETRY_FIRST_SECONDS: Final = 0.5
RETRY_MAX_SECONDS: Final = 5.0
# At most one catch-up list a second. Under a high event rate each list then covers a second
# of events (many polls) instead of one poll, and the API server sees at most one request a
# second per namespace from routing, however fast events come.
LIST_INTERVAL_MIN_SECONDS: Final = 1.0


class VersionSource(Protocol):
    async def versions(self) -> tuple[frozenset[endpoints.Version], float]: ...


def needed_at(event_times: Iterable[datetime.datetime], skew_seconds: float) -> float:
    """The earliest list start (epoch seconds) that covers every one of these event times."""
    latest: float = max((moment.timestamp() for moment in event_times), default=-math.inf)
    return latest + skew_seconds


def retry_delay_seconds(failures: int) -> float:
    """The wait before the next list after ``failures`` failed ones in a row (doubling)."""
    return min(RETRY_FIRST_SECONDS * 2.0 ** max(0, min(failures, 32) - 1), RETRY_MAX_SECONDS)


class Gate:
    """When the router's Webhook list was taken, and bringing it up to an event's time.

    ``reload`` re-reads the Webhooks in full and reports the list to :meth:`note`; it may
    raise once it has (its later steps, such as endpoint ownership, do not affect routing).
    """

    def __init__(
        self,
        source: VersionSource,
        reload: Callable[[], Awaitable[None]],
        *,
        skew_seconds: float,
        hold_max_seconds: float,
    ) -> None:
        self.skew_seconds = skew_seconds
        self.hold_max_seconds = hold_max_seconds
        self.versions: frozenset[endpoints.Version] = frozenset()
        self.listed_at = -math.inf
        self._source = source
        self._reload = reload
        # Monotonic time since which the list has not covered the batch at hand; None while it
        # does. It survives a batch routed past the hold, so an outage holds each later batch
        # no longer, and only a successful list clears it.
        self._stale_since: float | None = None
        self._retry_at = 0.0
        self._failures = 0
        self._tried_at = -math.inf  # monotonic start of the last catch-up list

    def note(self, versions: frozenset[endpoints.Version], listed_at: float) -> None:
        """Record a successful list of the Webhooks the router now routes with."""
        if versions == self.versions:
            self.listed_at = max(self.listed_at, listed_at)
        else:
            self.versions, self.listed_at = versions, listed_at
        self._stale_since = None
        self._failures = 0
        self._retry_at = 0.0

    async def hold(self, needed: float) -> bool:
        """Wait until the list started at or after ``needed`` (epoch seconds): True. False
        when the hold limit passed first; the caller then routes with the list it has."""
        while self.listed_at < needed:
            now = time.monotonic()
            if self._stale_since is None:
                self._stale_since = now
            left = self._stale_since + self.hold_max_seconds - now
            until_needed = needed - time.time()
            not_before = max(self._retry_at, self._tried_at + LIST_INTERVAL_MIN_SECONDS)
            if left <= 0 or until_needed > left:
                # One try when due, so that a recovered API server is seen; if it answers,
                # this poll is held as usual.
                if (
                    not_before <= now
                    and await self._catch_up()
                    and until_needed <= self.hold_max_seconds
                ):
                    continue
                return self.listed_at >= needed
            # A list is useless before ``needed``; after a failure, wait out the backoff too,
            # but try once more when the hold ends.
            await asyncio.sleep(min(max(until_needed, not_before - now, 0.0), left))
            await self._catch_up()
        return True

    async def _catch_up(self) -> bool:
        """List the Webhooks (re-read them in full when they changed); True when it did."""
        self._tried_at = time.monotonic()
        try:
            versions, listed_at = await self._source.versions()
            if versions == self.versions:
                self.note(versions, listed_at)
            else:
                await self._reload()
            return True
        except Exception as exc:  # The API server (or, in a reload, the database) is away.
            self._failures += 1
            delay = retry_delay_seconds(self._failures)
            self._retry_at = time.monotonic() + delay
            log.warning(
                "notifier: cannot list Webhooks (%s); routing waits, next try in %.1fs",
                exc,
                delay,
            )
            return False
