"""Pure rules of ReconciliationSchedule: cron expressions, due times, run names, history.

Cron expressions have the five classic fields, evaluated in UTC::

    minute (0-59)  hour (0-23)  day-of-month (1-31)  month (1-12, JAN-DEC)  day-of-week

where day-of-week is 0-7 or SUN-SAT, 0 and 7 both Sunday.

Each field is ``*``, a value, a range ``a-b``, a step ``*/n`` or ``a-b/n``, or a comma list of
those. As in Vixie cron, when both day fields are restricted a day matches if either matches.
The macros ``@yearly``, ``@monthly``, ``@weekly``, ``@daily`` and ``@hourly`` are accepted.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Sequence
from typing import Final

_MACROS: Final = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS: Final = (
    "JAN",
    "FEB",
    "MAR",
    "APR",
    "MAY",
    "JUN",
    "JUL",
    "AUG",
    "SEP",
    "OCT",
    "NOV",
    "DEC",
)
_DAYS: Final = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
# Searching further than this for the next time means the expression never fires (Feb 30).
_SEARCH_DAYS_MAX: Final = 4 * 366 + 1
# Object names are at most 253 characters; the run name adds "-" and up to 10 digits.
_NAME_PREFIX_MAX: Final = 242


class CronError(ValueError):
    """The expression is not a valid five-field cron expression; the message says why."""


@dataclasses.dataclass(frozen=True)
class Cron:
    """A parsed expression: the allowed values of each field."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    days_restricted: bool
    weekdays_restricted: bool

    def matches_day(self, day: datetime.date) -> bool:
        if day.month not in self.months:
            return False
        by_day = day.day in self.days
        by_weekday = (day.isoweekday() % 7) in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return by_day or by_weekday
        return by_day and by_weekday

    def times_of_day(self) -> list[tuple[int, int]]:
        return [(hour, minute) for hour in sorted(self.hours) for minute in sorted(self.minutes)]


def parse(expression: str) -> Cron:
    """Parse a cron expression; raises :class:`CronError` naming the bad field."""
    if not isinstance(expression, str):
        raise CronError("a cron expression must be a string")
    text = _MACROS.get(expression.strip().lower(), expression.strip())
    fields = text.split()
    if len(fields) != 5:
        raise CronError(
            f"{expression!r} has {len(fields)} fields; cron needs 5: "
            "minute hour day-of-month month day-of-week"
        )
    minute, hour, day, month, weekday = fields
    weekdays = _field("day of week", weekday, 0, 7, _DAYS)
    return Cron(
        minutes=_field("minute", minute, 0, 59),
        hours=_field("hour", hour, 0, 23),
        days=_field("day of month", day, 1, 31),
        months=_field("month", month, 1, 12, _MONTHS, first_name=1),
        weekdays=frozenset(value % 7 for value in weekdays),
        days_restricted=not day.startswith("*"),
        weekdays_restricted=not weekday.startswith("*"),
    )


def _field(
    name: str, text: str, low: int, high: int, names: Sequence[str] = (), first_name: int = 0
) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        values.update(_part(name, part, low, high, names, first_name))
    return frozenset(values)


def _part(
    name: str, part: str, low: int, high: int, names: Sequence[str], first_name: int
) -> Iterable[int]:
    base, slash, step_text = part.partition("/")
    step = _number(name, step_text, 1, high - low + 1, ()) if slash else 1
    if base == "*":
        start, stop = low, high
    elif "-" in base:
        first, _, last = base.partition("-")
        start = _value(name, first, low, high, names, first_name)
        stop = _value(name, last, low, high, names, first_name)
        if start > stop:
            raise CronError(f"{name}: range {base!r} runs backwards")
    else:
        start = _value(name, base, low, high, names, first_name)
        stop = high if slash else start
    return range(start, stop + 1, step)


def _value(name: str, text: str, low: int, high: int, names: Sequence[str], first: int) -> int:
    upper = text.upper()
    if upper in names:
        return names.index(upper) + first
    return _number(name, text, low, high, names)


def _number(name: str, text: str, low: int, high: int, names: Sequence[str]) -> int:
    if not text.isdigit():
        hint = f" or one of {', '.join(names)}" if names else ""
        raise CronError(f"{name}: {text!r} is not a number from {low} to {high}{hint}")
    value = int(text)
    if not low <= value <= high:
        raise CronError(f"{name}: {value} is outside {low}..{high}")
    return value


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
