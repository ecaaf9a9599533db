"""Cron parsing, due times, run names and history pruning of ReconciliationSchedule (pure)."""

from __future__ import annotations

import datetime

import hypothesis
import pytest
from hypothesis import strategies as st

from fintech_operator.recon import schedule

UTC = datetime.UTC


def t(day: int, hour: int = 0, minute: int = 0, month: int = 3) -> datetime.datetime:
    return datetime.datetime(2024, month, day, hour, minute, tzinfo=UTC)


def test_parse_fields_ranges_steps_lists_and_names() -> None:
    """Values, ranges, steps, lists, month and day names and macros parse as cron defines."""
    cron = schedule.parse("*/15 2-4 1,15 JAN-mar mon-FRI")
    assert cron.minutes == {0, 15, 30, 45}
    assert cron.hours == {2, 3, 4}
    assert cron.days == {1, 15}
    assert cron.months == {1, 2, 3}
    assert cron.weekdays == {1, 2, 3, 4, 5}
    assert schedule.parse("0 0 * * 7").weekdays == {0}
    assert schedule.parse("@daily") == schedule.parse("0 0 * * *")
    assert schedule.parse("5/20 * * * *").minutes == {5, 25, 45}


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("* * * *", "5"),
        ("* * * * * *", "5"),
        ("60 * * * *", "minute: 60 is outside 0..59"),
        ("* 24 * * *", "hour"),
        ("* * 0 * *", "day of month"),
        ("* * * 13 *", "month"),
        ("* * * * 8", "day of week"),
        ("5-1 * * * *", "backwards"),
        ("*/0 * * * *", "outside"),
        ("a * * * *", "not a number"),
        ("* * * FOO *", "JAN"),
        ("@sometimes", "fields"),
        ("", "fields"),
    ],
)
def test_parse_refuses_bad_expressions(expression: str, fragment: str) -> None:
    """Every malformed expression is refused with a message naming the field and problem."""
    with pytest.raises(schedule.CronError, match=fragment):
        schedule.parse(expression)


def test_next_after_and_latest_due() -> None:
    """02:00 daily: the next time is tomorrow's 02:00 once today's has passed, and the latest
    due time in a range is the newest one only (missed runs are not all replayed)."""
    daily = schedule.parse("0 2 * * *")
    assert schedule.next_after(daily, t(1, 1, 59)) == t(1, 2)
    assert schedule.next_after(daily, t(1, 2)) == t(2, 2)
    assert schedule.latest_due(daily, t(1, 1), t(4, 3)) == t(4, 2)
    assert schedule.latest_due(daily, t(1, 2), t(1, 3)) is None, "after is exclusive"
    assert schedule.latest_due(daily, t(1, 1), t(1, 2)) == t(1, 2), "now is inclusive"
    assert schedule.latest_due(daily, t(2), t(1)) is None
    never = schedule.parse("0 0 30 2 *")
    assert schedule.next_after(never, t(1)) is None


def test_day_of_month_or_day_of_week_when_both_are_restricted() -> None:
    """As in Vixie cron, restricting both day fields means either may match."""
    cron = schedule.parse("0 0 13 * FRI")
    assert cron.matches_day(datetime.date(2024, 3, 13))  # a Wednesday, the 13th
    assert cron.matches_day(datetime.date(2024, 3, 15))  # a Friday
    assert not cron.matches_day(datetime.date(2024, 3, 14))


@hypothesis.given(
    minute=st.integers(0, 59),
    hour=st.integers(0, 23),
    start=st.datetimes(
        min_value=datetime.datetime(2000, 1, 1), max_value=datetime.datetime(2090, 1, 1)
    ),
)
def test_next_after_is_the_first_match(minute: int, hour: int, start: datetime.datetime) -> None:
    """For a daily expression the next time is strictly later, matches, and is within a day;
    and it is exactly what latest_due finds when asked about the range ending there."""
    cron = schedule.parse(f"{minute} {hour} * * *")
    moment = start.replace(tzinfo=UTC)
    found = schedule.next_after(cron, moment)
    assert found is not None
    assert moment < found <= moment + datetime.timedelta(days=1)
    assert (found.hour, found.minute) == (hour, minute)
    assert schedule.latest_due(cron, moment, found) == found


def test_run_names_are_deterministic_and_valid() -> None:
    """The run of one scheduled time always gets the same name, short enough for Kubernetes."""
    name = schedule.run_name("daily", t(1, 2))
    assert name == f"daily-{int(t(1, 2).timestamp()) // 60}"
    long = schedule.run_name("a" * 241 + "-.b", t(1, 2))
    assert len(long) <= 253
    assert "-." not in long


def ref(name: str, phase: str | None, minute: int) -> schedule.RunRef:
    return schedule.RunRef(name, phase, t(1, 0, minute))


def test_runs_to_prune_keeps_the_newest_finished_and_every_unfinished() -> None:
    """Beyond the limits the oldest finished runs go; running and pending runs never do."""
    runs = [
        ref("ok-1", "Succeeded", 1),
        ref("ok-2", "Succeeded", 2),
        ref("bad-3", "Failed", 3),
        ref("ok-4", "Succeeded", 4),
        ref("bad-5", "Failed", 5),
        ref("run-6", "Running", 6),
        ref("new-7", None, 7),
    ]
    doomed = schedule.runs_to_prune(runs, successful_limit=2, failed_limit=1)
    assert [run.name for run in doomed] == ["ok-1", "bad-3"]
    assert [r.name for r in schedule.runs_to_prune(runs, 0, 0)] == [
        "ok-1",
        "ok-2",
        "bad-3",
        "ok-4",
        "bad-5",
    ]
    with pytest.raises(ValueError, match="negative"):
        schedule.runs_to_prune(runs, -1, 0)
