"""Which risk policy applies in a namespace (pure: reads the operator's in-memory index).

The handlers keep a kopf index ``riskpolicies`` keyed by namespace whose values are the
namespace's *valid* policies as :class:`model.Policy`; :class:`decisions.PolicyKind` says
which one is in use (the first by name; with none, the built-in default).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import pydantic

from fintech_operator import api, decisions
from fintech_operator.risk import model


def _validate(spec: Mapping[str, Any]) -> api.RiskPolicySpec:
    return api.RiskPolicySpec.model_validate(dict(spec))


KIND: Final = decisions.PolicyKind(
    make=model.Policy,
    validate=_validate,
    invalid=pydantic.ValidationError,
    default=model.DEFAULT_POLICY,
)
# ``parse(namespace, name, spec)``: the policy an object describes, or None when its spec is
# invalid. ``select(index, namespace)``: the policy in use there, or the default.
parse: Final = KIND.parse
select: Final = KIND.select


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
