"""Pure rules of ReconciliationSchedule: due times, run names, history.

Expressions are parsed by :mod:`fintech_operator.api.cron` (the API validates them with it);
this module evaluates a parsed :class:`Cron` in UTC.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Sequence
from typing import Final

from fintech_operator.api.cron import Cron, CronError, parse

# Parsing lives in the API layer; it is re-exported so a caller evaluating schedules needs
# one import.
__all__ = [
    "Cron",
    "CronError",
    "RunRef",
    "latest_due",
    "next_after",
    "parse",
    "run_name",
    "runs_to_prune",
]

# Searching further than this for the next time means the expression never fires (Feb 30).
_SEARCH_DAYS_MAX: Final = 4 * 366 + 1
# Object names are at most 253 characters; the run name adds "-" and up to 10 digits.
_NAME_PREFIX_MAX: Final = 242


def _at(day: datetime.date, hour: int, minute: int) -> datetime.datetime:
    return datetime.datetime(day.year, day.month, day.day, hour, minute, tzinfo=datetime.UTC)


def next_after(cron: Cron, moment: datetime.datetime) -> datetime.datetime | None:
    """The first scheduled minute strictly after ``moment``; None if it never fires."""
    moment = moment.astimezone(datetime.UTC)
    times = cron.times_of_day()
    for offset in range(_SEARCH_DAYS_MAX):
        day = moment.date() + datetime.timedelta(days=offset)
        if not cron.matches_day(day):
            continue
        for hour, minute in times:
            found = _at(day, hour, minute)
            if found > moment:
                return found
    return None


def latest_due(
    cron: Cron, after: datetime.datetime, now: datetime.datetime
) -> datetime.datetime | None:
    """The latest scheduled minute in ``(after, now]``, or None.

    Like a CronJob, a schedule that missed several times (the operator was down) starts only
    the most recent one; callers bound ``after`` by the starting deadline.
    """
    after = after.astimezone(datetime.UTC)
    now = now.astimezone(datetime.UTC)
    if now <= after:
        return None
    times = list(reversed(cron.times_of_day()))
    day = now.date()
    while day >= after.date():
        if cron.matches_day(day):
            for hour, minute in times:
                found = _at(day, hour, minute)
                if after < found <= now:
                    return found
                if found <= after:
                    break
        day -= datetime.timedelta(days=1)
    return None


def run_name(schedule_name: str, scheduled_at: datetime.datetime) -> str:
    """Deterministic name of the run for one scheduled time: a retried tick creates it once."""
    minutes = int(scheduled_at.timestamp()) // 60
    prefix = schedule_name[:_NAME_PREFIX_MAX].rstrip("-.")
    return f"{prefix}-{minutes}"


@dataclasses.dataclass(frozen=True)
class RunRef:
    """What history pruning needs to know of one run created by a schedule."""

    name: str
    phase: str | None
    created_at: datetime.datetime


def runs_to_prune(runs: Sequence[RunRef], successful_limit: int, failed_limit: int) -> list[RunRef]:
    """Finished runs beyond the history limits, oldest first; unfinished runs are kept."""
    if successful_limit < 0 or failed_limit < 0:
        raise ValueError("history limits must not be negative")
    newest_first = sorted(runs, key=lambda run: (run.created_at, run.name), reverse=True)
    doomed: list[RunRef] = []
    for phase, limit in (("Succeeded", successful_limit), ("Failed", failed_limit)):
        finished = [run for run in newest_first if run.phase == phase]
        doomed.extend(finished[limit:])
    return sorted(doomed, key=lambda run: (run.created_at, run.name))
