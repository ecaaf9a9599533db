"""RiskPolicy and CompliancePolicy: validate, report which one is in use, load sanctions lists.

Decisions read policies from two kopf indexes keyed by namespace, kept current by kopf's
watches (no API call per card or posting):

- ``riskpolicies``: namespace -> the namespace's valid ``risk.model.Policy`` objects;
- ``compliancepolicies``: namespace -> its valid ``compliance.model.Policy`` objects.

``risk.policy.select(index, namespace)`` and ``compliance.policy.select(...)`` pick the one in
use (first by name) or the built-in default. Both kinds share one handler and one timer:
decode into :class:`app.policies.CheckPolicy`, call the kind's check, render the outcome.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import kopf

from fintech_operator import api, decisions
from fintech_operator.app import policies as use_case
from fintech_operator.app.outcomes import Rejected
from fintech_operator.compliance import policy as compliance_policy
from fintech_operator.handlers import cards, report, wiring
from fintech_operator.handlers.context import OperatorMemo
from fintech_operator.risk import policy as risk_policy

if TYPE_CHECKING:
    from fintech_operator import config

# How often a policy re-checks which policy is in use and (compliance) reloads its list, so a
# new ConfigMap version or a deleted sibling policy shows in status within this time.
POLICY_RECHECK_INTERVAL_SECONDS: Final = 15.0
RISK: Final = "riskpolicies"
COMPLIANCE: Final = "compliancepolicies"
# A policy is rechecked only once it has been found valid.
CHECKED_PHASES: Final = frozenset(
    {api.CompliancePolicyPhase.READY, api.CompliancePolicyPhase.DEGRADED}
)


# --- Indexes --------------------------------------------------------------------------------------


def riskpolicies(namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> dict[Any, Any]:
    parsed = risk_policy.parse(str(namespace), name, spec)
    return {} if parsed is None else {namespace: parsed}


def compliancepolicies(
    namespace: str | None, name: str, spec: kopf.Spec, **_: Any
) -> dict[Any, Any]:
    parsed = compliance_policy.parse(str(namespace), name, spec)
    return {} if parsed is None else {namespace: parsed}


# --- Both kinds -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Selection:
    """:class:`app.policies.Selection` read from the kind's kopf index."""

    kind: decisions.PolicyKind[Any, Any]
    index: Mapping[str, Any]

    def in_use(self, namespace: str, name: str) -> bool:
        return bool(self.kind.select(self.index, namespace).name == name)


async def _check_risk(
    command: use_case.CheckPolicy, memo: OperatorMemo, index: Mapping[str, Any]
) -> use_case.Outcome:
    selection = _Selection(risk_policy.KIND, index)
    return await use_case.check_risk_policy(
        command, selection, use_case.MirroredRiskRules(memo.pool)
    )


async def _check_compliance(
    command: use_case.CheckPolicy, memo: OperatorMemo, index: Mapping[str, Any]
) -> use_case.Outcome:
    selection = _Selection(compliance_policy.KIND, index)
    return await use_case.check_compliance_policy(command, selection, cards.LISTS)


_CHECKS: Final[
    Mapping[
        str,
        Callable[
            [use_case.CheckPolicy, OperatorMemo, Mapping[str, Any]], Awaitable[use_case.Outcome]
        ],
    ]
] = {RISK: _check_risk, COMPLIANCE: _check_compliance}


async def check(
    body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch, memo: OperatorMemo, **kwargs: Any
) -> None:
    """Validate the policy and report it: phase, whether it is in use, its rules or list."""
    plural = kwargs["resource"].plural
    command = _command(body, spec, spec_changed=True)
    outcome = await _CHECKS[plural](command, memo, kwargs[plural])
    _render(body, patch, plural, outcome, quiet=False)


async def recheck(
    body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch, memo: OperatorMemo, **kwargs: Any
) -> None:
    """Keep inUse and the sanctions list current as siblings and lists change; write only a
    change (a spec found invalid is left to :func:`check`, which runs on every spec change)."""
    if body.status.get("phase") not in CHECKED_PHASES:
        return
    plural = kwargs["resource"].plural
    command = _command(body, spec, spec_changed=False)
    outcome = await _CHECKS[plural](command, memo, kwargs[plural])
    if not isinstance(outcome, Rejected):
        _render(body, patch, plural, outcome, quiet=True)


async def risk_deleted(namespace: str | None, name: str, memo: OperatorMemo, **_: Any) -> None:
    """A deleted policy's purchase rules stop applying to real-time authorizations (when
    the operator sees the deletion: no finalizer holds a policy back for this). A sibling
    policy that takes over mirrors its own rules on its next check."""
    await use_case.MirroredRiskRules(memo.pool).drop(str(namespace), f"{namespace}/{name}")


def _command(body: kopf.Body, spec: kopf.Spec, *, spec_changed: bool) -> use_case.CheckPolicy:
    was_in_use = body.status.get("inUse")
    return use_case.CheckPolicy(
        namespace=report.namespace_of(body.metadata.namespace),
        name=str(body.metadata.name),
        spec=spec,
        spec_changed=spec_changed,
        was_in_use=was_in_use if isinstance(was_in_use, bool) else None,
    )


# --- Rendering ------------------------------------------------------------------------------------


def _render(
    body: kopf.Body, patch: kopf.Patch, plural: str, outcome: use_case.Outcome, *, quiet: bool
) -> None:
    """Write the outcome into status with an Event; when ``quiet``, only if it changed."""
    generation = report.generation_of(body)
    ok = isinstance(outcome, use_case.Checked) and outcome.usable
    message = outcome.message[:1024]
    conditions = report.conditions(body.status, api.READY, ok, outcome.reason, message, generation)
    status = (_risk_status if plural == RISK else _compliance_status)(
        outcome, conditions, generation
    )
    if quiet and not _changed(body.status, report.status_fields(status)):
        return
    report.write_status(patch, status)
    if ok:
        cards.normal_event(body, reason=api.common.PolicyEvent.READY, message=message)
    else:
        kopf.warn(body, reason=outcome.reason, message=message)


def _changed(current: Mapping[str, Any], fields: Mapping[str, Any]) -> bool:
    """Whether status would change beyond its words (conditions and message follow the rest)."""
    return any(
        current.get(key) != value
        for key, value in fields.items()
        if key not in {"conditions", "message"}
    )


def _risk_status(
    outcome: use_case.Outcome, conditions: list[api.Condition], generation: int
) -> api.RiskPolicyStatus:
    if isinstance(outcome, Rejected):
        return api.RiskPolicyStatus(
            phase=api.RiskPolicyPhase.REJECTED,
            in_use=False,
            reason=outcome.reason,
            message=outcome.message[:1024],
            conditions=conditions,
            observed_generation=generation,
        )
    return api.RiskPolicyStatus(
        phase=api.RiskPolicyPhase.READY,
        in_use=outcome.in_use,
        rules=outcome.rules,
        reason=None,
        message=None,
        conditions=conditions,
        observed_generation=generation,
    )


def _compliance_status(
    outcome: use_case.Outcome, conditions: list[api.Condition], generation: int
) -> api.CompliancePolicyStatus:
    if isinstance(outcome, Rejected):
        return api.CompliancePolicyStatus(
            phase=api.CompliancePolicyPhase.REJECTED,
            in_use=False,
            reason=outcome.reason,
            message=outcome.message[:1024],
            conditions=conditions,
            observed_generation=generation,
        )
    loaded = outcome.sanctions_list
    return api.CompliancePolicyStatus(
        phase=api.CompliancePolicyPhase.READY
        if outcome.usable
        else api.CompliancePolicyPhase.DEGRADED,
        in_use=outcome.in_use,
        sanctions_list=None
        if loaded is None
        else api.compliancepolicy.SanctionsListStatus(
            config_map=loaded.config_map,
            resource_version=loaded.resource_version,
            entries=loaded.entries,
        ),
        reason=None if outcome.usable else outcome.reason,
        message=None if outcome.usable else outcome.message[:1024],
        conditions=conditions,
        observed_generation=generation,
    )


def register(registry: kopf.OperatorRegistry, settings: config.Settings) -> None:
    """Add the handlers of both policy kinds to ``registry`` (see ``handlers.register``)."""
    kopf.index(api.GROUP, api.VERSION, RISK, registry=registry)(riskpolicies)
    kopf.index(api.GROUP, api.VERSION, COMPLIANCE, registry=registry)(compliancepolicies)
    for plural in (COMPLIANCE, RISK):
        wiring.on_spec(registry, plural, check)
    for plural in (COMPLIANCE, RISK):
        kopf.timer(
            api.GROUP,
            api.VERSION,
            plural,
            interval=POLICY_RECHECK_INTERVAL_SECONDS,
            registry=registry,
        )(recheck)
    kopf.on.delete(api.GROUP, api.VERSION, RISK, optional=True, registry=registry)(risk_deleted)


__all__ = ["check", "compliancepolicies", "recheck", "register", "risk_deleted", "riskpolicies"]
