"""RiskPolicy and CompliancePolicy: validate, report which one is in use, load sanctions lists.

Decisions read policies from two kopf indexes keyed by namespace, kept current by kopf's
watches (no API call per card or posting):

- ``riskpolicies``: namespace -> the namespace's valid ``risk.model.Policy`` objects;
- ``compliancepolicies``: namespace -> its valid ``compliance.model.Policy`` objects.

``risk.policy.select(index, namespace)`` and ``compliance.policy.select(...)`` pick the one in
use (first by name) or the built-in default.
"""

from __future__ import annotations

from typing import Any, Final

import kopf
import pydantic

from fintech_operator import api
from fintech_operator.authorizations import mirror
from fintech_operator.compliance import lists
from fintech_operator.compliance import policy as compliance_policy
from fintech_operator.handlers import cards, report
from fintech_operator.risk import policy as risk_policy

# How often a policy re-checks which policy is in use and (compliance) reloads its list, so a
# new ConfigMap version or a deleted sibling policy shows in status within this time.
POLICY_RECHECK_INTERVAL_SECONDS: Final = 15.0


# --- Indexes --------------------------------------------------------------------------------------


@kopf.index(api.GROUP, api.VERSION, "riskpolicies")
def riskpolicies(namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> dict[Any, Any]:
    parsed = risk_policy.parse(str(namespace), name, spec)
    return {} if parsed is None else {namespace: parsed}


@kopf.index(api.GROUP, api.VERSION, "compliancepolicies")
def compliancepolicies(
    namespace: str | None, name: str, spec: kopf.Spec, **_: Any
) -> dict[Any, Any]:
    parsed = compliance_policy.parse(str(namespace), name, spec)
    return {} if parsed is None else {namespace: parsed}


# --- RiskPolicy -----------------------------------------------------------------------------------


@kopf.on.resume(api.GROUP, api.VERSION, "riskpolicies")
@kopf.on.create(api.GROUP, api.VERSION, "riskpolicies")
@kopf.on.update(api.GROUP, api.VERSION, "riskpolicies", field="spec")
async def reconcile_risk(
    body: kopf.Body,
    spec: kopf.Spec,
    patch: kopf.Patch,
    namespace: str | None,
    name: str,
    **kwargs: Any,
) -> None:
    generation = int(body.metadata.get("generation") or 0)
    riskpolicies: kopf.Index[Any, Any] = kwargs["riskpolicies"]
    try:
        parsed = api.RiskPolicySpec.model_validate(dict(spec))
    except pydantic.ValidationError as exc:
        _rejected(body, patch, api.PolicyReason.INVALID_SPEC, api.format_validation_error(exc))
        return
    in_use = risk_policy.select(riskpolicies, str(namespace)).name == name
    if in_use:
        # The real-time gateway applies its purchase rules from PostgreSQL (issue 13).
        async with kwargs["memo"].pool.connection() as conn:
            await mirror.put_risk_rules(conn, str(namespace), f"{namespace}/{name}", parsed)
    count = risk_policy.rule_count(parsed)
    message = f"{count} rule(s); {'in use' if in_use else 'not in use: ' + _shadow_note()}"
    patch.status.update(
        {
            "phase": api.RiskPolicyPhase.READY.value,
            "inUse": in_use,
            "rules": count,
            "reason": None,
            "message": None,
            "conditions": report.condition(
                body.status, api.READY, True, api.PolicyReason.VALID, message, generation
            ),
            "observedGeneration": generation,
        }
    )
    cards.normal_event(body, reason="PolicyReady", message=message)


@kopf.timer(api.GROUP, api.VERSION, "riskpolicies", interval=POLICY_RECHECK_INTERVAL_SECONDS)
async def recheck_risk(
    namespace: str | None,
    name: str,
    status: kopf.Status,
    patch: kopf.Patch,
    **kwargs: Any,
) -> None:
    """Keep ``status.inUse`` current as sibling policies come and go; write only a change."""
    riskpolicies: kopf.Index[Any, Any] = kwargs["riskpolicies"]
    if status.get("phase") != api.RiskPolicyPhase.READY.value:
        return
    in_use = risk_policy.select(riskpolicies, str(namespace)).name == name
    if status.get("inUse") != in_use:
        patch.status["inUse"] = in_use
        if in_use:  # A sibling went away: this policy's purchase rules now apply in real time.
            parsed = api.RiskPolicySpec.model_validate(dict(kwargs["spec"]))
            async with kwargs["memo"].pool.connection() as conn:
                await mirror.put_risk_rules(conn, str(namespace), f"{namespace}/{name}", parsed)


@kopf.on.delete(api.GROUP, api.VERSION, "riskpolicies", optional=True)
async def risk_deleted(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    """A deleted policy's purchase rules stop applying to real-time authorizations (when
    the operator sees the deletion: no finalizer holds a policy back for this). A sibling
    policy that takes over mirrors its own rules on its next check."""
    async with memo.pool.connection() as conn:
        await mirror.drop_risk_rules(conn, str(namespace), policy=f"{namespace}/{name}")


def _shadow_note() -> str:
    return "another valid policy comes first by name in this namespace"


def _rejected(body: kopf.Body, patch: kopf.Patch, reason: str, message: str) -> None:
    generation = int(body.metadata.get("generation") or 0)
    patch.status.update(
        {
            "phase": api.RiskPolicyPhase.REJECTED,  # the same word for both policy kinds
            "inUse": False,
            "reason": reason,
            "message": message[:1024],
            "conditions": report.condition(
                body.status, api.READY, False, reason, message, generation
            ),
            "observedGeneration": generation,
        }
    )
    kopf.warn(body, reason=reason, message=message[:1024])


# --- CompliancePolicy -----------------------------------------------------------------------------


@kopf.on.resume(api.GROUP, api.VERSION, "compliancepolicies")
@kopf.on.create(api.GROUP, api.VERSION, "compliancepolicies")
@kopf.on.update(api.GROUP, api.VERSION, "compliancepolicies", field="spec")
async def reconcile_compliance(
    body: kopf.Body,
    spec: kopf.Spec,
    patch: kopf.Patch,
    namespace: str | None,
    name: str,
    **kwargs: Any,
) -> None:
    try:
        parsed = compliance_policy.validate(spec)
    except compliance_policy.InvalidPolicy as exc:
        _rejected(body, patch, api.PolicyReason.INVALID_SPEC, str(exc))
        return
    await _report_compliance(
        body, patch, str(namespace), name, parsed, kwargs["compliancepolicies"]
    )


@kopf.timer(api.GROUP, api.VERSION, "compliancepolicies", interval=POLICY_RECHECK_INTERVAL_SECONDS)
async def recheck_compliance(
    body: kopf.Body,
    spec: kopf.Spec,
    patch: kopf.Patch,
    namespace: str | None,
    name: str,
    **kwargs: Any,
) -> None:
    """Reload the list when its ConfigMap changed and keep inUse current; write only changes."""
    ready, degraded = api.CompliancePolicyPhase.READY, api.CompliancePolicyPhase.DEGRADED
    if body.status.get("phase") not in (ready, degraded):
        return
    try:
        parsed = compliance_policy.validate(spec)
    except compliance_policy.InvalidPolicy:
        return
    await _report_compliance(
        body, patch, str(namespace), name, parsed, kwargs["compliancepolicies"], quiet=True
    )


async def _report_compliance(
    body: kopf.Body,
    patch: kopf.Patch,
    namespace: str,
    name: str,
    parsed: api.CompliancePolicySpec,
    index: kopf.Index[Any, Any],
    *,
    quiet: bool = False,
) -> None:
    generation = int(body.metadata.get("generation") or 0)
    in_use = compliance_policy.select(index, namespace).name == name
    phase, message, list_status = api.CompliancePolicyPhase.READY, "valid", None
    reason: str = api.PolicyReason.VALID
    sanctions = parsed.sanctions
    if sanctions is not None:
        try:
            loaded = await cards.LISTS.get(namespace, sanctions.config_map, sanctions.key)
        except lists.ListUnavailable as exc:
            phase, reason = api.CompliancePolicyPhase.DEGRADED, exc.reason
            message = f"{exc.message}; cards are held in PendingReview until the list loads"
        else:
            list_status = {
                "configMap": sanctions.config_map,
                "resourceVersion": loaded.resource_version,
                "entries": loaded.screener.size,
            }
            message = f"sanctions list {loaded.ref}: {loaded.screener.size} names"
    if not in_use:
        message += f"; not in use: {_shadow_note()}"
    changed = (
        body.status.get("phase") != phase
        or body.status.get("inUse") != in_use
        or body.status.get("sanctionsList") != list_status
        or body.status.get("observedGeneration") != generation
    )
    if quiet and not changed:
        return
    patch.status.update(
        {
            "phase": phase,
            "inUse": in_use,
            "sanctionsList": list_status,
            "reason": None if phase is api.CompliancePolicyPhase.READY else reason,
            "message": None if phase is api.CompliancePolicyPhase.READY else message[:1024],
            "conditions": report.condition(
                body.status,
                api.READY,
                phase is api.CompliancePolicyPhase.READY,
                reason,
                message,
                generation,
            ),
            "observedGeneration": generation,
        }
    )
    if phase is api.CompliancePolicyPhase.READY:
        cards.normal_event(body, reason="PolicyReady", message=message[:1024])
    else:
        kopf.warn(body, reason=reason, message=message[:1024])


__all__ = [
    "compliancepolicies",
    "recheck_compliance",
    "recheck_risk",
    "reconcile_compliance",
    "reconcile_risk",
    "riskpolicies",
]
