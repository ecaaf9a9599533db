"""AML monitoring rules (pure): a daily threshold per card and a structuring rule.

Both look at one card's postings in one *business day* (the calendar day of the policy's time
zone) and include the posting being made:

- ``DailyThreshold``: the day's total reaches the threshold (at or above).
- ``Structuring``: at least ``minCount`` postings of the day were each *just under* the
  threshold, i.e. from ``threshold x (1 - margin)`` up to but not including the threshold: the
  classic pattern of splitting a sum to stay below a reporting limit.

Alerts never block a posting; they are recorded, published and left to people.
"""

from __future__ import annotations

import datetime
import zoneinfo
from dataclasses import dataclass
from typing import Final

from fintech_operator import api
from fintech_operator.api import compliancepolicy
from fintech_operator.compliance import model

BPS: Final = 10_000


class InvalidTimeZone(ValueError):
    """The policy names a time zone this system does not know."""


@dataclass(frozen=True)
class Settings:
    """A policy's AML section with every default filled in."""

    threshold_minor: int
    currency: str
    posting_types: frozenset[str]
    structuring_min_count: int | None  # None: the structuring rule is off.
    structuring_floor_minor: int
    time_zone: str

    def to_json(self) -> dict[str, object]:
        return {
            "thresholdMinor": self.threshold_minor,
            "currency": self.currency,
            "postingTypes": sorted(self.posting_types),
            "structuringMinCount": self.structuring_min_count,
            "structuringFloorMinor": self.structuring_floor_minor,
            "timeZone": self.time_zone,
        }


@dataclass(frozen=True)
class DayActivity:
    """A card's postings of the business day *before* the one being monitored."""

    count: int
    total_minor: int
    near_threshold_count: int

    def __post_init__(self) -> None:
        for name in ("count", "total_minor", "near_threshold_count"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise model.InvalidFacts(f"{name} must be an int >= 0, got {value!r}")
        if self.near_threshold_count > self.count:
            raise model.InvalidFacts("near_threshold_count cannot exceed count")

    def to_json(self) -> dict[str, object]:
        return {
            "count": self.count,
            "totalMinor": self.total_minor,
            "nearThresholdCount": self.near_threshold_count,
        }


def floor_minor(threshold_minor: int, margin_bps: int) -> int:
    """Smallest amount that is "just under" the threshold: ceil(threshold x (1 - margin))."""
    return -(-threshold_minor * (BPS - margin_bps) // BPS)


def time_zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidTimeZone(f"unknown time zone {name!r}") from exc


def settings(policy: model.Policy) -> Settings:
    """The AML settings of a policy, defaults applied; refuses an unknown time zone."""
    rules = policy.spec.aml or api.AmlRules()
    threshold = rules.daily_threshold
    amount = (
        threshold.amount_minor
        if threshold is not None
        else compliancepolicy.AML_DAILY_THRESHOLD_MINOR_DEFAULT
    )
    currency = (
        threshold.currency
        if threshold is not None
        else compliancepolicy.AML_DAILY_THRESHOLD_CURRENCY_DEFAULT
    )
    structuring = rules.structuring or api.StructuringRule()
    time_zone(rules.time_zone)
    return Settings(
        threshold_minor=amount,
        currency=currency,
        posting_types=frozenset(t.value for t in rules.posting_types),
        structuring_min_count=structuring.min_count if structuring.enabled else None,
        structuring_floor_minor=floor_minor(amount, structuring.margin_bps),
        time_zone=rules.time_zone,
    )


def monitors(config: Settings, facts: model.AmlFacts) -> bool:
    """Whether the posting is monitored at all: a counted type in the threshold's currency."""
    return facts.kind in config.posting_types and facts.currency == config.currency


def is_near_threshold(config: Settings, amount_minor: int) -> bool:
    return config.structuring_floor_minor <= amount_minor < config.threshold_minor


def business_day(now: datetime.datetime, zone_name: str) -> datetime.date:
    """The calendar date of ``now`` (aware) in the policy's time zone."""
    if now.utcoffset() is None:
        raise model.InvalidFacts("now must be timezone-aware")
    return now.astimezone(time_zone(zone_name)).date()


def day_bounds(day: datetime.date, zone_name: str) -> tuple[datetime.datetime, datetime.datetime]:
    """[start, end) of a business day in UTC; a daylight-saving day is 23 or 25 hours long.

    Returned in UTC because Python subtracts two times of the *same* zone by wall clock, which
    would hide the missing or extra hour.
    """
    zone = time_zone(zone_name)
    start = datetime.datetime.combine(day, datetime.time(0), tzinfo=zone)
    end = datetime.datetime.combine(day + datetime.timedelta(days=1), datetime.time(0), tzinfo=zone)
    return start.astimezone(datetime.UTC), end.astimezone(datetime.UTC)


def evaluate(
    config: Settings, facts: model.AmlFacts, before: DayActivity
) -> tuple[model.AlertKind, ...]:
    """Alerts the day's activity calls for once this posting is added (may be none)."""
    if not monitors(config, facts):
        return ()
    alerts: list[model.AlertKind] = []
    if before.total_minor + facts.amount_minor >= config.threshold_minor:
        alerts.append(model.AlertKind.DAILY_THRESHOLD)
    near = before.near_threshold_count + (1 if is_near_threshold(config, facts.amount_minor) else 0)
    if config.structuring_min_count is not None and near >= config.structuring_min_count:
        alerts.append(model.AlertKind.STRUCTURING)
    return tuple(alerts)
