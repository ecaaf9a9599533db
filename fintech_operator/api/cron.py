"""Cron expressions of ReconciliationSchedule: parsing and validation (pure).

The API validates ``spec.schedule`` with :func:`parse`, so a bad expression is refused with
the field named; :mod:`fintech_operator.recon.schedule` computes due times from the parsed
:class:`Cron`. Expressions have the five classic fields, evaluated in UTC::

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
