"""Which compliance policy applies in a namespace (pure: reads the operator's in-memory index).

The same rule as risk policies: the kopf index ``compliancepolicies`` is keyed by namespace and
holds the namespace's *valid* policies; the first by name is in use; with none, the built-in
default applies (KYC Accepted only, no sanctions list, AML at 10,000.00 USD a day).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pydantic

from fintech_operator import api
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


def parse(namespace: str, name: str, spec: Mapping[str, Any]) -> model.Policy | None:
    """The policy an object describes, or None when it is invalid (its status says why)."""
    try:
        parsed = validate(spec)
    except InvalidPolicy:
        return None
    return model.Policy(spec=parsed, namespace=namespace, name=name)


def select(index: Mapping[str, Iterable[model.Policy]], namespace: str) -> model.Policy:
    """The policy in use in ``namespace``: the first valid one by name, else the default."""
    found = index.get(namespace)
    candidates = sorted(found or (), key=lambda policy: policy.name or "")
    return candidates[0] if candidates else model.DEFAULT_POLICY
