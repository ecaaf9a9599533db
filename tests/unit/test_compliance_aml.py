"""AML rules: daily threshold, structuring, business days, and policy validation (pure)."""

from __future__ import annotations

import datetime
from typing import Any

import pydantic
import pytest

from fintech_operator import api
from fintech_operator.compliance import aml, model, policy

DAILY = model.AlertKind.DAILY_THRESHOLD
STRUCT = model.AlertKind.STRUCTURING


def make_policy(**spec: Any) -> model.Policy:
    return model.Policy(spec=api.CompliancePolicySpec.model_validate(spec), namespace="n", name="c")


def facts(
    amount_minor: int = 10_000, kind: str = "Purchase", currency: str = "USD"
) -> model.AmlFacts:
    return model.AmlFacts(
        card="n/card",
        account_code="card:n/card:USD",
        posting_key="n/p1",
        kind=kind,
        amount_minor=amount_minor,
        currency=currency,
    )


def before(count: int = 0, total: int = 0, near: int = 0) -> aml.DayActivity:
    return aml.DayActivity(count=count, total_minor=total, near_threshold_count=near)


DEFAULTS = aml.settings(model.DEFAULT_POLICY)


def test_defaults() -> None:
    """Default: 10,000.00 USD a day, Purchase and Payment, 3 postings within 10% under it."""
    assert DEFAULTS.threshold_minor == 1_000_000
    assert DEFAULTS.currency == "USD"
    assert DEFAULTS.posting_types == {"Purchase", "Payment"}
    assert DEFAULTS.structuring_min_count == 3
    assert DEFAULTS.structuring_floor_minor == 900_000
    assert DEFAULTS.time_zone == "UTC"


@pytest.mark.parametrize(
    ("threshold", "margin", "floor"),
    [(1_000_000, 1_000, 900_000), (1_001, 1_000, 901), (999, 1, 999), (10, 5_000, 5)],
)
def test_floor_is_exact_integer_arithmetic(threshold: int, margin: int, floor: int) -> None:
    """The floor of 'just under' rounds up, in integers: no float touches an amount."""
    assert aml.floor_minor(threshold, margin) == floor


DAILY_CASES = [
    (facts(100_000), before(3, 850_000), ()),  # 950,000: below.
    (facts(150_000), before(3, 850_000), (DAILY,)),  # 1,000,000: at the threshold alerts.
    (facts(1_500_000), before(), (DAILY,)),  # One large posting alone.
    (facts(2_000_000, kind="Refund"), before(), ()),  # Refunds are not counted.
    (facts(2_000_000, kind="Fee"), before(), ()),
    (facts(2_000_000, currency="EUR"), before(), ()),  # Other currencies are not summed.
    (facts(500_000, kind="Payment"), before(1, 500_000), (DAILY,)),
]


@pytest.mark.parametrize(("posting", "day", "alerts"), DAILY_CASES)
def test_daily_threshold(
    posting: model.AmlFacts, day: aml.DayActivity, alerts: tuple[model.AlertKind, ...]
) -> None:
    """The day's total with this posting alerts at or above the threshold, if counted at all."""
    assert aml.evaluate(DEFAULTS, posting, day) == alerts


STRUCTURING_CASES = [
    (facts(950_000), before(1, 950_000, 1), (DAILY,)),  # Two near: not yet (but the total is over).
    (facts(950_000), before(2, 0, 2), (STRUCT,)),  # Third near: structuring.
    (facts(899_999), before(2, 0, 2), ()),  # Below the floor: not near.
    (facts(900_000), before(2, 0, 2), (STRUCT,)),  # The floor itself is near.
    (facts(1_000_000), before(2, 0, 2), (DAILY,)),  # At the threshold is not "under" it.
    (facts(10), before(3, 0, 3), (STRUCT,)),  # Three near earlier today: still structuring.
]


@pytest.mark.parametrize(("posting", "day", "alerts"), STRUCTURING_CASES)
def test_structuring(
    posting: model.AmlFacts, day: aml.DayActivity, alerts: tuple[model.AlertKind, ...]
) -> None:
    """Three postings each within 10% under the threshold in one day raise Structuring."""
    assert aml.evaluate(DEFAULTS, posting, day) == alerts


def test_structuring_can_be_tuned_or_turned_off() -> None:
    """minCount and margin come from the policy; enabled false turns the rule off."""
    tuned = aml.settings(
        make_policy(
            aml={
                "dailyThreshold": {"amount": 100_000, "currency": "EUR"},
                "structuring": {"minCount": 2, "marginBps": 2_000},
            }
        )
    )
    assert (tuned.structuring_floor_minor, tuned.currency) == (80_000, "EUR")
    assert aml.evaluate(tuned, facts(80_000, currency="EUR"), before(1, 80_000, 1)) == (
        DAILY,
        STRUCT,
    )
    off = aml.settings(make_policy(aml={"structuring": {"enabled": False}}))
    assert off.structuring_min_count is None
    assert aml.evaluate(off, facts(950_000), before(5, 0, 5)) == ()


@pytest.mark.parametrize(
    ("moment", "zone", "day"),
    [
        ("2025-01-15T23:30:00+00:00", "UTC", "2025-01-15"),
        ("2025-01-15T23:30:00+00:00", "Asia/Tokyo", "2025-01-16"),
        ("2025-01-16T03:30:00+00:00", "America/New_York", "2025-01-15"),
    ],
)
def test_business_day_in_the_policy_time_zone(moment: str, zone: str, day: str) -> None:
    """The business day is the calendar day where the policy says the business is."""
    now = datetime.datetime.fromisoformat(moment)
    assert aml.business_day(now, zone).isoformat() == day


def test_day_bounds_follow_daylight_saving() -> None:
    """A spring-forward day is 23 hours long, a fall-back day 25; a normal day 24."""

    def hours(day: str, zone: str) -> float:
        start, end = aml.day_bounds(datetime.date.fromisoformat(day), zone)
        return (end - start).total_seconds() / 3600

    assert hours("2025-03-09", "America/New_York") == 23
    assert hours("2025-11-02", "America/New_York") == 25
    assert hours("2025-01-15", "UTC") == 24


def test_bad_times_and_zones_are_refused() -> None:
    """A naive time or an unknown zone is refused rather than guessed."""
    with pytest.raises(model.InvalidFacts):
        aml.business_day(datetime.datetime(2025, 1, 1), "UTC")
    with pytest.raises(aml.InvalidTimeZone):
        aml.business_day(datetime.datetime.now(datetime.UTC), "Mars/Olympus_Mons")


@pytest.mark.parametrize(
    "bad",
    [
        {"count": -1},
        {"total_minor": 1.5},
        {"near_threshold_count": True},
        {"count": 1, "near_threshold_count": 2},
    ],
)
def test_bad_day_activity_is_refused(bad: dict[str, Any]) -> None:
    """Totals read back from the database are checked like every amount."""
    values: dict[str, Any] = {"count": 0, "total_minor": 0, "near_threshold_count": 0, **bad}
    with pytest.raises(model.InvalidFacts):
        aml.DayActivity(**values)


@pytest.mark.parametrize(
    "bad",
    [
        {"amount_minor": 10.0},
        {"amount_minor": 0},
        {"amount_minor": "5"},
        {"currency": "usd"},
        {"kind": "Reversal"},
        {"card": "card-without-namespace"},
        {"posting_key": ""},
    ],
)
def test_bad_aml_facts_are_refused(bad: dict[str, Any]) -> None:
    """A float amount or a malformed reference never reaches the AML rules."""
    values: dict[str, Any] = {
        "card": "n/card",
        "account_code": "card:n/card:USD",
        "posting_key": "n/p1",
        "kind": "Purchase",
        "amount_minor": 10,
        "currency": "USD",
        **bad,
    }
    with pytest.raises(model.InvalidFacts):
        model.AmlFacts(**values)


# --- Policies -------------------------------------------------------------------------------------

INVALID_COMPLIANCE = [
    ({"sanctions": {"configMap": "sdn", "matchThresholdBps": 7999}}, "matchThresholdBps"),
    ({"sanctions": {"configMap": "sdn", "matchThresholdBps": 10_001}}, "matchThresholdBps"),
    ({"sanctions": {"configMap": "sdn", "matchThresholdBps": 0.9}}, "matchThresholdBps"),
    ({"sanctions": {"configMap": "Not_A_Name"}}, "configMap"),
    ({"sanctions": {"configMap": "sdn", "key": "../etc"}}, "key"),
    ({"sanctions": {}}, "configMap"),
    ({"aml": {"dailyThreshold": {"amount": 1000.5, "currency": "USD"}}}, "amount"),
    ({"aml": {"dailyThreshold": {"amount": 0, "currency": "USD"}}}, "amount"),
    ({"aml": {"structuring": {"minCount": 1}}}, "minCount"),
    ({"aml": {"structuring": {"marginBps": 5001}}}, "marginBps"),
    ({"aml": {"postingTypes": ["Payment", "Payment"]}}, "twice"),
    ({"aml": {"timeZone": "Mars/Olympus_Mons"}}, "unknown time zone"),
    ({"aml": {"timeZone": "UTC; DROP"}}, "timeZone"),
    ({"kyc": {"allowReview": "yes"}}, "allowReview"),
    ({"kcy": {}}, "kcy"),
]


@pytest.mark.parametrize(("spec", "needle"), INVALID_COMPLIANCE)
def test_invalid_compliance_policies_are_refused(spec: dict[str, Any], needle: str) -> None:
    """Every validator, including the time zone a schema cannot check, refuses bad input."""
    with pytest.raises(policy.InvalidPolicy, match=needle):
        policy.validate(spec)
    assert policy.parse("n", "bad", spec) is None


def test_compliance_policy_selection_and_defaults() -> None:
    """An empty spec is a complete policy; the first valid policy by name is in use."""
    assert api.CompliancePolicySpec.model_validate({}) == api.CompliancePolicySpec()
    first = policy.parse("n", "a", {"kyc": {"allowReview": True}})
    second = policy.parse("n", "b", {})
    assert first is not None
    assert second is not None
    assert policy.select({"n": [second, first]}, "n") is first
    assert policy.select({}, "n") is model.DEFAULT_POLICY
    assert model.DEFAULT_POLICY.ref == "builtin/default"
    assert first.ref == "n/a"


def test_spec_models_refuse_floats_before_policy_validation() -> None:
    """The pydantic models themselves refuse a float amount (money is never a float)."""
    with pytest.raises(pydantic.ValidationError):
        api.PolicyMoney.model_validate({"amount": 12.0, "currency": "USD"})
