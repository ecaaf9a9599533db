"""Which compliance policy applies in a namespace (pure: reads the operator's in-memory index).

The same rule as risk policies (:class:`decisions.PolicyKind`): the kopf index
``compliancepolicies`` is keyed by namespace and holds the namespace's *valid* policies; the
first by name is in use; with none, the built-in default applies (KYC Accepted only, no
sanctions list, AML at 10,000.00 USD a day).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import pydantic

from fintech_operator import api, decisions
from fintech_operator.compliance import aml, model


class InvalidPolicy(ValueError):
    """A policy the schema let through but the operator cannot use (e.g. an unknown zone)."""


def validate(spec: Mapping[str, Any]) -> api.CompliancePolicySpec:
    """Parse a spec, including the checks a schema cannot make; raises InvalidPolicy."""
    try:
        parsed = api.CompliancePolicySpec.model_validate(dict(spec))
    except pydantic.ValidationError as exc:
        raise InvalidPolicy(api.format_validation_error(exc)) from exc
    try:
        aml.settings(model.Policy(spec=parsed))
    except aml.InvalidTimeZone as exc:
        raise InvalidPolicy(f"spec.aml.timeZone: {exc}") from exc
    return parsed


KIND: Final = decisions.PolicyKind(
    make=model.Policy,
    validate=validate,
    invalid=InvalidPolicy,
    default=model.DEFAULT_POLICY,
)
# ``parse(namespace, name, spec)``: the policy an object describes, or None when it is
# invalid. ``select(index, namespace)``: the policy in use there, or the default.
parse: Final = KIND.parse
select: Final = KIND.select
