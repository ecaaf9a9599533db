"""decisions.PolicyKind: how risk and compliance read their policy objects and pick one.

Pure. A toy kind proves the rule itself, including bad input; the risk and compliance
kinds are proven with their own specs in test_risk_engine.py and test_compliance_aml.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import pydantic
import pytest

from fintech_operator import decisions
from fintech_operator.compliance import model as compliance_model
from fintech_operator.compliance import policy as compliance_policy
from fintech_operator.risk import model as risk_model
from fintech_operator.risk import policy as risk_policy


class ToySpec(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    limit: int = pydantic.Field(default=1, ge=1)


class ToyPolicy(decisions.Policy[ToySpec]):
    """A policy of a kind made up for these tests."""


class Unusable(ValueError):
    """What the toy kind's validator raises for a spec it refuses."""


def _validate(spec: Mapping[str, Any]) -> ToySpec:
    if spec.get("limit") == 13:
        raise Unusable("13 is unlucky")  # a check a schema cannot make
    if spec.get("limit") == 99:
        raise KeyError("a bug in the validator")
    try:
        return ToySpec.model_validate(dict(spec))
    except pydantic.ValidationError as exc:
        raise Unusable(str(exc)) from exc


DEFAULT: Final = ToyPolicy(spec=ToySpec())
KIND: Final = decisions.PolicyKind(
    make=ToyPolicy, validate=_validate, invalid=Unusable, default=DEFAULT
)


def test_parse_builds_the_policy_with_its_namespace_and_name() -> None:
    """A valid spec becomes a policy of the kind's own class, recorded as namespace/name."""
    parsed = KIND.parse("shop", "strict", {"limit": 5})
    assert isinstance(parsed, ToyPolicy)
    assert parsed.spec == ToySpec(limit=5)
    assert parsed.ref == "shop/strict"


@pytest.mark.parametrize("spec", [{"limit": 0}, {"limit": "many"}, {"unknown": 1}, {"limit": 13}])
def test_parse_returns_none_for_every_spec_the_kind_refuses(spec: dict[str, Any]) -> None:
    """Schema errors and the kind's own checks alike: an invalid object is never indexed."""
    assert KIND.parse("shop", "bad", spec) is None


def test_parse_lets_any_other_error_through() -> None:
    """Only the kind's 'invalid' exception means a bad spec; a bug in a validator surfaces."""
    with pytest.raises(KeyError, match="a bug"):
        KIND.parse("shop", "bad", {"limit": 99})


def test_select_takes_the_first_by_name_or_the_default() -> None:
    """Several valid policies: the first by name, whatever the index's order; a namespace
    with none, or with an empty entry, gets the default."""
    b = KIND.parse("shop", "b", {})
    a = KIND.parse("shop", "a", {"limit": 2})
    assert a is not None
    assert b is not None
    assert KIND.select({"shop": [b, a]}, "shop") is a
    assert KIND.select({"shop": (p for p in [b])}, "shop") is b
    assert KIND.select({"shop": []}, "shop") is DEFAULT
    assert KIND.select({"shop": [a]}, "other") is DEFAULT
    assert KIND.select({}, "shop") is DEFAULT
    assert DEFAULT.ref == decisions.BUILTIN_REF


def test_risk_and_compliance_use_the_rule_with_their_own_defaults() -> None:
    """Each domain's kind builds its own policy class and falls back to its own default."""
    assert risk_policy.select({}, "n") is risk_model.DEFAULT_POLICY
    assert compliance_policy.select({}, "n") is compliance_model.DEFAULT_POLICY
    assert isinstance(risk_policy.parse("n", "r", {}), risk_model.Policy)
    assert isinstance(compliance_policy.parse("n", "c", {}), compliance_model.Policy)
    assert risk_policy.KIND.invalid is pydantic.ValidationError
    assert compliance_policy.KIND.invalid is compliance_policy.InvalidPolicy
