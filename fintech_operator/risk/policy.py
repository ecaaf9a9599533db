"""Which risk policy applies in a namespace (pure: reads the operator's in-memory index).

The handlers keep a kopf index ``riskpolicies`` keyed by namespace whose values are the
namespace's *valid* policies as :class:`model.Policy`. A namespace may hold several; the first
by name is the one in use, so the choice is deterministic and visible (``status.inUse``). With
none, the built-in default applies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pydantic

from fintech_operator import api
from fintech_operator.risk import model


def parse(namespace: str, name: str, spec: Mapping[str, Any]) -> model.Policy | None:
    """The policy an object describes, or None when its spec is invalid (its status says why)."""
    try:
        parsed = api.RiskPolicySpec.model_validate(dict(spec))
    except pydantic.ValidationError:
        return None
    return model.Policy(spec=parsed, namespace=namespace, name=name)


def select(index: Mapping[str, Iterable[model.Policy]], namespace: str) -> model.Policy:
    """The policy in use in ``namespace``: the first valid one by name, else the default."""
    found = index.get(namespace)
    candidates = sorted(found or (), key=lambda policy: policy.name or "")
    return candidates[0] if candidates else model.DEFAULT_POLICY


def rule_count(spec: api.RiskPolicySpec) -> int:
    """How many rules a policy sets, for ``status.rules``."""
    singles = (
        spec.max_amount_per_transaction,
        spec.blocked_mccs,
        spec.blocked_merchant_countries,
        spec.blocked_holder_countries,
        spec.max_cards_per_user,
    )
    return sum(rule is not None for rule in singles) + len(spec.velocity)
