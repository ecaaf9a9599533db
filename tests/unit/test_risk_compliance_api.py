"""The RiskPolicy, CompliancePolicy and CardReview kinds follow the API's conventions (pure)."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from fintech_operator import api
from fintech_operator.api import cardreview, compliancepolicy, riskpolicy

MINE = (riskpolicy.KIND_INFO, compliancepolicy.KIND_INFO, cardreview.KIND_INFO)
# kubectl's own short names a CRD must not take (the API server refuses a clash).
BUILTIN_SHORT_NAMES = {"cm", "cs", "ds", "ep", "ev", "hpa", "ing", "no", "ns", "po", "pv", "pvc"}


def test_kinds_are_registered() -> None:
    """The three kinds are in KINDS, so crdgen makes their CRDs and tests cover them."""
    assert all(info in api.KINDS for info in MINE)


def test_short_names_are_unique() -> None:
    """A short name used twice makes the API server refuse the second CRD's names."""
    names = [name for info in api.KINDS for name in info.short_names]
    assert len(names) == len(set(names)), names
    assert not set(names) & BUILTIN_SHORT_NAMES


def test_empty_specs_are_complete_policies() -> None:
    """An empty RiskPolicy sets no rule; an empty CompliancePolicy takes every default."""
    risk = api.RiskPolicySpec.model_validate({})
    assert risk.velocity == []
    assert risk.posting_types == (api.PostingType.PURCHASE,)
    assert api.CompliancePolicySpec.model_validate({}).sanctions is None


def review_spec(**overrides: Any) -> dict[str, Any]:
    return {
        "card": "c1",
        "decision": "Approve",
        "reviewer": "ana@example.com",
        "comment": "checked",
        **overrides,
    }


def test_card_review_accepts_a_decision() -> None:
    """A complete review parses with its decision as an enum."""
    parsed = api.CardReviewSpec.model_validate(review_spec())
    assert parsed.decision is api.ReviewDecision.APPROVE


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"decision": "Maybe"}, "decision"),
        ({"card": "Not_A_Name"}, "card"),
        ({"reviewer": ""}, "reviewer"),
        ({"reviewer": " leading-space"}, "reviewer"),
        ({"comment": ""}, "comment"),
        ({"comment": "x" * 1025}, "comment"),
        ({"extra": 1}, "extra"),
    ],
)
def test_card_review_refuses_bad_input(overrides: dict[str, Any], needle: str) -> None:
    """A review without a valid decision, card, reviewer or comment is refused by name."""
    with pytest.raises(pydantic.ValidationError) as caught:
        api.CardReviewSpec.model_validate(review_spec(**overrides))
    assert needle in api.format_validation_error(caught.value)


def test_card_review_spec_is_immutable_in_the_schema() -> None:
    """The API server refuses any edit of a recorded decision (CEL self == oldSelf)."""
    schema = api.CardReviewSpec.model_json_schema()
    assert schema["x-kubernetes-validations"][0]["rule"] == "self == oldSelf"
