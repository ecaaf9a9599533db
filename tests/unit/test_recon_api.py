"""The ReconciliationRun and ReconciliationSchedule models: defaults, and refusal of bad specs."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from fintech_operator import api
from fintech_operator.api import crdgen
from fintech_operator.recon import plans

INLINE = {
    "inline": [
        {
            "reference": "R-1",
            "amount": 1250,
            "currency": "USD",
            "occurredAt": "2024-03-01T09:00:00Z",
        }
    ]
}


def test_defaults_run_every_check_with_a_day_of_time_tolerance() -> None:
    """A minimal run checks everything, exactly, with a day of time tolerance, for real."""
    spec = api.ReconciliationRunSpec.model_validate({"source": INLINE})
    plan = plans.plan_of(spec)
    assert {check.value for check in plan.checks} == {
        "Settlement",
        "TrialBalance",
        "Rewards",
        "Events",
    }
    assert (plan.tolerances.amount_minor, plan.tolerances.time_seconds) == (0, 86_400)
    assert (plan.window, plan.dry_run, plan.event_lag_seconds_max) == (None, False, 300)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({}, "source is required"),
        ({"source": {}}, "exactly one"),
        (
            {"source": {**INLINE, "configMapKeyRef": {"name": "a", "key": "b"}}},
            "exactly one",
        ),
        ({"source": {"http": {"url": "ftp://example/x"}}}, "url"),
        ({"source": {"configMapKeyRef": {"name": "A_B", "key": "k"}}}, "name"),
        ({"source": {"configMapKeyRef": {"name": "a", "key": "k/x"}}}, "key"),
        ({"source": INLINE, "format": "xml"}, "format"),
        ({"source": INLINE, "checks": []}, "checks"),
        ({"source": INLINE, "checks": ["Rewards", "Rewards"]}, "twice"),
        ({"source": INLINE, "checks": ["Everything"]}, "checks"),
        ({"source": INLINE, "matching": {"amountToleranceMinor": -1}}, "amountToleranceMinor"),
        ({"source": INLINE, "matching": {"amountToleranceMinor": 1.5}}, "amountToleranceMinor"),
        ({"source": INLINE, "matching": {"timeToleranceSeconds": "60"}}, "timeToleranceSeconds"),
        (
            {
                "source": INLINE,
                "window": {"start": "2024-03-02T00:00:00Z", "end": "2024-03-01T00:00:00Z"},
            },
            "before",
        ),
        ({"source": INLINE, "window": {"start": "2024-03-01T00:00:00"}}, "window"),
        ({"source": INLINE, "eventLagSecondsMax": 0}, "eventLagSecondsMax"),
        ({"source": INLINE, "unknown": True}, "unknown"),
        (
            {
                "source": {
                    "inline": [
                        {
                            "reference": "R",
                            "amount": 1.0,
                            "currency": "USD",
                            "occurredAt": "2024-03-01T00:00:00Z",
                        }
                    ]
                }
            },
            "amount",
        ),
    ],
)
def test_bad_run_specs_are_refused(spec: dict[str, Any], fragment: str) -> None:
    """Each malformed spec is refused with a message naming the field or rule it breaks."""
    with pytest.raises(pydantic.ValidationError) as caught:
        api.ReconciliationRunSpec.model_validate(spec)
    assert fragment in api.format_validation_error(caught.value)


def test_source_may_be_omitted_when_settlement_is_not_checked() -> None:
    """Internal checks alone need no settlement file."""
    spec = api.ReconciliationRunSpec.model_validate({"checks": ["TrialBalance", "Events"]})
    assert spec.source is None


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"schedule": "0 25 * * *", "template": {"checks": ["Events"]}}, "hour"),
        ({"schedule": "daily", "template": {"checks": ["Events"]}}, "schedule"),
        ({"schedule": "@daily", "template": {}}, "source is required"),
        (
            {"schedule": "@daily", "template": {"checks": ["Events"]}, "windowSeconds": 59},
            "windowSeconds",
        ),
        (
            {
                "schedule": "@daily",
                "template": {"checks": ["Events"]},
                "successfulRunsHistoryLimit": -1,
            },
            "successfulRunsHistoryLimit",
        ),
        ({"schedule": "@daily", "template": {"checks": ["Events"], "window": {}}}, "window"),
    ],
)
def test_bad_schedules_are_refused(spec: dict[str, Any], fragment: str) -> None:
    """A bad cron, a bad template (runs set their own window), or bad limits are refused."""
    with pytest.raises(pydantic.ValidationError) as caught:
        api.ReconciliationScheduleSpec.model_validate(spec)
    assert fragment in api.format_validation_error(caught.value)


def test_crds_carry_immutability_and_the_source_rules() -> None:
    """The generated CRD refuses spec changes and bad sources at apply time (CEL rules)."""
    crds = {crd["spec"]["names"]["kind"]: crd for crd in crdgen.render_all()}
    schema = crds["ReconciliationRun"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = schema["properties"]["spec"]
    rules = [rule["rule"] for rule in spec["x-kubernetes-validations"]]
    assert "self == oldSelf" in rules
    assert any("Settlement" in rule for rule in rules)
    source_rules = spec["properties"]["source"]["x-kubernetes-validations"]
    assert "size() == 1" in source_rules[0]["rule"]
    assert "ReconciliationSchedule" in crds
